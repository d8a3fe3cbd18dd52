"""The fleet simulator over real loopback UDP, against a minimal server double
(and against the real `Lwm2mServer` end to end)."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shoal.coap import options as o
from shoal.coap.codes import Code
from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapEndpoint, CoapRequestError
from shoal.coap.engine import Addr
from shoal.coap.message import Message
from shoal.lwm2m import content
from shoal.lwm2m.attributes import NotificationAttributes
from shoal.lwm2m.content import ContentFormat as CF
from shoal.lwm2m.link import parse_discover_links, parse_registration_links
from shoal.lwm2m.path import Path
from shoal.lwm2m.registry import default_registry
from shoal.sim import (
    DeviceConfig,
    FirmwareOutcome,
    Fleet,
    FleetConfig,
    SimDevice,
    bind_host_for,
    main,
    make_package,
    parse_package,
)
from shoal.sim.cli import parse_server, parse_shares

MODEL = default_registry()
TIMEOUT = 15.0


class FakeServer:
    """Just enough of an LwM2M server: Register/Update/De-register, Send, and a way
    to send requests to the device the way the real server does (same socket)."""

    def __init__(self) -> None:
        self.endpoint: CoapEndpoint | None = None
        self.registers: list[tuple[Message, Addr]] = []
        self.updates: list[Message] = []
        self.deletes: list[Message] = []
        self.sends: list[Message] = []
        self.forget = False  # answer Updates 4.04, as after a server restart
        self.changed = asyncio.Event()

    async def start(self) -> None:
        # short retransmission so a silent device shows up as a quick timeout
        config = CoapConfig(ack_timeout=0.3, max_retransmit=1, response_timeout=3.0)
        self.endpoint = await CoapEndpoint.create("127.0.0.1", 0, config)
        self.endpoint.route_prefix("/rd", self._rd)
        self.endpoint.route("/dp", self._dp)

    @property
    def address(self) -> tuple[str, int]:
        assert self.endpoint is not None
        return self.endpoint.address

    def _rd(self, request: Message, remote: Addr) -> Message:
        self.changed.set()
        path = request.uri_path
        if request.code == Code.POST and path == ["rd"]:
            self.registers.append((request, remote))
            answer = Message(code=Code.CREATED)
            answer.add(o.LOCATION_PATH, "rd").add(o.LOCATION_PATH, f"r{len(self.registers)}")
            return answer
        if request.code == Code.POST and len(path) == 2:
            self.updates.append(request)
            return Message(code=Code.NOT_FOUND if self.forget else Code.CHANGED)
        if request.code == Code.DELETE and len(path) == 2:
            self.deletes.append(request)
            return Message(code=Code.DELETED)
        return Message(code=Code.BAD_REQUEST)

    def _dp(self, request: Message, remote: Addr) -> Message:
        self.sends.append(request)
        self.changed.set()
        return Message(code=Code.CHANGED)

    async def wait(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def loop() -> None:
            while not condition():
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.1)
                except TimeoutError:
                    pass

        await asyncio.wait_for(loop(), timeout)

    async def request(
        self,
        device: SimDevice,
        code: int,
        path: str,
        *,
        accept: int | None = None,
        fmt: int | None = None,
        payload: bytes = b"",
        query: tuple[str, ...] = (),
    ) -> Message:
        assert self.endpoint is not None and device.address is not None
        msg = Message(code=code, payload=payload)
        for seg in path.strip("/").split("/"):
            if seg:
                msg.add(o.URI_PATH, seg)
        for q in query:
            msg.add(o.URI_QUERY, q)
        if fmt is not None:
            msg.add(o.CONTENT_FORMAT, fmt)
        if accept is not None:
            msg.add(o.ACCEPT, accept)
        return await self.endpoint.request(device.address, msg)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()


async def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async def loop() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    srv = FakeServer()
    await srv.start()
    yield srv
    srv.close()


@pytest.fixture
async def devices() -> AsyncIterator[list[SimDevice]]:
    started: list[SimDevice] = []
    yield started
    for device in started:
        await device.stop(timeout=2.0)


async def start_device(
    server: FakeServer, devices: list[SimDevice], name: str = "dev-1", **kw: Any
) -> SimDevice:
    kw.setdefault("sample_interval", 0.2)
    kw.setdefault("firmware_update_delay", 0.2)
    kw.setdefault("reboot_delay", 0.1)
    device = SimDevice(DeviceConfig(name, **kw), server.address)
    devices.append(device)
    assert await device.start()
    return device


def decode(response: Message, root: str) -> dict[Path, Any]:
    assert response.code == Code.CONTENT, response
    fmt = response.content_format
    assert fmt is not None
    return content.decode(fmt, response.payload, Path.parse(root), MODEL)


# -- registration ---------------------------------------------------------------------------


async def test_register_with_enclosure_then_update_and_deregister(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    device = await start_device(server, devices, "wq-7", enclosure="ENC-7K3M", lifetime=2)
    request, remote = server.registers[0]
    assert remote == device.address
    query = request.uri_query
    assert query[:4] == ["ep=wq-7", "lt=2", "lwm2m=1.1", "b=U"]
    assert "enc=ENC-7K3M" in query
    assert request.content_format == 40
    links = parse_registration_links(request.payload)
    assert links.content_formats == (110,)
    assert {1, 3, 4, 5, 3303, 3325, 3326, 3327, 3300} <= set(links.objects)
    assert 0 not in links.objects
    assert links.objects[3325].instances == (0, 1)
    assert device.location == ["rd", "r1"]

    await server.wait(lambda: len(server.updates) >= 1)
    assert server.updates[0].uri_path == ["rd", "r1"]

    await device.stop()
    assert [m.uri_path for m in server.deletes] == [["rd", "r1"]]
    assert not device.registered


async def test_reregisters_when_update_is_not_found(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    device = await start_device(server, devices, lifetime=1)
    server.forget = True
    await server.wait(lambda: len(server.registers) >= 2)
    assert server.updates, "the device must have tried an Update first"
    server.forget = False
    await wait_until(lambda: device.registered)
    assert device.location == ["rd", f"r{len(server.registers)}"]


async def test_lwm2m_1_0_registers_without_versions(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    await start_device(server, devices, version="1.0", profile="camera")
    request, _ = server.registers[0]
    assert "lwm2m=1.0" in request.uri_query
    links = parse_registration_links(request.payload)
    assert links.content_formats == ()
    assert all(info.version is None for info in links.objects.values())
    assert 33001 in links.objects


# -- device management ----------------------------------------------------------------------


async def test_read_in_tlv_and_senml(server: FakeServer, devices: list[SimDevice]) -> None:
    old = await start_device(server, devices, "old", version="1.0")
    new = await start_device(server, devices, "new", version="1.1")

    tlv = await server.request(old, Code.GET, "/3/0")
    assert tlv.content_format == CF.TLV  # the 1.0 default
    values = decode(tlv, "/3/0")
    assert values[Path(3, 0, 1)] == "WQ-200"
    assert values[Path(3, 0, 11, 0)] == 0

    senml = await server.request(new, Code.GET, "/3303/0")
    assert senml.content_format == CF.SENML_CBOR  # the 1.1 default
    temperature = decode(senml, "/3303/0")[Path(3303, 0, 5700)]
    assert isinstance(temperature, float) and -5.0 <= temperature <= 40.0

    for fmt in (CF.SENML_JSON, CF.TLV, CF.OMA_JSON):
        answer = await server.request(new, Code.GET, "/3/0/9", accept=fmt)
        assert answer.content_format == fmt
        assert 0 <= decode(answer, "/3/0/9")[Path(3, 0, 9)] <= 100
    text = await server.request(new, Code.GET, "/3/0/0", accept=CF.TEXT)
    assert text.payload == b"Shoal Simulated Devices"

    assert (await server.request(old, Code.GET, "/3/0", accept=CF.SENML_CBOR)).code == (
        Code.NOT_ACCEPTABLE
    )
    assert (await server.request(new, Code.GET, "/3/0", accept=CF.TEXT)).code == (
        Code.NOT_ACCEPTABLE
    )
    assert (await server.request(new, Code.GET, "/3/0/99")).code == Code.NOT_FOUND
    assert (await server.request(new, Code.GET, "/42")).code == Code.NOT_FOUND
    assert (await server.request(new, Code.GET, "/5/0/0")).code == Code.METHOD_NOT_ALLOWED


async def test_write_execute_and_wrong_methods(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    cam = await start_device(server, devices, "cam", profile="camera")
    answer = await server.request(cam, Code.PUT, "/33001/0/5", fmt=CF.TEXT, payload=b"2.5")
    assert answer.code == Code.CHANGED
    assert cam.value("/33001/0/5") == 2.5

    partial = content.encode(CF.SENML_JSON, {Path(33001, 0, 5): 1.5}, Path(33001, 0), MODEL)
    answer = await server.request(cam, Code.POST, "/33001/0", fmt=CF.SENML_JSON, payload=partial)
    assert answer.code == Code.CHANGED
    assert cam.value("/33001/0/5") == 1.5
    assert cam.value("/33001/0/2") == "salmon-detector"  # untouched by a partial write

    answer = await server.request(cam, Code.PUT, "/33001/0/0", fmt=CF.TEXT, payload=b"7")
    assert answer.code == Code.METHOD_NOT_ALLOWED  # read-only
    answer = await server.request(cam, Code.PUT, "/33001/0/5", fmt=4242, payload=b"1")
    assert answer.code == Code.UNSUPPORTED_CONTENT_FORMAT
    answer = await server.request(cam, Code.PUT, "/33001/0/5", fmt=CF.TEXT, payload=b"fast")
    assert answer.code == Code.BAD_REQUEST

    cam.set_error_codes([4, 8])
    assert (await server.request(cam, Code.POST, "/3/0/12")).code == Code.CHANGED  # reset errors
    assert cam.error_codes == []
    answer = await server.request(cam, Code.POST, "/33001/0/10", fmt=CF.TEXT, payload=b"0='now'")
    assert answer.code == Code.CHANGED  # Run Inference, with an argument
    assert (await server.request(cam, Code.POST, "/33001/0/0")).code == Code.METHOD_NOT_ALLOWED
    assert (await server.request(cam, Code.DELETE, "/3/0/9")).code == Code.METHOD_NOT_ALLOWED
    assert (await server.request(cam, Code.DELETE, "/3/0")).code == Code.METHOD_NOT_ALLOWED
    assert (await server.request(cam, Code.POST, "/33001/0/77")).code == Code.NOT_FOUND


async def test_error_codes_are_multi_instance(server: FakeServer, devices: list[SimDevice]) -> None:
    device = await start_device(server, devices)
    device.set_error_codes([4, 8])
    values = decode(await server.request(device, Code.GET, "/3/0/11"), "/3/0/11")
    assert values == {Path(3, 0, 11, 0): 4, Path(3, 0, 11, 1): 8}


async def test_create_and_delete_send_an_update_with_links(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    device = await start_device(server, devices)
    payload = content.encode(CF.SENML_JSON, {Path(3303, 1, 5700): 11.5}, Path(3303), MODEL)
    answer = await server.request(device, Code.POST, "/3303", fmt=CF.SENML_JSON, payload=payload)
    assert answer.code == Code.CREATED
    assert answer.location_path == ["3303", "1"]
    assert device.value("/3303/1/5700") == 11.5
    await server.wait(lambda: any(u.payload for u in server.updates))
    links = parse_registration_links(next(u.payload for u in server.updates if u.payload))
    assert links.objects[3303].instances == (0, 1)

    again = await server.request(device, Code.POST, "/3303", fmt=CF.SENML_JSON, payload=payload)
    assert again.code == Code.BAD_REQUEST  # instance exists
    assert (await server.request(device, Code.DELETE, "/3303/1")).code == Code.DELETED
    assert (await server.request(device, Code.GET, "/3303/1")).code == Code.NOT_FOUND


async def test_discover_shows_dim_and_written_attributes(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    device = await start_device(server, devices)
    answer = await server.request(device, Code.PUT, "/3303/0/5700", query=("pmin=5", "gt=20.5"))
    assert answer.code == Code.CHANGED
    bad = await server.request(device, Code.PUT, "/3303/0/5700", query=("pmin=9", "pmax=3"))
    assert bad.code == Code.BAD_REQUEST
    bad = await server.request(device, Code.PUT, "/3/0/0", query=("gt=1",))
    assert bad.code == Code.BAD_REQUEST  # gt on a string resource

    answer = await server.request(device, Code.GET, "/3303/0/5700", accept=40)
    assert answer.content_format == 40
    (link,) = parse_discover_links(answer.payload)
    assert link.attributes == NotificationAttributes(pmin=5, gt=20.5)

    answer = await server.request(device, Code.GET, "/3", accept=40)
    links = {str(link.path): link for link in parse_discover_links(answer.payload)}
    assert links["/3"].version == "1.2"
    assert links["/3/0/11"].dim == 1
    assert "/3/0/4" in links  # executable Reboot is listed


async def test_composite_read_and_write(server: FakeServer, devices: list[SimDevice]) -> None:
    device = await start_device(server, devices, profile="camera")
    paths = [Path(33001, 0, 0), Path(3, 0, 9), Path(9999, 0, 0)]
    answer = await server.request(
        device,
        Code.FETCH,
        "/",
        fmt=CF.SENML_JSON,
        accept=CF.SENML_CBOR,
        payload=content.encode_paths(CF.SENML_JSON, paths),
    )
    values = decode(answer, "/")
    assert set(values) == {Path(33001, 0, 0), Path(3, 0, 9)}

    payload = content.encode(CF.SENML_CBOR, {Path(33001, 0, 5): 9.0}, Path(), MODEL)
    answer = await server.request(device, Code.IPATCH, "/", fmt=CF.SENML_CBOR, payload=payload)
    assert answer.code == Code.CHANGED
    assert device.value("/33001/0/5") == 9.0


async def test_observe_honours_pmin_and_pmax(server: FakeServer, devices: list[SimDevice]) -> None:
    device = await start_device(server, devices)
    assert server.endpoint is not None and device.address is not None
    answer = await server.request(device, Code.PUT, "/3/0/2", query=("pmin=0", "pmax=1"))
    assert answer.code == Code.CHANGED
    notes: list[Message] = []
    got = asyncio.Event()

    def on_notify(msg: Message) -> None:
        notes.append(msg)
        got.set()

    request = Message(code=Code.GET).add(o.URI_PATH, "3").add(o.URI_PATH, "0")
    request.add(o.URI_PATH, "2").add(o.ACCEPT, CF.SENML_JSON)
    observation = await server.endpoint.observe(device.address, request, on_notify)
    assert observation.active
    assert observation.response is not None and observation.response.observe is not None
    # nothing changes at /3/0/2 (signal follows /4/0/2): pmax alone drives these
    await wait_until(lambda: len(notes) >= 2)
    assert all(decode(n, "/3/0/2") for n in notes)

    # st on a changing value: only steps of at least st are reported
    notes.clear()
    await server.request(device, Code.PUT, "/3/0/9", query=("st=10", "pmax=600"))
    request = Message(code=Code.GET)
    for seg in ("3", "0", "9"):
        request.add(o.URI_PATH, seg)
    battery = await server.endpoint.observe(device.address, request, on_notify)
    assert battery.active
    device.set_value("/3/0/9", 40)
    await wait_until(lambda: any(decode(n, "/3/0/9") == {Path(3, 0, 9): 40} for n in notes))
    await observation.cancel()
    await battery.cancel()


async def test_send_reports_values(server: FakeServer, devices: list[SimDevice]) -> None:
    device = await start_device(server, devices, profile="camera")
    answer = await device.send()
    assert answer is not None and answer.code == Code.CHANGED
    (send,) = server.sends
    assert send.content_format == CF.SENML_CBOR
    values = content.decode(CF.SENML_CBOR, send.payload, Path(), MODEL)
    assert Path(33001, 0, 0) in values and Path(3, 0, 9) in values


# -- firmware ---------------------------------------------------------------------------------


async def push(server: FakeServer, device: SimDevice, package: bytes) -> None:
    answer = await server.request(device, Code.PUT, "/5/0/0", fmt=CF.OPAQUE, payload=package)
    assert answer.code == Code.CHANGED


async def fw_state(server: FakeServer, device: SimDevice) -> tuple[int, int]:
    values = decode(await server.request(device, Code.GET, "/5/0"), "/5/0")
    return values[Path(5, 0, 3)], values[Path(5, 0, 5)]


async def test_firmware_push_update_and_reboot(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    device = await start_device(server, devices)
    assert device.firmware_version == "1.0.0"
    package = make_package("2.1.0", size=5000)  # several Block1 blocks
    await push(server, device, package)
    assert await fw_state(server, device) == (2, 0)  # Downloaded
    values = decode(await server.request(device, Code.GET, "/5/0/7"), "/5/0/7")
    assert values[Path(5, 0, 7)] == "2.1.0"

    assert (await server.request(device, Code.POST, "/5/0/2")).code == Code.CHANGED
    await server.wait(lambda: len(server.registers) >= 2)  # rebooted into the new firmware
    await device.wait_registered()
    assert device.firmware_version == "2.1.0"
    assert await fw_state(server, device) == (0, 1)  # Idle, success
    fw = decode(await server.request(device, Code.GET, "/3/0/3"), "/3/0/3")
    assert fw[Path(3, 0, 3)] == "2.1.0"


async def test_firmware_integrity_failure(server: FakeServer, devices: list[SimDevice]) -> None:
    corrupting = await start_device(server, devices, "bad-flash", firmware_outcome="integrity")
    await push(server, corrupting, make_package("2.0.0", size=100))
    assert await fw_state(server, corrupting) == (0, 5)

    honest = await start_device(server, devices, "good-flash")
    await push(server, honest, make_package("2.0.0", size=100, corrupt=True))
    assert await fw_state(server, honest) == (0, 5)
    # Update without a downloaded package is refused
    assert (await server.request(honest, Code.POST, "/5/0/2")).code == Code.METHOD_NOT_ALLOWED


async def test_firmware_update_failure_and_hang(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    failing = await start_device(server, devices, "fails", firmware_outcome="failure")
    hanging = await start_device(server, devices, "hangs", firmware_outcome="hang")
    for device in (failing, hanging):
        await push(server, device, make_package("3.0.0"))
        assert (await server.request(device, Code.POST, "/5/0/2")).code == Code.CHANGED
    await wait_until(lambda: failing.firmware.result == 8)
    assert await fw_state(server, failing) == (2, 8)  # back to Downloaded
    assert failing.firmware_version == "1.0.0"
    assert (await fw_state(server, hanging))[0] == 3  # Updating, forever


async def test_firmware_pull_over_coap(server: FakeServer, devices: list[SimDevice]) -> None:
    package = make_package("4.0.0", model_name="salmon-detector", size=3000)
    assert server.endpoint is not None
    server.endpoint.route(
        "/fw/model.bin", lambda request, remote: Message(code=Code.CONTENT, payload=package)
    )
    cam = await start_device(server, devices, profile="camera")
    uri = f"coap://127.0.0.1:{server.address[1]}/fw/model.bin"
    answer = await server.request(cam, Code.PUT, "/5/0/1", fmt=CF.TEXT, payload=uri.encode())
    assert answer.code == Code.CHANGED
    await wait_until(lambda: cam.firmware.state == 2)
    assert (await server.request(cam, Code.POST, "/5/0/2")).code == Code.CHANGED
    await wait_until(lambda: cam.value("/33001/0/3") == "4.0.0")  # a model, no reboot
    assert await fw_state(server, cam) == (0, 1)

    answer = await server.request(cam, Code.PUT, "/5/0/1", fmt=CF.TEXT, payload=b"coaps://x/y")
    assert answer.code == Code.CHANGED
    assert await fw_state(server, cam) == (0, 9)  # unsupported protocol


async def test_firmware_pull_over_http(server: FakeServer, devices: list[SimDevice]) -> None:
    package = make_package("5.0.0", size=2500)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/fw.bin":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(package)))
            self.end_headers()
            self.wfile.write(package)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        device = await start_device(server, devices)
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        uri = f"{base}/fw.bin".encode()
        answer = await server.request(device, Code.PUT, "/5/0/1", fmt=CF.TEXT, payload=uri)
        assert answer.code == Code.CHANGED
        await wait_until(lambda: device.firmware.state == 2)
        assert device.value("/5/0/7") == "5.0.0"

        missing = f"{base}/nothing.bin".encode()
        await server.request(device, Code.PUT, "/5/0/1", fmt=CF.TEXT, payload=b"")  # reset
        await server.request(device, Code.PUT, "/5/0/1", fmt=CF.TEXT, payload=missing)
        await wait_until(lambda: device.firmware.result == 7)  # invalid URI
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_package_header() -> None:
    info = parse_package(make_package("1.2.3", b"body"))
    assert (info.kind, info.version, info.intact) == ("firmware", "1.2.3", True)
    assert not parse_package(make_package("1.2.3", b"body", corrupt=True)).intact
    assert parse_package(b"raw image").version.startswith("pkg-")


# -- faults ------------------------------------------------------------------------------------


async def test_silent_device_stops_answering_and_comes_back(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    device = await start_device(server, devices)
    device.set_silent(True)
    with pytest.raises(CoapRequestError):
        await server.request(device, Code.GET, "/3/0/9")
    updates = len(server.updates)
    device.set_silent(False)
    await server.wait(lambda: len(server.updates) > updates)  # says it is back at once
    assert (await server.request(device, Code.GET, "/3/0/9")).code == Code.CONTENT


async def test_stuck_sensor_and_fast_battery_drain(
    server: FakeServer, devices: list[SimDevice]
) -> None:
    device = await start_device(server, devices, sample_interval=0.05)
    device.set_stuck(True)
    frozen = device.value("/3303/0/5700")
    device.set_battery(20)
    device.set_battery_drain(600.0)  # 10 % per second
    await wait_until(lambda: 1 in device.error_codes)  # low battery
    await wait_until(lambda: device.silent)  # flat battery: the device goes quiet
    assert device.value("/3303/0/5700") == frozen
    assert device.value("/3/0/20") == 4  # battery status low


async def test_reboot_loop_registers_again(server: FakeServer, devices: list[SimDevice]) -> None:
    device = await start_device(server, devices)
    device.set_reboot_loop(0.3)
    await server.wait(lambda: len(server.registers) >= 3)
    device.set_reboot_loop(None)
    await device.wait_registered()


# -- fleet and command line -------------------------------------------------------------------


async def test_fleet_registers_mixed_devices_with_enclosures(server: FakeServer) -> None:
    fleet = Fleet(
        FleetConfig(
            server=server.address,
            count=6,
            profile="mixed",
            camera_share=0.5,
            enclosures=("ENC-AAAA", "ENC-BBBB"),
            progress=False,
            concurrency=3,
            sample_interval=0.5,
        )
    )
    summary = await fleet.start()
    try:
        assert summary["registered"] == 6 and summary["failed"] == 0
        encs = [next(q for q in m.uri_query if q.startswith("enc=")) for m, _ in server.registers]
        assert sorted(encs) == ["enc=ENC-AAAA"] * 3 + ["enc=ENC-BBBB"] * 3
        assert len({remote for _, remote in server.registers}) == 6  # one socket each
        kinds = {d.config.profile for d in fleet.devices}
        assert kinds <= {"water", "camera"}
        chosen = fleet.inject("stuck", share=1.0)
        assert len(chosen) == 6 and all(d.stuck for d in fleet.devices)
    finally:
        summary = await fleet.stop()
    assert summary["registered"] == 0
    assert len(server.deletes) == 6


def test_bind_hosts_spread_over_loopback() -> None:
    assert bind_host_for(0, "127.0.0.1", per_address=100) == "127.0.0.1"
    assert bind_host_for(250, "127.0.0.1", per_address=100) == "127.0.0.3"
    assert bind_host_for(5, "10.0.0.8") == "0.0.0.0"
    assert bind_host_for(5, "::1") == "::1"


def test_cli_parsing() -> None:
    assert parse_server("coap://127.0.0.1:5684") == ("127.0.0.1", 5684)
    assert parse_server("example.org") == ("example.org", 5683)
    assert parse_shares("stuck=0.1,silent") == {"stuck": 0.1, "silent": 1.0}
    with pytest.raises(SystemExit):
        main(["--server", "coaps://127.0.0.1:5684"])


def test_main_runs_a_fleet_for_a_while() -> None:
    """`main` owns its event loop, so the server double runs in a thread of its own."""
    ready = threading.Event()
    stop = threading.Event()
    holder: dict[str, Any] = {}

    def serve() -> None:
        async def run() -> None:
            srv = FakeServer()
            await srv.start()
            holder["server"] = srv
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            srv.close()

        asyncio.run(run())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    srv: FakeServer = holder["server"]
    try:
        code = main(
            [
                "--server",
                f"coap://127.0.0.1:{srv.address[1]}",
                "--count",
                "3",
                "--enclosures",
                "ENC-AAAA,ENC-BBBB",
                "--duration",
                "0.5",
                "--no-progress",
            ]
        )
    finally:
        stop.set()
        thread.join(10)
    assert code == 0
    assert len(srv.registers) == 3 and len(srv.deletes) == 3


# -- end to end with the real server ------------------------------------------------------------


async def test_end_to_end_with_lwm2m_server(devices: list[SimDevice]) -> None:
    server_mod = pytest.importorskip("shoal.server.server")
    from shoal.server import events as ev

    srv = server_mod.Lwm2mServer(server_mod.ServerConfig(port=0))
    await srv.start()
    try:
        device = SimDevice(
            DeviceConfig("e2e-1", enclosure="ENC-E2E", sample_interval=0.2), srv.address
        )
        devices.append(device)
        assert await device.start()
        reg = srv.registration("e2e-1")
        assert reg.extra == {"enc": "ENC-E2E"}

        read = await srv.read("e2e-1", "/3/0")
        assert read.ok and read.values[Path(3, 0, 1)] == "WQ-200"
        write = await srv.write_attributes(
            "e2e-1", "/3303/0/5700", NotificationAttributes(pmin=0, pmax=1)
        )
        assert write.ok
        notes: list[Any] = []
        srv.bus.subscribe(ev.Notification, notes.append)
        response, observation = await srv.observe("e2e-1", "/3303/0/5700")
        assert response.ok and observation is not None
        await wait_until(lambda: len(notes) >= 2)

        pushed = await srv.write("e2e-1", "/5/0/0", make_package("9.9.9", size=2000), fmt=42)
        assert pushed.ok
        assert (await srv.execute("e2e-1", "/5/0/2")).ok
        await wait_until(lambda: device.firmware_version == "9.9.9" and device.registered)
        await wait_until(lambda: srv.registration("e2e-1").address == device.address)
        fw = await srv.read("e2e-1", "/3/0/3")
        assert fw.values[Path(3, 0, 3)] == "9.9.9"
    finally:
        for device in devices:
            await device.stop(timeout=2.0)
        devices.clear()
        await srv.stop()


def test_firmware_outcome_names() -> None:
    assert FirmwareOutcome("integrity") is FirmwareOutcome.INTEGRITY_FAILURE

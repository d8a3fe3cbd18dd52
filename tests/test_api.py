"""The REST API through HTTP, against a whole node: server, database, simulator."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.coap.config import CoapConfig
from shoal.node import NodeConfig, ShoalNode
from shoal.sim import DeviceConfig, SimDevice


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def node_config(data_dir: Path) -> NodeConfig:
    return NodeConfig(coap_port=0, http_port=0, data_dir=str(data_dir), secure=False)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ShoalNode]:
    n = ShoalNode(node_config(tmp_path))
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def http(node: ShoalNode) -> AsyncIterator[httpx.AsyncClient]:
    host, port = node.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as client:
        yield client


async def make_enclosure(http: httpx.AsyncClient, code: str | None = None) -> dict[str, Any]:
    farm = await http.post("/api/v1/farms", json={"name": "Fjord", "time_zone": "Europe/Oslo"})
    assert farm.status_code == 201, farm.text
    body: dict[str, Any] = {"name": "Pen 1", "kind": "cage", "species": "salmon"}
    if code:
        body["code"] = code
    enc = await http.post(f"/api/v1/farms/{farm.json()['id']}/enclosures", json=body)
    assert enc.status_code == 201, enc.text
    result: dict[str, Any] = enc.json()
    return result


async def test_openapi_and_validation_errors_are_problem_json(http: httpx.AsyncClient) -> None:
    spec = await http.get("/api/v1/openapi.json")
    assert spec.status_code == 200
    assert "/api/v1/farms" in spec.json()["paths"]
    bad = await http.post("/api/v1/farms", json={"name": ""})
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "name" in bad.json()["detail"]
    tz = await http.post("/api/v1/farms", json={"name": "X", "time_zone": "Mars/Olympus"})
    assert tz.status_code == 422
    missing = await http.get("/api/v1/farms/999")
    assert missing.status_code == 404
    assert missing.json()["title"]


async def test_farm_and_enclosure_crud(http: httpx.AsyncClient) -> None:
    enc = await make_enclosure(http)
    assert enc["code"].startswith("ENC-") and len(enc["code"]) == 8
    farm_id = enc["farm_id"]
    patched = await http.patch(f"/api/v1/farms/{farm_id}", json={"location": "Hardanger"})
    assert patched.json()["location"] == "Hardanger"
    renamed = await http.patch(f"/api/v1/enclosures/{enc['id']}", json={"name": "Pen 9"})
    assert renamed.json()["name"] == "Pen 9"
    listed = await http.get(f"/api/v1/farms/{farm_id}/enclosures")
    assert [e["name"] for e in listed.json()] == ["Pen 9"]
    dup = await http.post(f"/api/v1/farms/{farm_id}/enclosures", json={"name": "Pen 9"})
    assert dup.status_code == 409
    assert (await http.delete(f"/api/v1/enclosures/{enc['id']}")).status_code == 204
    assert (await http.get(f"/api/v1/enclosures/{enc['id']}")).status_code == 404


async def test_simulated_device_with_enc_lands_in_its_enclosure(
    node: ShoalNode, http: httpx.AsyncClient
) -> None:
    enc = await make_enclosure(http, "ENC-7K3M")
    device = SimDevice(
        DeviceConfig("probe-1", profile="water", enclosure="ENC-7K3M", sample_interval=0.5),
        node.server.address,
    )
    await device.start()
    try:

        async def placed() -> bool:
            r = await http.get("/api/v1/devices", params={"enclosure": enc["id"]})
            return r.json()["total"] == 1

        await eventually(placed)
        dev = (await http.get("/api/v1/devices/probe-1")).json()
        assert dev["enclosure_id"] == enc["id"]
        assert dev["correlation_source"] == "query_attribute"
        assert dev["kind"] == "sensor"

        read = await http.get("/api/v1/devices/probe-1/data/3303/0/5700")
        assert read.status_code == 200, read.text
        value = read.json()["values"][0]
        assert value["name"] == "Sensor Value" and isinstance(value["value"], float)

        bad_path = await http.get("/api/v1/devices/probe-1/data/3303/x")
        assert bad_path.status_code == 400

        # the enclosure holds a device: deleting it is refused
        refused = await http.delete(f"/api/v1/enclosures/{enc['id']}")
        assert refused.status_code == 409

        async def has_telemetry() -> bool:
            r = await http.get("/api/v1/devices/probe-1/telemetry", params={"path": "/3303/0/5700"})
            return len(r.json()["items"]) >= 2

        await eventually(has_telemetry)
    finally:
        await device.stop()


async def test_unknown_enclosure_id_goes_to_unassigned_and_manual_assign(
    node: ShoalNode, http: httpx.AsyncClient
) -> None:
    enc = await make_enclosure(http)
    device = SimDevice(DeviceConfig("stray-1", enclosure="ENC-ZZZZ"), node.server.address)
    await device.start()
    try:

        async def unassigned() -> bool:
            r = await http.get("/api/v1/devices", params={"unassigned": "true"})
            return any(
                d["endpoint"] == "stray-1" and d["unassigned_reason"] for d in r.json()["items"]
            )

        await eventually(unassigned)
        dev = (await http.get("/api/v1/devices/stray-1")).json()
        assert dev["enclosure_id"] is None
        assert "ENC-ZZZZ" in dev["unassigned_reason"]
        moved = await http.patch("/api/v1/devices/stray-1", json={"enclosure_code": enc["code"]})
        assert moved.status_code == 200, moved.text
        assert moved.json()["enclosure_id"] == enc["id"]
        assert moved.json()["correlation_source"] == "manual"
    finally:
        await device.stop()


async def test_silent_device_gives_504(tmp_path: Path) -> None:
    # short CoAP retransmission so the request gives up quickly
    quick = CoapConfig(ack_timeout=0.2, max_retransmit=2)
    cfg = NodeConfig(coap_port=0, http_port=0, data_dir=str(tmp_path), coap=quick, secure=False)
    node = ShoalNode(cfg)
    await node.start()
    host, port = node.http_address
    device = SimDevice(DeviceConfig("mute-1"), node.server.address)
    await device.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60) as http:
            await eventually(lambda: _registered(http, "mute-1"))
            device.set_silent(True)
            answer = await http.get("/api/v1/devices/mute-1/data/3/0/0")
            assert answer.status_code == 504
            assert "did not answer" in answer.json()["title"]
    finally:
        device.set_silent(False)
        await device.stop(deregister=False)
        await node.stop()


async def _registered(http: httpx.AsyncClient, endpoint: str) -> bool:
    r = await http.get(f"/api/v1/devices/{endpoint}")
    return r.status_code == 200 and bool(r.json().get("registered"))


@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin not installed")
async def test_libcoap_client_registers_with_enc(node: ShoalNode, http: httpx.AsyncClient) -> None:
    enc = await make_enclosure(http, "ENC-2PQX")
    host, port = node.server.address
    proc = await asyncio.create_subprocess_exec(
        "coap-client-notls",
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        "</1/0>,</3/0>,</3303/0>",
        f"coap://{host}:{port}/rd?ep=libcoap-probe&lt=600&enc=ENC-2PQX",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.wait_for(proc.communicate(), 30)

    async def placed() -> bool:
        r = await http.get("/api/v1/devices/libcoap-probe")
        return r.status_code == 200 and r.json()["enclosure_id"] == enc["id"]

    await eventually(placed)


async def test_restart_keeps_devices_and_resumes_observations(tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    first = ShoalNode(cfg)
    await first.start()
    device = SimDevice(
        DeviceConfig("survivor-1", profile="water", sample_interval=0.3), first.server.address
    )
    await device.start()
    try:
        await eventually(lambda: _observed(first, "survivor-1"))
        await first.fleet.drain()
        coap_port = first.server.address[1]
        await first.stop()

        # same CoAP port, so the device's later Updates still reach the server
        second = ShoalNode(
            NodeConfig(coap_port=coap_port, http_port=0, data_dir=str(tmp_path), secure=False)
        )
        await second.start()
        try:
            reg = second.server.store.by_endpoint("survivor-1")
            assert reg is not None, "registration not restored"
            assert reg.address == device.address
            # observations come back without the device registering again
            await eventually(lambda: _observed(second, "survivor-1"))
            before = second.server.counters["notifications"]

            async def notified() -> bool:
                return second.server.counters["notifications"] > before

            await eventually(notified)
            assert second.server.counters["registered"] == 0
        finally:
            await device.stop()
            await second.stop()
    finally:
        if device.registered:
            await device.stop(deregister=False)


async def _observed(node: ShoalNode, endpoint: str) -> bool:
    return len(node.server.observations(endpoint)) >= 3

"""Firmware and recognition-model updates against simulated devices over real UDP.

A whole node (LwM2M server, SQLite, HTTP API) with the firmware service attached,
and `SimDevice`s configured to succeed, fail the integrity check, fail the
update, hang, come back on the old version, or report a malfunction after the
update. Timeouts and the soak period are short; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shoal.coap import options as o
from shoal.coap.message import Message
from shoal.firmware import (
    Delivery,
    DeliveryConfig,
    FirmwareConfig,
    FirmwareFailure,
    FirmwareService,
    FirmwareVersion,
    PackageMeta,
    PackageType,
    VersionSpec,
    VersionSpecError,
    Window,
    window_open,
)
from shoal.firmware.campaigns import Rollout, _batches
from shoal.firmware.cli import watch
from shoal.node import NodeConfig, ShoalNode
from shoal.sim import DeviceConfig, SimDevice, make_package
from shoal.sim import firmware as simfw

DELIVERY = DeliveryConfig(
    request_timeout=5.0,
    register_timeout=30.0,
    download_timeout=40.0,
    update_timeout=8.0,
    reboot_grace=8.0,
    verify_timeout=20.0,
    soak=0.5,
    rollback_soak=0.3,
    poll_interval=0.5,
)
FIRMWARE = FirmwareConfig(tick=0.2, max_package_size=4 * 1024 * 1024, delivery=DELIVERY)
MB = 1024 * 1024


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s")
        await asyncio.sleep(0.1)


def node_config(data_dir: Path, **kw: Any) -> NodeConfig:
    return NodeConfig(
        coap_port=0, http_port=0, data_dir=str(data_dir), secure=False, firmware=FIRMWARE, **kw
    )


async def attach_firmware(node: ShoalNode, data_dir: Path) -> FirmwareService:
    """The node's own firmware service (started with the node)."""
    return node.firmware


class Harness:
    def __init__(self, node: ShoalNode, fw: FirmwareService, http: httpx.AsyncClient) -> None:
        self.node = node
        self.fw = fw
        self.http = http
        self.devices: list[SimDevice] = []
        self.feed: list[dict[str, Any]] = []
        self.failures: list[FirmwareFailure] = []

    async def device(self, name: str, cls: type[SimDevice] = SimDevice, **kw: Any) -> SimDevice:
        kw.setdefault("firmware_update_delay", 0.3)
        kw.setdefault("reboot_delay", 0.2)
        kw.setdefault("retry_min", 0.3)
        kw.setdefault("retry_max", 1.0)
        kw.setdefault("sample_interval", 5.0)
        dev = cls(DeviceConfig(name, **kw), self.node.server.address)
        self.devices.append(dev)
        assert await dev.start()
        return dev

    async def in_inventory(self, *names: str) -> None:
        async def known() -> bool:
            for n in names:
                try:
                    d = await self.node.inventory.get_device(n)
                except Exception:
                    return False
                if d.firmware_version is None:
                    return False
            return True

        await eventually(known, 30, "devices in the inventory")

    async def upload(self, version: str, size: int = 2048, **params: Any) -> dict[str, Any]:
        query = {"name": "shoal-firmware", "version": version, **params}
        body = make_package(version, size=size)
        resp = await self.http.post(
            "/api/v1/firmware/packages",
            params=query,
            content=body,
            headers={"content-type": "application/octet-stream"},
        )
        assert resp.status_code == 201, resp.text
        result: dict[str, Any] = resp.json()
        return result

    async def campaign(
        self, package_id: int, endpoints: list[str], **rollout: Any
    ) -> dict[str, Any]:
        rollout.setdefault("max_concurrent", 4)
        body = {
            "name": "test rollout",
            "package_id": package_id,
            "targets": {"endpoints": endpoints},
            "rollout": rollout,
        }
        resp = await self.http.post("/api/v1/firmware/campaigns", json=body)
        assert resp.status_code == 201, resp.text
        created: dict[str, Any] = resp.json()
        started = await self.http.post(f"/api/v1/firmware/campaigns/{created['id']}/start")
        assert started.status_code == 200, started.text
        result: dict[str, Any] = started.json()
        return result

    async def get(self, cid: int) -> dict[str, Any]:
        resp = await self.http.get(f"/api/v1/firmware/campaigns/{cid}")
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    async def rows(self, cid: int) -> dict[str, dict[str, Any]]:
        resp = await self.http.get(f"/api/v1/firmware/campaigns/{cid}/devices")
        assert resp.status_code == 200, resp.text
        return {d["endpoint"]: d for d in resp.json()}

    async def until_state(self, cid: int, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def reached() -> bool:
            found.update(await self.get(cid))
            return found["state"] in states

        await eventually(reached, timeout, f"campaign {cid} in {states}")
        return found


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    node = ShoalNode(node_config(tmp_path))
    await node.start()
    fw = await attach_firmware(node, tmp_path)
    host, port = node.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as http:
        harness = Harness(node, fw, http)
        fw.on_failure = harness.failures.append

        async def collect() -> None:
            async for item in node.feed.watch():
                harness.feed.append(item)

        collector = asyncio.get_running_loop().create_task(collect())
        try:
            yield harness
        finally:
            collector.cancel()
            for dev in harness.devices:
                await dev.stop(deregister=False)
            await fw.stop()
            await node.stop()


class OldVersionDevice(SimDevice):
    """Reports success, reboots, and comes back on the firmware it had."""

    def fw_install(self, info: simfw.PackageInfo) -> None:
        self.stats.firmware_updates += 1
        self.reboot()


class BrokenProbeDevice(SimDevice):
    """Firmware 2.x breaks its probe: after the update it reports a peripheral
    malfunction (error code 8), until a rollback installs something else."""

    def fw_install(self, info: simfw.PackageInfo) -> None:
        super().fw_install(info)
        self.set_error_codes([8] if info.version.startswith("2.") else [])


# -- versions, windows, batches -----------------------------------------------------------


def test_versions_compare_as_versions() -> None:
    v = FirmwareVersion
    assert v("1.10.0") > v("1.9.2")
    assert v("2.0.0rc1") < v("2.0.0")
    assert v("1.0") == v("1.0.0")
    assert v("v2.1") == v("2.1")
    assert v("2024.03-r10") > v("2024.03-r9")  # not PEP 440: natural order
    spec = VersionSpec.parse(">=1.0,<2.0 || ==0.9.5")
    assert spec.matches("1.2.3") and spec.matches("0.9.5")
    assert not spec.matches("2.0.0") and not spec.matches("0.9.4")
    wildcard = VersionSpec.parse("==1.2.*")
    assert wildcard.matches("1.2.7") and not wildcard.matches("1.20.0")  # never substrings
    assert VersionSpec.parse("").matches(None)
    with pytest.raises(VersionSpecError):
        VersionSpec.parse(">=1.0,,<2")


def test_time_windows_in_farm_local_time() -> None:
    feeding = Window.parse({"start": "07:00", "end": "09:00"})
    night = Window.parse({"start": "22:00", "end": "05:00", "days": ["mon", "tue"]})
    # 06:30 UTC is 07:30 in Oslo in winter: feeding time there, not in UTC
    now = datetime(2026, 1, 13, 6, 30, tzinfo=UTC)  # a Tuesday
    assert not window_open(now, "Europe/Oslo", (), (feeding,))
    assert window_open(now, "UTC", (), (feeding,))
    # a window across midnight belongs to the day it starts: Tuesday 23:00 and
    # Wednesday 01:00 are in it, Wednesday 23:00 is not
    assert window_open(datetime(2026, 1, 13, 23, 0, tzinfo=UTC), "UTC", (night,), ())
    assert window_open(datetime(2026, 1, 14, 1, 0, tzinfo=UTC), "UTC", (night,), ())
    assert not window_open(datetime(2026, 1, 14, 23, 0, tzinfo=UTC), "UTC", (night,), ())


def test_batches() -> None:
    assert _batches(10, Rollout(canary=1, batch_size=4)) == [1, 4, 4, 1]
    assert _batches(10, Rollout(canary=0, batch_percent=50)) == [0, 5, 5]
    assert _batches(3, Rollout(canary=5)) == [3]
    assert _batches(20, Rollout(canary_percent=10, batch_percent=25)) == [2, 5, 5, 5, 3]


# -- repository ---------------------------------------------------------------------------


async def test_package_upload_limits_duplicates_and_deletion(h: Harness) -> None:
    older = await h.upload("1.9.0")
    newer = await h.upload("1.10.0", device_kind="sensor", applies_to=">=1.0,<2.0")
    assert newer["size"] > 2048 and len(newer["sha256"]) == 64
    listed = (await h.http.get("/api/v1/firmware/packages")).json()
    assert [p["version"] for p in listed] == ["1.10.0", "1.9.0"]  # as versions, not strings

    # the same bytes again, the same version again, a bad spec: all refused
    again = await h.http.post(
        "/api/v1/firmware/packages",
        params={"name": "other", "version": "9"},
        content=make_package("1.9.0", size=2048),
    )
    assert again.status_code == 409 and "already package" in again.json()["detail"]
    bad = await h.http.post(
        "/api/v1/firmware/packages",
        params={"name": "x", "version": "3", "applies_to": ">>1"},
        content=b"abc",
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")

    # streamed and size-limited (no Content-Length: a chunked upload is cut off)
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield bytes(MB)

    big = await h.http.post(
        "/api/v1/firmware/packages", params={"name": "big", "version": "1"}, content=chunks()
    )
    assert big.status_code == 413
    assert not list((h.fw.repository.root / "tmp").iterdir())  # nothing left behind
    stored = list((h.fw.repository.root / "sha256").rglob("*"))
    assert len([p for p in stored if p.is_file()]) == 2

    content = await h.http.get(f"/api/v1/firmware/packages/{older['id']}/content")
    assert content.content == make_package("1.9.0", size=2048)
    assert (await h.http.delete(f"/api/v1/firmware/packages/{older['id']}")).status_code == 204
    assert (await h.http.get(f"/api/v1/firmware/packages/{older['id']}")).status_code == 404


# -- delivery -----------------------------------------------------------------------------


async def test_push_and_pull_of_a_1mb_image(h: Harness) -> None:
    """The same 1 MB image by block-wise Write (push), and by pull over CoAP
    block-wise and over HTTP."""
    push = await h.device("fw-push")
    coap = await h.device("fw-coap")
    web = await h.device("fw-http")
    meta = PackageMeta("shoal-firmware", "2.0.0")
    package = await h.fw.repository.add_bytes(meta, make_package("2.0.0", size=MB))
    assert package.size > MB
    outcomes = await asyncio.gather(
        h.fw.updater.update("fw-push", package, delivery=Delivery.PUSH),
        h.fw.updater.update("fw-coap", package, delivery=Delivery.PULL_COAP),
        h.fw.updater.update("fw-http", package, delivery=Delivery.PULL_HTTP),
    )
    for dev, outcome, method in zip(
        (push, coap, web), outcomes, ("push", "pull-coap", "pull-http")
    ):
        assert outcome.ok, (dev.name, outcome)
        assert (outcome.delivery, outcome.from_version, outcome.version) == (
            method,
            "1.0.0",
            "2.0.0",
        )
        assert dev.firmware_version == "2.0.0"
        assert dev.stats.firmware_updates == 1
    assert h.fw.files.requests >= 1  # the device pulled from Shoal's own CoAP file server

    # a device already on the version is left alone; a bad token gets nothing
    again = await h.fw.updater.update("fw-push", package)
    assert again.ok and again.skipped and push.stats.firmware_updates == 1
    stale = await h.http.get("/api/v1/firmware/download/not-a-token")
    assert stale.status_code == 404


async def test_recognition_model_update_verified_without_reboot(h: Harness) -> None:
    cam = await h.device("cam-1", profile="camera")
    body = make_package("4.0.0", model_name="salmon-detector", size=4096)
    meta = PackageMeta("salmon-detector", "4.0.0", PackageType.MODEL)
    package = await h.fw.repository.add_bytes(meta, body)
    outcome = await h.fw.updater.update("cam-1", package)
    assert outcome.ok, outcome
    assert cam.value("/33001/0/3") == "4.0.0"
    assert cam.firmware_version == "1.0.0"  # a model, not firmware
    assert cam.stats.reboots == 0


# -- campaigns ----------------------------------------------------------------------------


def _feed_kinds(h: Harness, kind: str, campaign_id: int) -> list[dict[str, Any]]:
    return [i for i in h.feed if i["kind"] == kind and i.get("campaign_id") == campaign_id]


async def test_each_failure_has_a_clear_reason_and_raises_an_alert(h: Harness) -> None:
    await h.device("ok-1")
    await h.device("integrity-1", firmware_outcome="integrity")
    await h.device("fails-1", firmware_outcome="failure")
    await h.device("hangs-1", firmware_outcome="hang")
    await h.device("old-1", OldVersionDevice)
    names = ["ok-1", "integrity-1", "fails-1", "hangs-1", "old-1"]
    await h.in_inventory(*names)
    package = await h.upload("2.0.0")
    c = await h.campaign(package["id"], names, canary=0, failure_threshold=1.0, max_concurrent=5)
    done = await h.until_state(c["id"], "completed", timeout=90)
    rows = await h.rows(c["id"])
    assert rows["ok-1"]["state"] == "succeeded"
    reasons = {n: rows[n]["reason"] for n in names if n != "ok-1"}
    assert "integrity check failure" in reasons["integrity-1"]
    assert rows["integrity-1"]["result_code"] == 5
    assert "firmware update failed (Update Result 8)" in reasons["fails-1"]
    assert rows["fails-1"]["result_code"] == 8
    assert "did not finish the update" in reasons["hangs-1"]
    assert "Updating" in reasons["hangs-1"]
    assert "came back on 1.0.0, not 2.0.0" in reasons["old-1"]
    assert done["counts"]["failures"] == 4

    # failed devices run their old firmware and nothing is left pending on them
    for n in names[1:]:
        assert rows[n]["outcome"] == "failure"
        assert rows[n]["state"] == "rolled_back", rows[n]
        assert rows[n]["from_version"] == "1.0.0"
    hung = next(d for d in h.devices if d.name == "hangs-1")
    assert hung.firmware.state == simfw.IDLE  # rebooted out of Updating, package discarded

    # one alert per failure: the live feed, the device history, the alert hook
    failed = _feed_kinds(h, "firmware_failed", c["id"])
    assert sorted(i["endpoint"] for i in failed) == sorted(names[1:])
    assert all(i["reason"] for i in failed)
    events = await h.node.event_log.query(kinds=["firmware_failed"])
    assert sorted(e.endpoint for e in events) == sorted(names[1:])
    assert sorted(f.endpoint for f in h.failures) == sorted(names[1:])
    assert _feed_kinds(h, "firmware_succeeded", c["id"])[0]["endpoint"] == "ok-1"


async def test_canary_failure_pauses_before_the_first_batch(h: Harness) -> None:
    await h.device("canary-bad", firmware_outcome="integrity")
    for i in range(4):
        await h.device(f"pen-{i}")
    names = ["canary-bad"] + [f"pen-{i}" for i in range(4)]
    await h.in_inventory(*names)
    package = await h.upload("2.0.0")

    preview = await h.http.post(
        "/api/v1/firmware/campaigns/preview",
        json={
            "package_id": package["id"],
            "targets": {"endpoints": [*names, "ghost"]},
            "rollout": {"canary_endpoints": ["canary-bad"], "batch_size": 2},
        },
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["batches"] == [1, 2, 2]
    assert preview.json()["devices"][0]["endpoint"] == "canary-bad"
    assert preview.json()["excluded"] == [
        {"endpoint": "ghost", "reason": "no such device in this tenant"}
    ]

    c = await h.campaign(
        package["id"], names, canary_endpoints=["canary-bad"], batch_size=2, max_concurrent=2
    )
    paused = await h.until_state(c["id"], "paused")
    assert "canary failed" in paused["pause_reason"]
    await asyncio.sleep(1.0)  # several scheduler ticks: still nothing started
    rows = await h.rows(c["id"])
    assert rows["canary-bad"]["outcome"] == "failure"
    assert all(rows[n]["state"] == "pending" for n in names[1:])
    assert all(d.stats.firmware_updates == 0 for d in h.devices)
    assert len(_feed_kinds(h, "firmware_failed", c["id"])) == 1

    # the operator looked, resumes: the batches run
    resumed = await h.http.post(f"/api/v1/firmware/campaigns/{c['id']}/resume")
    assert resumed.status_code == 200
    done = await h.until_state(c["id"], "completed", timeout=90)
    assert done["counts"]["succeeded"] == 4
    assert all(d.firmware_version == "2.0.0" for d in h.devices if d.name != "canary-bad")

    # watch shows the same and exits 1: a device failed
    out = io.StringIO()
    host, port = h.node.http_address
    code = await asyncio.to_thread(watch, c["id"], f"http://{host}:{port}", interval=0.1, out=out)
    assert code == 1
    assert "FAILED canary-bad" in out.getvalue()


async def test_failure_rate_threshold_pauses_between_batches(h: Harness) -> None:
    names = ["t-0", "t-1", "t-2", "t-3", "t-4", "t-5"]
    for n in names:
        outcome = "integrity" if n in ("t-1", "t-2") else "success"
        await h.device(n, firmware_outcome=outcome)
    await h.in_inventory(*names)
    package = await h.upload("2.0.0")
    c = await h.campaign(
        package["id"],
        names,
        canary_endpoints=["t-0"],
        batch_size=2,
        failure_threshold=0.25,
        auto_rollback=False,
    )
    paused = await h.until_state(c["id"], "paused")
    assert "failure rate 100% (2 of 2)" in paused["pause_reason"]
    rows = await h.rows(c["id"])
    assert [rows[n]["state"] for n in ("t-3", "t-4", "t-5")] == ["pending"] * 3
    cancelled = await h.http.post(f"/api/v1/firmware/campaigns/{c['id']}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    rows = await h.rows(c["id"])
    assert rows["t-3"]["state"] == "cancelled"


async def test_failed_device_and_whole_campaign_are_rolled_back(h: Harness) -> None:
    """A probe broken by the new firmware fails its soak and gets 1.0.0 flashed back
    (the repository keeps it); then the whole campaign is rolled back."""
    v1 = await h.upload("1.0.0")
    await h.device("probe-broken", BrokenProbeDevice)
    await h.device("probe-a")
    await h.device("probe-b")
    names = ["probe-broken", "probe-a", "probe-b"]
    await h.in_inventory(*names)
    v2 = await h.upload("2.0.0", size=8192)
    c = await h.campaign(v2["id"], names, canary=0, failure_threshold=1.0)
    done = await h.until_state(c["id"], "completed", timeout=90)
    rows = await h.rows(c["id"])
    broken = rows["probe-broken"]
    assert broken["state"] == "rolled_back", broken
    assert "peripheral malfunction (error code 8)" in broken["reason"]
    assert broken["rollback_note"] == "rolled back to 1.0.0"
    probe = next(d for d in h.devices if d.name == "probe-broken")
    assert probe.firmware_version == "1.0.0" and probe.error_codes == []
    assert probe.stats.firmware_updates == 2  # the update, then the rollback
    assert done["counts"]["succeeded"] == 2
    assert _feed_kinds(h, "firmware_rolled_back", c["id"])[0]["endpoint"] == "probe-broken"

    # the old version cannot be deleted while it is the way back
    kept = await h.http.delete(f"/api/v1/firmware/packages/{v1['id']}")
    assert kept.status_code == 409

    back = await h.http.post(f"/api/v1/firmware/campaigns/{c['id']}/rollback")
    assert back.status_code == 200 and back.json()["state"] == "rolling_back"
    await h.until_state(c["id"], "rolled_back", timeout=90)
    rows = await h.rows(c["id"])
    assert {rows[n]["state"] for n in names} == {"rolled_back"}
    assert all(d.firmware_version == "1.0.0" for d in h.devices)
    (listed,) = (await h.http.get("/api/v1/firmware/campaigns")).json()
    assert (listed["state"], listed["counts"]["rolled_back"], listed["counts"]["total"]) == (
        "rolled_back",
        3,
        3,
    )


class QueueModeDevice(SimDevice):
    """Registers in queue mode (`Q`): reachable only for a while after it speaks."""

    def _register_message(self) -> Message:
        return super()._register_message().add(o.URI_QUERY, "Q")


async def test_queue_mode_device_is_updated_when_it_wakes(h: Harness) -> None:
    server = h.node.server
    server.config = dataclasses.replace(server.config, queue_awake_time=0.5)
    dev = await h.device("sleepy-1", QueueModeDevice, lifetime=3)
    assert server.registration("sleepy-1").queue_mode

    async def asleep() -> bool:
        reg = server.store.by_endpoint("sleepy-1")
        return reg is not None and server.is_sleeping(reg)

    await eventually(asleep, 10, "the device asleep")
    package = await h.upload("2.0.0")
    c = await h.campaign(package["id"], ["sleepy-1"], canary=0)
    done = await h.until_state(c["id"], "completed", timeout=90)
    assert done["counts"]["succeeded"] == 1
    assert dev.firmware_version == "2.0.0" and dev.stats.firmware_updates == 1


# -- crash and restart -----------------------------------------------------------------------

SERVER = r"""
import asyncio, dataclasses, sys
from shoal.coap.endpoint import run
from shoal.node import NodeConfig, ShoalNode
from shoal.api import firmware as firmware_api
from shoal.coap import options as o
from shoal.coap.message import Message
from shoal.firmware import DeliveryConfig, FirmwareConfig, FirmwareService

async def main(coap_port, http_port, data_dir):
    cfg = FirmwareConfig(tick=0.2, delivery=DeliveryConfig(
        request_timeout=3.0, register_timeout=30.0, download_timeout=30.0, update_timeout=15.0,
        reboot_grace=8.0, verify_timeout=30.0, soak=0.5, poll_interval=0.5))
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    kw = {k: v for k, v in (("firmware", cfg), ("coaps", False)) if k in known}
    node = ShoalNode(
        NodeConfig(
            coap_port=coap_port, http_port=http_port, data_dir=data_dir, secure=False, **kw
        )
    )
    await node.start()
    if getattr(node, "firmware", None) is None:
        service = FirmwareService(
            node.server, node.db, node.inventory, node.event_log, node.feed, data_dir, cfg)
        node.app.state.firmware = service
        node.app.include_router(firmware_api.router)
        await service.start(http_base=f"http://127.0.0.1:{http_port}")
    print("READY", flush=True)
    await asyncio.Event().wait()

run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
"""


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _spawn_server(
    coap_port: int, http_port: int, data_dir: Path
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER,
        str(coap_port),
        str(http_port),
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError("the server process ended during start-up")
            if line.strip() == b"READY":
                return proc


async def test_server_killed_mid_campaign_resumes_and_updates_each_device_once(
    tmp_path: Path,
) -> None:
    coap_port, http_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    data_dir = tmp_path / "data"
    proc = await _spawn_server(coap_port, http_port, data_dir)
    devices: list[SimDevice] = []
    try:
        names = [f"crash-{i}" for i in range(6)]
        for n in names:
            dev = SimDevice(
                DeviceConfig(
                    n,
                    firmware_update_delay=1.0,
                    reboot_delay=0.2,
                    retry_min=0.3,
                    retry_max=1.0,
                    request_timeout=5.0,
                    sample_interval=5.0,
                ),
                ("127.0.0.1", coap_port),
            )
            devices.append(dev)
            assert await dev.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http:

            async def registered() -> bool:
                resp = await http.get("/api/v1/devices", params={"limit": 100, "unassigned": True})
                items = resp.json().get("items", []) if resp.status_code == 200 else []
                return sum(1 for d in items if d.get("firmware_version")) >= len(names)

            await eventually(registered, 30, "devices registered")
            upload = await http.post(
                "/api/v1/firmware/packages",
                params={"name": "shoal-firmware", "version": "2.0.0"},
                content=make_package("2.0.0", size=64 * 1024),
            )
            assert upload.status_code == 201, upload.text
            body = {
                "name": "crash test",
                "package_id": upload.json()["id"],
                "targets": {"endpoints": names},
                "rollout": {"canary": 1, "batch_size": 2, "max_concurrent": 2},
            }
            created = await http.post("/api/v1/firmware/campaigns", json=body)
            cid = created.json()["id"]
            assert (await http.post(f"/api/v1/firmware/campaigns/{cid}/start")).status_code == 200

            # kill -9 while an update is executing (or, failing that, mid-campaign)
            async def mid_update() -> bool:
                rows = (await http.get(f"/api/v1/firmware/campaigns/{cid}/devices")).json()
                done = sum(r["state"] == "succeeded" for r in rows)
                executing = any(r["step"] in ("updating", "verifying") for r in rows)
                return done >= 1 and (executing or any(r["state"] == "in_progress" for r in rows))

            await eventually(mid_update, 60, "an update in flight")
            os.kill(proc.pid, signal.SIGKILL)
            print(
                "AT KILL", [(d.name, d.firmware.state, d.stats.firmware_updates) for d in devices]
            )
            await proc.wait()
            await asyncio.sleep(1.0)

            proc = await _spawn_server(coap_port, http_port, data_dir)

            async def completed() -> bool:
                resp = await http.get(f"/api/v1/firmware/campaigns/{cid}")
                return resp.status_code == 200 and resp.json()["state"] == "completed"

            await eventually(completed, 120, "campaign completed after the restart")
            rows = (await http.get(f"/api/v1/firmware/campaigns/{cid}/devices")).json()
            assert {r["state"] for r in rows} == {"succeeded"}, rows
        for dev in devices:
            assert dev.firmware_version == "2.0.0", dev.name
            assert dev.stats.firmware_updates == 1, (dev.name, dev.stats.firmware_updates)
    finally:
        for dev in devices:
            await dev.stop(deregister=False)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

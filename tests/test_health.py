"""Device health end to end: a Shoal node with alerting attached, simulated
devices over real loopback UDP, faults injected into the devices."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from alerting_fixtures import Harness, wait_for
from alerting_fixtures import harness as harness
from shoal.domain.health import Health
from shoal.domain.profiles import DeviceProfile, ResourceSpec
from shoal.store import DeviceStatus


async def test_silent_device_raises_not_responding_and_resolves_on_return(
    harness: Harness,
) -> None:
    h = harness
    feed = h.node.feed.watch()
    seen: list[dict[str, Any]] = []

    async def collect() -> None:
        async for item in feed:
            seen.append(item)

    collector = asyncio.get_running_loop().create_task(collect())
    device = await h.device("wq-silent")
    other = await h.device("wq-fine")
    await h.profiled(device)
    await h.profiled(other)
    health = h.alerting.health
    assert health.device("wq-silent") is not None
    await wait_for(lambda: health.devices["wq-silent"].pmax == 1.0, what="pmax from profile")
    assert health.devices["wq-silent"].status == Health.ONLINE

    device.set_silent(True)
    alert = await h.wait_alert("wq-silent", "not_responding")
    state = health.devices["wq-silent"]
    assert state.status == Health.UNRESPONSIVE
    assert "no notification" in state.reason
    assert alert.severity == "high" and alert.state == "open"
    assert h.alert("wq-fine", "not_responding") is None
    detection = next(d for d in health.detections if d.endpoint == "wq-silent")
    assert detection.signal == "notification"
    # the measured latency is reported; the bound itself is the benchmark's business
    assert detection.deadline_latency >= 0.0
    rollup = health.rollup()
    assert rollup["state"] == "degraded" and rollup["not_responding"] == ["wq-silent"]

    # the inventory and the device history say so too
    async def inventory_offline() -> bool:
        return (await h.node.inventory.get_device("wq-silent")).status == DeviceStatus.OFFLINE

    deadline = asyncio.get_running_loop().time() + 30
    while not await inventory_offline():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)

    device.set_silent(False)  # comes back: sends an Update at once
    await wait_for(lambda: h.alert("wq-silent", "not_responding") is None, what="auto-resolve")
    assert health.devices["wq-silent"].status == Health.ONLINE
    await h.alerting.drain()
    stored = await h.alerting.store.get_alert(alert.id)
    assert stored.state == "resolved" and stored.resolved_by == "auto"

    await wait_for(lambda: any(i["kind"] == "alert_resolved" for i in seen), what="feed resolution")
    kinds = [i["kind"] for i in seen]
    assert "alert_raised" in kinds and "health" in kinds
    raised = next(i for i in seen if i["kind"] == "alert_raised")
    assert raised["endpoint"] == "wq-silent" and raised["alert_id"] == alert.id
    collector.cancel()

    # over HTTP: the device's health and the fleet summary
    async with httpx.AsyncClient(base_url=h.base_url) as client:
        one = (await client.get("/health/devices/wq-silent")).json()
        assert one["status"] == "online" and one["profile"] == "fast-water"
        summary = (await client.get("/health")).json()
        assert summary["detection_latency"]["detections"] >= 1
        assert summary["detection_latency"]["setting"] == 2.0
        missing = await client.get("/health/devices/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")


async def test_deregistered_and_expired_devices(harness: Harness) -> None:
    h = harness
    leaving = await h.device("wq-leaving")
    lapsing = await h.device("wq-lapsing", lifetime=2)
    await h.profiled(leaving)
    await h.profiled(lapsing)
    health = h.alerting.health

    await leaving.stop(deregister=True)
    await wait_for(
        lambda: health.devices["wq-leaving"].status == Health.DEREGISTERED, what="de-registered"
    )
    assert h.alert("wq-leaving", "not_responding") is None  # leaving is not an alarm

    # a silent device whose lifetime runs out ends up offline with the lifetime as reason
    lapsing.set_silent(True)
    await wait_for(lambda: health.devices["wq-lapsing"].status == Health.OFFLINE, what="offline")
    await h.wait_alert("wq-lapsing", "not_responding")
    signals = {d.signal for d in health.detections if d.endpoint == "wq-lapsing"}
    assert signals & {"notification", "lifetime"}
    await wait_for(
        lambda: (
            "lifetime" in health.devices["wq-lapsing"].reason
            or "expired" in health.devices["wq-lapsing"].reason
        ),
        what="lifetime reason",
    )


async def test_refused_observation_is_flagged(harness: Harness) -> None:
    h = harness
    # st on a text resource is refused by the device (4.00): the profile says so
    bad = DeviceProfile(
        name="bad-water",
        kind="sensor",
        priority=10,
        resources=(
            ResourceSpec("/3326/0/5700", pmax=1, quantity="ph"),
            ResourceSpec("/3326/0/5750", st=1.0),
        ),
    )
    h.alerting.profiles.set_profile(bad)
    device = await h.device("wq-refusing")
    alert = await h.wait_alert("wq-refusing", "observation_refused@/3326/0/5750")
    assert "refused" in alert.message
    applied = h.alerting.profiles.applied["wq-refusing"]
    assert applied.profile.name == "bad-water"
    assert "/3326/0/5700" in applied.observed and "/3326/0/5750" in applied.refused
    assert device.observations >= 1

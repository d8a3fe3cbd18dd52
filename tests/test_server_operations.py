"""Every device-management operation through the real LwM2M server, against the
simulator, in each content format a 1.0, 1.1 and 1.2 client negotiates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from shoal.coap.codes import Code
from shoal.lwm2m import requests as rq
from shoal.lwm2m.attributes import NotificationAttributes
from shoal.lwm2m.path import Path
from shoal.server import events as ev
from shoal.server.server import Lwm2mServer, ServerConfig
from shoal.sim import DeviceConfig, SimDevice


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def server() -> AsyncIterator[Lwm2mServer]:
    srv = Lwm2mServer(ServerConfig(port=0))
    await srv.start()
    yield srv
    await srv.stop()


async def start(server: Lwm2mServer, name: str, **kw: object) -> SimDevice:
    device = SimDevice(DeviceConfig(name, sample_interval=0.2, **kw), server.address)  # type: ignore[arg-type]
    assert await device.start()
    return device


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_read_write_execute_discover_create_delete(server: Lwm2mServer, version: str) -> None:
    device = await start(server, f"ops-{version}", version=version)
    try:
        ep = device.name
        fmt = server.preferred_format(server.registration(ep))
        assert fmt == (rq.TLV if version == "1.0" else fmt)

        read = await server.read(ep, "/3/0")
        assert read.ok and read.values[Path(3, 0, 1)] == "WQ-200"
        single = await server.read(ep, "/3303/0/5700")
        assert isinstance(single.values[Path(3303, 0, 5700)], float)

        # Write: replace a resource, partial update of an instance
        assert (await server.write(ep, "/1/0/1", 600)).code == Code.CHANGED
        assert device.value("/1/0/1") == 600
        partial = await server.write(ep, "/1/0", {Path(1, 0, 1): 900}, partial=True)
        assert partial.code == Code.CHANGED
        assert device.value("/1/0/1") == 900
        refused = await server.write(ep, "/3/0/0", "someone else")
        assert refused.code == Code.METHOD_NOT_ALLOWED

        # Execute with arguments
        assert (await server.execute(ep, "/3/0/4", "0='now'")).ok

        # Discover shows attributes written with Write-Attributes
        attrs = NotificationAttributes(pmin=2, pmax=30, st=0.5)
        assert (await server.write_attributes(ep, "/3303/0/5700", attrs)).ok
        found = await server.discover(ep, "/3303/0")
        links = {str(link.path): link for link in found.links}
        assert links["/3303/0/5700"].attributes.pmin == 2
        assert links["/3303/0/5700"].attributes.pmax == 30

        # Create an instance, read it, delete it
        created = await server.create(ep, 3303, {Path(3303, 7, 5700): 4.5}, instance_id=7)
        assert created.code == Code.CREATED, created
        assert (await server.read(ep, "/3303/7/5700")).values[Path(3303, 7, 5700)] == 4.5
        assert (await server.delete(ep, "/3303/7")).code == Code.DELETED
        assert (await server.read(ep, "/3303/7")).code == Code.NOT_FOUND
    finally:
        await device.stop()


async def test_composite_operations_and_observe_composite(server: Lwm2mServer) -> None:
    device = await start(server, "composite-1", profile="camera")
    try:
        ep = device.name
        paths = ["/33001/0/0", "/3/0/9"]
        read = await server.read_composite(ep, paths)
        assert read.ok, read
        assert set(read.values) == {Path(33001, 0, 0), Path(3, 0, 9)}

        write = await server.write_composite(ep, {Path(33001, 0, 5): 12.0})
        assert write.code == Code.CHANGED
        assert device.value("/33001/0/5") == 12.0

        notes: list[ev.Notification] = []
        server.bus.subscribe(ev.Notification, notes.append)
        first, observation = await server.observe_composite(ep, paths)
        assert first.ok and observation is not None and observation.composite
        await until(lambda: len(notes) >= 1)
        assert set(notes[-1].values) <= {Path(33001, 0, 0), Path(3, 0, 9)}
        await server.cancel_observation(observation)
        assert server.observations(ep) == []
    finally:
        await device.stop()


async def test_observe_cancel_and_send(server: Lwm2mServer) -> None:
    device = await start(server, "observe-1")
    try:
        ep = device.name
        notes: list[ev.Notification] = []
        server.bus.subscribe(ev.Notification, notes.append)
        await server.write_attributes(ep, "/3303/0/5700", NotificationAttributes(pmin=0, pmax=1))
        first, observation = await server.observe(ep, "/3303/0/5700")
        assert first.ok and observation is not None
        await until(lambda: len(notes) >= 3)
        assert all(Path(3303, 0, 5700) in n.values for n in notes)
        await server.cancel_observation(observation)
        seen = len(notes)
        await asyncio.sleep(1.5)
        assert len(notes) <= seen + 1  # at most one already in flight

        sends: list[ev.SendReceived] = []
        server.bus.subscribe(ev.SendReceived, sends.append)
        answer = await device.send()
        assert answer is not None and answer.code == Code.CHANGED
        await until(lambda: len(sends) == 1)
        values = {p for _, vals in sends[0].timestamped for p in vals}
        assert Path(3303, 0, 5700) in values
    finally:
        await device.stop()

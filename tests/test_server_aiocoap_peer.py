"""An LwM2M client written with aiocoap (an independent CoAP stack) against Shoal.

The device registers from its own server context, so Shoal's requests must go
back to the address and socket it registered from.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiocoap
import aiocoap.resource as resource
import pytest

from shoal.coap.codes import Code
from shoal.server import events as ev
from shoal.server.server import Lwm2mServer, ServerConfig

TEXT = 0


class TextResource(resource.Resource):
    """A readable, writable single resource in text/plain."""

    def __init__(self, value: str, writable: bool = True) -> None:
        super().__init__()
        self.value = value
        self.writable = writable

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=self.value.encode(), content_format=TEXT)

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        if not self.writable:
            return aiocoap.Message(code=aiocoap.METHOD_NOT_ALLOWED)
        self.value = request.payload.decode()
        return aiocoap.Message(code=aiocoap.CHANGED)


class Temperature(resource.ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.value = 12.5

    def set(self, value: float) -> None:
        self.value = value
        self.updated_state()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=str(self.value).encode(), content_format=TEXT)


class Reboot(resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bytes] = []

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.calls.append(request.payload)
        return aiocoap.Message(code=aiocoap.CHANGED)


class AiocoapDevice:
    def __init__(self) -> None:
        self.site = resource.Site()
        self.manufacturer = TextResource("Shoal Aquatics", writable=False)
        self.lifetime = TextResource("60")
        self.temperature = Temperature()
        self.reboot = Reboot()
        self.site.add_resource(["3", "0", "0"], self.manufacturer)
        self.site.add_resource(["1", "0", "1"], self.lifetime)
        self.site.add_resource(["3303", "0", "5700"], self.temperature)
        self.site.add_resource(["3", "0", "4"], self.reboot)
        self.ctx: aiocoap.Context | None = None

    async def start(self) -> None:
        self.ctx = await aiocoap.Context.create_server_context(self.site, bind=("127.0.0.1", 0))

    async def register(self, server: tuple[str, int], ep: str) -> aiocoap.Message:
        assert self.ctx is not None
        host, port = server
        req = aiocoap.Message(
            code=aiocoap.POST,
            uri=f"coap://{host}:{port}/rd?ep={ep}&lt=60&lwm2m=1.1&b=U",
            payload=b'</>;rt="oma.lwm2m",</1/0>,</3/0>,</3303/0>',
            content_format=40,
        )
        response: aiocoap.Message = await self.ctx.request(req).response
        return response


@pytest.fixture
async def server() -> AsyncIterator[Lwm2mServer]:
    srv = Lwm2mServer(ServerConfig(port=0))
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def device() -> AsyncIterator[AiocoapDevice]:
    dev = AiocoapDevice()
    await dev.start()
    yield dev
    assert dev.ctx is not None
    await dev.ctx.shutdown()


async def test_aiocoap_device_is_registered_read_written_and_observed(
    server: Lwm2mServer, device: AiocoapDevice
) -> None:
    answer = await device.register(server.address, "aiocoap-probe")
    assert answer.code == aiocoap.CREATED

    read = await server.read("aiocoap-probe", "/3/0/0", fmt=TEXT)
    assert read.ok, read
    assert read.values == {(3, 0, 0): "Shoal Aquatics"}

    written = await server.write("aiocoap-probe", "/1/0/1", 300, fmt=TEXT)
    assert written.code == Code.CHANGED
    assert device.lifetime.value == "300"

    refused = await server.write("aiocoap-probe", "/3/0/0", "x", fmt=TEXT)
    assert refused.code == Code.METHOD_NOT_ALLOWED

    executed = await server.execute("aiocoap-probe", "/3/0/4", "0='now'")
    assert executed.code == Code.CHANGED
    assert device.reboot.calls == [b"0='now'"]

    notes: asyncio.Queue[ev.Notification] = asyncio.Queue()
    server.bus.subscribe(ev.Notification, notes.put_nowait)
    first, observation = await server.observe("aiocoap-probe", "/3303/0/5700", fmt=TEXT)
    assert first.values == {(3303, 0, 5700): 12.5}
    assert observation is not None
    for value in (13.0, 13.5, 14.0):
        device.temperature.set(value)
        note = await asyncio.wait_for(notes.get(), 30)
        assert note.values == {(3303, 0, 5700): value}
    await server.cancel_observation(observation)
    assert server.observations("aiocoap-probe") == []

"""The registration interface over real loopback UDP: Register, Update, De-register."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest

from shoal.coap import options as o
from shoal.coap.codes import CON, Code
from shoal.coap.endpoint import CoapEndpoint
from shoal.coap.message import Message
from shoal.server import events as ev
from shoal.server.server import Lwm2mServer, ServerConfig

LINKS = b'</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>,</4/0>,</5/0>,</3303/0>;ver=1.1'


@pytest.fixture
async def server() -> AsyncIterator[Lwm2mServer]:
    srv = Lwm2mServer(ServerConfig(port=0, expiry_grace=0.0))
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client() -> AsyncIterator[CoapEndpoint]:
    ep = await CoapEndpoint.create()
    yield ep
    ep.close()


def register_msg(*query: str, payload: bytes = LINKS) -> Message:
    msg = Message(CON, Code.POST, payload=payload).add(o.URI_PATH, "rd")
    for q in query:
        msg.add(o.URI_QUERY, q)
    return msg.add(o.CONTENT_FORMAT, 40)


def collect(server: Lwm2mServer, kind: type) -> list[object]:
    seen: list[object] = []
    server.bus.subscribe(kind, seen.append)
    return seen


async def test_register_update_deregister(server: Lwm2mServer, client: CoapEndpoint) -> None:
    registered = collect(server, ev.Registered)
    updated = collect(server, ev.Updated)
    gone = collect(server, ev.Deregistered)
    resp = await client.request(
        server.address, register_msg("ep=probe-1", "lt=120", "lwm2m=1.1", "b=U", "enc=ENC-7K3M")
    )
    assert resp.code == Code.CREATED
    assert resp.location_path[0] == "rd"
    rid = resp.location_path[1]
    reg = server.registration("probe-1")
    assert reg.id == rid
    assert reg.lifetime == 120
    assert reg.version == "1.1"
    assert reg.extra == {"enc": "ENC-7K3M"}
    assert set(reg.objects) == {1, 3, 4, 5, 3303}
    assert reg.object_version(3303) == "1.1"
    assert reg.address == client.address
    assert len(registered) == 1

    upd = Message(CON, Code.POST).add(o.URI_PATH, "rd").add(o.URI_PATH, rid)
    upd.add(o.URI_QUERY, "lt=300")
    resp = await client.request(server.address, upd)
    assert resp.code == Code.CHANGED
    assert reg.lifetime == 300
    assert len(updated) == 1

    dereg = Message(CON, Code.DELETE).add(o.URI_PATH, "rd").add(o.URI_PATH, rid)
    resp = await client.request(server.address, dereg)
    assert resp.code == Code.DELETED
    assert len(gone) == 1
    assert server.store.by_endpoint("probe-1") is None

    # the id is gone: an Update now gets 4.04 so the device registers again
    upd = Message(CON, Code.POST).add(o.URI_PATH, "rd").add(o.URI_PATH, rid)
    resp = await client.request(server.address, upd)
    assert resp.code == Code.NOT_FOUND


async def test_reregister_replaces_old_registration(
    server: Lwm2mServer, client: CoapEndpoint
) -> None:
    registered: list[ev.Registered] = []
    server.bus.subscribe(ev.Registered, registered.append)
    first = await client.request(server.address, register_msg("ep=cam-1", "lt=60"))
    second = await client.request(server.address, register_msg("ep=cam-1", "lt=60"))
    assert first.location_path != second.location_path
    assert registered[1].replaced is not None
    assert registered[1].replaced.id == first.location_path[1]
    assert len(server.store) == 1
    upd = Message(CON, Code.POST).add(o.URI_PATH, "rd").add(o.URI_PATH, first.location_path[1])
    assert (await client.request(server.address, upd)).code == Code.NOT_FOUND


@pytest.mark.parametrize(
    ("query", "payload", "code"),
    [
        (("lt=60",), LINKS, Code.BAD_REQUEST),  # no ep
        (("ep=x", "lt=abc"), LINKS, Code.BAD_REQUEST),
        (("ep=x", "lt=-5"), LINKS, Code.BAD_REQUEST),
        (("ep=x", "lwm2m=9.9"), LINKS, Code.PRECONDITION_FAILED),
        (("ep=x",), b"<not a link", Code.BAD_REQUEST),
        (("ep=x",), b"", Code.BAD_REQUEST),
        (("ep=x",), b"</1/0>," + b"</3303/0>," * 3000, Code.REQUEST_ENTITY_TOO_LARGE),
    ],
)
async def test_malformed_registrations_are_refused(
    server: Lwm2mServer,
    client: CoapEndpoint,
    query: tuple[str, ...],
    payload: bytes,
    code: int,
) -> None:
    resp = await client.request(server.address, register_msg(*query, payload=payload))
    assert resp.code == code, resp
    assert len(server.store) == 0
    # another device carries on
    ok = await client.request(server.address, register_msg("ep=healthy", "lt=60"))
    assert ok.code == Code.CREATED


async def test_update_from_new_address_is_followed(server: Lwm2mServer) -> None:
    a = await CoapEndpoint.create()
    b = await CoapEndpoint.create()
    try:
        resp = await a.request(server.address, register_msg("ep=nat-1", "lt=60"))
        rid = resp.location_path[1]
        updated: list[ev.Updated] = []
        server.bus.subscribe(ev.Updated, updated.append)
        upd = Message(CON, Code.POST).add(o.URI_PATH, "rd").add(o.URI_PATH, rid)
        assert (await b.request(server.address, upd)).code == Code.CHANGED
        assert server.registration("nat-1").address == b.address
        assert updated[0].address_changed
    finally:
        a.close()
        b.close()


async def test_lifetime_expiry_with_grace(server: Lwm2mServer, client: CoapEndpoint) -> None:
    expired = collect(server, ev.Expired)
    await client.request(server.address, register_msg("ep=short", "lt=1"))
    await client.request(server.address, register_msg("ep=long", "lt=3600"))
    now = asyncio.get_running_loop().time()
    assert server.expire(now) == []
    gone = server.expire(now + 2)
    assert [r.endpoint for r in gone] == ["short"]
    assert len(expired) == 1
    assert server.store.by_endpoint("long") is not None


@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap3-bin not installed")
async def test_libcoap_client_registers_and_deregisters(server: Lwm2mServer) -> None:
    host, port = server.address
    proc = await asyncio.create_subprocess_exec(
        "coap-client-notls",
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        "</1/0>,</3/0>",
        f"coap://{host}:{port}/rd?ep=libcoap-1&lt=60&lwm2m=1.0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.wait_for(proc.communicate(), 30)
    reg = server.registration("libcoap-1")
    assert set(reg.objects) == {1, 3}
    proc = await asyncio.create_subprocess_exec(
        "coap-client-notls",
        "-m",
        "delete",
        f"coap://{host}:{port}/rd/{reg.id}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.wait_for(proc.communicate(), 30)
    assert server.store.by_endpoint("libcoap-1") is None

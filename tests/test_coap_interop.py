"""CoapEndpoint against independent CoAP peers over real loopback UDP.

aiocoap is client and server; libcoap's `coap-client-notls` is a client. Every
socket is bound to 127.0.0.1 on an ephemeral port. The tests run on uvloop (as
production does) through the `uvloop_run` fixture, and wait for things to
happen rather than for fixed times.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import shutil
import socket
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.coap import options as o
from shoal.coap.codes import CON, NON, Code
from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapEndpoint, CoapRequestError
from shoal.coap.engine import Observer
from shoal.coap.message import Message

aiocoap = pytest.importorskip("aiocoap")
import aiocoap.resource as aiocoap_resource  # noqa: E402

pytestmark = pytest.mark.interop

MB = 1024 * 1024
WAIT = 30.0  # generous: the machine is small and busy


def blob(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def wait_for(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


# -- a Shoal endpoint serving a few resources ----------------------------------------


class ShoalSite:
    """Resources on a CoapEndpoint: a store, a 1 MB body, an observable counter."""

    def __init__(self, ep: CoapEndpoint) -> None:
        self.ep = ep
        self.store: dict[str, bytes] = {"/store/greeting": b"hello from shoal"}
        self.big = blob(MB, 1)
        self.counter = 0
        self.removed: list[tuple[Observer, str]] = []
        self.requests: list[Message] = []
        ep.route_prefix("/store", self.on_store)
        ep.route("/big", self.on_big)
        ep.route("/slow", self.on_slow)
        ep.route("/counter", self.on_counter, observable=True)
        ep.on_observer_removed = lambda obs, reason: self.removed.append((obs, reason))

    def on_store(self, req: Message, remote: Any) -> Message:
        self.requests.append(req)
        path = req.path_str()
        if req.code == Code.GET:
            if path not in self.store:
                return Message(code=Code.NOT_FOUND)
            return Message(code=Code.CONTENT, payload=self.store[path]).add(o.CONTENT_FORMAT, 42)
        if req.code == Code.PUT:
            self.store[path] = req.payload
            return Message(code=Code.CHANGED)
        if req.code == Code.POST:
            name = f"{path}/{len(self.store)}"
            self.store[name] = req.payload
            resp = Message(code=Code.CREATED)
            for seg in name.strip("/").split("/"):
                resp.add(o.LOCATION_PATH, seg)
            return resp
        if req.code == Code.DELETE:
            self.store.pop(path, None)
            return Message(code=Code.DELETED)
        return Message(code=Code.METHOD_NOT_ALLOWED)

    def on_big(self, req: Message, remote: Any) -> Message:
        return Message(code=Code.CONTENT, payload=self.big)

    async def on_slow(self, req: Message, remote: Any) -> Message:
        await asyncio.sleep(0.3)
        return Message(code=Code.CONTENT, payload=b"worth the wait")

    def on_counter(self, req: Message, remote: Any) -> Message:
        return Message(code=Code.CONTENT, payload=str(self.counter).encode())

    def observers(self) -> int:
        return len(self.ep.engine.observers("/counter"))


@contextlib.asynccontextmanager
async def shoal_endpoint(config: CoapConfig | None = None) -> AsyncIterator[CoapEndpoint]:
    ep = await CoapEndpoint.create("127.0.0.1", 0, config)
    try:
        yield ep
    finally:
        ep.close()


# -- aiocoap as a client ------------------------------------------------------------


@contextlib.asynccontextmanager
async def aiocoap_client() -> AsyncIterator[Any]:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield ctx
    finally:
        await ctx.shutdown()


def amsg(**kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return aiocoap.Message(**kw)


def test_aiocoap_client_get_put_post_delete(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with shoal_endpoint() as ep, aiocoap_client() as client:
            site = ShoalSite(ep)
            base = f"coap://127.0.0.1:{ep.address[1]}"

            resp = await client.request(
                amsg(code=aiocoap.GET, uri=base + "/store/greeting")
            ).response
            assert resp.code == aiocoap.CONTENT and resp.payload == b"hello from shoal"
            assert resp.opt.content_format == 42

            put = amsg(code=aiocoap.PUT, uri=base + "/store/pen/7", payload=b"12.5 mg/l")
            assert (await client.request(put).response).code == aiocoap.CHANGED
            assert site.store["/store/pen/7"] == b"12.5 mg/l"

            post = amsg(code=aiocoap.POST, uri=base + "/store/readings", payload=b"7.9")
            resp = await client.request(post).response
            assert resp.code == aiocoap.CREATED
            location = "/" + "/".join(resp.opt.location_path)
            assert site.store[location] == b"7.9"

            delete = amsg(code=aiocoap.DELETE, uri=base + "/store/pen/7")
            assert (await client.request(delete).response).code == aiocoap.DELETED
            assert "/store/pen/7" not in site.store

            resp = await client.request(amsg(code=aiocoap.GET, uri=base + "/store/pen/7")).response
            assert resp.code == aiocoap.NOT_FOUND
            resp = await client.request(amsg(code=aiocoap.GET, uri=base + "/nothing")).response
            assert resp.code == aiocoap.NOT_FOUND

            # a handler that awaits: Empty ACK after ack_delay or piggybacked, either is fine
            resp = await client.request(amsg(code=aiocoap.GET, uri=base + "/slow")).response
            assert resp.payload == b"worth the wait"

            # NON request, NON response
            non = amsg(mtype=aiocoap.NON, code=aiocoap.GET, uri=base + "/store/greeting")
            assert (await client.request(non).response).payload == b"hello from shoal"

    uvloop_run(main())


def test_aiocoap_client_block1_and_block2_of_1_mb(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with shoal_endpoint() as ep, aiocoap_client() as client:
            site = ShoalSite(ep)
            base = f"coap://127.0.0.1:{ep.address[1]}"

            resp = await client.request(amsg(code=aiocoap.GET, uri=base + "/big")).response
            assert resp.code == aiocoap.CONTENT
            assert len(resp.payload) == MB and resp.payload == site.big

            upload = blob(MB, 2)
            put = amsg(code=aiocoap.PUT, uri=base + "/store/firmware", payload=upload)
            resp = await client.request(put).response
            assert resp.code == aiocoap.CHANGED
            assert hashlib.sha256(site.store["/store/firmware"]).digest() == (
                hashlib.sha256(upload).digest()
            )
            # the handler saw one request with the whole body
            assert [len(r.payload) for r in site.requests if r.code == Code.PUT] == [MB]

    uvloop_run(main(), timeout=120)


def test_aiocoap_client_observes_100_notifications_in_order_and_cancels(
    uvloop_run: Callable[..., Any],
) -> None:
    async def main() -> None:
        async with shoal_endpoint() as ep, aiocoap_client() as client:
            site = ShoalSite(ep)
            base = f"coap://127.0.0.1:{ep.address[1]}"
            req = client.request(amsg(code=aiocoap.GET, uri=base + "/counter", observe=0))
            first = await req.response
            assert first.payload == b"0" and first.opt.observe is not None
            assert site.observers() == 1

            got: list[bytes] = []
            it = req.observation.__aiter__()
            for i in range(1, 101):
                site.counter = i
                assert ep.notify("/counter") == 1
                async with asyncio.timeout(WAIT):
                    got.append((await it.__anext__()).payload)
            assert got == [str(i).encode() for i in range(1, 101)]

            # aiocoap 0.4 cancels passively: it still acknowledges the first
            # notification after cancel() and resets a later one
            req.observation.cancel()
            async with asyncio.timeout(WAIT):
                while site.observers():
                    site.counter += 1
                    ep.notify("/counter", con=True)
                    await asyncio.sleep(0.1)
            assert [reason for _, reason in site.removed] == ["reset by peer"]

    uvloop_run(main())


# -- aiocoap as a server ------------------------------------------------------------


class AioStore(aiocoap_resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.value = b"hello from aiocoap"
        self.deleted = False

    async def render_get(self, request: Any) -> Any:
        if self.deleted:
            return amsg(code=aiocoap.NOT_FOUND)
        return amsg(code=aiocoap.CONTENT, payload=self.value)

    async def render_put(self, request: Any) -> Any:
        self.value = request.payload
        self.deleted = False
        return amsg(code=aiocoap.CHANGED)

    async def render_post(self, request: Any) -> Any:
        self.value = request.payload
        resp = amsg(code=aiocoap.CREATED)
        resp.opt.location_path = ("store", "1")
        return resp

    async def render_delete(self, request: Any) -> Any:
        self.deleted = True
        return amsg(code=aiocoap.DELETED)


class AioBig(aiocoap_resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.body = blob(MB, 3)
        self.uploaded = b""

    async def render_get(self, request: Any) -> Any:
        return amsg(code=aiocoap.CONTENT, payload=self.body)

    async def render_put(self, request: Any) -> Any:
        self.uploaded = request.payload
        return amsg(code=aiocoap.CHANGED)


class AioCounter(aiocoap_resource.ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def observers(self) -> int:
        return len(self._observations)

    async def render_get(self, request: Any) -> Any:
        return amsg(code=aiocoap.CONTENT, payload=str(self.count).encode())


@contextlib.asynccontextmanager
async def aiocoap_server() -> AsyncIterator[tuple[tuple[str, int], dict[str, Any]]]:
    resources: dict[str, Any] = {"store": AioStore(), "big": AioBig(), "counter": AioCounter()}
    site = aiocoap_resource.Site()
    for name, res in resources.items():
        site.add_resource([name], res)
    ctx = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", 0), transports=["udp6"]
    )
    try:
        sock = ctx.request_interfaces[0].token_interface.message_interface.transport
        port = sock.get_extra_info("socket").getsockname()[1]
        yield ("127.0.0.1", port), resources
    finally:
        await ctx.shutdown()


def req(code: int, path: str, payload: bytes = b"") -> Message:
    msg = Message(CON, code, payload=payload)
    for seg in path.strip("/").split("/"):
        msg.add(o.URI_PATH, seg)
    return msg


def test_shoal_client_against_aiocoap_server(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with aiocoap_server() as (addr, res), shoal_endpoint() as ep:
            resp = await ep.request(addr, req(Code.GET, "/store"))
            assert resp.code == Code.CONTENT and resp.payload == b"hello from aiocoap"

            resp = await ep.request(addr, req(Code.PUT, "/store", b"from shoal"))
            assert resp.code == Code.CHANGED and res["store"].value == b"from shoal"

            resp = await ep.request(addr, req(Code.POST, "/store", b"posted"))
            assert resp.code == Code.CREATED and resp.location_path == ["store", "1"]
            assert res["store"].value == b"posted"

            resp = await ep.request(addr, req(Code.DELETE, "/store"))
            assert resp.code == Code.DELETED
            assert (await ep.request(addr, req(Code.GET, "/store"))).code == Code.NOT_FOUND
            assert (await ep.request(addr, req(Code.GET, "/nowhere"))).code == Code.NOT_FOUND

            # NON, block-wise in 64-byte blocks the client asks for
            body = blob(3000, 6)
            assert (await ep.request(addr, req(Code.PUT, "/store", body))).code == Code.CHANGED
            non = req(Code.GET, "/store")
            non.mtype = NON
            non.add(o.BLOCK2, o.Block(0, False, 2).encode())
            resp = await ep.request(addr, non)
            assert resp.payload == body

    uvloop_run(main(), timeout=120)


def test_shoal_client_block1_and_block2_of_1_mb_with_aiocoap(
    uvloop_run: Callable[..., Any],
) -> None:
    async def main() -> None:
        async with aiocoap_server() as (addr, res), shoal_endpoint() as ep:
            resp = await ep.request(addr, req(Code.GET, "/big"))
            assert resp.code == Code.CONTENT
            assert len(resp.payload) == MB and resp.payload == res["big"].body

            upload = blob(MB, 4)
            resp = await ep.request(addr, req(Code.PUT, "/big", upload))
            assert resp.code == Code.CHANGED
            assert res["big"].uploaded == upload

    uvloop_run(main(), timeout=120)


@pytest.mark.parametrize("proactive", [True, False], ids=["proactive", "passive"])
def test_shoal_client_observes_aiocoap_resource(
    uvloop_run: Callable[..., Any], proactive: bool
) -> None:
    async def main() -> None:
        async with aiocoap_server() as (addr, res), shoal_endpoint() as ep:
            counter = res["counter"]
            got: asyncio.Queue[Message] = asyncio.Queue()
            ended: list[str] = []
            obs = await ep.observe(addr, req(Code.GET, "/counter"), got.put_nowait, ended.append)
            assert obs.active and obs.response is not None
            assert obs.response.payload == b"0" and obs.response.observe is not None
            assert counter.observers() == 1

            payloads = []
            for i in range(1, 101):
                counter.count = i
                counter.updated_state()
                async with asyncio.timeout(WAIT):
                    payloads.append((await got.get()).payload)
            assert payloads == [str(i).encode() for i in range(1, 101)]

            last = await obs.cancel(proactive=proactive)
            assert not obs.active
            if proactive:
                assert last is not None and last.code == Code.CONTENT
                assert last.observe is None
            else:
                assert last is None
                counter.count += 1
                counter.updated_state()  # answered with a Reset
            await wait_for(lambda: counter.observers() == 0)
            assert got.empty() and ended == []

    uvloop_run(main(), timeout=90)


# -- libcoap's command-line client --------------------------------------------------


COAP_CLIENT = shutil.which("coap-client-notls")
needs_libcoap = pytest.mark.skipif(
    COAP_CLIENT is None,
    reason="coap-client-notls not installed (Debian package libcoap3-bin)",
)


async def coap_client(*args: str, timeout: float = WAIT) -> tuple[int, bytes, bytes]:
    assert COAP_CLIENT is not None
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


@needs_libcoap
def test_libcoap_client_get_and_delete(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with shoal_endpoint() as ep:
            site = ShoalSite(ep)
            uri = f"coap://127.0.0.1:{ep.address[1]}/store/greeting"
            rc, out, err = await coap_client("-B", "20", uri)
            assert rc == 0, err
            assert out.strip() == b"hello from shoal"
            rc, out, err = await coap_client("-B", "20", "-m", "delete", uri)
            assert rc == 0, err
            assert "/store/greeting" not in site.store
            rc, out, err = await coap_client(
                "-B", "20", "-N", f"coap://127.0.0.1:{ep.address[1]}/slow"
            )
            assert rc == 0, err
            assert out.strip() == b"worth the wait"

    uvloop_run(main())


@needs_libcoap
def test_libcoap_client_block_wise_put_and_get(
    uvloop_run: Callable[..., Any], tmp_path: Path
) -> None:
    upload = blob(100 * 1024, 5)
    src = tmp_path / "firmware.bin"
    src.write_bytes(upload)
    dst = tmp_path / "big.bin"

    async def main() -> None:
        async with shoal_endpoint() as ep:
            site = ShoalSite(ep)
            base = f"coap://127.0.0.1:{ep.address[1]}"
            rc, _, err = await coap_client(
                "-B", "30", "-m", "put", "-b", "1024", "-f", str(src), base + "/store/fw"
            )
            assert rc == 0, err
            assert site.store["/store/fw"] == upload
            assert [len(r.payload) for r in site.requests if r.code == Code.PUT] == [len(upload)]

            rc, _, err = await coap_client("-B", "30", "-b", "1024", "-o", str(dst), base + "/big")
            assert rc == 0, err
            assert dst.read_bytes() == site.big

    uvloop_run(main(), timeout=90)


@needs_libcoap
def test_libcoap_client_observes(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        async with shoal_endpoint() as ep:
            site = ShoalSite(ep)
            uri = f"coap://127.0.0.1:{ep.address[1]}/counter"
            client = asyncio.ensure_future(coap_client("-B", "30", "-w", "-s", "3", uri))
            await wait_for(lambda: site.observers() == 1 or client.done())
            sent = []
            while not client.done() and site.observers() == 1:
                site.counter += 1
                ep.notify("/counter")
                sent.append(site.counter)
                await asyncio.sleep(0.1)
            rc, out, err = await client
            assert rc == 0, err
            lines = [int(x) for x in out.split()]
            # the registration answer, then notifications in the order sent
            assert lines[0] == 0 and len(lines) >= 2
            assert lines == sorted(lines) and set(lines[1:]) <= set(sent)
            # when its time is up, coap-client deregisters (GET with Observe=1)
            await wait_for(lambda: site.observers() == 0)
            assert [reason for _, reason in site.removed] == ["cancelled"]

    uvloop_run(main())


# -- Shoal to Shoal: endpoint behaviour -----------------------------------------------


def test_handler_errors_become_5_00(uvloop_run: Callable[..., Any]) -> None:
    def broken(req: Message, remote: Any) -> Message:
        raise RuntimeError("sensor bus on fire")

    async def broken_later(req: Message, remote: Any) -> Message:
        await asyncio.sleep(0)
        raise RuntimeError("later")

    async def main() -> None:
        async with shoal_endpoint() as server, shoal_endpoint() as client:
            server.route("/broken", broken)
            server.route("/later", broken_later)
            ShoalSite(server)
            logging.getLogger("shoal.coap.endpoint").disabled = True
            try:
                for path in ("/broken", "/later"):
                    resp = await client.request(server.address, req(Code.GET, path))
                    assert resp.code == Code.INTERNAL_SERVER_ERROR
            finally:
                logging.getLogger("shoal.coap.endpoint").disabled = False
            assert server.handler_errors == 2
            resp = await client.request(server.address, req(Code.GET, "/store/greeting"))
            assert resp.payload == b"hello from shoal"

    uvloop_run(main())


def test_cancelled_request_leaves_nothing_behind(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            async with shoal_endpoint() as ep:
                task = asyncio.ensure_future(ep.request(silent.getsockname(), req(Code.GET, "/x")))
                await wait_for(lambda: ep.engine.sizes()["transmissions"] == 1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                sizes = ep.engine.sizes()
                assert sizes["exchanges"] == 0 and sizes["transmissions"] == 0
        finally:
            silent.close()

    uvloop_run(main())


def test_engine_busy_is_a_request_error(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            async with shoal_endpoint(CoapConfig(max_exchanges=1)) as ep:
                first = asyncio.ensure_future(ep.request(silent.getsockname(), req(Code.GET, "/x")))
                await wait_for(lambda: ep.engine.sizes()["exchanges"] == 1)
                with pytest.raises(CoapRequestError, match="too many"):
                    await ep.request(silent.getsockname(), req(Code.GET, "/y"))
                first.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await first
        finally:
            silent.close()

    uvloop_run(main())


# -- bad datagrams over a real socket -----------------------------------------------


GARBAGE = [
    b"",
    b"\x40",
    b"\x40\x01\x00",
    bytes((0x80, 1, 0, 1)),  # version 2
    bytes((0x49, 1, 0, 2)) + bytes(9),  # token length 9
    bytes((0x4F, 1, 0, 3)) + bytes(15),  # token length 15
    bytes((0x40, 1, 0, 4)) + b"\xf1x",  # option delta 15
    bytes((0x40, 1, 0, 5)) + b"\x1f" + b"x" * 20,  # option length 15
    bytes((0x40, 3, 0, 6)) + b"\xb1a\xff",  # payload marker, no payload
    bytes((0x41, 0, 0, 7)) + b"t",  # empty message with a token
    bytes((0x60, 0, 0, 8)) + b"\xffx",  # empty ACK with a payload
    bytes((0x40, 0xE0, 0, 9)),  # code class 7
    random.Random(9).randbytes(1200),
]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_endpoint_survives_bad_datagrams(uvloop_run: Callable[..., Any], loop: str) -> None:
    async def main() -> None:
        async with shoal_endpoint() as ep:
            ShoalSite(ep)
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            raw.bind(("127.0.0.1", 0))
            raw.setblocking(False)
            lp = asyncio.get_running_loop()
            try:
                for data in GARBAGE:
                    raw.sendto(data, ep.address)
                # a CON with a bad option and one with token length 9 get Resets
                raw.sendto(bytes((0x40, 1, 0x12, 0x34)) + b"\xf1x", ep.address)
                async with asyncio.timeout(WAIT):
                    while True:
                        reply = await lp.sock_recv(raw, 2048)
                        if reply[2:4] == b"\x12\x34":
                            break
                assert reply == bytes((0x70, 0, 0x12, 0x34))  # RST, Empty
                # and it still serves a real request from the same socket
                good = req(Code.GET, "/store/greeting")
                good.mid, good.token = 0x4321, b"ok"
                raw.sendto(good.encode(), ep.address)
                async with asyncio.timeout(WAIT):
                    while True:
                        reply = await lp.sock_recv(raw, 2048)
                        if reply[2:4] == b"\x43\x21":
                            break
                answer = Message.decode(reply)
                assert answer.code == Code.CONTENT and answer.payload == b"hello from shoal"
            finally:
                raw.close()
            assert ep.engine.stats["malformed"] >= len(GARBAGE) - 1
            assert ep.handler_errors == 0

    if loop == "uvloop":
        uvloop_run(main())
    else:
        asyncio.run(asyncio.wait_for(main(), WAIT * 2))


def test_request_to_a_silent_peer_times_out(uvloop_run: Callable[..., Any]) -> None:
    async def main() -> None:
        cfg = CoapConfig(ack_timeout=0.05, max_retransmit=2)
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            async with shoal_endpoint(cfg) as ep:
                with pytest.raises(CoapRequestError, match="timeout"):
                    await ep.request(silent.getsockname(), req(Code.GET, "/x"))
        finally:
            silent.close()

    uvloop_run(main())

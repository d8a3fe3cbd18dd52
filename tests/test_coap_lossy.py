"""CoAP over a lossy loopback path: a relay between two CoapEndpoints drops 20% each way.

The relay loses datagrams at random (seeded), but never the same datagram more
than twice, so every message gets through within the default four
retransmissions: what is tested is that the engine recovers from every kind of
loss (a request, its ACK, an Empty ACK, a separate response, a block), not luck.
It drops a bounded number of datagrams and closes itself after a while, so a
broken test cannot leave it running.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from shoal.coap import options as o
from shoal.coap.codes import CON, Code
from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapEndpoint
from shoal.coap.message import Message

LOSS = 0.2
MAX_DROPS = 400  # per direction
MAX_SAME = 2  # never drop one datagram (same bytes, same direction) more often
LIFETIME = 90.0  # the relay closes itself after this long


class LossyRelay(asyncio.DatagramProtocol):
    """Forwards between one client and one server, losing some datagrams each way."""

    def __init__(self, server: tuple[str, int], seed: int) -> None:
        self.server = server
        self.client: Any = None
        self.rng = random.Random(seed)
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._same: Counter[tuple[str, bytes]] = Counter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().call_later(LIFETIME, transport.close)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        if addr == self.server:
            way, dst = "down", self.client
        else:
            way, dst = "up", self.server
            self.client = addr
        if dst is None:
            return
        key = (way, data)
        if (
            self.dropped[way] < MAX_DROPS
            and self._same[key] < MAX_SAME
            and self.rng.random() < LOSS
        ):
            self.dropped[way] += 1
            self._same[key] += 1
            return
        self.forwarded[way] += 1
        self.transport.sendto(data, dst)


def path_msg(code: int, path: str, payload: bytes = b"") -> Message:
    msg = Message(CON, code, payload=payload)
    for seg in path.strip("/").split("/"):
        msg.add(o.URI_PATH, seg)
    return msg


def test_exchanges_complete_over_a_lossy_relay(uvloop_run: Callable[..., Any]) -> None:
    cfg = CoapConfig(ack_timeout=0.2, ack_delay=0.1, nstart=8)
    store: dict[str, bytes] = {}

    def on_store(req: Message, remote: Any) -> Message:
        path = req.path_str()
        if req.code == Code.GET:
            return Message(code=Code.CONTENT, payload=store.get(path, b""))
        store[path] = req.payload
        return Message(code=Code.CHANGED, payload=str(len(req.payload)).encode())

    async def on_slow(req: Message, remote: Any) -> Message:
        await asyncio.sleep(0.25)  # longer than ack_delay: Empty ACK, then a CON response
        return Message(code=Code.CONTENT, payload=b"slow " + req.payload)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await CoapEndpoint.create("127.0.0.1", 0, cfg)
        client = await CoapEndpoint.create("127.0.0.1", 0, cfg)
        transport, relay = await loop.create_datagram_endpoint(
            lambda: LossyRelay(server.address, seed=20), local_addr=("127.0.0.1", 0)
        )
        try:
            server.route_prefix("/store", on_store)
            server.route("/slow", on_slow)
            server.route("/temp", lambda req, remote: Message(code=Code.CONTENT), observable=True)
            via = relay.address
            rng = random.Random(7)
            expected: dict[str, bytes] = {}
            for i in range(8):
                store[f"/store/down/{i}"] = rng.randbytes(4000 + i * 100)

            async def one(i: int) -> None:
                kind = i % 6
                if kind == 0:  # Block1 upload
                    data = rng.randbytes(3000 + i * 50)
                    expected[f"/store/up/{i}"] = data
                    resp = await client.request(via, path_msg(Code.PUT, f"/store/up/{i}", data))
                    assert resp.code == Code.CHANGED and resp.payload == str(len(data)).encode()
                elif kind == 1:  # Block2 download
                    path = f"/store/down/{i % 8}"
                    resp = await client.request(via, path_msg(Code.GET, path))
                    assert resp.payload == store[path]
                elif kind == 2:  # separate response
                    resp = await client.request(via, path_msg(Code.POST, "/slow", str(i).encode()))
                    assert resp.payload == f"slow {i}".encode()
                else:  # small PUT then GET
                    data = f"reading {i}".encode()
                    expected[f"/store/small/{i}"] = data
                    resp = await client.request(via, path_msg(Code.PUT, f"/store/small/{i}", data))
                    assert resp.code == Code.CHANGED
                    resp = await client.request(via, path_msg(Code.GET, f"/store/small/{i}"))
                    assert resp.payload == data

            n = 60
            await asyncio.gather(*(one(i) for i in range(n)))
            for path, data in expected.items():
                assert store[path] == data

            # CON notifications get through too, in order
            got: asyncio.Queue[Message] = asyncio.Queue()
            obs = await client.observe(via, path_msg(Code.GET, "/temp"), got.put_nowait)
            assert obs.active
            seqs: list[int] = []
            for _ in range(10):
                assert server.notify("/temp", con=True) == 1
                seq = (await got.get()).observe
                assert seq is not None
                seqs.append(seq)
            assert seqs == sorted(seqs)
            await obs.cancel()
            assert server.engine.observers() == []

            assert relay.dropped["up"] > 0 and relay.dropped["down"] > 0
            assert client.engine.stats["retransmissions"] > 0
            assert server.engine.stats["duplicates"] > 0  # answered again from cache
            assert client.engine.sizes()["exchanges"] == 0
            assert client.handler_errors == 0 and server.handler_errors == 0
        finally:
            transport.close()
            client.close()
            server.close()

    uvloop_run(main(), timeout=120)

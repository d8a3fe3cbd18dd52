"""The sans-IO CoAP engine with a fake clock: message layer, block-wise, observe, caps.

Time is a plain float handed to the engine. Single-engine tests feed hand-made
datagrams from a fake peer; the rest wire a client Engine and a server Engine
together in memory (`Net`), optionally dropping datagrams on the way.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.coap import options as o
from shoal.coap.codes import ACK, CON, NON, RST, Code
from shoal.coap.config import CoapConfig
from shoal.coap.engine import (
    Engine,
    EngineBusy,
    Event,
    Exchange,
    Incoming,
    NotificationReceived,
    ObserverRemoved,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
)
from shoal.coap.message import Message, empty

PEER = ("192.0.2.7", 5683)
OTHER = ("192.0.2.8", 5683)
CLIENT = ("198.51.100.1", 40001)
SERVER = ("198.51.100.2", 5683)


# -- single-engine helpers ----------------------------------------------------------------


def get(path: str, mtype: int = CON, mid: int = 0, token: bytes = b"") -> Message:
    msg = Message(mtype, Code.GET, mid, token)
    for seg in path.strip("/").split("/"):
        msg.add(o.URI_PATH, seg)
    return msg


def sent(engine: Engine) -> list[tuple[Message, object]]:
    return [(Message.decode(data), addr) for data, addr in engine.datagrams_to_send()]


def sent_to(engine: Engine, addr: object = PEER) -> list[Message]:
    out = sent(engine)
    assert all(a == addr for _, a in out), out
    return [m for m, _ in out]


def events(engine: Engine) -> list[Event]:
    out = []
    while (ev := engine.next_event()) is not None:
        out.append(ev)
    return out


def only_request(engine: Engine) -> Incoming:
    evs = events(engine)
    assert len(evs) == 1 and isinstance(evs[0], RequestReceived), evs
    return evs[0].ctx


def feed(engine: Engine, msg: Message | bytes, now: float = 0.0, remote: object = PEER) -> None:
    engine.receive_datagram(msg if isinstance(msg, bytes) else msg.encode(), remote, now)


def run_timers(engine: Engine, now: float, until: float) -> float:
    """Fire every timer up to `until`; returns the time of the last one fired."""
    while (t := engine.get_timer()) is not None and t <= until:
        now = max(now, t)
        engine.handle_timer(now)
    return now


def content(payload: bytes = b"", **kw: int) -> Message:
    msg = Message(code=Code.CONTENT, payload=payload)
    for name, value in kw.items():
        msg.add({"observe": o.OBSERVE, "cf": o.CONTENT_FORMAT}[name], value)
    return msg


# -- two engines wired together --------------------------------------------------------


Handler = Callable[[Incoming, "Net"], Message | None]


class Net:
    """A client Engine and a server Engine joined by an in-memory, optionally lossy wire."""

    def __init__(
        self,
        client_config: CoapConfig | None = None,
        server_config: CoapConfig | None = None,
        *,
        seed: int = 1,
        handler: Handler | None = None,
    ) -> None:
        self.now = 0.0
        self.client = Engine(client_config, random.Random(seed))
        self.server = Engine(server_config, random.Random(seed + 1))
        self.handler: Handler | None = handler or Net.serve
        self.resources: dict[str, bytes] = {}
        self.observable: set[str] = set()
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.wire: list[tuple[float, object, Message]] = []  # (time, source, message)
        self.drop: Callable[[bytes, object], bool] | None = None
        self.dropped = 0

    @staticmethod
    def serve(ctx: Incoming, net: Net) -> Message | None:
        """A tiny resource store: GET/PUT/POST/DELETE of byte bodies."""
        req = ctx.request
        path = req.path_str()
        if req.code == Code.GET:
            if path not in net.resources:
                return Message(code=Code.NOT_FOUND)
            resp = content(net.resources[path])
            if ctx.observe == 0 and path in net.observable:
                resp.add(o.OBSERVE, 0)
            return resp
        if req.code in (Code.PUT, Code.POST):
            net.resources[path] = req.payload
            code = Code.CHANGED if req.code == Code.PUT else Code.CREATED
            echo = net.resources.get(path + "/echo")
            return Message(code=code, payload=echo if echo is not None else b"")
        if req.code == Code.DELETE:
            net.resources.pop(path, None)
            return Message(code=Code.DELETED)
        return Message(code=Code.METHOD_NOT_ALLOWED)

    def pump(self) -> None:
        moving = True
        rounds = 0
        while moving:
            rounds += 1
            assert rounds < 10_000, "endless ping-pong at one instant"
            moving = False
            for engine, src, dst, peer in (
                (self.client, CLIENT, SERVER, self.server),
                (self.server, SERVER, CLIENT, self.client),
            ):
                for data, addr in engine.datagrams_to_send():
                    moving = True
                    assert addr == dst
                    self.wire.append((self.now, src, Message.decode(data)))
                    if self.drop is not None and self.drop(data, src):
                        self.dropped += 1
                        continue
                    peer.receive_datagram(data, src, self.now)
            while (ev := self.client.next_event()) is not None:
                moving = True
                self.client_events.append(ev)
            while (ev := self.server.next_event()) is not None:
                moving = True
                self.server_events.append(ev)
                if isinstance(ev, RequestReceived) and self.handler is not None:
                    resp = self.handler(ev.ctx, self)
                    if resp is not None:
                        self.server.respond(ev.ctx, resp, self.now)

    def advance(self) -> bool:
        """Jump to the next timer of either engine and fire it."""
        timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
        if not timers:
            return False
        self.now = max(self.now, min(timers))
        self.client.handle_timer(self.now)
        self.server.handle_timer(self.now)
        self.pump()
        return True

    def run_until(self, done: Callable[[], bool], limit: float = 10_000.0) -> None:
        self.pump()
        while not done():
            assert self.now <= limit, "simulated time ran out"
            assert self.advance(), "nothing left to happen"

    def request(self, msg: Message) -> Exchange:
        ex = self.client.request(SERVER, msg, self.now)
        self.pump()
        return ex

    def result(self, ex: Exchange) -> Event | None:
        for ev in self.client_events:
            if isinstance(ev, ResponseReceived | RequestFailed) and ev.exchange is ex:
                return ev
        return None

    def response(self, ex: Exchange, limit: float = 10_000.0) -> Message:
        self.run_until(lambda: self.result(ex) is not None, limit)
        ev = self.result(ex)
        assert isinstance(ev, ResponseReceived), getattr(ev, "reason", ev)
        return ev.response

    def notifications(self, ex: Exchange) -> list[Message]:
        return [
            ev.response
            for ev in self.client_events
            if isinstance(ev, NotificationReceived) and ev.exchange is ex
        ]

    def sent_by(self, src: object) -> list[Message]:
        return [m for _, s, m in self.wire if s == src]

    def lossy(self, rate: float, seed: int) -> None:
        rng = random.Random(seed)
        self.drop = lambda data, src: rng.random() < rate


def body(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# -- message layer: requests and responses ---------------------------------------------


def test_con_request_gets_piggybacked_response() -> None:
    server = Engine()
    feed(server, get("/3/0/9", CON, 0x1001, b"tk"))
    ctx = only_request(server)
    assert ctx.request.uri_path == ["3", "0", "9"]
    assert ctx.remote == PEER
    server.respond(ctx, content(b"87"), 0.0)
    (resp,) = sent_to(server)
    assert (resp.mtype, resp.code, resp.mid, resp.token) == (ACK, Code.CONTENT, 0x1001, b"tk")
    assert resp.payload == b"87"
    # answering twice sends nothing more
    server.respond(ctx, content(b"88"), 0.0)
    assert sent(server) == []


def test_non_request_gets_non_response_with_a_new_mid() -> None:
    server = Engine()
    feed(server, get("/3/0/9", NON, 0x2002, b"nn"))
    server.respond(only_request(server), content(b"87"), 0.0)
    (resp,) = sent_to(server)
    assert (resp.mtype, resp.token, resp.payload) == (NON, b"nn", b"87")
    assert server.get_timer() is not None  # only the dedup sweep: nothing is retransmitted
    run_timers(server, 0.0, 1000.0)
    assert sent(server) == []


def test_client_piggybacked_response() -> None:
    client = Engine()
    ex = client.request(PEER, get("/1/0"), 5.0)
    (req,) = sent_to(client)
    assert req.mtype == CON and req.code == Code.GET and len(req.token) > 0
    assert req.token == ex.token
    resp = content(b"x")
    resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
    feed(client, resp, 6.0)
    (ev,) = events(client)
    assert isinstance(ev, ResponseReceived) and ev.exchange is ex and ev.response.payload == b"x"
    assert ex.done
    assert client.sizes()["exchanges"] == 0 and client.sizes()["transmissions"] == 0


def test_client_non_request_and_non_response() -> None:
    client = Engine()
    ex = client.request(PEER, get("/1/0", NON), 0.0)
    (req,) = sent_to(client)
    assert req.mtype == NON
    resp = content(b"y")
    resp.mtype, resp.mid, resp.token = NON, 0x3333, req.token
    feed(client, resp, 1.0)
    assert sent(client) == []  # a NON response is not acknowledged
    (ev,) = events(client)
    assert isinstance(ev, ResponseReceived) and ev.exchange is ex


def test_client_non_request_times_out_after_response_timeout() -> None:
    cfg = CoapConfig()
    client = Engine(cfg)
    ex = client.request(PEER, get("/1/0", NON), 0.0)
    sent(client)
    run_timers(client, 0.0, cfg.response_timeout - 1)
    assert events(client) == []
    run_timers(client, 0.0, cfg.response_timeout + 1)
    assert sent(client) == []  # NON is never retransmitted
    (ev,) = events(client)
    assert isinstance(ev, RequestFailed) and ev.reason == "timeout" and ev.exchange is ex


def test_client_request_rejected_with_reset() -> None:
    client = Engine()
    ex = client.request(PEER, get("/1/0"), 0.0)
    (req,) = sent_to(client)
    feed(client, empty(RST, req.mid), 0.1)
    (ev,) = events(client)
    assert isinstance(ev, RequestFailed) and ev.reason == "reset by peer" and ev.exchange is ex
    run_timers(client, 0.1, 500.0)
    assert sent(client) == []


def test_client_empty_ack_then_separate_response() -> None:
    client = Engine()
    ex = client.request(PEER, get("/5/0/3"), 0.0)
    (req,) = sent_to(client)
    feed(client, empty(ACK, req.mid), 0.5)
    assert events(client) == []
    # no more retransmissions once acknowledged
    run_timers(client, 0.5, 60.0)
    assert sent(client) == []
    sep = content(b"2")
    sep.mtype, sep.mid, sep.token = CON, 0x7777, req.token
    feed(client, sep, 61.0)
    (ack,) = sent_to(client)
    assert (ack.mtype, ack.code, ack.mid) == (ACK, 0, 0x7777)
    (ev,) = events(client)
    assert isinstance(ev, ResponseReceived) and ev.exchange is ex and ev.response.payload == b"2"
    # the same separate response again: acknowledged from cache, no second event
    feed(client, sep, 62.0)
    assert [m.mid for m in sent_to(client)] == [0x7777]
    assert events(client) == []


def test_client_separate_response_times_out() -> None:
    cfg = CoapConfig(response_timeout=30.0)
    client = Engine(cfg)
    ex = client.request(PEER, get("/5/0/3"), 0.0)
    (req,) = sent_to(client)
    feed(client, empty(ACK, req.mid), 1.0)
    run_timers(client, 1.0, 30.5)
    assert events(client) == []
    run_timers(client, 1.0, 31.5)
    (ev,) = events(client)
    assert isinstance(ev, RequestFailed) and ev.reason == "timeout" and ev.exchange is ex


def test_separate_response_while_request_is_still_retransmitted() -> None:
    """The Empty ACK was lost: the CON response alone ends the retransmissions."""
    client = Engine()
    ex = client.request(PEER, get("/a"), 0.0)
    (req,) = sent_to(client)
    sep = content(b"ok")
    sep.mtype, sep.mid, sep.token = CON, 0x1111, req.token
    feed(client, sep, 1.0)
    assert [m.mtype for m in sent_to(client)] == [ACK]
    (ev,) = events(client)
    assert isinstance(ev, ResponseReceived) and ev.exchange is ex
    run_timers(client, 1.0, 200.0)
    assert sent(client) == []


# -- options --------------------------------------------------------------------------


@pytest.mark.parametrize("number", [9, 2049, 65535])
def test_unknown_critical_option_in_con_request_gets_4_02_piggybacked(number: int) -> None:
    server = Engine()
    req = get("/3/0", CON, 0x4242, b"cr").add(number, b"?")
    feed(server, req)
    assert events(server) == []
    (resp,) = sent_to(server)
    assert (resp.mtype, resp.code, resp.mid, resp.token) == (ACK, Code.BAD_OPTION, 0x4242, b"cr")
    # a retransmission is answered the same way, still without an event
    feed(server, req, 1.0)
    assert sent_to(server)[0].code == Code.BAD_OPTION
    assert events(server) == []


def test_unknown_critical_option_in_non_request_is_ignored() -> None:
    """RFC 7252 5.4.1: such a Non-confirmable message is silently ignored."""
    server = Engine()
    feed(server, get("/3/0", NON, 0x4243, b"cr").add(2049, b"?"))
    assert events(server) == [] and sent(server) == []


def test_unknown_elective_option_is_ignored() -> None:
    server = Engine()
    feed(server, get("/3/0", CON, 0x4244).add(2048, b"?").add(o.NO_RESPONSE, 0))
    ctx = only_request(server)
    assert ctx.request.opt(2048) == b"?"
    server.respond(ctx, content(b"ok"), 0.0)
    assert sent_to(server)[0].code == Code.CONTENT


def test_response_with_unknown_critical_option_fails_the_request() -> None:
    client = Engine()
    ex = client.request(PEER, get("/a"), 0.0)
    (req,) = sent_to(client)
    resp = content(b"x").add(2049, b"")
    resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
    feed(client, resp, 0.1)
    (ev,) = events(client)
    assert isinstance(ev, RequestFailed) and ev.exchange is ex


def test_con_response_with_unknown_critical_option_is_rejected_with_reset() -> None:
    client = Engine()
    ex = client.request(PEER, get("/a"), 0.0)
    (req,) = sent_to(client)
    feed(client, empty(ACK, req.mid), 0.1)
    sep = content(b"x").add(2049, b"")
    sep.mtype, sep.mid, sep.token = CON, 0x0101, req.token
    feed(client, sep, 0.2)
    (rst,) = sent_to(client)
    assert (rst.mtype, rst.mid) == (RST, 0x0101)
    (ev,) = events(client)
    assert isinstance(ev, RequestFailed) and ev.exchange is ex


def test_malformed_block_option_in_request_gets_4_02() -> None:
    server = Engine()
    feed(server, get("/a", CON, 7).add(o.BLOCK2, b"\x00\x00\x00\x06"))
    assert events(server) == []
    assert sent_to(server)[0].code == Code.BAD_OPTION


# -- empty messages and pings -------------------------------------------------------------


def test_con_ping_gets_reset() -> None:
    server = Engine()
    feed(server, empty(CON, 0x0A0B))
    assert [(m.mtype, m.mid) for m in sent_to(server)] == [(RST, 0x0A0B)]
    assert events(server) == []


@pytest.mark.parametrize("mtype", [NON, ACK, RST])
def test_other_unexpected_empty_messages_are_ignored(mtype: int) -> None:
    server = Engine()
    feed(server, empty(mtype, 0x0A0B))
    assert sent(server) == [] and events(server) == []


# -- duplicates -----------------------------------------------------------------------


def test_duplicate_con_is_answered_from_cache() -> None:
    server = Engine()
    req = get("/3/0/0", CON, 0x5151, b"d1")
    feed(server, req, 0.0)
    server.respond(only_request(server), content(b"Shoal"), 0.0)
    (first,) = sent(server)
    for t in (2.5, 7.0, 20.0):
        feed(server, req, t)
        assert sent(server) == [first]
    assert events(server) == []
    assert server.stats["duplicates"] == 3


def test_duplicate_non_is_not_handled_twice() -> None:
    server = Engine()
    req = get("/3/0/0", NON, 0x5152, b"d2")
    feed(server, req, 0.0)
    server.respond(only_request(server), content(b"x"), 0.0)
    sent(server)
    feed(server, req, 1.0)
    assert events(server) == []


def test_same_mid_from_another_peer_is_not_a_duplicate() -> None:
    server = Engine()
    feed(server, get("/a", CON, 1), 0.0, PEER)
    feed(server, get("/a", CON, 1), 0.0, OTHER)
    evs = events(server)
    assert [ev.ctx.remote for ev in evs if isinstance(ev, RequestReceived)] == [PEER, OTHER]


def test_duplicate_of_request_in_progress_gets_empty_ack_then_separate_response() -> None:
    cfg = CoapConfig()
    server = Engine(cfg, random.Random(3))
    req = get("/5/0/2", CON, 0x6161, b"sp")
    feed(server, req, 0.0)
    ctx = only_request(server)
    assert sent(server) == []
    feed(server, req, 2.2)  # the peer retransmits while the handler works
    assert [(m.mtype, m.code, m.mid) for m in sent_to(server)] == [(ACK, 0, 0x6161)]
    feed(server, req, 6.0)
    assert [(m.mtype, m.code, m.mid) for m in sent_to(server)] == [(ACK, 0, 0x6161)]
    assert events(server) == []
    server.respond(ctx, content(b"done"), 7.0)
    (sep,) = sent_to(server)
    assert (sep.mtype, sep.token, sep.payload) == (CON, b"sp", b"done")
    assert sep.mid != 0x6161
    # retransmitted until acknowledged
    now = run_timers(server, 7.0, 7.0 + cfg.ack_timeout * cfg.ack_random_factor)
    assert [m.mid for m in sent_to(server)] == [sep.mid]
    feed(server, empty(ACK, sep.mid), now + 0.1)
    run_timers(server, now, 200.0)
    assert sent(server) == []


def test_deferred_request_gets_empty_ack_after_ack_delay_then_con_separate_response() -> None:
    cfg = CoapConfig(ack_delay=1.0)
    server = Engine(cfg, random.Random(4))
    feed(server, get("/5/0/2", CON, 0x7171, b"df"), 10.0)
    ctx = only_request(server)
    server.defer(ctx, 10.0)
    run_timers(server, 10.0, 10.9)
    assert sent(server) == []
    run_timers(server, 10.0, 11.0)
    assert [(m.mtype, m.code, m.mid) for m in sent_to(server)] == [(ACK, 0, 0x7171)]
    server.respond(ctx, content(b"late"), 15.0)
    (sep,) = sent_to(server)
    assert sep.mtype == CON and sep.payload == b"late" and sep.token == b"df"
    # unacknowledged: sent max_retransmit more times, then given up
    run_timers(server, 15.0, 15.0 + cfg.max_transmit_span + 100)
    assert [m.mid for m in sent_to(server)] == [sep.mid] * cfg.max_retransmit
    assert server.stats["retransmissions"] == cfg.max_retransmit


def test_deferred_request_answered_in_time_is_piggybacked() -> None:
    server = Engine()
    feed(server, get("/a", CON, 0x7272), 0.0)
    ctx = only_request(server)
    server.defer(ctx, 0.0)
    server.respond(ctx, content(b"quick"), 0.5)
    (resp,) = sent_to(server)
    assert (resp.mtype, resp.mid) == (ACK, 0x7272)
    run_timers(server, 0.5, 5.0)
    assert sent(server) == []


def test_separate_response_acked_stops_retransmission() -> None:
    server = Engine(CoapConfig(ack_delay=0.5), random.Random(1))
    feed(server, get("/a", CON, 0x7373, b"ab"), 0.0)
    ctx = only_request(server)
    server.defer(ctx, 0.0)
    run_timers(server, 0.0, 0.5)
    sent(server)
    server.respond(ctx, content(b"x"), 1.0)
    (sep,) = sent_to(server)
    feed(server, empty(ACK, sep.mid), 1.5)
    run_timers(server, 1.5, 300.0)
    assert sent(server) == []
    assert server.sizes()["transmissions"] == 0


# -- retransmission -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_retransmission_back_off_is_randomised_and_exponential(seed: int) -> None:
    cfg = CoapConfig()
    client = Engine(cfg, random.Random(seed))
    ex = client.request(PEER, get("/3/0"), 100.0)
    (first,) = client.datagrams_to_send()
    times = [100.0]
    now = 100.0
    failure = None
    while (t := client.get_timer()) is not None:
        now = t
        client.handle_timer(now)
        for data, addr in client.datagrams_to_send():
            assert (data, addr) == first  # the very same datagram, same MID
            times.append(now)
        evs = events(client)
        if evs:
            (failure,) = evs
            break
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == cfg.max_retransmit
    for i, gap in enumerate(gaps):
        low = cfg.ack_timeout * 2**i
        assert low - 1e-9 <= gap <= low * cfg.ack_random_factor + 1e-9
    for a, b in itertools.pairwise(gaps):
        assert b == pytest.approx(2 * a)
    last = cfg.ack_timeout * 2**cfg.max_retransmit
    assert last - 1e-9 <= now - times[-1] <= last * cfg.ack_random_factor + 1e-9
    assert isinstance(failure, RequestFailed)
    assert failure.reason == "timeout" and failure.exchange is ex
    assert client.stats["timeouts"] == 1 and client.stats["retransmissions"] == 4
    assert client.sizes() == {**client.sizes(), "transmissions": 0, "pending": 0, "exchanges": 0}


def test_initial_timeouts_differ_between_engines() -> None:
    starts = set()
    for seed in range(8):
        client = Engine(rng=random.Random(seed))
        client.request(PEER, get("/a"), 0.0)
        starts.add(client.get_timer())
    assert len(starts) > 1
    assert all(t is not None and 2.0 <= t <= 3.0 for t in starts)


# -- NSTART ---------------------------------------------------------------------------


def test_nstart_one_queues_requests_per_peer() -> None:
    client = Engine()
    ex1 = client.request(PEER, get("/a"), 0.0)
    ex2 = client.request(PEER, get("/b"), 0.0)
    ex3 = client.request(OTHER, get("/c"), 0.0)
    out = sent(client)
    assert [(m.uri_path, a) for m, a in out] == [(["a"], PEER), (["c"], OTHER)]
    first = out[0][0]
    resp = content(b"A")
    resp.mtype, resp.mid, resp.token = ACK, first.mid, first.token
    feed(client, resp, 0.5)
    (nxt,) = sent_to(client)
    assert nxt.uri_path == ["b"] and nxt.token == ex2.token
    assert [ev.exchange for ev in events(client)] == [ex1]  # type: ignore[union-attr]
    assert not ex3.done and not ex2.done


def test_nstart_queue_moves_on_after_a_timeout_and_a_cancel() -> None:
    cfg = CoapConfig()
    client = Engine(cfg, random.Random(2))
    ex1 = client.request(PEER, get("/a"), 0.0)
    ex2 = client.request(PEER, get("/b"), 0.0)
    ex3 = client.request(PEER, get("/c"), 0.0)
    assert [m.uri_path for m in sent_to(client)] == [["a"]]
    client.cancel(ex2, 0.0)  # still queued: never sent
    assert ex2.done
    # /a is given up after its last retransmission; /c goes out at that moment
    run_timers(client, 0.0, 400.0)
    out = sent_to(client)
    assert [m.uri_path for m in out] == [["a"]] * cfg.max_retransmit + [["c"]] * (
        1 + cfg.max_retransmit
    )
    assert [(type(ev), ev.exchange) for ev in events(client)] == [  # type: ignore[union-attr]
        (RequestFailed, ex1),
        (RequestFailed, ex3),
    ]


def test_empty_ack_frees_the_nstart_slot() -> None:
    client = Engine()
    client.request(PEER, get("/slow"), 0.0)
    client.request(PEER, get("/next"), 0.0)
    (first,) = sent_to(client)
    feed(client, empty(ACK, first.mid), 0.2)
    assert [m.uri_path for m in sent_to(client)] == [["next"]]


# -- token matching ---------------------------------------------------------------------


def test_piggybacked_response_with_wrong_token_is_ignored() -> None:
    cfg = CoapConfig()
    client = Engine(cfg, random.Random(5))
    ex = client.request(PEER, get("/a"), 0.0)
    (req,) = sent_to(client)
    wrong = content(b"not yours")
    wrong.mtype, wrong.mid, wrong.token = ACK, req.mid, b"\xde\xad"
    feed(client, wrong, 0.1)
    assert events(client) == []
    # the request is still outstanding: retransmitted, and the right answer completes it
    now = run_timers(client, 0.1, 3.5)
    assert [m.mid for m in sent_to(client)] == [req.mid]
    right = content(b"yours")
    right.mtype, right.mid, right.token = ACK, req.mid, req.token
    feed(client, right, now)
    (ev,) = events(client)
    assert (
        isinstance(ev, ResponseReceived) and ev.exchange is ex and ev.response.payload == b"yours"
    )


def test_wrong_token_forever_ends_in_timeout() -> None:
    client = Engine(rng=random.Random(6))
    ex = client.request(PEER, get("/a"), 0.0)
    sent(client)
    now = 0.0
    while not ex.done:
        t = client.get_timer()
        assert t is not None
        now = t
        client.handle_timer(now)
        for m in sent_to(client):
            wrong = content(b"")
            wrong.mtype, wrong.mid, wrong.token = ACK, m.mid, b"zz"
            feed(client, wrong, now)
    (ev,) = events(client)
    assert isinstance(ev, RequestFailed) and ev.reason == "timeout"


@pytest.mark.parametrize("mtype", [CON, NON])
def test_response_for_unknown_token_gets_reset(mtype: int) -> None:
    client = Engine()
    stray = content(b"?")
    stray.mtype, stray.mid, stray.token = mtype, 0x9999, b"\x01\x02\x03"
    feed(client, stray)
    assert [(m.mtype, m.mid) for m in sent_to(client)] == [(RST, 0x9999)]
    assert events(client) == []


def test_response_from_another_address_does_not_match() -> None:
    client = Engine()
    ex = client.request(PEER, get("/a"), 0.0)
    (req,) = sent_to(client)
    sep = content(b"spoof")
    sep.mtype, sep.mid, sep.token = CON, 0x2222, req.token
    feed(client, sep, 0.5, OTHER)
    assert [(m.mtype, a) for m, a in sent(client)] == [(RST, OTHER)]
    assert events(client) == [] and not ex.done


def test_stray_ack_and_reset_are_ignored() -> None:
    client = Engine()
    feed(client, empty(ACK, 0x1234))
    feed(client, empty(RST, 0x1234))
    stray = content(b"x")
    stray.mtype, stray.mid, stray.token = ACK, 0x1235, b"t"
    feed(client, stray)
    assert sent(client) == [] and events(client) == []


def test_cancel_of_a_pending_request_stops_retransmission() -> None:
    client = Engine()
    ex = client.request(PEER, get("/a"), 0.0)
    sent(client)
    assert client.cancel(ex, 0.5) is None
    run_timers(client, 0.5, 500.0)
    assert sent(client) == [] and events(client) == []
    assert client.sizes()["exchanges"] == 0


def test_given_token_is_kept_and_generated_tokens_are_unique() -> None:
    client = Engine(CoapConfig(nstart=100))
    ex = client.request(PEER, get("/a", token=b"\x00\x01"), 0.0)
    assert ex.token == b"\x00\x01"
    tokens = {client.request(PEER, get("/a"), 0.0).token for _ in range(50)}
    assert len(tokens) == 50


# -- block-wise (RFC 7959) ------------------------------------------------------------


def put(path: str, payload: bytes, code: int = Code.PUT, mtype: int = CON) -> Message:
    msg = get(path, mtype)
    msg.code = code
    msg.payload = payload
    return msg


def test_block1_upload_with_2_31_continue() -> None:
    net = Net()
    data = body(20_000)
    ex = net.request(put("/5/0/0", data))
    resp = net.response(ex)
    assert resp.code == Code.CHANGED
    assert resp.block1 == o.Block(19, False, 6)
    assert net.resources["/5/0/0"] == data
    reqs = net.sent_by(CLIENT)
    assert len(reqs) == 20
    assert reqs[0].block1 == o.Block(0, True, 6) and reqs[0].size1 == 20_000
    assert [r.block1.num for r in reqs if r.block1] == list(range(20))
    assert all(len(r.payload) == 1024 for r in reqs[:-1])
    answers = net.sent_by(SERVER)
    assert [a.code for a in answers] == [Code.CONTINUE] * 19 + [Code.CHANGED]
    assert all(a.block1 == o.Block(i, True, 6) for i, a in enumerate(answers[:-1]))
    # the handler saw one request with the whole body and no Block1/Size1
    (ev,) = [e for e in net.server_events if isinstance(e, RequestReceived)]
    assert ev.ctx.request.payload == data
    assert ev.ctx.request.block1 is None and ev.ctx.request.size1 is None
    assert net.server.sizes()["reassemblies"] == 0


def test_block2_download_with_size2() -> None:
    net = Net()
    data = body(20_000, 1)
    net.resources["/5/0/0"] = data
    ex = net.request(get("/5/0/0"))
    resp = net.response(ex)
    assert resp.payload == data and resp.code == Code.CONTENT
    assert resp.block2 is None and resp.size2 is None
    answers = net.sent_by(SERVER)
    assert answers[0].block2 == o.Block(0, True, 6) and answers[0].size2 == 20_000
    assert [a.block2.num for a in answers if a.block2] == list(range(20))
    assert answers[-1].block2 == o.Block(19, False, 6)
    assert all(a.size2 is None for a in answers[1:])
    # later blocks come from the server's cache, not the handler
    assert len([e for e in net.server_events if isinstance(e, RequestReceived)]) == 1
    reqs = net.sent_by(CLIENT)
    assert [r.block2 for r in reqs[1:]] == [o.Block(i, False, 6) for i in range(1, 20)]


def test_block1_and_block2_in_one_exchange() -> None:
    net = Net()
    net.resources["/dp/echo"] = body(5000, 2)
    ex = net.request(put("/dp", body(3000, 3), Code.POST))
    resp = net.response(ex)
    assert resp.code == Code.CREATED and resp.payload == body(5000, 2)
    assert net.resources["/dp"] == body(3000, 3)


def test_body_of_exactly_one_block_is_not_split() -> None:
    net = Net()
    ex = net.request(put("/a", body(1024)))
    assert net.response(ex).code == Code.CHANGED
    (req,) = net.sent_by(CLIENT)
    assert req.block1 is None and len(req.payload) == 1024


def test_size1_above_the_limit_gets_4_13_with_size1() -> None:
    net = Net(server_config=CoapConfig(max_body_size=4096))
    ex = net.request(put("/5/0/0", body(10_000)))
    resp = net.response(ex)
    assert resp.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert resp.size1 == 4096
    assert len(net.sent_by(CLIENT)) == 1
    assert "/5/0/0" not in net.resources


def test_body_growing_past_the_limit_without_size1_gets_4_13() -> None:
    server = Engine(CoapConfig(max_body_size=2048))
    answers = []
    for num in range(4):
        req = put("/fw", b"z" * 1024)
        req.mid = 100 + num
        req.token = b"up"
        req.add(o.BLOCK1, o.Block(num, True, 6).encode())
        feed(server, req, float(num))
        answers += sent_to(server)
        if answers[-1].code != Code.CONTINUE:
            break
    assert [a.code for a in answers] == [
        Code.CONTINUE,
        Code.CONTINUE,
        Code.REQUEST_ENTITY_TOO_LARGE,
    ]
    assert answers[-1].size1 == 2048
    assert events(server) == [] and server.sizes()["reassemblies"] == 0


@pytest.mark.parametrize("nums", [[0, 2], [0, 1, 1 + 2], [3], [0, 1, 0 + 5]])
def test_block1_out_of_order_gets_4_08(nums: list[int]) -> None:
    server = Engine()
    codes = []
    for i, num in enumerate(nums):
        req = put("/fw", b"z" * 64)
        req.mid, req.token = 200 + i, b"oo"
        req.add(o.BLOCK1, o.Block(num, True, 2).encode())
        feed(server, req, float(i))
        codes.append(sent_to(server)[0].code)
    assert codes[-1] == Code.REQUEST_ENTITY_INCOMPLETE
    assert all(c == Code.CONTINUE for c in codes[:-1])
    assert events(server) == []


def test_block1_restart_at_block_zero_starts_a_new_body() -> None:
    server = Engine()
    for i, (num, more, chunk) in enumerate(
        [(0, True, b"a" * 16), (1, True, b"b" * 16), (0, True, b"c" * 16), (1, False, b"d")]
    ):
        req = put("/fw", chunk)
        req.mid, req.token = 300 + i, b"rs"
        req.add(o.BLOCK1, o.Block(num, more, 0).encode())
        feed(server, req, float(i))
        sent(server)
    ctx = only_request(server)
    assert ctx.request.payload == b"c" * 16 + b"d"


def test_block1_middle_block_of_wrong_size_is_rejected() -> None:
    server = Engine()
    req = put("/fw", b"a" * 10)
    req.mid = 1
    req.add(o.BLOCK1, o.Block(0, True, 0).encode())
    feed(server, req)
    assert sent_to(server)[0].code == Code.BAD_REQUEST
    assert server.sizes()["reassemblies"] == 0


def test_reserved_block_size_7_gets_4_02() -> None:
    server = Engine()
    req = put("/fw", b"a" * 16)
    req.mid = 1
    req.add(o.BLOCK1, o.Block(0, True, 7).encode())
    feed(server, req)
    assert sent_to(server)[0].code == Code.BAD_OPTION
    req = get("/fw", CON, 2).add(o.BLOCK2, o.Block(0, False, 7).encode())
    feed(server, req)
    assert sent_to(server)[0].code == Code.BAD_OPTION


def test_server_with_smaller_blocks_negotiates_block2_down() -> None:
    net = Net(server_config=CoapConfig(block_szx=2))  # 64-byte blocks
    net.resources["/big"] = body(1000, 4)
    resp = net.response(net.request(get("/big")))
    assert resp.payload == body(1000, 4)
    answers = net.sent_by(SERVER)
    assert all(a.block2 is not None and a.block2.szx == 2 for a in answers)
    assert len(answers) == 16


def test_server_with_smaller_blocks_negotiates_block1_down() -> None:
    net = Net(server_config=CoapConfig(block_szx=2))
    data = body(3000, 5)
    resp = net.response(net.request(put("/fw", data)))
    assert resp.code == Code.CHANGED
    assert net.resources["/fw"] == data
    reqs = net.sent_by(CLIENT)
    assert reqs[0].block1 == o.Block(0, True, 6)
    assert net.sent_by(SERVER)[0].block1 == o.Block(0, True, 2)
    # the client carries on with 64-byte blocks, numbered in that size
    assert reqs[1].block1 == o.Block(16, True, 2) and len(reqs[1].payload) == 64
    assert reqs[-1].block1 is not None and not reqs[-1].block1.more
    assert len(reqs) == 1 + (3000 - 1024 + 63) // 64


def test_client_with_smaller_blocks_uses_them_both_ways() -> None:
    net = Net(client_config=CoapConfig(block_szx=3))  # 128-byte blocks
    data = body(1000, 6)
    assert net.response(net.request(put("/up", data))).code == Code.CHANGED
    assert net.resources["/up"] == data
    assert all(r.block1 is not None and r.block1.szx == 3 for r in net.sent_by(CLIENT))
    net.wire.clear()
    net.resources["/down"] = body(3000, 7)
    assert net.response(net.request(get("/down"))).payload == body(3000, 7)
    reqs = net.sent_by(CLIENT)
    # late negotiation: the first block came at 1024 bytes, the rest at 128
    assert reqs[1].block2 == o.Block(8, False, 3)
    assert net.sent_by(SERVER)[1].block2 == o.Block(8, True, 3)


def test_early_block2_negotiation_by_the_client() -> None:
    net = Net()
    net.resources["/big"] = body(500, 8)
    req = get("/big").add(o.BLOCK2, o.Block(0, False, 1).encode())
    assert net.response(net.request(req)).payload == body(500, 8)
    assert all(a.block2 and a.block2.size == 32 for a in net.sent_by(SERVER))


def test_block2_request_for_a_later_block_without_cache_slices_the_answer() -> None:
    server = Engine()
    feed(server, get("/big", CON, 1, b"b2").add(o.BLOCK2, o.Block(2, False, 0).encode()))
    server.respond(only_request(server), content(bytes(range(100))), 0.0)
    (resp,) = sent_to(server)
    assert resp.block2 == o.Block(2, True, 0) and resp.payload == bytes(range(32, 48))
    # the whole body is cached now: the last block comes without asking the handler
    feed(server, get("/big", CON, 2, b"b3").add(o.BLOCK2, o.Block(6, False, 0).encode()))
    assert events(server) == []
    (resp,) = sent_to(server)
    assert resp.block2 == o.Block(6, False, 0) and resp.payload == bytes(range(96, 100))


@pytest.mark.parametrize("seed", range(4))
def test_block_wise_both_ways_over_a_lossy_wire(seed: int) -> None:
    net = Net(seed=seed)
    net.lossy(0.2, seed)
    up, down = body(12_000, seed), body(9_000, seed + 100)
    net.resources["/down"] = down
    r1 = net.response(net.request(put("/up", up)))
    r2 = net.response(net.request(get("/down")))
    assert r1.code == Code.CHANGED and net.resources["/up"] == up
    assert r2.payload == down
    assert net.dropped > 0


# -- observe, server side (RFC 7641) ----------------------------------------------------


def observe_req(path: str, token: bytes = b"ob", mid: int = 1, mtype: int = CON) -> Message:
    return get(path, mtype, mid, token).add(o.OBSERVE, 0)


_mids = iter(range(1000, 100_000))


def register(server: Engine, path: str = "/3303/0/5700", token: bytes = b"ob") -> None:
    feed(server, observe_req(path, token, mid=next(_mids)))
    (ctx,) = [ev.ctx for ev in events(server) if isinstance(ev, RequestReceived)]
    assert ctx.observe == 0
    observer = server.respond(ctx, content(b"20.0", observe=0), 0.0)
    assert observer is not None
    (resp,) = sent_to(server)
    assert resp.observe is not None and resp.mtype == ACK


def test_observe_registration_and_non_notifications_with_periodic_con() -> None:
    cfg = CoapConfig(notify_con_every=5)
    server = Engine(cfg)
    register(server)
    (observer,) = server.observers("/3303/0/5700")
    assert server.observers() == [observer]
    types, seqs = [], []
    for i in range(12):
        server.notify(observer, content(f"{20 + i}".encode()), float(i))
        (n,) = sent_to(server)
        assert n.token == b"ob" and n.code == Code.CONTENT
        assert n.observe is not None
        types.append(n.mtype)
        seqs.append(n.observe)
        if n.mtype == CON:
            feed(server, empty(ACK, n.mid), float(i))
    assert types == [NON] * 4 + [CON] + [NON] * 4 + [CON] + [NON] * 2
    assert seqs == sorted(seqs) and len(set(seqs)) == 12


def test_notification_forced_con_and_daily_con() -> None:
    cfg = CoapConfig(notify_con_interval=100.0)
    server = Engine(cfg)
    register(server)
    (observer,) = server.observers()
    server.notify(observer, content(b"a"), 1.0, con=True)
    (first,) = sent_to(server)
    assert first.mtype == CON
    feed(server, empty(ACK, first.mid), 1.5)
    server.notify(observer, content(b"b"), 2.0)
    assert sent_to(server)[0].mtype == NON
    server.notify(observer, content(b"c"), 150.0)
    assert sent_to(server)[0].mtype == CON


def test_new_notification_replaces_con_in_flight() -> None:
    """RFC 7641 4.5.2: the newer one takes over the retransmission state."""
    server = Engine()
    register(server)
    (observer,) = server.observers()
    server.notify(observer, content(b"old"), 1.0, con=True)
    (old,) = sent_to(server)
    server.notify(observer, content(b"new"), 1.5)
    (new,) = sent_to(server)
    assert new.mtype == CON and new.payload == b"new"
    # only the new one is retransmitted
    server.handle_timer(10.0)
    assert [m.payload for m in sent_to(server)] == [b"new"]
    feed(server, empty(ACK, new.mid), 10.5)
    assert server.observers() == [observer]
    assert old.mid != new.mid


def test_reset_to_non_notification_removes_observer() -> None:
    server = Engine()
    register(server)
    (observer,) = server.observers()
    server.notify(observer, content(b"1"), 1.0)
    (n,) = sent_to(server)
    feed(server, empty(RST, n.mid), 1.1)
    (ev,) = events(server)
    assert isinstance(ev, ObserverRemoved) and ev.reason == "reset by peer"
    assert ev.observer is observer
    assert server.observers() == []
    server.notify(observer, content(b"2"), 2.0)
    assert sent(server) == []


def test_reset_to_con_notification_removes_observer() -> None:
    server = Engine()
    register(server)
    (observer,) = server.observers()
    server.notify(observer, content(b"1"), 1.0, con=True)
    (n,) = sent_to(server)
    feed(server, empty(RST, n.mid), 1.1)
    (ev,) = events(server)
    assert isinstance(ev, ObserverRemoved) and ev.reason == "reset by peer"
    assert server.observers() == []
    run_timers(server, 1.1, 100.0)
    assert sent(server) == []


def test_con_notification_timeout_removes_observer() -> None:
    cfg = CoapConfig()
    server = Engine(cfg)
    register(server)
    (observer,) = server.observers()
    server.notify(observer, content(b"1"), 0.0, con=True)
    run_timers(server, 0.0, 200.0)
    assert len(sent(server)) == 1 + cfg.max_retransmit
    removed = [ev for ev in events(server) if isinstance(ev, ObserverRemoved)]
    assert [ev.reason for ev in removed] == ["notification timed out"]
    assert server.observers() == []


def test_get_with_observe_1_deregisters() -> None:
    server = Engine()
    register(server)
    feed(server, get("/3303/0/5700", CON, 99, b"ob").add(o.OBSERVE, 1), 5.0)
    evs = events(server)
    assert isinstance(evs[0], ObserverRemoved) and evs[0].reason == "cancelled"
    assert isinstance(evs[1], RequestReceived) and evs[1].ctx.observe is None
    server.respond(evs[1].ctx, content(b"21"), 5.0)
    (resp,) = sent_to(server)
    assert resp.observe is None and resp.payload == b"21"
    assert server.observers() == []


def test_error_notification_ends_the_observation() -> None:
    server = Engine()
    register(server)
    (observer,) = server.observers()
    server.notify(observer, Message(code=Code.NOT_FOUND), 1.0)
    (n,) = sent_to(server)
    assert n.code == Code.NOT_FOUND and n.observe is None and n.token == b"ob"
    assert server.observers() == []


def test_reregistration_with_the_same_token_replaces_the_observer() -> None:
    server = Engine()
    register(server)
    register(server)
    assert len(server.observers()) == 1
    register(server, token=b"o2")
    assert len(server.observers("/3303/0/5700")) == 2


def test_non_observable_answer_registers_nothing() -> None:
    server = Engine()
    feed(server, observe_req("/3/0/4"))
    ctx = only_request(server)
    assert server.respond(ctx, Message(code=Code.METHOD_NOT_ALLOWED), 0.0) is None
    (resp,) = sent_to(server)
    assert resp.observe is None and server.observers() == []
    feed(server, observe_req("/3/0/0", b"o3", 2))
    ctx = only_request(server)
    assert server.respond(ctx, content(b"no observe option"), 0.0) is None
    assert sent_to(server)[0].observe is None


def test_max_observers_drops_the_oldest() -> None:
    server = Engine(CoapConfig(max_observers=3))
    for i in range(5):
        register(server, token=bytes((i + 1, 0)))
    tokens = [obs.request.token for obs in server.observers()]
    assert tokens == [b"\x03\x00", b"\x04\x00", b"\x05\x00"]
    assert server.sizes()["observers"] == 3


def test_max_observers_reports_removed_observers() -> None:
    server = Engine(CoapConfig(max_observers=1))
    register(server, token=b"a1")
    feed(server, observe_req("/x", b"b2", 7))
    ctx = only_request(server)
    server.respond(ctx, content(b"", observe=0), 0.0)
    removed = [ev for ev in events(server) if isinstance(ev, ObserverRemoved)]
    assert [ev.reason for ev in removed] == ["too many observers"]


def test_large_notification_goes_block_wise() -> None:
    net = Net()
    net.resources["/cam"] = b"small"
    net.observable.add("/cam")
    ex = net.request(observe_req("/cam", token=b""))
    assert net.response(ex).payload == b"small"
    (observer,) = net.server.observers("/cam")
    picture = body(5000, 9)
    net.resources["/cam"] = picture
    net.server.notify(observer, content(picture), net.now)
    net.run_until(lambda: len(net.notifications(ex)) == 1)
    (n,) = net.notifications(ex)
    assert n.payload == picture and n.observe is not None and n.block2 is None


def test_large_first_answer_to_an_observe_registration() -> None:
    net = Net()
    picture = body(3000, 10)
    net.resources["/cam"] = picture
    net.observable.add("/cam")
    ex = net.request(observe_req("/cam", token=b""))
    first = net.response(ex)
    assert first.payload == picture and first.observe is not None
    (observer,) = net.server.observers("/cam")
    net.server.notify(observer, content(b"small now"), net.now)
    net.run_until(lambda: len(net.notifications(ex)) == 1)
    assert net.notifications(ex)[0].payload == b"small now"


# -- observe, client side -----------------------------------------------------------------


def start_observation(client: Engine, now: float = 0.0, seq: int = 5) -> tuple[Exchange, Message]:
    ex = client.request(PEER, observe_req("/3303/0/5700", token=b""), now)
    (req,) = sent_to(client)
    assert req.observe == 0
    resp = content(b"first", observe=seq)
    resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
    feed(client, resp, now)
    (ev,) = events(client)
    assert isinstance(ev, ResponseReceived) and ev.response.observe == seq
    return ex, req


def notification(req: Message, seq: int, payload: bytes, mid: int, mtype: int = NON) -> Message:
    n = content(payload, observe=seq)
    n.mtype, n.mid, n.token = mtype, mid, req.token
    return n


def delivered(client: Engine) -> list[bytes]:
    out = []
    for ev in events(client):
        assert isinstance(ev, NotificationReceived), ev
        out.append(ev.response.payload)
    return out


def test_client_notifications_are_ordered_per_rfc7641_3_4() -> None:
    client = Engine()
    ex, req = start_observation(client, seq=0xFFFFF0)
    steps = [
        (0xFFFFF5, b"newer", 1.0),
        (0xFFFFF2, b"older: dropped", 2.0),
        (0xFFFFF5, b"same: dropped", 3.0),
        (3, b"wrapped around: newer", 4.0),
        (0xFFFFF8, b"before the wrap: dropped", 5.0),
        (1, b"older but 128 s later: taken", 140.0),
        (2, b"newer", 141.0),
        (0x800002, b"2^23 ahead: dropped", 142.0),
    ]
    got = []
    for i, (seq, payload, t) in enumerate(steps):
        feed(client, notification(req, seq, payload, 0x100 + i), t)
        got += delivered(client)
    assert got == [b"newer", b"wrapped around: newer", b"older but 128 s later: taken", b"newer"]
    assert sent(client) == []  # NON notifications are not acknowledged
    assert not ex.done


def test_client_acknowledges_con_notifications() -> None:
    client = Engine()
    _, req = start_observation(client)
    feed(client, notification(req, 6, b"c", 0x200, CON), 1.0)
    assert [(m.mtype, m.mid) for m in sent_to(client)] == [(ACK, 0x200)]
    assert delivered(client) == [b"c"]


def test_client_reregisters_with_the_same_token() -> None:
    client = Engine()
    ex, req = start_observation(client, seq=10)
    client.reregister(ex, 50.0)
    (again,) = sent_to(client)
    assert again.token == req.token and again.observe == 0 and again.mid != req.mid
    resp = content(b"refreshed", observe=11)
    resp.mtype, resp.mid, resp.token = ACK, again.mid, again.token
    feed(client, resp, 50.1)
    assert delivered(client) == [b"refreshed"]
    feed(client, notification(req, 12, b"after", 0x300), 60.0)
    assert delivered(client) == [b"after"]
    assert client.sizes()["pending"] == 0 and client.sizes()["observations"] == 1


def test_client_cancels_proactively_with_observe_1() -> None:
    client = Engine()
    ex, req = start_observation(client)
    follow = client.cancel(ex, 10.0)
    assert follow is not None and ex.done
    (dereg,) = sent_to(client)
    assert dereg.code == Code.GET and dereg.observe == 1
    assert dereg.token == req.token and dereg.uri_path == req.uri_path
    resp = content(b"last")
    resp.mtype, resp.mid, resp.token = ACK, dereg.mid, dereg.token
    feed(client, resp, 10.1)
    (ev,) = events(client)
    assert isinstance(ev, ResponseReceived) and ev.exchange is follow
    # a late notification is rejected
    feed(client, notification(req, 9, b"late", 0x400, CON), 11.0)
    assert [(m.mtype, m.mid) for m in sent_to(client)] == [(RST, 0x400)]
    assert events(client) == []
    assert client.sizes()["observations"] == 0 and client.sizes()["exchanges"] == 0


@pytest.mark.parametrize("mtype", [CON, NON])
def test_client_cancels_passively_by_resetting_the_next_notification(mtype: int) -> None:
    client = Engine()
    ex, req = start_observation(client)
    assert client.cancel(ex, 10.0, proactive=False) is None
    assert sent(client) == [] and events(client) == []
    feed(client, notification(req, 9, b"late", 0x500, mtype), 11.0)
    assert [(m.mtype, m.mid) for m in sent_to(client)] == [(RST, 0x500)]
    assert events(client) == []


def test_client_observation_ended_by_error_or_plain_response() -> None:
    client = Engine()
    ex, req = start_observation(client)
    end = Message(NON, Code.NOT_FOUND, 0x600, req.token)
    feed(client, end, 1.0)
    (ev,) = events(client)
    assert isinstance(ev, NotificationReceived) and ev.response.code == Code.NOT_FOUND
    assert ex.done and client.sizes()["observations"] == 0
    feed(client, notification(req, 10, b"x", 0x601), 2.0)
    assert sent_to(client)[0].mtype == RST


def test_observation_refused_by_server_is_a_plain_response() -> None:
    client = Engine()
    ex = client.request(PEER, observe_req("/3/0/4", token=b""), 0.0)
    (req,) = sent_to(client)
    resp = content(b"no")
    resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token
    feed(client, resp, 0.1)
    (ev,) = events(client)
    assert isinstance(ev, ResponseReceived) and ex.done
    assert client.sizes()["observations"] == 0


def test_observe_between_two_engines_passive_cancel_removes_server_observer() -> None:
    net = Net()
    net.resources["/t"] = b"0"
    net.observable.add("/t")
    ex = net.request(observe_req("/t", token=b""))
    assert net.response(ex).observe is not None
    (observer,) = net.server.observers("/t")
    for i in range(30):
        net.server.notify(observer, content(str(i).encode()), net.now)
        net.pump()
        net.now += 1.0
    assert [n.payload for n in net.notifications(ex)] == [str(i).encode() for i in range(30)]
    net.client.cancel(ex, net.now, proactive=False)
    net.server.notify(observer, content(b"late"), net.now)
    net.pump()
    assert net.server.observers() == []
    assert any(isinstance(e, ObserverRemoved) for e in net.server_events)
    assert len(net.notifications(ex)) == 30


def test_observe_between_two_engines_proactive_cancel() -> None:
    net = Net()
    net.resources["/t"] = b"0"
    net.observable.add("/t")
    ex = net.request(observe_req("/t", token=b""))
    net.response(ex)
    follow = net.client.cancel(ex, net.now)
    assert follow is not None
    assert net.response(follow).observe is None
    assert net.server.observers() == []


# -- memory caps and sweeping -------------------------------------------------------------


def test_max_dedup_entries_evicts_the_oldest() -> None:
    server = Engine(CoapConfig(max_dedup_entries=50))
    for mid in range(200):
        feed(server, get("/a", NON, mid), mid * 0.01)
        server.respond(only_request(server), content(b"x"), mid * 0.01)
        sent(server)
    assert server.sizes()["dedup"] <= 50
    assert server.stats["dedup_evicted"] == 150
    # the newest are still recognised, the oldest are not
    feed(server, get("/a", NON, 199), 3.0)
    assert events(server) == []
    feed(server, get("/a", NON, 0), 3.0)
    assert len(events(server)) == 1


def test_max_exchanges_raises_engine_busy() -> None:
    client = Engine(CoapConfig(max_exchanges=3))
    exs = [client.request(PEER, get("/a"), 0.0) for _ in range(3)]
    with pytest.raises(EngineBusy):
        client.request(PEER, get("/a"), 0.0)
    client.cancel(exs[0], 0.0)
    client.request(PEER, get("/a"), 0.0)
    assert client.sizes()["exchanges"] == 3


def test_max_reassemblies_drops_the_oldest_upload() -> None:
    server = Engine(CoapConfig(max_reassemblies=2))
    for i in range(4):
        req = put(f"/fw/{i}", b"z" * 16)
        req.mid, req.token = 10 + i, bytes((i,))
        req.add(o.BLOCK1, o.Block(0, True, 0).encode())
        feed(server, req, 0.0)
        assert sent_to(server)[0].code == Code.CONTINUE
    assert server.sizes()["reassemblies"] == 2
    req = put("/fw/0", b"z" * 16)
    req.mid, req.token = 20, b"\x00"
    req.add(o.BLOCK1, o.Block(1, True, 0).encode())
    feed(server, req, 1.0)
    assert sent_to(server)[0].code == Code.REQUEST_ENTITY_INCOMPLETE


def test_block2_cache_is_capped() -> None:
    server = Engine(CoapConfig(max_block2_cache=2))
    for i in range(5):
        feed(server, get(f"/b/{i}", CON, i))
        server.respond(only_request(server), content(b"x" * 2000), 0.0)
        sent(server)
    assert server.sizes()["block2_cache"] == 2


def test_sweep_expires_dedup_after_exchange_lifetime() -> None:
    cfg = CoapConfig()
    server = Engine(cfg)
    req = get("/a", CON, 0x0E0E)
    feed(server, req, 0.0)
    server.respond(only_request(server), content(b"1"), 0.0)
    sent(server)
    assert server.get_timer() == pytest.approx(cfg.exchange_lifetime)
    feed(server, req, cfg.exchange_lifetime - 1)
    assert sent_to(server)[0].payload == b"1" and events(server) == []
    server.handle_timer(cfg.exchange_lifetime - 0.5)
    assert server.sizes()["dedup"] == 1
    server.handle_timer(cfg.exchange_lifetime + 0.5)
    assert server.sizes()["dedup"] == 0
    assert server.get_timer() is None
    feed(server, req, cfg.exchange_lifetime + 1)
    assert len(events(server)) == 1  # a new request now


def test_sweep_expires_non_entries_and_stale_uploads_and_block_caches() -> None:
    cfg = CoapConfig(block_lifetime=30.0)
    server = Engine(cfg)
    req = put("/fw", b"z" * 16)
    req.mid, req.token = 1, b"s"
    req.add(o.BLOCK1, o.Block(0, True, 0).encode())
    feed(server, req, 0.0)
    feed(server, get("/big", NON, 2), 0.0)
    server.respond(only_request(server), content(b"y" * 3000), 0.0)
    sent(server)
    sizes = server.sizes()
    assert sizes["reassemblies"] == 1 and sizes["block2_cache"] == 1 and sizes["dedup"] == 2
    run_timers(server, 0.0, 31.0)
    sizes = server.sizes()
    assert sizes["reassemblies"] == 0 and sizes["block2_cache"] == 0
    run_timers(server, 31.0, cfg.exchange_lifetime + 1)
    assert server.sizes()["dedup"] == 0
    assert server.get_timer() is None


def test_nothing_is_left_behind_after_many_exchanges() -> None:
    net = Net()
    net.resources["/big"] = body(3000)
    for i in range(20):
        if i % 3 == 0:
            net.response(net.request(put(f"/up/{i}", body(2500, i))))
        else:
            net.response(net.request(get("/big")))
    net.run_until(lambda: net.client.get_timer() is None and net.server.get_timer() is None)
    for engine in (net.client, net.server):
        assert all(v == 0 for v in engine.sizes().values()), engine.sizes()


# -- bad input into the engine ------------------------------------------------------------


def h(mtype: int, tkl: int, code: int, mid: int, version: int = 1) -> bytes:
    return bytes((version << 6 | mtype << 4 | tkl, code, mid >> 8, mid & 0xFF))


BAD_INPUT: list[tuple[str, bytes, bool]] = [
    # what, datagram, answered with a Reset
    ("empty", b"", False),
    ("truncated header", b"\x40\x01", False),
    ("version 2", h(CON, 0, Code.GET, 0x0B0B, version=2), False),
    ("version 0 with options", h(CON, 0, Code.GET, 0x0B0B, version=0) + b"\xb1a", False),
    ("token length 9", h(CON, 9, Code.GET, 0x0B0B) + bytes(9), True),
    ("token length 15", h(CON, 15, Code.GET, 0x0B0B) + bytes(15), True),
    ("token length 12 on an ACK", h(ACK, 12, Code.CONTENT, 0x0B0B) + bytes(12), False),
    ("truncated token", h(CON, 8, Code.GET, 0x0B0B) + b"\x01", True),
    ("option delta 15", h(CON, 0, Code.GET, 0x0B0B) + b"\xf2ab", True),
    ("option length 15", h(CON, 0, Code.GET, 0x0B0B) + b"\xbfabc", True),
    ("option past the end", h(CON, 0, Code.GET, 0x0B0B) + b"\xb9abc", True),
    ("payload marker, no payload", h(CON, 0, Code.PUT, 0x0B0B) + b"\xb1a\xff", True),
    ("payload marker, no payload, ACK", h(ACK, 0, Code.CONTENT, 0x0B0B) + b"\xff", False),
    ("empty CON with token", h(CON, 2, 0, 0x0B0B) + b"tk", True),
    ("empty NON with token", h(NON, 2, 0, 0x0B0B) + b"tk", True),
    ("empty ACK with token", h(ACK, 2, 0, 0x0B0B) + b"tk", False),
    ("empty RST with payload", h(RST, 0, 0, 0x0B0B) + b"\xffx", False),
    ("reserved class 7", h(CON, 0, 7 << 5, 0x0B0B), True),
]


@pytest.mark.parametrize(("what", "data", "reset"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_datagrams_get_reset_or_are_dropped(what: str, data: bytes, reset: bool) -> None:
    engine = Engine()
    engine.receive_datagram(data, PEER, 0.0)
    out = sent(engine)
    if reset:
        assert [(m.mtype, m.code, m.mid, m.token, a) for m, a in out] == [
            (RST, 0, 0x0B0B, b"", PEER)
        ]
    else:
        assert out == []
    assert events(engine) == []
    assert engine.stats["malformed"] == 1
    # and the engine goes on working
    feed(engine, get("/ok", CON, 0x0C0C))
    engine.respond(only_request(engine), content(b"fine"), 0.0)
    assert sent_to(engine)[0].payload == b"fine"


@pytest.mark.parametrize(
    ("mtype", "code"), [(ACK, Code.GET), (ACK, Code.DELETE), (RST, Code.CONTENT), (RST, Code.GET)]
)
def test_ack_with_a_request_or_reset_with_a_code_is_dropped(mtype: int, code: int) -> None:
    client = Engine(rng=random.Random(0))
    ex = client.request(PEER, get("/a"), 0.0)
    (req,) = sent_to(client)
    feed(client, Message(mtype, code, req.mid, req.token), 0.1)
    assert events(client) == [] and sent(client) == [] and not ex.done
    assert client.stats["malformed"] == 1
    run_timers(client, 0.1, 3.1)
    assert [m.mid for m in sent_to(client)] == [req.mid]  # still being retransmitted


# -- fuzzing --------------------------------------------------------------------------


FUZZ_OPTIONS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                o.URI_PATH,
                o.OBSERVE,
                o.BLOCK1,
                o.BLOCK2,
                o.SIZE1,
                o.SIZE2,
                o.CONTENT_FORMAT,
                o.ETAG,
                2048,
                2049,
            ]
        ),
        st.binary(max_size=4),
    ),
    max_size=5,
)


@st.composite
def fuzz_messages(draw: st.DrawFn) -> Message:
    mtype = draw(st.sampled_from((CON, NON, ACK, RST)))
    code = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 9, Code.CONTENT, Code.CONTINUE, Code.NOT_FOUND]))
    mid = draw(st.integers(0, 15))
    if code == 0:
        return Message(mtype, 0, mid)
    token = draw(st.sampled_from([b"", b"a", b"b", b"ob"]))
    return Message(mtype, code, mid, token, draw(FUZZ_OPTIONS), draw(st.binary(max_size=40)))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_arbitrary_bytes_never_make_the_engine_raise(datagrams: list[bytes]) -> None:
    engine = Engine(CoapConfig(block_szx=0), random.Random(0))
    now = 0.0
    for data in datagrams:
        engine.receive_datagram(data, PEER, now)
        now += 0.7
        engine.handle_timer(now)
        engine.datagrams_to_send()
        while engine.next_event() is not None:
            pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.tuples(fuzz_messages(), st.sampled_from([PEER, OTHER]), st.floats(0, 30)),
        max_size=25,
    ),
    st.integers(0, 3),
)
def test_arbitrary_message_sequences_never_make_the_engine_raise(
    steps: list[tuple[Message, object, float]], requests: int
) -> None:
    """A server and client at once, with requests out and observers in place."""
    engine = Engine(CoapConfig(block_szx=0, max_body_size=256), random.Random(1))
    engine._mid = 0  # so fuzzed ACKs/RSTs hit the message ids in flight
    now = 0.0
    for i in range(requests):
        req = get(f"/r/{i}", CON if i % 2 == 0 else NON, token=b"ab"[i % 2 :][:1])
        if i == 2:
            req.add(o.OBSERVE, 0)
        if i == 3:
            req.payload = b"x" * 40
        engine.request(PEER, req, now)
    for msg, remote, dt in steps:
        now += dt
        engine.receive_datagram(msg.encode(), remote, now)
        engine.handle_timer(now)
        engine.datagrams_to_send()
        while (ev := engine.next_event()) is not None:
            if isinstance(ev, RequestReceived):
                resp = content(b"y" * 30, observe=0)
                observer = engine.respond(ev.ctx, resp, now)
                if observer is not None:
                    engine.notify(observer, content(b"z" * 20), now)
    now += 1000.0
    engine.handle_timer(now)
    engine.datagrams_to_send()


def test_message_ids_count_per_peer() -> None:
    """A busy peer must not make another see its message ids wrap (RFC 7252 4.4)."""
    engine = Engine(CoapConfig(nstart=100_000, max_exchanges=200_000))
    a, b = ("192.0.2.1", 5683), ("192.0.2.2", 5683)
    engine.request(b, Message(NON, Code.GET), 0.0)
    (first_b,) = [m for m, _ in sent(engine)]
    for _ in range(70_000):
        engine.request(a, Message(NON, Code.GET), 0.0)
    engine._out.clear()
    engine.request(b, Message(NON, Code.GET), 0.0)
    (second_b,) = [m for m, _ in sent(engine)]
    assert second_b.mid == (first_b.mid + 1) & 0xFFFF

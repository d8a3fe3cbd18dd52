"""The sans-IO CoAP engine: message layer, requests/responses, block-wise, observe.

Shaped like aioquic's connection: feed it datagrams and time
(`receive_datagram`, `handle_timer`), take out datagrams (`datagrams_to_send`)
and events (`next_event`), ask when to wake up next (`get_timer`). It never
touches a socket or a clock, so it is tested with a fake clock and fuzzed.

One engine serves many peers: it is server and client at once, because an
LwM2M server answers devices on the socket they registered to and sends its own
requests from that same socket.

Peers are opaque hashable addresses (a `(host, port)` tuple for UDP, a session
key for DTLS).
"""

from __future__ import annotations

import heapq
import os
import random
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any

from shoal.coap import options as o
from shoal.coap.codes import ACK, CON, NON, RST, Code
from shoal.coap.config import CoapConfig
from shoal.coap.message import Message, MessageFormatError, empty

Addr = Hashable

# -- events --------------------------------------------------------------------


class RequestReceived:
    """A (complete, reassembled) request to be answered with `Engine.respond`."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: Incoming) -> None:
        self.ctx = ctx


class ResponseReceived:
    """The final response to a request this endpoint sent (bodies reassembled)."""

    __slots__ = ("exchange", "response")

    def __init__(self, exchange: Exchange, response: Message) -> None:
        self.exchange = exchange
        self.response = response


class NotificationReceived:
    """A later notification of an observation this endpoint holds, in order."""

    __slots__ = ("exchange", "response")

    def __init__(self, exchange: Exchange, response: Message) -> None:
        self.exchange = exchange
        self.response = response


class RequestFailed:
    """A request (or observation) that ended without a response: timeout, reset, cap."""

    __slots__ = ("exchange", "reason")

    def __init__(self, exchange: Exchange, reason: str) -> None:
        self.exchange = exchange
        self.reason = reason


class ObserverRemoved:
    """An observer of one of our resources went away (RST, timeout, cancel)."""

    __slots__ = ("observer", "reason")

    def __init__(self, observer: Observer, reason: str) -> None:
        self.observer = observer
        self.reason = reason


Event = RequestReceived | ResponseReceived | NotificationReceived | RequestFailed | ObserverRemoved


class EngineBusy(RuntimeError):
    """The cap on exchanges in flight is reached; try again later."""


# -- per-exchange state -----------------------------------------------------------


class Incoming:
    """A request being served. `respond` answers it once."""

    __slots__ = ("acked", "block1", "block2", "done", "observe", "remote", "request", "szx")

    def __init__(self, remote: Addr, request: Message, szx: int) -> None:
        self.remote = remote
        self.request = request
        self.acked = False
        self.done = False
        self.block1: o.Block | None = None
        self.block2: o.Block | None = None  # as parsed on arrival
        self.observe: int | None = None
        self.szx = szx


class Exchange:
    """A request this endpoint sent, and for observations the live subscription."""

    __slots__ = (
        "block1_offset",
        "block1_szx",
        "block2_body",
        "block2_head",
        "body",
        "done",
        "last_notify",
        "observing",
        "parent",
        "remote",
        "request",
        "started",
        "user",
    )

    def __init__(self, remote: Addr, request: Message) -> None:
        self.remote = remote
        self.request = request
        self.body = request.payload  # the whole request body (sent block-wise if large)
        self.block1_offset = 0  # end of the last Block1 piece sent
        self.block1_szx = 6
        self.block2_body: bytearray | None = None
        self.block2_head: Message | None = None
        self.observing = False
        self.parent: Exchange | None = None  # set on the fetch of a large notification
        self.last_notify: tuple[int, float] | None = None
        self.started = False
        self.done = False
        self.user: Any = None  # for the I/O layer (a future, a callback)

    @property
    def token(self) -> bytes:
        return self.request.token


class Observer:
    """A peer observing one of our resources (RFC 7641 server side)."""

    __slots__ = ("count", "inflight", "key", "last_con", "remote", "request", "resource", "seq")

    def __init__(self, remote: Addr, request: Message, resource: str, now: float) -> None:
        self.inflight: tuple[Addr, int] | None = None  # CON notification being retransmitted
        self.remote = remote
        self.request = request
        self.resource = resource
        self.key = (remote, request.token)
        self.seq = 0
        self.count = 0
        self.last_con = now


class _Transmission:
    """A CON message awaiting its ACK, retransmitted with back-off."""

    __slots__ = ("data", "exchange", "key", "observer", "retries", "timeout")

    def __init__(self, key: tuple[Addr, int], data: bytes, timeout: float) -> None:
        self.key = key
        self.data = data
        self.retries = 0
        self.timeout = timeout
        self.exchange: Exchange | None = None
        self.observer: Observer | None = None


class _Reassembly:
    __slots__ = ("body", "expires", "szx")

    def __init__(self, expires: float, szx: int) -> None:
        self.body = bytearray()
        self.expires = expires
        self.szx = szx


_IN_PROGRESS = b""  # dedup marker: request seen, no answer yet

# Options of a request that its follow-up Block2 requests leave out: the body
# went with the first block, and a Block2 option the caller set is replaced.
_NOT_IN_BLOCK2_REQUEST = frozenset({o.BLOCK1, o.SIZE1, o.OBSERVE, o.BLOCK2})

_OBSERVABLE = frozenset({Code.GET, Code.FETCH})

# timer kinds
_T_RETRANSMIT = 0
_T_RESPONSE = 1
_T_ACK = 2
_T_SWEEP = 3


def _observe_newer(v1: int, t1: float, v2: int, t2: float) -> bool:
    """RFC 7641 3.4: is notification (v2, t2) newer than (v1, t1)?"""
    return (v1 < v2 and v2 - v1 < 1 << 23) or (v1 > v2 and v1 - v2 > 1 << 23) or t2 > t1 + 128


class Engine:
    """CoAP endpoint state for any number of peers, without I/O."""

    def __init__(self, config: CoapConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or CoapConfig()
        self._rng = rng or random.Random()
        self._mids: dict[Addr, int] = {}  # last message id sent to each peer, LRU order
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[Event] = deque()
        self._timers: list[tuple[float, int, int, Any]] = []
        self._timer_seq = 0
        # message layer
        self._dedup: dict[tuple[Addr, int], bytes] = {}
        self._dedup_order: deque[tuple[float, tuple[Addr, int]]] = deque()
        self._transmissions: dict[tuple[Addr, int], _Transmission] = {}
        # client side
        self._pending: dict[tuple[Addr, bytes], Exchange] = {}
        self._observations: dict[tuple[Addr, bytes], Exchange] = {}
        self._active: dict[Addr, int] = {}
        self._queued: dict[Addr, deque[Exchange]] = {}
        self._n_exchanges = 0
        # server side
        self._incoming: dict[tuple[Addr, int], Incoming] = {}
        self._reassembly: OrderedDict[tuple[Addr, Any], _Reassembly] = OrderedDict()
        self._block2_cache: OrderedDict[tuple[Addr, Any], tuple[Message, float]] = OrderedDict()
        self._observers: dict[tuple[Addr, bytes], Observer] = {}
        self._observers_by_resource: dict[str, dict[tuple[Addr, bytes], Observer]] = {}
        self._notify_mids: OrderedDict[tuple[Addr, int], tuple[Addr, bytes]] = OrderedDict()
        self._notify_seq = self._rng.randrange(1 << 16)
        self._sweep_at: float | None = None
        self.stats: dict[str, int] = {
            "malformed": 0,
            "duplicates": 0,
            "retransmissions": 0,
            "timeouts": 0,
            "resets": 0,
            "dedup_evicted": 0,
        }

    # -- the sans-IO surface ----------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        timers = self._timers
        if self._sweep_at is not None and (not timers or self._sweep_at < timers[0][0]):
            return self._sweep_at
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, ref = heapq.heappop(timers)
            if kind == _T_RETRANSMIT:
                self._on_retransmit(ref, now)
            elif kind == _T_RESPONSE:
                self._on_response_timeout(ref, now)
            elif kind == _T_ACK:
                self._on_ack_delay(ref)
        if self._sweep_at is not None and self._sweep_at <= now:
            self._sweep(now)

    # -- receiving ----------------------------------------------------------------

    def receive_datagram(self, data: bytes, remote: Addr, now: float) -> None:
        try:
            msg = Message.decode(data)
        except MessageFormatError as exc:
            self.stats["malformed"] += 1
            # RFC 7252 4.2/4.3: reject a broken CON (or NON) with a Reset where
            # the header could be read; otherwise silently ignore.
            if exc.mid is not None and exc.mtype in (CON, NON):
                self._out.append((empty(RST, exc.mid), remote))
            return
        mtype = msg.mtype
        code = msg.code
        if mtype in (ACK, RST):
            if code and (mtype == RST or code < 32):
                # RFC 7252 4.2/4.3: an ACK carries a response or nothing, a Reset
                # nothing; neither may be answered, so drop it.
                self.stats["malformed"] += 1
                return
            self._on_ack_or_rst(msg, remote, now)
            return
        if code == 0:
            # CON empty message: a "CoAP ping"; answer with Reset (RFC 7252 4.3).
            if mtype == CON:
                self._out.append((empty(RST, msg.mid), remote))
            return
        # dedup of CON and NON
        key = (remote, msg.mid)
        cached = self._dedup.get(key)
        if cached is not None:
            self.stats["duplicates"] += 1
            if cached:
                self._out.append((cached, remote))
            elif mtype == CON:
                # still being served: stop the peer retransmitting
                inc = self._incoming.get(key)
                if inc is not None and not inc.acked:
                    inc.acked = True
                    ack = empty(ACK, msg.mid)
                    self._dedup[key] = ack
                    self._out.append((ack, remote))
            return
        self._remember(
            key,
            _IN_PROGRESS,
            now + (self.config.exchange_lifetime if mtype == CON else self.config.non_lifetime),
        )
        if code < 32:
            self._on_request(msg, remote, key, now)
        else:
            self._on_response(msg, remote, key, now)

    def _remember(self, key: tuple[Addr, int], value: bytes, expires: float) -> None:
        dedup = self._dedup
        if key not in dedup:
            self._dedup_order.append((expires, key))
            if len(dedup) >= self.config.max_dedup_entries:
                _, old = self._dedup_order.popleft()
                dedup.pop(old, None)
                self._incoming.pop(old, None)
                self.stats["dedup_evicted"] += 1
            if self._sweep_at is None:
                self._sweep_at = expires
        dedup[key] = value

    # -- server side ----------------------------------------------------------------

    def _on_request(self, msg: Message, remote: Addr, key: tuple[Addr, int], now: float) -> None:
        bad = msg.unknown_critical()
        if bad is not None:
            if msg.mtype != CON:
                return  # RFC 7252 5.4.1: a NON with one is silently ignored
            self._reply_error(
                msg, remote, key, Code.BAD_OPTION, f"unknown critical option {bad}", now
            )
            return
        try:
            block2 = msg.block2
            block1 = msg.block1
        except ValueError:
            self._reply_error(msg, remote, key, Code.BAD_OPTION, "malformed Block option", now)
            return
        szx = self.config.block_szx
        if block2 is not None:
            if block2.szx == 7:
                self._reply_error(
                    msg, remote, key, Code.BAD_OPTION, "Block2 size 7 is reserved", now
                )
                return
            szx = min(szx, block2.szx)
            if block2.num > 0:
                cached = self._block2_cache.get((remote, msg.cache_key(body=True)))
                if cached is not None:
                    inc = Incoming(remote, msg, szx)
                    self._send_response(inc, key, self._slice(cached[0], inc, block2.num, szx), now)
                    return
        inc = Incoming(remote, msg, szx)
        inc.block2 = block2
        if block1 is not None and not self._on_block1(inc, block1, key, now):
            return
        if msg.mtype == CON:
            self._incoming[key] = inc
        # GET and FETCH (RFC 8132 2.4, LwM2M Observe-Composite) can be observed
        obs = msg.observe if msg.code in _OBSERVABLE else None
        if obs is not None:
            if obs == 1:
                self._remove_observer((remote, msg.token), "cancelled")
            elif obs == 0:
                inc.observe = 0
        self._events.append(RequestReceived(inc))

    def _on_block1(self, inc: Incoming, block1: o.Block, key: tuple[Addr, int], now: float) -> bool:
        """Collect one Block1 piece; True when the whole body is there."""
        msg = inc.request
        cfg = self.config
        if block1.szx == 7:
            self._reply_error(
                msg, inc.remote, key, Code.BAD_OPTION, "Block1 size 7 is reserved", now
            )
            return False
        size1 = msg.size1
        if size1 is not None and size1 > cfg.max_body_size:
            self._reply_too_large(inc, key, now)
            return False
        rkey = (inc.remote, msg.cache_key())
        re = self._reassembly.get(rkey)
        if block1.num == 0:
            if re is not None:
                del self._reassembly[rkey]
            if not block1.more:
                inc.block1 = block1
                msg.remove(o.BLOCK1)
                return True
            if len(self._reassembly) >= cfg.max_reassemblies:
                self._reassembly.popitem(last=False)
            re = _Reassembly(now + cfg.block_lifetime, block1.szx)
            self._reassembly[rkey] = re
            self._ensure_sweep(re.expires)
        elif re is None or block1.offset != len(re.body):
            self._reply_error(
                msg, inc.remote, key, Code.REQUEST_ENTITY_INCOMPLETE, "Block1 out of sequence", now
            )
            return False
        if block1.more and len(msg.payload) != block1.size:
            self._reassembly.pop(rkey, None)
            self._reply_error(msg, inc.remote, key, Code.BAD_REQUEST, "Block1 payload size", now)
            return False
        re.body += msg.payload
        re.expires = now + cfg.block_lifetime
        if len(re.body) > cfg.max_body_size:
            del self._reassembly[rkey]
            self._reply_too_large(inc, key, now)
            return False
        if block1.more:
            # a server preferring smaller blocks says so here (RFC 7959 2.3)
            szx = min(block1.szx, cfg.block_szx)
            cont = Message(code=Code.CONTINUE).add(
                o.BLOCK1, o.Block(block1.num, True, szx).encode()
            )
            self._send_response(inc, key, cont, now)
            return False
        del self._reassembly[rkey]
        msg.payload = bytes(re.body)
        msg.options = [opt for opt in msg.options if opt[0] != o.BLOCK1 and opt[0] != o.SIZE1]
        inc.block1 = block1
        return True

    def _reply_too_large(self, inc: Incoming, key: tuple[Addr, int], now: float) -> None:
        resp = Message(code=Code.REQUEST_ENTITY_TOO_LARGE).add(o.SIZE1, self.config.max_body_size)
        resp.payload = b"body too large"
        self._send_response(inc, key, resp, now)

    def _reply_error(
        self, msg: Message, remote: Addr, key: tuple[Addr, int], code: int, text: str, now: float
    ) -> None:
        inc = Incoming(remote, msg, self.config.block_szx)
        resp = Message(code=code, payload=text.encode())
        self._send_response(inc, key, resp, now)

    def defer(self, ctx: Incoming, now: float) -> None:
        """The answer will take a while: send an Empty ACK if it is not there soon."""
        if ctx.request.mtype == CON and not ctx.acked and not ctx.done:
            self._push_timer(now + self.config.ack_delay, _T_ACK, ctx)

    def _on_ack_delay(self, ctx: Incoming) -> None:
        if ctx.done or ctx.acked:
            return
        ctx.acked = True
        key = (ctx.remote, ctx.request.mid)
        ack = empty(ACK, ctx.request.mid)
        if key in self._dedup:
            self._dedup[key] = ack
        self._out.append((ack, ctx.remote))

    def respond(self, ctx: Incoming, response: Message, now: float) -> Observer | None:
        """Answer a received request. Returns the Observer when it registered one."""
        if ctx.done:
            return None
        request = ctx.request
        key = (ctx.remote, request.mid)
        observer = None
        if ctx.observe == 0:
            if response.code >> 5 == 2 and response.opt(o.OBSERVE) is not None:
                observer = self._add_observer(ctx, now)
                response.set(o.OBSERVE, observer.seq)
            else:
                response.remove(o.OBSERVE)
                self._remove_observer((ctx.remote, request.token), "not observable")
        if ctx.block1 is not None and response.opt(o.BLOCK1) is None:
            b1 = ctx.block1
            response.add(o.BLOCK1, o.Block(b1.num, False, b1.szx).encode())
        block2 = ctx.block2 if ctx.block1 is None else None
        num = block2.num if block2 is not None else 0
        if len(response.payload) > 1 << (ctx.szx + 4) or num > 0:
            if response.code >> 5 == 2 and len(response.payload) > 1 << (ctx.szx + 4):
                ck = (ctx.remote, request.cache_key(body=True))
                self._block2_cache[ck] = (response, now + self.config.block_lifetime)
                if len(self._block2_cache) > self.config.max_block2_cache:
                    self._block2_cache.popitem(last=False)
                self._ensure_sweep(now + self.config.block_lifetime)
            response = self._slice(response, ctx, num, ctx.szx)
        self._send_response(ctx, key, response, now)
        return observer

    def _slice(self, full: Message, ctx: Incoming, num: int, szx: int) -> Message:
        size = 1 << (szx + 4)
        start = num * size
        body = full.payload
        if start >= len(body) and not (start == 0 and not body):
            return Message(code=Code.BAD_OPTION, payload=b"Block2 beyond the end of the body")
        part = Message(
            code=full.code,
            options=[opt for opt in full.options if opt[0] not in (o.BLOCK2, o.SIZE2)],
            payload=body[start : start + size],
        )
        if ctx.observe is None or num > 0:
            part.options = [opt for opt in part.options if opt[0] != o.OBSERVE]
        part.add(o.BLOCK2, o.Block(num, start + size < len(body), szx).encode())
        if num == 0:
            part.add(o.SIZE2, len(body))
        return part

    def _send_response(
        self, ctx: Incoming, key: tuple[Addr, int], response: Message, now: float
    ) -> None:
        request = ctx.request
        ctx.done = True
        self._incoming.pop(key, None)
        response.token = request.token
        if request.mtype == CON and not ctx.acked:
            response.mtype = ACK
            response.mid = request.mid
            data = response.encode()
            if key in self._dedup:
                self._dedup[key] = data
            self._out.append((data, ctx.remote))
            return
        if request.mtype == CON:
            # separate response, confirmable so it is not lost (RFC 7252 5.2.2)
            response.mtype = CON
            response.mid = self._next_mid(ctx.remote)
            self._send_con(ctx.remote, response, None, None, now)
        else:
            response.mtype = NON
            response.mid = self._next_mid(ctx.remote)
            data = response.encode()
            if key in self._dedup:
                self._dedup[key] = data
            self._out.append((data, ctx.remote))

    # -- observe, server side ---------------------------------------------------------

    def _add_observer(self, ctx: Incoming, now: float) -> Observer:
        okey = (ctx.remote, ctx.request.token)
        self._remove_observer(okey, "replaced", event=False)
        if len(self._observers) >= self.config.max_observers:
            oldest = next(iter(self._observers))
            self._remove_observer(oldest, "too many observers")
        resource = ctx.request.path_str()
        obs = Observer(ctx.remote, ctx.request, resource, now)
        obs.seq = self._next_notify_seq()
        self._observers[okey] = obs
        self._observers_by_resource.setdefault(resource, {})[okey] = obs
        return obs

    def _next_notify_seq(self) -> int:
        self._notify_seq = (self._notify_seq + 1) & 0xFFFFFF
        return self._notify_seq

    def observers(self, resource: str | None = None) -> list[Observer]:
        """Observers of one resource path (as `/a/b`), or all of them."""
        if resource is None:
            return list(self._observers.values())
        return list(self._observers_by_resource.get(resource, {}).values())

    def notify(self, observer: Observer, response: Message, now: float, con: bool = False) -> None:
        """Send a notification to an observer; the engine picks NON or CON."""
        if self._observers.get(observer.key) is not observer:
            return
        observer.count += 1
        cfg = self.config
        if response.code >> 5 != 2:
            # an error ends the observation (RFC 7641 3.2)
            self._remove_observer(observer.key, "error notification", event=False)
            response.remove(o.OBSERVE)
        else:
            observer.seq = self._next_notify_seq()
            response.set(o.OBSERVE, observer.seq)
        if (
            con
            or (observer.inflight is not None and observer.inflight in self._transmissions)
            or observer.count % cfg.notify_con_every == 0
            or now - observer.last_con >= cfg.notify_con_interval
        ):
            con = True
            observer.last_con = now
        ctx = Incoming(observer.remote, observer.request, cfg.block_szx)
        ctx.observe = 0
        ctx.done = True
        if len(response.payload) > cfg.block_size:
            ck = (observer.remote, observer.request.cache_key(body=True))
            self._block2_cache[ck] = (response, now + cfg.block_lifetime)
            self._ensure_sweep(now + cfg.block_lifetime)
            response = self._slice(response, ctx, 0, cfg.block_szx)
        response.token = observer.request.token
        response.mid = mid = self._next_mid(observer.remote)
        if con:
            response.mtype = CON
            self._send_con(observer.remote, response, None, observer, now)
        else:
            response.mtype = NON
            self._out.append((response.encode(), observer.remote))
            nm = self._notify_mids
            nm[(observer.remote, mid)] = observer.key
            if len(nm) > 4096:
                nm.popitem(last=False)

    def _remove_observer(self, okey: tuple[Addr, bytes], reason: str, event: bool = True) -> None:
        obs = self._observers.pop(okey, None)
        if obs is None:
            return
        by_res = self._observers_by_resource.get(obs.resource)
        if by_res is not None:
            by_res.pop(okey, None)
            if not by_res:
                del self._observers_by_resource[obs.resource]
        if event:
            self._events.append(ObserverRemoved(obs, reason))

    # -- client side ---------------------------------------------------------------

    def new_token(self) -> bytes:
        return os.urandom(4)

    def request(self, remote: Addr, request: Message, now: float) -> Exchange:
        """Send a request; its answer arrives as an event naming the Exchange.

        Fills in the token (if empty) and message id. GET with Observe=0 starts an
        observation. Large bodies go out block-wise (RFC 7959).
        """
        if self._n_exchanges >= self.config.max_exchanges:
            raise EngineBusy("too many exchanges in flight")
        if not request.token:
            request.token = self.new_token()
            while (remote, request.token) in self._pending or (
                remote,
                request.token,
            ) in self._observations:
                request.token = self.new_token()
        ex = Exchange(remote, request)
        ex.observing = request.code in _OBSERVABLE and request.observe == 0
        self._n_exchanges += 1
        active = self._active.get(remote, 0)
        if active >= self.config.nstart:
            self._queued.setdefault(remote, deque()).append(ex)
            self._pending[(remote, request.token)] = ex
            return ex
        self._start(ex, now)
        return ex

    def _start(self, ex: Exchange, now: float) -> None:
        ex.started = True
        self._active[ex.remote] = self._active.get(ex.remote, 0) + 1
        self._pending[(ex.remote, ex.token)] = ex
        self._transmit(ex, self._first_message(ex), now)

    def _first_message(self, ex: Exchange) -> Message:
        req = ex.request
        bs = self.config.block_size
        if len(ex.body) > bs and req.opt(o.BLOCK1) is None:
            ex.block1_offset = bs
            ex.block1_szx = self.config.block_szx
            msg = Message(req.mtype, req.code, 0, req.token, list(req.options), ex.body[:bs])
            msg.add(o.BLOCK1, o.Block(0, True, self.config.block_szx).encode())
            msg.add(o.SIZE1, len(ex.body))
            return msg
        return Message(req.mtype, req.code, 0, req.token, list(req.options), req.payload)

    def _transmit(self, ex: Exchange, msg: Message, now: float) -> None:
        msg.mid = self._next_mid(ex.remote)
        if msg.mtype == CON:
            self._send_con(ex.remote, msg, ex, None, now)
        else:
            self._out.append((msg.encode(), ex.remote))
            self._push_timer(now + self.config.response_timeout, _T_RESPONSE, (ex, msg.mid))

    def _release(self, ex: Exchange, now: float) -> None:
        """The exchange no longer counts toward NSTART: start a queued one."""
        if not ex.started:
            return
        ex.started = False
        n = self._active.get(ex.remote, 1) - 1
        queue = self._queued.get(ex.remote)
        if queue:
            nxt = queue.popleft()
            if not queue:
                del self._queued[ex.remote]
            if n <= 0:
                self._active.pop(ex.remote, None)
            else:
                self._active[ex.remote] = n
            self._start(nxt, now)
            return
        if n <= 0:
            self._active.pop(ex.remote, None)
        else:
            self._active[ex.remote] = n

    def _finish(self, ex: Exchange, now: float, event: Event | None) -> None:
        if ex.done:
            return
        ex.done = True
        self._n_exchanges -= 1
        key = (ex.remote, ex.token)
        if self._pending.get(key) is ex:
            del self._pending[key]
        if self._observations.get(key) is ex:
            del self._observations[key]
        if not ex.started:
            queue = self._queued.get(ex.remote)
            if queue and ex in queue:
                queue.remove(ex)
        self._release(ex, now)
        if event is not None and ex.parent is None:
            self._events.append(event)

    def cancel(self, ex: Exchange, now: float, proactive: bool = True) -> Exchange | None:
        """Stop waiting for a request or end an observation.

        For an observation, `proactive` sends GET with Observe=1 and the same
        token (RFC 7641 3.6) and returns that new exchange; otherwise the next
        notification is answered with a Reset.
        """
        was_observing = ex.observing and (ex.remote, ex.token) in self._observations
        for tkey, tr in list(self._transmissions.items()):
            if tr.exchange is ex:
                del self._transmissions[tkey]
        self._finish(ex, now, None)
        if was_observing and proactive:
            orig = ex.request
            req = Message(orig.mtype, orig.code, 0, ex.token, list(orig.options), orig.payload)
            req.set(o.OBSERVE, 1)
            return self.request(ex.remote, req, now)
        return None

    def reregister(self, ex: Exchange, now: float) -> None:
        """Refresh an observation by repeating the GET with the same token."""
        if ex.done or not ex.observing:
            return
        key = (ex.remote, ex.token)
        if key not in self._pending:
            self._pending[key] = ex
            self._active[ex.remote] = self._active.get(ex.remote, 0) + 1
            ex.started = True
        msg = Message(ex.request.mtype, ex.request.code, 0, ex.token, list(ex.request.options))
        self._transmit(ex, msg, now)

    def _on_ack_or_rst(self, msg: Message, remote: Addr, now: float) -> None:
        tkey = (remote, msg.mid)
        tr = self._transmissions.get(tkey)
        if tr is None:
            if msg.mtype == RST:
                okey = self._notify_mids.pop(tkey, None)
                if okey is not None:
                    self.stats["resets"] += 1
                    self._remove_observer(okey, "reset by peer")
            return
        ex = tr.exchange
        if ex is not None and msg.code != 0 and msg.token != ex.token:
            # a piggybacked response that does not match the request (RFC 7252
            # 5.3.2): ignore it and keep retransmitting until the right one comes
            return
        del self._transmissions[tkey]
        if tr.observer is not None:
            if msg.mtype == RST:
                self.stats["resets"] += 1
                self._remove_observer(tr.observer.key, "reset by peer")
            return
        if ex is None:
            return  # our separate response was acknowledged
        if msg.mtype == RST:
            self.stats["resets"] += 1
            self._finish(ex, now, RequestFailed(ex, "reset by peer"))
            return
        if msg.code == 0:
            # Empty ACK: a separate response will follow; no longer outstanding.
            self._release(ex, now)
            self._push_timer(now + self.config.response_timeout, _T_RESPONSE, (ex, msg.mid))
            return
        self._on_exchange_response(ex, msg, now)

    def _on_response(self, msg: Message, remote: Addr, key: tuple[Addr, int], now: float) -> None:
        """A CON or NON response: separate response or notification."""
        tkey = (remote, msg.token)
        ex = self._pending.get(tkey) or self._observations.get(tkey)
        if ex is None:
            # nobody asked: Reset, which also ends a stale observation (RFC 7641 3.6)
            rst = empty(RST, msg.mid)
            self._dedup[key] = rst
            self._out.append((rst, remote))
            return
        if msg.mtype == CON:
            # an unknown critical option rejects the response (RFC 7252 5.4.1);
            # _on_exchange_response then fails the exchange
            reply = empty(ACK if msg.unknown_critical() is None else RST, msg.mid)
            self._dedup[key] = reply
            self._out.append((reply, remote))
        for tk, tr in list(self._transmissions.items()):
            if tr.exchange is ex and tk[0] == remote:
                # the response implies our request arrived
                del self._transmissions[tk]
        self._on_exchange_response(ex, msg, now)

    def _on_exchange_response(self, ex: Exchange, msg: Message, now: float) -> None:
        if msg.unknown_critical() is not None:
            self._finish(ex, now, RequestFailed(ex, "response with unknown critical option"))
            return
        try:
            block1 = msg.block1
            block2 = msg.block2
        except ValueError:
            self._finish(ex, now, RequestFailed(ex, "malformed Block option in response"))
            return
        # Block1: the server asks for the next piece
        if msg.code == Code.CONTINUE and block1 is not None:
            self._next_block1(ex, block1, now)
            return
        # Block2: fetch the rest of the body
        if block2 is not None and (block2.more or ex.block2_body is not None):
            if (
                block2.num == 0
                and msg.observe is not None
                and (ex.remote, ex.token) in self._observations
            ):
                self._fetch_rest_of_notification(ex, msg, block2, now)
                return
            body = ex.block2_body
            if block2.num == 0:
                body = ex.block2_body = bytearray()
                ex.block2_head = msg
            if body is None or block2.offset != len(body):
                self._finish(ex, now, RequestFailed(ex, "Block2 out of sequence"))
                return
            body += msg.payload
            if len(body) > self.config.max_body_size:
                self._finish(ex, now, RequestFailed(ex, "response body too large"))
                return
            if block2.more:
                self._request_block2(ex, block2, len(body), now)
                return
            head = ex.block2_head or msg
            opts = [opt for opt in head.options if opt[0] not in (o.BLOCK2, o.SIZE2)]
            msg = Message(head.mtype, head.code, head.mid, head.token, opts, bytes(body))
            ex.block2_body = ex.block2_head = None
        self._deliver(ex, msg, now)

    def _fetch_rest_of_notification(
        self, ex: Exchange, first: Message, block2: o.Block, now: float
    ) -> None:
        """A notification larger than a block: GET the rest on a new token (RFC 7959 3.4)."""
        if self._n_exchanges >= self.config.max_exchanges:
            return
        req = ex.request
        opts = [opt for opt in req.options if opt[0] not in _NOT_IN_BLOCK2_REQUEST]
        sub = Exchange(ex.remote, Message(req.mtype, req.code, 0, self.new_token(), opts))
        sub.parent = ex
        sub.block2_body = bytearray(first.payload)
        sub.block2_head = first
        self._n_exchanges += 1
        sub.started = True
        self._active[ex.remote] = self._active.get(ex.remote, 0) + 1
        self._pending[(sub.remote, sub.token)] = sub
        self._request_block2(sub, block2, len(first.payload), now)

    def _deliver(self, ex: Exchange, msg: Message, now: float) -> None:
        parent = ex.parent
        if parent is not None:
            self._finish(ex, now, None)
            if not parent.done:
                self._deliver(parent, msg, now)
            return
        obs = msg.observe
        key = (ex.remote, ex.token)
        if ex.observing and obs is not None and msg.code >> 5 == 2:
            if key in self._pending:
                del self._pending[key]
                self._release(ex, now)
                self._observations[key] = ex
            last = ex.last_notify
            if last is not None and not _observe_newer(last[0], last[1], obs, now):
                return  # stale, reordered notification (RFC 7641 3.4)
            ex.last_notify = (obs, now)
            if last is None:
                self._events.append(ResponseReceived(ex, msg))
            else:
                self._events.append(NotificationReceived(ex, msg))
            return
        if ex.last_notify is not None:
            # an error or a response without Observe ends the observation
            self._finish(ex, now, NotificationReceived(ex, msg))
            return
        self._finish(ex, now, ResponseReceived(ex, msg))

    def _next_block1(self, ex: Exchange, block1: o.Block, now: float) -> None:
        # Continue from the end of the block we sent, not from the number in the
        # answer: a server that wants smaller blocks answers block 0 of 1024 bytes
        # with "0, 64 bytes" and expects block 16 next (RFC 7959 2.3, Figure 5).
        offset = ex.block1_offset
        szx = min(block1.szx, ex.block1_szx)
        size = 1 << (szx + 4)
        if offset >= len(ex.body) or offset % size:
            self._finish(ex, now, RequestFailed(ex, "Continue after the last Block1"))
            return
        piece = ex.body[offset : offset + size]
        more = offset + size < len(ex.body)
        req = ex.request
        msg = Message(req.mtype, req.code, 0, req.token, list(req.options), piece)
        msg.add(o.BLOCK1, o.Block(offset // size, more, szx).encode())
        ex.block1_offset = offset + len(piece)
        ex.block1_szx = szx
        self._transmit(ex, msg, now)

    def _request_block2(self, ex: Exchange, block2: o.Block, have: int, now: float) -> None:
        szx = min(block2.szx, self.config.block_szx)
        num = have // (1 << (szx + 4))
        req = ex.request
        opts = [opt for opt in req.options if opt[0] not in _NOT_IN_BLOCK2_REQUEST]
        msg = Message(req.mtype, req.code, 0, req.token, opts)
        msg.add(o.BLOCK2, o.Block(num, False, szx).encode())
        self._transmit(ex, msg, now)

    # -- message layer internals --------------------------------------------------

    def _next_mid(self, remote: Addr) -> int:
        """Message ids count per peer (RFC 7252 4.4): one shared counter would wrap
        within EXCHANGE_LIFETIME under load (a firmware push to a fleet) and a
        device would take a new message for a duplicate of an old one."""
        mids = self._mids
        mid = mids.pop(remote, None)
        if mid is None:
            mid = self._rng.randrange(0x10000)
        mid = (mid + 1) & 0xFFFF
        mids[remote] = mid  # re-inserted: most recently used last
        if len(mids) > self.config.max_dedup_entries:
            del mids[next(iter(mids))]
        return mid

    def _send_con(
        self,
        remote: Addr,
        msg: Message,
        ex: Exchange | None,
        observer: Observer | None,
        now: float,
    ) -> None:
        data = msg.encode()
        cfg = self.config
        timeout = cfg.ack_timeout * (1 + self._rng.random() * (cfg.ack_random_factor - 1))
        tkey = (remote, msg.mid)
        tr = _Transmission(tkey, data, timeout)
        tr.exchange = ex
        tr.observer = observer
        if observer is not None:
            # a newer notification replaces one still in flight and takes over
            # its retransmission state (RFC 7641 4.5.2)
            old = self._transmissions.pop(observer.inflight, None) if observer.inflight else None
            if old is not None:
                tr.retries = old.retries
                tr.timeout = old.timeout
                timeout = old.timeout
            observer.inflight = tkey
        self._transmissions[tkey] = tr
        self._out.append((data, remote))
        self._push_timer(now + timeout, _T_RETRANSMIT, tr)

    def _on_retransmit(self, tr: _Transmission, now: float) -> None:
        if self._transmissions.get(tr.key) is not tr:
            return
        if tr.retries >= self.config.max_retransmit:
            del self._transmissions[tr.key]
            self.stats["timeouts"] += 1
            if tr.exchange is not None:
                self._finish(tr.exchange, now, RequestFailed(tr.exchange, "timeout"))
            elif tr.observer is not None:
                self._remove_observer(tr.observer.key, "notification timed out")
            return
        tr.retries += 1
        tr.timeout *= 2
        self.stats["retransmissions"] += 1
        self._out.append((tr.data, tr.key[0]))
        self._push_timer(now + tr.timeout, _T_RETRANSMIT, tr)

    def _on_response_timeout(self, ref: tuple[Exchange, int], now: float) -> None:
        ex, _mid = ref
        if ex.done or (ex.remote, ex.token) in self._observations:
            return
        if (ex.remote, ex.token) not in self._pending:
            return
        # still waiting only if no CON of ours is still being retransmitted
        for tr in self._transmissions.values():
            if tr.exchange is ex:
                return
        self.stats["timeouts"] += 1
        self._finish(ex, now, RequestFailed(ex, "timeout"))

    def _push_timer(self, when: float, kind: int, ref: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, ref))

    def _ensure_sweep(self, when: float) -> None:
        if self._sweep_at is None or when < self._sweep_at:
            self._sweep_at = when

    def _sweep(self, now: float) -> None:
        """Expire dedup entries, stale reassemblies and block caches."""
        order = self._dedup_order
        dedup = self._dedup
        while order and order[0][0] <= now:
            _, key = order.popleft()
            dedup.pop(key, None)
            self._incoming.pop(key, None)
        nxt: float | None = order[0][0] if order else None
        for table in (self._reassembly, self._block2_cache):
            for k in [k for k, v in table.items() if _expiry(v) <= now]:
                del table[k]
            for v in table.values():
                e = _expiry(v)
                nxt = e if nxt is None else min(nxt, e)
        # at most one sweep a second: under load the next entry expires any moment
        self._sweep_at = None if nxt is None else max(nxt, now + 1.0)

    # -- introspection (tests, metrics) -------------------------------------------

    def sizes(self) -> dict[str, int]:
        return {
            "dedup": len(self._dedup),
            "transmissions": len(self._transmissions),
            "pending": len(self._pending),
            "observations": len(self._observations),
            "observers": len(self._observers),
            "reassemblies": len(self._reassembly),
            "block2_cache": len(self._block2_cache),
            "exchanges": self._n_exchanges,
        }


def _expiry(v: Any) -> float:
    return v.expires if isinstance(v, _Reassembly) else float(v[1])

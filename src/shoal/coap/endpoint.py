"""The asyncio face of the engine: one UDP socket, server and client at once.

This layer only moves bytes between the socket and `Engine`, fires its timer,
calls resource handlers and resolves futures. Handlers are called directly from
`datagram_received` (no task per request); only a handler that returns an
awaitable gets a task.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from shoal.coap import options as o
from shoal.coap.codes import Code
from shoal.coap.config import CoapConfig
from shoal.coap.engine import (
    Addr,
    Engine,
    Exchange,
    Incoming,
    NotificationReceived,
    Observer,
    ObserverRemoved,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
)
from shoal.coap.message import Message

log = logging.getLogger(__name__)

HandlerResult = Message | Awaitable[Message]
Handler = Callable[[Message, Addr], HandlerResult]


class CoapRequestError(Exception):
    """A request that got no response: timeout, reset by the peer, or a cap."""


class Observation:
    """A client-side observation: notifications go to `on_notify` in order."""

    def __init__(
        self,
        endpoint: CoapEndpoint,
        exchange: Exchange,
        on_notify: Callable[[Message], None],
        on_end: Callable[[str], None] | None,
    ) -> None:
        self.endpoint = endpoint
        self.exchange = exchange
        self.on_notify = on_notify
        self.on_end = on_end
        self.response: Message | None = None
        self.active = True

    def reregister(self) -> None:
        self.endpoint.engine.reregister(self.exchange, self.endpoint.now())
        self.endpoint.flush()

    async def cancel(self, proactive: bool = True) -> Message | None:
        """Stop observing: by GET with Observe=1 (proactive) or by Reset later."""
        if not self.active:
            return None
        self.active = False
        ep = self.endpoint
        follow = ep.engine.cancel(self.exchange, ep.now(), proactive)
        if follow is None:
            ep.flush()
            return None
        fut: asyncio.Future[Message] = ep.loop.create_future()
        follow.user = fut
        ep.flush()
        return await fut


class _Route:
    __slots__ = ("handler", "observable", "prefix")

    def __init__(self, prefix: tuple[str, ...], handler: Handler, observable: bool) -> None:
        self.prefix = prefix
        self.handler = handler
        self.observable = observable


class CoapEndpoint(asyncio.DatagramProtocol):
    """A CoAP endpoint on one UDP socket, serving routes and sending requests."""

    def __init__(self, config: CoapConfig | None = None, engine: Engine | None = None) -> None:
        self.engine = engine or Engine(config)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self._exact: dict[tuple[str, ...], _Route] = {}
        self._prefixes: list[_Route] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_observer_removed: Callable[[Observer, str], None] | None = None
        self.handler_errors = 0

    # -- setup -----------------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        config: CoapConfig | None = None,
        rcvbuf: int = 4 * 1024 * 1024,
    ) -> CoapEndpoint:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        except OSError:
            pass
        sock.bind((host, port))
        sock.setblocking(False)
        _, proto = await loop.create_datagram_endpoint(lambda: cls(config), sock=sock)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        addr = self.transport.get_extra_info("sockname")
        return addr[0], addr[1]

    def close(self) -> None:
        """Close the socket; requests and observations still open fail now."""
        engine = self.engine
        for ex in [*engine._pending.values(), *engine._observations.values()]:
            self._on_failed(ex, "endpoint closed")
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()

    def now(self) -> float:
        return self.loop.time()

    # -- routing ---------------------------------------------------------------------

    def route(self, path: str, handler: Handler, observable: bool = False) -> None:
        """Serve exactly `path` (e.g. "/3/0/9")."""
        segs = tuple(s for s in path.split("/") if s)
        self._exact[segs] = _Route(segs, handler, observable)

    def route_prefix(self, path: str, handler: Handler, observable: bool = False) -> None:
        """Serve `path` and everything below it; the longest prefix wins."""
        segs = tuple(s for s in path.split("/") if s)
        self._prefixes.append(_Route(segs, handler, observable))
        self._prefixes.sort(key=lambda r: -len(r.prefix))

    def _find(self, request: Message) -> _Route | None:
        segs = tuple([v.decode("utf-8", "replace") for n, v in request.options if n == o.URI_PATH])
        r = self._exact.get(segs)
        if r is not None:
            return r
        for r in self._prefixes:
            if segs[: len(r.prefix)] == r.prefix:
                return r
        return None

    # -- datagrams -------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        engine = self.engine
        now = self.loop.time()
        engine.receive_datagram(data, addr, now)
        self._drain(now)

    def error_received(self, exc: Exception) -> None:
        log.debug("socket error: %s", exc)

    def flush(self) -> None:
        self._drain(self.loop.time())

    def _drain(self, now: float) -> None:
        engine = self.engine
        events = engine._events
        while events:
            ev = events.popleft()
            if type(ev) is RequestReceived:
                self._dispatch(ev.ctx, now)
            elif type(ev) is ResponseReceived:
                self._on_response(ev.exchange, ev.response)
            elif type(ev) is NotificationReceived:
                self._on_notification(ev.exchange, ev.response)
            elif type(ev) is RequestFailed:
                self._on_failed(ev.exchange, ev.reason)
            elif type(ev) is ObserverRemoved and self.on_observer_removed is not None:
                self.on_observer_removed(ev.observer, ev.reason)
        out = engine._out
        if out:
            engine._out = []
            transport = self.transport
            if transport is not None:
                sendto = transport.sendto
                for data, addr in out:
                    sendto(data, addr)  # type: ignore[arg-type]
        when = engine.get_timer()
        if when is not None and (self._timer_at is None or when < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        self.engine.handle_timer(now)
        self._drain(now)

    # -- serving ---------------------------------------------------------------------

    def _dispatch(self, ctx: Incoming, now: float) -> None:
        request = ctx.request
        route = self._find(request)
        if route is None:
            self.engine.respond(ctx, Message(code=Code.NOT_FOUND), now)
            return
        try:
            result = route.handler(request, ctx.remote)
        except Exception:
            self.handler_errors += 1
            log.exception("handler failed for %s", request.path_str())
            result = Message(code=Code.INTERNAL_SERVER_ERROR)
        if isinstance(result, Message):
            self._answer(ctx, route, result, now)
            return
        self.engine.defer(ctx, now)
        task = self.loop.create_task(self._await_answer(ctx, route, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _await_answer(self, ctx: Incoming, route: _Route, result: Awaitable[Message]) -> None:
        try:
            response = await result
        except asyncio.CancelledError:
            raise
        except Exception:
            self.handler_errors += 1
            log.exception("handler failed for %s", ctx.request.path_str())
            response = Message(code=Code.INTERNAL_SERVER_ERROR)
        now = self.loop.time()
        self._answer(ctx, route, response, now)
        self._drain(now)

    def _answer(self, ctx: Incoming, route: _Route, response: Message, now: float) -> None:
        if ctx.observe == 0 and route.observable and response.opt(o.OBSERVE) is None:
            response.add(o.OBSERVE, 0)
        self.engine.respond(ctx, response, now)

    def notify(self, path: str, con: bool = False) -> int:
        """Send the current representation of `path` to each of its observers."""
        observers = self.engine.observers(path if path.startswith("/") else "/" + path)
        if not observers:
            return 0
        route = None
        for obs in observers:
            route = route or self._find(obs.request)
            if route is None:
                return 0
            try:
                result = route.handler(obs.request, obs.remote)
            except Exception:
                log.exception("notify handler failed for %s", path)
                continue
            if isinstance(result, Message):
                self.engine.notify(obs, result, self.loop.time(), con)
            else:
                task = self.loop.create_task(self._await_notify(obs, result, con))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.flush()
        return len(observers)

    async def _await_notify(self, obs: Observer, result: Awaitable[Message], con: bool) -> None:
        response = await result
        self.engine.notify(obs, response, self.loop.time(), con)
        self.flush()

    # -- requesting ------------------------------------------------------------------

    async def request(self, remote: Addr, message: Message) -> Message:
        """Send a request and return its (reassembled) response."""
        fut: asyncio.Future[Message] = self.loop.create_future()
        try:
            ex = self.engine.request(remote, message, self.loop.time())
        except RuntimeError as exc:
            raise CoapRequestError(str(exc)) from exc
        ex.user = fut
        self.flush()
        try:
            return await fut
        except asyncio.CancelledError:
            self.engine.cancel(ex, self.loop.time(), proactive=False)
            self.flush()
            raise

    async def observe(
        self,
        remote: Addr,
        message: Message,
        on_notify: Callable[[Message], None],
        on_end: Callable[[str], None] | None = None,
    ) -> Observation:
        """GET with Observe=0; `observation.response` is the first answer.

        If the server did not accept the observation (no Observe option in its
        answer) the observation is already inactive.
        """
        message.set(o.OBSERVE, 0)
        if message.code == 0:
            message.code = Code.GET
        try:
            ex = self.engine.request(remote, message, self.loop.time())
        except RuntimeError as exc:
            raise CoapRequestError(str(exc)) from exc
        obs = Observation(self, ex, on_notify, on_end)
        fut: asyncio.Future[Message] = self.loop.create_future()
        ex.user = (fut, obs)
        self.flush()
        obs.response = await fut
        if obs.response.observe is None or obs.exchange.done:
            obs.active = False
        return obs

    def _on_response(self, ex: Exchange, response: Message) -> None:
        user = ex.user
        fut = user[0] if isinstance(user, tuple) else user
        if fut is not None and not fut.done():
            fut.set_result(response)

    def _on_notification(self, ex: Exchange, response: Message) -> None:
        user = ex.user
        if not isinstance(user, tuple):
            return
        obs: Observation = user[1]
        if ex.done:
            obs.active = False
        try:
            obs.on_notify(response)
        except Exception:
            log.exception("notification callback failed")
        if ex.done and obs.on_end is not None:
            obs.on_end("ended by server")

    def _on_failed(self, ex: Exchange, reason: str) -> None:
        user = ex.user
        if isinstance(user, tuple):
            fut, obs = user
            obs.active = False
            if fut.done():
                if obs.on_end is not None:
                    obs.on_end(reason)
                return
        else:
            fut = user
        if fut is not None and not fut.done():
            fut.set_exception(CoapRequestError(reason))


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (4x faster UDP here), else the default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Awaitable[Any]) -> Any:
    """asyncio.run on uvloop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)  # type: ignore[arg-type]

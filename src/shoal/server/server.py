"""The LwM2M server: registration interface, device management, observe, send.

It owns one `CoapEndpoint`, and a `DtlsCoapEndpoint` (CoAPS) when configured.
Devices register to either; afterwards the roles flip and the server sends its
requests from the same socket (inside the device's DTLS session) to the exact
address the device last registered or updated from (devices sit behind NAT).
Requests for a device in queue mode wait until it wakes (Register or Update), up
to a TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from shoal.coap import options as o
from shoal.coap.codes import Code
from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapEndpoint, CoapRequestError
from shoal.coap.engine import Addr
from shoal.coap.message import Message
from shoal.dtls.endpoint import DtlsCoapEndpoint
from shoal.dtls.server import DtlsConfig
from shoal.lwm2m import content
from shoal.lwm2m import requests as rq
from shoal.lwm2m.attributes import NotificationAttributes
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path
from shoal.lwm2m.registration import (
    RegistrationError,
    parse_deregister,
    parse_register,
    parse_update,
)
from shoal.lwm2m.registry import ModelRegistry, default_registry
from shoal.server import events as ev
from shoal.server.authorization import Peer, RegistrationAuthorizer
from shoal.server.observation import Observation
from shoal.server.registration import LinkCache, Registration, expiry, new_registration_id
from shoal.server.store import InMemoryRegistrationStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5683
    # Registrations live lifetime + grace before they expire (clients update late).
    expiry_grace: float = 30.0
    expiry_check_interval: float = 1.0
    max_registration_payload: int = 16 * 1024
    # How long a request for a sleeping queue-mode device may wait.
    queue_ttl: float = 3600.0
    # How long a queue-mode device stays reachable after it spoke (CoAP MAX_TRANSMIT_WAIT).
    queue_awake_time: float = 93.0
    max_queued_per_device: int = 100
    coap: CoapConfig = field(default_factory=CoapConfig)
    # CoAPS: a second endpoint (DTLS 1.2) on `coaps_port` when `dtls` is given.
    coaps_port: int = 5684
    dtls: DtlsConfig | None = None


class RequestError(Exception):
    """A device-management request that got no usable answer."""

    def __init__(self, reason: str, response: rq.Response | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response = response


class UnknownDevice(KeyError):
    """No registration for that endpoint name."""


# Registration authoriser (shoal.server.authorization): may raise RegistrationError
# (4.03, 4.29) to refuse Register, Update, De-register and Send.
Authorizer = RegistrationAuthorizer


class _Queued:
    __slots__ = ("deadline", "future", "message", "request")

    def __init__(
        self,
        request: rq.Request,
        message: Message,
        deadline: float,
        future: asyncio.Future[Message],
    ) -> None:
        self.request = request
        self.message = message
        self.deadline = deadline
        self.future = future


class Lwm2mServer:
    """An LwM2M server on one UDP endpoint."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        registry: ModelRegistry | None = None,
        store: InMemoryRegistrationStore | None = None,
        bus: ev.EventBus | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.registry = registry or default_registry()
        self.store = store or InMemoryRegistrationStore()
        self.bus = bus or ev.EventBus()
        self.authorizer = authorizer
        self.endpoint: CoapEndpoint | None = None
        self.secure_endpoint: DtlsCoapEndpoint | None = None
        self.endpoints: list[CoapEndpoint] = []  # every socket the server answers on
        self._links = LinkCache()
        self._by_addr: dict[Addr, str] = {}
        self._observations: dict[str, dict[int, Observation]] = {}
        self._awake_until: dict[str, float] = {}
        self._queues: dict[str, deque[_Queued]] = {}
        self._expiry_task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {
            "registered": 0,
            "updated": 0,
            "deregistered": 0,
            "expired": 0,
            "rejected": 0,
            "notifications": 0,
            "sends": 0,
        }

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.endpoint = await CoapEndpoint.create(cfg.host, cfg.port, cfg.coap)
        self.endpoint.route_prefix("/rd", self._on_rd)
        self.endpoint.route("/dp", self._on_send)
        self.endpoints = [self.endpoint]
        if cfg.dtls is not None:
            secure = await DtlsCoapEndpoint.create(
                cfg.host, cfg.coaps_port, cfg.coap, dtls=cfg.dtls
            )
            secure.route_prefix("/rd", partial(self._on_rd, transport=secure))
            secure.route("/dp", partial(self._on_send, transport=secure))
            self.secure_endpoint = secure
            self.endpoints.append(secure)
        self._expiry_task = asyncio.get_running_loop().create_task(self._expiry_loop())

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            try:
                await self._expiry_task
            except asyncio.CancelledError:
                pass
        if self.endpoint is not None:
            self.endpoint.close()
        if self.secure_endpoint is not None:
            self.secure_endpoint.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.endpoint is not None, "server not started"
        return self.endpoint.address

    @property
    def secure_address(self) -> tuple[str, int] | None:
        """The CoAPS endpoint's address (None: no CoAPS)."""
        return None if self.secure_endpoint is None else self.secure_endpoint.address

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _peer(self, remote: Addr, transport: CoapEndpoint | None) -> Peer:
        """Who sent a request: address, socket and DTLS identity (for the authoriser)."""
        identity = None
        if isinstance(transport, DtlsCoapEndpoint):
            identity = transport.peer_identity(remote)
        return Peer(remote, transport or self.endpoint, identity)

    # -- registration interface --------------------------------------------------------

    def _on_rd(
        self, request: Message, remote: Addr, transport: CoapEndpoint | None = None
    ) -> Message:
        path = request.uri_path
        try:
            if self.authorizer is not None:
                self.authorizer.admit(remote)
            if request.code == Code.POST and len(path) == 1:
                return self._register(request, remote, path, transport)
            if request.code == Code.POST and len(path) == 2:
                return self._update(request, remote, path, transport)
            if request.code == Code.DELETE and len(path) == 2:
                return self._deregister(request, remote, transport)
        except RegistrationError as exc:
            self.counters["rejected"] += 1
            if self.authorizer is not None:
                self.authorizer.refused(remote, exc)  # counts, throttles, logs
            else:
                log.info("registration refused from %s: %s", remote, exc.message)
            cls, detail = exc.code
            return Message(code=cls << 5 | detail, payload=exc.message.encode())
        return Message(code=Code.METHOD_NOT_ALLOWED)

    def _register(
        self,
        request: Message,
        remote: Addr,
        path: list[str],
        transport: CoapEndpoint | None = None,
    ) -> Message:
        if len(request.payload) > self.config.max_registration_payload:
            raise RegistrationError((4, 13), "registration payload too large")
        # links are parsed once per distinct payload: fleets send identical ones
        reg_req = parse_register(
            path,
            request.uri_query,
            request.payload,
            request.content_format,
            links_parser=self._links.parse,
        )
        identity = None
        if self.authorizer is not None:
            identity = self.authorizer.authorize_register(reg_req, self._peer(remote, transport))
        now = self._now()
        reg = Registration(
            new_registration_id(),
            reg_req.endpoint,
            remote,
            reg_req.lifetime,
            reg_req.version,
            reg_req.binding,
            reg_req.queue_mode,
            reg_req.links,
            now,
            time.time(),
            reg_req.sms,
            dict(reg_req.extra) if reg_req.extra else None,
            identity,
            transport,
        )
        replaced = self.store.add(reg)
        if replaced is not None:
            self._forget(replaced, "re-registered")
        self._by_addr[remote] = reg.id
        self.counters["registered"] += 1
        self.bus.publish(ev.Registered(reg, replaced))
        self._woke(reg)
        location = [(o.LOCATION_PATH, b"rd"), (o.LOCATION_PATH, reg.id.encode())]
        return Message(code=Code.CREATED, options=location)

    def _update(
        self,
        request: Message,
        remote: Addr,
        path: list[str],
        transport: CoapEndpoint | None = None,
    ) -> Message:
        reg = self.store.get(path[1])
        if reg is None:
            raise RegistrationError((4, 4), "no such registration")
        if self.authorizer is not None:
            self.authorizer.authorize("update", reg, self._peer(remote, transport))
        upd = parse_update(
            path,
            request.uri_query,
            request.payload,
            request.content_format,
            version=reg.version,
            links_parser=self._links.parse,
        )
        now = self._now()
        if upd.lifetime is not None:
            reg.lifetime = upd.lifetime
        if upd.binding is not None:
            reg.binding = upd.binding
        if upd.queue_mode is not None:
            reg.queue_mode = upd.queue_mode
        if upd.sms is not None:
            reg.sms = upd.sms
        objects_changed = False
        if upd.links is not None and upd.links != reg.links:
            reg.links = upd.links
            objects_changed = True
        address_changed = reg.address != remote or reg.transport is not transport
        if address_changed:
            if self._by_addr.get(reg.address) == reg.id:
                del self._by_addr[reg.address]
            reg.address = remote
            reg.transport = transport
            self._by_addr[remote] = reg.id
        reg.expires_at = expiry(now, reg.lifetime)
        reg.updated_at = time.time()
        self.store.touch(reg)
        self.counters["updated"] += 1
        self.bus.publish(ev.Updated(reg, address_changed, objects_changed))
        if address_changed:
            self._reobserve(reg)
        self._woke(reg)
        return Message(code=Code.CHANGED)

    def _deregister(
        self, request: Message, remote: Addr, transport: CoapEndpoint | None = None
    ) -> Message:
        dereg = parse_deregister(request.uri_path)
        reg = self.store.get(dereg.registration_id)
        if reg is None:
            raise RegistrationError((4, 4), "no such registration")
        if self.authorizer is not None:
            self.authorizer.authorize("deregister", reg, self._peer(remote, transport))
        self.store.remove(reg.id)
        self._forget(reg, "de-registered")
        self.counters["deregistered"] += 1
        self.bus.publish(ev.Deregistered(reg))
        return Message(code=Code.DELETED)

    def _forget(self, reg: Registration, reason: str) -> None:
        """Drop everything held for a registration that ended."""
        if self._by_addr.get(reg.address) == reg.id:
            del self._by_addr[reg.address]
        for obs in list(self._observations.pop(reg.id, {}).values()):
            self._end_coap_observation(obs)
        self._awake_until.pop(reg.id, None)
        queue = self._queues.pop(reg.id, None)
        if queue:
            for q in queue:
                if not q.future.done():
                    q.future.set_exception(RequestError(f"device {reason}"))

    async def _expiry_loop(self) -> None:
        interval = self.config.expiry_check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.expire(self._now())
            except Exception:
                log.exception("expiry check failed")

    def expire(self, now: float) -> list[Registration]:
        """Remove registrations whose lifetime (plus grace) has passed."""
        expired = self.store.pop_expired(now - self.config.expiry_grace)
        for reg in expired:
            self._forget(reg, "expired")
            self.counters["expired"] += 1
            self.bus.publish(ev.Expired(reg))
        self._expire_queued(now)
        return expired

    def evict(self, endpoint: str, reason: str) -> Registration | None:
        """End a registration from the server side (its credentials were revoked)."""
        reg = self.store.by_endpoint(endpoint)
        if reg is None:
            return None
        self.store.remove(reg.id)
        self._forget(reg, reason)
        self.counters["deregistered"] += 1
        self.bus.publish(ev.Deregistered(reg))
        return reg

    def restore(self, reg: Registration) -> None:
        """Take back a registration held before a restart (no event: nothing changed)."""
        self.store.add(reg)
        self._by_addr[reg.address] = reg.id

    # -- Send (1.1) ----------------------------------------------------------------------

    def _on_send(
        self, request: Message, remote: Addr, transport: CoapEndpoint | None = None
    ) -> Message:
        if request.code != Code.POST:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        rid = self._by_addr.get(remote)
        reg = self.store.get(rid) if rid is not None else None
        if reg is None:
            return Message(code=Code.FORBIDDEN, payload=b"not registered")
        if reg.transport is not transport:
            return Message(code=Code.FORBIDDEN, payload=b"registered through another endpoint")
        if self.authorizer is not None:
            try:
                self.authorizer.authorize("send", reg, self._peer(remote, transport))
            except RegistrationError as exc:
                self.counters["rejected"] += 1
                self.authorizer.refused(remote, exc)
                cls, detail = exc.code
                return Message(code=cls << 5 | detail, payload=exc.message.encode())
        fmt = request.content_format
        if fmt not in (rq.SENML_JSON, rq.SENML_CBOR, rq.LWM2M_CBOR):
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            timed = content.decode_timed(fmt, request.payload, Path(), self.registry)
        except content.CodecError as exc:
            return Message(code=Code.BAD_REQUEST, payload=str(exc).encode())
        self.counters["sends"] += 1
        self.bus.publish(ev.SendReceived(reg, timed))
        self._woke(reg)
        return Message(code=Code.CHANGED)

    # -- device management ---------------------------------------------------------------

    def registration(self, endpoint: str) -> Registration:
        reg = self.store.by_endpoint(endpoint)
        if reg is None:
            raise UnknownDevice(endpoint)
        return reg

    def preferred_format(self, reg: Registration) -> int:
        """Content negotiation from what the device declared (version, `ct`)."""
        declared = reg.links.content_formats
        if reg.version == "1.0":
            return rq.TLV if not declared or rq.TLV in declared else declared[0]
        for fmt in (rq.SENML_CBOR, rq.LWM2M_CBOR, rq.SENML_JSON, rq.TLV):
            if fmt in declared:
                return fmt
        return rq.SENML_CBOR if reg.version == "1.2" else rq.TLV

    def target(self, reg: Registration) -> rq.Target:
        return rq.Target(tuple(reg.uri_prefix()), self.preferred_format(reg), self.registry)

    async def send(self, endpoint: str | Registration, request: rq.Request) -> rq.Response:
        """Send one device-management request and decode the answer."""
        reg = endpoint if isinstance(endpoint, Registration) else self.registration(endpoint)
        target = self.target(reg)
        message = request.to_coap(target)
        try:
            answer = await self._exchange(reg, request, message)
        except RequestError as exc:
            self.bus.publish(
                ev.RequestFailed(reg, request.operation, _path_of(request), exc.reason)
            )
            raise
        return rq.Response.from_coap(request, answer, target)

    async def _exchange(self, reg: Registration, request: rq.Request, message: Message) -> Message:
        assert self.endpoint is not None, "server not started"
        if reg.queue_mode and not self._is_awake(reg):
            return await self._enqueue(reg, request, message)
        try:
            answer = await (reg.transport or self.endpoint).request(reg.address, message)
        except CoapRequestError as exc:
            if reg.queue_mode:
                self._awake_until.pop(reg.id, None)
            raise RequestError(str(exc)) from None
        if reg.queue_mode:
            self._awake_until[reg.id] = self._now() + self.config.queue_awake_time
        return answer

    # convenience wrappers, one per operation

    async def read(self, endpoint: str, path: str | Path, fmt: int | None = None) -> rq.Response:
        return await self.send(endpoint, rq.Read(_p(path), fmt))

    async def discover(self, endpoint: str, path: str | Path) -> rq.Response:
        return await self.send(endpoint, rq.Discover(_p(path)))

    async def write(
        self,
        endpoint: str,
        path: str | Path,
        values: dict[Path, Value] | Value,
        partial: bool = False,
        fmt: int | None = None,
    ) -> rq.Response:
        p = _p(path)
        vals = values if isinstance(values, dict) else {p: values}
        return await self.send(endpoint, rq.Write(p, vals, partial, fmt))

    async def execute(self, endpoint: str, path: str | Path, arguments: str = "") -> rq.Response:
        return await self.send(endpoint, rq.Execute(_p(path), arguments))

    async def create(
        self,
        endpoint: str,
        object_id: int,
        values: dict[Path, Value],
        instance_id: int | None = None,
        fmt: int | None = None,
    ) -> rq.Response:
        return await self.send(endpoint, rq.Create(object_id, values, instance_id, fmt))

    async def delete(self, endpoint: str, path: str | Path) -> rq.Response:
        return await self.send(endpoint, rq.Delete(_p(path)))

    async def write_attributes(
        self, endpoint: str, path: str | Path, attributes: NotificationAttributes
    ) -> rq.Response:
        return await self.send(endpoint, rq.WriteAttributes(_p(path), attributes))

    async def read_composite(
        self, endpoint: str, paths: Iterable[str | Path], fmt: int | None = None
    ) -> rq.Response:
        return await self.send(endpoint, rq.ReadComposite(tuple(_p(p) for p in paths), fmt))

    async def write_composite(
        self, endpoint: str, values: dict[Path, Value], fmt: int | None = None
    ) -> rq.Response:
        return await self.send(endpoint, rq.WriteComposite(values, fmt))

    # -- observe -------------------------------------------------------------------------

    async def observe(
        self, endpoint: str, path: str | Path, fmt: int | None = None
    ) -> tuple[rq.Response, Observation | None]:
        """Observe one path; notifications are published as `Notification` events."""
        return await self._observe(self.registration(endpoint), (_p(path),), False, fmt)

    async def observe_composite(
        self, endpoint: str, paths: Iterable[str | Path], fmt: int | None = None
    ) -> tuple[rq.Response, Observation | None]:
        ps = tuple(_p(p) for p in paths)
        return await self._observe(self.registration(endpoint), ps, True, fmt)

    async def _observe(
        self, reg: Registration, paths: tuple[Path, ...], composite: bool, fmt: int | None
    ) -> tuple[rq.Response, Observation | None]:
        assert self.endpoint is not None, "server not started"
        target = self.target(reg)
        request: rq.Request
        if composite:
            request = rq.ReadComposite(paths, fmt, observe=True)
        else:
            request = rq.Observe(paths[0], fmt)
        message = request.to_coap(target)
        obs = Observation(reg.id, reg.endpoint, paths, composite, fmt, time.time())

        def on_notify(msg: Message) -> None:
            self._on_notification(reg, obs, request, msg, target)

        def on_end(reason: str) -> None:
            self._observation_ended(reg, obs, reason)

        try:
            endpoint = reg.transport or self.endpoint
            coap_obs = await endpoint.observe(reg.address, message, on_notify, on_end)
        except CoapRequestError as exc:
            self.bus.publish(ev.RequestFailed(reg, "observe", _path_of(request), str(exc)))
            raise RequestError(str(exc)) from None
        assert coap_obs.response is not None
        response = rq.Response.from_coap(request, coap_obs.response, target)
        if not coap_obs.active or self.store.get(reg.id) is not reg:
            if coap_obs.active:
                await coap_obs.cancel(proactive=False)
            return response, None
        obs.coap = coap_obs
        self._observations.setdefault(reg.id, {})[obs.id] = obs
        return response, obs

    def _on_notification(
        self,
        reg: Registration,
        obs: Observation,
        request: rq.Request,
        msg: Message,
        target: rq.Target,
    ) -> None:
        if msg.code >> 5 != 2:
            return
        timed: list[tuple[float | None, dict[Path, Value]]] = []
        fmt = msg.content_format
        if fmt in (rq.SENML_JSON, rq.SENML_CBOR, rq.LWM2M_CBOR):
            # one decode serves both the latest values and the time series
            try:
                timed = content.decode_timed(fmt, msg.payload, _root(request), self.registry)
            except content.CodecError:
                return
            values = content.merge_timed(timed)
        else:
            response = rq.Response.from_coap(request, msg, target)
            if not response.ok:
                return
            values = response.values
        obs.notifications += 1
        self.counters["notifications"] += 1
        self.bus.publish(ev.Notification(reg, obs, values, timed))
        if reg.queue_mode:
            self._awake_until[reg.id] = self._now() + self.config.queue_awake_time

    def _observation_ended(self, reg: Registration, obs: Observation, reason: str) -> None:
        held = self._observations.get(reg.id)
        if held is not None and held.pop(obs.id, None) is not None:
            self.bus.publish(ev.ObservationEnded(reg, obs, reason))

    def observations(self, endpoint: str | None = None) -> list[Observation]:
        if endpoint is None:
            return [o_ for per in self._observations.values() for o_ in per.values()]
        reg = self.store.by_endpoint(endpoint)
        if reg is None:
            return []
        return list(self._observations.get(reg.id, {}).values())

    async def cancel_observation(self, observation: Observation, proactive: bool = True) -> None:
        """End an observation: GET with Observe=1 (proactive) or Reset on the next notification."""
        held = self._observations.get(observation.registration_id)
        if held is not None:
            held.pop(observation.id, None)
        coap_obs = observation.coap
        if coap_obs is None or not coap_obs.active:
            return
        try:
            await coap_obs.cancel(proactive)
        except CoapRequestError as exc:
            raise RequestError(str(exc)) from None

    def _end_coap_observation(self, obs: Observation) -> None:
        coap_obs = obs.coap
        if coap_obs is not None and coap_obs.active:
            coap_obs.active = False
            coap_obs.endpoint.engine.cancel(coap_obs.exchange, self._now(), proactive=False)

    def _reobserve(self, reg: Registration) -> None:
        """The device moved (NAT rebinding): observe its paths again at the new address."""
        old = self._observations.pop(reg.id, {})
        loop = asyncio.get_running_loop()
        for obs in old.values():
            self._end_coap_observation(obs)
            coro = self._observe(reg, obs.paths, obs.composite, obs.content_format)
            task = loop.create_task(coro)
            task.add_done_callback(_log_failure)

    # -- queue mode ------------------------------------------------------------------

    def _is_awake(self, reg: Registration) -> bool:
        return self._awake_until.get(reg.id, 0.0) > self._now()

    def is_sleeping(self, reg: Registration) -> bool:
        """A queue-mode device that is not reachable now: requests would wait."""
        return reg.queue_mode and not self._is_awake(reg)

    def _woke(self, reg: Registration) -> None:
        """The device spoke: it is reachable for a while; send what waited for it."""
        if not reg.queue_mode:
            return
        self._awake_until[reg.id] = self._now() + self.config.queue_awake_time
        queue = self._queues.pop(reg.id, None)
        if not queue:
            return
        asyncio.get_running_loop().create_task(self._drain_queue(reg, queue))

    async def _drain_queue(self, reg: Registration, queue: deque[_Queued]) -> None:
        assert self.endpoint is not None
        while queue:
            item = queue.popleft()
            if item.future.done():
                continue
            try:
                endpoint = reg.transport or self.endpoint
                answer = await endpoint.request(reg.address, item.message)
            except CoapRequestError as exc:
                if not item.future.done():
                    item.future.set_exception(RequestError(str(exc)))
                continue
            if not item.future.done():
                item.future.set_result(answer)

    async def _enqueue(self, reg: Registration, request: rq.Request, message: Message) -> Message:
        queue = self._queues.setdefault(reg.id, deque())
        if len(queue) >= self.config.max_queued_per_device:
            raise RequestError("too many requests waiting for this sleeping device")
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        queue.append(_Queued(request, message, self._now() + self.config.queue_ttl, fut))
        return await fut

    def _expire_queued(self, now: float) -> None:
        for rid, queue in list(self._queues.items()):
            while queue and queue[0].deadline <= now:
                item = queue.popleft()
                if not item.future.done():
                    item.future.set_exception(RequestError("device did not wake up in time"))
            if not queue:
                del self._queues[rid]

    def queued(self, endpoint: str) -> int:
        reg = self.store.by_endpoint(endpoint)
        return 0 if reg is None else len(self._queues.get(reg.id, ()))


def _p(path: str | Path) -> Path:
    return path if isinstance(path, Path) else Path.parse(path)


def _root(request: rq.Request) -> Path:
    return request.path if isinstance(request, (rq.Read, rq.Observe)) else Path()


def _path_of(request: rq.Request) -> str:
    if isinstance(request, (rq.ReadComposite,)):
        return ",".join(str(p) for p in request.paths)
    if isinstance(request, rq.WriteComposite):
        return ",".join(str(p) for p in request.values)
    if isinstance(request, rq.Create):
        return f"/{request.object_id}"
    return str(request.path)


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("re-observation failed: %s", task.exception())

"""The fleet service: turns LwM2M server events into the farm's inventory.

On each registration it records the device, places it in its enclosure
(correlation), reads its identity from /3 and observes the values its kind
reports; notifications and Sends become telemetry; every change goes to the
device's history and the live feed. After a restart it rebuilds the server's
registrations from the database and observes again, without waiting for the
devices to re-register.

Server event handlers are synchronous; the database work they cause runs in one
worker task, in order, so a registration storm queues instead of piling up
concurrent transactions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shoal.domain.correlation import CorrelationConfig, EnclosureRef, candidates, place
from shoal.domain.feed import LiveFeed
from shoal.lwm2m import requests as rq
from shoal.lwm2m.link import format_registration_links
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path
from shoal.server import events as ev
from shoal.server.registration import Registration, expiry
from shoal.server.server import Lwm2mServer, RequestError
from shoal.store import (
    CorrelationSource,
    DeviceEventKind,
    DeviceKind,
    DeviceRegistration,
    DeviceStatus,
    Inventory,
    ObservationRecord,
    StoreError,
    TelemetryWriter,
)

log = logging.getLogger(__name__)

CAMERA_OBJECT = 33001
SENSOR_OBJECTS = (3303, 3325, 3326, 3327, 3300, 3316, 3319, 3320)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    tenant: str = "default"
    correlation: CorrelationConfig = field(default_factory=CorrelationConfig)
    # Resources observed on every device of a kind (when the device has the object).
    sensor_paths: tuple[str, ...] = (
        "/3303/0/5700",
        "/3325/0/5700",
        "/3326/0/5700",
        "/3327/0/5700",
        "/3300/0/5700",
        "/3/0/9",
        "/4/0/2",
    )
    camera_paths: tuple[str, ...] = ("/33001/0/0", "/33001/0/1", "/3/0/9", "/4/0/2")
    read_identity: bool = True
    observe_on_register: bool = True
    max_pending: int = 100_000


def device_kind(reg: Registration) -> DeviceKind:
    if reg.supports(CAMERA_OBJECT):
        return DeviceKind.CAMERA
    if any(reg.supports(o) for o in SENSOR_OBJECTS):
        return DeviceKind.SENSOR
    return DeviceKind.UNKNOWN


def _address_text(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` back into a socket address."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return host, int(port)


class ProvisioningSource(Protocol):
    """Correlation source 3: the enclosure a device's credentials were created for
    (`shoal.security.store.SecurityStore` answers from its in-memory cache)."""

    def provisioned_enclosure(self, endpoint: str) -> str | None: ...


class FleetService:
    def __init__(
        self,
        server: Lwm2mServer,
        inventory: Inventory,
        telemetry: TelemetryWriter,
        feed: LiveFeed,
        config: FleetConfig | None = None,
    ) -> None:
        self.server = server
        self.inventory = inventory
        self.telemetry = telemetry
        self.feed = feed
        self.config = config or FleetConfig()
        self._jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._device_ids: dict[str, int] = {}
        self._places: dict[str, tuple[int | None, int | None]] = {}  # endpoint -> farm, enclosure
        self._tenant_id: int | None = None
        self.dropped_jobs = 0
        self.provisioning: ProvisioningSource | None = None
        self._seen: dict[str, datetime] = {}
        self.seen_interval = 5.0
        self._unsubscribe: list[Callable[[], None]] = []

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        tenant = await self.inventory.ensure_tenant(self.config.tenant)
        self._tenant_id = tenant.id
        bus = self.server.bus
        self._unsubscribe = [
            bus.subscribe(ev.Registered, self._on_registered),
            bus.subscribe(ev.Updated, self._on_updated),
            bus.subscribe(ev.Deregistered, self._on_deregistered),
            bus.subscribe(ev.Expired, self._on_expired),
            bus.subscribe(ev.Notification, self._on_notification),
            bus.subscribe(ev.SendReceived, self._on_send),
            bus.subscribe(ev.RequestFailed, self._on_request_failed),
        ]
        self._worker = asyncio.get_running_loop().create_task(self._work())
        self._spawn(self._flush_seen_loop())

    async def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        await self.drain()
        for task in list(self._tasks):
            task.cancel()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    async def drain(self) -> None:
        """Wait until every queued database job ran (tests, shutdown)."""
        await self._jobs.join()

    async def _flush_seen_loop(self) -> None:
        """`last_seen` moves with every value; one bulk statement every few seconds."""
        while True:
            await asyncio.sleep(self.seen_interval)
            if self._seen:
                seen, self._seen = self._seen, {}
                self._enqueue(functools.partial(self.inventory.mark_seen, seen))

    def _enqueue(self, job: Callable[[], Awaitable[None]]) -> None:
        if self._jobs.qsize() >= self.config.max_pending:
            self.dropped_jobs += 1
            log.warning("fleet job queue full: dropping a job")
            return
        self._jobs.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except Exception:
                log.exception("fleet job failed")
            finally:
                self._jobs.task_done()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- restart recovery ------------------------------------------------------------

    async def restore(self) -> int:
        """Rebuild registrations held before a restart; observe their paths again."""
        known = await self.inventory.known_registrations()
        loop = asyncio.get_running_loop()
        now = loop.time()
        restored = 0
        for k in known:
            if not k.address or not k.object_links or not k.registration_id:
                continue
            try:
                links = self.server._links.parse(k.object_links.encode())
                address = parse_address(k.address)
            except ValueError:
                log.warning("cannot restore %s: bad stored registration", k.endpoint)
                continue
            lifetime = k.lifetime or 86400
            reg = Registration(
                k.registration_id,
                k.endpoint,
                address,
                lifetime,
                k.lwm2m_version or "1.0",
                k.binding or "U",
                k.queue_mode,
                links,
                now,
                k.last_seen.timestamp(),
            )
            # the lifetime runs from when the device last spoke, not from now
            elapsed = max(0.0, time.time() - k.last_seen.timestamp())
            reg.expires_at = expiry(now - elapsed, lifetime)
            self.server.restore(reg)
            self._device_ids[k.endpoint] = k.device_id
            restored += 1
            if k.observations and self.config.observe_on_register:
                paths = tuple(r.path for r in k.observations)
                self._spawn(self._observe_paths(reg, paths, remember=False))
        return restored

    # -- server events ---------------------------------------------------------------

    def _on_registered(self, event: ev.Registered) -> None:
        reg = event.registration
        self._enqueue(lambda: self._registered(reg))

    async def _registered(self, reg: Registration) -> None:
        kind = device_kind(reg)
        device = await self.inventory.upsert_device_on_registration(
            DeviceRegistration(
                endpoint=reg.endpoint,
                registration_id=reg.id,
                address=_address_text(reg.address),
                lifetime=reg.lifetime,
                lwm2m_version=reg.version,
                binding=reg.binding,
                queue_mode=reg.queue_mode,
                object_links=format_registration_links(reg.links),
                tenant_id=None,
                kind=kind,
                extra=dict(reg.extra) if reg.extra else None,
            ),
            status=DeviceStatus.SLEEPING if reg.queue_mode else DeviceStatus.ONLINE,
        )
        self._device_ids[reg.endpoint] = device.id
        await self._correlate(reg, manual=None)
        farm_id, enclosure_id = self._places.get(reg.endpoint, (None, None))
        self.feed.publish(
            "registered",
            endpoint=reg.endpoint,
            device_kind=str(kind),
            farm_id=farm_id,
            enclosure_id=enclosure_id,
        )
        if not reg.queue_mode:
            self._spawn(self._after_registration(reg, kind))

    async def _correlate(self, reg: Registration, manual: str | None) -> None:
        cfg = self.config.correlation
        device = await self.inventory.get_device(reg.endpoint)
        manual_code = None
        if device.correlation_source == CorrelationSource.MANUAL and device.enclosure_id:
            manual_code = (await self.inventory.get_enclosure(device.enclosure_id)).code
        resource_value = None
        if cfg.resource is not None and reg.supports(cfg.resource[0]) and not reg.queue_mode:
            try:
                resp = await self.server.send(reg, rq.Read(cfg.resource))
                value = resp.values.get(cfg.resource)
                resource_value = str(value) if value is not None else None
            except RequestError:
                resource_value = None
        found = candidates(
            cfg,
            reg.endpoint,
            reg.extra,
            provisioned_code=(
                self.provisioning.provisioned_enclosure(reg.endpoint)
                if self.provisioning is not None
                else None
            ),
            resource_value=resource_value,
            manual_code=manual_code,
        )
        lookups: dict[str, EnclosureRef | None] = {}
        for c in found[:1]:
            code = c.code.strip().upper()
            try:
                enc = await self.inventory.get_enclosure_by_code(code)
                lookups[code] = EnclosureRef(enc.id, enc.code, enc.tenant_id)
            except (StoreError, ValueError):
                lookups[code] = None
        placement = place(found, device.tenant_id, lambda code: lookups.get(code))
        if placement.enclosure is not None and placement.source is not None:
            if (
                device.enclosure_id != placement.enclosure.id
                or device.correlation_source != placement.source
            ):
                await self.inventory.assign_enclosure(
                    reg.endpoint, placement.enclosure.id, placement.source
                )
            enc = await self.inventory.get_enclosure(placement.enclosure.id)
            self._places[reg.endpoint] = (enc.farm_id, enc.id)
        else:
            reason = placement.reason or "unassigned"
            await self.inventory.mark_unassigned(reg.endpoint, reason)
            self._places[reg.endpoint] = (None, None)
            self.feed.publish("unassigned", endpoint=reg.endpoint, reason=reason)

    async def _after_registration(self, reg: Registration, kind: DeviceKind) -> None:
        """Identity from /3, then the observations the device's kind calls for."""
        if self.config.read_identity and reg.supports(3):
            try:
                resp = await self.server.send(reg, rq.Read(Path(3, 0)))
            except RequestError as exc:
                log.info("identity read of %s failed: %s", reg.endpoint, exc)
            else:
                if resp.ok:
                    v = resp.values
                    self._enqueue(lambda: self._store_identity(reg.endpoint, v))
        if not self.config.observe_on_register:
            return
        paths = self.config.camera_paths if kind == DeviceKind.CAMERA else self.config.sensor_paths
        await self._observe_paths(reg, paths, remember=True)

    async def _store_identity(self, endpoint: str, values: dict[Path, Value]) -> None:
        def text(rid: int) -> str | None:
            value = values.get(Path(3, 0, rid))
            return None if value is None else str(value)

        before = await self.inventory.get_device(endpoint)
        firmware = text(3)
        await self.inventory.update_device_info(
            endpoint,
            manufacturer=text(0),
            model=text(1),
            serial=text(2),
            firmware_version=firmware,
        )
        if firmware and before.firmware_version and before.firmware_version != firmware:
            self.feed.publish(
                "firmware_changed", endpoint=endpoint, old=before.firmware_version, new=firmware
            )

    async def _observe_paths(
        self, reg: Registration, paths: tuple[str, ...], remember: bool
    ) -> None:
        held = {str(p) for o in self.server.observations(reg.endpoint) for p in o.paths}
        records: list[ObservationRecord] = []
        for text in paths:
            path = Path.parse(text)
            if not reg.supports(path[0]) or text in held:
                continue
            if self.server.store.get(reg.id) is not reg:
                return  # the device re-registered or left meanwhile
            try:
                resp, obs = await self.server.observe(reg.endpoint, path)
            except (RequestError, KeyError) as exc:
                log.info("observe %s%s failed: %s", reg.endpoint, text, exc)
                continue
            if obs is None:
                continue
            records.append(ObservationRecord(text, obs.content_format))
            self._record_values(reg.endpoint, resp.values, datetime.now(UTC))
        if remember and records:
            self._enqueue(lambda: self._remember_observations(reg.endpoint, records))

    async def _remember_observations(self, endpoint: str, records: list[ObservationRecord]) -> None:
        for r in records:
            await self.inventory.add_observation(endpoint, r)

    def _on_updated(self, event: ev.Updated) -> None:
        reg = event.registration
        address = _address_text(reg.address)
        self._enqueue(lambda: self._updated(reg, address, event.address_changed))

    async def _updated(self, reg: Registration, address: str, moved: bool) -> None:
        await self.inventory.upsert_device_on_registration(
            DeviceRegistration(
                endpoint=reg.endpoint,
                registration_id=reg.id,
                address=address,
                lifetime=reg.lifetime,
                lwm2m_version=reg.version,
                binding=reg.binding,
                queue_mode=reg.queue_mode,
                object_links=format_registration_links(reg.links),
                kind=device_kind(reg),
            ),
            event=DeviceEventKind.UPDATED,
            status=DeviceStatus.SLEEPING if reg.queue_mode else DeviceStatus.ONLINE,
        )

    def _on_deregistered(self, event: ev.Deregistered) -> None:
        endpoint = event.registration.endpoint
        self._enqueue(lambda: self._ended(endpoint, DeviceStatus.DEREGISTERED))

    def _on_expired(self, event: ev.Expired) -> None:
        endpoint = event.registration.endpoint
        self._enqueue(lambda: self._ended(endpoint, DeviceStatus.EXPIRED))

    async def _ended(self, endpoint: str, status: DeviceStatus) -> None:
        kind = (
            DeviceEventKind.DEREGISTERED
            if status == DeviceStatus.DEREGISTERED
            else DeviceEventKind.EXPIRED
        )
        await self.inventory.set_status(endpoint, status, event=kind)
        farm_id, enclosure_id = self._places.get(endpoint, (None, None))
        self.feed.publish(
            str(status), endpoint=endpoint, farm_id=farm_id, enclosure_id=enclosure_id
        )

    def _on_request_failed(self, event: ev.RequestFailed) -> None:
        endpoint = event.registration.endpoint
        detail = {"operation": event.operation, "path": event.path, "reason": event.reason}

        async def job() -> None:
            await self.inventory.set_status(
                endpoint,
                (await self.inventory.get_device(endpoint)).status,
                event=DeviceEventKind.REQUEST_FAILED,
                detail=detail,
            )

        self._enqueue(job)

    # -- values ----------------------------------------------------------------------

    def _on_notification(self, event: ev.Notification) -> None:
        now = datetime.now(UTC)
        if event.timestamped and any(t is not None for t, _ in event.timestamped):
            for ts, values in event.timestamped:
                at = datetime.fromtimestamp(ts, UTC) if ts is not None else now
                self._record_values(event.registration.endpoint, values, at)
        else:
            self._record_values(event.registration.endpoint, event.values, now)

    def _on_send(self, event: ev.SendReceived) -> None:
        now = datetime.now(UTC)
        for ts, values in event.timestamped:
            at = datetime.fromtimestamp(ts, UTC) if ts is not None else now
            self._record_values(event.registration.endpoint, values, at)

    def _record_values(self, endpoint: str, values: dict[Path, Value], at: datetime) -> None:
        self._seen[endpoint] = at
        device_id = self._device_ids.get(endpoint)
        farm_id, enclosure_id = self._places.get(endpoint, (None, None))
        registry = self.server.registry
        for path, value in values.items():
            if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                continue
            unit = None
            if len(path) >= 3:
                res = registry.resource(path[0], path[2])
                unit = res.units if res is not None and res.units else None
            if device_id is not None:
                self.telemetry.add(device_id, str(path), at, value, unit)
            self.feed.publish(
                "value",
                endpoint=endpoint,
                path=str(path),
                value=value,
                unit=unit,
                time=at.isoformat(),
                farm_id=farm_id,
                enclosure_id=enclosure_id,
            )

    def placed(
        self, endpoint: str, farm_id: int, enclosure_id: int, source: CorrelationSource
    ) -> None:
        """An operator placed the device: its values now carry the new enclosure."""
        self._places[endpoint] = (farm_id, enclosure_id)
        self.feed.publish(
            "assigned",
            endpoint=endpoint,
            farm_id=farm_id,
            enclosure_id=enclosure_id,
            source=str(source),
        )

    def place_of(self, endpoint: str) -> tuple[int | None, int | None]:
        return self._places.get(endpoint, (None, None))

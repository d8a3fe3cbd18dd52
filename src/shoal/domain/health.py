"""Device health: online, sleeping, unresponsive, offline or de-registered, with
the reason and the time it started, rolled up per enclosure and farm.

Every signal counts, not only the registration lifetime Leshan reports on:

- the lifetime ran out without an Update (plus grace): offline;
- a notification is overdue: the device should speak at least every pmax of
  the observations its profile placed, plus grace: unresponsive;
- a Send is overdue, for profiles that expect one every `report_interval`;
- several device-management requests in a row timed out.

A queue-mode device that is not awake is sleeping, which is not an alarm.

Detection latency is one setting: how long after a missed deadline the device
is flagged at most. The checker runs every quarter of it (at most every 5 s),
the grace is the rest, and the latency of every detection is measured
(`HealthService.detections`) so the setting can be checked against reality.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shoal.domain.feed import LiveFeed
from shoal.domain.profiles import AppliedProfile, ProfileService
from shoal.server import events as ev
from shoal.server.registration import Registration
from shoal.server.server import Lwm2mServer
from shoal.store import DeviceStatus, Inventory, StoreError

log = logging.getLogger(__name__)


class Health(enum.StrEnum):
    ONLINE = "online"
    SLEEPING = "sleeping"
    UNRESPONSIVE = "unresponsive"
    OFFLINE = "offline"
    DEREGISTERED = "deregistered"

    @property
    def alarming(self) -> bool:
        return self in (Health.UNRESPONSIVE, Health.OFFLINE)


# worse is higher; a rollup reports its worst member
_RANK = {
    Health.ONLINE: 0,
    Health.SLEEPING: 0,
    Health.DEREGISTERED: 1,
    Health.UNRESPONSIVE: 2,
    Health.OFFLINE: 3,
}

# request failures that mean "the device did not answer"
_NO_ANSWER = ("timeout", "did not wake", "timed out")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    # Longest time from a missed deadline (lifetime end, pmax, Send interval) to the flag.
    detection_latency: float = 60.0
    # How often deadlines are checked; None: a quarter of the latency, 0.05-5 s.
    check_interval: float | None = None
    # Consecutive timed-out requests that make a device unresponsive.
    timeout_threshold: int = 3
    # Write OFFLINE / ONLINE to the inventory (with a `health` device event).
    update_inventory: bool = True
    # Measured detections kept for the status page and the benchmark.
    keep_detections: int = 10_000

    @property
    def interval(self) -> float:
        if self.check_interval is not None:
            return self.check_interval
        return min(5.0, max(0.05, self.detection_latency / 4))

    @property
    def grace(self) -> float:
        return max(0.0, self.detection_latency - self.interval)


@dataclass(slots=True)
class Place:
    """Where a device is: tenant, farm, enclosure (None while unknown/unassigned)."""

    device_id: int | None = None
    tenant_id: int | None = None
    farm_id: int | None = None
    enclosure_id: int | None = None
    model: str | None = None


class DeviceDirectory:
    """Endpoint to tenant, farm and enclosure, cached for the hot path.

    The fleet service's own placement (`place_of`) is used when it has one; the
    inventory fills the rest (tenant, device id, devices restored after a restart).
    """

    def __init__(
        self,
        inventory: Inventory,
        place_of: Callable[[str], tuple[int | None, int | None]] | None = None,
    ) -> None:
        self.inventory = inventory
        self.place_of = place_of
        self._places: dict[str, Place] = {}
        self.enclosure_farm: dict[int, int] = {}
        self.enclosure_names: dict[int, str] = {}
        self.farm_names: dict[int, str] = {}
        self.generation = 0  # bumped whenever a placement changes
        self.stale: set[str] = set()  # endpoints to look up again (just registered)

    def get(self, endpoint: str) -> Place:
        place = self._places.get(endpoint)
        if place is None:
            place = self._places[endpoint] = Place()
        if self.place_of is not None:
            farm_id, enclosure_id = self.place_of(endpoint)
            if enclosure_id is not None and enclosure_id != place.enclosure_id:
                place.enclosure_id = enclosure_id
                place.farm_id = farm_id
                self.generation += 1
        return place

    def known(self) -> Iterable[tuple[str, Place]]:
        return self._places.items()

    async def refresh(self, endpoint: str) -> Place:
        place = self.get(endpoint)
        try:
            device = await self.inventory.get_device(endpoint)
        except StoreError:
            return place
        farm_id = None
        if device.enclosure_id is not None:
            farm_id = self.enclosure_farm.get(device.enclosure_id)
            if farm_id is None:
                try:
                    enc = await self.inventory.get_enclosure(device.enclosure_id)
                except StoreError:
                    enc = None
                if enc is not None:
                    farm_id = self.enclosure_farm[enc.id] = enc.farm_id
                    self.enclosure_names[enc.id] = enc.name
        self._set(endpoint, device.id, device.tenant_id, farm_id, device.enclosure_id, device.model)
        return place

    def _set(
        self,
        endpoint: str,
        device_id: int,
        tenant_id: int | None,
        farm_id: int | None,
        enclosure_id: int | None,
        model: str | None,
    ) -> None:
        place = self._places.setdefault(endpoint, Place())
        new = (device_id, tenant_id, farm_id, enclosure_id, model)
        old = (place.device_id, place.tenant_id, place.farm_id, place.enclosure_id, place.model)
        if new != old:
            place.device_id, place.tenant_id, place.farm_id, place.enclosure_id, place.model = new
            self.generation += 1

    async def refresh_stale(self, bulk: int = 200) -> None:
        """Look up the devices that registered since the last call (in bulk if many)."""
        stale, self.stale = self.stale, set()
        if len(stale) > bulk:
            await self.refresh_all()
            return
        for endpoint in stale:
            await self.refresh(endpoint)

    async def refresh_all(self) -> None:
        """Reload every device's placement (a few queries, pages of 1000)."""
        for farm in await self.inventory.list_farms():
            self.farm_names[farm.id] = farm.name
        for enc in await self.inventory.list_enclosures():
            self.enclosure_farm[enc.id] = enc.farm_id
            self.enclosure_names[enc.id] = enc.name
        offset = 0
        while True:
            page = await self.inventory.list_devices(limit=1000, offset=offset)
            for d in page.items:
                farm_id = self.enclosure_farm.get(d.enclosure_id) if d.enclosure_id else None
                self._set(d.endpoint, d.id, d.tenant_id, farm_id, d.enclosure_id, d.model)
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break


@dataclass(slots=True)
class DeviceHealth:
    endpoint: str
    status: Health
    reason: str
    since: datetime
    changed_at: float  # loop time of the last status change
    last_heard: float
    registered_at: float = 0.0
    registration_id: str | None = None
    queue_mode: bool = False
    expires_at: float = float("inf")
    lifetime: int = 0
    pmax: float | None = None  # shortest pmax among the profile's observations
    report_interval: float | None = None
    last_send: float | None = None
    timeouts: int = 0

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "endpoint": self.endpoint,
            "status": str(self.status),
            "reason": self.reason,
            "since": self.since.isoformat(),
            "queue_mode": self.queue_mode,
            "consecutive_timeouts": self.timeouts,
            "expected_pmax": self.pmax,
            "report_interval": self.report_interval,
        }
        if now is not None:
            out["silent_for"] = round(max(0.0, now - self.last_heard), 3)
        return out


@dataclass(frozen=True, slots=True)
class Detection:
    """One device found not responding: which signal, and how late."""

    endpoint: str
    status: Health
    signal: str  # lifetime, notification, send, timeouts
    deadline_latency: float  # seconds after the missed deadline
    silence: float  # seconds since the device was last heard
    at: datetime


ChangeListener = Callable[[DeviceHealth, Health | None], None]


class HealthService:
    def __init__(
        self,
        server: Lwm2mServer,
        directory: DeviceDirectory,
        profiles: ProfileService | None = None,
        feed: LiveFeed | None = None,
        config: HealthConfig | None = None,
    ) -> None:
        self.server = server
        self.directory = directory
        self.profiles = profiles
        self.feed = feed
        self.config = config or HealthConfig()
        self.devices: dict[str, DeviceHealth] = {}
        self.detections: deque[Detection] = deque(maxlen=self.config.keep_detections)
        self.on_change: list[ChangeListener] = []
        self.checks = 0
        self.dropped_jobs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._checker: asyncio.Task[None] | None = None
        self._jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(maxsize=100_000)
        self._worker: asyncio.Task[None] | None = None
        if profiles is not None:
            profiles.on_applied.append(self._on_profile_applied)

    def _now(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
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
        # registrations restored after a restart get the benefit of the doubt
        for reg in list(self.server.store):
            if reg.endpoint not in self.devices:
                self._registered(reg, "restored after a server restart")
        loop = asyncio.get_running_loop()
        self._checker = loop.create_task(self._check_loop())
        self._worker = loop.create_task(self._work())

    async def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        tasks = [t for t in (self._checker, self._worker) if t is not None]
        if self._worker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._jobs.join(), 5.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        await self._jobs.join()

    def _enqueue(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped_jobs += 1
            if self.dropped_jobs & (self.dropped_jobs - 1) == 0:  # 1, 2, 4, 8...
                log.warning("health job queue full: %d jobs dropped", self.dropped_jobs)

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except Exception:
                log.exception("health job failed")
            finally:
                self._jobs.task_done()

    # -- signals ---------------------------------------------------------------------

    def _registered(self, reg: Registration, reason: str) -> DeviceHealth:
        now = self._now()
        h = self.devices.get(reg.endpoint)
        if h is None:
            h = DeviceHealth(reg.endpoint, Health.ONLINE, reason, _utcnow(), now, now)
            self.devices[reg.endpoint] = h
            previous: Health | None = None
        else:
            previous = h.status
        h.registration_id = reg.id
        h.queue_mode = reg.queue_mode
        h.expires_at = reg.expires_at
        h.lifetime = reg.lifetime
        h.last_heard = h.registered_at = now
        h.timeouts = 0
        h.last_send = None
        self._set(h, Health.ONLINE, reason, previous, now, store=False)
        return h

    def _on_registered(self, event: ev.Registered) -> None:
        reg = event.registration
        reason = "re-registered" if event.replaced is not None else "registered"
        self._registered(reg, reason)
        self.directory.stale.add(reg.endpoint)

    def _heard(self, reg: Registration, why: str) -> DeviceHealth | None:
        h = self.devices.get(reg.endpoint)
        if h is None:
            return self._registered(reg, why)
        now = self._now()
        h.last_heard = now
        h.timeouts = 0
        h.expires_at = reg.expires_at
        h.queue_mode = reg.queue_mode
        if h.status.alarming or h.status == Health.DEREGISTERED:
            self._set(h, Health.ONLINE, why, h.status, now)
        return h

    def _on_updated(self, event: ev.Updated) -> None:
        reg = event.registration
        h = self._heard(reg, "registration updated")
        if h is not None:
            h.lifetime = reg.lifetime
            h.registration_id = reg.id

    def _on_notification(self, event: ev.Notification) -> None:
        self._heard(event.registration, "notification received")

    def _on_send(self, event: ev.SendReceived) -> None:
        h = self._heard(event.registration, "Send received")
        if h is not None:
            h.last_send = h.last_heard

    def _on_request_failed(self, event: ev.RequestFailed) -> None:
        h = self.devices.get(event.registration.endpoint)
        if h is None or not any(s in event.reason for s in _NO_ANSWER):
            return
        h.timeouts += 1
        threshold = self.config.timeout_threshold
        if h.timeouts >= threshold and not h.status.alarming:
            now = self._now()
            reason = f"{h.timeouts} consecutive requests timed out"
            self._detected(h, Health.UNRESPONSIVE, "timeouts", now, now, reason)

    def _on_deregistered(self, event: ev.Deregistered) -> None:
        h = self.devices.get(event.registration.endpoint)
        if h is not None and h.registration_id == event.registration.id:
            self._set(h, Health.DEREGISTERED, "de-registered", h.status, self._now(), store=False)

    def _on_expired(self, event: ev.Expired) -> None:
        h = self.devices.get(event.registration.endpoint)
        if h is None or h.registration_id != event.registration.id:
            return
        now = self._now()
        reason = f"registration expired: no update within its lifetime of {h.lifetime} s"
        if h.status != Health.OFFLINE:
            self._detected(h, Health.OFFLINE, "lifetime", now, h.expires_at, reason, store=False)
        else:
            h.reason = reason

    def _on_profile_applied(self, applied: AppliedProfile) -> None:
        h = self.devices.get(applied.endpoint)
        if h is None:
            return
        pmaxes = [p for p in applied.observed.values() if p is not None and p > 0]
        h.pmax = min(pmaxes) if pmaxes else None
        h.report_interval = applied.profile.report_interval

    # -- checking --------------------------------------------------------------------

    async def _check_loop(self) -> None:
        interval = self.config.interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:
                log.exception("health check failed")

    def check(self, now: float | None = None) -> int:
        """Look at every device's deadlines; returns how many changed status."""
        now = self._now() if now is None else now
        self.checks += 1
        grace = self.config.grace
        changed = 0
        store = self.server.store
        for h in list(self.devices.values()):
            if h.status == Health.DEREGISTERED or h.registration_id is None:
                continue
            reg = store.get(h.registration_id)
            if reg is None:
                continue  # gone: Expired/Deregistered events decide
            found = self._overdue(h, reg, now, grace)
            if found is not None:
                status, signal, deadline, reason = found
                if h.status != status:
                    self._detected(h, status, signal, now, deadline, reason)
                    changed += 1
                continue
            if h.timeouts >= self.config.timeout_threshold:
                continue  # stays unresponsive until it is heard from again
            status = Health.SLEEPING if self.server.is_sleeping(reg) else Health.ONLINE
            if h.status != status:
                if h.status.alarming:
                    reason = "heard from again"
                elif status == Health.SLEEPING:
                    reason = "queue mode: asleep until it next wakes"
                else:
                    reason = "awake"
                self._set(h, status, reason, h.status, now)
                changed += 1
        return changed

    def _overdue(
        self, h: DeviceHealth, reg: Registration, now: float, grace: float
    ) -> tuple[Health, str, float, str] | None:
        expires = reg.expires_at
        if now > expires + grace:
            return (
                Health.OFFLINE,
                "lifetime",
                expires,
                f"no registration update within its lifetime of {reg.lifetime} s",
            )
        if h.report_interval is not None:
            last = h.last_send if h.last_send is not None else h.registered_at
            deadline = last + h.report_interval
            if now > deadline + grace:
                return (
                    Health.UNRESPONSIVE,
                    "send",
                    deadline,
                    f"no Send for {now - last:.0f} s (expected every {h.report_interval:g} s)",
                )
        if h.pmax is not None and not reg.queue_mode:
            deadline = h.last_heard + h.pmax
            if now > deadline + grace:
                return (
                    Health.UNRESPONSIVE,
                    "notification",
                    deadline,
                    f"no notification for {now - h.last_heard:.0f} s (pmax {h.pmax:g} s)",
                )
        return None

    def _detected(
        self,
        h: DeviceHealth,
        status: Health,
        signal: str,
        now: float,
        deadline: float,
        reason: str,
        store: bool = True,
    ) -> None:
        previous = h.status
        self.detections.append(
            Detection(
                h.endpoint,
                status,
                signal,
                max(0.0, now - deadline),
                max(0.0, now - h.last_heard),
                _utcnow(),
            )
        )
        self._set(h, status, reason, previous, now, store)

    def _set(
        self,
        h: DeviceHealth,
        status: Health,
        reason: str,
        previous: Health | None,
        now: float,
        store: bool = True,
    ) -> None:
        if previous == status and h.reason == reason:
            return
        h.reason = reason
        if previous != status:
            h.status = status
            h.since = _utcnow()
            h.changed_at = now
        for listener in self.on_change:
            try:
                listener(h, previous)
            except Exception:
                log.exception("health listener failed")
        if previous == status:
            return
        place = self.directory.get(h.endpoint)
        if self.feed is not None:
            self.feed.publish(
                "health",
                endpoint=h.endpoint,
                status=str(status),
                previous=None if previous is None else str(previous),
                reason=reason,
                since=h.since.isoformat(),
                farm_id=place.farm_id,
                enclosure_id=place.enclosure_id,
            )
        if store and self.config.update_inventory and previous is not None:
            inv_status = _inventory_status(status, previous)
            if inv_status is not None:
                endpoint, detail = h.endpoint, {"health": str(status), "reason": reason}
                self._enqueue(lambda: self._store_status(endpoint, inv_status, detail))

    async def _store_status(
        self, endpoint: str, status: DeviceStatus, detail: dict[str, Any]
    ) -> None:
        try:
            inventory = self.directory.inventory
            await inventory.set_status(endpoint, status, event="health", detail=detail)
        except StoreError as exc:
            log.info("health status of %s not stored: %s", endpoint, exc)

    # -- reading ---------------------------------------------------------------------

    def device(self, endpoint: str) -> DeviceHealth | None:
        return self.devices.get(endpoint)

    def rollup(
        self, *, farm_id: int | None = None, enclosure_id: int | None = None
    ) -> dict[str, Any]:
        """Counts per status and the worst status among the matching devices."""
        counts = {str(s): 0 for s in Health}
        worst: Health | None = None
        alarming: list[str] = []
        for endpoint, h in self.devices.items():
            place = self.directory.get(endpoint)
            if farm_id is not None and place.farm_id != farm_id:
                continue
            if enclosure_id is not None and place.enclosure_id != enclosure_id:
                continue
            counts[str(h.status)] += 1
            if worst is None or _RANK[h.status] > _RANK[worst]:
                worst = h.status
            if h.status.alarming:
                alarming.append(endpoint)
        total = sum(counts.values())
        if not alarming:
            state = "ok"
        elif len(alarming) == total:
            state = "down"
        else:
            state = "degraded"
        return {
            "devices": total,
            "counts": counts,
            "worst": None if worst is None else str(worst),
            "state": state,
            "not_responding": sorted(alarming),
        }

    def rollups(self, level: str) -> dict[int | None, dict[str, Any]]:
        """Rollup of every enclosure (`level="enclosure"`) or farm (`"farm"`)."""
        keys: set[int | None] = set()
        for endpoint in self.devices:
            place = self.directory.get(endpoint)
            keys.add(place.enclosure_id if level == "enclosure" else place.farm_id)
        out: dict[int | None, dict[str, Any]] = {}
        for key in keys:
            if key is None:
                continue
            if level == "enclosure":
                out[key] = self.rollup(enclosure_id=key)
            else:
                out[key] = self.rollup(farm_id=key)
        return out

    def latency_summary(self) -> dict[str, Any]:
        lat = sorted(d.deadline_latency for d in self.detections)
        sil = sorted(d.silence for d in self.detections)
        return {
            "setting": self.config.detection_latency,
            "check_interval": self.config.interval,
            "detections": len(lat),
            "after_deadline": _percentiles(lat),
            "since_last_heard": _percentiles(sil),
        }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(values[-1], 3)}


def _inventory_status(status: Health, previous: Health) -> DeviceStatus | None:
    if status.alarming and not previous.alarming and status == Health.UNRESPONSIVE:
        return DeviceStatus.OFFLINE
    if status == Health.OFFLINE and previous != Health.OFFLINE:
        return DeviceStatus.OFFLINE
    if previous.alarming and status == Health.ONLINE:
        return DeviceStatus.ONLINE
    if previous.alarming and status == Health.SLEEPING:
        return DeviceStatus.SLEEPING
    return None


def _utcnow() -> datetime:
    return datetime.now(UTC)

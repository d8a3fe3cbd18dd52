"""Staged update campaigns: who gets a package, in which order, and when to stop.

A campaign targets devices by farm, enclosure, kind, model, current version, tag
or an explicit list, and can be previewed before it starts. Starting it freezes
the device list into rows: a canary group (batch 0), then batches by count or
percentage. One scheduler task drives every campaign: it starts devices of the
current batch up to the concurrency limit, only inside the farm-local time
windows, only devices that are registered and awake (queue-mode devices are
started when they wake), and moves to the next batch when the current one is
finished. A failed canary pauses the campaign before the first batch; a failure
rate above the threshold pauses it as well; an operator resumes, pauses,
cancels or rolls the campaign back.

Every device's progress is written before the step it describes (in particular
Execute), so after a crash the campaign continues where it was, resumed jobs
look at the device before doing anything, and a finished device is never
flashed again. A device that fails gets its previous version back when
`auto_rollback` is on; a campaign can be rolled back as a whole.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select, update

from shoal.domain.feed import LiveFeed
from shoal.firmware.delivery import Delivery, ResumeHint, Step, UpdateOutcome, Updater
from shoal.firmware.repository import Package, PackageRepository, PackageType
from shoal.firmware.versions import VersionSpec, VersionSpecError, same_version
from shoal.server.server import Lwm2mServer
from shoal.store import Conflict, Database, Device, EventLog, Invalid, Inventory, NotFound
from shoal.store.firmware_schema import FirmwareCampaignDeviceRow, FirmwareCampaignRow
from shoal.store.schema import utcnow

log = logging.getLogger(__name__)


class CampaignState(enum.StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class DeviceState(enum.StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


FINISHED = frozenset(
    {
        DeviceState.SUCCEEDED,
        DeviceState.FAILED,
        DeviceState.SKIPPED,
        DeviceState.CANCELLED,
        DeviceState.ROLLED_BACK,
        DeviceState.ROLLBACK_FAILED,
    }
)
ACTIVE = frozenset({DeviceState.IN_PROGRESS, DeviceState.ROLLING_BACK})
_ENDED = frozenset({CampaignState.COMPLETED, CampaignState.CANCELLED, CampaignState.ROLLED_BACK})
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


# -- settings ---------------------------------------------------------------------------


def _hhmm(text: str) -> time:
    try:
        hours, minutes = text.strip().split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise Invalid(f"time {text!r} must be HH:MM") from None


@dataclass(frozen=True, slots=True)
class Window:
    """A daily span of farm-local time, e.g. 22:00-05:00 (it may cross midnight),
    optionally on some days only (of the span's start)."""

    start: time
    end: time
    days: frozenset[int] | None = None  # 0 = Monday

    @classmethod
    def parse(cls, value: Mapping[str, Any]) -> Window:
        days = value.get("days")
        day_set = None
        if days:
            try:
                day_set = frozenset(
                    _DAYS.index(str(d).strip().lower()[:3]) if not isinstance(d, int) else int(d)
                    for d in days
                )
            except ValueError:
                raise Invalid(f"days must be names like 'mon' or numbers 0-6: {days!r}") from None
            if any(not 0 <= d <= 6 for d in day_set):
                raise Invalid("day numbers are 0 (Monday) to 6")
        return cls(_hhmm(str(value.get("start", ""))), _hhmm(str(value.get("end", ""))), day_set)

    def contains(self, local: datetime) -> bool:
        t = local.time().replace(tzinfo=None)
        weekday = local.weekday()
        if self.start <= self.end:
            inside = self.start <= t < self.end
            day = weekday
        else:  # crosses midnight: after start today, or before end (a span begun yesterday)
            inside = t >= self.start or t < self.end
            day = weekday if t >= self.start else (weekday - 1) % 7
        return inside and (self.days is None or day in self.days)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
        }
        if self.days is not None:
            out["days"] = [_DAYS[d] for d in sorted(self.days)]
        return out


def window_open(
    now: datetime, zone: str, allowed: Sequence[Window], blocked: Sequence[Window]
) -> bool:
    """May an update start now in this farm's time zone?"""
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    local = now.astimezone(tz)
    if allowed and not any(w.contains(local) for w in allowed):
        return False
    return not any(w.contains(local) for w in blocked)


@dataclass(frozen=True, slots=True)
class Targets:
    """Which devices; fields combine with AND, the values of one field with OR."""

    farm_ids: tuple[int, ...] = ()
    enclosure_ids: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    current_version: str | None = None  # a version spec: "1.0.0", "<2.0", ">=1.2,<1.4"
    tags: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Targets:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise Invalid(f"unknown target fields: {', '.join(sorted(unknown))}")
        spec = data.get("current_version")
        if spec:
            try:
                VersionSpec.parse(spec)
            except VersionSpecError as exc:
                raise Invalid(f"current_version: {exc}") from None
        return cls(
            tuple(int(x) for x in data.get("farm_ids") or ()),
            tuple(int(x) for x in data.get("enclosure_ids") or ()),
            tuple(str(x) for x in data.get("kinds") or ()),
            tuple(str(x) for x in data.get("models") or ()),
            str(spec) if spec else None,
            tuple(str(x) for x in data.get("tags") or ()),
            tuple(str(x) for x in data.get("endpoints") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def is_empty(self) -> bool:
        return not any(asdict(self).values())


@dataclass(frozen=True, slots=True)
class Rollout:
    """How a campaign rolls out."""

    canary: int = 1  # devices in the canary group
    canary_percent: float | None = None  # instead of `canary`
    canary_endpoints: tuple[str, ...] = ()  # these go first, in the canary group
    batch_size: int | None = None
    batch_percent: float | None = None  # of the devices after the canary
    max_concurrent: int = 10
    failure_threshold: float = 0.1  # pause when failures / finished passes it
    threshold_min_devices: int = 5  # finished devices before the rate counts mid-batch
    allowed_windows: tuple[Window, ...] = ()
    blocked_windows: tuple[Window, ...] = ()
    delivery: Delivery = Delivery.AUTO
    auto_rollback: bool = True
    soak: float | None = None  # seconds; None: the delivery configuration's

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise Invalid(f"unknown rollout settings: {', '.join(sorted(unknown))}")
        r = cls(
            canary=int(data.get("canary", 1)),
            canary_percent=_opt_float(data.get("canary_percent")),
            canary_endpoints=tuple(str(e) for e in data.get("canary_endpoints") or ()),
            batch_size=_opt_int(data.get("batch_size")),
            batch_percent=_opt_float(data.get("batch_percent")),
            max_concurrent=int(data.get("max_concurrent", 10)),
            failure_threshold=float(data.get("failure_threshold", 0.1)),
            threshold_min_devices=int(data.get("threshold_min_devices", 5)),
            allowed_windows=tuple(Window.parse(w) for w in data.get("allowed_windows") or ()),
            blocked_windows=tuple(Window.parse(w) for w in data.get("blocked_windows") or ()),
            delivery=_delivery(data.get("delivery", "auto")),
            auto_rollback=bool(data.get("auto_rollback", True)),
            soak=_opt_float(data.get("soak")),
        )
        if r.canary < 0 or (r.canary_percent is not None and not 0 <= r.canary_percent <= 100):
            raise Invalid("canary must be >= 0 devices or 0-100 percent")
        if r.batch_size is not None and r.batch_size < 1:
            raise Invalid("batch_size must be >= 1")
        if r.batch_percent is not None and not 0 < r.batch_percent <= 100:
            raise Invalid("batch_percent must be in (0, 100]")
        if r.max_concurrent < 1:
            raise Invalid("max_concurrent must be >= 1")
        if not 0 <= r.failure_threshold <= 1:
            raise Invalid("failure_threshold is a fraction 0..1")
        if r.threshold_min_devices < 1:
            raise Invalid("threshold_min_devices must be >= 1")
        if r.soak is not None and r.soak < 0:
            raise Invalid("soak must be >= 0 seconds")
        return r

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["canary_endpoints"] = list(self.canary_endpoints)
        out["allowed_windows"] = [w.to_dict() for w in self.allowed_windows]
        out["blocked_windows"] = [w.to_dict() for w in self.blocked_windows]
        out["delivery"] = str(self.delivery)
        return out


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _delivery(v: Any) -> Delivery:
    try:
        return Delivery(str(v))
    except ValueError:
        raise Invalid(f"delivery must be one of {', '.join(d.value for d in Delivery)}") from None


# -- records ----------------------------------------------------------------------------


@dataclass(slots=True)
class Campaign:
    id: int
    tenant_id: int | None
    name: str
    package_id: int
    state: CampaignState
    targets: Targets
    rollout: Rollout
    progress: dict[str, Any]
    pause_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class CampaignDevice:
    id: int
    campaign_id: int
    device_id: int
    endpoint: str
    batch: int
    state: DeviceState
    step: str | None
    outcome: str | None
    from_version: str | None
    to_version: str
    delivery: str | None
    result_code: int | None
    reason: str | None
    rollback_note: str | None
    attempts: int
    executed_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


_DEVICE_FIELDS = tuple(f.name for f in fields(CampaignDevice))


def _campaign(row: FirmwareCampaignRow) -> Campaign:
    return Campaign(
        row.id,
        row.tenant_id,
        row.name,
        row.package_id,
        CampaignState(row.state),
        Targets.from_dict(row.targets),
        Rollout.from_dict(row.settings),
        dict(row.progress or {}),
        row.pause_reason,
        row.created_at,
        row.started_at,
        row.finished_at,
        row.updated_at,
    )


def _device(row: FirmwareCampaignDeviceRow) -> CampaignDevice:
    values = {name: getattr(row, name) for name in _DEVICE_FIELDS}
    values["state"] = DeviceState(row.state)
    return CampaignDevice(**values)


@dataclass(frozen=True, slots=True)
class PreviewDevice:
    endpoint: str
    device_id: int
    kind: str
    model: str | None
    current_version: str | None
    farm_id: int | None
    enclosure_id: int | None
    batch: int


@dataclass(frozen=True, slots=True)
class Preview:
    devices: list[PreviewDevice]
    excluded: list[dict[str, Any]]
    batches: list[int]  # devices per batch, batch 0 the canary group


@dataclass(frozen=True, slots=True)
class FirmwareFailure:
    """What the alert service needs about one failed device update."""

    campaign_id: int
    endpoint: str
    device_id: int
    farm_id: int | None
    enclosure_id: int | None
    package: str
    target_version: str
    from_version: str | None
    step: str
    reason: str
    result_code: int | None
    rollback: bool = False  # True: the failure is of the rollback


FailureHook = Callable[[FirmwareFailure], Awaitable[None] | None]


# -- persistence ------------------------------------------------------------------------


class CampaignStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self, tenant_id: int | None, name: str, package_id: int, targets: Targets, rollout: Rollout
    ) -> Campaign:
        now = utcnow()
        row = FirmwareCampaignRow(
            tenant_id=tenant_id,
            name=name,
            package_id=package_id,
            state=str(CampaignState.DRAFT),
            targets=targets.to_dict(),
            settings=rollout.to_dict(),
            progress={},
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as s:
            s.add(row)
            await s.flush()
            return _campaign(row)

    async def get(self, campaign_id: int) -> Campaign:
        async with self.db.session(readonly=True) as s:
            row = await s.get(FirmwareCampaignRow, campaign_id)
            if row is None:
                raise NotFound(f"no campaign {campaign_id}")
            return _campaign(row)

    async def all(self, tenant_id: int | None = None) -> list[Campaign]:
        stmt = select(FirmwareCampaignRow).order_by(FirmwareCampaignRow.id.desc())
        if tenant_id is not None:
            stmt = stmt.where(FirmwareCampaignRow.tenant_id == tenant_id)
        async with self.db.session(readonly=True) as s:
            return [_campaign(r) for r in await s.scalars(stmt)]

    async def ids_in_states(self, states: Iterable[CampaignState]) -> list[int]:
        stmt = select(FirmwareCampaignRow.id).where(
            FirmwareCampaignRow.state.in_([str(s) for s in states])
        )
        async with self.db.session(readonly=True) as s:
            return list(await s.scalars(stmt))

    async def ids_with_active_devices(self) -> list[int]:
        stmt = (
            select(FirmwareCampaignDeviceRow.campaign_id)
            .where(FirmwareCampaignDeviceRow.state.in_([str(s) for s in ACTIVE]))
            .distinct()
        )
        async with self.db.session(readonly=True) as s:
            return list(await s.scalars(stmt))

    async def save(self, campaign: Campaign) -> None:
        campaign.updated_at = utcnow()
        async with self.db.session() as s:
            await s.execute(
                update(FirmwareCampaignRow)
                .where(FirmwareCampaignRow.id == campaign.id)
                .values(
                    state=str(campaign.state),
                    progress=dict(campaign.progress),
                    pause_reason=campaign.pause_reason,
                    started_at=campaign.started_at,
                    finished_at=campaign.finished_at,
                    updated_at=campaign.updated_at,
                )
            )

    async def start(self, campaign: Campaign, rows: list[dict[str, Any]]) -> list[CampaignDevice]:
        """Freeze the device list and mark the campaign running, in one transaction."""
        now = utcnow()
        async with self.db.session() as s:
            current = await s.get(FirmwareCampaignRow, campaign.id)
            if current is None:
                raise NotFound(f"no campaign {campaign.id}")
            if current.state != CampaignState.DRAFT:
                raise Conflict(f"campaign {campaign.id} is {current.state}, not draft")
            objs = [
                FirmwareCampaignDeviceRow(campaign_id=campaign.id, attempts=0, updated_at=now, **r)
                for r in rows
            ]
            s.add_all(objs)
            current.state = str(CampaignState.RUNNING)
            current.started_at = now
            current.updated_at = now
            await s.flush()
            campaign.state = CampaignState.RUNNING
            campaign.started_at = now
            campaign.updated_at = now
            return [_device(o) for o in objs]

    async def counts(self, campaign_ids: list[int]) -> dict[int, dict[str, int]]:
        """`_counts` of many campaigns in one query."""
        if not campaign_ids:
            return {}
        row = FirmwareCampaignDeviceRow
        stmt = (
            select(row.campaign_id, row.state, row.outcome, func.count())
            .where(row.campaign_id.in_(campaign_ids))
            .group_by(row.campaign_id, row.state, row.outcome)
        )
        out: dict[int, dict[str, int]] = {}
        async with self.db.session(readonly=True) as s:
            for cid, state, outcome, n in (await s.execute(stmt)).all():
                c = out.setdefault(cid, _counts(()))
                c[str(state)] = c.get(str(state), 0) + n
                c["total"] += n
                if outcome == "failure":
                    c["failures"] += n
        return out

    async def devices(self, campaign_id: int) -> list[CampaignDevice]:
        stmt = (
            select(FirmwareCampaignDeviceRow)
            .where(FirmwareCampaignDeviceRow.campaign_id == campaign_id)
            .order_by(FirmwareCampaignDeviceRow.batch, FirmwareCampaignDeviceRow.id)
        )
        async with self.db.session(readonly=True) as s:
            return [_device(r) for r in await s.scalars(stmt)]

    async def save_device(self, device: CampaignDevice, **changes: Any) -> None:
        """Apply `changes` to the record and its row (committed before returning)."""
        changes["updated_at"] = utcnow()
        for name, value in changes.items():
            setattr(device, name, value)
        values = {k: (str(v) if isinstance(v, enum.Enum) else v) for k, v in changes.items()}
        async with self.db.session() as s:
            await s.execute(
                update(FirmwareCampaignDeviceRow)
                .where(FirmwareCampaignDeviceRow.id == device.id)
                .values(**values)
            )


# -- the scheduler ----------------------------------------------------------------------


@dataclass(slots=True)
class _Place:
    farm_id: int | None
    enclosure_id: int | None
    time_zone: str
    kind: str
    model: str | None


class _Run:
    """A campaign being driven: its record, its devices, the jobs running for it."""

    def __init__(self, campaign: Campaign, package: Package, devices: list[CampaignDevice]) -> None:
        self.campaign = campaign
        self.package = package
        self.devices = {d.id: d for d in devices}
        self.jobs: dict[int, asyncio.Task[None]] = {}
        self.cancel: set[int] = set()  # device row ids told to stop before Execute
        self.places: dict[int, _Place] = {}
        self.lock = asyncio.Lock()
        self.pins = 0  # operator actions holding on to it


class CampaignManager:
    def __init__(
        self,
        db: Database,
        inventory: Inventory,
        event_log: EventLog,
        feed: LiveFeed,
        repository: PackageRepository,
        updater: Updater,
        server: Lwm2mServer,
        *,
        tick: float = 2.0,
        on_failure: FailureHook | None = None,
    ) -> None:
        self.store = CampaignStore(db)
        self.inventory = inventory
        self.event_log = event_log
        self.feed = feed
        self.repository = repository
        self.updater = updater
        self.server = server
        self.tick = tick
        self.on_failure = on_failure
        self._runs: dict[int, _Run] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._hook_tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Pick up campaigns a stop or crash left running, then drive them."""
        from shoal.server import events as ev

        ids = set(
            await self.store.ids_in_states(
                (CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.ROLLING_BACK)
            )
        )
        ids.update(await self.store.ids_with_active_devices())
        for cid in sorted(ids):
            try:
                await self._load(cid)
            except Exception:
                log.exception("cannot resume campaign %d", cid)
        bus = self.server.bus
        self._unsubscribe = [
            bus.subscribe(ev.Registered, lambda _e: self.wake()),
            bus.subscribe(ev.Updated, lambda _e: self.wake()),
        ]
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe = []
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
            self._loop_task = None
        jobs = [t for run in self._runs.values() for t in run.jobs.values()]
        for t in jobs:
            t.cancel()
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
        for t in list(self._hook_tasks):
            t.cancel()
        self._runs.clear()

    def wake(self) -> None:
        self._wake.set()

    async def _load(self, campaign_id: int) -> _Run:
        run = self._runs.get(campaign_id)
        if run is not None:
            return run
        campaign = await self.store.get(campaign_id)
        package = await self.repository.get(campaign.package_id)
        devices = await self.store.devices(campaign_id)
        run = _Run(campaign, package, devices)
        self._runs[campaign_id] = run
        self.wake()
        return run

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.tick):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            for run in list(self._runs.values()):
                try:
                    async with run.lock:
                        await self._step(run)
                except Exception:
                    log.exception("campaign %d: step failed", run.campaign.id)

    # -- operator actions ------------------------------------------------------------

    async def create(
        self,
        tenant_id: int | None,
        name: str,
        package_id: int,
        targets: Targets | Mapping[str, Any],
        rollout: Rollout | Mapping[str, Any] | None = None,
    ) -> Campaign:
        name = name.strip()
        if not name or len(name) > 200:
            raise Invalid("campaign name must be 1-200 characters")
        t = targets if isinstance(targets, Targets) else Targets.from_dict(targets)
        r = rollout if isinstance(rollout, Rollout) else Rollout.from_dict(rollout or {})
        if t.is_empty():
            raise Invalid("a campaign needs at least one target (farm, kind, endpoints, ...)")
        await self.repository.get(package_id)  # NotFound
        campaign = await self.store.add(tenant_id, name, package_id, t, r)
        self._publish(campaign, "created")
        return campaign

    async def get(self, campaign_id: int) -> Campaign:
        run = self._runs.get(campaign_id)
        if run is not None:
            campaign = run.campaign
            campaign.counts = _counts(run.devices.values())
            return campaign
        campaign = await self.store.get(campaign_id)
        campaign.counts = _counts(await self.store.devices(campaign_id))
        return campaign

    async def list_campaigns(self, tenant_id: int | None = None) -> list[Campaign]:
        campaigns = await self.store.all(tenant_id)
        counts = await self.store.counts([c.id for c in campaigns if c.id not in self._runs])
        out = []
        for c in campaigns:
            if c.id in self._runs:
                out.append(await self.get(c.id))
            else:
                c.counts = counts.get(c.id) or _counts(())
                out.append(c)
        return out

    async def devices(
        self, campaign_id: int, state: DeviceState | None = None
    ) -> list[CampaignDevice]:
        run = self._runs.get(campaign_id)
        if run is None:
            await self.store.get(campaign_id)  # NotFound
            rows = await self.store.devices(campaign_id)
        else:
            rows = list(run.devices.values())
        rows.sort(key=lambda d: (d.batch, d.id))
        return [d for d in rows if state is None or d.state == state]

    async def preview(self, campaign_id: int) -> Preview:
        campaign = await self.store.get(campaign_id)
        package = await self.repository.get(campaign.package_id)
        return await self.preview_for(
            campaign.tenant_id, package, campaign.targets, campaign.rollout
        )

    async def preview_for(
        self, tenant_id: int | None, package: Package, targets: Targets, rollout: Rollout
    ) -> Preview:
        included, excluded = await self._resolve(tenant_id, package, targets)
        batches = _batches(len(included), rollout)
        ordered = _order(included, rollout)
        devices = [
            PreviewDevice(
                d.endpoint,
                d.id,
                str(d.kind),
                d.model,
                d.firmware_version,
                farm_id,
                d.enclosure_id,
                batch,
            )
            for (d, farm_id), batch in zip(ordered, _batch_numbers(batches), strict=True)
        ]
        return Preview(devices, excluded, batches)

    async def start_campaign(self, campaign_id: int) -> Campaign:
        campaign = await self.store.get(campaign_id)
        if campaign.state != CampaignState.DRAFT:
            raise Conflict(f"campaign {campaign_id} is {campaign.state}: only a draft starts")
        package = await self.repository.get(campaign.package_id)
        preview = await self.preview_for(
            campaign.tenant_id, package, campaign.targets, campaign.rollout
        )
        if not preview.devices:
            raise Invalid(
                "no device to update: "
                + (
                    "; ".join(f"{e['endpoint']}: {e['reason']}" for e in preview.excluded[:5])
                    or "nothing matches the targets"
                )
            )
        rows = [
            {
                "device_id": d.device_id,
                "endpoint": d.endpoint,
                "batch": d.batch,
                "state": str(DeviceState.PENDING),
                "to_version": package.version,
                "from_version": d.current_version
                if package.package_type == PackageType.FIRMWARE
                else None,
            }
            for d in preview.devices
        ]
        devices = await self.store.start(campaign, rows)
        run = _Run(campaign, package, devices)
        for d in preview.devices:
            place = _Place(d.farm_id, d.enclosure_id, "UTC", d.kind, d.model)
            run.places[d.device_id] = place
        await self._fill_zones(run)
        self._runs[campaign_id] = run
        self._publish(campaign, "started", devices=len(devices), batches=preview.batches)
        self.wake()
        return await self.get(campaign_id)

    async def pause(self, campaign_id: int, reason: str | None = None) -> Campaign:
        async with self._locked(campaign_id) as run:
            c = run.campaign
            if c.state != CampaignState.RUNNING:
                raise Conflict(f"campaign {campaign_id} is {c.state}: only a running one pauses")
            await self._pause(run, reason or "paused by an operator")
        return await self.get(campaign_id)

    async def resume(self, campaign_id: int) -> Campaign:
        async with self._locked(campaign_id) as run:
            c = run.campaign
            if c.state != CampaignState.PAUSED:
                raise Conflict(f"campaign {campaign_id} is {c.state}: only a paused one resumes")
            failed, finished = _failure_counts(d for d in run.devices.values() if d.batch > 0)
            c.progress["baseline"] = [failed, finished]
            c.progress["canary_checked"] = True  # an operator looked at the canary
            c.state = CampaignState.RUNNING
            c.pause_reason = None
            await self.store.save(c)
        self._publish(c, "resumed")
        self.wake()
        return await self.get(campaign_id)

    async def cancel(self, campaign_id: int) -> Campaign:
        """Stop: pending devices are not started, running ones stop before Execute
        (an update already executing is seen through)."""
        async with self._locked(campaign_id, allow_draft=True) as run:
            c = run.campaign
            if c.state not in (CampaignState.DRAFT, CampaignState.RUNNING, CampaignState.PAUSED):
                raise Conflict(f"campaign {campaign_id} is {c.state}: it cannot be cancelled")
            await self._cancel_pending(run)
            c.state = CampaignState.CANCELLED
            c.finished_at = utcnow()
            await self.store.save(c)
        self._publish(c, "cancelled")
        self.wake()
        return await self.get(campaign_id)

    async def rollback(self, campaign_id: int) -> Campaign:
        """Give every device the campaign updated its previous version back."""
        async with self._locked(campaign_id) as run:
            c = run.campaign
            if c.state in (
                CampaignState.DRAFT,
                CampaignState.ROLLING_BACK,
                CampaignState.ROLLED_BACK,
            ):
                raise Conflict(f"campaign {campaign_id} is {c.state}: nothing to roll back")
            await self._cancel_pending(run)
            c.state = CampaignState.ROLLING_BACK
            c.pause_reason = None
            await self.store.save(c)
        self._publish(c, "rolling_back")
        self.wake()
        return await self.get(campaign_id)

    async def rollback_device(self, campaign_id: int, endpoint: str) -> CampaignDevice:
        async with self._locked(campaign_id) as run:
            d = next((d for d in run.devices.values() if d.endpoint == endpoint), None)
            if d is None:
                raise NotFound(f"{endpoint} is not in campaign {campaign_id}")
            if d.state not in (
                DeviceState.SUCCEEDED,
                DeviceState.FAILED,
                DeviceState.ROLLBACK_FAILED,
            ):
                raise Conflict(f"{endpoint} is {d.state}: nothing to roll back")
            if d.id in run.jobs:
                raise Conflict(f"{endpoint} has a job running")
            await self.store.save_device(
                d, state=DeviceState.ROLLING_BACK, step=str(Step.ROLLING_BACK)
            )
            self._spawn(run, d)
        return d

    @asynccontextmanager
    async def _locked(self, campaign_id: int, allow_draft: bool = False) -> AsyncIterator[_Run]:
        """The campaign's run, locked against the scheduler and pinned so the
        scheduler does not drop it (it drops runs it is done with) meanwhile."""
        while True:
            run = self._runs.get(campaign_id)
            if run is None:
                campaign = await self.store.get(campaign_id)
                if campaign.state == CampaignState.DRAFT and not allow_draft:
                    raise Conflict(f"campaign {campaign_id} has not started")
                run = await self._load(campaign_id)
            run.pins += 1
            try:
                if not run.places:
                    await self._fill_places(run)
                async with run.lock:
                    if self._runs.get(campaign_id) is run:
                        yield run
                        return
            finally:
                run.pins -= 1

    async def _cancel_pending(self, run: _Run) -> None:
        for d in list(run.devices.values()):
            if d.state == DeviceState.PENDING:
                await self.store.save_device(
                    d, state=DeviceState.CANCELLED, reason="campaign stopped before this device"
                )
            elif d.state == DeviceState.IN_PROGRESS:
                run.cancel.add(d.id)

    async def _pause(self, run: _Run, reason: str) -> None:
        c = run.campaign
        c.state = CampaignState.PAUSED
        c.pause_reason = reason
        await self.store.save(c)
        log.warning("campaign %d paused: %s", c.id, reason)
        self._publish(c, "paused", reason=reason)

    # -- the step ------------------------------------------------------------------------

    async def _step(self, run: _Run) -> None:
        c = run.campaign
        if not run.places:
            await self._fill_places(run)
        for d in run.devices.values():
            if d.state in ACTIVE and d.id not in run.jobs:
                self._spawn(run, d, resume=True)  # left over by a restart
        if c.state == CampaignState.ROLLING_BACK:
            await self._step_rollback(run)
            return
        if c.state != CampaignState.RUNNING:
            idle = not run.jobs and not run.pins
            if idle and c.state in _ENDED:
                self._runs.pop(c.id, None)
            return
        open_batches = sorted({d.batch for d in run.devices.values() if d.state not in FINISHED})
        if not open_batches:
            c.state = CampaignState.COMPLETED
            c.finished_at = utcnow()
            await self.store.save(c)
            counts = _counts(run.devices.values())
            self._publish(c, "completed", counts=counts)
            if not run.jobs and not run.pins:
                self._runs.pop(c.id, None)
            return
        current = open_batches[0]
        has_canary = any(d.batch == 0 for d in run.devices.values())
        if has_canary and current > 0 and not c.progress.get("canary_checked"):
            canary = [d for d in run.devices.values() if d.batch == 0]
            failed = [d for d in canary if d.outcome == "failure"]
            if failed:
                names = ", ".join(d.endpoint for d in failed[:5])
                await self._pause(
                    run,
                    f"canary failed: {len(failed)} of {len(canary)} canary device(s) ({names}); "
                    "the first batch was not started",
                )
                return
            c.progress["canary_checked"] = True
            await self.store.save(c)
        if current > 0 and await self._over_threshold(run, current):
            return
        free = c.rollout.max_concurrent - len(run.jobs)
        if free <= 0:
            return
        now = utcnow()
        for d in sorted(run.devices.values(), key=lambda d: d.id):
            if free <= 0:
                break
            if d.batch != current or d.state != DeviceState.PENDING:
                continue
            if not self._eligible(run, d, now):
                continue
            await self.store.save_device(
                d, state=DeviceState.IN_PROGRESS, step=str(Step.WAITING), started_at=now
            )
            self._spawn(run, d)
            free -= 1

    async def _over_threshold(self, run: _Run, current: int) -> bool:
        """Pause when the failure rate of the batches (since the last resume) passes the
        threshold: mid-batch once enough devices finished, always once a batch is done."""
        c = run.campaign
        failed, finished = _failure_counts(d for d in run.devices.values() if d.batch > 0)
        base = c.progress.get("baseline")
        if base:
            failed -= int(base[0])
            finished -= int(base[1])
        if failed <= 0 or finished <= 0:
            return False
        if finished < c.rollout.threshold_min_devices and current <= 1:
            return False
        rate = failed / finished
        if rate > c.rollout.failure_threshold:
            await self._pause(
                run,
                f"failure rate {rate:.0%} ({failed} of {finished}) passed the threshold "
                f"{c.rollout.failure_threshold:.0%}",
            )
            return True
        return False

    def _eligible(self, run: _Run, d: CampaignDevice, now: datetime) -> bool:
        reg = self.server.store.by_endpoint(d.endpoint)
        if reg is None or self.server.is_sleeping(reg):
            return False  # started when it registers or wakes
        if self.updater.watching(d.endpoint):
            return False  # another campaign's job has it
        rollout = run.campaign.rollout
        if rollout.allowed_windows or rollout.blocked_windows:
            place = run.places.get(d.device_id)
            zone = place.time_zone if place is not None else "UTC"
            if not window_open(now, zone, rollout.allowed_windows, rollout.blocked_windows):
                return False
        return True

    async def _step_rollback(self, run: _Run) -> None:
        c = run.campaign
        todo = [
            d
            for d in sorted(run.devices.values(), key=lambda d: d.id)
            if d.id not in run.jobs
            and (
                d.state == DeviceState.SUCCEEDED
                or (d.state == DeviceState.FAILED and d.from_version is not None)
            )
        ]
        free = c.rollout.max_concurrent - len(run.jobs)
        for d in todo:
            if free <= 0:
                break
            reg = self.server.store.by_endpoint(d.endpoint)
            if reg is None or self.server.is_sleeping(reg):
                continue
            await self.store.save_device(
                d, state=DeviceState.ROLLING_BACK, step=str(Step.ROLLING_BACK)
            )
            self._spawn(run, d)
            free -= 1
        if not run.jobs and not todo:
            c.state = CampaignState.ROLLED_BACK
            c.finished_at = utcnow()
            await self.store.save(c)
            self._publish(c, "rolled_back", counts=_counts(run.devices.values()))
            if not run.pins:
                self._runs.pop(c.id, None)

    # -- device jobs ---------------------------------------------------------------------

    def _spawn(self, run: _Run, d: CampaignDevice, resume: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self._job(run, d, resume))
        run.jobs[d.id] = task

        def done(t: asyncio.Task[None]) -> None:
            if run.jobs.get(d.id) is t:
                del run.jobs[d.id]
            run.cancel.discard(d.id)
            if not t.cancelled() and t.exception() is not None:
                log.error(
                    "campaign %d: job for %s failed",
                    run.campaign.id,
                    d.endpoint,
                    exc_info=t.exception(),
                )
            self.wake()

        task.add_done_callback(done)

    async def _job(self, run: _Run, d: CampaignDevice, resume: bool) -> None:
        if d.state == DeviceState.ROLLING_BACK:
            await self._rollback_job(run, d)
            return
        c = run.campaign
        package = run.package
        place = run.places.get(d.device_id)
        if not resume:
            self._feed(run, d, "firmware_started", version=package.version)
            await self._record(d, "firmware_started", {"campaign_id": c.id, "to": package.version})
        hint = ResumeHint(d.from_version, d.executed_at is not None, d.attempts) if resume else None

        async def progress(step: Step, **info: Any) -> None:
            changes: dict[str, Any] = {"step": str(step)}
            if "delivery" in info:
                changes["delivery"] = info["delivery"]
            if "attempts" in info:
                changes["attempts"] = info["attempts"]
            if info.get("from_version") and d.executed_at is None:
                changes["from_version"] = info["from_version"]
            if info.get("executed"):
                changes["executed_at"] = utcnow()
            if any(getattr(d, k) != v for k, v in changes.items()):
                await self.store.save_device(d, **changes)
                self._feed(run, d, "firmware_progress", step=str(step))

        outcome = await self.updater.update(
            d.endpoint,
            package,
            delivery=c.rollout.delivery,
            resume=hint,
            progress=progress,
            cancelled=lambda: d.id in run.cancel or c.state == CampaignState.CANCELLED,
            soak=c.rollout.soak,
        )
        if outcome.skipped:
            await self.store.save_device(
                d,
                state=DeviceState.SKIPPED,
                step=str(Step.DONE),
                reason=outcome.reason,
                finished_at=utcnow(),
            )
            return
        if outcome.cancelled:
            await self.store.save_device(
                d, state=DeviceState.CANCELLED, reason=outcome.reason, finished_at=utcnow()
            )
            return
        from_version = d.from_version or outcome.from_version
        if outcome.ok:
            await self.store.save_device(
                d,
                state=DeviceState.SUCCEEDED,
                outcome="success",
                step=str(Step.DONE),
                from_version=from_version,
                delivery=outcome.delivery or d.delivery,
                finished_at=utcnow(),
                reason=None,
            )
            self._feed(run, d, "firmware_succeeded", version=package.version)
            await self._record(
                d,
                "firmware_succeeded",
                {
                    "campaign_id": c.id,
                    "from": from_version,
                    "to": package.version,
                    "delivery": d.delivery,
                },
            )
            return
        reason = outcome.reason or "failed"
        roll_back = c.rollout.auto_rollback and from_version is not None
        await self.store.save_device(
            d,
            # one write: the campaign must never look finished between the two
            state=DeviceState.ROLLING_BACK if roll_back else DeviceState.FAILED,
            outcome="failure",
            step=str(outcome.step),
            from_version=from_version,
            result_code=outcome.result_code,
            reason=reason,
            delivery=outcome.delivery or d.delivery,
            finished_at=utcnow(),
        )
        await self._failed(run, d, place, outcome.step, reason, outcome.result_code)
        if roll_back:
            await self._rollback_job(run, d)

    async def _rollback_job(self, run: _Run, d: CampaignDevice) -> None:
        package = run.package
        place = run.places.get(d.device_id)
        from_version = d.from_version
        if from_version is None:
            await self.store.save_device(
                d,
                state=DeviceState.ROLLBACK_FAILED,
                rollback_note="the version before the update is not known",
                finished_at=utcnow(),
            )
            return
        previous = await self.repository.find_version(
            package.package_type,
            from_version,
            name=package.name,
            kind=place.kind if place else None,
            model=place.model if place else None,
            tenant_id=run.campaign.tenant_id,
        )

        async def progress(step: Step, **info: Any) -> None:
            self._feed(run, d, "firmware_progress", step=f"rollback:{step}")

        outcome: UpdateOutcome = await self.updater.rollback(
            d.endpoint, from_version, package.package_type, previous, progress=progress
        )
        if outcome.ok:
            note = (
                outcome.reason
                if outcome.reason and "runs" in outcome.reason
                else (f"rolled back to {from_version}")
            )
            await self.store.save_device(
                d, state=DeviceState.ROLLED_BACK, rollback_note=note, finished_at=utcnow()
            )
            self._feed(run, d, "firmware_rolled_back", version=from_version, note=note)
            await self._record(
                d,
                "firmware_rolled_back",
                {"campaign_id": run.campaign.id, "to": from_version, "note": note},
            )
            return
        note = f"rollback to {from_version} failed: {outcome.reason}"
        await self.store.save_device(
            d, state=DeviceState.ROLLBACK_FAILED, rollback_note=note, finished_at=utcnow()
        )
        await self._failed(run, d, place, outcome.step, note, outcome.result_code, rollback=True)

    async def _failed(
        self,
        run: _Run,
        d: CampaignDevice,
        place: _Place | None,
        step: Step | str,
        reason: str,
        result_code: int | None,
        rollback: bool = False,
    ) -> None:
        """One failure: the live feed, the device's history and the alert hook."""
        package = run.package
        failure = FirmwareFailure(
            run.campaign.id,
            d.endpoint,
            d.device_id,
            place.farm_id if place else None,
            place.enclosure_id if place else None,
            package.name,
            package.version,
            d.from_version,
            str(step),
            reason,
            result_code,
            rollback,
        )
        log.warning("campaign %d: %s failed at %s: %s", run.campaign.id, d.endpoint, step, reason)
        self._feed(
            run,
            d,
            "firmware_failed",
            step=str(step),
            reason=reason,
            result_code=result_code,
            version=package.version,
            rollback=rollback,
        )
        await self._record(
            d,
            "firmware_failed",
            {
                "campaign_id": run.campaign.id,
                "package": package.name,
                "to": package.version,
                "from": d.from_version,
                "step": str(step),
                "reason": reason,
                "result_code": result_code,
                "rollback": rollback,
            },
        )
        hook = self.on_failure
        if hook is not None:
            try:
                result = hook(failure)
                if result is not None:
                    await result
            except Exception:
                log.exception("firmware failure hook failed")

    async def _record(self, d: CampaignDevice, kind: str, detail: Mapping[str, Any]) -> None:
        try:
            await self.event_log.record(d.device_id, kind, detail)
        except Exception:  # the device may have been deleted meanwhile
            log.warning("cannot record %s for %s", kind, d.endpoint, exc_info=True)

    # -- places, targets -------------------------------------------------------------

    async def _fill_places(self, run: _Run) -> None:
        for d in run.devices.values():
            if d.device_id in run.places:
                continue
            try:
                dev = await self.inventory.get_device_by_id(d.device_id)
            except NotFound:
                run.places[d.device_id] = _Place(None, None, "UTC", "unknown", None)
                continue
            run.places[d.device_id] = _Place(
                None, dev.enclosure_id, "UTC", str(dev.kind), dev.model
            )
        await self._fill_zones(run)

    async def _fill_zones(self, run: _Run) -> None:
        enclosures = {
            e.id: e.farm_id
            for e in await self.inventory.list_enclosures(tenant_id=run.campaign.tenant_id)
        }
        farms = {
            f.id: f.time_zone
            for f in await self.inventory.list_farms(tenant_id=run.campaign.tenant_id)
        }
        for place in run.places.values():
            if place.enclosure_id is not None:
                place.farm_id = enclosures.get(place.enclosure_id, place.farm_id)
            if place.farm_id is not None:
                place.time_zone = farms.get(place.farm_id, "UTC")

    async def _all_devices(self, tenant_id: int | None) -> list[Device]:
        """The tenant's devices, and the ones no tenant claimed yet (not in an
        enclosure): an operator may well update those too."""
        out: dict[int, Device] = {}
        for query in ({"tenant_id": tenant_id}, {"unassigned": True}):
            offset = 0
            while True:
                page = await self.inventory.list_devices(limit=1000, offset=offset, **query)
                for dev in page.items:
                    if dev.tenant_id in (None, tenant_id) or tenant_id is None:
                        out[dev.id] = dev
                offset += len(page.items)
                if not page.items or offset >= page.total:
                    break
        return sorted(out.values(), key=lambda d: d.endpoint)

    async def _resolve(
        self, tenant_id: int | None, package: Package, t: Targets
    ) -> tuple[list[tuple[Device, int | None]], list[dict[str, Any]]]:
        enclosure_farm = {
            e.id: e.farm_id for e in await self.inventory.list_enclosures(tenant_id=tenant_id)
        }
        spec = VersionSpec.parse(t.current_version)
        wanted = set(t.endpoints)
        tags = {x.strip().lower() for x in t.tags if x.strip()}
        included: list[tuple[Device, int | None]] = []
        excluded: list[dict[str, Any]] = []
        seen: set[str] = set()
        for dev in await self._all_devices(tenant_id):
            farm_id = enclosure_farm.get(dev.enclosure_id) if dev.enclosure_id else None
            if wanted and dev.endpoint not in wanted:
                continue
            seen.add(dev.endpoint)
            if t.farm_ids and farm_id not in t.farm_ids:
                continue
            if t.enclosure_ids and dev.enclosure_id not in t.enclosure_ids:
                continue
            if t.kinds and str(dev.kind) not in t.kinds:
                continue
            if t.models and (dev.model or "") not in t.models:
                continue
            if tags and not tags & _device_tags(dev):
                continue
            if spec and not spec.matches(dev.firmware_version):
                continue
            why = package.fits(str(dev.kind), dev.model)
            if why is None and package.package_type == PackageType.FIRMWARE:
                if same_version(dev.firmware_version, package.version):
                    why = f"already runs {package.version}"
                elif not package.applies_over(dev.firmware_version):
                    why = (
                        f"runs {dev.firmware_version or 'an unknown version'}; the package "
                        f"applies over {package.applies_to}"
                    )
            if why is not None:
                excluded.append({"endpoint": dev.endpoint, "reason": why})
                continue
            included.append((dev, farm_id))
        for name in sorted(wanted - seen):
            excluded.append({"endpoint": name, "reason": "no such device in this tenant"})
        return included, excluded

    # -- publishing ------------------------------------------------------------------

    def _publish(self, c: Campaign, event: str, **extra: Any) -> None:
        self.feed.publish(
            "campaign",
            campaign_id=c.id,
            event=event,
            state=str(c.state),
            name=c.name,
            **extra,
        )

    def _feed(self, run: _Run, d: CampaignDevice, kind: str, **extra: Any) -> None:
        place = run.places.get(d.device_id)
        self.feed.publish(
            kind,
            campaign_id=run.campaign.id,
            endpoint=d.endpoint,
            farm_id=place.farm_id if place else None,
            enclosure_id=place.enclosure_id if place else None,
            state=str(d.state),
            **extra,
        )


def _device_tags(dev: Device) -> set[str]:
    extra = dev.extra or {}
    out: set[str] = set()
    for key in ("tag", "tags"):
        value = extra.get(key)
        if isinstance(value, str):
            out.update(t.strip().lower() for t in value.split(",") if t.strip())
        elif isinstance(value, list):
            out.update(str(t).strip().lower() for t in value)
    return out


def _counts(devices: Iterable[CampaignDevice]) -> dict[str, int]:
    counts = {str(s): 0 for s in DeviceState}
    total = 0
    for d in devices:
        counts[str(d.state)] += 1
        total += 1
        if d.outcome == "failure":
            counts["failures"] = counts.get("failures", 0) + 1
    counts.setdefault("failures", 0)
    counts["total"] = total
    return counts


def _failure_counts(devices: Iterable[CampaignDevice]) -> tuple[int, int]:
    failed = finished = 0
    for d in devices:
        if d.outcome in ("success", "failure"):
            finished += 1
            failed += d.outcome == "failure"
    return failed, finished


def _batches(n: int, rollout: Rollout) -> list[int]:
    """Devices per batch: [canary, batch 1, batch 2, ...]."""
    if n == 0:
        return []
    if rollout.canary_percent is not None:
        canary = math.ceil(n * rollout.canary_percent / 100)
    else:
        canary = rollout.canary
    canary = max(canary, min(n, len(rollout.canary_endpoints)))
    canary = min(canary, n)
    rest = n - canary
    if rollout.batch_size is not None:
        size = rollout.batch_size
    elif rollout.batch_percent is not None:
        size = max(1, math.ceil(rest * rollout.batch_percent / 100))
    else:
        size = max(1, rest)  # no batching asked: everything after the canary at once
    sizes = [canary]
    while rest > 0:
        sizes.append(min(size, rest))
        rest -= sizes[-1]
    return sizes


def _batch_numbers(sizes: list[int]) -> list[int]:
    out: list[int] = []
    for number, size in enumerate(sizes):
        out.extend([number] * size)
    return out


def _order(
    included: list[tuple[Device, int | None]], rollout: Rollout
) -> list[tuple[Device, int | None]]:
    """Canary endpoints first, then spread over farms (one of each farm in turn), so
    the canary and early batches see every farm."""
    first = {e: i for i, e in enumerate(rollout.canary_endpoints)}
    chosen = sorted(
        (x for x in included if x[0].endpoint in first), key=lambda x: first[x[0].endpoint]
    )
    rest = sorted((x for x in included if x[0].endpoint not in first), key=lambda x: x[0].endpoint)
    by_farm: dict[int | None, list[tuple[Device, int | None]]] = {}
    for x in rest:
        by_farm.setdefault(x[1], []).append(x)
    queues = [by_farm[k] for k in sorted(by_farm, key=lambda k: (k is None, k or 0))]
    spread: list[tuple[Device, int | None]] = []
    while any(queues):
        for q in queues:
            if q:
                spread.append(q.pop(0))
    return chosen + spread

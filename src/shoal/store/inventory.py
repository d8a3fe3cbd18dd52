"""Tenants, farms, enclosures and devices: the repository the domain and API use.

Every method is one transaction unless the `Inventory` came from
`transaction()`, in which case all its calls share one and commit together.
Results are frozen dataclasses, never ORM rows, so nothing lazy-loads after
the session is gone. Failures are `NotFound`, `Conflict` or `Invalid`.
"""

from __future__ import annotations

import enum
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from functools import lru_cache
from typing import Any, Generic, TypeVar
from zoneinfo import available_timezones

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from shoal.store.db import Database
from shoal.store.errors import Conflict, Invalid, NotFound
from shoal.store.events import DeviceEventKind, add_event
from shoal.store.schema import (
    CorrelationSource,
    DeviceKind,
    DeviceRow,
    DeviceStatus,
    EnclosureKind,
    EnclosureRow,
    FarmRow,
    ObservationRow,
    TenantRow,
    utcnow,
)

T = TypeVar("T")

# Enclosure codes: typed by people on phones and into device configs, so no
# characters that look alike (0/O, 1/I/L). 31**4 = 923,521 codes.
ENCLOSURE_CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
ENCLOSURE_CODE_PREFIX = "ENC-"
_CODE = re.compile(rf"{ENCLOSURE_CODE_PREFIX}[{ENCLOSURE_CODE_ALPHABET}]{{4}}")
_CODE_ATTEMPTS = 64
_NAME_MAX = 200
_MOVED_TENANT = "provisioned into another tenant"


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET
"""Default of update arguments: "leave as is" (None means "clear")."""


def new_enclosure_code() -> str:
    return ENCLOSURE_CODE_PREFIX + "".join(
        secrets.choice(ENCLOSURE_CODE_ALPHABET) for _ in range(4)
    )


def normalize_enclosure_code(text: str) -> str:
    """`" enc-7k3m "` and `"7K3M"` become `"ENC-7K3M"`; anything else is Invalid."""
    code = text.strip().upper()
    if len(code) == 4:
        code = ENCLOSURE_CODE_PREFIX + code
    if not _CODE.fullmatch(code):
        raise Invalid(
            f"enclosure code {text!r} must look like ENC-7K3M: 'ENC-' and 4 of "
            f"{ENCLOSURE_CODE_ALPHABET}"
        )
    return code


@lru_cache(maxsize=1)
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _check_time_zone(name: str) -> str:
    if name not in _time_zones():
        raise Invalid(f"unknown time zone {name!r}: use an IANA name such as 'Europe/Oslo'")
    return name


def _check_name(name: str, what: str) -> str:
    name = name.strip()
    if not name or len(name) > _NAME_MAX:
        raise Invalid(f"{what} name must be 1-{_NAME_MAX} characters")
    return name


def _check_coordinate(value: float | None, limit: float, what: str) -> float | None:
    if value is not None and not (math.isfinite(value) and -limit <= value <= limit):
        raise Invalid(f"{what} must be within ±{limit}")
    return value


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= 1000:
        raise Invalid("limit must be 1..1000")
    if offset < 0:
        raise Invalid("offset must be >= 0")


# -- records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Farm:
    id: int
    tenant_id: int
    name: str
    location: str
    latitude: float | None
    longitude: float | None
    time_zone: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Enclosure:
    id: int
    farm_id: int
    tenant_id: int
    name: str
    kind: EnclosureKind
    species: str
    code: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Device:
    id: int
    endpoint: str
    tenant_id: int | None
    enclosure_id: int | None
    kind: DeviceKind
    manufacturer: str | None
    model: str | None
    serial: str | None
    firmware_version: str | None
    first_seen: datetime
    last_seen: datetime
    status: DeviceStatus
    correlation_source: CorrelationSource | None
    unassigned_reason: str | None
    last_address: str | None
    registration_id: str | None
    lifetime: int | None
    lwm2m_version: str | None
    binding: str | None
    queue_mode: bool
    object_links: str | None
    extra: Mapping[str, Any] | None


_DEVICE_FIELDS = tuple(f.name for f in fields(Device))


@dataclass(frozen=True, slots=True)
class DeviceRegistration:
    """What a Register (or Update) tells the server, as the store keeps it.

    `address` is the transport address as text (`"203.0.113.5:56830"`);
    `object_links` the raw CoRE link payload, parsed again after a restart.
    """

    endpoint: str
    registration_id: str
    address: str
    lifetime: int
    lwm2m_version: str
    binding: str
    queue_mode: bool
    object_links: str
    tenant_id: int | None = None
    kind: DeviceKind = DeviceKind.UNKNOWN
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    """An observation to re-establish after a restart: the path, the content
    format asked for, and the notification attributes (pmin, pmax, ...)."""

    path: str
    content_format: int | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KnownRegistration:
    """A device that was registered when the server stopped."""

    device_id: int
    endpoint: str
    registration_id: str
    address: str | None
    lifetime: int | None
    lwm2m_version: str | None
    binding: str | None
    queue_mode: bool
    object_links: str | None
    last_seen: datetime
    status: DeviceStatus
    observations: tuple[ObservationRecord, ...]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


def _tenant(row: TenantRow) -> Tenant:
    return Tenant(row.id, row.name, row.created_at)


def _farm(row: FarmRow) -> Farm:
    return Farm(
        row.id,
        row.tenant_id,
        row.name,
        row.location,
        row.latitude,
        row.longitude,
        row.time_zone,
        row.created_at,
    )


def _enclosure(row: EnclosureRow, tenant_id: int) -> Enclosure:
    return Enclosure(
        row.id,
        row.farm_id,
        tenant_id,
        row.name,
        row.kind,
        row.species,
        row.enclosure_code,
        row.created_at,
    )


def _device(row: DeviceRow) -> Device:
    return Device(**{name: getattr(row, name) for name in _DEVICE_FIELDS})


def _observation(row: ObservationRow) -> ObservationRecord:
    return ObservationRecord(row.path, row.content_format, dict(row.attributes or {}))


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


@asynccontextmanager
async def _savepoint(session: AsyncSession, conflict: str) -> AsyncIterator[None]:
    """Make the block's changes inside a savepoint and flush them: a constraint
    violation becomes a Conflict and the caller's transaction stays usable.
    (Changes must be made inside the block: opening a savepoint flushes.)"""
    try:
        async with session.begin_nested():
            yield
    except IntegrityError as exc:
        raise Conflict(conflict) from exc


_ENCLOSURE_SELECT = select(EnclosureRow, FarmRow.tenant_id).join(
    FarmRow, FarmRow.id == EnclosureRow.farm_id
)


class Inventory:
    """Repository of the fish-farm inventory."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        _session: AsyncSession | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._session = _session

    def _now(self, at: datetime | None) -> datetime:
        if at is None:
            return self._clock()
        if at.tzinfo is None or at.utcoffset() is None:
            raise Invalid(f"naive datetime {at!r}: pass an aware (UTC) datetime")
        return at

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Inventory]:
        """An Inventory whose calls share one transaction: all or nothing."""
        if self._session is not None:
            yield self
            return
        async with self._db.session() as session:
            yield Inventory(self._db, clock=self._clock, _session=session)

    @asynccontextmanager
    async def _tx(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        if self._session is not None:
            yield self._session
        else:
            async with self._db.session(readonly=readonly) as session:
                yield session

    # -- tenants ----------------------------------------------------------------

    async def create_tenant(self, name: str) -> Tenant:
        name = _check_name(name, "tenant")
        async with self._tx() as s:
            row = TenantRow(name=name, created_at=self._clock())
            async with _savepoint(s, f"a tenant named {name!r} exists"):
                s.add(row)
            return _tenant(row)

    async def ensure_tenant(self, name: str) -> Tenant:
        """The tenant of that name, created if missing (single-node default tenant)."""
        name = _check_name(name, "tenant")
        async with self._tx() as s:
            row = await s.scalar(select(TenantRow).where(TenantRow.name == name))
            if row is None:
                row = TenantRow(name=name, created_at=self._clock())
                async with _savepoint(s, f"a tenant named {name!r} exists"):
                    s.add(row)
            return _tenant(row)

    async def get_tenant(self, tenant_id: int) -> Tenant:
        async with self._tx(readonly=True) as s:
            row = await s.get(TenantRow, tenant_id)
            if row is None:
                raise NotFound(f"no tenant {tenant_id}")
            return _tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        async with self._tx(readonly=True) as s:
            rows = await s.scalars(select(TenantRow).order_by(TenantRow.name))
            return [_tenant(r) for r in rows]

    # -- farms ------------------------------------------------------------------

    async def create_farm(
        self,
        tenant_id: int,
        name: str,
        *,
        location: str = "",
        latitude: float | None = None,
        longitude: float | None = None,
        time_zone: str = "UTC",
    ) -> Farm:
        name = _check_name(name, "farm")
        row = FarmRow(
            tenant_id=tenant_id,
            name=name,
            location=location.strip(),
            latitude=_check_coordinate(latitude, 90, "latitude"),
            longitude=_check_coordinate(longitude, 180, "longitude"),
            time_zone=_check_time_zone(time_zone),
            created_at=self._clock(),
        )
        async with self._tx() as s:
            if await s.get(TenantRow, tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id}")
            async with _savepoint(s, f"the tenant already has a farm named {name!r}"):
                s.add(row)
            return _farm(row)

    async def get_farm(self, farm_id: int) -> Farm:
        async with self._tx(readonly=True) as s:
            return _farm(await self._farm_row(s, farm_id))

    async def list_farms(self, *, tenant_id: int | None = None) -> list[Farm]:
        stmt = select(FarmRow).order_by(FarmRow.name, FarmRow.id)
        if tenant_id is not None:
            stmt = stmt.where(FarmRow.tenant_id == tenant_id)
        async with self._tx(readonly=True) as s:
            return [_farm(r) for r in await s.scalars(stmt)]

    async def update_farm(
        self,
        farm_id: int,
        *,
        name: str | _Unset = UNSET,
        location: str | _Unset = UNSET,
        latitude: float | _Unset | None = UNSET,
        longitude: float | _Unset | None = UNSET,
        time_zone: str | _Unset = UNSET,
    ) -> Farm:
        async with self._tx() as s:
            row = await self._farm_row(s, farm_id)
            async with _savepoint(s, f"the tenant already has a farm named {name!r}"):
                if name is not UNSET:
                    row.name = _check_name(name, "farm")
                if location is not UNSET:
                    row.location = location.strip()
                if latitude is not UNSET:
                    row.latitude = _check_coordinate(latitude, 90, "latitude")
                if longitude is not UNSET:
                    row.longitude = _check_coordinate(longitude, 180, "longitude")
                if time_zone is not UNSET:
                    row.time_zone = _check_time_zone(time_zone)
            return _farm(row)

    async def delete_farm(self, farm_id: int) -> None:
        """Only an empty farm can go: enclosures first, so no device is orphaned."""
        async with self._tx() as s:
            row = await self._farm_row(s, farm_id)
            n = await s.scalar(
                select(func.count())
                .select_from(EnclosureRow)
                .where(EnclosureRow.farm_id == farm_id)
            )
            if n:
                raise Conflict(f"farm {row.name!r} still has {n} enclosure(s)")
            async with _savepoint(s, f"farm {row.name!r} is still referenced"):
                await s.delete(row)

    async def _farm_row(self, s: AsyncSession, farm_id: int) -> FarmRow:
        row = await s.get(FarmRow, farm_id)
        if row is None:
            raise NotFound(f"no farm {farm_id}")
        return row

    # -- enclosures ---------------------------------------------------------------

    async def create_enclosure(
        self,
        farm_id: int,
        name: str,
        *,
        kind: EnclosureKind = EnclosureKind.CAGE,
        species: str = "",
        code: str | None = None,
    ) -> Enclosure:
        """`code=None` generates a free one; an operator's code is checked and kept."""
        name = _check_name(name, "enclosure")
        kind = EnclosureKind(kind)
        wanted = normalize_enclosure_code(code) if code is not None else None
        async with self._tx() as s:
            farm = await self._farm_row(s, farm_id)
            await self._check_enclosure_name(s, farm_id, name)
            if wanted is None:
                wanted = await self._free_code(s)
            elif await self._code_taken(s, wanted):
                raise Conflict(f"enclosure code {wanted} is taken")
            row = EnclosureRow(
                farm_id=farm_id,
                name=name,
                kind=kind,
                species=species.strip(),
                enclosure_code=wanted,
                created_at=self._clock(),
            )
            async with _savepoint(s, f"enclosure {name!r} or code {wanted} was just taken; retry"):
                s.add(row)
            return _enclosure(row, farm.tenant_id)

    async def get_enclosure(self, enclosure_id: int) -> Enclosure:
        async with self._tx(readonly=True) as s:
            found = (
                await s.execute(_ENCLOSURE_SELECT.where(EnclosureRow.id == enclosure_id))
            ).first()
            if found is None:
                raise NotFound(f"no enclosure {enclosure_id}")
            return _enclosure(found[0], found[1])

    async def get_enclosure_by_code(self, code: str) -> Enclosure:
        """Lenient about case, spaces and a missing `ENC-` (people type these)."""
        try:
            wanted = normalize_enclosure_code(code)
        except Invalid:
            raise NotFound(f"no enclosure with code {code!r}") from None
        async with self._tx(readonly=True) as s:
            found = (
                await s.execute(_ENCLOSURE_SELECT.where(EnclosureRow.enclosure_code == wanted))
            ).first()
            if found is None:
                raise NotFound(f"no enclosure with code {wanted}")
            return _enclosure(found[0], found[1])

    async def list_enclosures(
        self, *, farm_id: int | None = None, tenant_id: int | None = None
    ) -> list[Enclosure]:
        stmt = _ENCLOSURE_SELECT.order_by(EnclosureRow.farm_id, EnclosureRow.name)
        if farm_id is not None:
            stmt = stmt.where(EnclosureRow.farm_id == farm_id)
        if tenant_id is not None:
            stmt = stmt.where(FarmRow.tenant_id == tenant_id)
        async with self._tx(readonly=True) as s:
            return [_enclosure(row, tid) for row, tid in (await s.execute(stmt)).all()]

    async def update_enclosure(
        self,
        enclosure_id: int,
        *,
        name: str | _Unset = UNSET,
        kind: EnclosureKind | _Unset = UNSET,
        species: str | _Unset = UNSET,
        code: str | _Unset = UNSET,
    ) -> Enclosure:
        """Changing the code detaches nothing, but devices configured with the old
        code will not find the enclosure when they next register."""
        async with self._tx() as s:
            row = await s.get(EnclosureRow, enclosure_id)
            if row is None:
                raise NotFound(f"no enclosure {enclosure_id}")
            if name is not UNSET:
                name = _check_name(name, "enclosure")
                if name != row.name:
                    await self._check_enclosure_name(s, row.farm_id, name)
            if code is not UNSET:
                code = normalize_enclosure_code(code)
                if code != row.enclosure_code and await self._code_taken(s, code):
                    raise Conflict(f"enclosure code {code} is taken")
            async with _savepoint(s, "enclosure name or code was just taken; retry"):
                if name is not UNSET:
                    row.name = name
                if kind is not UNSET:
                    row.kind = EnclosureKind(kind)
                if species is not UNSET:
                    row.species = species.strip()
                if code is not UNSET:
                    row.enclosure_code = code
            farm = await self._farm_row(s, row.farm_id)
            return _enclosure(row, farm.tenant_id)

    async def delete_enclosure(self, enclosure_id: int) -> None:
        """Refused while devices are attached: reassign or unassign them first."""
        async with self._tx() as s:
            row = await s.get(EnclosureRow, enclosure_id)
            if row is None:
                raise NotFound(f"no enclosure {enclosure_id}")
            n = await s.scalar(
                select(func.count())
                .select_from(DeviceRow)
                .where(DeviceRow.enclosure_id == enclosure_id)
            )
            if n:
                raise Conflict(f"enclosure {row.enclosure_code} still holds {n} device(s)")
            async with _savepoint(s, f"enclosure {row.enclosure_code} still holds devices"):
                await s.delete(row)

    async def _check_enclosure_name(self, s: AsyncSession, farm_id: int, name: str) -> None:
        taken = await s.scalar(
            select(EnclosureRow.id).where(
                EnclosureRow.farm_id == farm_id, EnclosureRow.name == name
            )
        )
        if taken is not None:
            raise Conflict(f"the farm already has an enclosure named {name!r}")

    async def _code_taken(self, s: AsyncSession, code: str) -> bool:
        found = await s.scalar(select(EnclosureRow.id).where(EnclosureRow.enclosure_code == code))
        return found is not None

    async def _free_code(self, s: AsyncSession) -> str:
        for _ in range(_CODE_ATTEMPTS):
            code = new_enclosure_code()
            if not await self._code_taken(s, code):
                return code
        raise Conflict("could not find a free enclosure code; supply one")

    # -- devices ----------------------------------------------------------------

    async def upsert_device_on_registration(
        self,
        registration: DeviceRegistration,
        *,
        event: DeviceEventKind | str = DeviceEventKind.REGISTERED,
        status: DeviceStatus = DeviceStatus.REGISTERED,
        at: datetime | None = None,
    ) -> Device:
        """Create the device on its first Register, refresh it on later ones.

        One INSERT .. ON CONFLICT, so concurrent registrations of one endpoint
        cannot race. Keeps the enclosure, identity data and first_seen; a given
        tenant or kind overrides the stored one, an absent one keeps it. A device
        whose tenant changes leaves its enclosure (it belonged to the old tenant).
        """
        reg = registration
        now = self._now(at)
        values: dict[str, Any] = {
            "endpoint": reg.endpoint,
            "tenant_id": reg.tenant_id,
            "kind": DeviceKind(reg.kind),
            "first_seen": now,
            "last_seen": now,
            "status": DeviceStatus(status),
            "last_address": reg.address,
            "registration_id": reg.registration_id,
            "lifetime": reg.lifetime,
            "lwm2m_version": reg.lwm2m_version,
            "binding": reg.binding,
            "queue_mode": reg.queue_mode,
            "object_links": reg.object_links,
            "extra": dict(reg.extra) if reg.extra is not None else None,
        }
        async with self._tx() as s:
            if reg.tenant_id is not None and await s.get(TenantRow, reg.tenant_id) is None:
                raise NotFound(f"no tenant {reg.tenant_id}")
            insert = postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert
            stmt = insert(DeviceRow).values(values)
            new = stmt.excluded
            refresh: dict[str, Any] = {
                name: getattr(new, name)
                for name in (
                    "last_seen",
                    "status",
                    "last_address",
                    "registration_id",
                    "lifetime",
                    "lwm2m_version",
                    "binding",
                    "queue_mode",
                    "object_links",
                )
            }
            refresh["tenant_id"] = func.coalesce(new.tenant_id, DeviceRow.tenant_id)
            refresh["extra"] = func.coalesce(new.extra, DeviceRow.extra)
            refresh["kind"] = case(
                (new.kind == DeviceKind.UNKNOWN.value, DeviceRow.kind), else_=new.kind
            )
            # Provisioned into another tenant: its old enclosure is not its own any more.
            moved = and_(
                new.tenant_id.isnot(None),
                DeviceRow.tenant_id.isnot(None),
                new.tenant_id != DeviceRow.tenant_id,
            )
            refresh["enclosure_id"] = case((moved, null()), else_=DeviceRow.enclosure_id)
            refresh["correlation_source"] = case(
                (moved, null()), else_=DeviceRow.correlation_source
            )
            refresh["unassigned_reason"] = case(
                (moved, literal(_MOVED_TENANT)), else_=DeviceRow.unassigned_reason
            )
            upsert = stmt.on_conflict_do_update(
                index_elements=[DeviceRow.endpoint], set_=refresh
            ).returning(DeviceRow)
            row = (await s.scalars(upsert, execution_options={"populate_existing": True})).one()
            add_event(
                s,
                row.id,
                event,
                {
                    "registration_id": reg.registration_id,
                    "address": reg.address,
                    "lifetime": reg.lifetime,
                    "binding": reg.binding,
                },
                now,
            )
            return _device(row)

    async def get_device(self, endpoint: str) -> Device:
        async with self._tx(readonly=True) as s:
            return _device(await self._device_row(s, endpoint))

    async def get_device_by_id(self, device_id: int) -> Device:
        async with self._tx(readonly=True) as s:
            row = await s.get(DeviceRow, device_id)
            if row is None:
                raise NotFound(f"no device {device_id}")
            return _device(row)

    async def list_devices(
        self,
        *,
        tenant_id: int | None = None,
        farm_id: int | None = None,
        enclosure_id: int | None = None,
        status: DeviceStatus | None = None,
        kind: DeviceKind | None = None,
        firmware: str | None = None,
        unassigned: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[Device]:
        """Filtered, ordered by endpoint; `total` counts all matches, not the page."""
        _check_page(limit, offset)
        stmt = select(DeviceRow)
        if farm_id is not None:
            stmt = stmt.join(EnclosureRow, EnclosureRow.id == DeviceRow.enclosure_id).where(
                EnclosureRow.farm_id == farm_id
            )
        if tenant_id is not None:
            stmt = stmt.where(DeviceRow.tenant_id == tenant_id)
        if enclosure_id is not None:
            stmt = stmt.where(DeviceRow.enclosure_id == enclosure_id)
        if status is not None:
            stmt = stmt.where(DeviceRow.status == DeviceStatus(status))
        if kind is not None:
            stmt = stmt.where(DeviceRow.kind == DeviceKind(kind))
        if firmware is not None:
            stmt = stmt.where(DeviceRow.firmware_version == firmware)
        if unassigned is not None:
            stmt = stmt.where(
                DeviceRow.enclosure_id.is_(None)
                if unassigned
                else DeviceRow.enclosure_id.isnot(None)
            )
        async with self._tx(readonly=True) as s:
            total = await s.scalar(select(func.count()).select_from(stmt.subquery()))
            rows = await s.scalars(stmt.order_by(DeviceRow.endpoint).limit(limit).offset(offset))
            return Page([_device(r) for r in rows], int(total or 0), limit, offset)

    async def update_device_info(
        self,
        endpoint: str,
        *,
        kind: DeviceKind | _Unset = UNSET,
        manufacturer: str | _Unset | None = UNSET,
        model: str | _Unset | None = UNSET,
        serial: str | _Unset | None = UNSET,
        firmware_version: str | _Unset | None = UNSET,
        at: datetime | None = None,
    ) -> Device:
        """What the server read from the Device object (3); a new firmware version
        is recorded as an event."""
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            if kind is not UNSET:
                row.kind = DeviceKind(kind)
            if manufacturer is not UNSET:
                row.manufacturer = manufacturer
            if model is not UNSET:
                row.model = model
            if serial is not UNSET:
                row.serial = serial
            if firmware_version is not UNSET and firmware_version != row.firmware_version:
                add_event(
                    s,
                    row.id,
                    DeviceEventKind.FIRMWARE_CHANGED,
                    {"from": row.firmware_version, "to": firmware_version},
                    self._now(at),
                )
                row.firmware_version = firmware_version
            await s.flush()
            return _device(row)

    async def assign_enclosure(
        self,
        endpoint: str,
        enclosure_id: int,
        source: CorrelationSource,
        *,
        at: datetime | None = None,
    ) -> Device:
        """Attach the device and record which correlation source did it.

        A device of one tenant never lands in another tenant's enclosure (Invalid);
        a device with no tenant yet takes the enclosure's.
        """
        source = CorrelationSource(source)
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            found = (
                await s.execute(_ENCLOSURE_SELECT.where(EnclosureRow.id == enclosure_id))
            ).first()
            if found is None:
                raise NotFound(f"no enclosure {enclosure_id}")
            enclosure, tenant_id = found[0], found[1]
            if row.tenant_id is not None and row.tenant_id != tenant_id:
                raise Invalid(
                    f"enclosure {enclosure.enclosure_code} belongs to another tenant "
                    f"than device {endpoint!r}"
                )
            unchanged = (
                row.enclosure_id == enclosure_id
                and row.correlation_source == source
                and row.unassigned_reason is None
            )
            if not unchanged:
                add_event(
                    s,
                    row.id,
                    DeviceEventKind.ASSIGNED,
                    {
                        "enclosure_id": enclosure_id,
                        "code": enclosure.enclosure_code,
                        "source": source.value,
                        "previous_enclosure_id": row.enclosure_id,
                    },
                    self._now(at),
                )
            row.tenant_id = tenant_id
            row.enclosure_id = enclosure_id
            row.correlation_source = source
            row.unassigned_reason = None
            await s.flush()
            return _device(row)

    async def mark_unassigned(
        self, endpoint: str, reason: str, *, at: datetime | None = None
    ) -> Device:
        """Detach the device and say why; it then shows in the unassigned list."""
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            if row.enclosure_id is not None or row.unassigned_reason != reason:
                add_event(
                    s,
                    row.id,
                    DeviceEventKind.UNASSIGNED,
                    {"reason": reason, "previous_enclosure_id": row.enclosure_id},
                    self._now(at),
                )
            row.enclosure_id = None
            row.correlation_source = None
            row.unassigned_reason = reason
            await s.flush()
            return _device(row)

    async def set_status(
        self,
        endpoint: str,
        status: DeviceStatus,
        *,
        event: DeviceEventKind | str | None = None,
        detail: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Device:
        """Change the status. Records `event` if given, else `status_changed`
        when the status really changed."""
        status = DeviceStatus(status)
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            previous = row.status
            if event is not None or previous != status:
                add_event(
                    s,
                    row.id,
                    event or DeviceEventKind.STATUS_CHANGED,
                    {"from": previous.value, "to": status.value, **(detail or {})},
                    self._now(at),
                )
            row.status = status
            await s.flush()
            return _device(row)

    async def mark_seen(self, seen: Mapping[str, datetime]) -> None:
        """Move last_seen forward for many devices in one statement (notifications
        arrive far too often for one transaction each)."""
        if not seen:
            return
        table = _table(DeviceRow)
        stmt = (
            update(table)
            .where(table.c.endpoint == bindparam("b_endpoint"))
            .where(table.c.last_seen < bindparam("b_seen", type_=table.c.last_seen.type))
            .values(last_seen=bindparam("b_seen", type_=table.c.last_seen.type))
        )
        params = [{"b_endpoint": ep, "b_seen": t} for ep, t in seen.items()]
        async with self._tx() as s:
            conn = await s.connection()
            await conn.execute(stmt, params)

    async def delete_device(self, endpoint: str) -> None:
        """Forget a retired device with its events, observations and telemetry."""
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            await s.delete(row)
            await s.flush()

    async def _device_row(self, s: AsyncSession, endpoint: str) -> DeviceRow:
        row = await s.scalar(select(DeviceRow).where(DeviceRow.endpoint == endpoint))
        if row is None:
            raise NotFound(f"no device {endpoint!r}")
        return row

    # -- restart recovery ---------------------------------------------------------

    async def known_registrations(self) -> list[KnownRegistration]:
        """Devices that were registered when the server stopped, with the
        observations to re-establish, so a restart can rebuild its registration
        store instead of waiting for every device to re-register."""
        live = (
            DeviceRow.status.notin_([DeviceStatus.DEREGISTERED, DeviceStatus.EXPIRED]),
            DeviceRow.registration_id.isnot(None),
        )
        async with self._tx(readonly=True) as s:
            devices = list(await s.scalars(select(DeviceRow).where(*live).order_by(DeviceRow.id)))
            observations: dict[int, list[ObservationRecord]] = {}
            obs_rows = await s.scalars(
                select(ObservationRow)
                .join(DeviceRow, DeviceRow.id == ObservationRow.device_id)
                .where(*live)
                .order_by(ObservationRow.device_id, ObservationRow.path)
            )
            for obs in obs_rows:
                observations.setdefault(obs.device_id, []).append(_observation(obs))
        return [
            KnownRegistration(
                device_id=d.id,
                endpoint=d.endpoint,
                registration_id=d.registration_id or "",
                address=d.last_address,
                lifetime=d.lifetime,
                lwm2m_version=d.lwm2m_version,
                binding=d.binding,
                queue_mode=d.queue_mode,
                object_links=d.object_links,
                last_seen=d.last_seen,
                status=d.status,
                observations=tuple(observations.get(d.id, ())),
            )
            for d in devices
        ]

    async def save_observations(self, endpoint: str, records: Iterable[ObservationRecord]) -> None:
        """Replace the device's observation records with `records`."""
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            await s.execute(delete(ObservationRow).where(ObservationRow.device_id == row.id))
            now = self._clock()
            by_path = {r.path: r for r in records}  # last one wins, as in the server
            s.add_all(
                ObservationRow(
                    device_id=row.id,
                    path=r.path,
                    content_format=r.content_format,
                    attributes=dict(r.attributes) or None,
                    created_at=now,
                )
                for r in by_path.values()
            )
            await s.flush()

    async def add_observation(self, endpoint: str, record: ObservationRecord) -> None:
        """Add or replace the record for one path."""
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            await s.execute(
                delete(ObservationRow).where(
                    ObservationRow.device_id == row.id, ObservationRow.path == record.path
                )
            )
            async with _savepoint(s, f"observation of {record.path} changed concurrently; retry"):
                s.add(
                    ObservationRow(
                        device_id=row.id,
                        path=record.path,
                        content_format=record.content_format,
                        attributes=dict(record.attributes) or None,
                        created_at=self._clock(),
                    )
                )

    async def remove_observation(self, endpoint: str, path: str) -> bool:
        async with self._tx() as s:
            row = await self._device_row(s, endpoint)
            result = await s.execute(
                delete(ObservationRow).where(
                    ObservationRow.device_id == row.id, ObservationRow.path == path
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def load_observations(self, endpoint: str) -> list[ObservationRecord]:
        async with self._tx(readonly=True) as s:
            row = await self._device_row(s, endpoint)
            rows = await s.scalars(
                select(ObservationRow)
                .where(ObservationRow.device_id == row.id)
                .order_by(ObservationRow.path)
            )
            return [_observation(r) for r in rows]

"""What the pages show about the fleet: status groups, counts, searches, event history.

The overview counts devices per enclosure and status for a whole tenant, and the
device list searches, filters and sorts; both are one SQL query each here rather
than a page-through of `Inventory.list_devices`, so the pages stay quick for a
large fleet. They only read, through the same database the inventory uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select

from shoal.store import Database, Device, DeviceKind, DeviceStatus, Inventory, Page
from shoal.store.schema import DeviceEventRow, DeviceRow, EnclosureRow

# -- status groups -------------------------------------------------------------------

# What an operator tells apart at a glance, best first. A deregistered device said
# goodbye (offline); an expired one stopped talking without a word (worst).
GROUPS = ("online", "sleeping", "offline", "expired")
GROUP_LABELS = {
    "online": "Online",
    "sleeping": "Sleeping",
    "offline": "Offline",
    "expired": "Expired",
}
_GROUP_OF: dict[str, str] = {
    DeviceStatus.ONLINE: "online",
    DeviceStatus.REGISTERED: "online",
    DeviceStatus.SLEEPING: "sleeping",
    DeviceStatus.OFFLINE: "offline",
    DeviceStatus.DEREGISTERED: "offline",
    DeviceStatus.UNKNOWN: "offline",
    DeviceStatus.EXPIRED: "expired",
}
STATUS_LABELS = {
    DeviceStatus.ONLINE: "Online",
    DeviceStatus.REGISTERED: "Registered",
    DeviceStatus.SLEEPING: "Sleeping",
    DeviceStatus.OFFLINE: "Offline",
    DeviceStatus.DEREGISTERED: "Deregistered",
    DeviceStatus.UNKNOWN: "Unknown",
    DeviceStatus.EXPIRED: "Expired",
}


def status_group(status: str) -> str:
    return _GROUP_OF.get(status, "offline")


def statuses_in(group: str) -> list[DeviceStatus]:
    return [DeviceStatus(s) for s, g in _GROUP_OF.items() if g == group]


@dataclass(slots=True)
class Counts:
    """Devices per status group; `worst` names the group an enclosure tile shows."""

    online: int = 0
    sleeping: int = 0
    offline: int = 0
    expired: int = 0

    def add(self, group: str, n: int) -> None:
        setattr(self, group, getattr(self, group) + n)

    def merge(self, other: Counts) -> None:
        for g in GROUPS:
            self.add(g, getattr(other, g))

    @property
    def total(self) -> int:
        return self.online + self.sleeping + self.offline + self.expired

    @property
    def worst(self) -> str | None:
        for g in reversed(GROUPS):
            if getattr(self, g):
                return g
        return None

    def items(self) -> list[tuple[str, int]]:
        return [(g, getattr(self, g)) for g in GROUPS]


def _db(inventory: Inventory) -> Database:
    # The inventory's database: these read-only queries belong beside its own.
    db: Database = inventory._db
    return db


def _tenant_devices(tenant_id: int) -> Any:
    """Devices of the tenant, and devices that belong to no tenant yet (the
    unassigned inbox), which any operator may claim."""
    return or_(DeviceRow.tenant_id == tenant_id, DeviceRow.tenant_id.is_(None))


async def counts_by_enclosure(inventory: Inventory, tenant_id: int) -> dict[int | None, Counts]:
    """Status-group counts per enclosure id (None: devices in no enclosure)."""
    stmt = (
        select(DeviceRow.enclosure_id, DeviceRow.status, func.count())
        .where(_tenant_devices(tenant_id))
        .group_by(DeviceRow.enclosure_id, DeviceRow.status)
    )
    out: dict[int | None, Counts] = {}
    async with _db(inventory).session(readonly=True) as s:
        for enclosure_id, status, n in (await s.execute(stmt)).all():
            out.setdefault(enclosure_id, Counts()).add(status_group(status), int(n))
    return out


# -- device search ---------------------------------------------------------------------

SORTS = {
    "endpoint": DeviceRow.endpoint,
    "status": DeviceRow.status,
    "kind": DeviceRow.kind,
    "enclosure": EnclosureRow.name,
    "firmware": DeviceRow.firmware_version,
    "last_seen": DeviceRow.last_seen,
}
_DEVICE_FIELDS = tuple(f.name for f in fields(Device))


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    text: str = ""
    farm_id: int | None = None
    enclosure_id: int | None = None
    group: str | None = None
    kind: DeviceKind | None = None
    unassigned: bool = False
    sort: str = "endpoint"
    descending: bool = False
    limit: int = 50
    offset: int = 0


def _device(row: DeviceRow) -> Device:
    return Device(**{name: getattr(row, name) for name in _DEVICE_FIELDS})


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _search(query: DeviceQuery, tenant_id: int) -> Select[Any]:
    stmt = (
        select(DeviceRow)
        .outerjoin(EnclosureRow, EnclosureRow.id == DeviceRow.enclosure_id)
        .where(_tenant_devices(tenant_id))
    )
    text = query.text.strip()
    if text:
        like = f"%{_escape_like(text.lower())}%"
        stmt = stmt.where(
            or_(
                *(
                    func.lower(func.coalesce(col, "")).like(like, escape="\\")
                    for col in (
                        DeviceRow.endpoint,
                        DeviceRow.serial,
                        DeviceRow.model,
                        DeviceRow.manufacturer,
                        DeviceRow.firmware_version,
                        EnclosureRow.enclosure_code,
                        EnclosureRow.name,
                    )
                )
            )
        )
    if query.farm_id is not None:
        stmt = stmt.where(EnclosureRow.farm_id == query.farm_id)
    if query.enclosure_id is not None:
        stmt = stmt.where(DeviceRow.enclosure_id == query.enclosure_id)
    if query.group in GROUP_LABELS:
        stmt = stmt.where(DeviceRow.status.in_(statuses_in(query.group)))
    if query.kind is not None:
        stmt = stmt.where(DeviceRow.kind == query.kind)
    if query.unassigned:
        stmt = stmt.where(DeviceRow.enclosure_id.is_(None))
    return stmt


async def search_devices(inventory: Inventory, tenant_id: int, query: DeviceQuery) -> Page[Device]:
    stmt = _search(query, tenant_id)
    column = SORTS.get(query.sort, DeviceRow.endpoint)
    order = column.desc() if query.descending else column.asc()
    async with _db(inventory).session(readonly=True) as s:
        total = await s.scalar(select(func.count()).select_from(stmt.subquery()))
        rows = await s.scalars(
            stmt.order_by(order.nulls_last(), DeviceRow.endpoint)
            .limit(query.limit)
            .offset(query.offset)
        )
        items = [_device(r) for r in rows]
    return Page(items, int(total or 0), query.limit, query.offset)


# -- event history ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """A past device event in the shape the live feed shows."""

    id: int
    endpoint: str
    time: datetime
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


async def recent_events(
    inventory: Inventory,
    tenant_id: int,
    *,
    enclosure_id: int | None = None,
    limit: int = 25,
) -> list[FeedEvent]:
    """The newest device events of the tenant (or of one enclosure), newest first."""
    stmt = (
        select(DeviceEventRow, DeviceRow.endpoint)
        .join(DeviceRow, DeviceRow.id == DeviceEventRow.device_id)
        .where(_tenant_devices(tenant_id))
        .order_by(DeviceEventRow.id.desc())
        .limit(limit)
    )
    if enclosure_id is not None:
        stmt = stmt.where(DeviceRow.enclosure_id == enclosure_id)
    async with _db(inventory).session(readonly=True) as s:
        rows = (await s.execute(stmt)).all()
    return [
        FeedEvent(row.id, endpoint, row.time, row.kind, dict(row.detail or {}))
        for row, endpoint in rows
    ]

"""Device events: the history an operator reads on a device's page.

Kinds are short strings rather than a closed enum in the schema, so later
features (firmware campaigns, alerts) add kinds without a migration;
`DeviceEventKind` names the ones the server and inventory emit.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from shoal.store.db import Database
from shoal.store.errors import Invalid
from shoal.store.schema import DeviceEventRow, DeviceRow, utcnow


class DeviceEventKind(enum.StrEnum):
    REGISTERED = "registered"
    UPDATED = "updated"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"
    REQUEST_FAILED = "request_failed"
    STATUS_CHANGED = "status_changed"
    ASSIGNED = "assigned"
    UNASSIGNED = "unassigned"
    FIRMWARE_CHANGED = "firmware_changed"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    id: int
    device_id: int
    endpoint: str
    time: datetime
    kind: str
    detail: Mapping[str, Any] | None


_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")


def check_kind(kind: str) -> str:
    if not _KIND.fullmatch(kind):
        raise Invalid(f"event kind {kind!r} must be 1-32 of a-z, 0-9, _")
    return str(kind)


def add_event(
    session: AsyncSession,
    device_id: int,
    kind: str,
    detail: Mapping[str, Any] | None,
    time: datetime,
) -> None:
    """Add an event to the caller's transaction (so it commits with the change it
    describes, or not at all)."""
    session.add(
        DeviceEventRow(
            device_id=device_id,
            time=time,
            kind=check_kind(kind),
            detail=dict(detail) if detail is not None else None,
        )
    )


class EventLog:
    """Write and read device events outside an inventory transaction."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    async def record(
        self,
        device_id: int,
        kind: str,
        detail: Mapping[str, Any] | None = None,
        *,
        time: datetime | None = None,
    ) -> None:
        async with self._db.session() as session:
            add_event(session, device_id, kind, detail, time or self._clock())

    async def query(
        self,
        *,
        device_id: int | None = None,
        kinds: Iterable[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[DeviceEvent]:
        """Newest first (by id, i.e. by when they were recorded). Page backwards
        with `before_id`, the smallest id of the previous page."""
        if not 1 <= limit <= 10_000:
            raise Invalid("limit must be 1..10000")
        stmt = (
            select(DeviceEventRow, DeviceRow.endpoint)
            .join(DeviceRow, DeviceRow.id == DeviceEventRow.device_id)
            .order_by(DeviceEventRow.id.desc())
            .limit(limit)
        )
        if device_id is not None:
            stmt = stmt.where(DeviceEventRow.device_id == device_id)
        if kinds is not None:
            stmt = stmt.where(DeviceEventRow.kind.in_([check_kind(k) for k in kinds]))
        if since is not None:
            stmt = stmt.where(DeviceEventRow.time >= since)
        if until is not None:
            stmt = stmt.where(DeviceEventRow.time < until)
        if before_id is not None:
            stmt = stmt.where(DeviceEventRow.id < before_id)
        async with self._db.session(readonly=True) as session:
            rows = (await session.execute(stmt)).all()
        return [
            DeviceEvent(row.id, row.device_id, endpoint, row.time, row.kind, row.detail)
            for row, endpoint in rows
        ]

    async def prune(self, before: datetime) -> int:
        """Delete events older than `before`; returns how many."""
        async with self._db.session() as session:
            result = await session.execute(
                delete(DeviceEventRow).where(DeviceEventRow.time < before)
            )
        return int(result.rowcount)  # type: ignore[attr-defined]

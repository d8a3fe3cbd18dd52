"""Alerts and their configuration, as the store keeps them.

`AlertStore` is a small repository over the tables of `alert_schema`: device
profiles, alert rules, alerts with their event history, notification channels,
escalation policies and silences. The alert service keeps open alerts in memory
and writes through here from one worker, so the ingest path never waits on SQL.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from shoal.store.alert_schema import (
    AlertEventRow,
    AlertRow,
    AlertRuleRow,
    DeviceProfileRow,
    EscalationPolicyRow,
    NotificationChannelRow,
    SilenceRow,
)
from shoal.store.db import Database
from shoal.store.errors import Conflict, Invalid, NotFound
from shoal.store.inventory import Page
from shoal.store.schema import Base, utcnow


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is worse: info 0 ... critical 3."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {
    Severity.INFO: 0,
    Severity.WARNING: 1,
    Severity.HIGH: 2,
    Severity.CRITICAL: 3,
}


class AlertState(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(slots=True)
class Alert:
    """One alert. Mutable: the alert service updates open alerts in place."""

    id: int
    tenant_id: int | None
    rule_key: str
    rule_kind: str
    subject: str
    endpoint: str | None
    farm_id: int | None
    enclosure_id: int | None
    severity: str
    state: str
    title: str
    message: str
    detail: dict[str, Any] | None
    count: int
    flaps: int
    silenced: bool
    first_at: datetime
    last_at: datetime
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    ack_note: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolve_note: str | None = None
    escalation_level: int = 0
    notified_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.state != AlertState.RESOLVED

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.isoformat()
        return out


@dataclass(frozen=True, slots=True)
class AlertEvent:
    id: int
    alert_id: int
    time: datetime
    kind: str
    actor: str | None
    detail: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class RuleRecord:
    id: int
    tenant_id: int | None
    key: str
    kind: str
    severity: str
    enabled: bool
    farm_id: int | None
    enclosure_id: int | None
    profile: str | None
    params: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    id: int
    tenant_id: int | None
    name: str
    body: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ChannelRecord:
    id: int
    tenant_id: int | None
    name: str
    kind: str
    enabled: bool
    min_severity: str
    config: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    id: int
    tenant_id: int | None
    name: str
    enabled: bool
    body: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SilenceRecord:
    id: int
    tenant_id: int | None
    kind: str
    farm_id: int | None
    enclosure_id: int | None
    endpoint: str | None
    rule_key: str | None
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str
    created_at: datetime


R = TypeVar("R")
_ALERT_FIELDS = tuple(f.name for f in fields(Alert))


def _record(cls: type[R], row: Base) -> R:
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: getattr(row, n) for n in names})


def _alert(row: AlertRow) -> Alert:
    return Alert(**{n: getattr(row, n) for n in _ALERT_FIELDS})


@dataclass(frozen=True, slots=True)
class AlertFilter:
    state: Iterable[str] | None = None
    severity: Iterable[str] | None = None
    farm_id: int | None = None
    enclosure_id: int | None = None
    endpoint: str | None = None
    rule_key: str | None = None
    tenant_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None


class AlertStore:
    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    # -- generic configuration rows ----------------------------------------------------

    async def _create(self, model: type[Base], cls: type[R], values: dict[str, Any]) -> R:
        now = self._clock()
        row = model(**values)
        if hasattr(row, "created_at"):
            row.created_at = now
        if hasattr(row, "updated_at"):
            row.updated_at = now
        try:
            async with self._db.session() as s:
                s.add(row)
                await s.flush()
        except IntegrityError as exc:
            raise Conflict(f"{model.__tablename__}: duplicate name") from exc
        return _record(cls, row)

    async def _update(
        self, model: type[Base], cls: type[R], ident: int, changes: Mapping[str, Any]
    ) -> R:
        try:
            async with self._db.session() as s:
                row = await s.get(model, ident)
                if row is None:
                    raise NotFound(f"no {model.__tablename__} {ident}")
                for k, v in changes.items():
                    if not hasattr(row, k) or k in ("id", "created_at"):
                        raise Invalid(f"unknown field {k!r}")
                    setattr(row, k, v)
                if hasattr(row, "updated_at"):
                    row.updated_at = self._clock()
                await s.flush()
                return _record(cls, row)
        except IntegrityError as exc:
            raise Conflict(f"{model.__tablename__}: duplicate name") from exc

    async def _delete(self, model: type[Base], ident: int) -> None:
        async with self._db.session() as s:
            row = await s.get(model, ident)
            if row is None:
                raise NotFound(f"no {model.__tablename__} {ident}")
            await s.delete(row)

    async def _get(self, model: type[Base], cls: type[R], ident: int) -> R:
        async with self._db.session(readonly=True) as s:
            row = await s.get(model, ident)
            if row is None:
                raise NotFound(f"no {model.__tablename__} {ident}")
            return _record(cls, row)

    async def _list(
        self, model: type[Any], cls: type[R], *where: ColumnElement[bool], order: Any = None
    ) -> list[R]:
        stmt = select(model).where(*where).order_by(order if order is not None else model.id)
        async with self._db.session(readonly=True) as s:
            return [_record(cls, r) for r in await s.scalars(stmt)]

    # -- profiles ----------------------------------------------------------------------

    async def list_profiles(self) -> list[ProfileRecord]:
        return await self._list(DeviceProfileRow, ProfileRecord)

    async def put_profile(
        self, tenant_id: int | None, name: str, body: Mapping[str, Any]
    ) -> ProfileRecord:
        """Create or replace the profile `name`."""
        async with self._db.session() as s:
            row = await s.scalar(
                select(DeviceProfileRow).where(
                    DeviceProfileRow.name == name, _eq(DeviceProfileRow.tenant_id, tenant_id)
                )
            )
            now = self._clock()
            if row is None:
                row = DeviceProfileRow(
                    tenant_id=tenant_id, name=name, body=dict(body), created_at=now, updated_at=now
                )
                s.add(row)
            else:
                row.body = dict(body)
                row.updated_at = now
            await s.flush()
            return _record(ProfileRecord, row)

    async def delete_profile(self, tenant_id: int | None, name: str) -> None:
        async with self._db.session() as s:
            row = await s.scalar(
                select(DeviceProfileRow).where(
                    DeviceProfileRow.name == name, _eq(DeviceProfileRow.tenant_id, tenant_id)
                )
            )
            if row is None:
                raise NotFound(f"no profile {name!r}")
            await s.delete(row)

    # -- rules -------------------------------------------------------------------------

    async def list_rules(self) -> list[RuleRecord]:
        return await self._list(AlertRuleRow, RuleRecord)

    async def get_rule(self, rule_id: int) -> RuleRecord:
        return await self._get(AlertRuleRow, RuleRecord, rule_id)

    async def create_rule(self, **values: Any) -> RuleRecord:
        return await self._create(AlertRuleRow, RuleRecord, values)

    async def update_rule(self, rule_id: int, **changes: Any) -> RuleRecord:
        return await self._update(AlertRuleRow, RuleRecord, rule_id, changes)

    async def delete_rule(self, rule_id: int) -> None:
        await self._delete(AlertRuleRow, rule_id)

    # -- channels ----------------------------------------------------------------------

    async def list_channels(self) -> list[ChannelRecord]:
        return await self._list(NotificationChannelRow, ChannelRecord)

    async def create_channel(self, **values: Any) -> ChannelRecord:
        return await self._create(NotificationChannelRow, ChannelRecord, values)

    async def update_channel(self, channel_id: int, **changes: Any) -> ChannelRecord:
        return await self._update(NotificationChannelRow, ChannelRecord, channel_id, changes)

    async def delete_channel(self, channel_id: int) -> None:
        await self._delete(NotificationChannelRow, channel_id)

    # -- escalation policies -----------------------------------------------------------

    async def list_policies(self) -> list[PolicyRecord]:
        return await self._list(EscalationPolicyRow, PolicyRecord)

    async def create_policy(self, **values: Any) -> PolicyRecord:
        return await self._create(EscalationPolicyRow, PolicyRecord, values)

    async def update_policy(self, policy_id: int, **changes: Any) -> PolicyRecord:
        return await self._update(EscalationPolicyRow, PolicyRecord, policy_id, changes)

    async def delete_policy(self, policy_id: int) -> None:
        await self._delete(EscalationPolicyRow, policy_id)

    # -- silences ----------------------------------------------------------------------

    async def list_silences(self, *, active_at: datetime | None = None) -> list[SilenceRecord]:
        where: list[ColumnElement[bool]] = []
        if active_at is not None:
            where = [SilenceRow.starts_at <= active_at, SilenceRow.ends_at > active_at]
        return await self._list(SilenceRow, SilenceRecord, *where)

    async def create_silence(self, **values: Any) -> SilenceRecord:
        if values["ends_at"] <= values["starts_at"]:
            raise Invalid("a silence must end after it starts")
        return await self._create(SilenceRow, SilenceRecord, values)

    async def delete_silence(self, silence_id: int) -> None:
        await self._delete(SilenceRow, silence_id)

    # -- alerts ------------------------------------------------------------------------

    async def insert_alert(self, alert: Alert, event: str, actor: str | None = None) -> int:
        """Store a new alert (its id is assigned here) with its first event."""
        values = {n: getattr(alert, n) for n in _ALERT_FIELDS if n != "id"}
        async with self._db.session() as s:
            row = AlertRow(**values)
            s.add(row)
            await s.flush()
            alert.id = row.id
            _add_event(s, row.id, event, actor, None, alert.last_at)
        return alert.id

    async def save_alerts(
        self,
        alerts: Iterable[Alert],
        events: Iterable[tuple[int, str, str | None, Mapping[str, Any] | None, datetime]] = (),
    ) -> None:
        """Write the current state of alerts (already inserted) and events, in one go."""
        async with self._db.session() as s:
            for alert in alerts:
                row = await s.get(AlertRow, alert.id)
                if row is None:
                    continue
                for n in _ALERT_FIELDS:
                    if n != "id":
                        setattr(row, n, getattr(alert, n))
            for alert_id, kind, actor, detail, time in events:
                _add_event(s, alert_id, kind, actor, detail, time)

    async def get_alert(self, alert_id: int) -> Alert:
        async with self._db.session(readonly=True) as s:
            row = await s.get(AlertRow, alert_id)
            if row is None:
                raise NotFound(f"no alert {alert_id}")
            return _alert(row)

    async def active_alerts(self) -> list[Alert]:
        """Open and acknowledged alerts (loaded into memory at start)."""
        stmt = select(AlertRow).where(AlertRow.state != AlertState.RESOLVED.value)
        async with self._db.session(readonly=True) as s:
            return [_alert(r) for r in await s.scalars(stmt.order_by(AlertRow.id))]

    async def last_resolved(self, subject: str, rule_key: str) -> Alert | None:
        stmt = (
            select(AlertRow)
            .where(
                AlertRow.subject == subject,
                AlertRow.rule_key == rule_key,
                AlertRow.state == AlertState.RESOLVED.value,
            )
            .order_by(AlertRow.id.desc())
            .limit(1)
        )
        async with self._db.session(readonly=True) as s:
            row = await s.scalar(stmt)
            return None if row is None else _alert(row)

    async def list_alerts(
        self, flt: AlertFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> Page[Alert]:
        """Newest first; `total` counts every match."""
        if not 1 <= limit <= 1000 or offset < 0:
            raise Invalid("limit must be 1..1000 and offset >= 0")
        flt = flt or AlertFilter()
        where: list[ColumnElement[bool]] = []
        if flt.state is not None:
            where.append(AlertRow.state.in_([str(x) for x in flt.state]))
        if flt.severity is not None:
            where.append(AlertRow.severity.in_([str(x) for x in flt.severity]))
        if flt.farm_id is not None:
            where.append(AlertRow.farm_id == flt.farm_id)
        if flt.enclosure_id is not None:
            where.append(AlertRow.enclosure_id == flt.enclosure_id)
        if flt.endpoint is not None:
            where.append(AlertRow.endpoint == flt.endpoint)
        if flt.rule_key is not None:
            where.append(AlertRow.rule_key == flt.rule_key)
        if flt.tenant_id is not None:
            where.append(AlertRow.tenant_id == flt.tenant_id)
        if flt.since is not None:
            where.append(AlertRow.last_at >= flt.since)
        if flt.until is not None:
            where.append(AlertRow.first_at < flt.until)
        stmt = select(AlertRow).where(*where)
        async with self._db.session(readonly=True) as s:
            total = await s.scalar(select(func.count()).select_from(stmt.subquery()))
            rows = await s.scalars(stmt.order_by(AlertRow.id.desc()).limit(limit).offset(offset))
            return Page([_alert(r) for r in rows], int(total or 0), limit, offset)

    async def alert_events(self, alert_id: int) -> list[AlertEvent]:
        stmt = (
            select(AlertEventRow)
            .where(AlertEventRow.alert_id == alert_id)
            .order_by(AlertEventRow.id)
        )
        async with self._db.session(readonly=True) as s:
            return [
                AlertEvent(r.id, r.alert_id, r.time, r.kind, r.actor, r.detail)
                for r in await s.scalars(stmt)
            ]


def _eq(column: Any, value: int | None) -> ColumnElement[bool]:
    result: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return result


def _add_event(
    session: AsyncSession,
    alert_id: int,
    kind: str,
    actor: str | None,
    detail: Mapping[str, Any] | None,
    time: datetime,
) -> None:
    session.add(
        AlertEventRow(
            alert_id=alert_id,
            time=time,
            kind=kind,
            actor=actor,
            detail=dict(detail) if detail is not None else None,
        )
    )

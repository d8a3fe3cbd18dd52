"""Tables of device health and alerting, on the same `Base` (one metadata).

Alerts are history: they keep the endpoint, farm and enclosure they were about
as plain values (no foreign keys), so a retired device or a deleted enclosure
never takes its alerts with it. Configuration (rules, profiles, channels,
escalation policies, silences) keeps its variable part in one JSON column, so a
new rule parameter or channel setting needs no migration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoal.store.schema import Base, BigIntPK


class DeviceProfileRow(Base):
    """What to observe on a kind of device, with which attributes and ranges."""

    __tablename__ = "device_profile"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    body: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AlertRuleRow(Base):
    """One malfunction rule, scoped to a tenant, farm, enclosure or profile."""

    __tablename__ = "alert_rule"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer, index=True)
    key: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    farm_id: Mapped[int | None] = mapped_column(Integer)
    enclosure_id: Mapped[int | None] = mapped_column(Integer)
    profile: Mapped[str | None] = mapped_column(String(100))
    params: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AlertRow(Base):
    """One alert: open, acknowledged or resolved; repeats only raise `count`."""

    __tablename__ = "alert"
    __table_args__ = (
        Index(None, "subject", "rule_key"),
        Index(None, "state", "severity"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    rule_key: Mapped[str] = mapped_column(String(100))
    rule_kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(300))
    endpoint: Mapped[str | None] = mapped_column(String(255), index=True)
    farm_id: Mapped[int | None] = mapped_column(Integer, index=True)
    enclosure_id: Mapped[int | None] = mapped_column(Integer, index=True)
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None]
    count: Mapped[int] = mapped_column(Integer)
    flaps: Mapped[int] = mapped_column(Integer)
    silenced: Mapped[bool] = mapped_column(Boolean)
    first_at: Mapped[datetime] = mapped_column(index=True)
    last_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    ack_note: Mapped[str | None] = mapped_column(Text)
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolve_note: Mapped[str | None] = mapped_column(Text)
    escalation_level: Mapped[int] = mapped_column(Integer)
    notified_at: Mapped[datetime | None]


class AlertEventRow(Base):
    """What happened to an alert: raised, reopened, acknowledged, escalated..."""

    __tablename__ = "alert_event"
    __table_args__ = (Index(None, "alert_id", "time"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alert.id", ondelete="CASCADE"))
    time: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None]


class NotificationChannelRow(Base):
    """Where alerts go: webhook, e-mail, Slack-compatible webhook, MQTT."""

    __tablename__ = "notification_channel"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean)
    min_severity: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class EscalationPolicyRow(Base):
    """Who hears of an alert, and who next when nobody acknowledges it."""

    __tablename__ = "escalation_policy"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean)
    body: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SilenceRow(Base):
    """A silence or maintenance window over a farm, enclosure or device."""

    __tablename__ = "alert_silence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    farm_id: Mapped[int | None] = mapped_column(Integer)
    enclosure_id: Mapped[int | None] = mapped_column(Integer)
    endpoint: Mapped[str | None] = mapped_column(String(255))
    rule_key: Mapped[str | None] = mapped_column(String(100))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime] = mapped_column(index=True)
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]

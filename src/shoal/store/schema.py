"""The tables, as SQLAlchemy 2 typed declarative models.

Portable between SQLite and PostgreSQL: enums are stored as short strings (no
native enum types, no CHECK constraints, so adding a value needs no migration),
JSON is JSONB on PostgreSQL, and every timestamp goes through `UTCDateTime`, which
only accepts aware datetimes and always returns them in UTC. Constraint names
follow one naming convention so migrations can address them on both databases.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, UTC datetimes out, on both databases.

    PostgreSQL stores `timestamptz`; SQLite stores SQLAlchemy's fixed-width text
    (`YYYY-MM-DD HH:MM:SS.ffffff`) of the UTC time, which sorts and compares
    correctly as text. A naive datetime is refused: its zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class EnclosureKind(enum.StrEnum):
    CAGE = "cage"
    POND = "pond"
    TANK = "tank"
    RACEWAY = "raceway"
    OTHER = "other"


class DeviceKind(enum.StrEnum):
    SENSOR = "sensor"
    CAMERA = "camera"
    UNKNOWN = "unknown"


class DeviceStatus(enum.StrEnum):
    REGISTERED = "registered"
    ONLINE = "online"
    SLEEPING = "sleeping"
    OFFLINE = "offline"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


class CorrelationSource(enum.StrEnum):
    """Which of the enclosure-correlation sources attached the device (DESIGN.md)."""

    QUERY_ATTRIBUTE = "query_attribute"
    ENDPOINT_PATTERN = "endpoint_pattern"
    PROVISIONING = "provisioning"
    RESOURCE = "resource"
    MANUAL = "manual"


def _str_enum(cls: type[enum.StrEnum], length: int) -> Enum:
    return Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda e: [m.value for m in e],
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class TenantRow(Base):
    __tablename__ = "tenant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]


class FarmRow(Base):
    __tablename__ = "farm"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(200))
    location: Mapped[str] = mapped_column(Text, default="")
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    created_at: Mapped[datetime]


class EnclosureRow(Base):
    __tablename__ = "enclosure"
    __table_args__ = (UniqueConstraint("farm_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    farm_id: Mapped[int] = mapped_column(ForeignKey("farm.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[EnclosureKind] = mapped_column(_str_enum(EnclosureKind, 16))
    species: Mapped[str] = mapped_column(String(200), default="")
    enclosure_code: Mapped[str] = mapped_column(String(16), unique=True)
    created_at: Mapped[datetime]


class DeviceRow(Base):
    __tablename__ = "device"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(255), unique=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="RESTRICT"), index=True
    )
    enclosure_id: Mapped[int | None] = mapped_column(
        ForeignKey("enclosure.id", ondelete="RESTRICT"), index=True
    )
    kind: Mapped[DeviceKind] = mapped_column(_str_enum(DeviceKind, 16))
    manufacturer: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    serial: Mapped[str | None] = mapped_column(String(200))
    firmware_version: Mapped[str | None] = mapped_column(String(200), index=True)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    status: Mapped[DeviceStatus] = mapped_column(_str_enum(DeviceStatus, 16), index=True)
    correlation_source: Mapped[CorrelationSource | None] = mapped_column(
        _str_enum(CorrelationSource, 32)
    )
    unassigned_reason: Mapped[str | None] = mapped_column(Text)
    last_address: Mapped[str | None] = mapped_column(String(255))
    registration_id: Mapped[str | None] = mapped_column(String(64))
    lifetime: Mapped[int | None] = mapped_column(Integer)
    lwm2m_version: Mapped[str | None] = mapped_column(String(8))
    binding: Mapped[str | None] = mapped_column(String(8))
    queue_mode: Mapped[bool] = mapped_column(Boolean, default=False)
    object_links: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any] | None]


class ObservationRow(Base):
    """An observation to re-establish after a restart (the token is not kept:
    a restarted server observes again with a fresh one)."""

    __tablename__ = "observation_record"
    __table_args__ = (UniqueConstraint("device_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(64))
    content_format: Mapped[int | None] = mapped_column(Integer)
    attributes: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]


class DeviceEventRow(Base):
    __tablename__ = "device_event"
    __table_args__ = (Index(None, "device_id", "time"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None]


class TelemetryRow(Base):
    """One raw sample. `value_num` holds numbers and booleans, `value_text` strings;
    a path (one LwM2M resource) has one type, so one of the two is always NULL."""

    __tablename__ = "telemetry"
    __table_args__ = (Index(None, "device_id", "path", "time"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("device.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(index=True)  # retention scans by time
    value_num: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(Text)
    unit: Mapped[str | None] = mapped_column(String(32))


class TelemetryMinuteRow(Base):
    """Raw samples older than the retention window, rolled up per minute.

    `sum` rather than `avg` so later rows for the same minute merge exactly;
    `last_time` orders merges of `last_num`/`last_text`.
    """

    __tablename__ = "telemetry_minute"

    device_id: Mapped[int] = mapped_column(
        ForeignKey("device.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    sum: Mapped[float | None] = mapped_column(Float)
    last_num: Mapped[float | None] = mapped_column(Float)
    last_text: Mapped[str | None] = mapped_column(Text)
    last_time: Mapped[datetime]
    unit: Mapped[str | None] = mapped_column(String(32))

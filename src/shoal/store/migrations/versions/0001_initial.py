"""Initial schema: tenants, farms, enclosures, devices, observations, events,
raw telemetry and per-minute telemetry.

Revision ID: 0001
Revises:
Create Date: 2026-12-03

Types are spelled out here (not imported from `shoal.store.schema`) so this
revision keeps creating the same tables whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "tenant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenant"),
        sa.UniqueConstraint("name", name="uq_tenant_name"),
    )
    op.create_table(
        "farm",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        _fk("farm", "tenant_id", "tenant", "RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_farm"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_farm_tenant_id_name"),
    )
    op.create_table(
        "enclosure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("farm_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("species", sa.String(200), nullable=False),
        sa.Column("enclosure_code", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        _fk("enclosure", "farm_id", "farm", "RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_enclosure"),
        sa.UniqueConstraint("enclosure_code", name="uq_enclosure_enclosure_code"),
        sa.UniqueConstraint("farm_id", "name", name="uq_enclosure_farm_id_name"),
    )
    op.create_index("ix_enclosure_farm_id", "enclosure", ["farm_id"])
    op.create_table(
        "device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("enclosure_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("manufacturer", sa.String(200), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("serial", sa.String(200), nullable=True),
        sa.Column("firmware_version", sa.String(200), nullable=True),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("correlation_source", sa.String(32), nullable=True),
        sa.Column("unassigned_reason", sa.Text(), nullable=True),
        sa.Column("last_address", sa.String(255), nullable=True),
        sa.Column("registration_id", sa.String(64), nullable=True),
        sa.Column("lifetime", sa.Integer(), nullable=True),
        sa.Column("lwm2m_version", sa.String(8), nullable=True),
        sa.Column("binding", sa.String(8), nullable=True),
        sa.Column("queue_mode", sa.Boolean(), nullable=False),
        sa.Column("object_links", sa.Text(), nullable=True),
        sa.Column("extra", JSON, nullable=True),
        _fk("device", "enclosure_id", "enclosure", "RESTRICT"),
        _fk("device", "tenant_id", "tenant", "RESTRICT"),
        sa.PrimaryKeyConstraint("id", name="pk_device"),
        sa.UniqueConstraint("endpoint", name="uq_device_endpoint"),
    )
    for column in ("enclosure_id", "firmware_version", "status", "tenant_id"):
        op.create_index(f"ix_device_{column}", "device", [column])
    op.create_table(
        "device_event",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", JSON, nullable=True),
        _fk("device_event", "device_id", "device", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_device_event"),
    )
    op.create_index("ix_device_event_device_id_time", "device_event", ["device_id", "time"])
    op.create_index("ix_device_event_time", "device_event", ["time"])
    op.create_table(
        "observation_record",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(64), nullable=False),
        sa.Column("content_format", sa.Integer(), nullable=True),
        sa.Column("attributes", JSON, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        _fk("observation_record", "device_id", "device", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_observation_record"),
        sa.UniqueConstraint("device_id", "path", name="uq_observation_record_device_id_path"),
    )
    op.create_table(
        "telemetry",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(64), nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("unit", sa.String(32), nullable=True),
        _fk("telemetry", "device_id", "device", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_telemetry"),
    )
    op.create_index("ix_telemetry_device_id_path_time", "telemetry", ["device_id", "path", "time"])
    op.create_index("ix_telemetry_time", "telemetry", ["time"])
    op.create_table(
        "telemetry_minute",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(64), nullable=False),
        sa.Column("minute", TIMESTAMP, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("sum", sa.Float(), nullable=True),
        sa.Column("last_num", sa.Float(), nullable=True),
        sa.Column("last_text", sa.Text(), nullable=True),
        sa.Column("last_time", TIMESTAMP, nullable=False),
        sa.Column("unit", sa.String(32), nullable=True),
        _fk("telemetry_minute", "device_id", "device", "CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "path", "minute", name="pk_telemetry_minute"),
    )


def downgrade() -> None:
    for table in (
        "telemetry_minute",
        "telemetry",
        "observation_record",
        "device_event",
        "device",
        "enclosure",
        "farm",
        "tenant",
    ):
        op.drop_table(table)  # indexes go with their table

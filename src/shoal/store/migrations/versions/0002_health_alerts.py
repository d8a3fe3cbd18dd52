"""Health and alerting: device profiles, alert rules, alerts and their events,
notification channels, escalation policies, silences and maintenance windows.

Revision ID: 0002_alerts
Revises: 0001
Create Date: 2026-12-03

Types are spelled out here (not imported from `shoal.store.alert_schema`) so this
revision keeps creating the same tables whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Not used below: importing the models puts their tables into `Base.metadata`
# wherever migrations load, so autogenerate never proposes dropping them.
import shoal.store.alert_schema  # noqa: F401

revision: str = "0002_alerts"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _stamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "device_profile",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("body", JSON, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_device_profile"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_device_profile_tenant_id_name"),
    )
    op.create_table(
        "alert_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("farm_id", sa.Integer(), nullable=True),
        sa.Column("enclosure_id", sa.Integer(), nullable=True),
        sa.Column("profile", sa.String(100), nullable=True),
        sa.Column("params", JSON, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_alert_rule"),
    )
    op.create_index("ix_alert_rule_tenant_id", "alert_rule", ["tenant_id"])
    op.create_table(
        "alert",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("rule_key", sa.String(100), nullable=False),
        sa.Column("rule_kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=True),
        sa.Column("farm_id", sa.Integer(), nullable=True),
        sa.Column("enclosure_id", sa.Integer(), nullable=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", JSON, nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("flaps", sa.Integer(), nullable=False),
        sa.Column("silenced", sa.Boolean(), nullable=False),
        sa.Column("first_at", TIMESTAMP, nullable=False),
        sa.Column("last_at", TIMESTAMP, nullable=False),
        sa.Column("acknowledged_at", TIMESTAMP, nullable=True),
        sa.Column("acknowledged_by", sa.String(200), nullable=True),
        sa.Column("ack_note", sa.Text(), nullable=True),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.Column("resolved_by", sa.String(200), nullable=True),
        sa.Column("resolve_note", sa.Text(), nullable=True),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("notified_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_alert"),
    )
    op.create_index("ix_alert_subject_rule_key", "alert", ["subject", "rule_key"])
    op.create_index("ix_alert_state_severity", "alert", ["state", "severity"])
    for column in ("endpoint", "farm_id", "enclosure_id", "first_at"):
        op.create_index(f"ix_alert_{column}", "alert", [column])
    op.create_table(
        "alert_event",
        sa.Column("id", BIGID, nullable=False),
        sa.Column("alert_id", BIGID, nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alert.id"], name="fk_alert_event_alert_id_alert", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alert_event"),
    )
    op.create_index("ix_alert_event_alert_id_time", "alert_event", ["alert_id", "time"])
    op.create_table(
        "notification_channel",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("min_severity", sa.String(16), nullable=False),
        sa.Column("config", JSON, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_notification_channel"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_notification_channel_tenant_id_name"),
    )
    op.create_table(
        "escalation_policy",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("body", JSON, nullable=False),
        *_stamps(),
        sa.PrimaryKeyConstraint("id", name="pk_escalation_policy"),
        sa.UniqueConstraint("tenant_id", "name", name="uq_escalation_policy_tenant_id_name"),
    )
    op.create_table(
        "alert_silence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("farm_id", sa.Integer(), nullable=True),
        sa.Column("enclosure_id", sa.Integer(), nullable=True),
        sa.Column("endpoint", sa.String(255), nullable=True),
        sa.Column("rule_key", sa.String(100), nullable=True),
        sa.Column("starts_at", TIMESTAMP, nullable=False),
        sa.Column("ends_at", TIMESTAMP, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alert_silence"),
    )
    op.create_index("ix_alert_silence_ends_at", "alert_silence", ["ends_at"])


def downgrade() -> None:
    for table in (
        "alert_silence",
        "escalation_policy",
        "notification_channel",
        "alert_event",
        "alert",
        "alert_rule",
        "device_profile",
    ):
        op.drop_table(table)  # indexes go with their table

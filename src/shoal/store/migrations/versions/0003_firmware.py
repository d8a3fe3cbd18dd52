"""Firmware and recognition-model updates: packages, campaigns, per-device progress.

Revision ID: 0003_firmware
Revises: 0002_alerts
Create Date: 2026-12-03

Types are spelled out here (not imported from `shoal.store.firmware_schema`) so
this revision keeps creating the same tables whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# Not used below: importing the models puts their tables into `Base.metadata`
# wherever migrations load, so autogenerate never proposes dropping them.
import shoal.store.firmware_schema  # noqa: F401

revision: str = "0003_firmware"
down_revision: str | None = "0002_alerts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "firmware_package",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("package_type", sa.String(16), nullable=False),
        sa.Column("device_kind", sa.String(16), nullable=True),
        sa.Column("models", JSON, nullable=True),
        sa.Column("applies_to", sa.String(500), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_package"),
        sa.UniqueConstraint("sha256", name="uq_firmware_package_sha256"),
        sa.UniqueConstraint(
            "package_type",
            "name",
            "version",
            name="uq_firmware_package_package_type_name_version",
        ),
    )
    op.create_table(
        "firmware_campaign",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("package_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("targets", JSON, nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("progress", JSON, nullable=False),
        sa.Column("pause_reason", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["firmware_package.id"],
            name="fk_firmware_campaign_package_id_firmware_package",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_campaign"),
    )
    op.create_index("ix_firmware_campaign_package_id", "firmware_campaign", ["package_id"])
    op.create_index("ix_firmware_campaign_state", "firmware_campaign", ["state"])
    op.create_table(
        "firmware_campaign_device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("from_version", sa.String(100), nullable=True),
        sa.Column("to_version", sa.String(100), nullable=False),
        sa.Column("delivery", sa.String(16), nullable=True),
        sa.Column("result_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("rollback_note", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("executed_at", TIMESTAMP, nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["firmware_campaign.id"],
            name="fk_firmware_campaign_device_campaign_id_firmware_campaign",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_firmware_campaign_device"),
        sa.UniqueConstraint(
            "campaign_id",
            "device_id",
            name="uq_firmware_campaign_device_campaign_id_device_id",
        ),
    )
    op.create_index(
        "ix_firmware_campaign_device_campaign_id_state",
        "firmware_campaign_device",
        ["campaign_id", "state"],
    )


def downgrade() -> None:
    for table in ("firmware_campaign_device", "firmware_campaign", "firmware_package"):
        op.drop_table(table)  # indexes go with their table

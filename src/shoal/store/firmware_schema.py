"""Tables of firmware and recognition-model updates, on the same `Base` (one metadata).

A package row describes one stored image (the bytes live on disk under the data
directory, named by their sha256). A campaign row holds what an operator asked
for (targets and rollout settings as JSON, so a new setting needs no migration)
and where the rollout is; one row per targeted device records that device's
progress and outcome, so a restarted server continues the campaign exactly where
it was and never flashes a finished device again.

Campaign device rows keep the endpoint and device id as plain values (no foreign
key to `device`): they are history, and a retired device must not take the
record of what was flashed onto it with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoal.store.schema import Base, JSONType


class FirmwarePackageRow(Base):
    __tablename__ = "firmware_package"
    __table_args__ = (UniqueConstraint("package_type", "name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    # "firmware" or "model" (a camera's object-recognition model)
    package_type: Mapped[str] = mapped_column(String(16))
    device_kind: Mapped[str | None] = mapped_column(String(16))
    models: Mapped[list[str] | None] = mapped_column(JSONType)
    # version spec of what it may be applied over, e.g. ">=1.0,<2.0 || ==0.9.5"
    applies_to: Mapped[str | None] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class FirmwareCampaignRow(Base):
    __tablename__ = "firmware_campaign"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    package_id: Mapped[int] = mapped_column(
        ForeignKey("firmware_package.id", ondelete="RESTRICT"), index=True
    )
    state: Mapped[str] = mapped_column(String(16), index=True)
    targets: Mapped[dict[str, Any]]
    settings: Mapped[dict[str, Any]]
    # canary verdict, failure-rate baseline after a resume, ...
    progress: Mapped[dict[str, Any]]
    pause_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class FirmwareCampaignDeviceRow(Base):
    __tablename__ = "firmware_campaign_device"
    __table_args__ = (
        UniqueConstraint("campaign_id", "device_id"),
        Index(None, "campaign_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("firmware_campaign.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(255))
    batch: Mapped[int] = mapped_column(Integer)  # 0 is the canary group
    # pending, in_progress, succeeded, failed, skipped, cancelled,
    # rolling_back, rolled_back, rollback_failed
    state: Mapped[str] = mapped_column(String(16))
    step: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(16))  # success, failure
    from_version: Mapped[str | None] = mapped_column(String(100))
    to_version: Mapped[str] = mapped_column(String(100))
    delivery: Mapped[str | None] = mapped_column(String(16))
    result_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    rollback_note: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    executed_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]

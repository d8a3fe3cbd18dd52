"""Security store: device credentials (PSK, certificate, NoSec; server and bootstrap)
and the Access Control instances to provision.

Revision ID: 0004_security
Revises: 0003_firmware
Create Date: 2026-12-04

Types are spelled out here (not imported from `shoal.store.security_schema`) so
this revision keeps creating the same tables whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_security"
down_revision: str | None = "0003_firmware"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "security_credential",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("enclosure_code", sa.String(16), nullable=True),
        sa.Column("modes", sa.String(32), nullable=False),
        sa.Column("psk_identity", sa.String(255), nullable=True),
        sa.Column("psk_key", sa.Text(), nullable=True),
        sa.Column("cert_common_name", sa.String(255), nullable=True),
        sa.Column("cert_fingerprint", sa.String(64), nullable=True),
        sa.Column("certificate", sa.Text(), nullable=True),
        sa.Column("private_key", sa.Text(), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_identity", sa.String(255), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenant.id"],
            name="fk_security_credential_tenant_id_tenant",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_security_credential"),
        sa.UniqueConstraint("endpoint", "purpose", name="uq_security_credential_endpoint_purpose"),
        sa.UniqueConstraint(
            "purpose", "cert_fingerprint", name="uq_security_credential_purpose_cert_fingerprint"
        ),
        sa.UniqueConstraint("psk_identity", name="uq_security_credential_psk_identity"),
    )
    op.create_index("ix_security_credential_tenant_id", "security_credential", ["tenant_id"])
    op.create_index(
        "ix_security_credential_cert_common_name", "security_credential", ["cert_common_name"]
    )
    op.create_table(
        "access_control_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=False),
        sa.Column("object_instance_id", sa.Integer(), nullable=False),
        sa.Column("acl", JSON, nullable=False),
        sa.Column("owner", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_access_control_entry"),
        sa.UniqueConstraint(
            "endpoint", "instance_id", name="uq_access_control_entry_endpoint_instance_id"
        ),
    )
    op.create_index("ix_access_control_entry_endpoint", "access_control_entry", ["endpoint"])


def downgrade() -> None:
    for table in ("access_control_entry", "security_credential"):
        op.drop_table(table)  # indexes go with their table

"""Tables of users, browser sessions, API tokens and the audit log, on the same
`Base` (one metadata).

Secrets are never stored: passwords as argon2 hashes, session ids and API tokens
as SHA-256 digests (they are 256-bit random values, so a fast digest is enough
and lookups stay one indexed equality). The audit log is history: it keeps the
actor, tenant and target as plain values (no foreign keys), so deleting a user
or a device never takes its trail with it.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from shoal.store.schema import Base, BigIntPK, JSONType, _str_enum


class UserRole(enum.StrEnum):
    """What a user may do; each role includes the ones before it."""

    VIEWER = "viewer"  # read everything of the tenant (or of its farms)
    OPERATOR = "operator"  # device operations, assignment, alert acknowledgement
    ADMIN = "admin"  # credentials, firmware, users, tokens, inventory structure


class UserRow(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenant.id", ondelete="RESTRICT"), index=True)
    username: Mapped[str] = mapped_column(String(200), unique=True)  # lower-cased
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[UserRole] = mapped_column(_str_enum(UserRole, 16))
    # None: every farm of the tenant; a list: only those farms
    farm_ids: Mapped[list[int] | None] = mapped_column(JSONType)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    password_changed_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class SessionRow(Base):
    """A browser session: the cookie holds the secret, this row its digest."""

    __tablename__ = "user_session"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    address: Mapped[str | None] = mapped_column(String(255))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class ApiTokenRow(Base):
    """A machine's bearer token, acting as its user with at most `role`."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in lists: "shoal_Ab3dE9"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    role: Mapped[UserRole] = mapped_column(_str_enum(UserRole, 16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditRow(Base):
    """Who did what to which thing, and how it ended (the HTTP status)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index(None, "tenant_id", "time"),
        Index(None, "target_type", "target"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    time: Mapped[datetime]
    tenant_id: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    via: Mapped[str] = mapped_column(String(16))  # session, token, cli, system, local
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any] | None]

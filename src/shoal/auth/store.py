"""Users, sessions, API tokens and the audit log in the database.

Like `Inventory`, results are frozen dataclasses and failures are the store's
`NotFound`, `Conflict` and `Invalid`. Nothing here hashes or checks a password:
that is `AuthService`'s job; this module only keeps what it is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from shoal.auth.principal import Role
from shoal.store import Conflict, Database, Invalid, NotFound
from shoal.store.auth_schema import ApiTokenRow, AuditRow, SessionRow, UserRow
from shoal.store.schema import FarmRow, TenantRow, utcnow

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,199}")


def normalize_username(text: str) -> str:
    """Usernames are case-insensitive: `Ola@Farm.no` signs in as `ola@farm.no`."""
    name = text.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise Invalid(
            "username must be 1-200 characters: letters, digits and . _ @ + - "
            "(an e-mail address works)"
        )
    return name


@dataclass(frozen=True, slots=True)
class User:
    id: int
    tenant_id: int
    username: str
    name: str
    role: Role
    farm_ids: tuple[int, ...] | None
    disabled: bool
    created_at: datetime
    updated_at: datetime
    password_changed_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True, slots=True)
class Session:
    id: str  # the digest
    user_id: int
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ApiToken:
    id: int
    user_id: int
    name: str
    prefix: str
    role: Role
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    time: datetime
    tenant_id: int | None
    user_id: int | None
    actor: str
    via: str
    action: str
    target_type: str | None
    target: str | None
    status: int | None
    address: str | None
    detail: Mapping[str, Any] | None


def _user(row: UserRow) -> User:
    return User(
        row.id,
        row.tenant_id,
        row.username,
        row.name,
        Role(row.role),
        tuple(row.farm_ids) if row.farm_ids is not None else None,
        row.disabled,
        row.created_at,
        row.updated_at,
        row.password_changed_at,
        row.last_login_at,
    )


def _session(row: SessionRow) -> Session:
    return Session(
        row.id, row.user_id, row.csrf_token, row.created_at, row.last_seen_at, row.expires_at
    )


def _token(row: ApiTokenRow) -> ApiToken:
    return ApiToken(
        row.id,
        row.user_id,
        row.name,
        row.prefix,
        Role(row.role),
        row.created_at,
        row.expires_at,
        row.last_used_at,
        row.revoked_at,
    )


def _audit(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        row.id,
        row.time,
        row.tenant_id,
        row.user_id,
        row.actor,
        row.via,
        row.action,
        row.target_type,
        row.target,
        row.status,
        row.address,
        row.detail,
    )


def _clip(text: str | None, length: int) -> str | None:
    return None if text is None else text[:length]


class AuthStore:
    """Repository of accounts and their trail."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    # -- users --------------------------------------------------------------------

    async def _check_farms(self, s: Any, tenant_id: int, farm_ids: Sequence[int] | None) -> None:
        if farm_ids is None:
            return
        wanted = set(farm_ids)
        found = set(
            await s.scalars(
                select(FarmRow.id).where(FarmRow.tenant_id == tenant_id, FarmRow.id.in_(wanted))
            )
        )
        if found != wanted:
            missing = ", ".join(str(f) for f in sorted(wanted - found))
            raise Invalid(f"no farm {missing} in this tenant")

    async def create_user(
        self,
        tenant_id: int,
        username: str,
        password_hash: str,
        role: Role,
        *,
        name: str = "",
        farm_ids: Sequence[int] | None = None,
    ) -> User:
        username = normalize_username(username)
        now = self.clock()
        async with self.db.session() as s:
            if await s.get(TenantRow, tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id}")
            await self._check_farms(s, tenant_id, farm_ids)
            row = UserRow(
                tenant_id=tenant_id,
                username=username,
                name=name.strip()[:200],
                password_hash=password_hash,
                role=Role(role),
                farm_ids=sorted(set(farm_ids)) if farm_ids is not None else None,
                disabled=False,
                created_at=now,
                updated_at=now,
                password_changed_at=now,
                last_login_at=None,
            )
            try:
                async with s.begin_nested():
                    s.add(row)
                    await s.flush()
            except IntegrityError:
                raise Conflict(f"a user named {username!r} exists") from None
            return _user(row)

    async def count_users(self) -> int:
        async with self.db.session(readonly=True) as s:
            return int(await s.scalar(select(func.count()).select_from(UserRow)) or 0)

    async def get_user(self, user_id: int) -> User:
        async with self.db.session(readonly=True) as s:
            row = await s.get(UserRow, user_id)
            if row is None:
                raise NotFound(f"no user {user_id}")
            return _user(row)

    async def find_user(self, username: str) -> tuple[User, str] | None:
        """The user and its password hash, for signing in."""
        try:
            username = normalize_username(username)
        except Invalid:
            return None
        async with self.db.session(readonly=True) as s:
            row = await s.scalar(select(UserRow).where(UserRow.username == username))
            return None if row is None else (_user(row), row.password_hash)

    async def password_hash(self, user_id: int) -> str:
        async with self.db.session(readonly=True) as s:
            row = await s.get(UserRow, user_id)
            if row is None:
                raise NotFound(f"no user {user_id}")
            return row.password_hash

    async def list_users(self, tenant_id: int | None = None) -> list[User]:
        stmt = select(UserRow).order_by(UserRow.username)
        if tenant_id is not None:
            stmt = stmt.where(UserRow.tenant_id == tenant_id)
        async with self.db.session(readonly=True) as s:
            return [_user(r) for r in await s.scalars(stmt)]

    async def update_user(
        self,
        user_id: int,
        *,
        name: str | None = None,
        role: Role | None = None,
        farm_ids: Sequence[int] | None = None,
        all_farms: bool = False,
        disabled: bool | None = None,
        password_hash: str | None = None,
        keep_an_admin: bool = True,
    ) -> User:
        """Change what is given; `all_farms=True` lifts a farm scope. With
        `keep_an_admin`, a change that leaves the tenant without an enabled
        admin of every farm is refused (Conflict)."""
        now = self.clock()
        async with self.db.session() as s:
            row = await s.get(UserRow, user_id)
            if row is None:
                raise NotFound(f"no user {user_id}")
            if name is not None:
                row.name = name.strip()[:200]
            if role is not None:
                row.role = Role(role)
            if all_farms:
                row.farm_ids = None
            elif farm_ids is not None:
                await self._check_farms(s, row.tenant_id, farm_ids)
                row.farm_ids = sorted(set(farm_ids))
            if disabled is not None:
                row.disabled = disabled
            if password_hash is not None:
                row.password_hash = password_hash
                row.password_changed_at = now
            row.updated_at = now
            await s.flush()
            if keep_an_admin and not await self._has_admin(s, row.tenant_id):
                raise Conflict("the tenant would have no admin left: keep one enabled admin")
            return _user(row)

    async def _has_admin(self, s: Any, tenant_id: int) -> bool:
        count = await s.scalar(
            select(func.count())
            .select_from(UserRow)
            .where(
                UserRow.tenant_id == tenant_id,
                UserRow.role == Role.ADMIN,
                UserRow.disabled.is_(False),
                UserRow.farm_ids.is_(None),
            )
        )
        return bool(count)

    async def delete_user(self, user_id: int, *, keep_an_admin: bool = True) -> User:
        async with self.db.session() as s:
            row = await s.get(UserRow, user_id)
            if row is None:
                raise NotFound(f"no user {user_id}")
            user = _user(row)
            await s.execute(delete(SessionRow).where(SessionRow.user_id == user_id))
            await s.execute(delete(ApiTokenRow).where(ApiTokenRow.user_id == user_id))
            await s.delete(row)
            await s.flush()
            if keep_an_admin and not await self._has_admin(s, user.tenant_id):
                raise Conflict("the tenant would have no admin left: keep one enabled admin")
            return user

    async def signed_in(self, user_id: int, at: datetime) -> None:
        async with self.db.session() as s:
            await s.execute(update(UserRow).where(UserRow.id == user_id).values(last_login_at=at))

    # -- sessions -----------------------------------------------------------------

    async def create_session(
        self,
        session_id: str,
        user_id: int,
        csrf_token: str,
        expires_at: datetime,
        *,
        address: str | None = None,
        user_agent: str | None = None,
    ) -> Session:
        now = self.clock()
        row = SessionRow(
            id=session_id,
            user_id=user_id,
            csrf_token=csrf_token,
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
            address=_clip(address, 255),
            user_agent=_clip(user_agent, 300),
        )
        async with self.db.session() as s:
            s.add(row)
            await s.flush()
            return _session(row)

    async def get_session(self, session_id: str) -> tuple[Session, User] | None:
        async with self.db.session(readonly=True) as s:
            found = (
                await s.execute(
                    select(SessionRow, UserRow)
                    .join(UserRow, UserRow.id == SessionRow.user_id)
                    .where(SessionRow.id == session_id)
                )
            ).first()
            return None if found is None else (_session(found[0]), _user(found[1]))

    async def touch_session(self, session_id: str, at: datetime, expires_at: datetime) -> None:
        async with self.db.session() as s:
            await s.execute(
                update(SessionRow)
                .where(SessionRow.id == session_id)
                .values(last_seen_at=at, expires_at=expires_at)
            )

    async def delete_session(self, session_id: str) -> None:
        async with self.db.session() as s:
            await s.execute(delete(SessionRow).where(SessionRow.id == session_id))

    async def delete_sessions(self, user_id: int, *, keep: str | None = None) -> int:
        """End every session of the user (but `keep`); returns how many."""
        stmt = delete(SessionRow).where(SessionRow.user_id == user_id)
        if keep is not None:
            stmt = stmt.where(SessionRow.id != keep)
        async with self.db.session() as s:
            result = await s.execute(stmt)
            return int(getattr(result, "rowcount", 0) or 0)

    async def purge_sessions(self, now: datetime) -> int:
        async with self.db.session() as s:
            result = await s.execute(delete(SessionRow).where(SessionRow.expires_at <= now))
            return int(getattr(result, "rowcount", 0) or 0)

    # -- API tokens ---------------------------------------------------------------

    async def create_token(
        self,
        user_id: int,
        name: str,
        token_hash: str,
        prefix: str,
        role: Role,
        expires_at: datetime | None,
    ) -> ApiToken:
        name = name.strip()
        if not name or len(name) > 200:
            raise Invalid("token name must be 1-200 characters")
        row = ApiTokenRow(
            user_id=user_id,
            name=name,
            prefix=prefix,
            token_hash=token_hash,
            role=Role(role),
            created_at=self.clock(),
            expires_at=expires_at,
            last_used_at=None,
            revoked_at=None,
        )
        async with self.db.session() as s:
            if await s.get(UserRow, user_id) is None:
                raise NotFound(f"no user {user_id}")
            s.add(row)
            await s.flush()
            return _token(row)

    async def find_token(self, token_hash: str) -> tuple[ApiToken, User] | None:
        async with self.db.session(readonly=True) as s:
            found = (
                await s.execute(
                    select(ApiTokenRow, UserRow)
                    .join(UserRow, UserRow.id == ApiTokenRow.user_id)
                    .where(ApiTokenRow.token_hash == token_hash)
                )
            ).first()
            return None if found is None else (_token(found[0]), _user(found[1]))

    async def get_token(self, token_id: int) -> tuple[ApiToken, User]:
        async with self.db.session(readonly=True) as s:
            found = (
                await s.execute(
                    select(ApiTokenRow, UserRow)
                    .join(UserRow, UserRow.id == ApiTokenRow.user_id)
                    .where(ApiTokenRow.id == token_id)
                )
            ).first()
            if found is None:
                raise NotFound(f"no token {token_id}")
            return _token(found[0]), _user(found[1])

    async def list_tokens(
        self, tenant_id: int, *, user_id: int | None = None
    ) -> list[tuple[ApiToken, User]]:
        stmt = (
            select(ApiTokenRow, UserRow)
            .join(UserRow, UserRow.id == ApiTokenRow.user_id)
            .where(UserRow.tenant_id == tenant_id)
            .order_by(ApiTokenRow.id)
        )
        if user_id is not None:
            stmt = stmt.where(ApiTokenRow.user_id == user_id)
        async with self.db.session(readonly=True) as s:
            return [(_token(t), _user(u)) for t, u in (await s.execute(stmt)).all()]

    async def revoke_token(self, token_id: int) -> ApiToken:
        async with self.db.session() as s:
            row = await s.get(ApiTokenRow, token_id)
            if row is None:
                raise NotFound(f"no token {token_id}")
            if row.revoked_at is None:
                row.revoked_at = self.clock()
            await s.flush()
            return _token(row)

    async def token_used(self, token_id: int, at: datetime) -> None:
        async with self.db.session() as s:
            await s.execute(
                update(ApiTokenRow).where(ApiTokenRow.id == token_id).values(last_used_at=at)
            )

    # -- audit log ----------------------------------------------------------------

    async def add_audit(
        self,
        *,
        actor: str,
        via: str,
        action: str,
        tenant_id: int | None = None,
        user_id: int | None = None,
        target_type: str | None = None,
        target: str | None = None,
        status: int | None = None,
        address: str | None = None,
        detail: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEntry:
        row = AuditRow(
            time=at or self.clock(),
            tenant_id=tenant_id,
            user_id=user_id,
            actor=_clip(actor, 200) or "",
            via=via[:16],
            action=action[:64],
            target_type=_clip(target_type, 32),
            target=_clip(target, 255),
            status=status,
            address=_clip(address, 255),
            detail=dict(detail) if detail else None,
        )
        async with self.db.session() as s:
            s.add(row)
            await s.flush()
            return _audit(row)

    async def query_audit(
        self,
        *,
        tenant_id: int | None,
        include_untenanted: bool = False,
        target_type: str | None = None,
        target: str | None = None,
        user_id: int | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Newest first. `before_id` pages back through older entries."""
        if not 1 <= limit <= 1000:
            raise Invalid("limit must be 1..1000")
        stmt = select(AuditRow)
        if tenant_id is not None:
            own = AuditRow.tenant_id == tenant_id
            stmt = stmt.where(or_(own, AuditRow.tenant_id.is_(None)) if include_untenanted else own)
        conditions = []
        if target_type is not None:
            conditions.append(AuditRow.target_type == target_type)
        if target is not None:
            conditions.append(AuditRow.target == target)
        if user_id is not None:
            conditions.append(AuditRow.user_id == user_id)
        if action is not None:
            conditions.append(AuditRow.action == action)
        if since is not None:
            conditions.append(AuditRow.time >= since)
        if until is not None:
            conditions.append(AuditRow.time < until)
        if before_id is not None:
            conditions.append(AuditRow.id < before_id)
        if conditions:
            stmt = stmt.where(and_(*conditions))
        stmt = stmt.order_by(AuditRow.id.desc()).limit(limit)
        async with self.db.session(readonly=True) as s:
            return [_audit(r) for r in await s.scalars(stmt)]

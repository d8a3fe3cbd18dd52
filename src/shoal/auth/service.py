"""Signing in, sessions, API tokens and the first admin.

`AuthService.authenticate` turns what a request carries (a bearer token or a
session cookie) into a `Principal`, or raises `Unauthenticated` saying why. With
`enabled=False` (a node started without authentication) every request is the
node's own principal: admin of the default tenant. The audit log is kept either
way.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shoal.auth.hashing import TOKEN_PREFIX, Passwords, digest, new_password, new_secret, new_token
from shoal.auth.principal import Principal, Role, rank
from shoal.auth.store import ApiToken, AuthStore, Session, User
from shoal.store import Invalid
from shoal.store.schema import utcnow

log = logging.getLogger(__name__)

BOOTSTRAP_USERNAME = "admin"
DEMO_USERNAME = "admin@demo"
DEMO_PASSWORD = "shoal-demo"  # documented: `shoal demo` is a local trial


class Unauthenticated(Exception):
    """No valid credentials: the reason is safe to show (it names no secret)."""


class LoginRefused(Exception):
    """Wrong username or password, or a disabled account (one message for all)."""


class TooManyAttempts(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed sign-ins: try again in {int(retry_after) + 1} s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class AuthConfig:
    session_idle: timedelta = timedelta(hours=8)  # a session unused this long ends
    session_max: timedelta = timedelta(days=7)  # and any session after this long
    touch_every: timedelta = timedelta(minutes=1)  # how often use is written back
    min_password_length: int = 10
    failures_allowed: int = 10  # failed sign-ins per window, per address and per user
    failure_window: float = 900.0
    session_cookie: str = "shoal_session"
    csrf_cookie: str = "shoal_csrf"
    csrf_header: str = "X-CSRF-Token"


@dataclass(slots=True)
class _Attempts:
    """Failed sign-ins per key (address or username) within a sliding window."""

    allowed: int
    window: float
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def check(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            q = self._seen.get(key)
            if not q:
                continue
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.allowed:
                raise TooManyAttempts(q[0] + self.window - now)
            if not q:
                del self._seen[key]

    def failed(self, *keys: str) -> None:
        now = self.clock()
        for key in keys:
            self._seen.setdefault(key, deque()).append(now)
        if len(self._seen) > 10_000:  # a spray of addresses: forget the oldest
            for key in list(self._seen)[:5_000]:
                del self._seen[key]

    def clear(self, key: str) -> None:
        self._seen.pop(key, None)


@dataclass(frozen=True, slots=True)
class NewSession:
    secret: str  # goes into the cookie, never stored
    csrf_token: str
    session: Session
    user: User


@dataclass(frozen=True, slots=True)
class NewToken:
    secret: str  # shown once
    token: ApiToken


def _principal(user: User, via: str, role: Role, **extra: object) -> Principal:
    farms = frozenset(user.farm_ids) if user.farm_ids is not None else None
    return Principal(
        tenant_id=user.tenant_id,
        role=role,
        username=user.username,
        via=via,
        user_id=user.id,
        farm_ids=farms,
        **extra,  # type: ignore[arg-type]
    )


class AuthService:
    def __init__(
        self,
        store: AuthStore,
        *,
        enabled: bool = True,
        config: AuthConfig | None = None,
        passwords: Passwords | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.enabled = enabled
        self.config = config or AuthConfig()
        self.passwords = passwords or Passwords()
        self.clock = clock
        self.default_tenant_id: int | None = None
        self.demo = False
        self._attempts = _Attempts(self.config.failures_allowed, self.config.failure_window)

    # -- start-up -----------------------------------------------------------------

    async def bootstrap(self, default_tenant_id: int, *, demo: bool = False) -> str | None:
        """On a node without users, create the first admin of the default tenant
        and log its random password once; in demo mode, the documented demo admin
        instead. Returns the password it set, if any."""
        self.default_tenant_id = default_tenant_id
        self.demo = demo
        if not self.enabled:
            log.warning(
                "authentication is OFF: anyone who reaches the HTTP port is an admin "
                "(set SHOAL_AUTH=on, the default of `shoal serve`)"
            )
            return None
        await self.store.purge_sessions(self.clock())
        if demo:
            if await self.store.find_user(DEMO_USERNAME) is None:
                await self.create_user(
                    default_tenant_id, DEMO_USERNAME, DEMO_PASSWORD, Role.ADMIN, name="Demo admin"
                )
                await self.store.add_audit(
                    actor="system",
                    via="system",
                    action="create_user",
                    tenant_id=default_tenant_id,
                    target_type="users",
                    target=DEMO_USERNAME,
                    detail={"role": "admin", "reason": "demo"},
                )
            log.warning("demo: sign in as %s with password %s", DEMO_USERNAME, DEMO_PASSWORD)
            return DEMO_PASSWORD
        if await self.store.count_users():
            return None
        password = new_password()
        user = await self.create_user(
            default_tenant_id, BOOTSTRAP_USERNAME, password, Role.ADMIN, name="First admin"
        )
        await self.store.add_audit(
            actor="system",
            via="system",
            action="create_user",
            tenant_id=default_tenant_id,
            target_type="users",
            target=str(user.id),
            detail={"username": user.username, "role": "admin", "reason": "first start"},
        )
        log.warning(
            "no users yet: created admin %r with password %s (shown only now: sign in and "
            "change it, or add users with `shoal user add`)",
            BOOTSTRAP_USERNAME,
            password,
        )
        return password

    def local_principal(self) -> Principal:
        if self.default_tenant_id is None:
            raise Unauthenticated("the node has not started")
        return Principal(self.default_tenant_id, Role.ADMIN, "local", "local")

    # -- users --------------------------------------------------------------------

    def check_password(self, password: str) -> None:
        if len(password) < self.config.min_password_length:
            raise Invalid(
                f"password must have at least {self.config.min_password_length} characters"
            )
        if len(password) > 1024:
            raise Invalid("password must have at most 1024 characters")

    async def create_user(
        self,
        tenant_id: int,
        username: str,
        password: str,
        role: Role,
        *,
        name: str = "",
        farm_ids: Sequence[int] | None = None,
    ) -> User:
        self.check_password(password)
        hashed = await self.passwords.hash(password)
        return await self.store.create_user(
            tenant_id, username, hashed, role, name=name, farm_ids=farm_ids
        )

    async def set_password(self, user_id: int, password: str, *, keep_session: str | None) -> User:
        """A new password ends the user's other sessions."""
        self.check_password(password)
        hashed = await self.passwords.hash(password)
        user = await self.store.update_user(user_id, password_hash=hashed, keep_an_admin=False)
        await self.store.delete_sessions(user_id, keep=keep_session)
        return user

    async def verify_password(self, user_id: int, password: str) -> bool:
        return await self.passwords.verify(await self.store.password_hash(user_id), password)

    # -- signing in ---------------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        *,
        address: str | None = None,
        user_agent: str | None = None,
    ) -> NewSession:
        keys = [f"user:{username.strip().lower()}"]
        if address:
            keys.append(f"addr:{address}")
        self._attempts.check(*keys)
        found = await self.store.find_user(username)
        user, hashed = found if found is not None else (None, None)
        ok = await self.passwords.verify(hashed, password)
        if not ok or user is None or user.disabled:
            self._attempts.failed(*keys)
            raise LoginRefused("wrong username or password")
        self._attempts.clear(keys[0])
        if hashed is not None and self.passwords.needs_rehash(hashed):
            await self.store.update_user(
                user.id, password_hash=await self.passwords.hash(password), keep_an_admin=False
            )
        now = self.clock()
        secret, csrf = new_secret(), new_secret()
        session = await self.store.create_session(
            digest(secret),
            user.id,
            csrf,
            now + self.config.session_idle,
            address=address,
            user_agent=user_agent,
        )
        await self.store.signed_in(user.id, now)
        return NewSession(secret, csrf, session, user)

    async def logout(self, session_secret: str) -> None:
        await self.store.delete_session(digest(session_secret))

    async def authenticate(
        self, *, bearer: str | None = None, session_secret: str | None = None
    ) -> Principal:
        """The principal of a bearer token (tried first) or a session cookie."""
        if bearer is not None:
            return await self._token_principal(bearer)
        if session_secret:
            return await self._session_principal(session_secret)
        raise Unauthenticated("sign in, or send an API token as 'Authorization: Bearer …'")

    async def _token_principal(self, secret: str) -> Principal:
        if not secret.startswith(TOKEN_PREFIX):
            raise Unauthenticated("unknown API token")
        found = await self.store.find_token(digest(secret))
        if found is None:
            raise Unauthenticated("unknown API token")
        token, user = found
        now = self.clock()
        if token.revoked_at is not None:
            raise Unauthenticated("the API token was revoked")
        if token.expires_at is not None and token.expires_at <= now:
            raise Unauthenticated("the API token has expired")
        if user.disabled:
            raise Unauthenticated("the token's user is disabled")
        if token.last_used_at is None or now - token.last_used_at >= self.config.touch_every:
            await self.store.token_used(token.id, now)
        # a token never does more than its user may do now
        role = token.role if rank(token.role) <= rank(user.role) else user.role
        return _principal(user, "token", role, token_id=token.id)

    async def _session_principal(self, secret: str) -> Principal:
        session_id = digest(secret)
        found = await self.store.get_session(session_id)
        if found is None:
            raise Unauthenticated("not signed in, or the session ended")
        session, user = found
        now = self.clock()
        ends = min(session.expires_at, session.created_at + self.config.session_max)
        if ends <= now:
            await self.store.delete_session(session_id)
            raise Unauthenticated("the session has expired: sign in again")
        if user.disabled:
            raise Unauthenticated("the account is disabled")
        if now - session.last_seen_at >= self.config.touch_every:
            await self.store.touch_session(
                session_id,
                now,
                min(now + self.config.session_idle, session.created_at + self.config.session_max),
            )
        return _principal(
            user, "session", user.role, session_id=session_id, csrf_token=session.csrf_token
        )

    # -- API tokens ---------------------------------------------------------------

    async def create_token(
        self,
        user: User,
        name: str,
        *,
        role: Role | None = None,
        expires_at: datetime | None = None,
    ) -> NewToken:
        chosen = Role(role) if role is not None else user.role
        if rank(chosen) > rank(user.role):
            raise Invalid(f"a token of {user.username} can be at most {user.role}")
        if expires_at is not None and expires_at <= self.clock():
            raise Invalid("expires_at must be in the future")
        secret = new_token()
        token = await self.store.create_token(
            user.id, name, digest(secret), secret[: len(TOKEN_PREFIX) + 6], chosen, expires_at
        )
        return NewToken(secret, token)

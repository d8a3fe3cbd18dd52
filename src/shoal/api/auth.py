"""Signing in and out, users, API tokens and the audit log over HTTP.

Browsers sign in at `POST /api/v1/auth/login` (or the `/login` page) and get a
session cookie plus a CSRF token; machines send `Authorization: Bearer <token>`
with a token an admin created at `POST /api/v1/tokens`. Which role each route
needs is in `shoal.auth.policy`; everything here is also limited to the caller's
tenant (another tenant's user or token answers 404).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from shoal.api.inventory import store_problem
from shoal.api.problems import Problem
from shoal.auth.hashing import new_password
from shoal.auth.http import (
    auth_service,
    clear_session_cookies,
    client_address,
    note_audit,
    principal_of,
    same_origin,
    set_session_cookies,
)
from shoal.auth.principal import Principal, Role
from shoal.auth.service import AuthService, LoginRefused
from shoal.auth.store import ApiToken, AuditEntry, User
from shoal.store import StoreError

router = APIRouter(prefix="/api/v1", tags=["users and access"])


def _auth(request: Request) -> AuthService:
    auth = auth_service(request)
    if auth is None or not auth.enabled:
        raise Problem(404, "Authentication is off", "this node runs without user accounts")
    return auth


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "role": str(user.role),
        "tenant_id": user.tenant_id,
        "farm_ids": list(user.farm_ids) if user.farm_ids is not None else None,
        "disabled": user.disabled,
        "created_at": _iso(user.created_at),
        "updated_at": _iso(user.updated_at),
        "password_changed_at": _iso(user.password_changed_at),
        "last_login_at": _iso(user.last_login_at),
    }


def token_json(token: ApiToken, user: User, now: datetime) -> dict[str, Any]:
    expired = token.expires_at is not None and token.expires_at <= now
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "role": str(token.role),
        "user_id": user.id,
        "username": user.username,
        "created_at": _iso(token.created_at),
        "expires_at": _iso(token.expires_at),
        "last_used_at": _iso(token.last_used_at),
        "revoked_at": _iso(token.revoked_at),
        "active": token.revoked_at is None and not expired,
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "time": _iso(entry.time),
        "actor": entry.actor,
        "user_id": entry.user_id,
        "via": entry.via,
        "action": entry.action,
        "target_type": entry.target_type,
        "target": entry.target,
        "status": entry.status,
        "address": entry.address,
        "detail": dict(entry.detail) if entry.detail else None,
    }


def principal_json(p: Principal) -> dict[str, Any]:
    return {
        "username": p.username,
        "user_id": p.user_id,
        "role": str(p.role),
        "tenant_id": p.tenant_id,
        "farm_ids": sorted(p.farm_ids) if p.farm_ids is not None else None,
        "via": p.via,
        "token_id": p.token_id,
    }


# -- signing in -------------------------------------------------------------------------


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


@router.post("/auth/login", summary="Sign in: sets the session and CSRF cookies")
async def login(request: Request, body: LoginIn) -> JSONResponse:
    auth = _auth(request)
    if not same_origin(request):
        raise Problem(403, "Cross-site sign-in refused", "Origin is not this server")
    address = client_address(request)
    try:
        new = await auth.login(
            body.username,
            body.password,
            address=address,
            user_agent=request.headers.get("user-agent"),
        )
    except LoginRefused as exc:
        await auth.store.add_audit(
            actor=body.username.strip().lower()[:200],
            via="session",
            action="login_failed",
            tenant_id=None,
            status=401,
            address=address,
        )
        raise Problem(401, "Sign-in failed", str(exc)) from None
    await auth.store.add_audit(
        actor=new.user.username,
        via="session",
        action="login",
        tenant_id=new.user.tenant_id,
        user_id=new.user.id,
        target_type="users",
        target=str(new.user.id),
        status=200,
        address=address,
    )
    response = JSONResponse({"user": user_json(new.user), "csrf_token": new.csrf_token})
    set_session_cookies(response, request, new)
    return response


@router.post("/auth/logout", status_code=204, summary="Sign out: ends this session")
async def logout(request: Request) -> Response:
    auth = _auth(request)
    cookie = request.cookies.get(auth.config.session_cookie)
    if cookie:
        await auth.logout(cookie)
    response = Response(status_code=204)
    clear_session_cookies(response, request)
    return response


@router.get("/auth/me", summary="Who this request acts as")
async def me(request: Request) -> dict[str, Any]:
    p = principal_of(request)
    out = principal_json(p)
    auth = auth_service(request)
    if p.user_id is not None and auth is not None:
        out["user"] = user_json(await auth.store.get_user(p.user_id))
    return out


class PasswordIn(BaseModel):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


@router.post("/auth/password", status_code=204, summary="Change one's own password")
async def change_password(request: Request, body: PasswordIn) -> Response:
    auth = _auth(request)
    p = principal_of(request)
    if p.user_id is None or p.via != "session":
        raise Problem(403, "Sign in with a password first", "tokens cannot change passwords")
    if not await auth.verify_password(p.user_id, body.current_password):
        raise Problem(403, "Wrong password", "the current password does not match")
    try:
        await auth.set_password(p.user_id, body.new_password, keep_session=p.session_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    return Response(status_code=204)


# -- users (admin) -------------------------------------------------------------------------


def _unscoped_admin(request: Request) -> Principal:
    p = principal_of(request)
    if p.farm_scoped:
        raise Problem(403, "Forbidden", "an admin limited to some farms cannot manage users")
    return p


async def _own_user(request: Request, user_id: int) -> User:
    auth = _auth(request)
    try:
        user = await auth.store.get_user(user_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    if user.tenant_id != principal_of(request).tenant_id:
        raise Problem(404, "Not found", f"no user {user_id}")
    return user


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=200, description="login name, e.g. an e-mail")
    name: str = Field("", max_length=200)
    role: Role = Role.VIEWER
    password: str | None = Field(
        None, min_length=1, max_length=1024, description="generated (and answered once) if absent"
    )
    farm_ids: list[int] | None = Field(None, description="only these farms; null: every farm")


class UserPatch(BaseModel):
    name: str | None = Field(None, max_length=200)
    role: Role | None = None
    farm_ids: list[int] | None = Field(None, description="only these farms; [] is not allowed")
    all_farms: bool = Field(False, description="lift the farm limit")
    disabled: bool | None = None
    password: str | None = Field(None, min_length=1, max_length=1024)


@router.get("/users")
async def list_users(request: Request) -> list[dict[str, Any]]:
    auth = _auth(request)
    users = await auth.store.list_users(principal_of(request).tenant_id)
    return [user_json(u) for u in users]


@router.post("/users", status_code=201)
async def create_user(request: Request, body: UserIn) -> dict[str, Any]:
    auth = _auth(request)
    p = _unscoped_admin(request)
    if body.farm_ids is not None and not body.farm_ids:
        raise Problem(422, "Invalid", "farm_ids: give at least one farm, or null for all")
    password = body.password or new_password()
    try:
        user = await auth.create_user(
            p.tenant_id, body.username, password, body.role, name=body.name, farm_ids=body.farm_ids
        )
    except StoreError as exc:
        raise store_problem(exc) from None
    note_audit(
        request,
        created_id=user.id,
        username=user.username,
        role=str(user.role),
        farm_ids=body.farm_ids,
    )
    out = user_json(user)
    if body.password is None:
        out["password"] = password  # shown once
    return out


@router.get("/users/{user_id}")
async def get_user(request: Request, user_id: int) -> dict[str, Any]:
    return user_json(await _own_user(request, user_id))


@router.patch("/users/{user_id}")
async def patch_user(request: Request, user_id: int, body: UserPatch) -> dict[str, Any]:
    auth = _auth(request)
    p = _unscoped_admin(request)
    await _own_user(request, user_id)
    if body.farm_ids is not None and not body.farm_ids:
        raise Problem(422, "Invalid", "farm_ids: give at least one farm, or all_farms=true")
    if user_id == p.user_id and body.disabled:
        raise Problem(409, "Conflict", "you cannot disable yourself")
    changes = body.model_dump(exclude_unset=True, exclude={"password"})
    note_audit(request, changes=changes, password_reset=body.password is not None)
    try:
        user = await auth.store.update_user(
            user_id,
            name=body.name,
            role=body.role,
            farm_ids=body.farm_ids,
            all_farms=body.all_farms,
            disabled=body.disabled,
        )
        if body.password is not None:
            user = await auth.set_password(user_id, body.password, keep_session=None)
        if body.disabled:
            await auth.store.delete_sessions(user_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    return user_json(user)


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(request: Request, user_id: int) -> Response:
    auth = _auth(request)
    p = _unscoped_admin(request)
    user = await _own_user(request, user_id)
    if user_id == p.user_id:
        raise Problem(409, "Conflict", "you cannot delete yourself")
    note_audit(request, username=user.username)
    try:
        await auth.store.delete_user(user_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    return Response(status_code=204)


# -- API tokens (admin) ------------------------------------------------------------------


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="what uses it, e.g. 'SCADA'")
    user_id: int | None = Field(None, description="whose token (default: the caller)")
    role: Role | None = Field(None, description="at most the user's role (default: it)")
    expires_in_days: float | None = Field(None, gt=0, le=3650)
    expires_at: datetime | None = None


@router.get("/tokens")
async def list_tokens(request: Request, user_id: int | None = None) -> list[dict[str, Any]]:
    auth = _auth(request)
    now = auth.clock()
    found = await auth.store.list_tokens(principal_of(request).tenant_id, user_id=user_id)
    return [token_json(t, u, now) for t, u in found]


@router.post("/tokens", status_code=201, summary="Create an API token (answered once)")
async def create_token(request: Request, body: TokenIn) -> dict[str, Any]:
    auth = _auth(request)
    p = _unscoped_admin(request)
    owner_id = body.user_id if body.user_id is not None else p.user_id
    if owner_id is None:
        raise Problem(422, "Invalid", "give user_id")
    owner = await _own_user(request, owner_id)
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    if body.expires_in_days is not None:
        expires_at = auth.clock() + timedelta(days=body.expires_in_days)
    try:
        new = await auth.create_token(owner, body.name, role=body.role, expires_at=expires_at)
    except StoreError as exc:
        raise store_problem(exc) from None
    note_audit(
        request,
        created_id=new.token.id,
        name=new.token.name,
        role=str(new.token.role),
        owner=owner.username,
    )
    out = token_json(new.token, owner, auth.clock())
    out["token"] = new.secret
    return out


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke an API token")
async def revoke_token(request: Request, token_id: int) -> Response:
    auth = _auth(request)
    _unscoped_admin(request)
    try:
        token, owner = await auth.store.get_token(token_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    if owner.tenant_id != principal_of(request).tenant_id:
        raise Problem(404, "Not found", f"no token {token_id}")
    note_audit(request, name=token.name, owner=owner.username)
    await auth.store.revoke_token(token_id)
    return Response(status_code=204)


# -- the audit log -------------------------------------------------------------------------


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Problem(400, "Invalid time", f"{text!r} is not ISO 8601") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.get("/audit", summary="Who did what to which device, user or token; newest first")
async def audit_log(
    request: Request,
    device: str | None = None,
    target_type: str | None = None,
    target: str | None = None,
    user_id: int | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """`device=<endpoint>` is short for `target_type=devices&target=<endpoint>`;
    page back with `before_id=<the last id seen>`."""
    auth = auth_service(request)
    if auth is None:
        raise Problem(404, "No audit log", "this app keeps none")
    if device is not None:
        target_type, target = "devices", device
    try:
        entries = await auth.store.query_audit(
            tenant_id=principal_of(request).tenant_id,
            target_type=target_type,
            target=target,
            user_id=user_id,
            action=action,
            since=_time(since),
            until=_time(until),
            before_id=before_id,
            limit=limit,
        )
    except StoreError as exc:
        raise store_problem(exc) from None
    return [audit_json(e) for e in entries]

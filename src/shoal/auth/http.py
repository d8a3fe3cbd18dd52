"""Authentication on the HTTP side: the app-wide `authorize` dependency, the
principal accessors routers use, session cookies, and the audit middleware.

Every route of the app depends on `authorize` (create_app passes it to FastAPI),
so a router added later is covered too. It finds the principal (bearer token
first, then the session cookie), checks the CSRF header on cookie-authenticated
changes, checks the role `shoal.auth.policy` asks for, and leaves the principal
in `request.state.principal`, where `tenant_of(request)` reads it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.api.problems import Problem, problem_response
from shoal.auth import policy
from shoal.auth.principal import SAFE_METHODS, Principal, Role
from shoal.auth.service import AuthService, NewSession, TooManyAttempts, Unauthenticated

log = logging.getLogger(__name__)


class LoginRequired(Exception):
    """No (valid) credentials: 401 for the API, the login page for a browser.
    `stale_cookie`: a session cookie came along, and is cleared."""

    def __init__(self, reason: str, *, stale_cookie: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stale_cookie = stale_cookie


# -- the principal of a request ------------------------------------------------------


def auth_service(request: Request) -> AuthService | None:
    auth: AuthService | None = getattr(request.app.state, "auth", None)
    return auth


def _local(request: Request) -> Principal:
    auth = auth_service(request)
    if auth is not None and auth.default_tenant_id is not None:
        return auth.local_principal()
    tenant_id: int = request.app.state.tenant_id
    return Principal(tenant_id, Role.ADMIN, "local", "local")


def principal_of(request: Request) -> Principal:
    """Who the request acts as. Outside `authorize` (a route without it) only a
    node without authentication has one: its own."""
    found: Principal | None = getattr(request.state, "principal", None)
    if found is not None:
        return found
    auth = auth_service(request)
    if auth is not None and auth.enabled:
        raise LoginRequired("not signed in")
    return _local(request)


def tenant_of(request: Request) -> int:
    """The tenant every query of this request is filtered by."""
    return principal_of(request).tenant_id


def farm_scope(request: Request) -> frozenset[int] | None:
    """The farms the principal is limited to, or None for all of its tenant."""
    return principal_of(request).farm_ids


def sees_farm(request: Request, farm_id: int | None) -> bool:
    return principal_of(request).sees_farm(farm_id)


def note_audit(request: Request, **detail: Any) -> None:
    """Add details (no secrets) to the audit entry of this request."""
    current: dict[str, Any] = getattr(request.state, "audit_detail", None) or {}
    current.update(detail)
    request.state.audit_detail = current


# -- the dependency ----------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise LoginRequired("use 'Authorization: Bearer <API token>'")
    return value.strip()


def _lwm2m_path(params: Mapping[str, Any]) -> str | None:
    if "path" in params:
        return str(params["path"])
    if "object_id" in params:
        return str(params["object_id"])
    return None


async def authorize(request: Request) -> None:
    """The app-wide dependency: authenticate, check CSRF and the route's role."""
    auth = auth_service(request)
    if auth is None or not auth.enabled:
        request.state.principal = _local(request)
        return
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    need = policy.required(request.method, template, _lwm2m_path(request.path_params))
    if need == policy.PUBLIC:
        return
    bearer = _bearer(request)
    cookie = request.cookies.get(auth.config.session_cookie)
    try:
        principal = await auth.authenticate(bearer=bearer, session_secret=cookie)
    except Unauthenticated as exc:
        stale = bearer is None and cookie is not None
        raise LoginRequired(str(exc), stale_cookie=stale) from None
    request.state.principal = principal
    if principal.via == "session" and request.method not in SAFE_METHODS:
        sent = request.headers.get(auth.config.csrf_header, "")
        if not sent or not hmac.compare_digest(sent, principal.csrf_token or ""):
            raise Problem(
                403,
                "CSRF check failed",
                f"a change made with a session cookie needs the {auth.config.csrf_header} "
                f"header, set to the value of the {auth.config.csrf_cookie} cookie",
            )
    if not principal.allows(need):
        raise Problem(
            403,
            "Forbidden",
            f"this needs the {need} role; {principal.username} is {principal.role}",
        )


# -- cookies -----------------------------------------------------------------------------


def set_session_cookies(response: Response, request: Request, new: NewSession) -> None:
    """The session id (HttpOnly) and the CSRF token (readable by the page's JS),
    both SameSite=Lax, and Secure whenever the request came over HTTPS."""
    auth = auth_service(request)
    assert auth is not None
    secure = request.url.scheme == "https"
    cfg = auth.config
    response.set_cookie(
        cfg.session_cookie, new.secret, httponly=True, samesite="lax", secure=secure, path="/"
    )
    response.set_cookie(
        cfg.csrf_cookie, new.csrf_token, httponly=False, samesite="lax", secure=secure, path="/"
    )


def clear_session_cookies(response: Response, request: Request) -> None:
    auth = auth_service(request)
    if auth is None:
        return
    secure = request.url.scheme == "https"
    for name, http_only in ((auth.config.session_cookie, True), (auth.config.csrf_cookie, False)):
        response.delete_cookie(name, path="/", secure=secure, httponly=http_only, samesite="lax")


def client_address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def same_origin(request: Request) -> bool:
    """A browser's Origin (or Referer) names this server's host, or none was sent.
    Only the host and port are compared: behind a TLS proxy the scheme differs."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True
    host = request.headers.get("host") or request.url.netloc
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


# -- the audit log -----------------------------------------------------------------------


def _target(template: str, params: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """`/api/v1/farms/{farm_id}/enclosures` -> ("farms", "3"); devices by endpoint."""
    if "endpoint" in params:
        return "devices", str(params["endpoint"])
    parts = [p for p in template.removeprefix("/api/v1/").split("/") if p]
    kind: str | None = None
    for part in parts:
        if part.startswith("{"):
            key = part.strip("{}").split(":", 1)[0]
            return kind, str(params.get(key)) if key in params else None
        kind = part
    return kind, None


class AuditMiddleware:
    """Writes one audit entry for every change a principal asks for (any method
    but GET/HEAD/OPTIONS), refused ones included, before the answer's last byte
    goes out: a client that has its answer finds the entry."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        status: int | None = None
        done = False

        async def record() -> None:
            nonlocal done
            if done:
                return
            done = True
            try:
                await _record(scope, status)
            except Exception:
                log.exception("audit entry for %s %s not written", scope["method"], scope["path"])

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await record()
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            status = status or 500
            await record()
            raise


async def _record(scope: Scope, status: int | None) -> None:
    state = scope.get("state") or {}
    principal: Principal | None = state.get("principal")
    if principal is None:
        return
    app = scope.get("app")
    auth: AuthService | None = getattr(getattr(app, "state", None), "auth", None)
    if auth is None:
        return
    route = scope.get("route")
    template: str = getattr(route, "path", None) or scope["path"]
    params: dict[str, Any] = dict(scope.get("path_params") or {})
    target_type, target = _target(template, params)
    detail: dict[str, Any] = {"method": scope["method"], "route": template}
    params.pop("endpoint", None)
    if params:
        detail["params"] = {k: str(v) for k, v in params.items()}
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        detail["query"] = query[:500]
    extra = state.get("audit_detail")
    if extra:
        detail.update(extra)
    if principal.token_id is not None:
        detail["token_id"] = principal.token_id
    client = scope.get("client")
    await auth.store.add_audit(
        actor=principal.username,
        via=principal.via,
        action=getattr(route, "name", None) or f"{scope['method'].lower()} {template}",
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        target_type=target_type,
        target=target,
        status=status,
        address=client[0] if client else None,
        detail=detail,
    )


class SecurityHeaders:
    """Headers every answer gets: no sniffing, no framing, no referrer to other
    sites, and HSTS over HTTPS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                for name, value in (
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ):
                    if name not in names:
                        headers.append((name, value))
                if https and b"strict-transport-security" not in names:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


# -- installing ---------------------------------------------------------------------------


def install(app: FastAPI) -> None:
    """Error answers for missing sign-in (401, or the login page for a browser)
    and for too many failed sign-ins (429), plus the audit and header middleware."""

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        path = request.url.path
        if not path.startswith("/api/") and request.method in ("GET", "HEAD"):
            target = path + (f"?{request.url.query}" if request.url.query else "")
            response: Response = RedirectResponse(
                "/login?next=" + quote(target, safe=""), status_code=303
            )
        else:
            response = problem_response(401, "Not signed in", exc.reason)
            response.headers["WWW-Authenticate"] = 'Bearer realm="shoal"'
        if exc.stale_cookie:
            clear_session_cookies(response, request)
        return response

    @app.exception_handler(TooManyAttempts)
    async def _too_many(request: Request, exc: TooManyAttempts) -> JSONResponse:
        response = problem_response(429, "Too many attempts", str(exc))
        response.headers["Retry-After"] = str(int(exc.retry_after) + 1)
        return response

    app.add_middleware(AuditMiddleware)
    app.add_middleware(SecurityHeaders)

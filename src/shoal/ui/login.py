"""The sign-in page and signing out, for browsers.

Plain HTML forms that work without JavaScript: `/login` posts the username and
password (URL-encoded, parsed here: no multipart dependency) and answers with a
redirect and the session cookies; `/logout` posts the CSRF token as a hidden
field. These routes sit outside the page router, whose pages need a session.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from shoal.auth.http import (
    auth_service,
    clear_session_cookies,
    client_address,
    same_origin,
    set_session_cookies,
)
from shoal.auth.service import DEMO_PASSWORD, DEMO_USERNAME, LoginRefused, TooManyAttempts
from shoal.ui.routes import templates

router = APIRouter(include_in_schema=False)

_MAX_FORM = 16_384


def safe_next(target: str | None) -> str:
    """Only paths of this site: never `//elsewhere` or `https://elsewhere`."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM:
        return {}
    if request.headers.get("content-type", "").startswith("application/json"):
        import json

        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def _page(request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
    auth = auth_service(request)
    context.setdefault("next", "/")
    context.setdefault("username", "")
    context.setdefault("error", "")
    if auth is not None and auth.demo:
        context["demo"] = {"username": DEMO_USERNAME, "password": DEMO_PASSWORD}
    response = templates.TemplateResponse(request, "login.html", context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    auth = auth_service(request)
    target = safe_next(next)
    if auth is None or not auth.enabled:
        return RedirectResponse(target, status_code=303)
    cookie = request.cookies.get(auth.config.session_cookie)
    if cookie:
        try:
            await auth.authenticate(session_secret=cookie)
        except Exception:
            pass
        else:
            return RedirectResponse(target, status_code=303)
    return _page(request, next=target)


@router.post("/login")
async def login_submit(request: Request) -> Response:
    auth = auth_service(request)
    if auth is None or not auth.enabled:
        return RedirectResponse("/", status_code=303)
    form = await _form(request)
    target = safe_next(form.get("next"))
    username = form.get("username", "").strip()
    if not same_origin(request):
        return _page(request, 403, next=target, error="Sign-in from another site was refused.")
    if not username or not form.get("password"):
        return _page(
            request, 400, next=target, username=username, error="Enter username and password."
        )
    address = client_address(request)
    try:
        new = await auth.login(
            username,
            form["password"],
            address=address,
            user_agent=request.headers.get("user-agent"),
        )
    except TooManyAttempts as exc:
        return _page(request, 429, next=target, username=username, error=f"{exc}.")
    except LoginRefused:
        await auth.store.add_audit(
            actor=username.lower()[:200],
            via="session",
            action="login_failed",
            status=401,
            address=address,
        )
        return _page(
            request, 401, next=target, username=username, error="Wrong username or password."
        )
    await auth.store.add_audit(
        actor=new.user.username,
        via="session",
        action="login",
        tenant_id=new.user.tenant_id,
        user_id=new.user.id,
        target_type="users",
        target=str(new.user.id),
        status=303,
        address=address,
    )
    response = RedirectResponse(target, status_code=303)
    set_session_cookies(response, request, new)
    return response


@router.post("/logout")
async def logout_submit(request: Request) -> Response:
    """Ends the session when the form carries its CSRF token (or the header does)."""
    auth = auth_service(request)
    response = RedirectResponse("/login", status_code=303)
    if auth is None or not auth.enabled:
        return RedirectResponse("/", status_code=303)
    cookie = request.cookies.get(auth.config.session_cookie)
    if cookie:
        form = await _form(request)
        sent = form.get("csrf") or request.headers.get(auth.config.csrf_header, "")
        try:
            principal = await auth.authenticate(session_secret=cookie)
        except Exception:
            principal = None
        if principal is not None:
            if not sent or not hmac.compare_digest(sent, principal.csrf_token or ""):
                return Response("CSRF check failed", status_code=403, media_type="text/plain")
            await auth.logout(cookie)
            await auth.store.add_audit(
                actor=principal.username,
                via="session",
                action="logout",
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                target_type="users",
                target=str(principal.user_id),
                status=303,
                address=client_address(request),
            )
    clear_session_cookies(response, request)
    return response

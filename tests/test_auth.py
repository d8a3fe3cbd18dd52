"""Users, roles, sessions, API tokens, tenants and the audit log, through HTTP
against a whole node with authentication on (and a real browser for the login
page, when Chromium is there)."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pki import make_pki
from shoal.auth import DEMO_PASSWORD, DEMO_USERNAME, Role, User, policy
from shoal.auth import cli as auth_cli
from shoal.auth.hashing import digest, new_token
from shoal.auth.service import TooManyAttempts, _Attempts
from shoal.node import NodeConfig, ShoalNode
from shoal.sim import DeviceConfig, SimDevice
from test_ui import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    async_api,
    needs_browser,
    needs_playwright,
    shot,
)

PASSWORD = "correct horse battery"
# the security store refuses NoSec devices by default; these tests use NoSec ones
NOSEC = {"secure": False} if "secure" in {f.name for f in fields(NodeConfig)} else {}


def auth_config(data_dir: Path, **kw: Any) -> NodeConfig:
    return NodeConfig(
        coap_port=0, http_port=0, data_dir=str(data_dir), auth=True, **{**NOSEC, **kw}
    )


async def eventually(check: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def add_user(
    node: ShoalNode,
    username: str,
    role: Role,
    *,
    tenant: str | None = None,
    farm_ids: list[int] | None = None,
) -> User:
    t = await node.inventory.ensure_tenant(tenant or node.config.fleet.tenant)
    return await node.auth.create_user(t.id, username, PASSWORD, role, farm_ids=farm_ids)


async def token_for(node: ShoalNode, user: User) -> str:
    return (await node.auth.create_token(user, f"{user.username} test")).secret


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ShoalNode]:
    n = ShoalNode(auth_config(tmp_path))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@dataclass
class Fleet:
    node: ShoalNode
    http: httpx.AsyncClient
    tokens: dict[str, str]  # role or name -> bearer token
    users: dict[str, User]
    farm: dict[str, Any]
    enclosure: dict[str, Any]
    device: SimDevice

    async def as_(self, who: str, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = {**bearer(self.tokens[who]), **kw.pop("headers", {})}
        return await self.http.request(method, url, headers=headers, **kw)


@pytest.fixture
async def fleet(node: ShoalNode) -> AsyncIterator[Fleet]:
    """Tenant `default` with a viewer, an operator and an admin, a farm, a pen and a
    registered sensor in it; tenant `acme` with an admin of its own."""
    users = {
        "viewer": await add_user(node, "vera@fjord.no", Role.VIEWER),
        "operator": await add_user(node, "otto@fjord.no", Role.OPERATOR),
        "admin": await add_user(node, "ada@fjord.no", Role.ADMIN),
        "acme": await add_user(node, "boss@acme.example", Role.ADMIN, tenant="acme"),
    }
    tokens = {k: await token_for(node, u) for k, u in users.items()}
    async with httpx.AsyncClient(base_url=node.http_url, timeout=30) as http:
        h = bearer(tokens["admin"])
        farm = (await http.post("/api/v1/farms", json={"name": "Fjord"}, headers=h)).json()
        enc = await http.post(
            f"/api/v1/farms/{farm['id']}/enclosures",
            json={"name": "Pen 1", "code": "ENC-7K3M"},
            headers=h,
        )
        assert enc.status_code == 201, enc.text
        device = SimDevice(
            DeviceConfig("probe-1", profile="water", enclosure="ENC-7K3M"), node.server.address
        )
        assert await device.start(), "the simulated device did not register"
        f = Fleet(node, http, tokens, users, farm, enc.json(), device)

        async def placed() -> bool:
            r = await f.as_("admin", "GET", "/api/v1/devices/probe-1")
            return r.status_code == 200 and r.json()["enclosure_id"] == enc.json()["id"]

        await eventually(placed)
        try:
            yield f
        finally:
            await device.stop(timeout=2.0)


# -- the policy table -----------------------------------------------------------------------


def test_policy_names_the_role_of_each_kind_of_route() -> None:
    need = policy.required
    dev = "/api/v1/devices/{endpoint}"
    assert need("GET", "/api/v1/farms") == Role.VIEWER
    assert need("POST", "/api/v1/farms") == Role.ADMIN
    assert need("GET", dev + "/data/{path:path}", "3/0/9") == Role.VIEWER
    assert need("PUT", dev + "/data/{path:path}", "3/0/13") == Role.OPERATOR
    assert need("POST", dev + "/execute/{path:path}", "3/0/4") == Role.OPERATOR
    assert need("PATCH", dev) == Role.OPERATOR  # manual assignment
    assert need("POST", "/api/v1/alerts/{alert_id}/acknowledge") == Role.OPERATOR
    assert need("POST", "/api/v1/alert-rules") == Role.ADMIN
    # who may talk to the device, and how: admins only; object 0 holds keys
    assert need("PUT", dev + "/data/{path:path}", "2/0/2") == Role.ADMIN
    assert need("POST", dev + "/objects/{object_id}", "1") == Role.ADMIN
    assert need("GET", dev + "/data/{path:path}", "0/0") == Role.ADMIN
    assert need("GET", dev + "/data/{path:path}", "1/0/1") == Role.VIEWER
    for admin_only in ("/api/v1/users", "/api/v1/tokens", "/api/v1/audit", "/api/v1/security/x"):
        assert need("GET", admin_only) == Role.ADMIN, admin_only
    assert need("POST", "/api/v1/firmware/campaigns/{campaign_id}/start") == Role.ADMIN
    for security in ("/credentials", "/credentials/{purpose}/rotate", "/access-control"):
        assert need("GET", dev + security) == Role.ADMIN, security
        assert need("PUT", dev + security) == Role.ADMIN, security
    assert need("GET", "/api/v1/firmware/download/{token}") == policy.PUBLIC
    assert need("POST", "/api/v1/auth/login") == policy.PUBLIC
    assert need("POST", "/api/v1/auth/logout") == Role.VIEWER
    assert need("DELETE", "/api/v1/something/new") == Role.ADMIN  # closed until named


def test_failed_sign_ins_are_limited() -> None:
    now = [0.0]
    attempts = _Attempts(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        attempts.check("addr:1.2.3.4")
        attempts.failed("addr:1.2.3.4")
    with pytest.raises(TooManyAttempts):
        attempts.check("addr:1.2.3.4")
    attempts.check("addr:5.6.7.8")  # another address is not held up
    now[0] = 61.0
    attempts.check("addr:1.2.3.4")  # the window moved on


# -- the first admin, the demo admin, the command line ---------------------------------------


async def test_first_start_creates_an_admin_and_logs_its_password_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.auth")
    first = ShoalNode(auth_config(tmp_path))
    await first.start()
    try:
        said = [r.getMessage() for r in caplog.records if "created admin" in r.getMessage()]
        assert len(said) == 1, said
        password = re.search(r"with password (\S+)", said[0])
        assert password is not None
        async with httpx.AsyncClient(base_url=first.http_url) as http:
            assert (await http.get("/api/v1/farms")).status_code == 401
            ok = await http.post(
                "/api/v1/auth/login", json={"username": "admin", "password": password.group(1)}
            )
            assert ok.status_code == 200, ok.text
            assert ok.json()["user"]["role"] == "admin"
    finally:
        await first.stop()
    caplog.clear()
    again = ShoalNode(auth_config(tmp_path))
    await again.start()
    try:
        assert not [r for r in caplog.records if "created admin" in r.getMessage()]
        assert len(await again.auth.store.list_users()) == 1
    finally:
        await again.stop()


async def test_demo_lets_a_newcomer_in_with_the_documented_password(tmp_path: Path) -> None:
    node = ShoalNode(NodeConfig(coap_port=0, http_port=0, data_dir=str(tmp_path), demo=True))
    await node.start()
    try:
        async with httpx.AsyncClient(base_url=node.http_url) as http:
            page = await http.get("/login")
            assert DEMO_USERNAME in page.text and DEMO_PASSWORD in page.text
            ok = await http.post(
                "/api/v1/auth/login", json={"username": DEMO_USERNAME, "password": DEMO_PASSWORD}
            )
            assert ok.status_code == 200
            assert (await http.get("/api/v1/farms")).status_code == 200
    finally:
        await node.stop()


async def test_cli_adds_users_and_tokens(tmp_path: Path) -> None:
    def run(*argv: str, stdin: str = "") -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        auth_cli.add_parsers(sub)
        args = parser.parse_args([*argv, "--data-dir", str(tmp_path)])
        out = io.StringIO()
        return auth_cli.run(args, stdin=io.StringIO(stdin), out=out), out.getvalue()

    code, out = await asyncio.to_thread(run, "user", "add", "Ola@Fjord.no", "--role", "operator")
    assert code == 0, out
    generated = re.search(r"password: (\S+)", out)
    assert generated is not None
    code, _ = await asyncio.to_thread(
        run, "user", "add", "ci@fjord.no", "--role", "admin", "--password-stdin", stdin=PASSWORD
    )
    assert code == 0
    code, out = await asyncio.to_thread(run, "token", "add", "ci@fjord.no", "--name", "CI")
    assert code == 0
    token = out.strip().splitlines()[-1]
    code, listed = await asyncio.to_thread(run, "user", "list")
    assert "ola@fjord.no\toperator\tdefault" in listed

    node = ShoalNode(auth_config(tmp_path))
    await node.start()
    try:
        async with httpx.AsyncClient(base_url=node.http_url) as http:
            me = await http.get("/api/v1/auth/me", headers=bearer(token))
            assert me.json()["username"] == "ci@fjord.no" and me.json()["role"] == "admin"
            ola = await http.post(
                "/api/v1/auth/login",
                json={"username": "OLA@fjord.no", "password": generated.group(1)},
            )
            assert ola.status_code == 200
            audit = await http.get("/api/v1/audit", headers=bearer(token))
            assert {"create_user", "create_token"} <= {e["action"] for e in audit.json()}
    finally:
        await node.stop()


# -- sessions ------------------------------------------------------------------------------


async def test_login_sets_secure_cookies_csrf_guards_changes_and_logout_ends_it(
    node: ShoalNode,
) -> None:
    await add_user(node, "ada@fjord.no", Role.ADMIN)
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        wrong = await http.post(
            "/api/v1/auth/login", json={"username": "ada@fjord.no", "password": "nope"}
        )
        assert wrong.status_code == 401
        assert "shoal_session" not in wrong.cookies
        ok = await http.post(
            "/api/v1/auth/login", json={"username": "ADA@fjord.no", "password": PASSWORD}
        )
        assert ok.status_code == 200, ok.text
        cookies = ok.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("shoal_session="))
        csrf_cookie = next(c for c in cookies if c.startswith("shoal_csrf="))
        assert "httponly" in session.lower() and "samesite=lax" in session.lower()
        assert "secure" not in session.lower()  # plain HTTP here; see the HTTPS test
        assert "httponly" not in csrf_cookie.lower()  # the page's JS reads it
        csrf = ok.json()["csrf_token"]
        assert http.cookies["shoal_csrf"] == csrf

        me = await http.get("/api/v1/auth/me")
        assert me.status_code == 200 and me.json()["via"] == "session"
        # a change made with the cookie alone is refused: the CSRF header is missing
        forged = await http.post("/api/v1/farms", json={"name": "Forged"})
        assert forged.status_code == 403 and "CSRF" in forged.json()["title"]
        wrong_token = await http.post(
            "/api/v1/farms", json={"name": "Forged"}, headers={"X-CSRF-Token": "x" * 43}
        )
        assert wrong_token.status_code == 403
        made = await http.post(
            "/api/v1/farms", json={"name": "Fjord"}, headers={"X-CSRF-Token": csrf}
        )
        assert made.status_code == 201, made.text

        out = await http.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        after = await http.get("/api/v1/auth/me")
        assert after.status_code == 401
        assert after.headers["www-authenticate"].startswith("Bearer")
        assert after.headers["content-type"].startswith("application/problem+json")
    entries = await node.auth.store.query_audit(tenant_id=None, limit=20)
    actions = [e.action for e in entries]
    assert {"login", "login_failed", "create_farm"} <= set(actions)
    refused = [e for e in entries if e.action == "create_farm" and e.status == 403]
    assert len(refused) == 2 and refused[0].actor == "ada@fjord.no"


async def test_https_when_a_certificate_is_configured(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    node = ShoalNode(
        auth_config(
            tmp_path / "data",
            http_cert=pki.path("server.pem"),
            http_key=pki.path("server.key"),
        )
    )
    await node.start()
    try:
        assert node.http_url.startswith("https://")
        await add_user(node, "ada@fjord.no", Role.ADMIN)
        trust = ssl.create_default_context(cafile=pki.path("ca.pem"))
        async with httpx.AsyncClient(base_url=node.http_url, verify=trust) as http:
            ok = await http.post(
                "/api/v1/auth/login", json={"username": "ada@fjord.no", "password": PASSWORD}
            )
            assert ok.status_code == 200
            for cookie in ok.headers.get_list("set-cookie"):
                assert "; secure" in cookie.lower(), cookie
            assert ok.headers["strict-transport-security"].startswith("max-age=")
            page = await http.get("/")
            assert page.status_code == 200 and "ada@fjord.no" in page.text
        plain = node.http_url.replace("https://", "http://")
        async with httpx.AsyncClient(base_url=plain) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get("/login")
    finally:
        await node.stop()


# -- roles ---------------------------------------------------------------------------------


async def test_each_role_allowed_and_refused(fleet: Fleet) -> None:
    f = fleet
    farm_id, enc_id = f.farm["id"], f.enclosure["id"]
    read = "/api/v1/devices/probe-1/data/3/0/9"
    write = "/api/v1/devices/probe-1/data/3/0/13"
    execute = "/api/v1/devices/probe-1/execute/3/0/4"
    observe = "/api/v1/devices/probe-1/observe/3303/0/5700"
    new_user = {"username": "new@fjord.no", "role": "viewer"}

    # viewer: reads, nothing else
    for url in ("/api/v1/farms", f"/api/v1/enclosures/{enc_id}", "/api/v1/devices", read):
        r = await f.as_("viewer", "GET", url)
        assert r.status_code == 200, (url, r.text)
    for method, url, body in (
        ("PUT", write, {"value": "2026-01-01T00:00:00Z"}),
        ("POST", execute, {}),
        ("POST", observe, None),
        ("PATCH", "/api/v1/devices/probe-1", {"enclosure_id": enc_id}),
        ("POST", "/api/v1/farms", {"name": "X"}),
        ("POST", "/api/v1/users", new_user),
    ):
        r = await f.as_("viewer", method, url, json=body)
        assert r.status_code == 403, (method, url, r.status_code, r.text)
        assert "operator" in r.json()["detail"] or "admin" in r.json()["detail"]
    for url in ("/api/v1/users", "/api/v1/tokens", "/api/v1/audit"):
        assert (await f.as_("viewer", "GET", url)).status_code == 403, url

    # operator: device operations and placement, but no users, tokens or structure
    r = await f.as_("operator", "PUT", write, json={"value": "2026-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    r = await f.as_("operator", "POST", observe)
    assert r.status_code == 200 and r.json()["ok"], r.text
    r = await f.as_("operator", "PATCH", "/api/v1/devices/probe-1", json={"enclosure_id": enc_id})
    assert r.status_code == 200, r.text
    for method, url, body in (
        ("POST", "/api/v1/users", new_user),
        ("POST", "/api/v1/tokens", {"name": "mine"}),
        ("POST", "/api/v1/farms", {"name": "X"}),
        ("DELETE", f"/api/v1/farms/{farm_id}", None),
        ("PUT", "/api/v1/devices/probe-1/data/1/0/1", {"value": 60}),  # the Server object
    ):
        r = await f.as_("operator", method, url, json=body)
        assert r.status_code == 403, (method, url, r.status_code, r.text)
    assert (await f.as_("operator", "GET", "/api/v1/users")).status_code == 403

    # admin: users, tokens, structure, the audit log
    made = await f.as_("admin", "POST", "/api/v1/users", json=new_user)
    assert made.status_code == 201, made.text
    assert len(made.json()["password"]) >= 16  # generated, answered once
    assert (await f.as_("admin", "GET", "/api/v1/users")).status_code == 200
    tok = await f.as_("admin", "POST", "/api/v1/tokens", json={"name": "SCADA"})
    assert tok.status_code == 201 and tok.json()["token"].startswith("shoal_")
    assert (await f.as_("admin", "POST", "/api/v1/farms", json={"name": "X"})).status_code == 201
    assert (await f.as_("admin", "GET", "/api/v1/audit")).status_code == 200

    # a token acts with at most its user's role, even if its user is demoted later
    viewer_tok = await f.as_(
        "admin", "POST", "/api/v1/tokens", json={"name": "ro", "role": "viewer"}
    )
    ro = viewer_tok.json()["token"]
    assert (
        await f.http.post("/api/v1/farms", json={"name": "Y"}, headers=bearer(ro))
    ).status_code == 403
    too_much = await f.as_(
        "admin",
        "POST",
        "/api/v1/tokens",
        json={"name": "x", "role": "admin", "user_id": f.users["viewer"].id},
    )
    assert too_much.status_code == 422


async def test_another_tenants_objects_answer_404(fleet: Fleet) -> None:
    f = fleet
    farm_id, enc_id = f.farm["id"], f.enclosure["id"]
    own_user = f.users["viewer"].id
    for method, url, body in (
        ("GET", f"/api/v1/farms/{farm_id}", None),
        ("GET", f"/api/v1/farms/{farm_id}/enclosures", None),
        ("PATCH", f"/api/v1/farms/{farm_id}", {"name": "Mine now"}),
        ("DELETE", f"/api/v1/enclosures/{enc_id}", None),
        ("GET", "/api/v1/devices/probe-1", None),
        ("GET", "/api/v1/devices/probe-1/data/3/0/9", None),
        ("PUT", "/api/v1/devices/probe-1/data/3/0/13", {"value": "2026-01-01T00:00:00Z"}),
        ("POST", "/api/v1/devices/probe-1/execute/3/0/4", {}),
        ("GET", "/api/v1/devices/probe-1/telemetry?path=/3303/0/5700", None),
        ("GET", "/api/v1/devices/probe-1/events", None),
        ("GET", f"/api/v1/users/{own_user}", None),
        ("PATCH", f"/api/v1/users/{own_user}", {"role": "admin"}),
        ("GET", f"/api/v1/devices?farm={farm_id}", None),
    ):
        r = await f.as_("acme", method, url, json=body)
        assert r.status_code == 404, (method, url, r.status_code, r.text)
    assert (await f.as_("acme", "GET", "/api/v1/farms")).json() == []
    assert (await f.as_("acme", "GET", "/api/v1/devices")).json()["total"] == 0
    assert (await f.as_("acme", "GET", "/api/v1/users")).json()[0]["username"] == (
        "boss@acme.example"
    )
    tokens = (await f.as_("acme", "GET", "/api/v1/tokens")).json()
    assert [t["username"] for t in tokens] == ["boss@acme.example"]
    audit = (await f.as_("acme", "GET", "/api/v1/audit")).json()
    assert all(e["actor"] == "boss@acme.example" for e in audit), audit
    # the same object is there for its own tenant
    assert (await f.as_("viewer", "GET", f"/api/v1/farms/{farm_id}")).status_code == 200
    # pages too: another tenant's farm is "Not found"
    page = await f.as_("acme", "GET", f"/farms/{farm_id}")
    assert page.status_code == 404 and "Not found" in page.text


async def test_expired_and_revoked_tokens_answer_401(fleet: Fleet) -> None:
    f = fleet
    store = f.node.auth.store
    admin = f.users["admin"]
    secret = new_token()
    past = f.node.auth.clock() - timedelta(minutes=1)
    await store.create_token(admin.id, "old", digest(secret), secret[:12], Role.ADMIN, past)
    r = await f.http.get("/api/v1/farms", headers=bearer(secret))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    # the same token shortly before its end still works
    fresh = await f.as_("admin", "POST", "/api/v1/tokens", json={"name": "t", "expires_in_days": 1})
    ok = fresh.json()["token"]
    assert (await f.http.get("/api/v1/farms", headers=bearer(ok))).status_code == 200
    revoked = await f.as_("admin", "DELETE", f"/api/v1/tokens/{fresh.json()['id']}")
    assert revoked.status_code == 204
    r = await f.http.get("/api/v1/farms", headers=bearer(ok))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    for junk in ("shoal_not-a-real-token", "abc"):
        assert (await f.http.get("/api/v1/farms", headers=bearer(junk))).status_code == 401
    basic = await f.http.get("/api/v1/farms", headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401
    # a disabled user's tokens stop working at once
    await f.as_(
        "admin", "PATCH", f"/api/v1/users/{f.users['operator'].id}", json={"disabled": True}
    )
    assert (await f.as_("operator", "GET", "/api/v1/farms")).status_code == 401


async def test_a_user_limited_to_farms_sees_only_them(fleet: Fleet) -> None:
    f = fleet
    other = await f.as_("admin", "POST", "/api/v1/farms", json={"name": "Other"})
    other_id = other.json()["id"]
    made = await f.as_(
        "admin",
        "POST",
        "/api/v1/users",
        json={"username": "pen@fjord.no", "role": "operator", "farm_ids": [other_id]},
    )
    assert made.status_code == 201, made.text
    f.tokens["scoped"] = await token_for(
        f.node, await f.node.auth.store.get_user(made.json()["id"])
    )
    farms = (await f.as_("scoped", "GET", "/api/v1/farms")).json()
    assert [x["name"] for x in farms] == ["Other"]
    for url in (
        f"/api/v1/farms/{f.farm['id']}",
        f"/api/v1/enclosures/{f.enclosure['id']}",
        "/api/v1/devices/probe-1",
        "/api/v1/devices/probe-1/data/3/0/9",
    ):
        assert (await f.as_("scoped", "GET", url)).status_code == 404, url
    assert (await f.as_("scoped", "GET", "/api/v1/devices")).json()["total"] == 0
    # the device moves into its farm: now it is the scoped user's to see
    pen = await f.as_(
        "admin", "POST", f"/api/v1/farms/{other_id}/enclosures", json={"name": "Pen 9"}
    )
    moved = await f.as_(
        "admin", "PATCH", "/api/v1/devices/probe-1", json={"enclosure_id": pen.json()["id"]}
    )
    assert moved.status_code == 200
    assert (await f.as_("scoped", "GET", "/api/v1/devices/probe-1")).status_code == 200
    assert (await f.as_("scoped", "GET", "/api/v1/devices")).json()["total"] == 1
    bad = await f.as_(
        "admin", "POST", "/api/v1/users", json={"username": "z@x.no", "farm_ids": [999]}
    )
    assert bad.status_code == 422


async def test_users_api_keeps_one_admin_and_ends_sessions(fleet: Fleet) -> None:
    f = fleet
    admin = f.users["admin"]
    # demoting or deleting the only other admin is fine; the last one stays
    for u in await f.node.auth.store.list_users(admin.tenant_id):
        if u.role == Role.ADMIN and u.id != admin.id:
            await f.node.auth.store.delete_user(u.id)
    last = await f.as_("admin", "PATCH", f"/api/v1/users/{admin.id}", json={"role": "viewer"})
    assert last.status_code == 409
    assert (await f.as_("admin", "DELETE", f"/api/v1/users/{admin.id}")).status_code == 409
    # a new password ends the user's sessions
    async with httpx.AsyncClient(base_url=f.node.http_url) as browser:
        ok = await browser.post(
            "/api/v1/auth/login", json={"username": "vera@fjord.no", "password": PASSWORD}
        )
        assert ok.status_code == 200
        reset = await f.as_(
            "admin",
            "PATCH",
            f"/api/v1/users/{f.users['viewer'].id}",
            json={"password": "another long password"},
        )
        assert reset.status_code == 200, reset.text
        assert (await browser.get("/api/v1/auth/me")).status_code == 401
    short = await f.as_(
        "admin", "POST", "/api/v1/users", json={"username": "s@x.no", "password": "x"}
    )
    assert short.status_code == 422
    dup = await f.as_("admin", "POST", "/api/v1/users", json={"username": "VERA@fjord.no"})
    assert dup.status_code == 409


# -- the audit log -------------------------------------------------------------------------


async def test_audit_log_says_who_did_what_to_which_device(fleet: Fleet) -> None:
    f = fleet
    enc_id = f.enclosure["id"]
    await f.as_("operator", "PUT", "/api/v1/devices/probe-1/data/3/0/13", json={"value": 5})
    await f.as_("operator", "PATCH", "/api/v1/devices/probe-1", json={"enclosure_id": enc_id})
    await f.as_("viewer", "POST", "/api/v1/devices/probe-1/execute/3/0/4", json={})
    await f.as_("admin", "POST", "/api/v1/users", json={"username": "n@fjord.no"})
    entries = (await f.as_("admin", "GET", "/api/v1/audit?device=probe-1")).json()
    seen = [(e["actor"], e["action"], e["status"]) for e in entries]
    assert ("otto@fjord.no", "write", 200) in seen or ("otto@fjord.no", "write", 400) in seen
    assert ("otto@fjord.no", "patch_device", 200) in seen
    assert ("vera@fjord.no", "execute", 403) in seen  # refused attempts are kept too
    write = next(e for e in entries if e["action"] == "write")
    assert write["via"] == "token" and write["target_type"] == "devices"
    assert write["detail"]["params"]["path"] == "3/0/13"
    users = (await f.as_("admin", "GET", "/api/v1/audit?target_type=users")).json()
    created = next(e for e in users if e["action"] == "create_user")
    assert created["actor"] == "ada@fjord.no" and created["detail"]["username"] == "n@fjord.no"
    assert "password" not in json.dumps(created["detail"]).replace("password_reset", "")
    older = (await f.as_("admin", "GET", f"/api/v1/audit?before_id={entries[0]['id']}")).json()
    assert all(e["id"] < entries[0]["id"] for e in older)


async def test_live_feed_shows_a_tenant_only_its_devices(fleet: Fleet) -> None:
    f = fleet
    got: dict[str, list[str]] = {"viewer": [], "acme": []}

    async def watch(who: str) -> None:
        async with f.http.stream(
            "GET", "/api/v1/events?kind=assigned", headers=bearer(f.tokens[who])
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    got[who].append(json.loads(line[6:])["endpoint"])

    tasks = [asyncio.get_running_loop().create_task(watch(w)) for w in got]
    await asyncio.sleep(0.5)
    patched = await f.as_(
        "operator", "PATCH", "/api/v1/devices/probe-1", json={"enclosure_id": f.enclosure["id"]}
    )
    assert patched.status_code == 200

    async def viewer_saw_it() -> bool:
        return got["viewer"] == ["probe-1"]

    try:
        await eventually(viewer_saw_it, timeout=10)
        await asyncio.sleep(0.5)
        assert got["acme"] == []
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- pages ---------------------------------------------------------------------------------


async def test_pages_need_a_sign_in_and_the_form_works_without_js(node: ShoalNode) -> None:
    await add_user(node, "ada@fjord.no", Role.ADMIN)
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        r = await http.get("/devices?q=x")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=%2Fdevices%3Fq%3Dx"
        assert (await http.get("/static/shoal.css")).status_code == 200
        page = await http.get("/login?next=/devices")
        assert page.status_code == 200 and 'name="password"' in page.text
        assert page.headers["x-frame-options"] == "DENY"
        form = {"username": "ada@fjord.no", "password": "wrong", "next": "/devices"}
        bad = await http.post("/login", data=form)
        assert bad.status_code == 401 and "Wrong username or password" in bad.text
        evil = await http.post(
            "/login",
            data={**form, "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        assert evil.status_code == 403
        ok = await http.post(
            "/login", data={**form, "password": PASSWORD, "next": "//evil.example"}
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        home = await http.get("/")
        assert home.status_code == 200 and "ada@fjord.no" in home.text
        csrf = http.cookies["shoal_csrf"]
        assert f'name="csrf" value="{csrf}"' in home.text
        refused = await http.post("/logout", data={"csrf": "wrong"})
        assert refused.status_code == 403
        out = await http.post("/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert (await http.get("/")).status_code == 303


@needs_browser
@needs_playwright
async def test_login_page_in_a_real_browser(node: ShoalNode) -> None:
    await add_user(node, "ada@fjord.no", Role.ADMIN)
    await add_user(node, "vera@fjord.no", Role.VIEWER)
    expect = async_api.expect
    async with async_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(node.http_url + "/farms")
            await expect(page).to_have_url(re.compile(r"/login\?next=%2Ffarms$"))
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            await page.get_by_label("Username").fill("ada@fjord.no")
            await page.get_by_label("Password").fill("not it")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("[data-login-error]")).to_contain_text("Wrong")
            await shot(page, "20-login-refused")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page).to_have_url(re.compile(r"/farms$"))
            await expect(page.locator("[data-user-menu]")).to_contain_text("ada@fjord.no")
            await expect(page.locator("[data-live-state]")).to_have_attribute("data-state", "open")
            await shot(page, "21-signed-in")
            # the page's forms send the CSRF header: creating a farm works
            form = page.locator("form.api-form")
            await form.get_by_label("Name").fill("Browser Fjord")
            await form.get_by_role("button", name="Create farm").click()
            await expect(page).to_have_url(re.compile(r"/farms/\d+$"))
            await expect(page.get_by_role("heading", level=1)).to_have_text("Browser Fjord")
            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(re.compile(r"/login$"))
            # a viewer signs in and is told, not broken, when it tries to change things
            await page.goto(node.http_url + "/farms")
            await page.get_by_label("Username").fill("vera@fjord.no")
            await page.get_by_label("Password").fill(PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.locator("[data-user-menu]")).to_contain_text("viewer")
            form = page.locator("form.api-form")
            await form.get_by_label("Name").fill("Not allowed")
            await form.get_by_role("button", name="Create farm").click()
            await expect(form.locator("[data-form-error]")).to_contain_text("admin")
            assert not errors, errors
        finally:
            await browser.close()

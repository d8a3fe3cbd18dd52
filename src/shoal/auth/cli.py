"""`shoal user add | list | passwd` and `shoal token add`: accounts from the shell.

They work on the node's database directly (the same `--data-dir` /
`--database-url` / SHOAL_* settings as `shoal serve`), so the first admin can be
made, or a lost admin password reset, without the HTTP API.

    shoal user add ola@fjord.no --role operator --farm 1 --farm 2
    shoal user passwd admin
    printf '%s' "$PASSWORD" | shoal user add ci@fjord.no --password-stdin
    shoal token add scada@fjord.no --name SCADA --expires-days 365
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from shoal.auth.hashing import new_password
from shoal.auth.principal import Role
from shoal.auth.service import AuthService
from shoal.auth.store import AuthStore
from shoal.store import Database, Inventory, StoreError, default_url


def add_parsers(sub: Any) -> None:
    """Add `user` and `token` to the `shoal` command's subparsers."""
    p_user = sub.add_parser("user", help="manage user accounts (add, list, passwd)")
    users = p_user.add_subparsers(dest="user_command", required=True)
    p_add = users.add_parser("add", help="add a user (prints a generated password once)")
    p_add.add_argument("username", help="login name, e.g. an e-mail address")
    p_add.add_argument("--role", choices=[r.value for r in Role], default="viewer")
    p_add.add_argument("--name", default="", help="display name")
    p_add.add_argument("--tenant", default=None, help="tenant name (default: the node's)")
    p_add.add_argument(
        "--farm", type=int, action="append", dest="farms", help="limit to this farm (repeat)"
    )
    p_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    _db_args(p_add)
    p_list = users.add_parser("list", help="list users")
    _db_args(p_list)
    p_pw = users.add_parser("passwd", help="set a new password (prints a generated one)")
    p_pw.add_argument("username")
    p_pw.add_argument("--password-stdin", action="store_true")
    _db_args(p_pw)

    p_token = sub.add_parser("token", help="manage API tokens (add)")
    tokens = p_token.add_subparsers(dest="token_command", required=True)
    p_tadd = tokens.add_parser("add", help="create an API token for a user (printed once)")
    p_tadd.add_argument("username")
    p_tadd.add_argument("--name", required=True, help="what uses it, e.g. SCADA")
    p_tadd.add_argument("--role", choices=[r.value for r in Role], default=None)
    p_tadd.add_argument("--expires-days", type=float, default=None)
    _db_args(p_tadd)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="data directory (default ./data)")
    p.add_argument("--database-url", default=None, help="e.g. postgresql+psycopg://host/db")


def run(args: argparse.Namespace, *, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> int:
    """Run a `user` or `token` subcommand; the exit status."""
    try:
        return asyncio.run(_run(args, stdin, out))
    except StoreError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 1


@asynccontextmanager
async def _service(args: argparse.Namespace) -> AsyncIterator[tuple[AuthService, Inventory]]:
    from shoal.node import NodeConfig

    config = NodeConfig.from_env(data_dir=args.data_dir, database_url=args.database_url)
    url = config.database_url
    if url is None:
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        url = default_url(config.data_dir)
    db = Database(url)
    try:
        await db.migrate()
        yield AuthService(AuthStore(db)), Inventory(db)
    finally:
        await db.close()


def _password(args: argparse.Namespace, stdin: TextIO) -> tuple[str, bool]:
    if args.password_stdin:
        return stdin.read().rstrip("\r\n"), False
    return new_password(), True


async def _run(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    from shoal.node import NodeConfig

    async with _service(args) as (auth, inventory):
        store = auth.store
        if args.command == "user" and args.user_command == "add":
            tenant_name = args.tenant or NodeConfig().fleet.tenant
            tenant = await inventory.ensure_tenant(tenant_name)
            password, generated = _password(args, stdin)
            user = await auth.create_user(
                tenant.id,
                args.username,
                password,
                Role(args.role),
                name=args.name,
                farm_ids=args.farms,
            )
            await store.add_audit(
                actor="cli",
                via="cli",
                action="create_user",
                tenant_id=tenant.id,
                target_type="users",
                target=str(user.id),
                detail={"username": user.username, "role": str(user.role), "farm_ids": args.farms},
            )
            print(f"added {user.username} ({user.role}) to tenant {tenant.name!r}", file=out)
            if generated:
                print(f"password: {password}", file=out)
            return 0
        if args.command == "user" and args.user_command == "list":
            tenants = {t.id: t.name for t in await inventory.list_tenants()}
            for user in await store.list_users():
                farms = "all farms" if user.farm_ids is None else f"farms {list(user.farm_ids)}"
                state = " (disabled)" if user.disabled else ""
                print(
                    f"{user.username}\t{user.role}\t{tenants.get(user.tenant_id)}\t{farms}{state}",
                    file=out,
                )
            return 0
        if args.command == "user" and args.user_command == "passwd":
            found = await store.find_user(args.username)
            if found is None:
                print(f"shoal: no user {args.username!r}", file=sys.stderr)
                return 1
            user = found[0]
            password, generated = _password(args, stdin)
            await auth.set_password(user.id, password, keep_session=None)
            await store.add_audit(
                actor="cli",
                via="cli",
                action="set_password",
                tenant_id=user.tenant_id,
                target_type="users",
                target=str(user.id),
            )
            print(f"new password set for {user.username}; its sessions ended", file=out)
            if generated:
                print(f"password: {password}", file=out)
            return 0
        if args.command == "token" and args.token_command == "add":
            found = await store.find_user(args.username)
            if found is None:
                print(f"shoal: no user {args.username!r}", file=sys.stderr)
                return 1
            user = found[0]
            expires = None
            if args.expires_days is not None:
                expires = auth.clock() + timedelta(days=args.expires_days)
            role = Role(args.role) if args.role else None
            new = await auth.create_token(user, args.name, role=role, expires_at=expires)
            await store.add_audit(
                actor="cli",
                via="cli",
                action="create_token",
                tenant_id=user.tenant_id,
                target_type="tokens",
                target=str(new.token.id),
                detail={"name": new.token.name, "owner": user.username},
            )
            print(f"token {new.token.name!r} for {user.username} ({new.token.role}):", file=out)
            print(new.secret, file=out)
            return 0
    return 2

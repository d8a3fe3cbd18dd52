"""Database fixtures for the store tests (loaded by test_store.py as a plugin).

Every test gets its own database, already at the migration head, on each
backend: a copy of a migrated SQLite file, and on PostgreSQL a database created
from a migrated template (`CREATE DATABASE ... TEMPLATE`, a file copy, fast).
All PostgreSQL databases share one random prefix `shoal_test_<hex>_` and are
dropped when the session ends. PostgreSQL tests skip, with the reason, when
127.0.0.1:5432 does not answer.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from shoal.store import Database
from shoal.store.migrations import upgrade

PG_HOST = os.environ.get("SHOAL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SHOAL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SHOAL_TEST_PG_USER", "postgres")
BACKENDS = ["sqlite", "postgresql"]


def _pg_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            return True
    except OSError:
        return False


class PgDatabases:
    """Creates and finally drops this session's PostgreSQL test databases."""

    def __init__(self) -> None:
        self.prefix = f"shoal_test_{secrets.token_hex(4)}_"
        self._names: list[str] = []
        self._counter = itertools.count()
        self._template: str | None = None

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
        )

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    def create(self, *, migrated: bool) -> str:
        template = self._migrated_template() if migrated else "template0"
        name = f"{self.prefix}{next(self._counter)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        self._names.append(name)
        return self.url(name)

    def _migrated_template(self) -> str:
        if self._template is None:
            name = f"{self.prefix}template"
            with self._admin() as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self._names.append(name)
            upgrade(self.url(name))
            self._template = name
        return self._template

    def drop_all(self) -> None:
        with self._admin() as conn:
            for name in reversed(self._names):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._names.clear()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases | None]:
    if not _pg_reachable():
        yield None
        return
    dbs = PgDatabases()
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store-template") / "shoal.db"
    upgrade(f"sqlite:///{path}")
    return path


def _need_pg(pg_databases: PgDatabases | None) -> PgDatabases:
    if pg_databases is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}")
    return pg_databases


@pytest.fixture(params=BACKENDS)
def store_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: Path,
    pg_databases: PgDatabases | None,
) -> str:
    """A fresh database at the migration head."""
    if request.param == "sqlite":
        path = tmp_path / "shoal.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    return _need_pg(pg_databases).create(migrated=True)


@pytest.fixture(params=BACKENDS)
def empty_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_databases: PgDatabases | None
) -> str:
    """A fresh database with no tables at all."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'shoal.db'}"
    return _need_pg(pg_databases).create(migrated=False)


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    try:
        yield database
    finally:
        await database.close()

"""Database fixtures for the store tests (loaded by test_store.py as a plugin).

Every test starts from an empty database at the migration head, on each
backend: a copy of a migrated SQLite file, or on PostgreSQL the session's
migrated database with every table truncated (creating and dropping a database
per test costs a checkpoint each, seconds in all). Migration tests get a new
empty database. The PostgreSQL databases share one random prefix
`shoal_test_<hex>_` and are dropped when the session ends; PostgreSQL tests skip,
with the reason, when 127.0.0.1:5432 does not answer.
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
from shoal.store.migrations import target_metadata, upgrade

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
        self._migrated: str | None = None

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
        )

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    def create_empty(self) -> str:
        name = f"{self.prefix}{next(self._counter)}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._names.append(name)
        return self.url(name)

    def migrated(self) -> str:
        """The session's migrated database, emptied."""
        if self._migrated is None:
            url = self.create_empty()
            upgrade(url)
            self._migrated = url
        tables = ", ".join(t.name for t in target_metadata().sorted_tables)
        dbname = self._migrated.rsplit("/", 1)[1]
        with psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=True
        ) as conn:
            conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        return self._migrated

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
    return _need_pg(pg_databases).migrated()


@pytest.fixture(params=BACKENDS)
def empty_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_databases: PgDatabases | None
) -> str:
    """A fresh database with no tables at all."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'shoal.db'}"
    return _need_pg(pg_databases).create_empty()


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    try:
        yield database
    finally:
        await database.close()

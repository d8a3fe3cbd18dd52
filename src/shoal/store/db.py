"""Engine and session setup from one database URL.

SQLite (the single-node default) gets WAL, foreign keys and a long busy timeout on
every connection, and SQLAlchemy emits BEGIN itself so DDL, SAVEPOINT and reads
are really transactional (the sqlite3 driver's legacy mode skips BEGIN for them).
Write sessions use BEGIN IMMEDIATE so two writers queue on the file lock instead of
one failing when it upgrades a read transaction. PostgreSQL connections run in UTC
so server-side time arithmetic (minute buckets) never depends on the server's zone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from shoal.store.errors import Invalid

DB_FILENAME = "shoal.db"
BUSY_TIMEOUT_MS = 30_000

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
}
_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "postgresql+asyncpg": "postgresql+psycopg",
}


def default_url(data_dir: str | Path) -> str:
    """The single-node default: one SQLite file in the data directory."""
    path = Path(data_dir).expanduser().resolve() / DB_FILENAME
    return f"sqlite+aiosqlite:///{path}"


def async_url(url: str | URL) -> URL:
    """`sqlite:///x` and `postgresql://...` get the asyncio drivers Shoal ships."""
    u = make_url(url)
    return u.set(drivername=_ASYNC_DRIVERS.get(u.drivername, u.drivername))


def sync_url(url: str | URL) -> URL:
    """The same database through a blocking driver (migrations run on one)."""
    u = make_url(url)
    return u.set(drivername=_SYNC_DRIVERS.get(u.drivername, u.drivername))


def _check(url: URL) -> None:
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise Invalid(f"unsupported database {backend!r}: use sqlite or postgresql")
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or "mode=memory" in database or ":memory:" in database:
            # Migrations run on their own connection; a memory database would be
            # a different, empty one there.
            raise Invalid("in-memory SQLite is not supported: give a file path")
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine, *, pragmas: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN (below)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if pragmas:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("shoal_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def create_sync_engine(url: str | URL) -> Engine:
    """A blocking engine for migrations. SQLite foreign keys stay off here, as
    Alembic's batch mode (copy-and-rename tables) needs."""
    u = sync_url(url)
    _check(u)
    if u.get_backend_name() == "sqlite":
        engine = create_engine(u)
        _install_sqlite_hooks(engine, pragmas=False)
        return engine.execution_options(shoal_write=True)
    return create_engine(u, connect_args={"options": "-c TimeZone=UTC"})


class Database:
    """One database: an async engine and transactional sessions on it.

    `session()` is the unit of work: it commits when the block ends and rolls
    back everything when it raises, so a failed request leaves nothing
    half-written.
    """

    def __init__(self, url: str | URL, *, echo: bool = False, pool_size: int = 5) -> None:
        self.url = async_url(url)
        _check(self.url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = create_async_engine(self.url, echo=echo, pool_size=pool_size)
            _install_sqlite_hooks(self.engine.sync_engine, pragmas=True)
            self._write_engine: AsyncEngine = self.engine.execution_options(shoal_write=True)
        else:
            self.engine = create_async_engine(
                self.url,
                echo=echo,
                pool_size=pool_size,
                pool_pre_ping=True,
                connect_args={"options": "-c TimeZone=UTC"},
            )
            self._write_engine = self.engine

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, **kwargs: Any) -> Database:
        return cls(default_url(data_dir), **kwargs)

    @asynccontextmanager
    async def session(self, *, readonly: bool = False) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: commit on success, rollback on error.

        `readonly=True` skips SQLite's write lock (many readers, one writer).
        """
        bind = self.engine if readonly else self._write_engine
        async with AsyncSession(bind, expire_on_commit=False) as session, session.begin():
            yield session

    @asynccontextmanager
    async def connection(
        self, *, readonly: bool = False, isolation_level: str | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A Core connection inside one transaction, for bulk statements.

        `isolation_level` applies to PostgreSQL only; SQLite is serializable.
        """
        bind = self.engine if readonly else self._write_engine
        async with bind.connect() as conn:
            if isolation_level is not None and self.dialect == "postgresql":
                await conn.execution_options(isolation_level=isolation_level)
            async with conn.begin():
                yield conn

    async def migrate(self, revision: str = "head") -> None:
        """Bring the schema to `revision` (Alembic, on a separate connection)."""
        from shoal.store.migrations import migrate

        await migrate(self.url, revision)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Database {self.url.render_as_string(hide_password=True)}>"

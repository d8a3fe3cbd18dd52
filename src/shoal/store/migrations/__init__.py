"""Schema migrations (Alembic), run from code: `upgrade(url)` or `await migrate(url)`.

The revisions are plain modules of this package, so they ship with it; Alembic is
configured here rather than by an alembic.ini. A whole upgrade runs in one
transaction (DDL is transactional on PostgreSQL and, with the BEGIN that
`shoal.store.db` emits, on SQLite too), so a failed migration leaves the schema
as it was. On PostgreSQL an advisory lock makes nodes that start together
migrate one after the other.

Developers create a revision against a database at head with
`python -m shoal.store.migrations revision -m "what" --url sqlite:///dev.db`.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, MetaData

from shoal.store.db import create_sync_engine

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
_PG_LOCK_KEY = 0x5E0A1  # pg_advisory_xact_lock key: "Shoal migrations"


def target_metadata() -> MetaData:
    """Every table of the store: the models of all `shoal.store.*schema` modules
    (schema.py, alert_schema.py, ...), so autogenerate never proposes dropping
    the tables of a module nobody happened to import."""
    import shoal.store as store
    from shoal.store.schema import Base

    for info in pkgutil.iter_modules(store.__path__):
        if info.name.endswith("schema"):
            importlib.import_module(f"shoal.store.{info.name}")
    return Base.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Apply migrations up to `revision` (blocking; see `migrate` for async code)."""
    engine = create_sync_engine(url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
            command.upgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()


async def migrate(url: str | URL, revision: str = "head") -> None:
    """`upgrade` in a worker thread, so the event loop keeps running."""
    await asyncio.to_thread(upgrade, url, revision)


def current_revision(url: str | URL) -> str | None:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def revision(url: str | URL, message: str, *, autogenerate: bool = True) -> None:
    """Write a new revision file, diffing the models against the database at `url`."""
    engine = create_sync_engine(url)
    try:
        with engine.begin() as conn:
            command.revision(alembic_config(conn), message=message, autogenerate=autogenerate)
    finally:
        engine.dispose()

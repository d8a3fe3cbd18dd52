"""Alembic environment, driven from `shoal.store.migrations` (no alembic.ini).

Online runs use the connection the caller put in `config.attributes`, so the
caller owns the transaction (one transaction for the whole upgrade). Offline runs
(`--sql`) render DDL for the URL in `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context

from shoal.store.migrations import target_metadata as all_tables

config = context.config
target_metadata = all_tables()

if context.is_offline_mode():
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=bool(url and url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through shoal.store.migrations.upgrade()")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()

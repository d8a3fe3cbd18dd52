"""`python -m shoal.store.migrations upgrade|current|sql|revision --url URL`.

`sql` prints the DDL of an upgrade from empty instead of running it (for a DBA).
"""

from __future__ import annotations

import argparse

from alembic import command

from shoal.store.db import sync_url
from shoal.store.migrations import alembic_config, current_revision, revision, upgrade


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shoal.store.migrations")
    parser.add_argument("action", choices=["upgrade", "current", "sql", "revision"])
    parser.add_argument("--url", required=True, help="database URL")
    parser.add_argument("-m", "--message", default="change", help="revision message")
    parser.add_argument("--empty", action="store_true", help="revision without autogenerate")
    args = parser.parse_args()
    if args.action == "upgrade":
        upgrade(args.url)
    elif args.action == "current":
        print(current_revision(args.url))
    elif args.action == "sql":
        cfg = alembic_config()
        cfg.set_main_option("sqlalchemy.url", sync_url(args.url).render_as_string(False))
        command.upgrade(cfg, "head", sql=True)
    else:
        revision(args.url, args.message, autogenerate=not args.empty)


if __name__ == "__main__":
    main()

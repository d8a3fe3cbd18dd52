"""`python -m shoal.store.migrations upgrade|current|revision --url URL`."""

from __future__ import annotations

import argparse

from shoal.store.migrations import current_revision, revision, upgrade


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shoal.store.migrations")
    parser.add_argument("action", choices=["upgrade", "current", "revision"])
    parser.add_argument("--url", required=True, help="database URL")
    parser.add_argument("-m", "--message", default="change", help="revision message")
    parser.add_argument("--empty", action="store_true", help="revision without autogenerate")
    args = parser.parse_args()
    if args.action == "upgrade":
        upgrade(args.url)
    elif args.action == "current":
        print(current_revision(args.url))
    else:
        revision(args.url, args.message, autogenerate=not args.empty)


if __name__ == "__main__":
    main()

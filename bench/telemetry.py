"""Telemetry ingest: Shoal's TelemetryWriter against the bare database driver.

One command, `python bench/telemetry.py`, writes the same rows (100 devices x 10
resource paths, one sample per path per second) into the `telemetry` table of a
freshly migrated database, on SQLite (a temp file) and on PostgreSQL (a temporary
database on 127.0.0.1:5432, dropped at the end; skipped if nothing answers):

- writer:   `TelemetryWriter.add()` from one producer coroutine in bursts of
            `--burst` rows with a yield to the event loop between bursts, as
            the CoAP endpoint would; the producer backs off when the queue is at
            its bound (nothing is dropped) so this is sustained throughput, timed
            until the last row committed.
- raw:      the driver alone (sqlite3 `executemany`, psycopg `executemany`), same
            batch size, one transaction per batch: the ceiling for any
            INSERT-based writer.
- copy:     PostgreSQL `COPY FROM STDIN` (psycopg), the ceiling of all.

Rounds interleave the runs on a truncated table; the table shows medians and
`add()` cost (event-loop time per sample, what the CoAP fast path pays).
Loopback only; nothing else is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from shoal.store import Database, DeviceRegistration, Inventory, TelemetryWriter, upgrade

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PATHS = [f"/3303/{i}/5700" for i in range(10)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = "device_id, path, time, value_num, value_text, unit"


def samples(device_ids: list[int], n: int) -> Iterator[tuple[int, str, datetime, float]]:
    i = 0
    second = 0
    while True:
        t = T0 + timedelta(seconds=second)
        for dev in device_ids:
            for path in PATHS:
                if i == n:
                    return
                yield dev, path, t, 10.0 + (i % 97) / 10
                i += 1
        second += 1


async def setup_devices(url: str, count: int) -> list[int]:
    async with Database(url) as db:
        inv = Inventory(db)
        ids = []
        for k in range(count):
            reg = DeviceRegistration(
                f"bench-{k}", f"r{k}", "127.0.0.1:1", 300, "1.1", "U", False, ""
            )
            ids.append((await inv.upsert_device_on_registration(reg)).id)
        return ids


async def run_writer(
    url: str, rows: list[tuple[int, str, datetime, float]], batch: int, bound: int, burst: int
) -> tuple[float, float]:
    """Returns (rows/s until committed, ns of event-loop time per add())."""
    async with Database(url) as db:
        writer = TelemetryWriter(db, batch_size=batch, max_queued=bound, flush_interval=0.05)
        writer.start()
        add = writer.add
        add_time = 0.0
        start = time.perf_counter()
        for k in range(0, len(rows), burst):
            a = time.perf_counter()
            for dev, path, t, v in rows[k : k + burst]:
                while not add(dev, path, t, v, "Cel"):
                    add_time += time.perf_counter() - a
                    await asyncio.sleep(0.001)  # at the bound: back off, never drop here
                    a = time.perf_counter()
            add_time += time.perf_counter() - a
            await asyncio.sleep(0)
        await writer.close()
        elapsed = time.perf_counter() - start
        stats = writer.stats()
        assert stats.written == len(rows) and stats.rejected == 0, stats
    return len(rows) / elapsed, add_time / len(rows) * 1e9


def _sqlite_text(t: datetime) -> str:
    # What SQLAlchemy stores for a UTC DateTime on SQLite.
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def run_sqlite_raw(path: Path, rows: list[tuple[int, str, datetime, float]], batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    sql = f"INSERT INTO telemetry ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    start = time.perf_counter()
    for k in range(0, len(rows), batch):
        params = [(d, p, _sqlite_text(t), v, None, "Cel") for d, p, t, v in rows[k : k + batch]]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, params)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def run_pg_raw(dbname: str, rows: list[tuple[int, str, datetime, float]], batch: int) -> float:
    sql = f"INSERT INTO telemetry ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
    with pg_connect(dbname) as conn:
        start = time.perf_counter()
        for k in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    sql, [(d, p, t, v, None, "Cel") for d, p, t, v in rows[k : k + batch]]
                )
        return len(rows) / (time.perf_counter() - start)


def run_pg_copy(dbname: str, rows: list[tuple[int, str, datetime, float]], batch: int) -> float:
    with pg_connect(dbname) as conn:
        start = time.perf_counter()
        for k in range(0, len(rows), batch):
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY telemetry ({COLUMNS}) FROM STDIN") as copy,
            ):
                for d, p, t, v in rows[k : k + batch]:
                    copy.write_row((d, p, t, v, None, "Cel"))
        return len(rows) / (time.perf_counter() - start)


def pg_connect(dbname: str, *, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=autocommit
    )


def pg_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def truncate(url_kind: str, target: str) -> None:
    if url_kind == "sqlite":
        lite = sqlite3.connect(target)
        lite.execute("DELETE FROM telemetry")
        lite.commit()
        lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        lite.close()
    else:
        with pg_connect(target, autocommit=True) as conn:
            conn.execute("TRUNCATE telemetry")
            conn.execute("VACUUM ANALYZE telemetry")


def bench_backend(
    kind: str, url: str, target: str, args: argparse.Namespace
) -> dict[str, list[float]]:
    upgrade(url)
    device_ids = asyncio.run(setup_devices(url, 100))
    rows = list(samples(device_ids, args.rows))
    results: dict[str, list[float]] = {}
    runs: list[tuple[str, Callable[[], float | tuple[float, float]]]] = [
        ("writer", lambda: asyncio.run(run_writer(url, rows, args.batch, args.bound, args.burst))),
    ]
    if kind == "sqlite":
        runs.append(("raw", lambda: run_sqlite_raw(Path(target), rows, args.batch)))
    else:
        runs.append(("raw", lambda: run_pg_raw(target, rows, args.batch)))
        runs.append(("copy", lambda: run_pg_copy(target, rows, args.batch)))
    for _ in range(args.rounds):
        for name, run in runs:
            truncate(kind, target)
            out = run()
            if isinstance(out, tuple):
                results.setdefault(name, []).append(out[0])
                results.setdefault("add_ns", []).append(out[1])
            else:
                results.setdefault(name, []).append(out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000, help="rows per INSERT/transaction")
    parser.add_argument("--bound", type=int, default=100_000, help="writer queue bound")
    parser.add_argument("--burst", type=int, default=1_000, help="adds between loop yields")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()

    table: list[tuple[str, dict[str, list[float]]]] = []
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.db"
            table.append(("sqlite", bench_backend("sqlite", f"sqlite:///{path}", str(path), args)))
    if "postgresql" in backends:
        if not pg_reachable():
            print(f"postgresql: skipped, nothing answers at {PG_HOST}:{PG_PORT}")
        else:
            name = f"shoal_bench_{secrets.token_hex(4)}"
            with pg_connect("postgres", autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
                table.append(("postgresql", bench_backend("postgresql", url, name, args)))
            finally:
                with pg_connect("postgres", autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    med = statistics.median
    print(
        f"\ntelemetry ingest, {args.rows} rows, batch {args.batch}, bound {args.bound}, "
        f"median of {args.rounds} rounds"
    )
    print(
        f"{'backend':<11} {'writer/s':>10} {'raw/s':>10} {'copy/s':>10} "
        f"{'writer/raw':>10} {'writer/copy':>11} {'add() ns':>9}"
    )
    for backend, r in table:
        writer, raw = med(r["writer"]), med(r["raw"])
        copy = f"{med(r['copy']):>10,.0f}" if "copy" in r else f"{'-':>10}"
        vs_copy = f"{writer / med(r['copy']):>11.2f}" if "copy" in r else f"{'-':>11}"
        print(
            f"{backend:<11} {writer:>10,.0f} {raw:>10,.0f} {copy} "
            f"{writer / raw:>10.2f} {vs_copy} {med(r['add_ns']):>9,.0f}"
        )


if __name__ == "__main__":
    main()

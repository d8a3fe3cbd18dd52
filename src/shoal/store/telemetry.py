"""Telemetry: a batch writer for the ingest path, queries, and downsampling.

Notifications arrive far faster than one transaction each could keep up with,
so `TelemetryWriter.add` only appends to a bounded in-memory queue and a
background task writes it in batches (one multi-row INSERT per batch, one
transaction each). A burst larger than a batch waits in the queue; only a burst
larger than the queue bound is refused, and counted, so the status endpoint can
show it. Rows leave the queue only after their batch committed: a database
outage delays them, it does not lose them.

Raw rows older than the retention window are rolled up into per-minute
aggregates (`apply_retention`); queries with a step merge both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, overload

import psycopg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Table,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from shoal.store.db import Database
from shoal.store.errors import Invalid
from shoal.store.schema import TelemetryMinuteRow, TelemetryRow, UTCDateTime, utcnow

log = logging.getLogger(__name__)

Value = float | int | bool | str


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_RAW = _table(TelemetryRow)
_MINUTE = _table(TelemetryMinuteRow)
_INSERT_RAW = insert(_RAW)
_COLUMNS = "device_id, path, time, value_num, value_text, unit"
_SQLITE_INSERT = f"INSERT INTO telemetry ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_PG_COPY = f"COPY telemetry ({_COLUMNS}) FROM STDIN"
_FIELDS = ("device_id", "path", "time", "value_num", "value_text", "unit")

# device_id, path, time, value_num, value_text, unit
Row = tuple[int, str, datetime, float | None, str | None, str | None]
_MAX_BUCKETS = 100_000


@dataclass(frozen=True, slots=True)
class TelemetryPoint:
    time: datetime
    value: float | str | None
    unit: str | None


@dataclass(frozen=True, slots=True)
class TelemetryBucket:
    """Aggregate of one step. `avg` is sum/count, meaningful for numeric paths."""

    start: datetime
    count: int
    min: float | None
    max: float | None
    avg: float | None
    last: float | str | None
    last_time: datetime
    unit: str | None


@dataclass(frozen=True, slots=True)
class WriterStats:
    queued: int
    bound: int
    batch_size: int
    written: int
    dropped_over_bound: int
    rejected: int
    batches: int
    failures: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class RetentionResult:
    cutoff: datetime
    rolled_rows: int
    minutes: int


def _sqlite_time(t: datetime) -> str:
    """The text `UTCDateTime` stores on SQLite (SQLAlchemy's format)."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    return t.replace(tzinfo=None).isoformat(" ", "microseconds")


def _split(value: Value) -> tuple[float | None, str | None]:
    if isinstance(value, str):
        return None, value
    number = float(value)
    if not math.isfinite(number):
        return None, str(number)  # kept as text so aggregates stay numbers
    return number, None


class TelemetryWriter:
    """Bounded, batching, never-blocking telemetry ingest."""

    def __init__(
        self,
        db: Database,
        *,
        batch_size: int = 5_000,
        flush_interval: float = 0.25,
        max_queued: int = 100_000,
        retry_delay: float = 1.0,
    ) -> None:
        if batch_size < 1 or max_queued < batch_size:
            raise Invalid("need 1 <= batch_size <= max_queued")
        self._db = db
        self._batch_size = batch_size
        self._interval = flush_interval
        self._bound = max_queued
        self._retry_delay = retry_delay
        self._queue: deque[Row] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._written = 0
        self._dropped = 0
        self._rejected = 0
        self._batches = 0
        self._failures = 0
        self._last_error: str | None = None

    def add(
        self, device_id: int, path: str, time: datetime, value: Value, unit: str | None = None
    ) -> bool:
        """Queue one sample. False (and counted) only when the queue is at its bound."""
        if len(self._queue) >= self._bound:
            self._dropped += 1
            return False
        if time.tzinfo is None:
            raise ValueError("telemetry time must be timezone-aware")
        num, text = _split(value)
        self._queue.append((device_id, path, time, num, text, unit))
        if len(self._queue) >= self._batch_size:
            self._wake.set()
        return True

    def stats(self) -> WriterStats:
        return WriterStats(
            queued=len(self._queue),
            bound=self._bound,
            batch_size=self._batch_size,
            written=self._written,
            dropped_over_bound=self._dropped,
            rejected=self._rejected,
            batches=self._batches,
            failures=self._failures,
            last_error=self._last_error,
        )

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="shoal-telemetry-writer"
            )

    async def flush(self) -> bool:
        """Write everything queued now; False if the database refused (rows kept)."""
        return await self._drain()

    async def close(self, attempts: int = 3) -> None:
        """Stop the background task and write what is left (retrying a little)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        for _ in range(attempts):
            if await self._drain():
                return
            await asyncio.sleep(self._retry_delay)
        if self._queue:
            log.error("telemetry writer closed with %d rows unwritten", len(self._queue))

    async def __aenter__(self) -> TelemetryWriter:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                ok = await self._drain()
            except Exception as exc:  # a bug must not silently stop ingest for good
                log.exception("telemetry writer failed")
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                ok = False
            if not ok and not self._closing:
                await asyncio.sleep(self._retry_delay)

    async def _drain(self) -> bool:
        async with self._lock:
            while self._queue:
                n = min(len(self._queue), self._batch_size)
                batch = list(itertools.islice(self._queue, n))
                try:
                    try:
                        await self._write(batch)
                        self._written += n
                    except (IntegrityError, DataError, psycopg.IntegrityError, psycopg.DataError):
                        await self._write_each(batch)
                except (DBAPIError, psycopg.Error, OSError) as exc:
                    self._failures += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("telemetry batch not written, will retry: %s", self._last_error)
                    return False
                for _ in range(n):
                    self._queue.popleft()
                self._batches += 1
            return True

    async def _write(self, batch: list[Row]) -> None:
        """One transaction per batch, straight to the driver: COPY on PostgreSQL,
        executemany on SQLite (in aiosqlite's thread). SQLAlchemy's per-row
        parameter processing would cost the event loop more than the insert."""
        async with self._db.connection() as conn:
            if self._db.dialect == "postgresql":
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                async with driver.cursor() as cursor, cursor.copy(_PG_COPY) as copy:
                    for row in batch:
                        await copy.write_row(row)
            else:
                await conn.exec_driver_sql(
                    _SQLITE_INSERT,
                    [(d, p, _sqlite_time(t), n, x, u) for d, p, t, n, x, u in batch],
                )

    async def _write_each(self, batch: list[Row]) -> None:
        """A batch with a bad row (unknown device, path too long): write the good
        rows, count and log the bad ones, so one bad row cannot stall ingest."""
        async with self._db.connection() as conn:
            for row in batch:
                try:
                    async with conn.begin_nested():
                        await conn.execute(_INSERT_RAW, dict(zip(_FIELDS, row, strict=True)))
                    self._written += 1
                except (IntegrityError, DataError) as exc:
                    self._rejected += 1
                    self._last_error = f"rejected {row[0]} {row[1]}: {exc.orig}"[:500]
        log.warning("telemetry batch had rejected rows: %s", self._last_error)


def _epoch(column: Any, dialect: str) -> ColumnElement[int]:
    if dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), BigInteger)
    return cast(func.strftime("%s", column), BigInteger)


def _bucket(column: Any, dialect: str, step: int) -> ColumnElement[int]:
    # Step as a literal: PostgreSQL cannot match GROUP BY/PARTITION BY expressions
    # that differ only in bind parameters.
    n = literal_column(str(step), BigInteger)
    return (_epoch(column, dialect) // n) * n


def _minute(column: Any, dialect: str) -> ColumnElement[datetime]:
    if dialect == "postgresql":
        return type_coerce(func.date_trunc("minute", column), UTCDateTime())
    # The fixed-width text UTCDateTime stores on SQLite, seconds zeroed.
    return type_coerce(func.strftime("%Y-%m-%d %H:%M:00.000000", column), UTCDateTime())


class _Acc:
    __slots__ = ("count", "last", "last_time", "max", "min", "sum", "unit")

    def __init__(self) -> None:
        self.count = 0
        self.min: float | None = None
        self.max: float | None = None
        self.sum: float | None = None
        self.last: float | str | None = None
        self.last_time: datetime | None = None
        self.unit: str | None = None

    def merge(self, row: Any) -> None:
        count, lo, hi, total, last_num, last_text, last_time, unit = row[1:]
        self.count += int(count)
        if lo is not None:
            self.min = lo if self.min is None else min(self.min, lo)
        if hi is not None:
            self.max = hi if self.max is None else max(self.max, hi)
        if total is not None:
            self.sum = total if self.sum is None else self.sum + total
        if self.last_time is None or last_time > self.last_time:
            self.last = last_num if last_num is not None else last_text
            self.last_time = last_time
            self.unit = unit


class TelemetryStore:
    """Reads telemetry and keeps the raw table small."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @overload
    async def query(
        self,
        device_id: int,
        path: str,
        start: datetime,
        end: datetime,
        step: None = None,
        *,
        limit: int = 10_000,
    ) -> list[TelemetryPoint]: ...

    @overload
    async def query(
        self,
        device_id: int,
        path: str,
        start: datetime,
        end: datetime,
        step: timedelta,
        *,
        limit: int = 10_000,
    ) -> list[TelemetryBucket]: ...

    async def query(
        self,
        device_id: int,
        path: str,
        start: datetime,
        end: datetime,
        step: timedelta | None = None,
        *,
        limit: int = 10_000,
    ) -> list[TelemetryPoint] | list[TelemetryBucket]:
        """Samples in [start, end): raw points (first `limit`) without a step;
        with a step, one aggregate per non-empty step aligned to the Unix epoch
        (UTC), over raw rows and the per-minute rollups of older data. A minute
        rollup counts in the step holding its minute's start."""
        if not start < end:
            raise Invalid("start must be before end")
        if step is None:
            return await self._raw(device_id, path, start, end, limit)
        seconds = step.total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise Invalid("step must be a whole number of seconds, at least 1")
        if (end - start) / step > _MAX_BUCKETS:
            raise Invalid(f"more than {_MAX_BUCKETS} steps: use a larger step")
        return await self._buckets(device_id, path, start, end, int(seconds))

    async def _raw(
        self, device_id: int, path: str, start: datetime, end: datetime, limit: int
    ) -> list[TelemetryPoint]:
        if not 1 <= limit <= 1_000_000:
            raise Invalid("limit must be 1..1000000")
        t = TelemetryRow
        stmt = (
            select(t.time, t.value_num, t.value_text, t.unit)
            .where(t.device_id == device_id, t.path == path, t.time >= start, t.time < end)
            .order_by(t.time, t.id)
            .limit(limit)
        )
        async with self._db.connection(readonly=True) as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            TelemetryPoint(time, num if num is not None else text, unit)
            for time, num, text, unit in rows
        ]

    async def _buckets(
        self, device_id: int, path: str, start: datetime, end: datetime, step: int
    ) -> list[TelemetryBucket]:
        d = self._db.dialect
        t, m = TelemetryRow, TelemetryMinuteRow

        raw_b = _bucket(t.time, d, step)
        raw = select(
            raw_b.label("b"),
            t.time,
            t.value_num,
            t.value_text,
            t.unit,
            func.row_number()
            .over(partition_by=raw_b, order_by=(t.time.desc(), t.id.desc()))
            .label("rn"),
        ).where(t.device_id == device_id, t.path == path, t.time >= start, t.time < end)
        r = raw.subquery()
        first = r.c.rn == 1
        raw_agg = select(
            r.c.b,
            func.count(),
            func.min(r.c.value_num),
            func.max(r.c.value_num),
            func.sum(r.c.value_num),
            func.max(case((first, r.c.value_num))),
            func.max(case((first, r.c.value_text))),
            func.max(r.c.time),
            func.max(case((first, r.c.unit))),
        ).group_by(r.c.b)

        min_b = _bucket(m.minute, d, step)
        mins = select(
            min_b.label("b"),
            m.count,
            m.min,
            m.max,
            m.sum,
            m.last_num,
            m.last_text,
            m.last_time,
            m.unit,
            func.row_number().over(partition_by=min_b, order_by=m.last_time.desc()).label("rn"),
        ).where(m.device_id == device_id, m.path == path, m.minute >= start, m.minute < end)
        mm = mins.subquery()
        first = mm.c.rn == 1
        min_agg = select(
            mm.c.b,
            func.sum(mm.c.count),
            func.min(mm.c.min),
            func.max(mm.c.max),
            func.sum(mm.c.sum),
            func.max(case((first, mm.c.last_num))),
            func.max(case((first, mm.c.last_text))),
            func.max(mm.c.last_time),
            func.max(case((first, mm.c.unit))),
        ).group_by(mm.c.b)

        acc: dict[int, _Acc] = {}
        async with self._db.connection(readonly=True) as conn:
            for stmt in (min_agg, raw_agg):
                for row in await conn.execute(stmt):
                    acc.setdefault(int(row[0]), _Acc()).merge(row)
        out = []
        for b in sorted(acc):
            a = acc[b]
            assert a.last_time is not None
            out.append(
                TelemetryBucket(
                    start=datetime.fromtimestamp(b, UTC),
                    count=a.count,
                    min=a.min,
                    max=a.max,
                    avg=a.sum / a.count if a.sum is not None and a.count else None,
                    last=a.last,
                    last_time=a.last_time,
                    unit=a.unit,
                )
            )
        return out

    async def latest(self, device_id: int) -> dict[str, TelemetryPoint]:
        """The newest raw sample of each path of a device (the device page)."""
        t = TelemetryRow
        newest = (
            select(t.path, func.max(t.time).label("time"))
            .where(t.device_id == device_id)
            .group_by(t.path)
            .subquery()
        )
        stmt = (
            select(t.path, t.time, t.value_num, t.value_text, t.unit)
            .join(newest, and_(t.path == newest.c.path, t.time == newest.c.time))
            .where(t.device_id == device_id)
            .order_by(t.path, t.id)
        )
        async with self._db.connection(readonly=True) as conn:
            rows = (await conn.execute(stmt)).all()
        return {
            path: TelemetryPoint(time, num if num is not None else text, unit)
            for path, time, num, text, unit in rows
        }

    async def apply_retention(
        self, raw_for: timedelta, *, now: datetime | None = None
    ) -> RetentionResult:
        """Roll raw rows older than `raw_for` (cut at a whole minute) into
        telemetry_minute and delete them, in one transaction.

        Minutes already rolled up (late samples) are merged, not replaced. On
        PostgreSQL the transaction is REPEATABLE READ so a row committed by the
        writer meanwhile is neither rolled up nor deleted; SQLite holds the write
        lock for the whole transaction, which gives the same.
        """
        if raw_for < timedelta(0):
            raise Invalid("raw_for must not be negative")
        now = now or utcnow()
        cutoff = (now - raw_for).astimezone(UTC).replace(second=0, microsecond=0)
        d = self._db.dialect
        t, m = TelemetryRow, TelemetryMinuteRow

        minute = _minute(t.time, d)
        ranked = (
            select(
                t.device_id,
                t.path,
                minute.label("minute"),
                t.time,
                t.value_num,
                t.value_text,
                t.unit,
                func.row_number()
                .over(
                    partition_by=(t.device_id, t.path, minute),
                    order_by=(t.time.desc(), t.id.desc()),
                )
                .label("rn"),
            )
            .where(t.time < cutoff)
            .subquery()
        )
        first = ranked.c.rn == 1
        rollup = (
            select(
                ranked.c.device_id,
                ranked.c.path,
                ranked.c.minute,
                func.count(),
                func.min(ranked.c.value_num),
                func.max(ranked.c.value_num),
                func.sum(ranked.c.value_num),
                func.max(case((first, ranked.c.value_num))),
                func.max(case((first, ranked.c.value_text))),
                func.max(ranked.c.time),
                func.max(case((first, ranked.c.unit))),
            )
            .where(ranked.c.rn >= 1)  # SQLite: upsert after SELECT needs a WHERE
            .group_by(ranked.c.device_id, ranked.c.path, ranked.c.minute)
        )
        columns = [
            "device_id",
            "path",
            "minute",
            "count",
            "min",
            "max",
            "sum",
            "last_num",
            "last_text",
            "last_time",
            "unit",
        ]
        least: Callable[..., Any]
        greatest: Callable[..., Any]
        if d == "postgresql":
            stmt = postgresql.insert(_MINUTE).from_select(columns, rollup)
            least, greatest = func.least, func.greatest
        else:
            stmt = sqlite.insert(_MINUTE).from_select(columns, rollup)  # type: ignore[assignment]
            least, greatest = func.min, func.max  # two-argument min/max are scalar
        new = stmt.excluded
        newer = new.last_time > m.last_time
        upsert = stmt.on_conflict_do_update(
            index_elements=["device_id", "path", "minute"],
            set_={
                "count": m.count + new["count"],
                "min": func.coalesce(least(m.min, new["min"]), m.min, new["min"]),
                "max": func.coalesce(greatest(m.max, new["max"]), m.max, new["max"]),
                "sum": func.coalesce(m.sum + new["sum"], m.sum, new["sum"]),
                "last_num": case((newer, new.last_num), else_=m.last_num),
                "last_text": case((newer, new.last_text), else_=m.last_text),
                "unit": case((newer, new.unit), else_=m.unit),
                "last_time": case((newer, new.last_time), else_=m.last_time),
            },
        ).execution_options(preserve_rowcount=True)  # rowcount of an INSERT .. SELECT
        async with self._db.connection(isolation_level="REPEATABLE READ") as conn:
            minutes = (await conn.execute(upsert)).rowcount
            rolled = (await conn.execute(delete(_RAW).where(_RAW.c.time < cutoff))).rowcount
        return RetentionResult(cutoff, int(rolled), int(minutes))

    async def prune_minutes(self, before: datetime) -> int:
        """Delete per-minute aggregates older than `before`; returns how many."""
        async with self._db.connection() as conn:
            result = await conn.execute(delete(_MINUTE).where(_MINUTE.c.minute < before))
        return int(result.rowcount)

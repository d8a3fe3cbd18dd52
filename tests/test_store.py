"""The persistence layer on real databases: a SQLite file and PostgreSQL.

Every test runs on both backends (fixtures in store_fixtures.py), each on its own
fresh database.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from shoal.store import (
    ENCLOSURE_CODE_ALPHABET,
    Conflict,
    CorrelationSource,
    Database,
    DeviceEventKind,
    DeviceKind,
    DeviceRegistration,
    DeviceStatus,
    EnclosureKind,
    EventLog,
    Invalid,
    Inventory,
    NotFound,
    ObservationRecord,
    TelemetryStore,
    TelemetryWriter,
    default_url,
    migrate,
)
from shoal.store import inventory as inventory_module
from shoal.store.db import create_sync_engine
from shoal.store.migrations import current_revision, head_revision, target_metadata
from shoal.store.schema import Base, FarmRow, TelemetryMinuteRow, TelemetryRow
from shoal.store.telemetry import Row

pytest_plugins = ["store_fixtures"]

T0 = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
LINKS = '</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>,</3303/0>,</3303>;ver=1.1'


def registration(endpoint: str, **kw: object) -> DeviceRegistration:
    fields: dict[str, object] = {
        "endpoint": endpoint,
        "registration_id": f"r-{endpoint}",
        "address": "203.0.113.5:56830",
        "lifetime": 300,
        "lwm2m_version": "1.1",
        "binding": "U",
        "queue_mode": False,
        "object_links": LINKS,
    }
    fields.update(kw)
    return DeviceRegistration(**fields)  # type: ignore[arg-type]


async def count_rows(db: Database, model: type[Base]) -> int:
    async with db.session(readonly=True) as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


# -- migrations ---------------------------------------------------------------------


async def test_migrations_apply_from_empty(empty_store_url: str) -> None:
    assert current_revision(empty_store_url) is None
    await migrate(empty_store_url)
    assert current_revision(empty_store_url) == head_revision()
    await migrate(empty_store_url)  # idempotent

    # The migrations build exactly what the models describe.
    engine = create_sync_engine(empty_store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, target_metadata()) == []
    finally:
        engine.dispose()

    async with Database(empty_store_url) as db:
        tenant = await Inventory(db).create_tenant("Acme Salmon")
        assert tenant.id > 0


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    """WAL and foreign keys on every connection; the data directory is created."""
    async with Database(default_url(tmp_path / "new" / "dir")) as db:
        await db.migrate()
        async with db.session(readonly=True) as s:
            assert (await s.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await s.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    with pytest.raises(Invalid):
        Database("sqlite+aiosqlite:///:memory:")
    with pytest.raises(Invalid):
        Database("mysql://localhost/shoal")


# -- farms and enclosures -------------------------------------------------------------


async def test_farm_crud(db: Database) -> None:
    inv = Inventory(db)
    tenant = await inv.create_tenant("Acme Salmon")
    with pytest.raises(Conflict):
        await inv.create_tenant("Acme Salmon")
    assert (await inv.ensure_tenant("Acme Salmon")).id == tenant.id

    farm = await inv.create_farm(
        tenant.id,
        "North bay",
        location="Hitra, Trøndelag",
        latitude=63.6,
        longitude=8.9,
        time_zone="Europe/Oslo",
    )
    assert farm.created_at.tzinfo is UTC
    assert await inv.get_farm(farm.id) == farm
    with pytest.raises(Conflict):
        await inv.create_farm(tenant.id, "North bay")
    with pytest.raises(Invalid):
        await inv.create_farm(tenant.id, "South", time_zone="Mars/Olympus")
    with pytest.raises(Invalid):
        await inv.create_farm(tenant.id, "South", latitude=91)
    with pytest.raises(Invalid):
        await inv.create_farm(tenant.id, "  ")
    with pytest.raises(NotFound):
        await inv.create_farm(9999, "Nowhere")

    south = await inv.create_farm(tenant.id, "South bay")
    assert [f.name for f in await inv.list_farms(tenant_id=tenant.id)] == ["North bay", "South bay"]

    updated = await inv.update_farm(farm.id, name="North bay 2", latitude=None)
    assert (updated.name, updated.latitude, updated.longitude) == ("North bay 2", None, 8.9)
    with pytest.raises(Conflict):
        await inv.update_farm(south.id, name="North bay 2")
    assert (await inv.get_farm(south.id)).name == "South bay"

    await inv.create_enclosure(south.id, "Pen 1")
    with pytest.raises(Conflict):
        await inv.delete_farm(south.id)
    await inv.delete_farm(farm.id)
    with pytest.raises(NotFound):
        await inv.get_farm(farm.id)


async def test_enclosure_crud_and_codes(db: Database) -> None:
    inv = Inventory(db)
    tenant = await inv.create_tenant("Acme")
    farm = await inv.create_farm(tenant.id, "North bay")

    pen = await inv.create_enclosure(farm.id, "Pen 1", kind=EnclosureKind.CAGE, species="salmon")
    assert re.fullmatch(rf"ENC-[{ENCLOSURE_CODE_ALPHABET}]{{4}}", pen.code)
    assert not set(pen.code[4:]) & set("01OIL")
    assert pen.tenant_id == tenant.id
    assert await inv.get_enclosure(pen.id) == pen
    assert await inv.get_enclosure_by_code(pen.code) == pen
    assert await inv.get_enclosure_by_code(f"  {pen.code.lower()} ") == pen
    assert await inv.get_enclosure_by_code(pen.code[4:]) == pen
    with pytest.raises(NotFound):
        await inv.get_enclosure_by_code("not a code")

    codes = {pen.code}
    for i in range(2, 40):
        codes.add((await inv.create_enclosure(farm.id, f"Pen {i}")).code)
    assert len(codes) == 39

    tank = await inv.create_enclosure(farm.id, "Tank A", kind=EnclosureKind.TANK, code="enc-t4nk")
    assert tank.code == "ENC-T4NK"
    with pytest.raises(Conflict):
        await inv.create_enclosure(farm.id, "Tank B", code="ENC-T4NK")
    for bad in ("ENC-T0NK", "ENC-TANKS", "XYZ-ABCD", "ENC-AB", ""):
        with pytest.raises(Invalid):
            await inv.create_enclosure(farm.id, "Tank B", code=bad)
    with pytest.raises(Conflict):
        await inv.create_enclosure(farm.id, "Pen 1")  # names are unique within a farm

    renamed = await inv.update_enclosure(tank.id, name="Tank 1", species="trout", code="ENC-7K3M")
    assert (renamed.name, renamed.species, renamed.code) == ("Tank 1", "trout", "ENC-7K3M")
    with pytest.raises(Conflict):
        await inv.update_enclosure(tank.id, code=pen.code)
    assert len(await inv.list_enclosures(farm_id=farm.id)) == 40
    assert len(await inv.list_enclosures(tenant_id=tenant.id + 1)) == 0

    await inv.delete_enclosure(tank.id)
    with pytest.raises(NotFound):
        await inv.get_enclosure(tank.id)


async def test_enclosure_code_retries_on_collision(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = Inventory(db)
    farm = await inv.create_farm((await inv.create_tenant("Acme")).id, "North bay")
    await inv.create_enclosure(farm.id, "Pen 1", code="ENC-AAAA")
    candidates = iter(["ENC-AAAA", "ENC-AAAA", "ENC-BBBB"])
    monkeypatch.setattr(inventory_module, "new_enclosure_code", lambda: next(candidates))
    assert (await inv.create_enclosure(farm.id, "Pen 2")).code == "ENC-BBBB"

    monkeypatch.setattr(inventory_module, "new_enclosure_code", lambda: "ENC-AAAA")
    with pytest.raises(Conflict):
        await inv.create_enclosure(farm.id, "Pen 3")


async def test_delete_enclosure_with_devices_is_a_conflict(db: Database) -> None:
    inv = Inventory(db)
    farm = await inv.create_farm((await inv.create_tenant("Acme")).id, "North bay")
    pen = await inv.create_enclosure(farm.id, "Pen 1")
    await inv.upsert_device_on_registration(registration("sensor-1"))
    await inv.assign_enclosure("sensor-1", pen.id, CorrelationSource.QUERY_ATTRIBUTE)
    with pytest.raises(Conflict, match="1 device"):
        await inv.delete_enclosure(pen.id)
    await inv.mark_unassigned("sensor-1", "pen emptied for cleaning")
    await inv.delete_enclosure(pen.id)


# -- devices -----------------------------------------------------------------------


async def test_device_upsert_on_registration(db: Database) -> None:
    clock = iter(T0 + timedelta(minutes=i) for i in range(100))
    inv = Inventory(db, clock=lambda: next(clock))
    tenant = await inv.create_tenant("Acme")

    first = await inv.upsert_device_on_registration(
        registration("cam-1", kind=DeviceKind.CAMERA, tenant_id=tenant.id, extra={"sms": "+47"})
    )
    assert first.status is DeviceStatus.REGISTERED
    assert first.kind is DeviceKind.CAMERA
    assert first.first_seen == first.last_seen == T0 + timedelta(minutes=1)
    assert first.object_links == LINKS and first.extra == {"sms": "+47"}

    again = await inv.upsert_device_on_registration(
        registration("cam-1", registration_id="r2", address="198.51.100.7:5684", lifetime=600),
        event=DeviceEventKind.UPDATED,
        status=DeviceStatus.ONLINE,
    )
    assert again.id == first.id
    assert again.first_seen == first.first_seen and again.last_seen > first.last_seen
    assert (again.registration_id, again.last_address, again.lifetime) == (
        "r2",
        "198.51.100.7:5684",
        600,
    )
    assert again.status is DeviceStatus.ONLINE
    # What the Update did not say is kept.
    assert (again.kind, again.tenant_id, again.extra) == (
        DeviceKind.CAMERA,
        tenant.id,
        {"sms": "+47"},
    )

    info = await inv.update_device_info(
        "cam-1", manufacturer="Fishvision", model="FV-2", serial="A1", firmware_version="1.0.0"
    )
    assert (info.manufacturer, info.firmware_version) == ("Fishvision", "1.0.0")
    await inv.update_device_info("cam-1", firmware_version="1.1.0")
    await inv.set_status("cam-1", DeviceStatus.OFFLINE)
    await inv.set_status("cam-1", DeviceStatus.OFFLINE)  # no change, no event
    assert (await inv.get_device("cam-1")).status is DeviceStatus.OFFLINE

    events = await EventLog(db).query(device_id=first.id)
    assert [e.kind for e in events] == [
        "status_changed",
        "firmware_changed",
        "firmware_changed",
        "updated",
        "registered",
    ]
    assert events[0].endpoint == "cam-1" and events[0].detail == {"from": "online", "to": "offline"}
    assert [e.kind for e in await EventLog(db).query(kinds=["registered"])] == ["registered"]
    older = await EventLog(db).query(before_id=events[1].id, limit=2)
    assert [e.id for e in older] == [events[2].id, events[3].id]

    seen = T0 + timedelta(hours=5)
    await inv.mark_seen({"cam-1": seen, "no-such-device": seen})
    await inv.mark_seen({"cam-1": T0})  # never moves backwards
    assert (await inv.get_device("cam-1")).last_seen == seen

    with pytest.raises(NotFound):
        await inv.get_device("nope")
    with pytest.raises(NotFound):
        await inv.upsert_device_on_registration(registration("cam-2", tenant_id=9999))
    await inv.delete_device("cam-1")
    with pytest.raises(NotFound):
        await inv.get_device_by_id(first.id)
    assert await EventLog(db).query(device_id=first.id) == []


async def test_list_devices_filters_and_pagination(db: Database) -> None:
    inv = Inventory(db)
    tenant = await inv.create_tenant("Acme")
    north = await inv.create_farm(tenant.id, "North")
    south = await inv.create_farm(tenant.id, "South")
    pens = [
        await inv.create_enclosure(north.id, "Pen 1"),
        await inv.create_enclosure(north.id, "Pen 2"),
        await inv.create_enclosure(south.id, "Tank 1", kind=EnclosureKind.TANK),
    ]
    for i in range(30):
        ep = f"dev-{i:02d}"
        await inv.upsert_device_on_registration(
            registration(ep, kind=DeviceKind.CAMERA if i % 3 == 0 else DeviceKind.SENSOR)
        )
        if i < 27:
            await inv.assign_enclosure(ep, pens[i % 3].id, CorrelationSource.ENDPOINT_PATTERN)
        if i % 2:
            await inv.set_status(ep, DeviceStatus.ONLINE)
        await inv.update_device_info(ep, firmware_version="2.0" if i < 10 else "1.9")

    page = await inv.list_devices(limit=7, offset=0)
    assert page.total == 30 and [d.endpoint for d in page.items] == [
        f"dev-{i:02d}" for i in range(7)
    ]
    last = await inv.list_devices(limit=7, offset=28)
    assert last.total == 30 and [d.endpoint for d in last.items] == ["dev-28", "dev-29"]

    assert (await inv.list_devices(farm_id=north.id)).total == 18
    assert (await inv.list_devices(farm_id=south.id)).total == 9
    assert (await inv.list_devices(enclosure_id=pens[0].id)).total == 9
    assert (await inv.list_devices(status=DeviceStatus.ONLINE)).total == 15
    assert (await inv.list_devices(kind=DeviceKind.CAMERA)).total == 10
    assert (await inv.list_devices(firmware="2.0")).total == 10
    assert (await inv.list_devices(unassigned=True)).total == 3
    assert (await inv.list_devices(tenant_id=tenant.id)).total == 27
    both = await inv.list_devices(
        farm_id=north.id, status=DeviceStatus.ONLINE, kind=DeviceKind.SENSOR, limit=3
    )
    expected = [
        f"dev-{i:02d}"
        for i in range(27)
        if i % 3 != 2 and i % 2 and i % 3 != 0  # north pens, online, sensor
    ]
    assert both.total == len(expected) and [d.endpoint for d in both.items] == expected[:3]
    with pytest.raises(Invalid):
        await inv.list_devices(limit=0)


async def test_assignment_respects_tenants(db: Database) -> None:
    inv = Inventory(db)
    acme = await inv.create_tenant("Acme")
    other = await inv.create_tenant("Other")
    pen = await inv.create_enclosure((await inv.create_farm(acme.id, "North")).id, "Pen 1")
    foreign = await inv.create_enclosure((await inv.create_farm(other.id, "West")).id, "Pen 1")

    await inv.upsert_device_on_registration(registration("s-1"))
    device = await inv.assign_enclosure("s-1", pen.id, CorrelationSource.QUERY_ATTRIBUTE)
    assert (device.enclosure_id, device.tenant_id) == (pen.id, acme.id)
    assert device.correlation_source is CorrelationSource.QUERY_ATTRIBUTE
    with pytest.raises(Invalid):
        await inv.assign_enclosure("s-1", foreign.id, CorrelationSource.MANUAL)
    with pytest.raises(NotFound):
        await inv.assign_enclosure("s-1", 9999, CorrelationSource.MANUAL)

    lost = await inv.mark_unassigned("s-1", "enc=ENC-ZZZZ names no enclosure of Acme")
    assert lost.enclosure_id is None and lost.correlation_source is None
    assert lost.unassigned_reason == "enc=ENC-ZZZZ names no enclosure of Acme"
    assert [d.endpoint for d in (await inv.list_devices(unassigned=True)).items] == ["s-1"]
    back = await inv.assign_enclosure("s-1", pen.id, CorrelationSource.MANUAL)
    assert back.unassigned_reason is None

    # Re-registering with the same tenant keeps the enclosure; with another, it is left.
    same = await inv.upsert_device_on_registration(registration("s-1", tenant_id=acme.id))
    assert same.enclosure_id == pen.id
    moved = await inv.upsert_device_on_registration(registration("s-1", tenant_id=other.id))
    assert (moved.tenant_id, moved.enclosure_id, moved.correlation_source) == (other.id, None, None)
    assert moved.unassigned_reason == "provisioned into another tenant"
    kinds = [e.kind for e in await EventLog(db).query(device_id=device.id)]
    assert kinds == ["registered", "registered", "assigned", "unassigned", "assigned", "registered"]


async def test_known_registrations_and_observations(db: Database) -> None:
    inv = Inventory(db)
    for ep in ("a", "b", "c"):
        await inv.upsert_device_on_registration(registration(ep, queue_mode=ep == "b"))
    await inv.set_status("c", DeviceStatus.DEREGISTERED, event=DeviceEventKind.DEREGISTERED)
    await inv.save_observations(
        "a",
        [
            ObservationRecord("/3303/0/5700", 110, {"pmin": 10, "pmax": 60}),
            ObservationRecord("/3/0/9"),
        ],
    )
    await inv.add_observation("a", ObservationRecord("/3/0/9", 11542, {"gt": 50.5}))
    await inv.add_observation("b", ObservationRecord("/3303/0/5700"))
    assert await inv.remove_observation("b", "/3303/0/5700")
    assert not await inv.remove_observation("b", "/3303/0/5700")

    known = await inv.known_registrations()
    assert [k.endpoint for k in known] == ["a", "b"]
    a, b = known
    assert (a.registration_id, a.address, a.object_links) == ("r-a", "203.0.113.5:56830", LINKS)
    assert b.queue_mode and b.observations == ()
    assert a.observations == (
        ObservationRecord("/3/0/9", 11542, {"gt": 50.5}),
        ObservationRecord("/3303/0/5700", 110, {"pmin": 10, "pmax": 60}),
    )
    assert await inv.load_observations("a") == list(a.observations)
    await inv.save_observations("a", [])
    assert await inv.load_observations("a") == []


# -- transactions --------------------------------------------------------------------


async def test_transactions_roll_back_on_error(db: Database) -> None:
    inv = Inventory(db)
    tenant = await inv.create_tenant("Acme")
    await inv.create_enclosure(
        (await inv.create_farm(tenant.id, "North")).id, "Pen", code="ENC-AAAA"
    )

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with inv.transaction() as tx:
            farm = await tx.create_farm(tenant.id, "South")
            await tx.create_enclosure(farm.id, "Pen 1")
            await tx.upsert_device_on_registration(registration("s-1"))
            raise Boom
    assert await count_rows(db, FarmRow) == 1
    with pytest.raises(NotFound):
        await inv.get_device("s-1")

    # A domain error part-way through undoes the earlier steps too, and a
    # Conflict inside a transaction leaves the transaction usable until then.
    with pytest.raises(Conflict):
        async with inv.transaction() as tx:
            farm = await tx.create_farm(tenant.id, "South")
            with pytest.raises(Conflict):
                await tx.create_farm(tenant.id, "South")
            await tx.create_enclosure(farm.id, "Pen 1", code="ENC-AAAA")
    assert [f.name for f in await inv.list_farms()] == ["North"]

    async with inv.transaction() as tx:
        farm = await tx.create_farm(tenant.id, "South")
        await tx.create_enclosure(farm.id, "Pen 1")
    assert len(await inv.list_enclosures(farm_id=farm.id)) == 1

    with pytest.raises(Invalid, match="naive"):
        await inv.upsert_device_on_registration(registration("s-2"), at=datetime(2026, 1, 1))
    with pytest.raises(NotFound):
        await inv.get_device("s-2")


# -- telemetry -----------------------------------------------------------------------


async def test_telemetry_burst_larger_than_batch_is_queued_not_dropped(db: Database) -> None:
    inv = Inventory(db)
    devices = [await inv.upsert_device_on_registration(registration(f"s-{i}")) for i in range(5)]
    writer = TelemetryWriter(db, batch_size=2_000, flush_interval=0.05, max_queued=30_000)
    async with writer:
        for i in range(25_000):  # one burst, no await: the writer cannot run meanwhile
            d = devices[i % 5]
            assert writer.add(d.id, "/3303/0/5700", T0 + timedelta(seconds=i), 10 + i % 7, "Cel")
        assert writer.stats().queued == 25_000
        for _ in range(200):
            if writer.stats().written == 25_000:
                break
            await asyncio.sleep(0.05)
    stats = writer.stats()
    assert (stats.written, stats.queued, stats.dropped_over_bound, stats.rejected) == (
        25_000,
        0,
        0,
        0,
    )
    assert stats.batches >= 13 and stats.bound == 30_000
    assert await count_rows(db, TelemetryRow) == 25_000


async def test_writer_and_inventory_write_concurrently(db: Database) -> None:
    """Ingest batches and registrations interleave (on SQLite: queue on the lock)."""
    inv = Inventory(db)
    device = await inv.upsert_device_on_registration(registration("s-0"))
    async with TelemetryWriter(db, batch_size=500, flush_interval=0.01) as writer:

        async def ingest() -> None:
            for i in range(10_000):
                writer.add(device.id, "/3303/0/5700", T0 + timedelta(milliseconds=i), 1.0)
                if i % 500 == 0:
                    await asyncio.sleep(0.005)

        async def register() -> None:
            for i in range(1, 31):
                await inv.upsert_device_on_registration(registration(f"s-{i}"))

        await asyncio.gather(ingest(), register(), register())
    assert writer.stats().written == 10_000
    assert (await inv.list_devices()).total == 31
    assert await count_rows(db, TelemetryRow) == 10_000


async def test_telemetry_queue_bound_is_reported(db: Database) -> None:
    device = await Inventory(db).upsert_device_on_registration(registration("s-1"))
    writer = TelemetryWriter(db, batch_size=50, max_queued=100)
    accepted = [writer.add(device.id, "/1", T0, i) for i in range(150)]
    assert accepted.count(True) == 100
    assert writer.stats().dropped_over_bound == 50
    assert await writer.flush()
    assert writer.stats().written == 100 and writer.stats().queued == 0
    assert writer.add(device.id, "/1", T0, 1.0)


async def test_telemetry_writer_keeps_rows_through_failures(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = await Inventory(db).upsert_device_on_registration(registration("s-1"))
    writer = TelemetryWriter(db, batch_size=10, max_queued=1000)
    for i in range(25):
        writer.add(device.id, "/3303/0/5700", T0 + timedelta(seconds=i), float(i))
    writer.add(424242, "/3303/0/5700", T0, 1.0)  # no such device: rejected, not blocking

    real_write = writer._write
    calls = 0

    async def flaky(batch: list[Row]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OperationalError("INSERT", {}, Exception("database went away"))
        await real_write(batch)

    monkeypatch.setattr(writer, "_write", flaky)
    assert not await writer.flush()
    assert writer.stats().queued == 16 and writer.stats().failures == 1
    assert await writer.flush()
    stats = writer.stats()
    assert (stats.written, stats.rejected, stats.queued) == (25, 1, 0)
    assert "rejected 424242" in (stats.last_error or "")
    assert await count_rows(db, TelemetryRow) == 25

    with pytest.raises(ValueError):
        writer.add(device.id, "/1", datetime(2026, 1, 1), 1.0)


async def test_telemetry_query_raw_and_steps(db: Database) -> None:
    device = await Inventory(db).upsert_device_on_registration(registration("s-1"))
    other = await Inventory(db).upsert_device_on_registration(registration("s-2"))
    writer = TelemetryWriter(db)
    # 10 minutes of one sample every 10 s: value = minute index, plus a text path.
    for i in range(60):
        t = T0 + timedelta(seconds=10 * i)
        writer.add(device.id, "/3303/0/5700", t, float(i // 6) + (i % 6) / 10, "Cel")
        writer.add(other.id, "/3303/0/5700", t, 99.0, "Cel")
    writer.add(device.id, "/3/0/0", T0, "Fishvision")
    writer.add(device.id, "/3/0/0", T0 + timedelta(hours=1), "Fishvision AS")
    assert await writer.flush()

    store = TelemetryStore(db)
    raw = await store.query(device.id, "/3303/0/5700", T0, T0 + timedelta(minutes=1))
    assert [p.value for p in raw] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert raw[0].time == T0 and raw[0].unit == "Cel"
    assert (
        len(await store.query(device.id, "/3303/0/5700", T0, T0 + timedelta(hours=1), limit=7)) == 7
    )

    steps = await store.query(
        device.id, "/3303/0/5700", T0, T0 + timedelta(minutes=10), timedelta(minutes=2)
    )
    assert [b.start for b in steps] == [T0 + timedelta(minutes=2 * k) for k in range(5)]
    first = steps[0]
    assert first.count == 12 and first.min == 0.0 and first.max == pytest.approx(1.5)
    assert first.avg == pytest.approx(sum(k + j / 10 for k in (0, 1) for j in range(6)) / 12)
    assert first.last == pytest.approx(1.5)
    assert first.last_time == T0 + timedelta(seconds=110)

    texts = await store.query(device.id, "/3/0/0", T0, T0 + timedelta(days=1), timedelta(days=1))
    assert len(texts) == 1 and texts[0].count == 2 and texts[0].last == "Fishvision AS"
    assert texts[0].min is None and texts[0].avg is None

    latest = await store.latest(device.id)
    assert latest["/3/0/0"].value == "Fishvision AS"
    assert latest["/3303/0/5700"].value == pytest.approx(9.5)

    with pytest.raises(Invalid):
        await store.query(device.id, "/1", T0, T0 + timedelta(days=1), timedelta(milliseconds=500))
    with pytest.raises(Invalid):
        await store.query(device.id, "/1", T0, T0)


async def test_retention_rolls_raw_rows_into_minutes(db: Database) -> None:
    device = await Inventory(db).upsert_device_on_registration(registration("s-1"))
    path = "/3303/0/5700"
    writer = TelemetryWriter(db)
    for i in range(600):  # 10 minutes at 1 Hz
        writer.add(device.id, path, T0 + timedelta(seconds=i), float(i % 60), "Cel")
    writer.add(device.id, "/3/0/0", T0 + timedelta(seconds=30), "booting")
    assert await writer.flush()

    store = TelemetryStore(db)
    window = (T0, T0 + timedelta(minutes=10), timedelta(minutes=5))
    before = await store.query(device.id, path, *window)

    # Keep 4 minutes raw as of T0+10:30: the first 6 minutes are rolled up.
    result = await store.apply_retention(
        timedelta(minutes=4), now=T0 + timedelta(minutes=10, seconds=30)
    )
    assert result.cutoff == T0 + timedelta(minutes=6)
    assert (result.rolled_rows, result.minutes) == (361, 7)
    assert await count_rows(db, TelemetryRow) == 240
    assert await count_rows(db, TelemetryMinuteRow) == 7

    after = await store.query(device.id, path, *window)
    assert after == before
    assert after[0].count == 300 and after[0].avg == pytest.approx(29.5)
    assert after[0].last == 59.0 and after[0].last_time == T0 + timedelta(seconds=299)
    text_steps = await store.query(
        device.id, "/3/0/0", T0, T0 + timedelta(hours=1), timedelta(hours=1)
    )
    assert text_steps[0].last == "booting" and text_steps[0].count == 1
    assert await store.query(device.id, path, T0, T0 + timedelta(minutes=6)) == []

    # A late sample for a minute already rolled up merges into it.
    writer.add(device.id, path, T0 + timedelta(seconds=59, microseconds=500_000), 1000.0, "Cel")
    writer.add(device.id, path, T0 + timedelta(seconds=1), -5.0, "Cel")
    assert await writer.flush()
    again = await store.apply_retention(
        timedelta(minutes=4), now=T0 + timedelta(minutes=10, seconds=30)
    )
    assert (again.rolled_rows, again.minutes) == (2, 1)
    minute0 = (
        await store.query(device.id, path, T0, T0 + timedelta(minutes=1), timedelta(minutes=1))
    )[0]
    assert (minute0.count, minute0.min, minute0.max, minute0.last) == (62, -5.0, 1000.0, 1000.0)
    assert minute0.avg == pytest.approx((sum(range(60)) + 995.0) / 62)

    assert await store.prune_minutes(T0 + timedelta(minutes=3)) == 4  # 3 numeric, 1 text
    assert await count_rows(db, TelemetryMinuteRow) == 3

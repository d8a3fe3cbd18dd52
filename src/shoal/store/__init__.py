"""Persistence: SQLAlchemy on SQLite (single node) or PostgreSQL (fleet).

`Database(default_url(data_dir))` (or a `postgresql+psycopg://` URL), then
`await db.migrate()`; `Inventory(db)` for tenants, farms, enclosures and devices,
`EventLog(db)` for device history, `TelemetryWriter(db)` to ingest samples and
`TelemetryStore(db)` to query and downsample them.
"""

from shoal.store.db import Database, default_url
from shoal.store.errors import Conflict, Invalid, NotFound, StoreError
from shoal.store.events import DeviceEvent, DeviceEventKind, EventLog
from shoal.store.inventory import (
    ENCLOSURE_CODE_ALPHABET,
    UNSET,
    Device,
    DeviceRegistration,
    Enclosure,
    Farm,
    Inventory,
    KnownRegistration,
    ObservationRecord,
    Page,
    Tenant,
    new_enclosure_code,
    normalize_enclosure_code,
)
from shoal.store.migrations import migrate, upgrade
from shoal.store.schema import CorrelationSource, DeviceKind, DeviceStatus, EnclosureKind
from shoal.store.telemetry import (
    RetentionResult,
    TelemetryBucket,
    TelemetryPoint,
    TelemetryStore,
    TelemetryWriter,
    WriterStats,
)

__all__ = [
    "ENCLOSURE_CODE_ALPHABET",
    "UNSET",
    "Conflict",
    "CorrelationSource",
    "Database",
    "Device",
    "DeviceEvent",
    "DeviceEventKind",
    "DeviceKind",
    "DeviceRegistration",
    "DeviceStatus",
    "Enclosure",
    "EnclosureKind",
    "EventLog",
    "Farm",
    "Invalid",
    "Inventory",
    "KnownRegistration",
    "NotFound",
    "ObservationRecord",
    "Page",
    "RetentionResult",
    "StoreError",
    "TelemetryBucket",
    "TelemetryPoint",
    "TelemetryStore",
    "TelemetryWriter",
    "Tenant",
    "WriterStats",
    "default_url",
    "migrate",
    "new_enclosure_code",
    "normalize_enclosure_code",
    "upgrade",
]

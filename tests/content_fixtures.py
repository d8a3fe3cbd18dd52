"""A small object model for the content-format tests: Device (3), Firmware Update
(5), Temperature (3303), Server (1) and a made-up object 32769 with one single and
one multiple resource of every type, plus hypothesis strategies typed by it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from shoal.lwm2m.model import (
    ObjectLink,
    ObjectModel,
    Operations,
    ResourceModel,
    ResourceType,
    Value,
)
from shoal.lwm2m.path import Path

T = ResourceType
R, RW, E = Operations.READ, Operations.READ | Operations.WRITE, Operations.EXECUTE


def _res(
    rid: int, name: str, typ: ResourceType, ops: Operations = R, multiple: bool = False
) -> ResourceModel:
    return ResourceModel(rid, name, typ, ops, multiple)


def _obj(oid: int, name: str, *resources: ResourceModel, multiple: bool = True) -> ObjectModel:
    return ObjectModel(oid, name, {r.id: r for r in resources}, multiple=multiple)


DEVICE = _obj(
    3,
    "Device",
    _res(0, "Manufacturer", T.STRING),
    _res(1, "Model Number", T.STRING),
    _res(2, "Serial Number", T.STRING),
    _res(3, "Firmware Version", T.STRING),
    _res(4, "Reboot", T.NONE, E),
    _res(6, "Available Power Sources", T.INTEGER, multiple=True),
    _res(7, "Power Source Voltage", T.INTEGER, multiple=True),
    _res(8, "Power Source Current", T.INTEGER, multiple=True),
    _res(9, "Battery Level", T.INTEGER),
    _res(10, "Memory Free", T.INTEGER),
    _res(11, "Error Code", T.INTEGER, multiple=True),
    _res(13, "Current Time", T.TIME, RW),
    _res(14, "UTC Offset", T.STRING, RW),
    _res(15, "Timezone", T.STRING, RW),
    _res(16, "Supported Binding and Modes", T.STRING),
    _res(20, "Battery Status", T.INTEGER),
    _res(21, "Memory Total", T.INTEGER),
    multiple=False,
)
FIRMWARE = _obj(
    5,
    "Firmware Update",
    _res(0, "Package", T.OPAQUE, Operations.WRITE),
    _res(1, "Package URI", T.STRING, RW),
    _res(2, "Update", T.NONE, E),
    _res(3, "State", T.INTEGER),
    _res(5, "Update Result", T.INTEGER),
    _res(6, "PkgName", T.STRING),
    _res(7, "PkgVersion", T.STRING),
    _res(8, "Firmware Update Protocol Support", T.INTEGER, multiple=True),
    _res(9, "Firmware Update Delivery Method", T.INTEGER),
    multiple=False,
)
TEMPERATURE = _obj(
    3303,
    "Temperature",
    _res(5700, "Sensor Value", T.FLOAT),
    _res(5701, "Sensor Units", T.STRING),
    _res(5601, "Min Measured Value", T.FLOAT),
    _res(5602, "Max Measured Value", T.FLOAT),
    _res(5605, "Reset Min and Max Measured Values", T.NONE, E),
    _res(5750, "Application Type", T.STRING, RW),
    _res(5518, "Timestamp", T.TIME),
)
ACCESS_CONTROL = _obj(
    2,
    "LwM2M Access Control",
    _res(0, "Object ID", T.INTEGER),
    _res(1, "Object Instance ID", T.INTEGER),
    _res(2, "ACL", T.INTEGER, RW, multiple=True),
    _res(3, "Access Control Owner", T.INTEGER, RW),
)
SERVER = _obj(
    1,
    "LwM2M Server",
    _res(0, "Short Server ID", T.INTEGER),
    _res(1, "Lifetime", T.INTEGER, RW),
    _res(2, "Default Minimum Period", T.INTEGER, RW),
    _res(3, "Default Maximum Period", T.INTEGER, RW),
    _res(4, "Disable", T.NONE, E),
    _res(6, "Notification Storing", T.BOOLEAN, RW),
    _res(7, "Binding", T.STRING, RW),
    _res(8, "Registration Update Trigger", T.NONE, E),
    _res(10, "APN Link", T.OBJLNK, RW),
    _res(12, "Last Bootstrapped", T.TIME),
    _res(13, "Registration Priority Order", T.UNSIGNED_INTEGER),
)
_TYPES = [t for t in ResourceType if t is not ResourceType.NONE]
CODEC_TEST = _obj(
    32769,
    "Codec Test",
    *[_res(i, f"single {t.value}", t, RW) for i, t in enumerate(_TYPES)],
    *[_res(100 + i, f"multiple {t.value}", t, RW, multiple=True) for i, t in enumerate(_TYPES)],
)

OBJECTS = {o.id: o for o in (DEVICE, FIRMWARE, TEMPERATURE, ACCESS_CONTROL, SERVER, CODEC_TEST)}


class Lookup:
    """The ModelLookup the codecs need, over the objects above."""

    def resource(self, object_id: int, resource_id: int) -> ResourceModel | None:
        obj = OBJECTS.get(object_id)
        return None if obj is None else obj.resource(resource_id)


MODEL = Lookup()

# The Device object instance of the LwM2M TS Core examples (Read /3/0).
P = Path.parse
DEVICE_VALUES: dict[Path, Value] = {
    P("/3/0/0"): "Open Mobile Alliance",
    P("/3/0/1"): "Lightweight M2M Client",
    P("/3/0/2"): "345000123",
    P("/3/0/3"): "1.0",
    P("/3/0/6/0"): 1,
    P("/3/0/6/1"): 5,
    P("/3/0/7/0"): 3800,
    P("/3/0/7/1"): 5000,
    P("/3/0/8/0"): 125,
    P("/3/0/8/1"): 900,
    P("/3/0/9"): 100,
    P("/3/0/10"): 15,
    P("/3/0/11/0"): 0,
    P("/3/0/13"): datetime(2013, 5, 2, 10, 40, 15, tzinfo=UTC),  # 1367491215
    P("/3/0/14"): "+02:00",
    P("/3/0/16"): "U",
}

# --- strategies ----------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def values_of(typ: ResourceType, *, finite: bool = False) -> st.SearchStrategy[Value]:
    """Values a resource of `typ` holds; `finite` for formats without inf/nan (JSON)."""
    if typ in (T.STRING, T.CORELNK):
        return st.text(max_size=40)
    if typ is T.INTEGER:
        return st.integers(-(1 << 63), (1 << 63) - 1)
    if typ is T.UNSIGNED_INTEGER:
        return st.integers(0, (1 << 64) - 1)
    if typ is T.FLOAT:
        return st.floats(allow_nan=False, allow_infinity=not finite)
    if typ is T.BOOLEAN:
        return st.booleans()
    if typ is T.OPAQUE:
        return st.binary(max_size=300)
    if typ is T.TIME:
        return st.integers(-62135596800, 253402300799).map(lambda s: _EPOCH + timedelta(seconds=s))
    if typ is T.OBJLNK:
        return st.builds(ObjectLink, st.integers(0, 65535), st.integers(0, 65535))
    raise AssertionError(typ)


ids = st.integers(0, 65534)
WRITABLE = [
    (oid, r)
    for oid, obj in OBJECTS.items()
    for r in obj.resources.values()
    if r.type is not ResourceType.NONE
]


@st.composite
def resource_entries(
    draw: st.DrawFn,
    object_id: int,
    instance_id: int,
    *,
    finite: bool = False,
    opaque_ok: bool = True,
) -> dict[Path, Value]:
    """Values for some resources of one object instance, multiple ones as instances."""
    obj = OBJECTS[object_id]
    chosen = draw(
        st.lists(
            st.sampled_from(
                [
                    r
                    for r in obj.resources.values()
                    if r.type is not T.NONE and (opaque_ok or r.type is not T.OPAQUE)
                ]
            ),
            unique_by=lambda r: r.id,
            max_size=6,
        )
    )
    out: dict[Path, Value] = {}
    for r in chosen:
        vals = values_of(r.type, finite=finite)
        if r.multiple:
            for ri in draw(st.lists(st.integers(0, 65534), min_size=1, max_size=3, unique=True)):
                out[Path(object_id, instance_id, r.id, ri)] = draw(vals)
        else:
            out[Path(object_id, instance_id, r.id)] = draw(vals)
    return out

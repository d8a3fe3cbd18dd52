"""Pieces every content-format codec shares: the error type, the model lookup,
value typing against the model, time conversion and guarded CBOR parsing.

Kept out of the package ``__init__`` so format modules import it without a cycle.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Final, Protocol

import cbor2

from shoal.lwm2m.model import ObjectLink, ResourceModel, ResourceType, Value
from shoal.lwm2m.path import MAX_ID, InvalidPath, Path


class CodecError(ValueError):
    """Bad payload (or unencodable values): the only error a codec raises."""


class ModelLookup(Protocol):
    """What codecs need from the object model: a resource's type and multiplicity.

    `shoal.lwm2m.registry.ModelRegistry` fits; so does any small test lookup.
    """

    def resource(self, object_id: int, resource_id: int) -> ResourceModel | None: ...


Values = dict[Path, Value]

# Values sharing one timestamp: (seconds since the epoch or None when the payload
# carried no time, values).
TimedValues = tuple[float | None, dict[Path, Value]]


class _NoModel:
    """A lookup that knows no resource: every value is typed by its format alone."""

    __slots__ = ()

    def resource(self, object_id: int, resource_id: int) -> ResourceModel | None:
        return None


EMPTY_MODEL: Final[ModelLookup] = _NoModel()

# Marks a container that exists but has no children: an object instance with no
# resources (key /o/i) or a multiple resource with no instances (key /o/i/r of a
# resource the model says is multiple). Encoders ignore the value itself.
EMPTY: Final[bytes] = b""

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
UINT64_MAX: Final = (1 << 64) - 1

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_new_tuple = tuple.__new__


def make_path(ids: tuple[int, ...]) -> Path:
    """A Path from ids the caller knows are ints; only the range is checked (hot path)."""
    for i in ids:
        if not 0 <= i < MAX_ID:
            raise CodecError(f"path id out of range: {i}")
    return _new_tuple(Path, ids)


def trusted_path(ids: tuple[int, ...]) -> Path:
    """A Path from ids already known valid (e.g. TLV ids, which are 0..65534 by parsing)."""
    return _new_tuple(Path, ids)


@lru_cache(maxsize=4096)
def _parse_name(name: str) -> Path:
    return Path.parse(name)


def parse_name(name: str) -> Path:
    """Parse a SenML/JSON record name into a Path; names repeat per notification, so cached."""
    try:
        return _parse_name(name)
    except InvalidPath as exc:
        raise CodecError(f"invalid path name {name!r}") from exc


def resource_model(model: ModelLookup | None, path: Path) -> ResourceModel | None:
    if model is None or len(path) < 3:
        return None
    return model.resource(path[0], path[2])


def check_under(path: Path, root: Path) -> None:
    n = len(root)
    if n and (len(path) < n or path[:n] != root):
        raise CodecError(f"{path} is not under the request path {root}")


def check_leaf(path: Path) -> None:
    if len(path) < 3:
        raise CodecError(f"a value needs a resource or resource-instance path, got {path}")


def time_from_seconds(seconds: int | float) -> datetime:
    """Epoch seconds to a UTC datetime; exact for ints, microseconds for floats."""
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except (OverflowError, ValueError) as exc:
        raise CodecError(f"time out of range: {seconds!r}") from exc


def seconds_from_time(value: datetime) -> int | float:
    """A datetime as epoch seconds: int when whole, float otherwise."""
    if value.tzinfo is None:
        raise CodecError("TIME values must be timezone-aware datetimes")
    delta = value - _EPOCH
    whole = delta.days * 86400 + delta.seconds
    if delta.microseconds:
        return whole + delta.microseconds / 1e6
    return whole


def whole_seconds(value: datetime) -> int:
    """A datetime as whole epoch seconds (floor), for formats that carry only integers."""
    if value.tzinfo is None:
        raise CodecError("TIME values must be timezone-aware datetimes")
    delta = value - _EPOCH
    return delta.days * 86400 + delta.seconds


def wire_time(ts: float) -> int | float:
    """A group timestamp as written in SenML/JSON `t`: an int when whole."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    if isinstance(ts, float) and math.isfinite(ts):
        return int(ts) if ts.is_integer() else ts
    raise CodecError(f"invalid timestamp {ts!r}")


def parse_objlnk(text: str) -> ObjectLink:
    """`"3:0"` to ObjectLink(3, 0); strict decimal ids 0..65535."""
    obj, sep, inst = text.partition(":")
    if (
        sep
        and 0 < len(obj) <= 5
        and 0 < len(inst) <= 5
        and obj.isascii()
        and inst.isascii()
        and obj.isdigit()
        and inst.isdigit()
    ):
        o, i = int(obj), int(inst)
        if o <= 0xFFFF and i <= 0xFFFF:
            return ObjectLink(o, i)
    raise CodecError(f"invalid object link {text!r}")


def utf8(text: str) -> bytes:
    """UTF-8 bytes of a string; lone surrogates cannot be encoded."""
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise CodecError(f"string is not encodable as UTF-8: {text!r:.40}") from exc


def format_objlnk(value: ObjectLink) -> str:
    return f"{value.object_id}:{value.instance_id}"


def infer_type(value: object) -> ResourceType:
    """The LwM2M type a Python value maps to, when no model says otherwise."""
    if isinstance(value, bool):
        return ResourceType.BOOLEAN
    if isinstance(value, int):
        return ResourceType.UNSIGNED_INTEGER if value > INT64_MAX else ResourceType.INTEGER
    if isinstance(value, float):
        return ResourceType.FLOAT
    if isinstance(value, str):
        return ResourceType.STRING
    if isinstance(value, bytes | bytearray):
        return ResourceType.OPAQUE
    if isinstance(value, datetime):
        return ResourceType.TIME
    if isinstance(value, ObjectLink):
        return ResourceType.OBJLNK
    raise CodecError(f"not an LwM2M value: {type(value).__name__}")


def _as_int(raw: object) -> int | None:
    if isinstance(raw, int):
        return None if isinstance(raw, bool) else raw
    if isinstance(raw, Decimal):
        try:
            raw = float(raw)
        except (OverflowError, ValueError):
            return None
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return None


def _as_float(raw: object) -> float | None:
    if isinstance(raw, float):
        return raw
    if isinstance(raw, int | Decimal) and not isinstance(raw, bool):
        try:
            return float(raw)
        except (OverflowError, ValueError):
            return None
    return None


def coerce(raw: object, rtype: ResourceType | None, path: Path) -> Value:
    """Type a value decoded from a self-describing format (or given to an encoder).

    With a model type the value must fit it (ints widen to floats, integral floats
    narrow to ints, numbers become TIME, "o:i" strings become Objlnk); without one any
    LwM2M value passes as it is.
    """
    if rtype is ResourceType.STRING or rtype is ResourceType.CORELNK:
        if isinstance(raw, str):
            return raw
    elif rtype is ResourceType.INTEGER:
        i = _as_int(raw)
        if i is not None and INT64_MIN <= i <= INT64_MAX:
            return i
    elif rtype is ResourceType.FLOAT:
        f = _as_float(raw)
        if f is not None:
            return f
    elif rtype is ResourceType.BOOLEAN:
        if isinstance(raw, bool):
            return raw
    elif rtype is ResourceType.OPAQUE:
        if isinstance(raw, bytes):
            return raw
        if isinstance(raw, bytearray):
            return bytes(raw)
    elif rtype is ResourceType.TIME:
        if isinstance(raw, datetime):
            if raw.tzinfo is None:
                raise CodecError(f"{path}: TIME values must be timezone-aware")
            return raw
        if isinstance(raw, int | float | Decimal) and not isinstance(raw, bool):
            f = _as_float(raw) if isinstance(raw, Decimal) else raw
            if f is not None:
                return time_from_seconds(f)
    elif rtype is ResourceType.OBJLNK:
        if isinstance(raw, ObjectLink):
            return raw
        if isinstance(raw, str):
            return parse_objlnk(raw)
    elif rtype is ResourceType.UNSIGNED_INTEGER:
        i = _as_int(raw)
        if i is not None and 0 <= i <= UINT64_MAX:
            return i
    else:  # no model entry, or an executable resource: keep what the format said
        if isinstance(raw, str | bytes | int | float | ObjectLink):
            return raw
        if isinstance(raw, datetime):
            if raw.tzinfo is None:
                raise CodecError(f"{path}: TIME values must be timezone-aware")
            return raw
        if isinstance(raw, bytearray):
            return bytes(raw)
        if isinstance(raw, Decimal):
            f = _as_float(raw)
            if f is not None:
                return f
        raise CodecError(f"{path}: unsupported value of type {type(raw).__name__}")
    raise CodecError(f"{path}: expected {rtype.value}, got {type(raw).__name__} {raw!r:.40}")


def model_type(model: ModelLookup | None, path: Path) -> ResourceType | None:
    rm = resource_model(model, path)
    return None if rm is None else rm.type


def single_root(root: Path, model: ModelLookup | None) -> ResourceType | None:
    """Check a single-value format's request path and return the resource type there."""
    n = len(root)
    if n != 3 and n != 4:
        raise CodecError(f"single-value formats need a resource path, got {root}")
    rm = resource_model(model, root)
    if rm is None:
        return None
    if n == 3 and rm.multiple:
        raise CodecError(f"{root} is a multiple resource: a single-value format cannot carry it")
    return rm.type


def single_value(values: Mapping[Path, Value], root: Path) -> Value:
    if len(values) != 1:
        raise CodecError(f"single-value formats carry exactly one value, got {len(values)}")
    for path, value in values.items():
        if path != root:
            raise CodecError(f"value path {path} differs from the request path {root}")
        return value
    raise AssertionError("unreachable")


def _reject_tag(*_: object) -> object:
    raise CodecError("CBOR tag not allowed in LwM2M payloads")


# cbor2 decodes many semantic tags into Python objects (regexes, shared cyclic
# references, sets, UUIDs...). LwM2M needs only tag 1 (epoch time), bignums and
# decimal fractions, so every other built-in decoder is switched off.
_SEMANTIC_DECODERS: Final = {
    tag: _reject_tag
    for tag in (0, 5, 25, 28, 29, 30, 35, 36, 37, 38, 52, 54, 100, 256, 258, 260, 261, 1004)
}
_SEMANTIC_DECODERS[55799] = _reject_tag


def cbor_loads(payload: bytes, max_depth: int = 8) -> object:
    """Parse exactly one CBOR item; any parser failure becomes CodecError."""
    fp = io.BytesIO(payload)
    try:
        obj = cbor2.CBORDecoder(
            fp, semantic_decoders=_SEMANTIC_DECODERS, max_depth=max_depth
        ).decode()
    except Exception as exc:  # a third-party parser: its every failure is bad input
        raise CodecError(f"invalid CBOR: {exc}") from exc
    if fp.tell() != len(payload):
        raise CodecError("trailing bytes after the CBOR item")
    return obj


def cbor_dumps(obj: object) -> bytes:
    """Canonical CBOR: smallest float width that keeps the value, as LwM2M recommends."""
    try:
        return bytes(cbor2.dumps(obj, canonical=True))
    except Exception as exc:  # cbor2 raises several types for unencodable input
        raise CodecError(f"cannot encode as CBOR: {exc}") from exc


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def json_loads(payload: bytes) -> object:
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise CodecError(f"invalid JSON: {exc}") from exc


def json_dumps(obj: object) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError as exc:
        raise CodecError(f"cannot encode as JSON: {exc}") from exc


def _ts_key(group: TimedValues) -> float:
    return float("-inf") if group[0] is None else group[0]


def merge_timed(timed: list[TimedValues]) -> Values:
    """Collapse time-stamped groups into one map where the newest value of a path
    wins (untimed values count as oldest)."""
    if len(timed) == 1:
        return timed[0][1]
    merged: Values = {}
    for _, values in sorted(timed, key=_ts_key):
        merged.update(values)
    return merged

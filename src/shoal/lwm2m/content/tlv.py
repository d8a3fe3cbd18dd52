"""OMA TLV (content-format 11542): LwM2M 1.0's compact binary format.

A TLV is one header byte (type in bits 7-6, 16-bit id flag in bit 5, length
type in bits 4-3, short length in bits 2-0), an 8/16-bit id, a 0/8/16/24-bit
length and the value. Types: object instance, resource instance, multiple
resource, resource with value. Values carry no type, so the model decides; a
resource the model does not know decodes as its raw bytes.

TLV has no object id, so it cannot carry composite (root path) payloads.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from shoal.lwm2m.content._common import (
    EMPTY,
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    CodecError,
    ModelLookup,
    check_under,
    coerce,
    infer_type,
    resource_model,
    time_from_seconds,
    trusted_path,
    utf8,
    whole_seconds,
)
from shoal.lwm2m.model import ObjectLink, ResourceType, Value
from shoal.lwm2m.path import Path

OBJECT_INSTANCE = 0
RESOURCE_INSTANCE = 1
MULTIPLE_RESOURCE = 2
RESOURCE = 3

# How many path ids precede a TLV's own id, by TLV type.
_LEVEL = (1, 3, 2, 2)

_SIGNED = {
    1: struct.Struct(">b"),
    2: struct.Struct(">h"),
    4: struct.Struct(">i"),
    8: struct.Struct(">q"),
}
_UNSIGNED = {
    1: struct.Struct(">B"),
    2: struct.Struct(">H"),
    4: struct.Struct(">I"),
    8: struct.Struct(">Q"),
}
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_OBJLNK = struct.Struct(">HH")
_F32_MAX = 3.4028234663852886e38
_INF = float("inf")

_STRINGS = (ResourceType.STRING, ResourceType.CORELNK)
_SIGNED_TYPES = (ResourceType.INTEGER, ResourceType.TIME)


# --- decoding ---------------------------------------------------------------


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    """Decode TLVs found at `root`: object-instance TLVs for an object path,
    resource TLVs (or one object-instance wrapper) for an instance path, and so on."""
    n = len(root)
    if n == 0:
        raise CodecError("TLV carries no object id: decode it at an object or deeper path")
    buf = payload if type(payload) is bytes else bytes(payload)
    out: dict[Path, Value] = {}
    end = len(buf)
    pos = 0
    shallower = False
    while pos < end:
        typ, ident, start, stop = _header(buf, pos, end)
        level = _LEVEL[typ]
        if level > n:
            raise CodecError(f"a {_NAMES[typ]} TLV cannot appear at {root}")
        shallower = shallower or level < n
        _decode_one(buf, typ, ident, start, stop, root[:level], out, model)
        pos = stop
    if shallower:
        # A wrapper TLV above the request path (e.g. an object-instance TLV in
        # answer to a resource read): everything inside must still be under it.
        for path in out:
            check_under(path, root)
    return out


_NAMES = ("object instance", "resource instance", "multiple resource", "resource")


def _header(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """Parse one TLV header: (type, id, value start, value end)."""
    first = buf[pos]
    pos += 1
    if first & 0x20:
        if pos + 2 > end:
            raise CodecError("truncated TLV id")
        ident = (buf[pos] << 8) | buf[pos + 1]
        if ident == 0xFFFF:
            raise CodecError("TLV id 65535 is reserved")
        pos += 2
    else:
        if pos >= end:
            raise CodecError("truncated TLV id")
        ident = buf[pos]
        pos += 1
    ltype = first & 0x18
    if ltype == 0:
        length = first & 0x07
    else:
        width = ltype >> 3
        if pos + width > end:
            raise CodecError("truncated TLV length")
        length = int.from_bytes(buf[pos : pos + width], "big")
        pos += width
    stop = pos + length
    if stop > end:
        raise CodecError(f"TLV length {length} overruns the payload")
    return first >> 6, ident, pos, stop


def _decode_one(
    buf: bytes,
    typ: int,
    ident: int,
    start: int,
    stop: int,
    prefix: tuple[int, ...],
    out: dict[Path, Value],
    model: ModelLookup | None,
) -> None:
    # Ids come from the request path or from _header, which rejects 65535: all valid.
    ids = (*prefix, ident)
    if typ in (RESOURCE, RESOURCE_INSTANCE):
        path = trusted_path(ids)
        rm = None if model is None else model.resource(ids[0], ids[2])
        out[path] = _value(buf, start, stop, None if rm is None else rm.type, path)
    elif typ == MULTIPLE_RESOURCE:
        path = trusted_path(ids)
        rm = None if model is None else model.resource(ids[0], ids[2])
        rtype = None if rm is None else rm.type
        if start == stop:
            out[path] = EMPTY
        while start < stop:
            ctyp, cid, cstart, cstop = _header(buf, start, stop)
            if ctyp != RESOURCE_INSTANCE:
                raise CodecError(f"{path}: a multiple resource TLV holds only resource instances")
            ipath = trusted_path((*ids, cid))
            out[ipath] = _value(buf, cstart, cstop, rtype, ipath)
            start = cstop
    else:  # object instance
        if start == stop:
            out[trusted_path(ids)] = EMPTY
        while start < stop:
            ctyp, cid, cstart, cstop = _header(buf, start, stop)
            if ctyp != RESOURCE and ctyp != MULTIPLE_RESOURCE:
                raise CodecError(
                    f"{trusted_path(ids)}: an object instance TLV holds only resources"
                )
            _decode_one(buf, ctyp, cid, cstart, cstop, ids, out, model)
            start = cstop


def _value(buf: bytes, start: int, stop: int, rtype: ResourceType | None, path: Path) -> Value:
    length = stop - start
    if rtype is None or rtype is ResourceType.OPAQUE or rtype is ResourceType.NONE:
        return buf[start:stop]
    if rtype in _STRINGS:
        try:
            return buf[start:stop].decode()
        except UnicodeDecodeError as exc:
            raise CodecError(f"{path}: string is not UTF-8") from exc
    if rtype in _SIGNED_TYPES:
        fmt = _SIGNED.get(length)
        if fmt is not None:
            i: int = fmt.unpack_from(buf, start)[0]
            return i if rtype is ResourceType.INTEGER else time_from_seconds(i)
    elif rtype is ResourceType.FLOAT:
        if length == 8:
            f: float = _F64.unpack_from(buf, start)[0]
            return f
        if length == 4:
            f = _F32.unpack_from(buf, start)[0]
            return f
    elif rtype is ResourceType.BOOLEAN:
        if length == 1 and buf[start] <= 1:
            return buf[start] == 1
    elif rtype is ResourceType.UNSIGNED_INTEGER:
        fmt = _UNSIGNED.get(length)
        if fmt is not None:
            u: int = fmt.unpack_from(buf, start)[0]
            return u
    elif rtype is ResourceType.OBJLNK and length == 4:
        return ObjectLink(*_OBJLNK.unpack_from(buf, start))
    raise CodecError(f"{path}: {length} bytes is not a valid TLV {rtype.value}")


# --- encoding ---------------------------------------------------------------

_Resource = tuple[ResourceType, Value] | dict[int, tuple[ResourceType, Value]]


def encode(values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None) -> bytes:
    """Encode values under `root` as the TLVs a Read of `root` returns: object-instance
    TLVs for an object path, resource TLVs for an instance path, one (multiple)
    resource TLV for a resource path, one resource-instance TLV for an instance path."""
    n = len(root)
    if n == 0:
        raise CodecError("TLV carries no object id: encode at an object or deeper path")
    instances: dict[int, dict[int, _Resource]] = {}
    for path, value in values.items():
        check_under(path, root)
        depth = len(path)
        if depth < 2:
            raise CodecError(f"TLV values need instance or deeper paths, got {path}")
        resources = instances.setdefault(path[1], {})
        if depth == 2:
            continue  # an instance with no resources
        rid = path[2]
        rm = resource_model(model, path)
        if depth == 3:
            if rm is not None and rm.multiple:
                if value != EMPTY:
                    raise CodecError(f"{path} is a multiple resource: key its values by instance")
                if not isinstance(resources.setdefault(rid, {}), dict):
                    raise CodecError(f"{path} given twice")
                continue
            if rid in resources:
                raise CodecError(f"{path} given both as a value and as instances")
            resources[rid] = _typed(value, rm.type if rm is not None else None, path)
        else:
            holder = resources.setdefault(rid, {})
            if not isinstance(holder, dict):
                raise CodecError(f"{path} given both as a value and as instances")
            holder[path[3]] = _typed(value, rm.type if rm is not None else None, path)

    out = bytearray()
    if n == 1:
        for iid, resources in instances.items():
            _put(out, OBJECT_INSTANCE, iid, _encode_resources(resources))
    elif n == 2:
        for resources in instances.values():
            out += _encode_resources(resources)
    else:
        for resources in instances.values():
            for rid, res in resources.items():
                if n == 4:
                    if not isinstance(res, dict):
                        raise CodecError(f"{root}: no value for this resource instance")
                    for riid, (rtype, value) in res.items():
                        _put(out, RESOURCE_INSTANCE, riid, _encode_value(value, rtype))
                else:
                    out += _encode_resources({rid: res})
    return bytes(out)


def _typed(value: Value, rtype: ResourceType | None, path: Path) -> tuple[ResourceType, Value]:
    if rtype is None or rtype is ResourceType.NONE:
        rtype = infer_type(value)
    return rtype, coerce(value, rtype, path)


def _encode_resources(resources: dict[int, _Resource]) -> bytearray:
    out = bytearray()
    for rid, res in resources.items():
        if isinstance(res, dict):
            inner = bytearray()
            for riid, (rtype, value) in res.items():
                _put(inner, RESOURCE_INSTANCE, riid, _encode_value(value, rtype))
            _put(out, MULTIPLE_RESOURCE, rid, inner)
        else:
            _put(out, RESOURCE, rid, _encode_value(res[1], res[0]))
    return out


def _put(out: bytearray, typ: int, ident: int, value: bytes | bytearray) -> None:
    length = len(value)
    first = typ << 6
    if ident > 0xFF:
        first |= 0x20
    if length < 8:
        first |= length
    elif length <= 0xFF:
        first |= 0x08
    elif length <= 0xFFFF:
        first |= 0x10
    elif length <= 0xFFFFFF:
        first |= 0x18
    else:
        raise CodecError(f"TLV value of {length} bytes exceeds the 24-bit length")
    out.append(first)
    if ident > 0xFF:
        out += ident.to_bytes(2, "big")
    else:
        out.append(ident)
    if length >= 8:
        out += length.to_bytes(((first & 0x18) >> 3), "big")
    out += value


def _encode_value(value: Value, rtype: ResourceType) -> bytes:
    """A coerced value as TLV bytes; integers and floats take the smallest exact width."""
    if isinstance(value, str):
        return utf8(value)
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        if rtype is ResourceType.UNSIGNED_INTEGER:
            return _unsigned(value)
        return _signed(value)
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude <= _F32_MAX:
            packed = _F32.pack(value)
            if _F32.unpack(packed)[0] == value:
                return packed
        elif not magnitude < _INF:  # infinity or NaN: float32 holds them exactly
            return _F32.pack(value)
        return _F64.pack(value)
    if isinstance(value, ObjectLink):
        return _OBJLNK.pack(value.object_id, value.instance_id)
    if isinstance(value, bytes):
        return value
    return _signed(whole_seconds(value))


def _signed(i: int) -> bytes:
    if -0x80 <= i <= 0x7F:
        return _SIGNED[1].pack(i)
    if -0x8000 <= i <= 0x7FFF:
        return _SIGNED[2].pack(i)
    if -0x80000000 <= i <= 0x7FFFFFFF:
        return _SIGNED[4].pack(i)
    if INT64_MIN <= i <= INT64_MAX:
        return _SIGNED[8].pack(i)
    raise CodecError(f"integer {i} does not fit 64 bits")


def _unsigned(i: int) -> bytes:
    if i <= 0xFF:
        return _UNSIGNED[1].pack(i)
    if i <= 0xFFFF:
        return _UNSIGNED[2].pack(i)
    if i <= 0xFFFFFFFF:
        return _UNSIGNED[4].pack(i)
    if i <= UINT64_MAX:
        return _UNSIGNED[8].pack(i)
    raise CodecError(f"unsigned integer {i} does not fit 64 bits")

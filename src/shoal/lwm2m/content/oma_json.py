"""OMA LwM2M JSON (content-format 11543): LwM2M 1.0's JSON format.

`{"bn": "/3/0/", "bt": ..., "e": [{"n": "9", "v": 100, "t": -5}, ...]}` with
value labels v (number), sv (string), bv (boolean) and ov (Objlnk "o:i").
Opaque values travel as standard base64 in `sv`, so the model decides whether
an `sv` is text or bytes, and whether a `v` is an integer, a float or a time.
Times resolve as bt + t, like SenML.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping
from datetime import datetime

from shoal.lwm2m.content._common import (
    CodecError,
    ModelLookup,
    TimedValues,
    Values,
    check_leaf,
    check_under,
    coerce,
    format_objlnk,
    infer_type,
    json_dumps,
    json_loads,
    merge_timed,
    model_type,
    parse_name,
    parse_objlnk,
    seconds_from_time,
    wire_time,
)
from shoal.lwm2m.model import ObjectLink, ResourceType, Value
from shoal.lwm2m.path import Path


def encode(values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None) -> bytes:
    return encode_timed(((None, values),), root, model)


def encode_timed(
    timed: Iterable[tuple[float | None, Mapping[Path, Value]]],
    root: Path,
    model: ModelLookup | None = None,
) -> bytes:
    groups = list(timed)
    n_root = len(root)
    exact = bool(root) and all(len(p) == n_root for _, values in groups for p in values)
    entries: list[dict[str, object]] = []
    for ts, values in groups:
        for path, value in values.items():
            check_leaf(path)
            check_under(path, root)
            rtype = model_type(model, path)
            if rtype is None or rtype is ResourceType.NONE:
                rtype = infer_type(value)
            value = coerce(value, rtype, path)
            if not root:
                entry: dict[str, object] = {"n": str(path)}
            elif exact:
                entry = {"n": ""}
            else:
                entry = {"n": "/".join([str(i) for i in path[n_root:]])}
            if isinstance(value, str):
                entry["sv"] = value
            elif isinstance(value, bool):
                entry["bv"] = value
            elif isinstance(value, int | float):
                entry["v"] = value
            elif isinstance(value, datetime):
                entry["v"] = seconds_from_time(value)
            elif isinstance(value, ObjectLink):
                entry["ov"] = format_objlnk(value)
            else:
                entry["sv"] = base64.b64encode(value).decode()
            if ts is not None:
                entry["t"] = wire_time(ts)
            entries.append(entry)
    doc: dict[str, object] = {}
    if root:
        doc["bn"] = str(root) if exact else str(root) + "/"
    doc["e"] = entries
    return json_dumps(doc)


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    """All values; where a path has several timestamps the newest wins."""
    return merge_timed(list(_decode(payload, root, model).items()))


def decode_timed(payload: bytes, root: Path, model: ModelLookup | None = None) -> list[TimedValues]:
    return list(_decode(payload, root, model).items())


def _time(raw: object) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        f = float(raw)
        if math.isfinite(f):
            return f
    raise CodecError(f"invalid JSON time {raw!r:.40}")


def _decode(payload: bytes, root: Path, model: ModelLookup | None) -> dict[float | None, Values]:
    doc = json_loads(payload)
    if not isinstance(doc, dict):
        raise CodecError("OMA JSON payload must be an object")
    entries = doc.get("e")
    if not isinstance(entries, list):
        raise CodecError('OMA JSON payload needs an "e" array')
    base_name = doc.get("bn", "")
    if not isinstance(base_name, str):
        raise CodecError("OMA JSON bn must be a string")
    bt = doc.get("bt")
    base_time = None if bt is None else _time(bt)
    groups: dict[float | None, Values] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise CodecError("an OMA JSON entry must be an object")
        name = entry.get("n", "")
        if not isinstance(name, str):
            raise CodecError("OMA JSON n must be a string")
        path = parse_name(base_name + name)
        check_leaf(path)
        if root:
            check_under(path, root)
        t = entry.get("t")
        ts = base_time if t is None else _time(t) + (base_time or 0.0)
        rtype = model_type(model, path)
        raw: object
        if (raw := entry.get("v")) is not None:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise CodecError(f"{path}: v must be a number")
        elif (raw := entry.get("sv")) is not None:
            if not isinstance(raw, str):
                raise CodecError(f"{path}: sv must be a string")
            if rtype is ResourceType.OPAQUE:
                raw = _unbase64(raw, path)
        elif (raw := entry.get("bv")) is not None:
            if not isinstance(raw, bool):
                raise CodecError(f"{path}: bv must be a boolean")
        elif (raw := entry.get("ov")) is not None:
            if not isinstance(raw, str):
                raise CodecError(f"{path}: ov must be a string")
            raw = parse_objlnk(raw)
        else:
            raise CodecError(f"{path}: entry without a value")
        group = groups.get(ts)
        if group is None:
            group = groups[ts] = {}
        group[path] = coerce(raw, rtype, path)
    return groups


def _unbase64(text: str, path: Path) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CodecError(f"{path}: opaque sv is not base64") from exc

"""SenML (RFC 8428) records as LwM2M values, shared by the JSON and CBOR variants.

The two variants differ only in their labels and in how `vd` (opaque) travels:
base64url text in JSON, a byte string in CBOR. Objlnk uses LwM2M's `vlo` label in
both. Names resolve as bn + n (bn sticks until the next bn); times as bt + t.
A resolved time is returned as given: RFC 8428 relative times (< 2**28) are left
for the caller, who owns the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

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
    model_type,
    parse_name,
    parse_objlnk,
    seconds_from_time,
    wire_time,
)
from shoal.lwm2m.model import ObjectLink, ResourceType, Value
from shoal.lwm2m.path import Path

Label = str | int


class Labels(NamedTuple):
    bn: Label
    bt: Label
    n: Label
    t: Label
    v: Label
    vs: Label
    vb: Label
    vd: Label
    vlo: Label


JSON_LABELS = Labels("bn", "bt", "n", "t", "v", "vs", "vb", "vd", "vlo")
CBOR_LABELS = Labels(-2, -3, 0, 6, 2, 3, 4, 8, "vlo")


def _number(raw: object) -> float:
    if isinstance(raw, int | float | Decimal) and not isinstance(raw, bool):
        try:
            f = float(raw)
        except (OverflowError, ValueError):  # a bignum too large for a float
            raise CodecError(f"invalid SenML time {raw!r:.40}") from None
        if math.isfinite(f):
            return f
    raise CodecError(f"invalid SenML time {raw!r:.40}")


def decode_records(
    records: object,
    labels: Labels,
    opaque: Callable[[object], bytes],
    root: Path,
    model: ModelLookup | None,
) -> dict[float | None, Values]:
    """Resolve SenML records into values grouped by timestamp, in order of appearance."""
    if not isinstance(records, list):
        raise CodecError("SenML payload must be an array of records")
    bn_label, bt_label, n_label, t_label = labels.bn, labels.bt, labels.n, labels.t
    v_label, vs_label, vb_label, vd_label, vlo_label = (
        labels.v,
        labels.vs,
        labels.vb,
        labels.vd,
        labels.vlo,
    )
    groups: dict[float | None, Values] = {}
    n_root = len(root)
    base_name = ""
    base_time: float | None = None
    last_ts: float | None = None
    current: Values | None = None
    for record in records:
        if not isinstance(record, dict):
            raise CodecError("a SenML record must be a map")
        bn = record.get(bn_label)
        if bn is not None:
            if not isinstance(bn, str):
                raise CodecError("SenML bn must be a string")
            base_name = bn
        bt = record.get(bt_label)
        if bt is not None:
            base_time = _number(bt)
        name = record.get(n_label, "")
        if not isinstance(name, str):
            raise CodecError("SenML n must be a string")
        path = parse_name(base_name + name if base_name else name)
        if len(path) < 3:
            check_leaf(path)
        if n_root and path[:n_root] != root:
            check_under(path, root)
        t = record.get(t_label)
        ts = base_time if t is None else _number(t) + (base_time or 0.0)

        if model is None:
            rtype = None
        else:
            rm = model.resource(path[0], path[2])
            rtype = None if rm is None else rm.type
        raw: object
        if (raw := record.get(v_label)) is not None:
            if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal):
                raise CodecError(f"{path}: SenML v must be a number")
        elif (raw := record.get(vs_label)) is not None:
            if not isinstance(raw, str):
                raise CodecError(f"{path}: SenML vs must be a string")
        elif (raw := record.get(vb_label)) is not None:
            if not isinstance(raw, bool):
                raise CodecError(f"{path}: SenML vb must be a boolean")
        elif (raw := record.get(vd_label)) is not None:
            raw = opaque(raw)
        elif (raw := record.get(vlo_label)) is not None:
            if not isinstance(raw, str):
                raise CodecError(f"{path}: SenML vlo must be a string")
            raw = parse_objlnk(raw)
        else:
            raise CodecError(f"{path}: SenML record without a value")
        value = coerce(raw, rtype, path)

        if current is None or ts != last_ts:
            current = groups.get(ts)
            if current is None:
                current = groups[ts] = {}
            last_ts = ts
        current[path] = value
    return groups


def to_timed(groups: dict[float | None, Values]) -> list[TimedValues]:
    return list(groups.items())


def encode_records(
    timed: Iterable[tuple[float | None, Mapping[Path, Value]]],
    labels: Labels,
    opaque: Callable[[bytes], object],
    root: Path,
    model: ModelLookup | None,
) -> list[dict[Label, object]]:
    """SenML records for values grouped by time: bn is the request path, n the rest."""
    groups = [(ts, values) for ts, values in timed]
    n_root = len(root)
    exact = all(len(p) == n_root for _, values in groups for p in values)
    if not root:
        base = None
    elif exact:
        base = str(root)
    else:
        base = str(root) + "/"
    records: list[dict[Label, object]] = []
    for ts, values in groups:
        for path, value in values.items():
            check_leaf(path)
            check_under(path, root)
            record: dict[Label, object] = {}
            if base is not None and not records:
                record[labels.bn] = base
            if base is None:
                record[labels.n] = str(path)
            elif not exact:
                record[labels.n] = "/".join([str(i) for i in path[n_root:]])
            if ts is not None:
                record[labels.t] = wire_time(ts)
            rtype = model_type(model, path)
            if rtype is None or rtype is ResourceType.NONE:
                rtype = infer_type(value)
            value = coerce(value, rtype, path)
            if isinstance(value, str):
                record[labels.vs] = value
            elif isinstance(value, bool):
                record[labels.vb] = value
            elif isinstance(value, int | float):
                record[labels.v] = value
            elif isinstance(value, datetime):
                record[labels.v] = seconds_from_time(value)
            elif isinstance(value, ObjectLink):
                record[labels.vlo] = format_objlnk(value)
            else:
                record[labels.vd] = opaque(value)
            records.append(record)
    return records


def decode_path_records(records: object, labels: Labels) -> list[Path]:
    """Paths named by a Read-/Observe-Composite request: records with names only."""
    if not isinstance(records, list):
        raise CodecError("SenML payload must be an array of records")
    paths: list[Path] = []
    base_name = ""
    for record in records:
        if not isinstance(record, dict):
            raise CodecError("a SenML record must be a map")
        bn = record.get(labels.bn)
        if bn is not None:
            if not isinstance(bn, str):
                raise CodecError("SenML bn must be a string")
            base_name = bn
        name = record.get(labels.n, "")
        if not isinstance(name, str):
            raise CodecError("SenML n must be a string")
        paths.append(parse_name(base_name + name))
    return paths


def encode_path_records(paths: Iterable[Path], labels: Labels) -> list[dict[Label, object]]:
    return [{labels.n: str(p)} for p in paths]

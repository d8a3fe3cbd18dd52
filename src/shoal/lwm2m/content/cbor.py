"""application/cbor (content-format 60): one resource value as a single CBOR item.

CBOR carries the value's kind, the model refines it (an integer for a Float
resource becomes a float, a number for a Time resource becomes a datetime).
Time is written as tag 1 over integer seconds, Objlnk as the text "o:i".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from cbor2 import CBORTag

from shoal.lwm2m.content._common import (
    CodecError,
    ModelLookup,
    cbor_dumps,
    cbor_loads,
    coerce,
    format_objlnk,
    infer_type,
    seconds_from_time,
    single_root,
    single_value,
)
from shoal.lwm2m.model import ObjectLink, ResourceType, Value
from shoal.lwm2m.path import Path


def encode(values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None) -> bytes:
    rtype = single_root(root, model)
    value = single_value(values, root)
    if rtype is None or rtype is ResourceType.NONE:
        rtype = infer_type(value)
    return cbor_dumps(to_cbor(coerce(value, rtype, root)))


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    rtype = single_root(root, model)
    raw = cbor_loads(payload, max_depth=2)
    if raw is None:
        raise CodecError(f"{root}: null value")
    return {root: coerce(raw, rtype, root)}


def to_cbor(value: Value) -> object:
    """The CBOR-ready form of a typed value (shared with LwM2M CBOR)."""
    if isinstance(value, datetime):
        return CBORTag(1, seconds_from_time(value))
    if isinstance(value, ObjectLink):
        return format_objlnk(value)
    return value

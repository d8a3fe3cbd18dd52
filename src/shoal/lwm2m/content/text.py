"""text/plain (content-format 0): one resource value as text.

The text carries no type, so the model decides how to read it; without a model
entry the value stays a string. Opaque values travel base64-encoded (LwM2M 1.1).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import datetime

from shoal.lwm2m.content._common import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    CodecError,
    ModelLookup,
    coerce,
    format_objlnk,
    infer_type,
    parse_objlnk,
    single_root,
    single_value,
    time_from_seconds,
    utf8,
    whole_seconds,
)
from shoal.lwm2m.model import ObjectLink, ResourceType, Value
from shoal.lwm2m.path import Path

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|nan)")


def encode(values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None) -> bytes:
    rtype = single_root(root, model)
    value = single_value(values, root)
    if rtype is None or rtype is ResourceType.NONE:
        rtype = infer_type(value)
    return utf8(format_value(coerce(value, rtype, root)))


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    rtype = single_root(root, model)
    try:
        text = payload.decode()
    except UnicodeDecodeError as exc:
        raise CodecError(f"{root}: text is not UTF-8") from exc
    return {root: parse_value(text, rtype, root)}


def format_value(value: Value) -> str:
    """A typed value as LwM2M plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return str(whole_seconds(value))
    if isinstance(value, ObjectLink):
        return format_objlnk(value)
    return base64.b64encode(value).decode()


def parse_value(text: str, rtype: ResourceType | None, root: Path) -> Value:
    """LwM2M plain text as a value of the model's type (a string without one)."""
    if rtype is None or rtype in (ResourceType.STRING, ResourceType.CORELNK, ResourceType.NONE):
        return text
    if rtype is ResourceType.INTEGER or rtype is ResourceType.UNSIGNED_INTEGER:
        if len(text) <= 21 and _INT.fullmatch(text):
            i = int(text)
            lo, hi = (INT64_MIN, INT64_MAX) if rtype is ResourceType.INTEGER else (0, UINT64_MAX)
            if lo <= i <= hi:
                return i
    elif rtype is ResourceType.FLOAT:
        if _FLOAT.fullmatch(text):
            return float(text)
    elif rtype is ResourceType.BOOLEAN:
        if text == "1" or text == "0":
            return text == "1"
    elif rtype is ResourceType.TIME:
        if len(text) <= 20 and _INT.fullmatch(text):
            return time_from_seconds(int(text))
    elif rtype is ResourceType.OBJLNK:
        return parse_objlnk(text)
    elif rtype is ResourceType.OPAQUE:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise CodecError(f"{root}: {text!r:.40} is not a valid {rtype.value}")

"""LwM2M values to and from JSON, named and united from the object model."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from shoal.lwm2m.model import ObjectLink, ResourceType, Value
from shoal.lwm2m.path import Path
from shoal.lwm2m.registry import ModelRegistry


def to_json(value: Value) -> Any:
    """JSON form: bytes as base64, time as ISO 8601, object links as `3:0`."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ObjectLink):
        return str(value)
    return value


def describe(values: dict[Path, Value], registry: ModelRegistry) -> list[dict[str, Any]]:
    """One entry per value with the model's name, unit and type."""
    out: list[dict[str, Any]] = []
    for path, value in sorted(values.items()):
        entry: dict[str, Any] = {"path": str(path), "value": to_json(value)}
        if len(path) >= 3:
            res = registry.resource(path[0], path[2])
            if res is not None:
                entry["name"] = res.name
                entry["type"] = res.type.value
                if res.units:
                    entry["units"] = res.units
        out.append(entry)
    return out


class ValueError_(ValueError):
    """A JSON value that does not fit the resource's type."""


def from_json(path: Path, raw: Any, registry: ModelRegistry) -> Value:
    """Coerce a JSON value to the resource's model type (strict: no silent guesses)."""
    res = registry.resource(path[0], path[2]) if len(path) >= 3 else None
    kind = res.type if res is not None else None
    if kind is None:
        if isinstance(raw, (str, int, float, bool)):
            return raw
        raise ValueError_(f"{path}: unsupported JSON value {raw!r}")
    try:
        if kind is ResourceType.STRING or kind is ResourceType.CORELNK:
            if not isinstance(raw, str):
                raise ValueError_(f"{path} is a string resource")
            return raw
        if kind in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER):
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise ValueError_(f"{path} is an integer resource")
            if kind is ResourceType.UNSIGNED_INTEGER and raw < 0:
                raise ValueError_(f"{path} is an unsigned integer resource")
            return raw
        if kind is ResourceType.FLOAT:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError_(f"{path} is a float resource")
            return float(raw)
        if kind is ResourceType.BOOLEAN:
            if not isinstance(raw, bool):
                raise ValueError_(f"{path} is a boolean resource")
            return raw
        if kind is ResourceType.OPAQUE:
            if not isinstance(raw, str):
                raise ValueError_(f"{path} is an opaque resource: send base64")
            return base64.b64decode(raw, validate=True)
        if kind is ResourceType.TIME:
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                return datetime.fromtimestamp(raw, UTC)
            if isinstance(raw, str):
                dt = datetime.fromisoformat(raw)
                return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
            raise ValueError_(f"{path} is a time resource")
        if kind is ResourceType.OBJLNK:
            if not isinstance(raw, str) or ":" not in raw:
                raise ValueError_(f"{path} is an object link: send 'object:instance'")
            a, b = raw.split(":", 1)
            return ObjectLink(int(a), int(b))
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ValueError_):
            raise
        raise ValueError_(f"{path}: {exc}") from None
    raise ValueError_(f"{path} is not writable (type {kind.value})")

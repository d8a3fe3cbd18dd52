"""application/octet-stream (content-format 42): the raw bytes of one Opaque resource.

Used for firmware packages (/5/0/0) and other blobs; the payload is the value.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.lwm2m.content._common import CodecError, ModelLookup, single_root, single_value
from shoal.lwm2m.model import ResourceType, Value
from shoal.lwm2m.path import Path


def encode(values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None) -> bytes:
    _check_type(root, model)
    value = single_value(values, root)
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise CodecError(f"{root}: opaque format needs bytes, got {type(value).__name__}")


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    _check_type(root, model)
    return {root: bytes(payload)}


def _check_type(root: Path, model: ModelLookup | None) -> None:
    rtype = single_root(root, model)
    if rtype is not None and rtype is not ResourceType.OPAQUE and rtype is not ResourceType.NONE:
        raise CodecError(f"{root} is {rtype.value}, not Opaque: the opaque format cannot carry it")

"""SenML CBOR (content-format 112): SenML JSON's records with RFC 8428's integer
labels (bn -2, bt -3, n 0, v 2, vs 3, vb 4, t 6, vd 8) and LwM2M's text label
"vlo" for Objlnk. Opaque values are plain byte strings. The format LwM2M 1.1+
devices prefer for Send and composite notifications.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shoal.lwm2m.content._common import (
    CodecError,
    ModelLookup,
    TimedValues,
    cbor_dumps,
    cbor_loads,
    merge_timed,
)
from shoal.lwm2m.content._senml import (
    CBOR_LABELS,
    decode_path_records,
    decode_records,
    encode_path_records,
    encode_records,
    to_timed,
)
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path


def encode(values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None) -> bytes:
    return encode_timed(((None, values),), root, model)


def encode_timed(
    timed: Iterable[tuple[float | None, Mapping[Path, Value]]],
    root: Path,
    model: ModelLookup | None = None,
) -> bytes:
    return cbor_dumps(encode_records(timed, CBOR_LABELS, _same, root, model))


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    """All values; where a path has several timestamps the newest wins."""
    return merge_timed(decode_timed(payload, root, model))


def decode_timed(payload: bytes, root: Path, model: ModelLookup | None = None) -> list[TimedValues]:
    return to_timed(decode_records(cbor_loads(payload, 4), CBOR_LABELS, _opaque, root, model))


def encode_paths(paths: Iterable[Path]) -> bytes:
    """A Read-/Observe-Composite request body: one record per path, names only."""
    return cbor_dumps(encode_path_records(paths, CBOR_LABELS))


def decode_paths(payload: bytes) -> list[Path]:
    return decode_path_records(cbor_loads(payload, 4), CBOR_LABELS)


def _same(data: bytes) -> object:
    return data


def _opaque(raw: object) -> bytes:
    if isinstance(raw, bytes):
        return raw
    raise CodecError(f"SenML vd must be a byte string, got {type(raw).__name__}")

"""SenML JSON (content-format 110): LwM2M 1.1's JSON format, also for composite
operations (root path, values spanning objects) and for Send with time series.

Opaque values travel as base64url without padding (`vd`); padded or standard
base64 is accepted on decode.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping

from shoal.lwm2m.content._common import (
    CodecError,
    ModelLookup,
    TimedValues,
    json_dumps,
    json_loads,
    merge_timed,
)
from shoal.lwm2m.content._senml import (
    JSON_LABELS,
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
    return json_dumps(encode_records(timed, JSON_LABELS, _b64url, root, model))


def decode(payload: bytes, root: Path, model: ModelLookup | None = None) -> dict[Path, Value]:
    """All values; where a path has several timestamps the newest wins."""
    return merge_timed(decode_timed(payload, root, model))


def decode_timed(payload: bytes, root: Path, model: ModelLookup | None = None) -> list[TimedValues]:
    return to_timed(decode_records(json_loads(payload), JSON_LABELS, _unb64url, root, model))


def encode_paths(paths: Iterable[Path]) -> bytes:
    """A Read-/Observe-Composite request body: one record per path, names only."""
    return json_dumps(encode_path_records(paths, JSON_LABELS))


def decode_paths(payload: bytes) -> list[Path]:
    return decode_path_records(json_loads(payload), JSON_LABELS)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(raw: object) -> bytes:
    if isinstance(raw, str) and raw.isascii():
        text = raw.rstrip("=")
        if len(text) % 4 != 1:
            try:
                return base64.b64decode(
                    text + "=" * (-len(text) % 4), altchars=b"-_", validate=True
                )
            except (binascii.Error, ValueError):
                pass
    raise CodecError(f"SenML vd must be base64url text, got {raw!r:.40}")

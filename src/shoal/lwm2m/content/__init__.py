"""Sans-IO LwM2M content formats: one codec module per format, one dispatch here.

A decoded payload is a flat ``dict[Path, Value]``: single resources keyed by
/o/i/r, multiple-resource instances by /o/i/r/ri. A container with no children
is an entry whose value is ``EMPTY``: an object instance without resources keyed
by /o/i, a multiple resource without instances keyed by /o/i/r (when the model
says the resource is multiple). Formats that cannot say "empty" (SenML, OMA JSON,
text, opaque, CBOR) never produce such entries.

`root` is the request path. Decoders check that every value lies under it (TLV
also needs it for the ids the format leaves out); encoders shape the payload
the way a Read of `root` answers. Composite operations use root ``Path()``.

The model (any `ModelLookup`) types values where the format does not: TLV,
text and OMA JSON numbers. Without a model entry TLV yields raw bytes, text a
string, and self-describing formats whatever they carry.

Time-stamped payloads (SenML JSON/CBOR, OMA JSON) decode through `decode_timed`
into `(timestamp, values)` groups; plain `decode` merges them, newest value
winning (`merge_timed` does the same for a caller that decoded timed already).
Formats without time yield one group with timestamp None.

`CodecError` (a ValueError) is the only exception a decoder raises on bad input;
encoders raise it for values that do not fit the format or the model.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType

from shoal.lwm2m.content import (
    cbor,
    lwm2m_cbor,
    oma_json,
    opaque,
    senml_cbor,
    senml_json,
    text,
    tlv,
)
from shoal.lwm2m.content._common import (
    EMPTY,
    EMPTY_MODEL,
    CodecError,
    ModelLookup,
    TimedValues,
    Values,
    merge_timed,
)
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path

__all__ = [
    "EMPTY",
    "EMPTY_MODEL",
    "CodecError",
    "ContentFormat",
    "ModelLookup",
    "TimedValues",
    "Values",
    "decode",
    "decode_paths",
    "decode_timed",
    "encode",
    "encode_paths",
    "encode_timed",
    "merge_timed",
]


class ContentFormat(enum.IntEnum):
    """CoAP Content-Format numbers LwM2M uses."""

    TEXT = 0
    LINK_FORMAT = 40  # CoRE link format (Discover, Register): not a value codec here
    OPAQUE = 42
    CBOR = 60
    SENML_JSON = 110
    SENML_CBOR = 112
    TLV = 11542
    OMA_JSON = 11543
    LWM2M_CBOR = 11544

    @property
    def single_value(self) -> bool:
        """Carries exactly one resource (or resource instance) value."""
        return self in _SINGLE_VALUE

    @property
    def composite(self) -> bool:
        """Can carry values from several objects (Read-/Write-Composite, Send)."""
        return self in _COMPOSITE

    @property
    def timestamped(self) -> bool:
        """Can carry time-stamped values (notifications with history, Send)."""
        return self in _TIMESTAMPED


_SINGLE_VALUE = frozenset({ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR})
_COMPOSITE = frozenset(
    {ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.LWM2M_CBOR}
)
_TIMESTAMPED = frozenset(
    {ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.OMA_JSON}
)

_CODECS: dict[int, ModuleType] = {
    ContentFormat.TEXT: text,
    ContentFormat.OPAQUE: opaque,
    ContentFormat.CBOR: cbor,
    ContentFormat.SENML_JSON: senml_json,
    ContentFormat.SENML_CBOR: senml_cbor,
    ContentFormat.TLV: tlv,
    ContentFormat.OMA_JSON: oma_json,
    ContentFormat.LWM2M_CBOR: lwm2m_cbor,
}

_EncodeFn = Callable[[Mapping[Path, Value], Path, ModelLookup | None], bytes]
_DecodeFn = Callable[[bytes, Path, ModelLookup | None], dict[Path, Value]]
_TimedEncodeFn = Callable[
    [Iterable[tuple[float | None, Mapping[Path, Value]]], Path, ModelLookup | None], bytes
]
_TimedDecodeFn = Callable[[bytes, Path, ModelLookup | None], list[TimedValues]]

_ENCODE: dict[int, _EncodeFn] = {fmt: mod.encode for fmt, mod in _CODECS.items()}
_DECODE: dict[int, _DecodeFn] = {fmt: mod.decode for fmt, mod in _CODECS.items()}
_ENCODE_TIMED: dict[int, _TimedEncodeFn] = {fmt: _CODECS[fmt].encode_timed for fmt in _TIMESTAMPED}
_DECODE_TIMED: dict[int, _TimedDecodeFn] = {fmt: _CODECS[fmt].decode_timed for fmt in _TIMESTAMPED}
_PATH_CODECS: dict[int, ModuleType] = {
    ContentFormat.SENML_JSON: senml_json,
    ContentFormat.SENML_CBOR: senml_cbor,
}


def _unsupported(fmt: int) -> CodecError:
    return CodecError(f"content format {fmt} is not supported for values")


def encode(
    fmt: int, values: Mapping[Path, Value], root: Path, model: ModelLookup | None = None
) -> bytes:
    """Encode values under `root` in content format `fmt`."""
    fn = _ENCODE.get(fmt)
    if fn is None:
        raise _unsupported(fmt)
    return fn(values, root, model)


def decode(
    fmt: int, payload: bytes, root: Path, model: ModelLookup | None = None
) -> dict[Path, Value]:
    """Decode a payload received for request path `root`."""
    fn = _DECODE.get(fmt)
    if fn is None:
        raise _unsupported(fmt)
    return fn(payload, root, model)


def decode_timed(
    fmt: int, payload: bytes, root: Path, model: ModelLookup | None = None
) -> list[TimedValues]:
    """Decode into time-stamped groups, in payload order; one untimed group for
    formats that carry no time."""
    fn = _DECODE_TIMED.get(fmt)
    if fn is not None:
        return fn(payload, root, model)
    return [(None, decode(fmt, payload, root, model))]


def encode_timed(
    fmt: int,
    timed: Iterable[tuple[float | None, Mapping[Path, Value]]],
    root: Path,
    model: ModelLookup | None = None,
) -> bytes:
    """Encode time-stamped groups (Send, notifications with history)."""
    fn = _ENCODE_TIMED.get(fmt)
    if fn is not None:
        return fn(timed, root, model)
    groups = list(timed)
    if len(groups) != 1 or groups[0][0] is not None:
        raise CodecError(f"content format {fmt} cannot carry timestamps")
    return encode(fmt, groups[0][1], root, model)


def encode_paths(fmt: int, paths: Iterable[Path]) -> bytes:
    """A Read-/Observe-Composite request body listing `paths` (SenML JSON or CBOR)."""
    mod = _PATH_CODECS.get(fmt)
    if mod is None:
        raise CodecError(f"content format {fmt} cannot carry a path list")
    data: bytes = mod.encode_paths(paths)
    return data


def decode_paths(fmt: int, payload: bytes) -> list[Path]:
    """The paths a Read-/Observe-Composite request body lists."""
    mod = _PATH_CODECS.get(fmt)
    if mod is None:
        raise CodecError(f"content format {fmt} cannot carry a path list")
    paths: list[Path] = mod.decode_paths(payload)
    return paths

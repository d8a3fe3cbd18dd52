"""Single-value formats: text/plain, opaque and CBOR (one resource per payload)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from content_fixtures import MODEL
from shoal.lwm2m import content
from shoal.lwm2m.content import CodecError, ContentFormat, cbor, opaque, text
from shoal.lwm2m.model import ObjectLink
from shoal.lwm2m.path import Path

P = Path.parse
TIME = datetime(2013, 5, 2, 10, 40, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("path", "value", "payload"),
    [
        ("/3/0/0", "Open Mobile Alliance", b"Open Mobile Alliance"),  # the spec's text example
        ("/3/0/9", 95, b"95"),
        ("/3/0/9", -3, b"-3"),
        ("/3303/0/5700", 21.5, b"21.5"),
        ("/3303/0/5700", 1e16, b"1e+16"),
        ("/1/0/6", True, b"1"),
        ("/1/0/6", False, b"0"),
        ("/3/0/13", TIME, b"1367491215"),
        ("/1/0/10", ObjectLink(11, 0), b"11:0"),
        ("/1/0/13", 2**64 - 1, b"18446744073709551615"),
        ("/32769/0/5", b"\x00\xff", b"AP8="),  # opaque as base64 (LwM2M 1.1)
        ("/3/0/7/1", 5000, b"5000"),
    ],
)
def test_text_round_trip(path: str, value: object, payload: bytes) -> None:
    root = P(path)
    assert text.encode({root: value}, root, MODEL) == payload  # type: ignore[dict-item]
    assert text.decode(payload, root, MODEL) == {root: value}


def test_text_without_a_model_is_a_string() -> None:
    assert text.decode(b"95", P("/9/0/1")) == {P("/9/0/1"): "95"}
    assert text.encode({P("/9/0/1"): 95}, P("/9/0/1")) == b"95"


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/3/0/9", b"9.5"),
        ("/3/0/9", b" 95"),
        ("/3/0/9", b"1_000"),
        ("/3/0/9", "٣".encode()),  # a non-ASCII digit
        ("/3/0/9", b"99999999999999999999"),  # beyond int64
        ("/1/0/13", b"-1"),
        ("/1/0/6", b"true"),
        ("/3303/0/5700", b"1,5"),
        ("/3/0/13", b"2013-05-02"),
        ("/1/0/10", b"11"),
        ("/32769/0/5", b"not base64!"),
        ("/3/0/0", b"\xff"),
        ("/3/0", b"x"),  # not a resource path
        ("/3/0/7", b"1"),  # a multiple resource
    ],
)
def test_text_rejects(path: str, payload: bytes) -> None:
    with pytest.raises(CodecError):
        text.decode(payload, P(path), MODEL)


def test_opaque() -> None:
    blob = bytes(range(256))
    assert opaque.encode({P("/5/0/0"): blob}, P("/5/0/0"), MODEL) == blob
    assert opaque.decode(blob, P("/5/0/0"), MODEL) == {P("/5/0/0"): blob}
    assert opaque.decode(blob, P("/9/0/0")) == {P("/9/0/0"): blob}
    with pytest.raises(CodecError):
        opaque.decode(b"1", P("/3/0/9"), MODEL)  # an Integer resource
    with pytest.raises(CodecError):
        opaque.encode({P("/5/0/0"): "text"}, P("/5/0/0"), MODEL)
    with pytest.raises(CodecError):
        opaque.encode({P("/5/0/0"): blob, P("/5/0/1"): blob}, P("/5/0/0"), MODEL)


@pytest.mark.parametrize(
    ("path", "value", "hexbytes"),
    [
        ("/3/0/9", 95, "18 5F"),
        ("/3/0/9", -1, "20"),
        ("/3303/0/5700", 21.5, "F9 4D 60"),  # smallest exact float: half
        ("/3303/0/5700", 0.1, "FB 3F B9 99 99 99 99 99 9A"),
        ("/1/0/6", True, "F5"),
        ("/3/0/0", "ACME", "64 41 43 4D 45"),
        ("/5/0/0", b"\x01\x02", "42 01 02"),
        ("/3/0/13", TIME, "C1 1A 51 82 42 8F"),  # tag 1 over integer seconds
        ("/1/0/10", ObjectLink(3, 0), "63 33 3A 30"),  # "3:0"
    ],
)
def test_cbor_single_values(path: str, value: object, hexbytes: str) -> None:
    root = P(path)
    data = bytes.fromhex(hexbytes)
    assert cbor.encode({root: value}, root, MODEL) == data  # type: ignore[dict-item]
    assert cbor.decode(data, root, MODEL) == {root: value}


def test_cbor_typing() -> None:
    # An untagged integer for a Time resource, an int for a Float resource.
    assert cbor.decode(bytes.fromhex("1A 51 82 42 8F"), P("/3/0/13"), MODEL) == {P("/3/0/13"): TIME}
    decoded = cbor.decode(bytes.fromhex("15"), P("/3303/0/5700"), MODEL)
    assert decoded == {P("/3303/0/5700"): 21.0}
    assert type(decoded[P("/3303/0/5700")]) is float
    # Without a model the CBOR kind decides.
    assert cbor.decode(bytes.fromhex("F9 4D 60"), P("/9/0/1")) == {P("/9/0/1"): 21.5}
    # Decimal fraction 4([-1, 215]) = 21.5
    assert cbor.decode(bytes.fromhex("C4 82 20 18 D7"), P("/3303/0/5700"), MODEL) == {
        P("/3303/0/5700"): 21.5
    }


@pytest.mark.parametrize(
    ("path", "hexbytes"),
    [
        ("/3/0/9", "F6"),  # null
        ("/3/0/9", "64 41 43 4D 45"),  # text for an Integer
        ("/3/0/0", "18 5F"),  # integer for a String
        ("/1/0/6", "01"),  # integer for a Boolean
        ("/9/0/1", "80"),  # an array
        ("/9/0/1", "A0"),  # a map
        ("/3/0/9", "18"),  # truncated
        ("/3/0/9", "01 02"),  # trailing bytes
        ("/3/0/13", "C1 1B 7F FF FF FF FF FF FF FF"),  # time out of range
        ("/1/0/10", "63 33 3A 78"),  # "3:x"
        ("/1/0/13", "20"),  # negative unsigned
    ],
)
def test_cbor_rejects(path: str, hexbytes: str) -> None:
    with pytest.raises(CodecError):
        cbor.decode(bytes.fromhex(hexbytes), P(path), MODEL)


def test_dispatch_by_content_format() -> None:
    root = P("/3/0/9")
    for fmt in (ContentFormat.TEXT, ContentFormat.CBOR, ContentFormat.TLV):
        data = content.encode(fmt, {root: 42}, root, MODEL)
        assert content.decode(fmt, data, root, MODEL) == {root: 42}
        assert content.decode_timed(fmt, data, root, MODEL) == [(None, {root: 42})]
    assert ContentFormat.TEXT.single_value and not ContentFormat.TLV.single_value
    assert ContentFormat.SENML_CBOR.composite and ContentFormat.LWM2M_CBOR.composite
    assert ContentFormat.OMA_JSON.timestamped and not ContentFormat.LWM2M_CBOR.timestamped
    with pytest.raises(CodecError):
        content.decode(ContentFormat.LINK_FORMAT, b"</3/0>", root, MODEL)
    with pytest.raises(CodecError):
        content.decode(12345, b"", root, MODEL)
    with pytest.raises(CodecError):
        content.encode_timed(ContentFormat.TEXT, [(1.0, {root: 1})], root, MODEL)
    with pytest.raises(CodecError):
        content.encode_paths(ContentFormat.TLV, [root])
    assert content.EMPTY_MODEL.resource(3, 9) is None

"""SenML JSON and SenML CBOR codecs: spec-shaped examples, name and time
resolution, value labels, composite and time-stamped payloads, errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import cbor2
import pytest

from content_fixtures import DEVICE_VALUES, MODEL
from shoal.lwm2m import content
from shoal.lwm2m.content import CodecError, ContentFormat, senml_cbor, senml_json
from shoal.lwm2m.model import ObjectLink, Value
from shoal.lwm2m.path import Path

P = Path.parse

# The Device object instance read in SenML JSON, as laid out in LwM2M TS Core 1.1
# (7.4.4): bn on the first record, names relative to it.
DEVICE_SENML = (
    b'[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},'
    b'{"n":"1","vs":"Lightweight M2M Client"},'
    b'{"n":"2","vs":"345000123"},'
    b'{"n":"3","vs":"1.0"},'
    b'{"n":"6/0","v":1},'
    b'{"n":"6/1","v":5},'
    b'{"n":"7/0","v":3800},'
    b'{"n":"7/1","v":5000},'
    b'{"n":"8/0","v":125},'
    b'{"n":"8/1","v":900},'
    b'{"n":"9","v":100},'
    b'{"n":"10","v":15},'
    b'{"n":"11/0","v":0},'
    b'{"n":"13","v":1367491215},'
    b'{"n":"14","vs":"+02:00"},'
    b'{"n":"16","vs":"U"}]'
)


def test_device_instance_read_matches_spec_layout() -> None:
    assert senml_json.decode(DEVICE_SENML, P("/3/0"), MODEL) == DEVICE_VALUES
    assert senml_json.encode(DEVICE_VALUES, P("/3/0"), MODEL) == DEVICE_SENML


def test_single_resource_uses_the_path_as_base_name() -> None:
    data = senml_json.encode({P("/3/0/9"): 95}, P("/3/0/9"), MODEL)
    assert data == b'[{"bn":"/3/0/9","v":95}]'
    assert senml_json.decode(data, P("/3/0/9"), MODEL) == {P("/3/0/9"): 95}


def test_composite_read_response_spans_objects() -> None:
    # Hand-built from the Read-Composite rules: full names, no base name.
    data = (
        b'[{"n":"/3/0/0","vs":"Open Mobile Alliance"},'
        b'{"n":"/3303/0/5700","v":21.5},'
        b'{"n":"/1/0/1","v":86400}]'
    )
    values: dict[Path, Value] = {
        P("/3/0/0"): "Open Mobile Alliance",
        P("/3303/0/5700"): 21.5,
        P("/1/0/1"): 86400,
    }
    assert senml_json.decode(data, Path(), MODEL) == values
    assert senml_json.encode(values, Path(), MODEL) == data
    encoded = content.encode(ContentFormat.SENML_CBOR, values, Path(), MODEL)
    assert content.decode(ContentFormat.SENML_CBOR, encoded, Path(), MODEL) == values


def test_base_name_switches_midway() -> None:
    data = b'[{"bn":"/3/0/","n":"0","vs":"ACME"},{"bn":"/1/0/","n":"1","v":300}]'
    assert senml_json.decode(data, Path(), MODEL) == {P("/3/0/0"): "ACME", P("/1/0/1"): 300}


def test_send_with_base_time_and_relative_times() -> None:
    # A Send (POST /dp) time series: bt on the first record, t offsets after it.
    data = (
        b'[{"bn":"/3303/0/5700","bt":1700000000,"v":21.5},'
        b'{"t":60,"v":21.75},'
        b'{"bn":"/3/0/9","t":60,"v":80},'
        b'{"bn":"/3303/0/5700","t":120,"v":22}]'
    )
    timed = senml_json.decode_timed(data, Path(), MODEL)
    assert timed == [
        (1700000000.0, {P("/3303/0/5700"): 21.5}),
        (1700000060.0, {P("/3303/0/5700"): 21.75, P("/3/0/9"): 80}),
        (1700000120.0, {P("/3303/0/5700"): 22.0}),
    ]
    assert isinstance(timed[2][1][P("/3303/0/5700")], float)  # model says Float
    # Plain decode keeps the newest value of each path.
    assert senml_json.decode(data, Path(), MODEL) == {P("/3303/0/5700"): 22.0, P("/3/0/9"): 80}
    # And the timed encoding decodes back to the same groups.
    for fmt in (ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR):
        again = content.encode_timed(fmt, timed, Path(), MODEL)
        assert content.decode_timed(fmt, again, Path(), MODEL) == timed


def test_records_without_time_have_no_timestamp() -> None:
    data = b'[{"n":"/3/0/9","v":80},{"n":"/3/0/10","v":3,"t":1700000000.5}]'
    assert senml_json.decode_timed(data, Path(), MODEL) == [
        (None, {P("/3/0/9"): 80}),
        (1700000000.5, {P("/3/0/10"): 3}),
    ]


def test_value_labels() -> None:
    data = (
        b'[{"bn":"/32769/0/","n":"0","vs":"text"},'
        b'{"n":"1","v":-5},'
        b'{"n":"3","v":1.5},'
        b'{"n":"4","vb":true},'
        b'{"n":"5","vd":"AP_-"},'
        b'{"n":"6","v":1367491215},'
        b'{"n":"7","vlo":"3:0"},'
        b'{"n":"8","vs":"</3/0>"}]'
    )
    values: dict[Path, Value] = {
        P("/32769/0/0"): "text",
        P("/32769/0/1"): -5,
        P("/32769/0/3"): 1.5,
        P("/32769/0/4"): True,
        P("/32769/0/5"): b"\x00\xff\xfe",
        P("/32769/0/6"): datetime(2013, 5, 2, 10, 40, 15, tzinfo=UTC),
        P("/32769/0/7"): ObjectLink(3, 0),
        P("/32769/0/8"): "</3/0>",
    }
    assert senml_json.decode(data, P("/32769/0"), MODEL) == values
    assert senml_json.encode(values, P("/32769/0"), MODEL) == data
    # Padded vd is accepted too.
    padded = b'[{"n":"/32769/0/5","vd":"AAE="}]'
    assert senml_json.decode(padded, Path(), MODEL) == {P("/32769/0/5"): b"\x00\x01"}


def test_integer_versus_float_without_a_model() -> None:
    data = b'[{"n":"/9/0/1","v":5},{"n":"/9/0/2","v":5.0},{"n":"/9/0/3","v":5e2}]'
    decoded = senml_json.decode(data, Path())
    assert [type(v) for v in decoded.values()] == [int, float, float]
    assert senml_json.encode(decoded, Path()) == (
        b'[{"n":"/9/0/1","v":5},{"n":"/9/0/2","v":5.0},{"n":"/9/0/3","v":500.0}]'
    )


def test_model_narrows_and_widens_numbers() -> None:
    # 100.0 for an Integer resource is 100; 21 for a Float resource is 21.0.
    data = b'[{"n":"/3/0/9","v":100.0},{"n":"/3303/0/5700","v":21}]'
    decoded = senml_json.decode(data, Path(), MODEL)
    assert decoded == {P("/3/0/9"): 100, P("/3303/0/5700"): 21.0}
    assert type(decoded[P("/3/0/9")]) is int
    assert type(decoded[P("/3303/0/5700")]) is float


def test_senml_cbor_hand_built_vector() -> None:
    # [{-2: "/3303/0/", 0: "5700", 2: 21.5 (half float), 6: 10}, {0: "5701", 3: "Cel"}]
    data = (
        bytes.fromhex("82 A4 21 68")
        + b"/3303/0/"
        + bytes.fromhex("00 64")
        + b"5700"
        + bytes.fromhex("02 F9 4D 60 06 0A A2 00 64")
        + b"5701"
        + bytes.fromhex("03 63")
        + b"Cel"
    )
    assert senml_cbor.decode_timed(data, P("/3303/0"), MODEL) == [
        (10.0, {P("/3303/0/5700"): 21.5}),
        (None, {P("/3303/0/5701"): "Cel"}),
    ]


def test_senml_cbor_labels_and_opaque_bytes() -> None:
    values: dict[Path, Value] = {
        P("/32769/0/5"): b"\x00\x01",
        P("/32769/0/7"): ObjectLink(1, 2),
        P("/32769/0/4"): False,
        P("/32769/0/0"): "s",
    }
    data = senml_cbor.encode(values, P("/32769/0"), MODEL)
    records = cbor2.loads(data)
    assert records[0][-2] == "/32769/0/"
    assert {k for r in records for k in r} == {-2, 0, 8, "vlo", 4, 3}
    assert records[0][8] == b"\x00\x01"
    assert senml_cbor.decode(data, P("/32769/0"), MODEL) == values


def test_composite_request_paths() -> None:
    paths = [P("/3/0/9"), P("/1/0"), P("/3303")]
    for fmt in (ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR):
        assert content.decode_paths(fmt, content.encode_paths(fmt, paths)) == paths
    assert content.encode_paths(ContentFormat.SENML_JSON, paths) == (
        b'[{"n":"/3/0/9"},{"n":"/1/0"},{"n":"/3303"}]'
    )
    assert senml_json.decode_paths(b'[{"bn":"/3/0/","n":"9"},{"n":"10"}]') == [
        P("/3/0/9"),
        P("/3/0/10"),
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"{}",  # not an array
        b"[1]",  # record not a map
        b'[{"n":"/3/0/9"}]',  # no value
        b'[{"n":"/3/0","v":1}]',  # value at an instance path
        b'[{"n":"/3/x/9","v":1}]',  # bad name
        b'[{"n":5,"v":1}]',  # name not a string
        b'[{"bn":1,"n":"/3/0/9","v":1}]',
        b'[{"n":"/3/0/9","v":"1"}]',  # v not a number
        b'[{"n":"/3/0/9","v":true}]',
        b'[{"n":"/3/0/9","vs":1}]',
        b'[{"n":"/3/0/9","v":1.5}]',  # not an integer
        b'[{"n":"/3/0/0","v":1}]',  # number for a String resource
        b'[{"n":"/5/0/0","vd":"@@"}]',  # bad base64
        b'[{"n":"/5/0/0","vd":"A"}]',
        b'[{"n":"/1/0/10","vlo":"3"}]',
        b'[{"n":"/3/0/9","v":1,"t":"x"}]',
        b'[{"n":"/3/0/9","v":1e400}]',
        b'[{"n":"/3/0/9","v":NaN}]',
        b'[{"n":"/1/0/1","v":1}]',  # not under the root /3
        b"[",
        b"\xff",
    ],
)
def test_bad_senml_json_raises_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        senml_json.decode(data, P("/3"), MODEL)


@pytest.mark.parametrize(
    "obj",
    [
        {},
        [[1]],
        [{0: "/3/0/9"}],
        [{0: "/3/0/9", 8: "not bytes"}],
        [{0: "/3/0/9", 2: cbor2.CBORTag(99, 1)}],
        [{-2: 7, 0: "/3/0/9", 2: 1}],
    ],
)
def test_bad_senml_cbor_raises_codec_error(obj: object) -> None:
    with pytest.raises(CodecError):
        senml_cbor.decode(cbor2.dumps(obj), Path(), MODEL)


def test_cbor_tags_with_python_side_effects_are_rejected() -> None:
    regex = bytes.fromhex("81 A2 00 66") + b"/3/0/9" + bytes.fromhex("03 D8 23 61 61")
    with pytest.raises(CodecError):
        senml_cbor.decode(regex, Path(), MODEL)
    with pytest.raises(CodecError):
        senml_cbor.decode(cbor2.dumps([]) + b"\x00", Path(), MODEL)  # trailing bytes


def test_json_encoding_rejects_non_finite_floats() -> None:
    with pytest.raises(CodecError):
        senml_json.encode({P("/3303/0/5700"): float("inf")}, Path(), MODEL)
    assert json.loads(senml_json.encode({P("/3303/0/5700"): -0.0}, Path(), MODEL)) == [
        {"n": "/3303/0/5700", "v": -0.0}
    ]

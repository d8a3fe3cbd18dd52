"""OMA LwM2M JSON (LwM2M 1.0): the spec's Device example, typing by model, times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from content_fixtures import DEVICE_VALUES, MODEL
from shoal.lwm2m.content import CodecError, oma_json
from shoal.lwm2m.model import ObjectLink, Value
from shoal.lwm2m.path import Path

P = Path.parse

# LwM2M TS 1.0 6.4.4: Read of the Device object instance /3/0 in JSON.
DEVICE_JSON = (
    b'{"bn":"/3/0/","e":['
    b'{"n":"0","sv":"Open Mobile Alliance"},'
    b'{"n":"1","sv":"Lightweight M2M Client"},'
    b'{"n":"2","sv":"345000123"},'
    b'{"n":"3","sv":"1.0"},'
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
    b'{"n":"14","sv":"+02:00"},'
    b'{"n":"16","sv":"U"}]}'
)


def test_device_instance_read() -> None:
    assert oma_json.decode(DEVICE_JSON, P("/3/0"), MODEL) == DEVICE_VALUES
    assert oma_json.encode(DEVICE_VALUES, P("/3/0"), MODEL) == DEVICE_JSON


def test_model_types_numbers_and_strings() -> None:
    data = (
        b'{"bn":"/32769/0/","e":[{"n":"1","v":7},{"n":"3","v":7},{"n":"5","sv":"AAE="},'
        b'{"n":"0","sv":"AAE="},{"n":"7","ov":"3:0"},{"n":"4","bv":false},{"n":"6","v":0}]}'
    )
    decoded = oma_json.decode(data, P("/32769/0"), MODEL)
    expected: dict[Path, Value] = {
        P("/32769/0/1"): 7,
        P("/32769/0/3"): 7.0,
        P("/32769/0/5"): b"\x00\x01",  # sv of an Opaque resource is base64
        P("/32769/0/0"): "AAE=",
        P("/32769/0/7"): ObjectLink(3, 0),
        P("/32769/0/4"): False,
        P("/32769/0/6"): datetime(1970, 1, 1, tzinfo=UTC),
    }
    assert decoded == expected
    assert type(decoded[P("/32769/0/3")]) is float
    assert oma_json.decode(oma_json.encode(decoded, P("/32769"), MODEL), P("/32769"), MODEL) == (
        decoded
    )


def test_single_resource_and_history() -> None:
    # A notification with history (TS 1.0 6.4.4 shape): bt plus negative offsets.
    data = (
        b'{"bn":"/3303/0/5700","bt":1700000000,'
        b'"e":[{"v":21.5,"t":-120},{"v":21.75,"t":-60},{"v":22.0}]}'
    )
    assert oma_json.decode_timed(data, P("/3303/0/5700"), MODEL) == [
        (1699999880.0, {P("/3303/0/5700"): 21.5}),
        (1699999940.0, {P("/3303/0/5700"): 21.75}),
        (1700000000.0, {P("/3303/0/5700"): 22.0}),
    ]
    assert oma_json.decode(data, P("/3303/0/5700"), MODEL) == {P("/3303/0/5700"): 22.0}
    timed = oma_json.decode_timed(data, P("/3303/0/5700"), MODEL)
    again = oma_json.encode_timed(timed, P("/3303/0/5700"), MODEL)
    assert oma_json.decode_timed(again, P("/3303/0/5700"), MODEL) == timed


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"bn":"/3/0/"}',
        b'{"bn":3,"e":[]}',
        b'{"e":[{"n":"/3/0/9"}]}',
        b'{"e":[{"n":"/3/0/9","v":"1"}]}',
        b'{"e":[{"n":"/3/0/9","sv":1}]}',
        b'{"e":[{"n":"/5/0/0","sv":"%%"}]}',
        b'{"e":[{"n":"/3/0/9","v":1,"t":true}]}',
        b'{"e":[{"n":"/3/0","v":1}]}',
        b'{"e":[1]}',
        b'{"bt":"x","e":[]}',
    ],
)
def test_rejects(data: bytes) -> None:
    with pytest.raises(CodecError):
        oma_json.decode(data, Path(), MODEL)

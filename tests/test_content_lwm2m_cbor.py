"""LwM2M CBOR (LwM2M 1.2 nested maps): id and id-array keys, compaction, empties."""

from __future__ import annotations

import cbor2
import pytest

from content_fixtures import DEVICE_VALUES, MODEL
from shoal.lwm2m.content import EMPTY, CodecError, lwm2m_cbor
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path

P = Path.parse

# Byte vectors built by hand from the TS Core 1.2 LwM2M CBOR rules (keys start at
# the object id; an array key stands for several levels).
FLAT = "A1 83 0D 18 1A 01 18 2A"  # {[13, 26, 1]: 42}
NESTED = "A1 0D A1 18 1A A1 01 18 2A"  # {13: {26: {1: 42}}}
ARRAYS = "A1 81 0D A1 81 18 1A A1 81 01 18 2A"  # {[13]: {[26]: {[1]: 42}}}
INDEFINITE = "BF 0D BF 18 1A BF 01 18 2A FF FF FF"  # the nested form, indefinite maps


@pytest.mark.parametrize("hexbytes", [FLAT, NESTED, ARRAYS, INDEFINITE])
def test_key_forms_decode_alike(hexbytes: str) -> None:
    assert lwm2m_cbor.decode(bytes.fromhex(hexbytes), P("/13/26/1")) == {P("/13/26/1"): 42}


def test_encoding_collapses_single_child_chains() -> None:
    assert lwm2m_cbor.encode({P("/13/26/1"): 42}, P("/13/26/1")) == bytes.fromhex(FLAT)
    data = lwm2m_cbor.encode({P("/13/26/1"): 42, P("/13/26/2"): 21}, P("/13/26"))
    assert data == bytes.fromhex("A1 82 0D 18 1A A2 01 18 2A 02 15")  # {[13, 26]: {1: 42, 2: 21}}


def test_mixed_key_forms() -> None:
    # {[13, 26, 1]: 42, [13, 26]: {[2]: 21}}
    data = bytes.fromhex("A2 83 0D 18 1A 01 18 2A 82 0D 18 1A A1 81 02 15")
    assert lwm2m_cbor.decode(data, P("/13/26")) == {P("/13/26/1"): 42, P("/13/26/2"): 21}


def test_device_instance_and_composite() -> None:
    data = lwm2m_cbor.encode(DEVICE_VALUES, P("/3/0"), MODEL)
    tree = cbor2.loads(data)
    assert list(tree) == [(3, 0)]
    assert tree[(3, 0)][7] == {0: 3800, 1: 5000}
    assert tree[(3, 0)][13] == cbor2.loads(bytes.fromhex("C1 1A 51 82 42 8F"))
    assert lwm2m_cbor.decode(data, P("/3/0"), MODEL) == DEVICE_VALUES
    composite: dict[Path, Value] = {
        **DEVICE_VALUES,
        P("/3303/0/5700"): 21.5,
        P("/3303/1/5700"): -1.25,
    }
    data = lwm2m_cbor.encode(composite, Path(), MODEL)
    assert lwm2m_cbor.decode(data, Path(), MODEL) == composite


def test_empty_instance_and_multiple_resource() -> None:
    values: dict[Path, Value] = {P("/3303/1"): EMPTY, P("/3/0/6"): EMPTY, P("/3/0/9"): 5}
    data = lwm2m_cbor.encode(values, Path(), MODEL)
    assert cbor2.loads(data) == {(3303, 1): {}, (3, 0): {6: {}, 9: 5}}
    assert lwm2m_cbor.decode(data, Path(), MODEL) == values


@pytest.mark.parametrize(
    "obj",
    [
        [1],  # not a map
        {3: 1},  # value at an object path
        {(3, 0): 1},  # value at an instance path
        {(3, 0, 9, 1): {0: 1}},  # deeper than 4 levels
        {(3, 0, 9, 1, 2): 1},
        {"3": {0: {9: 1}}},  # text key
        {(): 1},
        {(3, "0"): {9: 1}},
        {(3, 0, 9): None},  # null (delete) unsupported
        {(3, 0, 9): "x"},  # text for an Integer resource
        {(3, 0, 9): [1]},
        {(3, 0, 65535): 1},  # reserved id
        {(3, -1, 9): 1},
        {(1, 0, 1): 1},  # not under the root /3
    ],
)
def test_rejects(obj: object) -> None:
    with pytest.raises(CodecError):
        lwm2m_cbor.decode(cbor2.dumps(obj), P("/3"), MODEL)


def test_encode_rejects_conflicts() -> None:
    with pytest.raises(CodecError):
        lwm2m_cbor.encode({P("/9/0/1"): 1, P("/9/0/1/0"): 2}, Path())
    with pytest.raises(CodecError):
        lwm2m_cbor.encode({P("/3/0/7"): 1}, Path(), MODEL)  # multiple resource value
    with pytest.raises(CodecError):
        lwm2m_cbor.encode({P("/3"): 1}, Path(), MODEL)

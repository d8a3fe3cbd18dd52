"""OMA TLV codec: the spec's examples byte for byte, header variants, typing, errors."""

from __future__ import annotations

from datetime import datetime

import pytest

from content_fixtures import DEVICE_VALUES, MODEL
from shoal.lwm2m.content import EMPTY, CodecError, tlv
from shoal.lwm2m.model import ObjectLink, Value
from shoal.lwm2m.path import Path

P = Path.parse

# LwM2M TS Core (1.0 6.4.3.1 / 1.1 7.4.3): Read of the Device object instance /3/0.
DEVICE_TLV = bytes.fromhex(
    "C8 00 14 4F 70 65 6E 20 4D 6F 62 69 6C 65 20 41 6C 6C 69 61 6E 63 65"
    "C8 01 16 4C 69 67 68 74 77 65 69 67 68 74 20 4D 32 4D 20 43 6C 69 65 6E 74"
    "C8 02 09 33 34 35 30 30 30 31 32 33"
    "C3 03 31 2E 30"
    "86 06 41 00 01 41 01 05"
    "88 07 08 42 00 0E D8 42 01 13 88"
    "87 08 41 00 7D 42 01 03 84"
    "C1 09 64"
    "C1 0A 0F"
    "83 0B 41 00 00"
    "C4 0D 51 82 42 8F"
    "C6 0E 2B 30 32 3A 30 30"
    "C1 10 55"
)

# The spec's Read of the Access Control object /2 (two instances, a 16-bit
# resource-instance id 310). Reconstructed from the TLV rules; lengths checked by hand.
ACCESS_CONTROL_TLV = bytes.fromhex(
    "08 00 0E C1 00 01 C1 01 00 83 02 41 7F 07 C1 03 7F"
    "08 02 12 C1 00 03 C1 01 00 87 02 41 7F 07 61 01 36 01 C1 03 7F"
)
ACCESS_CONTROL_VALUES: dict[Path, Value] = {
    P("/2/0/0"): 1,
    P("/2/0/1"): 0,
    P("/2/0/2/127"): 7,
    P("/2/0/3"): 127,
    P("/2/2/0"): 3,
    P("/2/2/1"): 0,
    P("/2/2/2/127"): 7,
    P("/2/2/2/310"): 1,
    P("/2/2/3"): 127,
}


def test_device_instance_read_decodes_and_reencodes_to_spec_bytes() -> None:
    assert tlv.decode(DEVICE_TLV, P("/3/0"), MODEL) == DEVICE_VALUES
    assert tlv.encode(DEVICE_VALUES, P("/3/0"), MODEL) == DEVICE_TLV


def test_device_object_read_wraps_instance_in_object_instance_tlv() -> None:
    wrapped = bytes.fromhex("08 00 79") + DEVICE_TLV  # 0x79 = 121 bytes
    assert tlv.encode(DEVICE_VALUES, P("/3"), MODEL) == wrapped
    assert tlv.decode(wrapped, P("/3"), MODEL) == DEVICE_VALUES
    # A client may also answer an instance read with the wrapper.
    assert tlv.decode(wrapped, P("/3/0"), MODEL) == DEVICE_VALUES


def test_access_control_object_with_two_instances_and_16_bit_ids() -> None:
    assert tlv.decode(ACCESS_CONTROL_TLV, P("/2"), MODEL) == ACCESS_CONTROL_VALUES
    assert tlv.encode(ACCESS_CONTROL_VALUES, P("/2"), MODEL) == ACCESS_CONTROL_TLV


def test_single_resource_multiple_resource_and_resource_instance() -> None:
    manufacturer = DEVICE_TLV[:23]
    assert tlv.decode(manufacturer, P("/3/0/0"), MODEL) == {P("/3/0/0"): "Open Mobile Alliance"}
    assert tlv.encode({P("/3/0/0"): "Open Mobile Alliance"}, P("/3/0/0"), MODEL) == manufacturer

    voltage = bytes.fromhex("88 07 08 42 00 0E D8 42 01 13 88")
    values = {P("/3/0/7/0"): 3800, P("/3/0/7/1"): 5000}
    assert tlv.decode(voltage, P("/3/0/7"), MODEL) == values
    assert tlv.encode(values, P("/3/0/7"), MODEL) == voltage

    instance = bytes.fromhex("42 01 13 88")
    assert tlv.decode(instance, P("/3/0/7/1"), MODEL) == {P("/3/0/7/1"): 5000}
    assert tlv.encode({P("/3/0/7/1"): 5000}, P("/3/0/7/1"), MODEL) == instance
    # Bare resource-instance TLVs at a resource path are accepted too.
    assert tlv.decode(bytes.fromhex("42 00 0E D8 42 01 13 88"), P("/3/0/7"), MODEL) == values


def test_16_bit_resource_id_and_float_widths() -> None:
    # 0xE4: resource, 16-bit id, 4-byte value; 5700 = 0x1644; 21.5 fits float32.
    data = bytes.fromhex("E4 16 44 41 AC 00 00")
    assert tlv.encode({P("/3303/0/5700"): 21.5}, P("/3303/0"), MODEL) == data
    assert tlv.decode(data, P("/3303/0"), MODEL) == {P("/3303/0/5700"): 21.5}
    # 0.1 needs float64: 0xE8 = 16-bit id, 8-bit length field.
    data = tlv.encode({P("/3303/0/5700"): 0.1}, P("/3303/0"), MODEL)
    assert data[:4] == bytes.fromhex("E8 16 44 08")
    assert tlv.decode(data, P("/3303/0"), MODEL) == {P("/3303/0/5700"): 0.1}
    # Ints given for a Float resource are written as floats.
    assert tlv.encode({P("/3303/0/5700"): 2}, P("/3303/0/5700"), MODEL) == bytes.fromhex(
        "E4 16 44 40 00 00 00"
    )


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "C1 09 00"),
        (-128, "C1 09 80"),
        (127, "C1 09 7F"),
        (128, "C2 09 00 80"),
        (-32768, "C2 09 80 00"),
        (32768, "C4 09 00 00 80 00"),
        (2**31, "C8 09 08 00 00 00 00 80 00 00 00"),
        (-(2**63), "C8 09 08 80 00 00 00 00 00 00 00"),
    ],
)
def test_integers_take_the_smallest_width(value: int, encoded: str) -> None:
    data = bytes.fromhex(encoded)
    assert tlv.encode({P("/3/0/9"): value}, P("/3/0/9"), MODEL) == data
    assert tlv.decode(data, P("/3/0/9"), MODEL) == {P("/3/0/9"): value}


def test_unsigned_integer_boolean_objlnk_opaque() -> None:
    values: dict[Path, Value] = {
        P("/1/0/13"): 200,  # unsigned: one byte, 0xC8
        P("/1/0/6"): True,
        P("/1/0/10"): ObjectLink(11, 2),
    }
    data = bytes.fromhex("C1 0D C8  C1 06 01  C4 0A 00 0B 00 02")
    assert tlv.encode(values, P("/1/0"), MODEL) == data
    assert tlv.decode(data, P("/1/0"), MODEL) == values
    assert tlv.decode(bytes.fromhex("C8 0D 08 FF FF FF FF FF FF FF FF"), P("/1/0"), MODEL) == {
        P("/1/0/13"): 2**64 - 1
    }


def test_16_and_24_bit_lengths() -> None:
    for size, header in ((300, "D0 00 01 2C"), (70000, "D8 00 01 11 70")):
        blob = bytes(range(256)) * (size // 256) + bytes(size % 256)
        head = bytes.fromhex(header)
        data = tlv.encode({P("/5/0/0"): blob}, P("/5/0"), MODEL)
        assert data == head + blob
        assert tlv.decode(data, P("/5/0"), MODEL) == {P("/5/0/0"): blob}


def test_empty_instance_and_empty_multiple_resource() -> None:
    assert tlv.decode(bytes.fromhex("00 01"), P("/3303"), MODEL) == {P("/3303/1"): EMPTY}
    assert tlv.encode({P("/3303/1"): EMPTY}, P("/3303"), MODEL) == bytes.fromhex("00 01")
    assert tlv.decode(bytes.fromhex("80 06"), P("/3/0"), MODEL) == {P("/3/0/6"): EMPTY}
    assert tlv.encode({P("/3/0/6"): EMPTY}, P("/3/0"), MODEL) == bytes.fromhex("80 06")
    assert tlv.decode(b"", P("/3/0"), MODEL) == {}


def test_without_a_model_values_stay_raw_bytes() -> None:
    decoded = tlv.decode(DEVICE_TLV, P("/3/0"))
    assert decoded[P("/3/0/0")] == b"Open Mobile Alliance"
    assert decoded[P("/3/0/9")] == b"\x64"
    assert decoded[P("/3/0/7/1")] == b"\x13\x88"
    # Encoding without a model types values by their Python type.
    assert tlv.encode({P("/9/0/1"): 100, P("/9/0/2"): "x"}, P("/9/0")) == bytes.fromhex(
        "C1 01 64 C1 02 78"
    )


@pytest.mark.parametrize(
    ("data", "root"),
    [
        ("C8 00", "/3/0"),  # truncated length
        ("C8 00 05 41", "/3/0"),  # length overruns
        ("E1 FF FF 00", "/3/0"),  # reserved id 65535
        ("C3 09 00 00 01", "/3/0"),  # 3-byte integer
        ("C1 06 02", "/1/0"),  # boolean 2
        ("C2 0A 00 01", "/1/0"),  # objlnk of 2 bytes
        ("C2 00 C3 28", "/3/0"),  # invalid UTF-8
        ("86 06 C1 00 01", "/3/0"),  # resource TLV inside a multiple resource
        ("03 00 41 00 01", "/3/0"),  # resource instance directly inside an object instance
        ("41 00 01", "/3/0"),  # resource instance at an instance path
        ("C1 09 64", "/3"),  # resource TLV at an object path
        ("C1 09 64", "/3/0/10"),  # resource 9 answered for /3/0/10
        ("08 01 03 C1 09 64", "/3/0"),  # object instance 1 for /3/0
        ("C1 09 64", "/"),  # TLV carries no object id
    ],
)
def test_bad_payloads_raise_codec_error(data: str, root: str) -> None:
    with pytest.raises(CodecError):
        tlv.decode(bytes.fromhex(data), P(root), MODEL)


def test_bad_values_raise_codec_error_on_encode() -> None:
    with pytest.raises(CodecError):
        tlv.encode({P("/3/0/9"): "text"}, P("/3/0"), MODEL)
    with pytest.raises(CodecError):
        tlv.encode({P("/3/0/9"): 2**63}, P("/3/0"), MODEL)
    with pytest.raises(CodecError):
        tlv.encode({P("/3/0/7"): 5}, P("/3/0"), MODEL)  # multiple resource needs instances
    with pytest.raises(CodecError):
        tlv.encode({P("/1/0/1"): 5}, P("/3/0"), MODEL)  # not under the root
    with pytest.raises(CodecError):
        tlv.encode({P("/3/0/13"): datetime(2020, 1, 1)}, P("/3/0"), MODEL)  # naive time

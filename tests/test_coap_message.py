"""The CoAP message codec (RFC 7252 section 3): options, extended forms, bad input.

Byte vectors are written out by hand from the RFC; aiocoap's codec serves as an
independent oracle for the property tests.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.coap import options as o
from shoal.coap.codes import ACK, CON, NON, RST, Code, code_str, is_request, is_response
from shoal.coap.message import Message, MessageFormatError, empty, encode_options

# -- helpers -------------------------------------------------------------------------


def header(mtype: int, tkl: int, code: int, mid: int, version: int = 1) -> bytes:
    return bytes((version << 6 | mtype << 4 | tkl, code, mid >> 8, mid & 0xFF))


def roundtrip(msg: Message) -> Message:
    decoded = Message.decode(msg.encode())
    assert decoded == msg
    return decoded


# -- fixed header and token ------------------------------------------------------------


def test_rfc7252_figure_16_get_with_token_and_path() -> None:
    msg = Message(CON, Code.GET, 0x7D34, b"\x01", [(o.URI_PATH, b"temperature")])
    wire = msg.encode()
    assert wire == bytes.fromhex("41017d3401") + b"\xbb" + b"temperature"
    assert roundtrip(msg).uri_path == ["temperature"]


def test_every_message_type_round_trips() -> None:
    for mtype in (CON, NON, ACK, RST):
        msg = Message(mtype, 0, 0xBEEF)
        assert msg.encode() == header(mtype, 0, 0, 0xBEEF)
        assert roundtrip(msg).mtype == mtype
    assert empty(ACK, 0x1234) == header(ACK, 0, 0, 0x1234)
    assert empty(RST, 0xFFFF) == header(RST, 0, 0, 0xFFFF)


def test_token_lengths_zero_to_eight() -> None:
    for n in range(9):
        token = bytes(range(1, n + 1))
        msg = Message(CON, Code.GET, 1, token)
        assert msg.encode()[0] & 0x0F == n
        assert roundtrip(msg).token == token


def test_encoding_a_token_longer_than_eight_bytes_is_refused() -> None:
    with pytest.raises(ValueError):
        Message(CON, Code.GET, 1, bytes(9)).encode()


def test_payload_follows_the_marker() -> None:
    msg = Message(NON, Code.CONTENT, 7, b"t", [(o.CONTENT_FORMAT, b"")], b"22.5")
    wire = msg.encode()
    assert wire.endswith(b"\xff22.5")
    decoded = roundtrip(msg)
    assert decoded.payload == b"22.5"
    assert decoded.content_format == 0


def test_codes_print_and_classify() -> None:
    assert code_str(Code.CONTENT) == "2.05 Content"
    assert code_str(Code.REQUEST_ENTITY_TOO_LARGE) == "4.13 Request Entity Too Large"
    assert code_str(0x3F) == "1.31 Unknown"
    assert is_request(Code.GET) and not is_request(0)
    assert is_response(Code.CONTINUE) and is_response(Code.GATEWAY_TIMEOUT)
    assert Code.CONTINUE == 2 << 5 | 31


# -- every option LwM2M uses -----------------------------------------------------------


LWM2M_OPTIONS: list[tuple[int, bytes | str | int, bytes]] = [
    # number, value as given to Message.add, wire value
    (o.IF_MATCH, b"\x12\x34", b"\x12\x34"),
    (o.IF_MATCH, b"", b""),
    (o.URI_HOST, "pen-7.farm.example", b"pen-7.farm.example"),
    (o.ETAG, b"\x01\x02\x03\x04\x05\x06\x07\x08", b"\x01\x02\x03\x04\x05\x06\x07\x08"),
    (o.IF_NONE_MATCH, b"", b""),
    (o.OBSERVE, 0, b""),
    (o.OBSERVE, 1, b"\x01"),
    (o.OBSERVE, 0xFFFFFF, b"\xff\xff\xff"),
    (o.URI_PORT, 5683, b"\x16\x33"),
    (o.LOCATION_PATH, "rd", b"rd"),
    (o.LOCATION_PATH, "5a3f", b"5a3f"),
    (o.URI_PATH, "3303", b"3303"),
    (o.CONTENT_FORMAT, 11542, b"\x2d\x16"),
    (o.CONTENT_FORMAT, 110, b"\x6e"),
    (o.MAX_AGE, 0, b""),
    (o.MAX_AGE, 86400, b"\x01\x51\x80"),
    (o.URI_QUERY, "ep=pen7-do-01", b"ep=pen7-do-01"),
    (o.URI_QUERY, "lt=300", b"lt=300"),
    (o.ACCEPT, 112, b"\x70"),
    (o.LOCATION_QUERY, "k=v", b"k=v"),
    (o.BLOCK2, o.Block(0, True, 6).encode(), b"\x0e"),
    (o.BLOCK1, o.Block(1000, False, 2).encode(), b"\x3e\x82"),
    (o.SIZE2, 1_048_576, b"\x10\x00\x00"),
    (o.SIZE1, 102_400, b"\x01\x90\x00"),
    (o.NO_RESPONSE, 26, b"\x1a"),
]


@pytest.mark.parametrize(("number", "value", "raw"), LWM2M_OPTIONS)
def test_lwm2m_option_value_encoding(number: int, value: bytes | str | int, raw: bytes) -> None:
    msg = Message(CON, Code.GET, 1).add(number, value)
    assert msg.options == [(number, raw)]
    decoded = roundtrip(msg)
    assert decoded.opt(number) == raw
    if number in o.UINT_OPTIONS:
        assert decoded.uint(number) == o.decode_uint(raw)


def test_all_lwm2m_options_in_one_message_and_accessors() -> None:
    msg = Message(CON, Code.POST, 0x0102, b"\xaa\xbb")
    for number, value, _ in LWM2M_OPTIONS:
        msg.add(number, value)
    msg.payload = b"</3/0>,</3303/0>"
    decoded = roundtrip(msg)
    # repeated options keep their order
    assert decoded.uri_path == ["3303"]
    assert decoded.uri_query == ["ep=pen7-do-01", "lt=300"]
    assert decoded.location_path == ["rd", "5a3f"]
    assert decoded.location_query == ["k=v"]
    assert decoded.opts(o.IF_MATCH) == [b"\x12\x34", b""]
    assert decoded.opt(o.IF_NONE_MATCH) == b""
    assert decoded.opt(o.URI_HOST) == b"pen-7.farm.example"
    assert decoded.uint(o.URI_PORT) == 5683
    assert decoded.content_format == 11542
    assert decoded.accept == 112
    assert decoded.observe == 0
    assert decoded.max_age == 0
    assert decoded.etags == [b"\x01\x02\x03\x04\x05\x06\x07\x08"]
    assert decoded.block1 == o.Block(1000, False, 2)
    assert decoded.block2 == o.Block(0, True, 6)
    assert decoded.size1 == 102_400
    assert decoded.size2 == 1_048_576
    assert decoded.uint(o.NO_RESPONSE) == 26
    assert decoded.path_str() == "/3303"
    numbers = [n for n, _ in decoded.options]
    assert numbers == sorted(numbers)


def test_absent_options_read_as_none_and_max_age_defaults_to_60() -> None:
    msg = Message(CON, Code.GET, 1)
    assert msg.content_format is None and msg.accept is None and msg.observe is None
    assert msg.block1 is None and msg.block2 is None
    assert msg.size1 is None and msg.size2 is None
    assert msg.max_age == 60
    assert msg.uri_path == [] and msg.path_str() == "/"


def test_set_replaces_and_remove_deletes() -> None:
    msg = Message().add(o.URI_QUERY, "a").add(o.URI_QUERY, "b").add(o.OBSERVE, 0)
    msg.set(o.URI_QUERY, "c")
    assert msg.uri_query == ["c"]
    msg.remove(o.OBSERVE)
    assert msg.observe is None


def test_uint_codec() -> None:
    assert o.encode_uint(0) == b""
    assert o.encode_uint(255) == b"\xff"
    assert o.encode_uint(256) == b"\x01\x00"
    assert o.decode_uint(b"") == 0
    assert o.decode_uint(b"\x00\x00\x05") == 5  # leading zeros are tolerated
    with pytest.raises(ValueError):
        o.encode_uint(-1)


def test_block_value() -> None:
    b = o.Block(5, True, 6)
    assert b.size == 1024 and b.offset == 5 * 1024
    assert o.Block.decode(b.encode()) == b
    assert o.Block(0, False, 0).encode() == b""
    assert o.Block.decode(b"") == o.Block(0, False, 0)
    big = o.Block((1 << 20) - 1, True, 4)
    assert len(big.encode()) == 3
    assert o.Block.decode(big.encode()) == big
    with pytest.raises(ValueError):
        o.Block.decode(b"\x00\x00\x00\x10")
    assert [o.szx_for(n) for n in (1, 16, 17, 32, 1000, 1024, 4096)] == [0, 0, 0, 1, 5, 6, 6]


# -- extended option delta and length (RFC 7252 3.1) -----------------------------------


def test_no_response_uses_one_byte_extended_delta() -> None:
    # Uri-Path "rd" (11), then No-Response (258): delta 247 = 13 + 234
    msg = Message(CON, Code.GET, 0x1234, b"\x01", [(o.URI_PATH, b"rd"), (o.NO_RESPONSE, b"\x1a")])
    assert msg.encode() == bytes.fromhex("4101123401b27264d1ea1a")
    assert roundtrip(msg).uint(o.NO_RESPONSE) == 26


def test_no_response_alone_uses_one_byte_extended_delta() -> None:
    assert encode_options([(o.NO_RESPONSE, b"\x02")]) == bytes((0xD1, 258 - 13, 0x02))


def test_two_byte_extended_delta() -> None:
    # delta 2000 = 269 + 1731 (0x06c3)
    assert encode_options([(2000, b"x")]) == bytes((0xE1, 0x06, 0xC3)) + b"x"
    assert encode_options([(269, b"")]) == bytes((0xE0, 0, 0))
    assert encode_options([(268, b"")]) == bytes((0xD0, 255))
    assert encode_options([(65535, b"")]) == bytes((0xE0, 0xFE, 0xF2))
    msg = Message(CON, Code.GET, 1, options=[(65535, b"z"), (2000, b"x")])
    assert roundtrip(msg).options == [(2000, b"x"), (65535, b"z")]


@pytest.mark.parametrize(
    ("length", "prefix"),
    [
        (12, bytes((0xB0 | 12,))),
        (13, bytes((0xBD, 0))),
        (268, bytes((0xBD, 255))),
        (269, bytes((0xBE, 0, 0))),
        (300, bytes((0xBE, 0x00, 0x1F))),
        (1024, bytes((0xBE, 0x02, 0xF3))),
    ],
)
def test_extended_option_length(length: int, prefix: bytes) -> None:
    value = bytes(i & 0xFF for i in range(length))
    assert encode_options([(o.URI_PATH, value)]) == prefix + value
    msg = Message(CON, Code.PUT, 9, b"k", [(o.URI_PATH, value)], b"p")
    assert roundtrip(msg).opt(o.URI_PATH) == value


def test_extended_delta_and_length_together() -> None:
    value = b"v" * 300
    raw = encode_options([(o.NO_RESPONSE, value)])
    assert raw[:5] == bytes((0xDE, 258 - 13, 0x00, 0x1F)) + b"v"
    msg = Message(NON, Code.POST, 2, options=[(o.SIZE1, b"\x01"), (o.NO_RESPONSE, value)])
    assert roundtrip(msg).opt(o.NO_RESPONSE) == value


def test_options_are_sorted_stably_when_encoded() -> None:
    opts = [(o.URI_QUERY, b"b"), (o.URI_PATH, b"x"), (o.URI_QUERY, b"a"), (o.URI_PATH, b"y")]
    decoded = Message.decode(Message(CON, Code.GET, 1, options=opts).encode())
    assert decoded.options == [
        (o.URI_PATH, b"x"),
        (o.URI_PATH, b"y"),
        (o.URI_QUERY, b"b"),
        (o.URI_QUERY, b"a"),
    ]


def test_unknown_critical_is_reported_and_elective_is_not() -> None:
    assert Message(options=[(2048, b"")]).unknown_critical() is None
    assert Message(options=[(o.URI_PATH, b"a"), (2049, b"")]).unknown_critical() == 2049
    assert Message(options=[(9, b"")]).unknown_critical() == 9
    for number, _, _ in LWM2M_OPTIONS:
        assert Message(options=[(number, b"")]).unknown_critical() is None


def test_cache_key_ignores_block_observe_and_etag() -> None:
    a = Message(CON, Code.GET, 1, b"a", [(o.URI_PATH, b"5"), (o.OBSERVE, b"")])
    b = Message(CON, Code.GET, 2, b"b", [(o.URI_PATH, b"5"), (o.BLOCK2, b"\x16")])
    c = Message(CON, Code.GET, 3, b"c", [(o.URI_PATH, b"6")])
    assert a.cache_key() == b.cache_key() != c.cache_key()


def test_repr_names_the_options() -> None:
    text = repr(Message(CON, Code.GET, 3, b"\x0a", [(o.URI_PATH, b"rd")]))
    assert "CON" in text and "0.01" in text and "Uri-Path" in text


# -- bad input --------------------------------------------------------------------------


BAD: list[tuple[str, bytes, int | None]] = [
    # reason, datagram, expected mtype on the error (None: header unreadable)
    ("empty datagram", b"", None),
    ("one byte", b"\x40", None),
    ("three bytes", b"\x40\x01\x00", None),
    ("version 0", header(CON, 0, Code.GET, 1, version=0), None),
    ("version 2", header(CON, 0, Code.GET, 1, version=2), None),
    ("version 3", header(NON, 0, Code.GET, 1, version=3), None),
    ("token length 9", header(CON, 9, Code.GET, 1) + bytes(9), CON),
    ("token length 15", header(CON, 15, Code.GET, 1) + bytes(15), CON),
    ("truncated token", header(CON, 4, Code.GET, 1) + b"\x01\x02", CON),
    ("option delta 15", header(CON, 0, Code.GET, 1) + b"\xf1x", CON),
    ("option length 15", header(CON, 0, Code.GET, 1) + b"\xbf" + b"x" * 20, CON),
    ("delta 15 length 0", header(CON, 0, Code.GET, 1) + b"\xf0", CON),
    ("truncated 1-byte delta", header(CON, 0, Code.GET, 1) + b"\xd0", CON),
    ("truncated 2-byte delta", header(CON, 0, Code.GET, 1) + b"\xe0\x01", CON),
    ("truncated 1-byte length", header(CON, 0, Code.GET, 1) + b"\xbd", CON),
    ("truncated 2-byte length", header(CON, 0, Code.GET, 1) + b"\xbe\x00", CON),
    ("value past the end", header(CON, 0, Code.GET, 1) + b"\xb5ab", CON),
    ("long value past the end", header(CON, 0, Code.GET, 1) + b"\xbe\x00\x1f" + b"a" * 299, CON),
    ("payload marker, no payload", header(CON, 0, Code.CONTENT, 1) + b"\xff", CON),
    ("marker after options", header(ACK, 0, Code.CONTENT, 1) + b"\xb1a\xff", ACK),
    ("empty message with token", header(CON, 1, 0, 1) + b"\x01", CON),
    ("empty ACK with token", header(ACK, 2, 0, 1) + b"\x01\x02", ACK),
    ("empty RST with options", header(RST, 0, 0, 1) + b"\xb1a", RST),
    ("empty CON with payload", header(CON, 0, 0, 1) + b"\xffhi", CON),
    ("code class 1", header(CON, 0, 1 << 5 | 1, 1), CON),
    ("code class 6", header(NON, 0, 6 << 5, 1), NON),
    ("code class 7", header(CON, 0, 7 << 5 | 31, 1), CON),
]


@pytest.mark.parametrize(("reason", "data", "mtype"), BAD, ids=[b[0] for b in BAD])
def test_malformed_datagrams_raise_message_format_error(
    reason: str, data: bytes, mtype: int | None
) -> None:
    with pytest.raises(MessageFormatError) as info:
        Message.decode(data)
    assert info.value.mtype == mtype
    if mtype is None:
        assert info.value.mid is None
    else:
        assert info.value.mid == 1
    assert isinstance(info.value, ValueError)


def test_valid_edge_cases_decode() -> None:
    # the largest option number a two-byte delta reaches, repeated options,
    # a zero-length option and a one-byte payload
    data = header(CON, 0, Code.GET, 1) + b"\xe0\xfe\xf2" + b"\x00" + b"\xffX"
    msg = Message.decode(data)
    assert msg.options == [(65535, b""), (65535, b"")]
    assert msg.payload == b"X"


# -- properties ------------------------------------------------------------------------


CODES = st.one_of(st.integers(1, 31), st.integers(2 << 5, (6 << 5) - 1))
OPTIONS = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(sorted(o.NAMES)),
            st.integers(0, 300),
            st.integers(0, 65535),
        ),
        st.binary(max_size=400),
    ),
    max_size=12,
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    mtype = draw(st.sampled_from((CON, NON, ACK, RST)))
    mid = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        return Message(mtype, 0, mid)
    return Message(
        mtype,
        draw(CODES),
        mid,
        draw(st.binary(max_size=8)),
        draw(OPTIONS),
        draw(st.binary(max_size=600)),
    )


@given(messages())
def test_encode_decode_round_trip(msg: Message) -> None:
    decoded = Message.decode(msg.encode())
    assert decoded == msg
    assert decoded.options == sorted(msg.options, key=lambda opt: opt[0])
    assert decoded.encode() == msg.encode()


@given(messages())
def test_encoding_agrees_with_aiocoap(msg: Message) -> None:
    aiocoap = pytest.importorskip("aiocoap")
    from aiocoap.numbers.optionnumbers import OptionNumber
    from aiocoap.optiontypes import OpaqueOption

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = aiocoap.Message(
            mtype=msg.mtype, code=msg.code, mid=msg.mid, token=msg.token, payload=msg.payload
        )
    for number, value in msg.options:
        theirs.opt.add_option(OpaqueOption(OptionNumber(number), value))
    assert msg.encode() == theirs.encode()


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_message_format_error(data: bytes) -> None:
    try:
        msg = Message.decode(data)
    except MessageFormatError:
        return
    # whatever decodes re-encodes to something that decodes the same
    assert Message.decode(msg.encode()) == msg


@given(
    st.sampled_from((CON, NON, ACK, RST)),
    st.integers(0, 15),
    st.integers(0, 255),
    st.binary(max_size=300),
)
def test_arbitrary_bodies_after_a_valid_header(
    mtype: int, tkl: int, code: int, tail: bytes
) -> None:
    data = header(mtype, tkl, code, 0x4242) + tail
    try:
        msg = Message.decode(data)
    except MessageFormatError as exc:
        assert exc.mtype == mtype and exc.mid == 0x4242
        return
    assert msg.mid == 0x4242 and msg.mtype == mtype and len(msg.token) == tkl


@pytest.mark.parametrize("length", [0, 12, 13, 268, 269, 65535, 65535 + 269])
def test_longest_option_values_round_trip(length: int) -> None:
    msg = Message(CON, Code.PUT, 1, options=[(o.ETAG, b"e"), (2049, b"x" * length)])
    assert Message.decode(msg.encode()).opt(2049) == b"x" * length


def test_option_value_too_long_for_the_wire_is_refused() -> None:
    with pytest.raises(ValueError):
        Message(CON, Code.PUT, 1, options=[(o.URI_PATH, b"x" * (65535 + 270))]).encode()

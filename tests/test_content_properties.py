"""Property tests over every content format: decode(encode(x)) == x for values
typed by the model, and no input makes a decoder raise anything but CodecError."""

from __future__ import annotations

import json
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from content_fixtures import MODEL, OBJECTS, WRITABLE, resource_entries, values_of
from shoal.lwm2m import content
from shoal.lwm2m.content import EMPTY, CodecError, ContentFormat
from shoal.lwm2m.model import ResourceType, Value
from shoal.lwm2m.path import Path

F = ContentFormat
JSON_FORMATS = (F.SENML_JSON, F.OMA_JSON)
ALL_FORMATS = [f for f in ContentFormat]
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

instance_ids = st.integers(0, 65534)
objects = st.sampled_from(sorted(OBJECTS))


@st.composite
def instance_values(draw: st.DrawFn, *, finite: bool = False) -> tuple[Path, dict[Path, Value]]:
    oid, iid = draw(objects), draw(instance_ids)
    return Path(oid, iid), draw(resource_entries(oid, iid, finite=finite))


@st.composite
def object_values(
    draw: st.DrawFn, *, finite: bool = False, empties: bool = False
) -> tuple[Path, dict[Path, Value]]:
    oid = draw(objects)
    values: dict[Path, Value] = {}
    for iid in draw(st.lists(instance_ids, min_size=1, max_size=3, unique=True)):
        entries = draw(resource_entries(oid, iid, finite=finite))
        if not entries and empties:
            values[Path(oid, iid)] = EMPTY
        values.update(entries)
    return Path(oid), values


@st.composite
def composite_values(draw: st.DrawFn, *, finite: bool = False) -> dict[Path, Value]:
    values: dict[Path, Value] = {}
    for oid in draw(st.lists(objects, min_size=1, max_size=3, unique=True)):
        for iid in draw(st.lists(instance_ids, min_size=1, max_size=2, unique=True)):
            values.update(draw(resource_entries(oid, iid, finite=finite)))
    return values


@st.composite
def single_values(
    draw: st.DrawFn, *, types: tuple[ResourceType, ...] | None = None
) -> tuple[Path, Value]:
    """One value at a resource path, or at a resource-instance path for multiple ones."""
    oid, res = draw(st.sampled_from(WRITABLE).filter(lambda w: types is None or w[1].type in types))
    ids = [oid, draw(instance_ids), res.id]
    if res.multiple:
        ids.append(draw(instance_ids))
    return Path(*ids), draw(values_of(res.type))


@st.composite
def tlv_cases(draw: st.DrawFn) -> tuple[Path, dict[Path, Value]]:
    level = draw(st.integers(1, 4))
    if level == 1:
        return draw(object_values(empties=True))
    if level == 2:
        return draw(instance_values())
    if level == 4:
        path, value = draw(single_values().filter(lambda s: len(s[0]) == 4))
        return path, {path: value}
    oid, res = draw(st.sampled_from(WRITABLE))
    root = Path(oid, draw(instance_ids), res.id)
    vals = values_of(res.type)
    if not res.multiple:
        return root, {root: draw(vals)}
    riids = draw(st.lists(instance_ids, min_size=1, max_size=3, unique=True))
    return root, {root.child(i): draw(vals) for i in riids}


@SETTINGS
@given(tlv_cases())
def test_tlv_round_trip(case: tuple[Path, dict[Path, Value]]) -> None:
    root, values = case
    assert content.decode(F.TLV, content.encode(F.TLV, values, root, MODEL), root, MODEL) == values


@SETTINGS
@given(st.sampled_from([F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR]), st.data())
def test_composite_round_trip(fmt: ContentFormat, data: st.DataObject) -> None:
    values = data.draw(composite_values(finite=fmt is F.SENML_JSON))
    payload = content.encode(fmt, values, Path(), MODEL)
    assert content.decode(fmt, payload, Path(), MODEL) == values


@SETTINGS
@given(st.sampled_from([F.SENML_JSON, F.SENML_CBOR, F.OMA_JSON, F.LWM2M_CBOR]), st.data())
def test_instance_and_object_round_trip(fmt: ContentFormat, data: st.DataObject) -> None:
    finite = fmt in JSON_FORMATS
    strategy = instance_values(finite=finite) | object_values(
        finite=finite, empties=fmt is F.LWM2M_CBOR
    )
    root, values = data.draw(strategy)
    payload = content.encode(fmt, values, root, MODEL)
    assert content.decode(fmt, payload, root, MODEL) == values


@SETTINGS
@given(st.sampled_from([F.SENML_JSON, F.SENML_CBOR, F.OMA_JSON]), st.data())
def test_timed_round_trip(fmt: ContentFormat, data: st.DataObject) -> None:
    finite = fmt in JSON_FORMATS
    stamps = data.draw(
        st.lists(
            st.none() | st.floats(-1e11, 1e11) | st.integers(0, 2**40).map(float),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    timed = []
    for ts in stamps:
        values = data.draw(composite_values(finite=finite))
        timed.append((ts, values or {Path(3, 0, 9): 1}))
    root = Path()
    payload = content.encode_timed(fmt, timed, root, MODEL)
    assert content.decode_timed(fmt, payload, root, MODEL) == timed


@SETTINGS
@given(single_values())
def test_text_and_cbor_round_trip(case: tuple[Path, Value]) -> None:
    root, value = case
    for fmt in (F.TEXT, F.CBOR):
        payload = content.encode(fmt, {root: value}, root, MODEL)
        assert content.decode(fmt, payload, root, MODEL) == {root: value}


@SETTINGS
@given(single_values(types=(ResourceType.OPAQUE,)))
def test_opaque_round_trip(case: tuple[Path, Value]) -> None:
    root, value = case
    payload = content.encode(F.OPAQUE, {root: value}, root, MODEL)
    assert content.decode(F.OPAQUE, payload, root, MODEL) == {root: value}


# --- robustness ------------------------------------------------------------------

ROOTS = [Path.parse(p) for p in ("/", "/3", "/3/0", "/3/0/9", "/3/0/7", "/3/0/7/1", "/32769/0")]


def _decode_everything(payload: bytes) -> None:
    """Every decoder, every root, with and without a model: CodecError or a result."""
    for fmt in ALL_FORMATS:
        for root in ROOTS:
            for model in (MODEL, None):
                try:
                    content.decode(fmt, payload, root, model)
                except CodecError:
                    pass
                if fmt.timestamped:
                    try:
                        content.decode_timed(fmt, payload, root, model)
                    except CodecError:
                        pass
        if fmt.composite:
            try:
                content.decode_paths(fmt, payload)
            except CodecError:
                pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_codec_error(payload: bytes) -> None:
    _decode_everything(payload)


json_labels = st.sampled_from(
    ["bn", "bt", "n", "t", "v", "vs", "vb", "vd", "vlo", "e", "sv", "bv", "ov", "x"]
)
names = st.sampled_from(["/3/0/9", "/3/0/", "9", "7/1", "", "/32769/0/5", "/1/0/10", "/x", "/3"])
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | names
    | st.text(max_size=8)
)
json_docs: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_labels, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(json_docs)
def test_json_shaped_input_raises_only_codec_error(doc: Any) -> None:
    _decode_everything(json.dumps(doc).encode())


cbor_keys = st.integers(-3, 8) | st.sampled_from(["vlo", "x"]) | st.integers(0, 70000)
cbor_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | names
    | st.binary(max_size=8)
    | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 4, 28, 29, 35, 258, 999]), st.integers())
)
cbor_docs: st.SearchStrategy[Any] = st.recursive(
    cbor_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(cbor_keys | st.tuples(st.integers(0, 70000)), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(cbor_docs)
def test_cbor_shaped_input_raises_only_codec_error(doc: Any) -> None:
    try:
        payload = cbor2.dumps(doc)
    except Exception:  # the generator may build something cbor2 will not encode
        return
    _decode_everything(payload)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid payload of some format with a few bytes replaced, dropped or added."""
    fmt = draw(st.sampled_from([F.TLV, F.SENML_CBOR, F.LWM2M_CBOR, F.SENML_JSON]))
    if fmt is F.TLV:
        root, values = draw(tlv_cases())
    else:
        root, values = Path(), draw(composite_values(finite=True))
    data = bytearray(content.encode(fmt, values, root, MODEL))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "del", "ins"]))
        pos = draw(st.integers(0, len(data)))
        if op == "ins" or not data:
            data.insert(pos, draw(st.integers(0, 255)))
        elif op == "del":
            del data[min(pos, len(data) - 1)]
        else:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=150, deadline=None)
@given(mutated())
def test_mutated_payloads_raise_only_codec_error(payload: bytes) -> None:
    _decode_everything(payload)

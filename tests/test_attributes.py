"""Notification attributes: query form, validation rules, Write-Attributes merge."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shoal.lwm2m.attributes import UNSET, InvalidAttributes, NotificationAttributes


def test_to_query_order_and_formats() -> None:
    attrs = NotificationAttributes(pmin=10, pmax=60, gt=20.5, lt=4, st=0.5, epmin=1, epmax=5)
    assert attrs.to_query() == [
        "pmin=10",
        "pmax=60",
        "gt=20.5",
        "lt=4",
        "st=0.5",
        "epmin=1",
        "epmax=5",
    ]
    assert NotificationAttributes(edge=1, con=0, hqmax=10).to_query() == [
        "edge=1",
        "con=0",
        "hqmax=10",
    ]
    assert NotificationAttributes().to_query() == []
    assert NotificationAttributes().is_empty()


def test_unset_emits_bare_name() -> None:
    attrs = NotificationAttributes(pmin=UNSET, gt=UNSET, pmax=30)
    assert attrs.to_query() == ["pmin", "pmax=30", "gt"]
    assert NotificationAttributes.from_query(["pmin", "pmax=30", "gt"]) == attrs
    assert repr(UNSET) == "UNSET"


def test_floats_without_exponent_where_short() -> None:
    assert NotificationAttributes(gt=1e-7).to_query() == ["gt=0.0000001"]
    assert NotificationAttributes(gt=1e20).to_query() == ["gt=100000000000000000000"]
    assert NotificationAttributes(gt=-2.0).to_query() == ["gt=-2"]
    assert NotificationAttributes(gt=1.5e300).to_query() == ["gt=1.5e+300"]


def test_from_query_parses_numbers() -> None:
    attrs = NotificationAttributes.from_query(["gt=-3.25", "lt=-10", "st=.5", "pmin=0"])
    assert attrs == NotificationAttributes(gt=-3.25, lt=-10.0, st=0.5, pmin=0)
    assert isinstance(attrs.lt, float)


def test_ints_given_for_floats_are_normalised() -> None:
    assert NotificationAttributes(gt=20) == NotificationAttributes(gt=20.0)


def test_equal_bounds_are_allowed() -> None:
    NotificationAttributes(pmin=10, pmax=10)
    NotificationAttributes(epmin=10, epmax=10)
    NotificationAttributes(pmin=10, pmax=UNSET)  # no check against a value being removed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pmin": 20, "pmax": 10}, "pmin"),
        ({"epmin": 20, "epmax": 10}, "epmin"),
        ({"lt": 10.0, "gt": 10.0}, "lt"),
        ({"lt": 20.0, "gt": 10.0}, "lt"),
        ({"lt": 0.0, "gt": 10.0, "st": 5.0}, "2\\*st"),  # 0 + 10 is not < 10
        ({"lt": 0.1, "gt": 0.3, "st": 0.1}, "2\\*st"),  # exact decimal, no float slack
        ({"st": -1.0}, "st"),
        ({"pmin": -1}, "pmin"),
        ({"pmax": 2**31}, "pmax"),
        ({"pmin": True}, "pmin"),
        ({"pmin": 1.5}, "pmin"),
        ({"gt": float("nan")}, "gt"),
        ({"gt": float("inf")}, "gt"),
        ({"gt": "1"}, "gt"),
        ({"edge": 2}, "edge"),
        ({"con": -1}, "con"),
    ],
)
def test_invalid_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidAttributes, match=message):
        NotificationAttributes(**kwargs)  # type: ignore[arg-type]


def test_step_rule_passes_when_strict() -> None:
    NotificationAttributes(lt=0.1, gt=0.31, st=0.1)


@pytest.mark.parametrize(
    "queries",
    [
        ["foo=1"],  # unknown
        ["dim=2"],  # not writable
        ["pmin=1", "pmin=2"],  # repeated
        ["pmin=1", "pmin"],
        ["pmin="],
        ["pmin=abc"],
        ["pmin=-1"],
        ["pmin=1.0"],
        ["pmin=+1"],
        ["pmin= 1"],
        ["pmin=99999999999"],
        ["gt=1e999"],
        ["gt=nan"],
        ["gt=inf"],
        ["gt=1,5"],
        ["gt="],
        ["st=-0.5"],
        ["edge=2"],
        ["con=yes"],
        ["pmin=20", "pmax=10"],
        ["lt=5", "gt=1"],
        [""],
        ["=1"],
    ],
)
def test_from_query_rejects(queries: list[str]) -> None:
    with pytest.raises(InvalidAttributes):
        NotificationAttributes.from_query(queries)


def test_from_link_params_ignores_other_params() -> None:
    params: dict[str, str | None] = {"dim": "2", "ver": "1.1", "pmin": "5", "obs": None}
    assert NotificationAttributes.from_link_params(params) == NotificationAttributes(pmin=5)
    with pytest.raises(InvalidAttributes):
        NotificationAttributes.from_link_params({"pmin": None})


def test_apply_write_attributes() -> None:
    stored = NotificationAttributes(pmin=10, pmax=60, gt=30.0)
    update = NotificationAttributes.from_query(["pmax=120", "gt", "lt=2"])
    assert stored.apply(update) == NotificationAttributes(pmin=10, pmax=120, lt=2.0)


def test_apply_validates_the_result() -> None:
    stored = NotificationAttributes(pmax=60)
    with pytest.raises(InvalidAttributes):
        stored.apply(NotificationAttributes(pmin=100))


@given(st.lists(st.text(max_size=20), max_size=6))
def test_from_query_raises_only_invalid_attributes(queries: list[str]) -> None:
    try:
        NotificationAttributes.from_query(queries)
    except InvalidAttributes:
        pass


_int_attr = st.none() | st.just(UNSET) | st.integers(0, 2**31 - 1)
_float_attr = st.none() | st.just(UNSET) | st.floats(allow_nan=False, allow_infinity=False)
_flag = st.none() | st.just(UNSET) | st.sampled_from([0, 1])


@given(
    pmin=_int_attr,
    pmax=_int_attr,
    gt=_float_attr,
    lt=_float_attr,
    step=st.none() | st.just(UNSET) | st.floats(0, 1e10),
    epmin=_int_attr,
    epmax=_int_attr,
    edge=_flag,
    con=_flag,
    hqmax=_int_attr,
)
def test_query_round_trip(**kwargs: object) -> None:
    kwargs["st"] = kwargs.pop("step")
    try:
        attrs = NotificationAttributes(**kwargs)  # type: ignore[arg-type]
    except InvalidAttributes:
        assume(False)
        return
    assert NotificationAttributes.from_query(attrs.to_query()) == attrs

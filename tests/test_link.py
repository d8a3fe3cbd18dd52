"""CoRE link format and the LwM2M link payloads: spec examples, errors, properties."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.lwm2m.attributes import NotificationAttributes
from shoal.lwm2m.link import (
    DiscoveredLink,
    Link,
    LinkFormatError,
    ObjectInfo,
    RegistrationLinks,
    format_links,
    format_registration_links,
    parse_discover_links,
    parse_links,
    parse_registration_links,
)
from shoal.lwm2m.path import Path

SPEC_REGISTER = '</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</3303/0>;ver=1.1,</5>'


# --- generic link format --------------------------------------------------------------


def test_parse_spec_register_payload() -> None:
    assert parse_links(SPEC_REGISTER) == [
        Link("/", {"rt": "oma.lwm2m", "ct": "11543"}),
        Link("/1/0"),
        Link("/3/0"),
        Link("/3303/0", {"ver": "1.1"}),
        Link("/5"),
    ]


def test_parse_bytes_and_empty() -> None:
    assert parse_links(b"</1/0>") == [Link("/1/0")]
    assert parse_links("") == []
    assert parse_links(" \r\n\t") == []


def test_quoted_values_keep_commas_semicolons_and_escapes() -> None:
    links = parse_links(r'</a>;title="x, y; z";q="say \"hi\" \\ o",</b>')
    assert links == [Link("/a", {"title": "x, y; z", "q": 'say "hi" \\ o'}), Link("/b")]


def test_valueless_params_and_whitespace() -> None:
    text = ' </3/0/1> ; obs ;pmin = 10 ,\n  </3/0/2>;rt="a b" \n'
    assert parse_links(text) == [
        Link("/3/0/1", {"obs": None, "pmin": "10"}),
        Link("/3/0/2", {"rt": "a b"}),
    ]


def test_quoted_and_token_values_are_equal() -> None:
    assert parse_links('</>;ct="110"') == parse_links("</>;ct=110")


def test_empty_quoted_value() -> None:
    assert parse_links('</a>;x=""') == [Link("/a", {"x": ""})]


@pytest.mark.parametrize(
    "text",
    [
        "</1/0",  # unterminated target
        "1/0",  # no target
        "</1/0>,",  # trailing comma
        ",</1/0>",
        "</1/0>,,</2/0>",
        "</1/0></2/0>",  # missing comma
        '</1/0>;ver="1.1',  # unterminated quote
        "</1/0>;ver=",  # empty token
        "</1/0>;=1",  # no name
        "</1/0>;ver=1 1",  # space inside a token
        '</1/0>;x=a"b',  # quote inside a token
        "</1/0>;x=1;x=2",  # duplicate parameter
        "</1 0>",  # space in target
        '<"x">',
        "</é>",  # non-ASCII target
        "</a>;ü=1",  # non-ASCII name
        "</a>;x=ü",  # non-ASCII token
        "</a> junk",
    ],
)
def test_garbage_is_rejected(text: str) -> None:
    with pytest.raises(LinkFormatError):
        parse_links(text)


def test_invalid_utf8_is_rejected() -> None:
    with pytest.raises(LinkFormatError, match="UTF-8"):
        parse_links(b'</a>;x="\xff"')


def test_link_constructor_validates() -> None:
    with pytest.raises(LinkFormatError):
        Link("/a b")
    with pytest.raises(LinkFormatError):
        Link("/a", {"bad name": None})


def test_link_params_are_a_private_copy() -> None:
    params: dict[str, str | None] = {"a": "1"}
    link = Link("/x", params)
    params["a"] = "2"
    assert link.params == {"a": "1"}
    assert hash(link) == hash(Link("/x", {"a": "9"}))  # hash on target only


def test_format_quotes_where_needed() -> None:
    text = format_links(
        [
            Link("/", {"rt": "oma.lwm2m", "ct": "60 110"}),
            Link("/3303", {"ver": "1.1", "obs": None, "t": 'a"b\\c'}),
        ]
    )
    assert text == '</>;rt="oma.lwm2m";ct="60 110",</3303>;ver=1.1;obs;t="a\\"b\\\\c"'
    assert str(Link("/1/0")) == "</1/0>"


def test_many_links_parse_in_linear_time() -> None:
    # Not a benchmark: a guard against accidental quadratic behaviour.
    payload = '</>;rt="oma.lwm2m",' + ",".join(f"</{i}/0>;ver=1.0" for i in range(20000))
    start = time.perf_counter()
    result = parse_registration_links(payload)
    assert len(result.objects) == 20000
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize(
    "text",
    [
        "<" + "a" * 200_000,
        '</a>;x="' + "a" * 200_000,
        '</a>;x="' + "\\a" * 100_000,
        "</a>" + ";x" * 100_000,
        "<" * 200_000,
        "</a>," * 100_000,
    ],
)
def test_pathological_input_fails_fast(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(LinkFormatError):
        parse_links(text)
    assert time.perf_counter() - start < 2


# --- registration payloads ------------------------------------------------------------


def test_registration_spec_example() -> None:
    reg = parse_registration_links(SPEC_REGISTER)
    assert reg.alternate_path == "/"
    assert reg.content_formats == (11543,)
    assert reg.objects == {
        1: ObjectInfo(None, (0,)),
        3: ObjectInfo(None, (0,)),
        5: ObjectInfo(None, ()),
        3303: ObjectInfo("1.1", (0,)),
    }
    assert reg.uri_path_prefix() == []


def test_registration_alternate_path() -> None:
    reg = parse_registration_links('</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3/0>')
    assert reg.alternate_path == "/lwm2m"
    assert reg.content_formats == ()
    assert reg.objects == {1: ObjectInfo(None, (0,)), 3: ObjectInfo(None, (0,))}
    assert reg.uri_path_prefix() == ["lwm2m"]


def test_registration_nested_alternate_path_with_trailing_slash() -> None:
    reg = parse_registration_links('</a/b/>;rt="oma.lwm2m",</a/b/3/0>')
    assert reg.alternate_path == "/a/b"
    assert reg.uri_path_prefix() == ["a", "b"]
    assert reg.objects == {3: ObjectInfo(None, (0,))}


def test_registration_lwm2m_1_2_content_formats() -> None:
    reg = parse_registration_links('</>;rt="oma.lwm2m";ct="60 110 112 11543",</3/0>')
    assert reg.content_formats == (60, 110, 112, 11543)


def test_registration_root_without_rt_and_without_root() -> None:
    assert parse_registration_links("</>;ct=11543,</3/0>").content_formats == (11543,)
    reg = parse_registration_links("</1/0>,</3/0>")
    assert reg.alternate_path == "/"
    assert reg.content_formats == ()


def test_registration_rt_in_a_list_and_not_first() -> None:
    reg = parse_registration_links('</x/3/0>,</x>;rt="core.rd oma.lwm2m";ct=110,</x/1/0>')
    # the root link may come anywhere; every object link must be below it
    assert reg.alternate_path == "/x"
    assert sorted(reg.objects) == [1, 3]


def test_registration_versions_and_instances() -> None:
    reg = parse_registration_links(
        "</3303>;ver=1.1,</3303/1>,</3303/0>,</3303/0>,</3304/2>;ver=1.1,</3304/1>,</9>;ver=2.0"
    )
    assert reg.objects == {
        3303: ObjectInfo("1.1", (0, 1)),
        3304: ObjectInfo("1.1", (1, 2)),
        9: ObjectInfo("2.0", ()),
    }
    assert list(reg.objects) == [9, 3303, 3304]


def test_registration_ignores_unknown_params() -> None:
    reg = parse_registration_links('</>;rt="oma.lwm2m";foo;bar="x",</3/0>;vendor=1')
    assert reg.objects == {3: ObjectInfo(None, (0,))}


@pytest.mark.parametrize(
    "payload",
    [
        "</3/0/1>",  # resource path
        "</3/0/1/0>",
        "</a/0>",  # not numeric
        "</3/00>",  # leading zero
        "</3/0/>",  # trailing slash
        "<3/0>",  # relative
        "</3/65535>",  # reserved id
        "</70000>",
        '</lwm2m>;rt="oma.lwm2m",</3/0>',  # outside the alternate path
        '</lwm2m>;rt="oma.lwm2m",</lwm2mx/3/0>',
        '</lwm2m>;rt="oma.lwm2m",</lwm2m>',  # root twice
        '</a>;rt="oma.lwm2m",</b>;rt="oma.lwm2m"',
        '</a?x>;rt="oma.lwm2m",</a?x/1/0>',
        '<//x>;rt="oma.lwm2m"',
        '<x>;rt="oma.lwm2m"',
        '</>;rt="oma.lwm2m",</>',
        "</3303>;ver=1.1,</3303/0>;ver=1.2",  # conflicting versions
        "</3303>;ver",
        "</3303>;ver=one",
        '</>;rt="oma.lwm2m";ct=json,</3/0>',
        '</>;rt="oma.lwm2m";ct=70000,</3/0>',
        '</>;rt="oma.lwm2m";ct,</3/0>',
        '</>;rt="oma.lwm2m";ct="",</3/0>',
        "garbage",
    ],
)
def test_registration_rejects(payload: str) -> None:
    with pytest.raises(LinkFormatError):
        parse_registration_links(payload)


def test_format_registration_links() -> None:
    reg = RegistrationLinks(
        "/lwm2m",
        (60, 110),
        {3: ObjectInfo(None, (0,)), 5: ObjectInfo(), 3303: ObjectInfo("1.1", (0, 1))},
    )
    text = format_registration_links(reg)
    assert text == (
        '</lwm2m>;rt="oma.lwm2m";ct="60 110",</lwm2m/3/0>,</lwm2m/5>,'
        "</lwm2m/3303>;ver=1.1,</lwm2m/3303/0>,</lwm2m/3303/1>"
    )
    assert parse_registration_links(text) == reg


# --- discover -------------------------------------------------------------------------


def test_discover_response() -> None:
    links = parse_discover_links("</3/0>;pmin=10,</3/0/1>,</3/0/7>;dim=8;pmin=10;pmax=60;gt=20.5")
    assert links == [
        DiscoveredLink(
            Path(3, 0), attributes=NotificationAttributes(pmin=10), params={"pmin": "10"}
        ),
        DiscoveredLink(Path(3, 0, 1)),
        DiscoveredLink(
            Path(3, 0, 7),
            dim=8,
            attributes=NotificationAttributes(pmin=10, pmax=60, gt=20.5),
            params={"dim": "8", "pmin": "10", "pmax": "60", "gt": "20.5"},
        ),
    ]


def test_discover_object_with_version_and_alternate_path() -> None:
    links = parse_discover_links("</lwm2m/3303>;ver=1.1,</lwm2m/3303/0/5700>", "/lwm2m")
    assert links[0].path == Path(3303) and links[0].version == "1.1"
    assert links[1].path == Path(3303, 0, 5700)


def test_bootstrap_discover() -> None:
    links = parse_discover_links('</>;lwm2m=1.1,</0/0>;ssid=101;uri="coaps://shoal:5684",</1/0>')
    assert links[0].path == Path() and links[0].params["lwm2m"] == "1.1"
    assert links[1].params["uri"] == "coaps://shoal:5684"


@pytest.mark.parametrize(
    "payload",
    [
        "</3/0/7>;dim=256",
        "</3/0/7>;dim=x",
        "</3/0/7>;dim",
        "</3/0/7>;pmin=20;pmax=10",
        "</3/0/7>;pmin",
        "</3/0/7>;pmin=-1",
        "</3/a>",
    ],
)
def test_discover_rejects(payload: str) -> None:
    with pytest.raises(LinkFormatError):
        parse_discover_links(payload)


# --- properties -----------------------------------------------------------------------

_LINKISH = st.text(alphabet='<>;,="\\/ 0123456789abctrv.\n\t', max_size=80)


@given(st.one_of(st.text(max_size=200), _LINKISH))
def test_parse_links_raises_only_link_format_error(text: str) -> None:
    try:
        parse_links(text)
    except LinkFormatError:
        pass


@given(st.binary(max_size=200))
def test_parse_links_bytes_raises_only_link_format_error(data: bytes) -> None:
    try:
        parse_links(data)
    except LinkFormatError:
        pass


@given(st.one_of(st.text(max_size=200), _LINKISH))
def test_lwm2m_parsers_raise_only_link_format_error(text: str) -> None:
    for parse in (parse_registration_links, parse_discover_links):
        try:
            parse(text)
        except LinkFormatError:
            pass


_URI_CHARS = "ABCxyz0189-._~:/?#[]@!$&'()*+,;=%"
_NAME_CHARS = "Aaz09!#$&+-.^_`|~"
_links = st.builds(
    Link,
    st.text(alphabet=_URI_CHARS, max_size=20),
    st.dictionaries(
        st.text(alphabet=_NAME_CHARS, min_size=1, max_size=8),
        st.none() | st.text(max_size=20),
        max_size=4,
    ),
)


@given(st.lists(_links, max_size=8))
def test_format_parse_round_trip(links: list[Link]) -> None:
    assert parse_links(format_links(links)) == links


_ids = st.integers(0, 65534)
_registration = st.builds(
    RegistrationLinks,
    st.sampled_from(["/", "/lwm2m", "/a/b"]),
    st.lists(st.integers(0, 65535), unique=True, max_size=4).map(tuple),
    st.dictionaries(
        _ids,
        st.builds(
            ObjectInfo,
            st.none() | st.sampled_from(["1.0", "1.1", "2.3"]),
            st.lists(_ids, unique=True, max_size=4).map(lambda ids: tuple(sorted(ids))),
        ),
        max_size=6,
    ).map(lambda objects: dict(sorted(objects.items()))),
)


@given(_registration)
def test_registration_round_trip(reg: RegistrationLinks) -> None:
    assert parse_registration_links(format_registration_links(reg)) == reg

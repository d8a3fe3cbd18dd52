"""Registration interface rules: Register, Update, De-register and their error codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.lwm2m.link import LinkFormatError, ObjectInfo, RegistrationLinks
from shoal.lwm2m.registration import (
    BAD_REQUEST,
    NOT_FOUND,
    PRECONDITION_FAILED,
    UNSUPPORTED_CONTENT_FORMAT,
    DeregisterRequest,
    RegisterRequest,
    RegistrationError,
    UpdateRequest,
    parse_deregister,
    parse_register,
    parse_update,
)

LINKS = b'</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>,</3303/0>;ver=1.1,</5>'
RD = ["rd"]


def register(query: list[str], payload: bytes = LINKS, cf: int | None = 40) -> RegisterRequest:
    return parse_register(RD, query, payload, cf)


def register_error(
    query: list[str], payload: bytes = LINKS, cf: int | None = 40
) -> RegistrationError:
    with pytest.raises(RegistrationError) as info:
        register(query, payload, cf)
    return info.value


# --- Register -------------------------------------------------------------------------


def test_register_minimal_uses_defaults() -> None:
    req = register(["ep=pen7-sensor-001"])
    assert req == RegisterRequest(
        endpoint="pen7-sensor-001",
        lifetime=86400,
        version="1.0",
        binding="U",
        queue_mode=False,
        sms=None,
        links=RegistrationLinks(
            "/",
            (11543,),
            {
                1: ObjectInfo(None, (0,)),
                3: ObjectInfo(None, (0,)),
                5: ObjectInfo(None, ()),
                3303: ObjectInfo("1.1", (0,)),
            },
        ),
        extra={},
    )


def test_register_full_1_1_with_queue_mode_and_extras() -> None:
    req = register(
        ["ep=cam-3", "lt=300", "lwm2m=1.1", "b=UT", "Q", "sms=+4712345678", "enc=pen-7", "flag"]
    )
    assert (req.endpoint, req.lifetime, req.version) == ("cam-3", 300, "1.1")
    assert req.binding == "UT" and req.transports == {"U", "T"}
    assert req.queue_mode is True
    assert req.sms == "+4712345678"
    assert req.extra == {"enc": "pen-7", "flag": ""}


def test_register_1_0_queue_mode_from_binding() -> None:
    req = register(["ep=a", "b=UQ"])
    assert req.queue_mode is True and req.transports == {"U"}
    assert register(["ep=a", "b=UQS"]).transports == {"U", "S"}


def test_register_1_2_binding_letters_and_infinite_lifetime() -> None:
    req = register(["ep=a", "lwm2m=1.2", "b=MH", "lt=0"])
    assert req.binding == "MH" and req.lifetime == 0


def test_register_without_content_format_and_with_alternate_path() -> None:
    req = register(["ep=a"], b'</lwm2m>;rt="oma.lwm2m";ct="60 110",</lwm2m/3/0>', None)
    assert req.links.alternate_path == "/lwm2m"
    assert req.links.content_formats == (60, 110)


def test_register_keeps_unicode_endpoint_at_the_limit() -> None:
    assert register(["ep=" + "é" * 127]).endpoint == "é" * 127


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ([], BAD_REQUEST),  # no ep
        (["lt=60"], BAD_REQUEST),
        (["ep"], BAD_REQUEST),
        (["ep="], BAD_REQUEST),
        (["ep=a", "ep=b"], BAD_REQUEST),
        (["ep=" + "x" * 256], BAD_REQUEST),
        (["ep=" + "é" * 128], BAD_REQUEST),  # 256 bytes
        (["ep=a\x00b"], BAD_REQUEST),
        (["ep=a\nb"], BAD_REQUEST),
        (["ep= a"], BAD_REQUEST),
        (["ep=a", "lt=0"], BAD_REQUEST),  # infinite lifetime is 1.2 only
        (["ep=a", "lwm2m=1.1", "lt=0"], BAD_REQUEST),
        (["ep=a", "lt=-5"], BAD_REQUEST),
        (["ep=a", "lt=1.5"], BAD_REQUEST),
        (["ep=a", "lt=+5"], BAD_REQUEST),
        (["ep=a", "lt=abc"], BAD_REQUEST),
        (["ep=a", "lt="], BAD_REQUEST),
        (["ep=a", "lt"], BAD_REQUEST),
        (["ep=a", "lt=4294967296"], BAD_REQUEST),
        (["ep=a", "lt=٣"], BAD_REQUEST),  # non-ASCII digit
        (["ep=a", "lwm2m=1.3"], PRECONDITION_FAILED),
        (["ep=a", "lwm2m=2.0"], PRECONDITION_FAILED),
        (["ep=a", "lwm2m=1"], BAD_REQUEST),
        (["ep=a", "lwm2m=abc"], BAD_REQUEST),
        (["ep=a", "lwm2m="], BAD_REQUEST),
        (["ep=a", "b=T"], BAD_REQUEST),  # T is 1.1+
        (["ep=a", "b=QU"], BAD_REQUEST),  # 1.0 lists exact strings
        (["ep=a", "b=SU"], BAD_REQUEST),
        (["ep=a", "b="], BAD_REQUEST),
        (["ep=a", "lwm2m=1.1", "b=UQ"], BAD_REQUEST),  # Q left b in 1.1
        (["ep=a", "lwm2m=1.1", "b=M"], BAD_REQUEST),  # M is 1.2
        (["ep=a", "lwm2m=1.1", "b=UU"], BAD_REQUEST),
        (["ep=a", "lwm2m=1.2", "b=X"], BAD_REQUEST),
        (["ep=a", "Q"], BAD_REQUEST),  # Q parameter is 1.1+
        (["ep=a", "lwm2m=1.1", "Q=1"], BAD_REQUEST),
        (["ep=a", "sms=abc"], BAD_REQUEST),
        (["ep=a", "sms=+1234567890123456"], BAD_REQUEST),
        (["ep=a", "sms"], BAD_REQUEST),
        (["ep=a", "enc=1", "enc=2"], BAD_REQUEST),  # ambiguous enclosure
        (["ep=a", ""], BAD_REQUEST),
        (["ep=a", "=x"], BAD_REQUEST),
    ],
)
def test_register_query_errors(query: list[str], code: tuple[int, int]) -> None:
    err = register_error(query)
    assert err.code == code
    assert err.message and str(err) == err.message


@pytest.mark.parametrize(
    ("payload", "cf", "code"),
    [
        (b"", 40, BAD_REQUEST),
        (b"  ", None, BAD_REQUEST),
        (b"</1/0", 40, BAD_REQUEST),
        (b"</3/0/1>", 40, BAD_REQUEST),  # resources do not belong in a Register
        (b'</lwm2m>;rt="oma.lwm2m",</3/0>', 40, BAD_REQUEST),
        (b'</>;rt="oma.lwm2m";ct=110', 40, BAD_REQUEST),  # no object at all
        (b"\xff\xfe", 40, BAD_REQUEST),
        (LINKS, 0, UNSUPPORTED_CONTENT_FORMAT),
        (LINKS, 110, UNSUPPORTED_CONTENT_FORMAT),
    ],
)
def test_register_payload_errors(payload: bytes, cf: int | None, code: tuple[int, int]) -> None:
    assert register_error(["ep=a"], payload, cf).code == code


@pytest.mark.parametrize("path", [[], ["rd", "x"], ["bs"], ["rd", ""]])
def test_register_wrong_path(path: list[str]) -> None:
    with pytest.raises(RegistrationError) as info:
        parse_register(path, ["ep=a"], LINKS, 40)
    assert info.value.code == NOT_FOUND


def test_error_repr_shows_code() -> None:
    assert (
        repr(register_error([]))
        == "RegistrationError(4.00, 'Register needs the endpoint name (ep)')"
    )


# --- Update ---------------------------------------------------------------------------


def test_update_heartbeat() -> None:
    assert parse_update(["rd", "r1"], [], b"", None, version="1.1") == UpdateRequest("r1")


def test_update_all_fields() -> None:
    req = parse_update(
        ["rd", "r1"],
        ["lt=120", "b=U", "Q", "sms=123", "enc=pen-9"],
        b"</3/0>,</4/0>",
        40,
        version="1.1",
    )
    assert req.lifetime == 120 and req.binding == "U" and req.queue_mode is True
    assert req.sms == "123" and req.extra == {"enc": "pen-9"}
    assert req.links is not None and sorted(req.links.objects) == [3, 4]


def test_update_1_0_binding_sets_queue_mode() -> None:
    assert parse_update(["rd", "r"], ["b=UQ"], b"", None, version="1.0").queue_mode is True
    assert parse_update(["rd", "r"], ["b=U"], b"", None, version="1.0").queue_mode is False
    assert parse_update(["rd", "r"], ["lt=5"], b"", None, version="1.0").queue_mode is None


def test_update_tolerates_repeated_same_version() -> None:
    assert parse_update(["rd", "r"], ["lwm2m=1.1"], b"", None, version="1.1") == UpdateRequest("r")


def test_update_ignores_content_format_without_payload() -> None:
    assert parse_update(["rd", "r"], [], b"", 0, version="1.1") == UpdateRequest("r")


def test_update_lifetime_zero_for_1_2() -> None:
    assert parse_update(["rd", "r"], ["lt=0"], b"", None, version="1.2").lifetime == 0


@pytest.mark.parametrize(
    ("query", "payload", "cf", "version", "code"),
    [
        (["ep=a"], b"", None, "1.1", BAD_REQUEST),
        (["lwm2m=1.2"], b"", None, "1.1", BAD_REQUEST),
        (["lt=0"], b"", None, "1.1", BAD_REQUEST),
        (["lt=x"], b"", None, "1.1", BAD_REQUEST),
        (["lt=1", "lt=2"], b"", None, "1.1", BAD_REQUEST),
        (["b=UQ"], b"", None, "1.1", BAD_REQUEST),
        (["b=T"], b"", None, "1.0", BAD_REQUEST),
        (["Q"], b"", None, "1.0", BAD_REQUEST),
        (["Q=0"], b"", None, "1.2", BAD_REQUEST),
        (["sms=x"], b"", None, "1.1", BAD_REQUEST),
        ([], b"</3/0/1>", 40, "1.1", BAD_REQUEST),
        ([], b"garbage", 40, "1.1", BAD_REQUEST),
        ([], b"</3/0>", 60, "1.1", UNSUPPORTED_CONTENT_FORMAT),
    ],
)
def test_update_errors(
    query: list[str], payload: bytes, cf: int | None, version: str, code: tuple[int, int]
) -> None:
    with pytest.raises(RegistrationError) as info:
        parse_update(["rd", "r"], query, payload, cf, version=version)
    assert info.value.code == code


@pytest.mark.parametrize("path", [["rd"], ["rd", "r", "x"], ["xx", "r"], ["rd", ""], []])
def test_update_and_deregister_wrong_path(path: list[str]) -> None:
    with pytest.raises(RegistrationError) as info:
        parse_update(path, [], b"", None, version="1.1")
    assert info.value.code == NOT_FOUND
    with pytest.raises(RegistrationError) as info:
        parse_deregister(path)
    assert info.value.code == NOT_FOUND


def test_update_rejects_unknown_registered_version() -> None:
    with pytest.raises(ValueError):
        parse_update(["rd", "r"], [], b"", None, version="9.9")


# --- De-register ----------------------------------------------------------------------


def test_deregister() -> None:
    assert parse_deregister(["rd", "r1"]) == DeregisterRequest("r1")


# --- properties -----------------------------------------------------------------------

_query = st.lists(
    st.one_of(
        st.text(max_size=12),
        st.sampled_from(["ep", "lt", "lwm2m", "b", "sms", "Q", "enc"]).flatmap(
            lambda name: st.text(alphabet="0123456789.UQSTNMH+-x", max_size=6).map(
                lambda value: f"{name}={value}"
            )
        ),
    ),
    max_size=8,
)


@given(_query, st.binary(max_size=64) | st.just(LINKS), st.none() | st.sampled_from([0, 40]))
def test_parsers_raise_only_registration_error(
    query: list[str], payload: bytes, cf: int | None
) -> None:
    try:
        parse_register(RD, query, payload, cf)
    except RegistrationError as err:
        assert err.code in (BAD_REQUEST, PRECONDITION_FAILED, UNSUPPORTED_CONTENT_FORMAT)
    for version in ("1.0", "1.1", "1.2"):
        try:
            parse_update(["rd", "r"], query, payload, cf, version=version)
        except RegistrationError as err:
            assert err.code in (BAD_REQUEST, UNSUPPORTED_CONTENT_FORMAT)


def test_custom_links_parser_is_used_and_its_errors_mapped() -> None:
    seen: list[bytes] = []

    def parser(payload: bytes) -> RegistrationLinks:
        seen.append(payload)
        return RegistrationLinks(objects={3: ObjectInfo(None, (0,))})

    req = parse_register(RD, ["ep=a"], LINKS, 40, links_parser=parser)
    assert seen == [LINKS] and list(req.links.objects) == [3]
    upd = parse_update(["rd", "r"], [], LINKS, 40, version="1.1", links_parser=parser)
    assert upd.links == req.links

    def failing(payload: bytes) -> RegistrationLinks:
        raise LinkFormatError("nope")

    with pytest.raises(RegistrationError) as info:
        parse_register(RD, ["ep=a"], LINKS, 40, links_parser=failing)
    assert info.value.code == BAD_REQUEST

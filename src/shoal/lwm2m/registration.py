"""Registration interface message rules (Register, Update, De-register), sans-IO.

Input is what the CoAP layer already decoded: Uri-Path segments, Uri-Query
strings, payload bytes and the Content-Format number. Output is an immutable
request value, or a `RegistrationError` carrying the CoAP response code to answer.

Response codes (Core 1.1 §6.2.1, 1.2 §6.2.1; Leshan behaves the same way):
- 4.00 Bad Request: a mandatory parameter is missing, a value is malformed, a
  parameter repeats or is not allowed for the LwM2M version, the link payload is
  missing or invalid.
- 4.12 Precondition Failed: a well-formed `lwm2m` version this server does not
  implement (Core 1.1 lists 4.12 for "the LwM2M versions of Server and Client are
  not compatible"; Leshan answers 4.12 "unsupported lwm2m version"). A version
  that is not `major.minor` at all is malformed, hence 4.00.
- 4.04 Not Found: a URI that names no registration resource. Whether the id
  exists is the server's business, and also 4.04.
- 4.15 Unsupported Content-Format: a payload that is not link format (RFC 7252
  §5.10.3); absent Content-Format is accepted, as many clients omit it.

Parameters outside the spec are not errors (the spec's "unknown parameter" 4.00
predates vendor attributes, and Leshan keeps them too): they land in `extra`,
where Shoal reads `enc=<enclosure id>` for enclosure correlation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from shoal.lwm2m.link import LinkFormatError, RegistrationLinks, parse_registration_links

CoapCode = tuple[int, int]

BAD_REQUEST: Final = (4, 0)
NOT_FOUND: Final = (4, 4)
PRECONDITION_FAILED: Final = (4, 12)
UNSUPPORTED_CONTENT_FORMAT: Final = (4, 15)

LINK_FORMAT: Final = 40
RD: Final = "rd"

SUPPORTED_VERSIONS: Final = ("1.0", "1.1", "1.2")
DEFAULT_VERSION: Final = "1.0"
DEFAULT_LIFETIME: Final = 86400
DEFAULT_BINDING: Final = "U"
MAX_ENDPOINT_BYTES: Final = 255
MAX_LIFETIME: Final = 2**32 - 1

# 1.0 (§5.3.1.1) lists the exact strings; Q means queue mode on the transport before it.
_BINDINGS_1_0: Final = frozenset({"U", "UQ", "S", "SQ", "US", "UQS"})
# 1.1 dropped Q from b (queue mode became the `Q` parameter) and added T and N;
# 1.2 added M (MQTT) and H (HTTP).
_BINDING_LETTERS: Final = {"1.1": frozenset("UTSN"), "1.2": frozenset("UMHTSN")}

_VERSION = re.compile(r"[0-9]{1,5}\.[0-9]{1,5}")
_LIFETIME = re.compile(r"[0-9]{1,10}")
_MSISDN = re.compile(r"\+?[0-9]{1,15}")

_REGISTER_PARAMS: Final = frozenset({"ep", "lt", "lwm2m", "b", "sms", "Q"})


class RegistrationError(ValueError):
    """A registration message to refuse, with the CoAP code to answer (e.g. (4, 0))."""

    def __init__(self, code: CoapCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"RegistrationError({self.code[0]}.{self.code[1]:02d}, {self.message!r})"


def _bad(message: str) -> RegistrationError:
    return RegistrationError(BAD_REQUEST, message)


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """`POST /rd?ep=...` after validation, defaults applied.

    `lifetime` 0 (only from 1.2 clients) means the registration never expires.
    `binding` is as sent; `queue_mode` comes from Q in a 1.0 binding or the 1.1+
    `Q` parameter.
    """

    endpoint: str
    lifetime: int
    version: str
    binding: str
    queue_mode: bool
    sms: str | None
    links: RegistrationLinks
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def transports(self) -> frozenset[str]:
        return frozenset(self.binding) - {"Q"}


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """`POST /rd/<id>`: None means "unchanged" for every field.

    An Update with no parameters and no payload is the usual heartbeat.
    """

    registration_id: str
    lifetime: int | None = None
    binding: str | None = None
    queue_mode: bool | None = None
    sms: str | None = None
    links: RegistrationLinks | None = None
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class DeregisterRequest:
    """`DELETE /rd/<id>`."""

    registration_id: str


def _split_query(uri_query: Sequence[str]) -> dict[str, str | None]:
    """`name=value` pairs (None for a bare name); a repeated name is ambiguous, so 4.00."""
    params: dict[str, str | None] = {}
    for query in uri_query:
        name, sep, value = query.partition("=")
        if not name:
            raise _bad(f"malformed query parameter {query!r}")
        if name in params:
            raise _bad(f"query parameter {name!r} given more than once")
        params[name] = value if sep else None
    return params


def _value(params: Mapping[str, str | None], name: str) -> str:
    value = params[name]
    if not value:
        raise _bad(f"query parameter {name!r} needs a value")
    return value


def _version(raw: str) -> str:
    if not _VERSION.fullmatch(raw):
        raise _bad(f"malformed LwM2M version {raw!r}")
    if raw not in SUPPORTED_VERSIONS:
        raise RegistrationError(
            PRECONDITION_FAILED,
            f"LwM2M version {raw} is not supported (supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    return raw


def _lifetime(raw: str, version: str) -> int:
    """Seconds, > 0; 0 is allowed from 1.2, where the Server object defines it as infinite."""
    if not _LIFETIME.fullmatch(raw) or int(raw) > MAX_LIFETIME:
        raise _bad(f"lifetime must be an integer 0..{MAX_LIFETIME}, got {raw!r}")
    lifetime = int(raw)
    if lifetime == 0 and version in ("1.0", "1.1"):
        raise _bad(f"lifetime 0 (infinite) needs LwM2M 1.2, client is {version}")
    return lifetime


def _binding(raw: str, version: str) -> str:
    if version == "1.0":
        if raw not in _BINDINGS_1_0:
            raise _bad(f"binding {raw!r} is not valid for LwM2M 1.0")
        return raw
    letters = _BINDING_LETTERS[version]
    if not raw or len(set(raw)) != len(raw) or not set(raw) <= letters:
        hint = " (queue mode is the Q parameter since 1.1)" if "Q" in raw else ""
        raise _bad(f"binding {raw!r} is not valid for LwM2M {version}{hint}")
    return raw


def _queue_flag(params: Mapping[str, str | None], version: str) -> bool:
    if "Q" not in params:
        return False
    if params["Q"] is not None:
        raise _bad("the Q parameter takes no value")
    if version == "1.0":
        raise _bad("the Q parameter is not defined in LwM2M 1.0 (use b=UQ)")
    return True


def _sms(raw: str) -> str:
    if not _MSISDN.fullmatch(raw):
        raise _bad(f"sms must be an MSISDN (up to 15 digits), got {raw!r}")
    return raw


def _endpoint(raw: str) -> str:
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_ENDPOINT_BYTES:
        raise _bad(f"endpoint name longer than {MAX_ENDPOINT_BYTES} bytes")
    if not raw.isprintable() or raw != raw.strip():
        raise _bad(f"endpoint name {raw!r} has control characters or surrounding spaces")
    return raw


def _extra(params: Mapping[str, str | None], known: frozenset[str]) -> dict[str, str]:
    """Vendor parameters; a bare name is kept with an empty value."""
    return {k: v or "" for k, v in params.items() if k not in known}


LinksParser = Callable[[bytes], RegistrationLinks]


def _links(payload: bytes, content_format: int | None, parser: LinksParser) -> RegistrationLinks:
    if content_format is not None and content_format != LINK_FORMAT:
        raise RegistrationError(
            UNSUPPORTED_CONTENT_FORMAT,
            f"object links must be link format ({LINK_FORMAT}), not {content_format}",
        )
    try:
        links = parser(payload)
    except LinkFormatError as exc:
        raise _bad(f"invalid object links: {exc}") from None
    if not links.objects:
        raise _bad("the object links name no object")
    return links


def _registration_id(uri_path: Sequence[str]) -> str:
    if len(uri_path) != 2 or uri_path[0] != RD or not uri_path[1]:
        raise RegistrationError(NOT_FOUND, f"no registration at /{'/'.join(uri_path)}")
    return uri_path[1]


def parse_register(
    uri_path: Sequence[str],
    uri_query: Sequence[str],
    payload: bytes,
    content_format: int | None,
    *,
    links_parser: LinksParser = parse_registration_links,
) -> RegisterRequest:
    """Validate a Register (`POST /rd`).

    `links_parser` lets the server pass a caching parser (fleets send identical
    payloads); it must raise `LinkFormatError` on a bad payload.
    """
    if list(uri_path) != [RD]:
        raise RegistrationError(NOT_FOUND, f"Register goes to /{RD}, not /{'/'.join(uri_path)}")
    params = _split_query(uri_query)
    if "ep" not in params:
        raise _bad("Register needs the endpoint name (ep)")
    endpoint = _endpoint(_value(params, "ep"))
    version = _version(_value(params, "lwm2m")) if "lwm2m" in params else DEFAULT_VERSION
    lifetime = _lifetime(_value(params, "lt"), version) if "lt" in params else DEFAULT_LIFETIME
    binding = _binding(_value(params, "b"), version) if "b" in params else DEFAULT_BINDING
    queue_mode = _queue_flag(params, version) or (version == "1.0" and "Q" in binding)
    sms = _sms(_value(params, "sms")) if "sms" in params else None
    if not payload.strip():
        raise _bad("Register needs the object links payload")
    links = _links(payload, content_format, links_parser)
    return RegisterRequest(
        endpoint=endpoint,
        lifetime=lifetime,
        version=version,
        binding=binding,
        queue_mode=queue_mode,
        sms=sms,
        links=links,
        extra=_extra(params, _REGISTER_PARAMS),
    )


def parse_update(
    uri_path: Sequence[str],
    uri_query: Sequence[str],
    payload: bytes,
    content_format: int | None,
    *,
    version: str,
    links_parser: LinksParser = parse_registration_links,
) -> UpdateRequest:
    """Validate an Update (`POST /rd/<id>`) from a client registered with LwM2M `version`.

    `ep` cannot change in an Update (it names the registration); `lwm2m` is
    tolerated only when it repeats the registered version. For 1.0 a new `b`
    also sets queue mode; for 1.1+ a bare `Q` turns it on and its absence leaves
    it unchanged.
    """
    registration_id = _registration_id(uri_path)
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unknown registered LwM2M version {version!r}")
    params = _split_query(uri_query)
    if "ep" in params:
        raise _bad("the endpoint name (ep) cannot be changed by an Update")
    if "lwm2m" in params and params["lwm2m"] != version:
        raise _bad(f"the LwM2M version cannot change in an Update (registered {version})")
    lifetime = _lifetime(_value(params, "lt"), version) if "lt" in params else None
    binding = _binding(_value(params, "b"), version) if "b" in params else None
    queue_mode: bool | None = None
    if version == "1.0":
        _queue_flag(params, version)  # raises if Q is present
        if binding is not None:
            queue_mode = "Q" in binding
    elif _queue_flag(params, version):
        queue_mode = True
    sms = _sms(_value(params, "sms")) if "sms" in params else None
    return UpdateRequest(
        registration_id=registration_id,
        lifetime=lifetime,
        binding=binding,
        queue_mode=queue_mode,
        sms=sms,
        links=_links(payload, content_format, links_parser) if payload.strip() else None,
        extra=_extra(params, _REGISTER_PARAMS),
    )


def parse_deregister(uri_path: Sequence[str]) -> DeregisterRequest:
    """Validate a De-register (`DELETE /rd/<id>`); query and payload carry nothing."""
    return DeregisterRequest(_registration_id(uri_path))

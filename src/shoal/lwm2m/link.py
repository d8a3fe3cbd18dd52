"""CoRE Link Format (RFC 6690) and the LwM2M link payloads built on it.

LwM2M uses link format in three places: the Register/Update payload (which objects
and instances a device has, its alternate path and content formats), Discover
responses (resources with their attributes) and Bootstrap-Discover. The generic
parser is strict about RFC 6690 grammar, lenient only about whitespace between
tokens (real clients add spaces and newlines), and runs in linear time: every
token is matched at a position with an anchored regex, nothing is re-scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shoal.lwm2m.attributes import InvalidAttributes, NotificationAttributes
from shoal.lwm2m.path import MAX_ID, InvalidPath, Path


class LinkFormatError(ValueError):
    """Text that is not valid CoRE link format, or not a valid LwM2M link payload."""


_TARGET = re.compile(r"<([^>]*)>")
# RFC 6690 link-extension: parmname [ "=" ( ptoken / quoted-string ) ].
# The quoted-string body has exactly one way to match each character, so a
# failed match backtracks linearly, never exponentially.
_PARMNAME_CHARS = r"A-Za-z0-9!#$&+\-.^_`|~"
_PTOKEN_CHARS = r"!#$%&'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~"
_PARAM = re.compile(
    rf";[ \t\r\n]*([{_PARMNAME_CHARS}]+)"
    rf"(?:[ \t\r\n]*=[ \t\r\n]*(?:\"((?:[^\"\\]|\\.)*)\"|([{_PTOKEN_CHARS}]+)))?",
    re.DOTALL,
)
_PARMNAME = re.compile(rf"[{_PARMNAME_CHARS}]+")
_PTOKEN = re.compile(rf"[{_PTOKEN_CHARS}]+")
_URI_REFERENCE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_VERSION = re.compile(r"[0-9]{1,5}\.[0-9]{1,5}")
# An object or instance path, the fast path of registration parsing (ids checked after).
_OBJECT_OR_INSTANCE = re.compile(r"/(0|[1-9][0-9]{0,4})(?:/(0|[1-9][0-9]{0,4}))?")

# Parameters that RFC 6690 / RFC 8288 write as quoted strings, and that some LwM2M
# clients match byte for byte (`rt="oma.lwm2m"`), so we always quote them.
_ALWAYS_QUOTED = frozenset({"rt", "if", "anchor", "title", "rev"})

RT_LWM2M = "oma.lwm2m"


@dataclass(frozen=True, slots=True)
class Link:
    """One link-value: `<target>` and its parameters (None for a valueless one like `;obs`).

    Parameter values are kept as text without their quotes: `ct=110` and `ct="110"`
    are the same link. Names are case-sensitive, as LwM2M attribute names are.
    """

    target: str
    params: Mapping[str, str | None] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _URI_REFERENCE.fullmatch(self.target):
            raise LinkFormatError(f"link target is not a URI reference: {self.target!r}")
        params = dict(self.params)
        for name, value in params.items():
            if not isinstance(name, str) or not _PARMNAME.fullmatch(name):
                raise LinkFormatError(f"invalid link parameter name {name!r}")
            if value is not None and not isinstance(value, str):
                raise LinkFormatError(f"link parameter {name!r} value must be str or None")
        object.__setattr__(self, "params", params)

    def __str__(self) -> str:
        return format_links((self,))


def _decode(text: str | bytes) -> str:
    if isinstance(text, str):
        return text
    try:
        return bytes(text).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LinkFormatError(f"link format payload is not UTF-8: {exc}") from None


def _skip_ws(s: str, pos: int, n: int) -> int:
    while pos < n and s[pos] in " \t\r\n":
        pos += 1
    return pos


def parse_links(text: str | bytes) -> list[Link]:
    """Parse a link-format document; empty (or blank) text is an empty list."""
    s = _decode(text)
    n = len(s)
    links: list[Link] = []
    pos = _skip_ws(s, 0, n)
    if pos == n:
        return links
    target_match = _TARGET.match
    param_match = _PARAM.match
    while True:
        m = target_match(s, pos)
        if m is None:
            raise LinkFormatError(f"expected '<' starting a link at offset {pos}")
        target = m.group(1)
        if not _URI_REFERENCE.fullmatch(target):
            raise LinkFormatError(f"link target is not a URI reference at offset {pos}")
        pos = m.end()
        params: dict[str, str | None] = {}
        while True:
            pos = _skip_ws(s, pos, n)
            p = param_match(s, pos)
            if p is None:
                break
            name, quoted, token = p.group(1, 2, 3)
            if name in params:
                raise LinkFormatError(f"duplicate parameter {name!r} at offset {pos}")
            if quoted is not None:
                params[name] = _UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted
            else:
                params[name] = token
            pos = p.end()
        link = Link.__new__(Link)
        object.__setattr__(link, "target", target)
        object.__setattr__(link, "params", params)
        links.append(link)
        if pos == n:
            return links
        if s[pos] != ",":
            raise LinkFormatError(f"unexpected {s[pos]!r} at offset {pos}")
        pos = _skip_ws(s, pos + 1, n)


def _format_value(name: str, value: str) -> str:
    if name not in _ALWAYS_QUOTED and _PTOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_links(links: Iterable[Link]) -> str:
    """Serialise links so that `parse_links` gives back equal links."""
    out: list[str] = []
    for link in links:
        parts = [f"<{link.target}>"]
        for name, value in link.params.items():
            parts.append(f";{name}" if value is None else f";{name}={_format_value(name, value)}")
        out.append("".join(parts))
    return ",".join(out)


# --- LwM2M registration payloads -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """An object the device supports: its version (None: not stated) and its instances."""

    version: str | None = None
    instances: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RegistrationLinks:
    """What a Register/Update payload says.

    `content_formats` is empty when the device did not state any; the server then
    assumes the formats mandatory for the device's LwM2M version. `version` of an
    object is None when not stated; the default depends on the LwM2M version and
    the object (core objects differ), which is the object model's business.
    """

    alternate_path: str = "/"
    content_formats: tuple[int, ...] = ()
    objects: Mapping[int, ObjectInfo] = field(default_factory=dict, hash=False)

    def uri_path_prefix(self) -> list[str]:
        """Uri-Path segments to put before an object path when sending to this device."""
        return [] if self.alternate_path == "/" else self.alternate_path[1:].split("/")


def _is_lwm2m_root(link: Link) -> bool:
    rt = link.params.get("rt")
    return rt is not None and RT_LWM2M in rt.split()


def _alternate_path(target: str) -> str:
    """Validate the root link's target: an absolute path without query or fragment."""
    if not target.startswith("/") or "?" in target or "#" in target:
        raise LinkFormatError(f"invalid LwM2M root link target {target!r}")
    path = target.rstrip("/") or "/"
    if path != "/" and "" in path[1:].split("/"):
        raise LinkFormatError(f"invalid LwM2M root link target {target!r}")
    return path


def _content_formats(value: str | None) -> tuple[int, ...]:
    """`ct=110` (1.0/1.1) or `ct="60 110 112 11543"` (1.2)."""
    if value is None:
        raise LinkFormatError("ct parameter without a value")
    formats: list[int] = []
    for item in value.split():
        if not item.isascii() or not item.isdigit() or int(item) > 65535:
            raise LinkFormatError(f"invalid content format {item!r} in ct")
        cf = int(item)
        if cf not in formats:
            formats.append(cf)
    if not formats:
        raise LinkFormatError("empty ct parameter")
    return tuple(formats)


def _lwm2m_path(target: str, alternate_path: str) -> Path:
    """The LwM2M path a link target names, below the alternate path."""
    if alternate_path == "/":
        rel = target
    elif target == alternate_path:
        return Path()
    elif target.startswith(alternate_path) and target[len(alternate_path)] == "/":
        rel = target[len(alternate_path) :]
    else:
        raise LinkFormatError(f"link {target!r} is outside the alternate path {alternate_path!r}")
    try:
        path = Path.parse(rel)
    except InvalidPath:
        raise LinkFormatError(f"link {target!r} is not an LwM2M path") from None
    if str(path) != rel:  # Path.parse tolerates a missing or trailing slash
        raise LinkFormatError(f"link {target!r} is not an LwM2M path")
    return path


def _object_version(link: Link) -> str | None:
    if "ver" not in link.params:
        return None
    ver = link.params["ver"]
    if ver is None or not _VERSION.fullmatch(ver):
        raise LinkFormatError(f"invalid object version {ver!r} on {link.target!r}")
    return ver


def parse_registration_links(payload: str | bytes) -> RegistrationLinks:
    """Parse the object links of a Register or Update.

    The root link is the one with `rt="oma.lwm2m"` (its target is the alternate
    path), else a plain `</>`; there is at most one with the rt. Every other link
    must name an object or object instance below the alternate path. `ver` may sit
    on the object link or on an instance link (clients do both, Leshan accepts
    both); stated versions of one object must agree. Unknown parameters are ignored.
    """
    links = parse_links(payload)
    root: Link | None = None
    for link in links:
        if _is_lwm2m_root(link):
            if root is not None:
                raise LinkFormatError('more than one link with rt="oma.lwm2m"')
            root = link
    if root is None:
        root = next((link for link in links if link.target == "/"), None)
    alternate_path = "/" if root is None else _alternate_path(root.target)
    content_formats: tuple[int, ...] = ()
    if root is not None and "ct" in root.params:
        content_formats = _content_formats(root.params["ct"])

    prefix_len = 0 if alternate_path == "/" else len(alternate_path)
    object_link = _OBJECT_OR_INSTANCE.fullmatch
    versions: dict[int, str | None] = {}
    instances: dict[int, set[int]] = {}
    for link in links:
        if link is root:
            continue
        target = link.target
        m = None
        if target.startswith(alternate_path) or alternate_path == "/":
            m = object_link(target, prefix_len)
        if m is None:
            _lwm2m_path(target, alternate_path)  # raises the precise error
            raise LinkFormatError(f"link {target!r} is not an object or object instance")
        oid = int(m.group(1))
        iid = m.group(2)
        if oid >= MAX_ID or (iid is not None and int(iid) >= MAX_ID):
            raise LinkFormatError(f"link {target!r} has an id out of range")
        ver = _object_version(link) if "ver" in link.params else None
        known = versions.get(oid)
        if known is None:
            versions[oid] = ver
        elif ver is not None and known != ver:
            raise LinkFormatError(f"object {oid} has two versions: {known} and {ver}")
        ids = instances.get(oid)
        if ids is None:
            ids = instances[oid] = set()
        if iid is not None:
            ids.add(int(iid))
    objects = {
        oid: ObjectInfo(versions[oid], tuple(sorted(instances[oid]))) for oid in sorted(versions)
    }
    return RegistrationLinks(alternate_path, content_formats, objects)


def format_registration_links(links: RegistrationLinks) -> str:
    """The Register payload a device would send; used by the simulator and tests.

    A stated version goes on the object link (`</3303>;ver=1.1`), followed by the
    instance links; an object without instances gets an object link alone.
    """
    root: dict[str, str | None] = {"rt": RT_LWM2M}
    if links.content_formats:
        root["ct"] = " ".join(str(cf) for cf in links.content_formats)
    out = [Link(links.alternate_path, root)]
    prefix = "" if links.alternate_path == "/" else links.alternate_path
    for oid, info in links.objects.items():
        if info.version is not None or not info.instances:
            out.append(
                Link(f"{prefix}/{oid}", {} if info.version is None else {"ver": info.version})
            )
        out.extend(Link(f"{prefix}/{oid}/{iid}") for iid in info.instances)
    return format_links(out)


# --- Discover responses ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveredLink:
    """One link of a Discover (or Bootstrap-Discover) response.

    `attributes` are the notification attributes attached at this level; `params`
    keeps every parameter as sent (ssid, uri, lwm2m, vendor ones...).
    """

    path: Path
    dim: int | None = None
    version: str | None = None
    attributes: NotificationAttributes = field(default_factory=NotificationAttributes)
    params: Mapping[str, str | None] = field(default_factory=dict, hash=False)


def parse_discover_links(payload: str | bytes, alternate_path: str = "/") -> list[DiscoveredLink]:
    """Parse a Discover response, e.g. `</3/0>,</3/0/7>;dim=8;pmin=10`.

    Targets carry the device's alternate path, as in its registration.
    """
    alt = _alternate_path(alternate_path)
    result: list[DiscoveredLink] = []
    for link in parse_links(payload):
        path = _lwm2m_path(link.target, alt)
        dim: int | None = None
        if "dim" in link.params:
            raw = link.params["dim"]
            if raw is None or not raw.isascii() or not raw.isdigit() or int(raw) > 255:
                raise LinkFormatError(f"invalid dim {raw!r} on {link.target!r}")
            dim = int(raw)
        try:
            attributes = NotificationAttributes.from_link_params(link.params)
        except InvalidAttributes as exc:
            raise LinkFormatError(f"invalid attributes on {link.target!r}: {exc}") from None
        result.append(DiscoveredLink(path, dim, _object_version(link), attributes, link.params))
    return result

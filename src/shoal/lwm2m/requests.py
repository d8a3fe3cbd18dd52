"""Device-management requests and their responses as immutable values.

One class per LwM2M operation (as Leshan's `core.request`): each knows the CoAP
request it becomes (`to_coap`) given the target's Uri-Path prefix (alternate
path), the content format chosen for the device and the object model. The
server sends the message; `Response.from_coap` decodes what comes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from shoal.coap import options as o
from shoal.coap.codes import Code, code_str
from shoal.coap.message import Message
from shoal.lwm2m import content
from shoal.lwm2m.attributes import NotificationAttributes
from shoal.lwm2m.link import DiscoveredLink, LinkFormatError, parse_discover_links
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path

TEXT = 0
LINK_FORMAT = 40
OPAQUE = 42
SENML_JSON = 110
SENML_CBOR = 112
TLV = 11542
OMA_JSON = 11543
LWM2M_CBOR = 11544

# Formats that can carry several resources with their paths (composite ops need these).
MULTI_FORMATS = frozenset({SENML_JSON, SENML_CBOR, TLV, OMA_JSON, LWM2M_CBOR})
COMPOSITE_FORMATS = frozenset({SENML_JSON, SENML_CBOR, LWM2M_CBOR})


class RequestBuildError(ValueError):
    """The request cannot be expressed (e.g. Execute on an object path)."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a request needs to know about the device it goes to."""

    prefix: tuple[str, ...] = ()
    content_format: int = TLV
    model: content.ModelLookup | None = None


def _message(code: int, target: Target, path: Path) -> Message:
    msg = Message(code=code)
    for seg in target.prefix:
        msg.add(o.URI_PATH, seg)
    for seg in path.segments():
        msg.add(o.URI_PATH, seg)
    return msg


def _fmt(fmt: int | None, target: Target) -> int:
    """The asked format, else the device's; 0 (text/plain) is a real choice."""
    return target.content_format if fmt is None else fmt


def _model(target: Target) -> content.ModelLookup:
    return target.model if target.model is not None else content.EMPTY_MODEL


@dataclass(frozen=True, slots=True)
class Read:
    path: Path
    content_format: int | None = None
    operation: ClassVar[str] = "read"

    def to_coap(self, target: Target) -> Message:
        if self.path.is_root():
            raise RequestBuildError("Read needs at least an object id")
        msg = _message(Code.GET, target, self.path)
        msg.add(o.ACCEPT, _fmt(self.content_format, target))
        return msg


@dataclass(frozen=True, slots=True)
class Discover:
    path: Path
    operation: ClassVar[str] = "discover"

    def to_coap(self, target: Target) -> Message:
        if self.path.is_root() or self.path.is_resource_instance():
            raise RequestBuildError("Discover targets an object, instance or resource")
        return _message(Code.GET, target, self.path).add(o.ACCEPT, LINK_FORMAT)


@dataclass(frozen=True, slots=True)
class Write:
    """Replace (PUT) or partial update (POST) of an instance or resource."""

    path: Path
    values: dict[Path, Value]
    partial: bool = False
    content_format: int | None = None
    operation: ClassVar[str] = "write"

    def to_coap(self, target: Target) -> Message:
        if len(self.path) < 2:
            raise RequestBuildError("Write targets an object instance or a resource")
        fmt = _fmt(self.content_format, target)
        if fmt not in MULTI_FORMATS and not (self.path.is_resource() and len(self.values) == 1):
            fmt = SENML_JSON if fmt != TLV else TLV
        msg = _message(Code.POST if self.partial else Code.PUT, target, self.path)
        msg.add(o.CONTENT_FORMAT, fmt)
        msg.payload = content.encode(fmt, self.values, self.path, _model(target))
        return msg


@dataclass(frozen=True, slots=True)
class Execute:
    path: Path
    arguments: str = ""
    operation: ClassVar[str] = "execute"

    def to_coap(self, target: Target) -> Message:
        if not self.path.is_resource():
            raise RequestBuildError("Execute targets a resource")
        msg = _message(Code.POST, target, self.path)
        if self.arguments:
            msg.add(o.CONTENT_FORMAT, TEXT)
            msg.payload = self.arguments.encode()
        return msg


@dataclass(frozen=True, slots=True)
class Create:
    """Create an instance of `object_id`, with the values under /o/i/... paths."""

    object_id: int
    values: dict[Path, Value]
    instance_id: int | None = None
    content_format: int | None = None
    operation: ClassVar[str] = "create"

    def to_coap(self, target: Target) -> Message:
        fmt = _fmt(self.content_format, target)
        if fmt not in MULTI_FORMATS:
            fmt = TLV
        msg = _message(Code.POST, target, Path(self.object_id))
        msg.add(o.CONTENT_FORMAT, fmt)
        msg.payload = content.encode(fmt, self.values, Path(self.object_id), _model(target))
        return msg


@dataclass(frozen=True, slots=True)
class Delete:
    path: Path
    operation: ClassVar[str] = "delete"

    def to_coap(self, target: Target) -> Message:
        if not self.path.is_instance() and not self.path.is_root():
            raise RequestBuildError("Delete targets an object instance")
        return _message(Code.DELETE, target, self.path)


@dataclass(frozen=True, slots=True)
class WriteAttributes:
    path: Path
    attributes: NotificationAttributes
    operation: ClassVar[str] = "write-attributes"

    def to_coap(self, target: Target) -> Message:
        if self.path.is_root():
            raise RequestBuildError("Write-Attributes needs at least an object id")
        msg = _message(Code.PUT, target, self.path)
        for q in self.attributes.to_query():
            msg.add(o.URI_QUERY, q)
        return msg


@dataclass(frozen=True, slots=True)
class Observe:
    path: Path
    content_format: int | None = None
    operation: ClassVar[str] = "observe"

    def to_coap(self, target: Target) -> Message:
        msg = Read(self.path, self.content_format).to_coap(target)
        msg.add(o.OBSERVE, 0)
        return msg


def _composite_format(fmt: int | None, target: Target) -> int:
    fmt = _fmt(fmt, target)
    return fmt if fmt in COMPOSITE_FORMATS else SENML_JSON


@dataclass(frozen=True, slots=True)
class ReadComposite:
    paths: tuple[Path, ...]
    content_format: int | None = None
    observe: bool = False
    operation: ClassVar[str] = "read-composite"

    def to_coap(self, target: Target) -> Message:
        fmt = _composite_format(self.content_format, target)
        msg = _message(Code.FETCH, target, Path())
        req_fmt = fmt if fmt != LWM2M_CBOR else SENML_CBOR
        msg.add(o.CONTENT_FORMAT, req_fmt)
        msg.add(o.ACCEPT, fmt)
        if self.observe:
            msg.add(o.OBSERVE, 0)
        msg.payload = content.encode_paths(req_fmt, self.paths)
        return msg


@dataclass(frozen=True, slots=True)
class WriteComposite:
    values: dict[Path, Value]
    content_format: int | None = None
    operation: ClassVar[str] = "write-composite"

    def to_coap(self, target: Target) -> Message:
        fmt = _composite_format(self.content_format, target)
        msg = _message(Code.IPATCH, target, Path())
        msg.add(o.CONTENT_FORMAT, fmt)
        msg.payload = content.encode(fmt, self.values, Path(), _model(target))
        return msg


Request = (
    Read
    | Discover
    | Write
    | Execute
    | Create
    | Delete
    | WriteAttributes
    | Observe
    | ReadComposite
    | WriteComposite
)


@dataclass(frozen=True, slots=True)
class Response:
    """What the device answered, decoded where it carried values or links."""

    code: int
    content_format: int | None = None
    payload: bytes = b""
    values: dict[Path, Value] = field(default_factory=dict)
    links: list[DiscoveredLink] = field(default_factory=list)
    location: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.code >> 5 == 2

    @property
    def code_text(self) -> str:
        return code_str(self.code)

    @classmethod
    def from_coap(cls, request: Request, message: Message, target: Target) -> Response:
        """Decode a device's answer; undecodable content is an error, not an exception."""
        fmt = message.content_format
        code = message.code
        if code >> 5 != 2:
            text = message.payload.decode("utf-8", "replace") if message.payload else None
            return cls(code, fmt, message.payload, error=text or code_str(code))
        location = None
        if message.location_path:
            location = "/" + "/".join(message.location_path[len(target.prefix) :])
        if not message.payload:
            return cls(code, fmt, b"", location=location)
        try:
            if isinstance(request, Discover) or fmt == LINK_FORMAT:
                alt = "/" + "/".join(target.prefix) if target.prefix else "/"
                links = parse_discover_links(message.payload, alt)
                return cls(code, fmt, message.payload, links=links, location=location)
            if fmt is None:
                fmt = TEXT if isinstance(request, Read) and request.path.is_resource() else TLV
            root = request.path if isinstance(request, (Read, Observe)) else Path()
            values = content.decode(fmt, message.payload, root, _model(target))
        except (content.CodecError, LinkFormatError) as exc:
            return cls(Code.BAD_GATEWAY, fmt, message.payload, error=f"undecodable answer: {exc}")
        return cls(code, fmt, message.payload, values=values, location=location)

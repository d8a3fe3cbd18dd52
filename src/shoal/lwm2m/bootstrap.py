"""Bootstrap interface message rules (LwM2M Core 1.1/1.2 §5.2, §6.1), sans-IO.

The client asks with `POST /bs?ep=<name>[&pct=<content format>]`; the server
answers 2.04 and then, as the CoAP client, provisions it:

1. Bootstrap-Delete `/0` and `/1` (the client keeps its Bootstrap-Server
   account: Delete of /0 never removes it);
2. Bootstrap-Discover `/0`, to learn which Security instances the client kept
   (its bootstrap accounts), so the new accounts take other instance ids;
3. Bootstrap-Write (PUT) of the Security (0) and Server (1) instances, the
   Access Control (2) instances, and any other resource (the enclosure id);
4. Bootstrap-Finish `POST /bs`; 2.04 means the client accepted its configuration
   and will register with the server it was given.

This module only builds the messages and reads the answers: the server in
`shoal.server.bootstrap` sends them. Security object resources (Core 1.1 §E.1):
0 LwM2M Server URI, 1 Bootstrap-Server, 2 Security Mode (0 PSK, 1 RPK,
2 Certificate, 3 NoSec, 4 Certificate with EST), 3 Public Key or Identity,
4 Server Public Key, 5 Secret Key, 10 Short Server ID. Server object: 0 Short
Server ID, 1 Lifetime, 6 Notification Storing, 7 Binding. Access Control
object: 0 Object ID, 1 Object Instance ID, 2 ACL (multiple: Short Server ID ->
rights), 3 Access Control Owner.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from shoal.coap import options as o
from shoal.coap.codes import Code
from shoal.coap.message import Message
from shoal.lwm2m import requests as rq
from shoal.lwm2m.link import LinkFormatError, parse_discover_links
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path
from shoal.lwm2m.registration import MAX_ENDPOINT_BYTES, RegistrationError

BS: Final = "bs"
SECURITY: Final = 0
SERVER: Final = 1
ACCESS_CONTROL: Final = 2
OBJECT_LEVEL: Final = 65535  # Access Control "object instance id" for the object itself

# rights bits of an ACL entry
READ: Final = 1
WRITE: Final = 2
EXECUTE: Final = 4
DELETE: Final = 8
CREATE: Final = 16


class SecurityModeCode(enum.IntEnum):
    """Security object resource 2."""

    PSK = 0
    RPK = 1
    CERTIFICATE = 2
    NOSEC = 3
    CERTIFICATE_EST = 4


class BootstrapError(RegistrationError):
    """A Bootstrap-Request to refuse, with the CoAP code to answer."""


@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    """`POST /bs?ep=...`: the endpoint and, from 1.1 clients, the preferred format."""

    endpoint: str
    preferred_content_format: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)


def parse_bootstrap_request(path: Sequence[str], queries: Sequence[str]) -> BootstrapRequest:
    """Validate `POST /bs?ep=&pct=`; BootstrapError (4.00 / 4.04) when malformed."""
    if list(path) != [BS]:
        raise BootstrapError((4, 4), "not a bootstrap resource")
    params: dict[str, str] = {}
    for q in queries:
        name, sep, value = q.partition("=")
        if name in params and name in ("ep", "pct"):
            raise BootstrapError((4, 0), f"parameter {name} repeats")
        params[name] = value if sep else ""
    endpoint = params.pop("ep", "")
    if not endpoint:
        raise BootstrapError((4, 0), "missing endpoint name (ep)")
    if len(endpoint.encode()) > MAX_ENDPOINT_BYTES:
        raise BootstrapError((4, 0), "endpoint name too long")
    pct: int | None = None
    raw_pct = params.pop("pct", None)
    if raw_pct is not None:
        if not raw_pct.isdigit() or int(raw_pct) > 65535:
            raise BootstrapError((4, 0), "pct must be a content format number")
        pct = int(raw_pct)
    return BootstrapRequest(endpoint, pct, params)


def write_format(request: BootstrapRequest) -> int:
    """The content format of the Bootstrap-Writes: the client's `pct` when it can
    carry a whole instance, else TLV (every 1.0 and 1.1 client reads it)."""
    pct = request.preferred_content_format
    return pct if pct in rq.MULTI_FORMATS else rq.TLV


# -- what gets written ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecurityAccount:
    """One Security (object 0) instance."""

    server_uri: str
    mode: SecurityModeCode
    public_key_or_identity: bytes = b""
    server_public_key: bytes = b""
    secret_key: bytes = field(default=b"", repr=False)
    short_server_id: int | None = None
    bootstrap_server: bool = False

    def values(self, instance: int) -> dict[Path, Value]:
        p = Path(SECURITY, instance)
        out: dict[Path, Value] = {
            p.child(0): self.server_uri,
            p.child(1): self.bootstrap_server,
            p.child(2): int(self.mode),
            p.child(3): self.public_key_or_identity,
            p.child(4): self.server_public_key,
            p.child(5): self.secret_key,
        }
        if self.short_server_id is not None:
            out[p.child(10)] = self.short_server_id
        return out


@dataclass(frozen=True, slots=True)
class ServerAccount:
    """One Server (object 1) instance."""

    short_server_id: int
    lifetime: int
    binding: str = "U"
    notification_storing: bool = True
    default_min_period: int | None = None
    default_max_period: int | None = None

    def values(self, instance: int) -> dict[Path, Value]:
        p = Path(SERVER, instance)
        out: dict[Path, Value] = {
            p.child(0): self.short_server_id,
            p.child(1): self.lifetime,
            p.child(6): self.notification_storing,
            p.child(7): self.binding,
        }
        if self.default_min_period is not None:
            out[p.child(2)] = self.default_min_period
        if self.default_max_period is not None:
            out[p.child(3)] = self.default_max_period
        return out


@dataclass(frozen=True, slots=True)
class AccessControl:
    """One Access Control (object 2) instance: who may do what on one object instance.

    `acl` maps a Short Server ID (0: any server) to the rights bits (1 Read,
    2 Write, 4 Execute, 8 Delete, 16 Create); `owner` is the Short Server ID that
    may change this instance.
    """

    instance_id: int
    object_id: int
    object_instance_id: int
    acl: Mapping[int, int]
    owner: int

    def values(self) -> dict[Path, Value]:
        p = Path(ACCESS_CONTROL, self.instance_id)
        out: dict[Path, Value] = {p.child(0): self.object_id, p.child(1): self.object_instance_id}
        for ssid, rights in sorted(self.acl.items()):
            out[Path(ACCESS_CONTROL, self.instance_id, 2, ssid)] = rights
        out[p.child(3)] = self.owner
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "object_id": self.object_id,
            "object_instance_id": self.object_instance_id,
            "acl": {str(k): v for k, v in sorted(self.acl.items())},
            "owner": self.owner,
        }


def access_control_from_values(values: Mapping[Path, Value]) -> list[AccessControl]:
    """Access Control instances from a Read of /2 (what a device holds)."""
    by_instance: dict[int, dict[Path, Value]] = {}
    for path, value in values.items():
        if len(path) >= 3 and path[0] == ACCESS_CONTROL:
            by_instance.setdefault(path[1], {})[path] = value
    out: list[AccessControl] = []
    for iid, vals in sorted(by_instance.items()):
        acl = {
            p[3]: int(v)
            for p, v in vals.items()
            if len(p) == 4 and p[2] == 2 and isinstance(v, int)
        }
        out.append(
            AccessControl(
                iid,
                _int(vals.get(Path(ACCESS_CONTROL, iid, 0))),
                _int(vals.get(Path(ACCESS_CONTROL, iid, 1))),
                acl,
                _int(vals.get(Path(ACCESS_CONTROL, iid, 3))),
            )
        )
    return out


def _int(value: Value | None) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# -- the server's requests ----------------------------------------------------------------


def _message(code: int, path: Path) -> Message:
    msg = Message(code=code)
    for seg in path.segments():
        msg.add(o.URI_PATH, seg)
    return msg


@dataclass(frozen=True, slots=True)
class BootstrapDelete:
    """Delete of `/`, an object or an instance (the bootstrap account survives)."""

    path: Path
    operation: ClassVar[str] = "bootstrap-delete"

    def to_coap(self, target: rq.Target | None = None) -> Message:
        if len(self.path) > 2:
            raise rq.RequestBuildError("Bootstrap-Delete targets /, an object or an instance")
        return _message(Code.DELETE, self.path)


@dataclass(frozen=True, slots=True)
class BootstrapDiscover:
    path: Path = field(default_factory=Path)
    operation: ClassVar[str] = "bootstrap-discover"

    def to_coap(self, target: rq.Target | None = None) -> Message:
        if len(self.path) > 1:
            raise rq.RequestBuildError("Bootstrap-Discover targets / or an object")
        return _message(Code.GET, self.path).add(o.ACCEPT, rq.LINK_FORMAT)


@dataclass(frozen=True, slots=True)
class BootstrapFinish:
    operation: ClassVar[str] = "bootstrap-finish"

    def to_coap(self, target: rq.Target | None = None) -> Message:
        return Message(code=Code.POST).add(o.URI_PATH, BS)


def bootstrap_write(path: Path, values: Mapping[Path, Value]) -> rq.Write:
    """Bootstrap-Write is a Write-replace (PUT) of an instance or a resource."""
    return rq.Write(path, dict(values), partial=False)


_LWM2M_VERSION = re.compile(r'^\s*lwm2m="?[0-9.]+"?\s*,?')


def discovered_instances(payload: bytes, object_id: int = SECURITY) -> set[int]:
    """Instance ids of `object_id` a Bootstrap-Discover answer lists.

    The 1.1 answer starts with `lwm2m="1.1"`, which is not a link; it is dropped.
    """
    text = payload.decode("utf-8", "replace")
    text = _LWM2M_VERSION.sub("", text, count=1)
    if not text.strip():
        return set()
    try:
        links = parse_discover_links(text)
    except LinkFormatError:
        return set()
    return {link.path[1] for link in links if len(link.path) >= 2 and link.path[0] == object_id}


def free_instances(taken: Iterable[int], count: int, start: int = 0) -> list[int]:
    """`count` instance ids not in `taken`, lowest first."""
    used = set(taken)
    out: list[int] = []
    i = start
    while len(out) < count:
        if i not in used:
            out.append(i)
        i += 1
    return out

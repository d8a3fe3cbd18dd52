"""A device's registration as the server holds it.

Kept small (`__slots__`, shared immutable object links) because a node holds
hundreds of thousands of these: identical link payloads parse to one shared
`RegistrationLinks` value.
"""

from __future__ import annotations

import os
from base64 import urlsafe_b64encode
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

from shoal.lwm2m.link import RegistrationLinks, parse_registration_links

if TYPE_CHECKING:
    from shoal.coap.endpoint import CoapEndpoint

Addr = Hashable


class Registration:
    """One registered LwM2M client."""

    __slots__ = (
        "address",
        "binding",
        "endpoint",
        "expires_at",
        "extra",
        "id",
        "identity",
        "lifetime",
        "links",
        "queue_mode",
        "registered_at",
        "sms",
        "transport",
        "updated_at",
        "version",
    )

    def __init__(
        self,
        id: str,
        endpoint: str,
        address: Addr,
        lifetime: int,
        version: str,
        binding: str,
        queue_mode: bool,
        links: RegistrationLinks,
        now: float,
        wall: float,
        sms: str | None = None,
        extra: Mapping[str, str] | None = None,
        identity: str | None = None,
        transport: CoapEndpoint | None = None,
    ) -> None:
        self.id = id
        self.endpoint = endpoint
        self.address = address
        self.lifetime = lifetime
        self.version = version
        self.binding = binding
        self.queue_mode = queue_mode
        self.links = links
        self.sms = sms
        self.extra: Mapping[str, str] | None = extra or None
        self.identity = identity  # security identity (PSK id / cert CN) it registered with
        # the socket it registered through (None: the server's plain CoAP endpoint);
        # the server's requests go back through it, inside the device's DTLS session
        self.transport = transport
        self.registered_at = wall
        self.updated_at = wall
        self.expires_at = expiry(now, lifetime)

    @property
    def objects(self) -> Mapping[int, object]:
        return self.links.objects

    def supports(self, object_id: int) -> bool:
        return object_id in self.links.objects

    def object_version(self, object_id: int) -> str | None:
        info = self.links.objects.get(object_id)
        return None if info is None else info.version

    def uri_prefix(self) -> list[str]:
        return self.links.uri_path_prefix()

    def __repr__(self) -> str:
        return f"<Registration {self.endpoint} id={self.id} at {self.address!r} lt={self.lifetime}>"


NEVER = float("inf")


def expiry(now: float, lifetime: int) -> float:
    """Lifetime 0 means 'never expires' (LwM2M 1.2 Server object, resource 1)."""
    return NEVER if lifetime == 0 else now + lifetime


def new_registration_id() -> str:
    """Short, unguessable: the id is a capability for Update and De-register.

    `secrets.token_urlsafe(9)` spelled out: the same 12 URL-safe characters,
    a third cheaper on the Register path.
    """
    return urlsafe_b64encode(os.urandom(9)).decode()


class LinkCache:
    """Parses registration payloads once; equal payloads share one value."""

    def __init__(self, size: int = 4096) -> None:
        self._cache: OrderedDict[bytes, RegistrationLinks] = OrderedDict()
        self._size = size

    def parse(self, payload: bytes) -> RegistrationLinks:
        links = self._cache.get(payload)
        if links is not None:
            self._cache.move_to_end(payload)
            return links
        links = parse_registration_links(payload)
        self._cache[payload] = links
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return links

"""Who is asking: the peer of a registration-interface request, and the hook that
decides whether it may.

The server knows the socket a request came through (plain CoAP or CoAPS) and, for
CoAPS, the DTLS identity of the session (PSK identity, or certificate CN and
fingerprint). It hands both to a `RegistrationAuthorizer` before it changes
anything; the authoriser answers with the identity to remember on the
registration, or raises `RegistrationError` with the CoAP code to answer (4.03,
4.29). `shoal.security.authorizer.SecurityAuthorizer` is the implementation that
consults the security store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from shoal.coap.engine import Addr
from shoal.lwm2m.registration import RegisterRequest, RegistrationError
from shoal.server.registration import Registration

if TYPE_CHECKING:
    from shoal.coap.endpoint import CoapEndpoint
    from shoal.dtls.server import PeerIdentity


class Peer:
    """The source of one request: address, socket, and DTLS identity (None: NoSec)."""

    __slots__ = ("address", "identity", "transport")

    def __init__(
        self, address: Addr, transport: CoapEndpoint | None, identity: PeerIdentity | None
    ) -> None:
        self.address = address
        self.transport = transport
        self.identity = identity

    @property
    def secure(self) -> bool:
        return self.identity is not None

    def __repr__(self) -> str:
        return f"<Peer {self.address!r} {self.identity or 'nosec'}>"


class RegistrationAuthorizer(Protocol):
    """Decides on Register, Update, De-register and Send (and Bootstrap-Request)."""

    def admit(self, address: Addr) -> None:
        """Before any work: raise RegistrationError((4, 29), ...) for a throttled source."""
        ...

    def authorize_register(self, request: RegisterRequest, peer: Peer) -> str | None:
        """The identity to keep on the registration; raise RegistrationError to refuse."""
        ...

    def authorize(self, operation: str, registration: Registration, peer: Peer) -> None:
        """Update, De-register or Send ("update", "deregister", "send") on a registration."""
        ...

    def refused(self, address: Addr, error: RegistrationError) -> None:
        """Every refusal the server answers (counted, logged within limits)."""
        ...

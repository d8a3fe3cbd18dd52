"""The security store, the registration authoriser and the DTLS sessions, wired to
one LwM2M server.

- `dtls_config()` gives the CoAPS endpoint a `psk_lookup` answered from the
  credential cache;
- the authoriser becomes the server's `authorizer`;
- DTLS sessions are tracked by identity, so that when a credential is revoked (or
  changed so that an identity no longer fits it) the sessions it opened are closed
  at once and, for server credentials, the device's registration ends. A rotated
  PSK leaves the open session alone: the device cannot know its new key before it
  is told, and the old key opens no new session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from shoal.coap.engine import Addr
from shoal.dtls.endpoint import DtlsCoapEndpoint
from shoal.dtls.server import DtlsConfig, PeerIdentity
from shoal.security.authorizer import AuthorizationConfig, SecurityAuthorizer
from shoal.security.store import (
    Credential,
    CredentialChange,
    Purpose,
    SecurityMode,
    SecurityStore,
)
from shoal.server.server import Lwm2mServer

log = logging.getLogger(__name__)


def identity_fits(identity: PeerIdentity, cred: Credential) -> bool:
    """Would this credential let this DTLS identity in now?"""
    if not cred.active:
        return False
    if identity.psk_identity is not None:
        return cred.psk_identity == identity.psk_identity and cred.allows(SecurityMode.PSK)
    if not cred.allows(SecurityMode.X509):
        return False
    if cred.cert_fingerprint is not None:
        return cred.cert_fingerprint == identity.fingerprint
    return cred.cert_common_name is not None and cred.cert_common_name == identity.common_name


class SecurityService:
    def __init__(
        self,
        store: SecurityStore,
        server: Lwm2mServer,
        config: AuthorizationConfig | None = None,
    ) -> None:
        self.store = store
        self.server = server
        self.authorizer = SecurityAuthorizer(store.cache, config)
        server.authorizer = self.authorizer
        self._sessions: dict[DtlsCoapEndpoint, dict[Addr, PeerIdentity]] = {}
        self.sessions_closed_on_change = 0
        self._unlisten = store.add_listener(self._on_change)

    @property
    def secure(self) -> bool:
        return self.authorizer.config.secure

    def dtls_config(self, **settings: Any) -> DtlsConfig:
        """A DTLS configuration whose PSK lookup is the credential cache."""
        return DtlsConfig(psk_lookup=self.store.psk_lookup, **settings)

    async def start(self) -> None:
        """Load the credential cache: before the server opens its sockets."""
        loaded = await self.store.load()
        log.info("security store: %d active credentials", loaded)

    def attach_server(self) -> None:
        """Track the sessions of the server's CoAPS endpoint: after it started."""
        if self.server.secure_endpoint is not None:
            self.attach(self.server.secure_endpoint)

    def stop(self) -> None:
        self._unlisten()

    # -- DTLS sessions by identity --------------------------------------------------

    def attach(self, endpoint: DtlsCoapEndpoint) -> None:
        """Track `endpoint`'s sessions (keeping any callbacks already set)."""
        table = self._sessions.setdefault(endpoint, {})
        prev_up = endpoint.on_session_established
        prev_down = endpoint.on_session_closed

        def up(addr: Addr, identity: PeerIdentity) -> None:
            table[addr] = identity
            if prev_up is not None:
                prev_up(addr, identity)

        def down(addr: Addr, identity: PeerIdentity | None, reason: str) -> None:
            table.pop(addr, None)
            if prev_down is not None:
                prev_down(addr, identity, reason)

        endpoint.on_session_established = up
        endpoint.on_session_closed = down

    def sessions_of(
        self, match: Callable[[PeerIdentity], bool]
    ) -> list[tuple[DtlsCoapEndpoint, Addr, PeerIdentity]]:
        return [
            (ep, addr, ident)
            for ep, table in self._sessions.items()
            for addr, ident in table.items()
            if match(ident)
        ]

    def session_count(self) -> int:
        return sum(len(t) for t in self._sessions.values())

    def _on_change(self, change: CredentialChange) -> None:
        before, after = change.before, change.after
        if before is None:
            return
        stale = self.sessions_of(lambda i: identity_fits(i, before) and not identity_fits(i, after))
        for ep, addr, ident in stale:
            log.warning("closing the DTLS session of %s at %s: %s", ident, addr, change.kind)
            ep.close_session(addr)
            self.sessions_closed_on_change += 1
        revoked_server = change.kind == "revoked" and after.purpose == Purpose.SERVER
        if revoked_server and self.server.evict(after.endpoint, "credentials revoked"):
            log.warning("ended the registration of %s: credentials revoked", after.endpoint)

    # -- operator's view ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = self.authorizer.status()
        out["credentials"] = len(self.store.cache)
        out["dtls_sessions"] = self.session_count()
        out["sessions_closed_on_change"] = self.sessions_closed_on_change
        ep = self.server.secure_endpoint
        if ep is not None:
            out["dtls"] = ep.dtls.counters.as_dict()
            out["dtls_recent_refusals"] = [
                {"address": str(a), "reason": r} for _, a, r in list(ep.dtls.recent_refusals)[-50:]
            ]
        return out

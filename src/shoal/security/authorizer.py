"""Registration authorisation from the security store.

Rules (issue 5, point 4):

- In secure mode (the default outside `shoal demo`) an endpoint without server
  credentials is refused with 4.03, whatever the transport.
- A DTLS identity (PSK identity, or certificate fingerprint or common name) may
  register, update and de-register only the endpoint its credential is bound to,
  and send only on that registration. Bootstrap credentials never open `/rd`.
- NoSec (plain CoAP) only for endpoints whose credential allows "nosec". In
  insecure mode an endpoint without any credential may use NoSec too, but one
  with credentials is held to them (no downgrade from DTLS to plain CoAP).
- A registration made over DTLS is never updated, de-registered or sent on over
  plain CoAP, even by someone who learned its registration id.
- Refusals are counted, logged, and rate-limited per source host: past
  `refusal_budget` refusals in `refusal_window` seconds the host's requests are
  answered 4.29 without further work, and its refusals no longer reach the log
  (one line per window says how many were suppressed).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from shoal.coap.engine import Addr
from shoal.dtls.server import PeerIdentity
from shoal.lwm2m.registration import RegisterRequest, RegistrationError
from shoal.security.store import Credential, CredentialCache, Purpose, SecurityMode
from shoal.server.authorization import Peer
from shoal.server.registration import Registration

log = logging.getLogger(__name__)

FORBIDDEN = (4, 3)
TOO_MANY_REQUESTS = (4, 29)
NOSEC_IDENTITY = "nosec"


@dataclass(frozen=True, slots=True)
class AuthorizationConfig:
    secure: bool = True
    # X.509 devices with a CA-verified certificate whose CN is the endpoint name may
    # register without a per-device credential (a fleet provisioned by its CA).
    trust_ca_common_name: bool = False
    refusal_budget: int = 20  # refusals per host and window before it is throttled
    refusal_window: float = 60.0
    max_tracked_hosts: int = 100_000


def _host(address: Addr) -> object:
    """Rate limits apply per host: a refused client changes its port freely."""
    if isinstance(address, tuple) and address:
        return address[0]
    return address


class RefusalLimiter:
    """Fixed-window refusal counts per host, in a bounded LRU table."""

    __slots__ = ("_clock", "_hosts", "budget", "max_hosts", "window")

    def __init__(
        self,
        budget: int,
        window: float,
        max_hosts: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.window = window
        self.max_hosts = max_hosts
        self._clock = clock
        # host -> [window start, refusals in the window, suppressed log lines]
        self._hosts: OrderedDict[object, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hosts)

    def _entry(self, host: object, now: float) -> list[float] | None:
        entry = self._hosts.get(host)
        if entry is not None and now - entry[0] >= self.window:
            if entry[2]:
                log.warning(
                    "suppressed %d refusal log lines for %s in the last window", entry[2], host
                )
            del self._hosts[host]
            return None
        return entry

    def limited(self, address: Addr) -> bool:
        entry = self._entry(_host(address), self._clock())
        return entry is not None and entry[1] >= self.budget

    def record(self, address: Addr) -> bool:
        """Count one refusal; True if it may be logged (the host is within budget)."""
        host = _host(address)
        now = self._clock()
        entry = self._entry(host, now)
        if entry is None:
            entry = self._hosts[host] = [now, 0.0, 0.0]
            while len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)
        else:
            self._hosts.move_to_end(host)
        entry[1] += 1
        if entry[1] > self.budget:
            entry[2] += 1
            return False
        return True

    def throttled_hosts(self) -> list[str]:
        now = self._clock()
        return [
            str(h)
            for h, e in self._hosts.items()
            if e[1] >= self.budget and now - e[0] < self.window
        ]


def identity_text(identity: PeerIdentity | None) -> str:
    return NOSEC_IDENTITY if identity is None else str(identity)


class SecurityAuthorizer:
    """`shoal.server.authorization.RegistrationAuthorizer` over the credential cache."""

    def __init__(
        self,
        cache: CredentialCache,
        config: AuthorizationConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.config = config or AuthorizationConfig()
        cfg = self.config
        self.limiter = RefusalLimiter(
            cfg.refusal_budget, cfg.refusal_window, cfg.max_tracked_hosts, clock
        )
        self.counters: dict[str, int] = {
            "refused": 0,  # every refusal answered on /rd, /dp, /bs
            "no_credentials": 0,
            "wrong_identity": 0,
            "nosec_refused": 0,
            "mode_not_allowed": 0,
            "downgrade_refused": 0,
            "throttled": 0,  # requests answered 4.29
            "log_suppressed": 0,
        }
        #: the last refusals as (wall time, address, code, reason), for an operator
        self.recent: deque[tuple[float, str, str, str]] = deque(maxlen=200)

    # -- the hook the server calls ------------------------------------------------------

    def admit(self, address: Addr) -> None:
        if self.limiter.limited(address):
            self.counters["throttled"] += 1
            raise RegistrationError(TOO_MANY_REQUESTS, "too many refused requests: wait")

    def refused(self, address: Addr, error: RegistrationError) -> None:
        self.counters["refused"] += 1
        code = f"{error.code[0]}.{error.code[1]:02d}"
        self.recent.append((time.time(), str(address), code, error.message))
        if self.limiter.record(address):
            log.info("refused %s from %s: %s", code, address, error.message)
        else:
            self.counters["log_suppressed"] += 1

    def authorize_register(self, request: RegisterRequest, peer: Peer) -> str | None:
        self._check(request.endpoint, peer, "register")
        return identity_text(peer.identity)

    def authorize(self, operation: str, registration: Registration, peer: Peer) -> None:
        registered_secure = registration.identity not in (None, NOSEC_IDENTITY)
        if registered_secure and peer.identity is None:
            self._refuse("downgrade_refused", f"{operation} over NoSec of a DTLS registration")
        self._check(registration.endpoint, peer, operation)

    def authorize_bootstrap(self, endpoint: str, peer: Peer) -> Credential:
        """The bootstrap credential that lets `peer` bootstrap `endpoint`, or 4.03."""
        cred = self._check(endpoint, peer, "bootstrap", Purpose.BOOTSTRAP)
        if cred is None:
            self._refuse("no_credentials", f"no bootstrap credentials for {endpoint}")
        return cred

    # -- the rules ----------------------------------------------------------------------

    def _refuse(self, counter: str, reason: str) -> NoReturn:
        self.counters[counter] += 1
        raise RegistrationError(FORBIDDEN, reason)

    def _check(
        self, endpoint: str, peer: Peer, operation: str, purpose: Purpose = Purpose.SERVER
    ) -> Credential | None:
        """The credential that allows `peer` this operation on `endpoint`, None when
        insecure mode lets an endpoint without credentials in; else 4.03."""
        ident = peer.identity
        cred = self.cache.get(endpoint, purpose)
        if ident is None:
            if cred is None:
                if self.config.secure or purpose == Purpose.BOOTSTRAP:
                    self._refuse("no_credentials", f"no {purpose} credentials for {endpoint}")
                return None
            if not cred.allows(SecurityMode.NOSEC):
                self._refuse("nosec_refused", f"{endpoint} may not {operation} without DTLS")
            return cred
        holder = self._holder(ident, purpose)
        if holder is None:
            if (
                purpose == Purpose.SERVER
                and self.config.trust_ca_common_name
                and not ident.is_psk
                and ident.common_name == endpoint
                and cred is None
            ):
                return None
            self._refuse("wrong_identity", f"{ident} holds no {purpose} credentials")
        if holder.endpoint != endpoint:
            self._refuse("wrong_identity", f"{ident} may not {operation} {endpoint}")
        mode = SecurityMode.PSK if ident.is_psk else SecurityMode.X509
        if not holder.allows(mode):
            self._refuse("mode_not_allowed", f"{endpoint} may not use {mode}")
        return holder

    def _holder(self, ident: PeerIdentity, purpose: Purpose) -> Credential | None:
        if ident.psk_identity is not None:
            cred = self.cache.by_psk_identity(ident.psk_identity)
            return cred if cred is not None and cred.purpose == purpose else None
        return self.cache.by_certificate(purpose, ident.fingerprint, ident.common_name)

    def status(self) -> dict[str, object]:
        return {
            "secure": self.config.secure,
            "counters": dict(self.counters),
            "throttled_hosts": self.limiter.throttled_hosts(),
            "recent_refusals": [
                {"time": t, "address": a, "code": c, "reason": r}
                for t, a, c, r in list(self.recent)[-50:]
            ],
        }

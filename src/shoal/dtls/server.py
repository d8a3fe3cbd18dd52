"""DTLS 1.2 server sessions over pyOpenSSL memory BIOs, sans-IO.

Shaped like the CoAP engine: feed it datagrams and time (`receive_datagram`,
`handle_timer`), take out handshake datagrams (`datagrams_to_send`) and events
(`next_event`), encrypt with `send`. It never touches a socket.

One SSL context serves both PSK (`TLS_PSK_WITH_AES_128_CCM_8`,
`TLS_PSK_WITH_AES_128_CBC_SHA256`) and certificates (ECDHE-ECDSA with CCM8,
GCM, CBC), client certificates verified against the configured CAs and required
whenever the suite is not PSK.

Denial of service: a ClientHello from an address without a session goes to one
shared listener `Connection` (OpenSSL's stateless `DTLSv1_listen`), which answers
a HelloVerifyRequest with an HMAC cookie bound to the address and the hello's
parameters (see `cookie.py`). Only a hello carrying a valid cookie turns that
listener into a per-peer session, so a flood of spoofed hellos costs one HMAC
and one small reply each and leaves no state behind.

OpenSSL keeps its own clock for handshake retransmission; the `now` given here
drives the session table (idle expiry, handshake deadlines) and the cookie
secret rotation, and the timer returned by `get_timer` is `now` plus what
OpenSSL asks for.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from shoal.dtls import psk as _psk
from shoal.dtls.cookie import CookieJar
from shoal.dtls.records import (
    APPLICATION_DATA,
    HANDSHAKE,
    count_records,
    pack_records,
    parse_client_hello,
)

log = logging.getLogger(__name__)

Addr = Hashable

DTLS1_2_VERSION = 0xFEFD

#: LwM2M 1.1 suites: PSK (CCM8 mandatory, CBC recommended) and ECDHE-ECDSA for
#: certificates. CCM8 has a 64-bit tag, which OpenSSL only allows at level 0.
DEFAULT_CIPHERS = ":".join(
    (
        "PSK-AES128-CCM8",
        "PSK-AES128-CBC-SHA256",
        "ECDHE-ECDSA-AES128-CCM8",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-CCM",
        "ECDHE-ECDSA-AES128-SHA256",
        "@SECLEVEL=0",
    )
)

MAX_PLAINTEXT = 16384  # one record; larger CoAP messages must go block-wise
MAX_RECORD = MAX_PLAINTEXT + 2048  # a record's largest plaintext plus expansion
READ_CHUNK = 4096  # handshake output is read in pieces this big
MIN_RETRANSMIT_WAIT = 0.01


@dataclass(slots=True)
class DtlsConfig:
    """What the server accepts and how much it keeps.

    `psk_lookup(identity) -> key | None` is the security store's answer for a
    PSK identity; None refuses the handshake. `certificate_chain` (server
    certificate first) and `private_key` are PEM; `client_cas` is a PEM bundle of
    the CAs whose device certificates are accepted.
    """

    psk_lookup: Callable[[bytes], bytes | None] | None = None
    psk_identity_hint: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    client_cas: bytes | None = None
    ciphers: str = DEFAULT_CIPHERS
    mtu: int = 1232  # IPv6 minimum MTU minus IPv6 and UDP headers
    max_sessions: int = 100_000
    max_handshakes: int = 2_000
    handshake_timeout: float = 30.0
    idle_timeout: float = 36 * 3600.0
    stale_after: float = 1800.0  # an idle session this old may be evicted when full
    cookie_lifetime: float = 60.0


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is at the other end of a session, for the registration authoriser."""

    cipher: str
    psk_identity: bytes | None = None
    common_name: str | None = None
    fingerprint: bytes | None = None  # SHA-256 of the certificate's DER
    certificate: x509.Certificate | None = field(default=None, compare=False, repr=False)

    @property
    def is_psk(self) -> bool:
        return self.psk_identity is not None

    def __str__(self) -> str:
        if self.psk_identity is not None:
            return "psk:" + self.psk_identity.decode("utf-8", "backslashreplace")
        fp = self.fingerprint.hex() if self.fingerprint else "?"
        return f"x509:CN={self.common_name};sha256={fp}"


class SessionEstablished:
    __slots__ = ("addr", "identity")

    def __init__(self, addr: Addr, identity: PeerIdentity) -> None:
        self.addr = addr
        self.identity = identity


class SessionClosed:
    """An established session ended: by the peer, idle, evicted, replaced, closed."""

    __slots__ = ("addr", "identity", "reason")

    def __init__(self, addr: Addr, identity: PeerIdentity | None, reason: str) -> None:
        self.addr = addr
        self.identity = identity
        self.reason = reason


Event = SessionEstablished | SessionClosed


@dataclass(slots=True)
class DtlsCounters:
    """Monotonic counters; the refusals are what an operator alerts on."""

    hello_verify_sent: int = 0  # HelloVerifyRequests sent (ClientHellos without a valid cookie)
    bad_cookies: int = 0  # ClientHellos whose cookie did not verify
    handshakes_started: int = 0  # sessions created after a valid cookie
    handshakes_completed: int = 0
    handshake_failures: int = 0  # refused for another reason (no shared cipher, bad message)
    handshake_timeouts: int = 0  # handshakes that did not finish in `handshake_timeout`
    psk_timeouts: int = 0  # timeouts after a known PSK identity: the usual sign of a wrong key
    unknown_identity: int = 0  # PSK identities `psk_lookup` did not know
    bad_certificate: int = 0  # client certificates missing or not verified against the CAs
    refused_full: int = 0  # valid hellos refused because the table or handshake cap was full
    sessions_closed: int = 0  # established sessions ended (any reason)
    sessions_expired: int = 0  # idle sessions dropped after `idle_timeout`
    sessions_evicted: int = 0  # stale sessions dropped to make room
    send_no_session: int = 0  # plaintexts dropped because the address has no session
    send_too_large: int = 0  # plaintexts over 16 KiB dropped (one record at most)
    datagrams_dropped: int = 0  # datagrams from addresses without a session, or unparsable hellos

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Session:
    __slots__ = (
        "addr",
        "cert_error",
        "client_random",
        "closed",
        "conn",
        "deadline",
        "established",
        "identity",
        "last_seen",
        "psk_identity",
        "psk_refused",
        "timer_at",
    )

    def __init__(self, addr: Addr, conn: SSL.Connection, now: float, deadline: float) -> None:
        self.addr = addr
        self.conn = conn
        self.last_seen = now
        self.deadline = deadline
        self.established = False
        self.closed = False
        self.identity: PeerIdentity | None = None
        self.client_random = b""
        self.psk_identity: bytes | None = None
        self.psk_refused = False
        self.cert_error: str | None = None
        self.timer_at = 0.0


def _peer_bytes(addr: Addr) -> bytes:
    return repr(addr).encode()


class DtlsServer:
    """DTLS 1.2 server side of many peers, keyed by their UDP address."""

    def __init__(
        self, config: DtlsConfig | None = None, urandom: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.config = config or DtlsConfig()
        self.counters = DtlsCounters()
        self._cookies = CookieJar(self.config.cookie_lifetime, urandom)
        self._sessions: OrderedDict[Addr, _Session] = OrderedDict()  # least recently seen first
        self._handshaking = 0
        self._timers: list[tuple[float, int, _Session]] = []
        self._seq = itertools.count()
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[Event] = deque()
        #: the last refusals as (now, addr, reason), for an operator's view
        self.recent_refusals: deque[tuple[float, Addr, str]] = deque(maxlen=100)
        self._active: _Session | None = None  # the session OpenSSL is working on
        self._hello = b""  # cookie input of the ClientHello the listener is checking
        self._now = 0.0
        self._psk_cb: Any = None
        self._ctx = self._make_context()
        self._listener = self._new_connection()

    # -- setup -----------------------------------------------------------------------

    def _make_context(self) -> SSL.Context:
        cfg = self.config
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(DTLS1_2_VERSION)
        ctx.set_max_proto_version(DTLS1_2_VERSION)
        ctx.set_options(
            SSL.OP_NO_QUERY_MTU  # memory BIOs know no MTU: set per connection
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_NO_TICKET
            | SSL.OP_CIPHER_SERVER_PREFERENCE
        )
        # No resumption: every session proves its key or certificate afresh, and a
        # key revoked in the security store cannot come back through a cached session.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_session_id(b"shoal-dtls")
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle sessions drop their record buffers
        ctx.set_cipher_list(cfg.ciphers.encode())
        ctx.set_cookie_generate_callback(self._cookie_generate)
        ctx.set_cookie_verify_callback(self._cookie_verify)
        if cfg.psk_lookup is not None:
            self._psk_cb = _psk.set_psk_server_callback(ctx, self._on_psk, cfg.psk_identity_hint)
        if cfg.certificate_chain is not None:
            if cfg.private_key is None:
                raise ValueError("certificate_chain needs private_key")
            chain = x509.load_pem_x509_certificates(cfg.certificate_chain)
            ctx.use_certificate(chain[0])
            for extra in chain[1:]:
                ctx.add_extra_chain_cert(extra)
            key = serialization.load_pem_private_key(cfg.private_key, None)
            ctx.use_privatekey(key)  # type: ignore[arg-type]
            ctx.check_privatekey()
        if cfg.client_cas is not None:
            store = ctx.get_cert_store()
            assert store is not None
            for ca in x509.load_pem_x509_certificates(cfg.client_cas):
                store.add_cert(crypto.X509.from_cryptography(ca))
                ctx.add_client_ca(ca)
        # Certificate suites always require a client certificate that chains to a
        # configured CA (none configured: none accepted); PSK suites never ask.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._on_verify)
        return ctx

    def _new_connection(self) -> SSL.Connection:
        conn = SSL.Connection(self._ctx)
        conn.set_accept_state()
        conn.set_ciphertext_mtu(self.config.mtu)
        return conn

    # -- OpenSSL callbacks (always inside a call made by this object) -----------------

    def _cookie_generate(self, conn: SSL.Connection) -> bytes:
        return self._cookies.make(self._hello, self._now)

    def _cookie_verify(self, conn: SSL.Connection, cookie: bytes) -> bool:
        return self._cookies.check(self._hello, cookie, self._now)

    def _on_psk(self, identity: bytes) -> bytes | None:
        s = self._active
        lookup = self.config.psk_lookup
        key = None
        if lookup is not None:
            try:
                key = lookup(identity)
            except Exception:
                log.exception("psk_lookup failed for %r", identity)
        if s is not None:
            s.psk_identity = identity
            s.psk_refused = key is None
        return key

    def _on_verify(
        self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
    ) -> bool:
        s = self._active
        if not ok and s is not None and s.cert_error is None:
            s.cert_error = f"X509 error {errnum} at depth {depth}"
        return bool(ok)

    # -- sans-IO interface -----------------------------------------------------------

    @property
    def sessions(self) -> int:
        """Sessions in the table, established or in handshake."""
        return len(self._sessions)

    @property
    def handshaking(self) -> int:
        return self._handshaking

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        """Handshake flights, HelloVerifyRequests and alerts, with their addresses."""
        out = self._out
        self._out = []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def peer_identity(self, addr: Addr) -> PeerIdentity | None:
        s = self._sessions.get(addr)
        return s.identity if s is not None else None

    def is_established(self, addr: Addr) -> bool:
        s = self._sessions.get(addr)
        return s is not None and s.established

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> list[bytes]:
        """Take one datagram from `addr`; return the application data it carried."""
        self._now = now
        s = self._sessions.get(addr)
        first = data[0] if data else -1
        if first == HANDSHAKE:
            hello = parse_client_hello(data)
            if hello is not None and (
                s is None or s.established or s.client_random != hello.random
            ):
                self._accept(data, addr, hello.random, hello.params, bool(hello.cookie), now)
                return []
        if s is None:
            self.counters.datagrams_dropped += 1
            return []
        s.last_seen = now
        self._sessions.move_to_end(addr)
        conn = s.conn
        conn.bio_write(data)
        if not s.established:
            if not self._handshake(s, now):
                return []
            first = -1  # records after the Finished may be application data
        # one recv per record; one more when something else may follow a handshake
        n = count_records(data) + (first != APPLICATION_DATA)
        plaintexts: list[bytes] = []
        try:
            for _ in range(n):
                plaintexts.append(conn.recv(MAX_RECORD))
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self._flush(s)
            self._close(s, "closed by peer")
            return plaintexts
        except SSL.Error as exc:
            self._flush(s)
            self._close(s, f"alert: {exc}")
            return plaintexts
        if first != APPLICATION_DATA:
            self._flush(s)  # a retransmitted client flight makes OpenSSL resend its last
        return plaintexts

    def send(self, addr: Addr, plaintext: bytes) -> list[bytes]:
        """Encrypt `plaintext` for `addr`'s session; [] when it has none (counted).

        One plaintext is one record in one datagram. A record above the MTU is
        sent anyway (the IP layer fragments it); the CoAP engine's block size
        keeps messages below it.
        """
        s = self._sessions.get(addr)
        if s is None or not s.established:
            self.counters.send_no_session += 1
            return []
        if len(plaintext) > MAX_PLAINTEXT:
            self.counters.send_too_large += 1
            return []
        conn = s.conn
        try:
            conn.send(plaintext)
            data = conn.bio_read(len(plaintext) + 512)
        except SSL.Error as exc:
            self._close(s, f"send failed: {exc}")
            return []
        if len(data) <= self.config.mtu:
            return [data]
        return pack_records(data, self.config.mtu)

    def close_session(self, addr: Addr, now: float) -> bool:
        """Send close_notify to `addr` and forget its session."""
        self._now = now
        s = self._sessions.get(addr)
        if s is None:
            return False
        if s.established:
            try:
                s.conn.shutdown()
            except SSL.Error:
                pass
            self._flush(s)
        self._close(s, "closed by server")
        return True

    def get_timer(self) -> float | None:
        timers = self._timers
        while timers:
            at, _, s = timers[0]
            if s.timer_at == at and not s.closed and not s.established:
                break
            heapq.heappop(timers)
        when = timers[0][0] if timers else None
        if self._sessions:
            oldest = next(iter(self._sessions.values()))
            expiry = oldest.last_seen + self.config.idle_timeout
            if when is None or expiry < when:
                when = expiry
        return when

    def handle_timer(self, now: float) -> None:
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, s = heapq.heappop(timers)
            if s.closed or s.established or s.timer_at != when:
                continue
            if now >= s.deadline:
                self.counters.handshake_timeouts += 1
                if s.psk_identity is not None and not s.psk_refused:
                    self.counters.psk_timeouts += 1  # the usual sign of a wrong key
                log.info("DTLS handshake from %s timed out", s.addr)
                self.recent_refusals.append((now, s.addr, "handshake timeout"))
                self._close(s, "handshake timeout")
                continue
            self._active = s
            try:
                s.conn.DTLSv1_handle_timeout()
            except SSL.Error as exc:
                self._refuse(s, exc)
                continue
            finally:
                self._active = None
            self._flush(s)
            self._arm(s, now)
        idle = self.config.idle_timeout
        sessions = self._sessions
        while sessions:
            s = next(iter(sessions.values()))
            if s.last_seen + idle > now:
                break
            self.counters.sessions_expired += 1
            self._close(s, "idle")

    # -- handshakes ------------------------------------------------------------------

    def _accept(
        self, data: bytes, addr: Addr, random: bytes, params: bytes, has_cookie: bool, now: float
    ) -> None:
        """A ClientHello that starts a handshake: cookie exchange, then a session."""
        self._hello = _peer_bytes(addr) + params
        listener = self._listener
        listener.bio_write(data)
        try:
            listener.DTLSv1_listen()
        except SSL.WantReadError:
            reply = self._read_all(listener)
            if has_cookie:
                self.counters.bad_cookies += 1
            if reply:
                self.counters.hello_verify_sent += 1
                self._out.append((reply, addr))
            return
        except SSL.Error:
            self._listener = self._new_connection()
            self.counters.datagrams_dropped += 1
            return
        # A valid cookie: the peer owns this address. The listener, which holds the
        # ClientHello, becomes its session.
        self._listener = self._new_connection()
        old = self._sessions.get(addr)
        if old is not None:
            self._close(old, "new handshake")
        if not self._make_room(now):
            self.counters.refused_full += 1
            return
        cfg = self.config
        s = _Session(addr, listener, now, now + cfg.handshake_timeout)
        s.client_random = random
        self._sessions[addr] = s
        self._handshaking += 1
        self.counters.handshakes_started += 1
        self._handshake(s, now)

    def _make_room(self, now: float) -> bool:
        cfg = self.config
        if self._handshaking >= cfg.max_handshakes:
            return False
        if len(self._sessions) < cfg.max_sessions:
            return True
        oldest = next(iter(self._sessions.values()))
        if now - oldest.last_seen < cfg.stale_after:
            return False
        self.counters.sessions_evicted += 1
        self._close(oldest, "evicted")
        return True

    def _handshake(self, s: _Session, now: float) -> bool:
        """Drive the handshake; True once it is complete."""
        self._active = s
        try:
            s.conn.do_handshake()
        except SSL.WantReadError:
            self._flush(s)
            self._arm(s, now)
            return False
        except SSL.Error as exc:
            self._refuse(s, exc)
            return False
        finally:
            self._active = None
        s.established = True
        s.client_random = b""
        s.timer_at = 0.0
        self._handshaking -= 1
        self.counters.handshakes_completed += 1
        identity = self._identity(s)
        s.identity = identity
        self._events.append(SessionEstablished(s.addr, identity))
        self._flush(s)
        return True

    def _arm(self, s: _Session, now: float) -> None:
        wait = s.conn.DTLSv1_get_timeout()
        when = s.deadline if wait is None else min(now + max(wait, MIN_RETRANSMIT_WAIT), s.deadline)
        if s.timer_at == when:
            return
        s.timer_at = when
        heapq.heappush(self._timers, (when, next(self._seq), s))

    def _refuse(self, s: _Session, exc: SSL.Error) -> None:
        self._flush(s)  # the alert, if OpenSSL wrote one
        c = self.counters
        if s.psk_refused:
            c.unknown_identity += 1
            reason = f"unknown PSK identity {s.psk_identity!r}"
        elif s.cert_error is not None or "certificate" in str(exc).lower():
            c.bad_certificate += 1
            reason = f"bad client certificate: {s.cert_error or exc}"
        else:
            c.handshake_failures += 1
            reason = f"handshake failed: {exc}"
        log.info("DTLS handshake from %s refused: %s", s.addr, reason)
        self.recent_refusals.append((self._now, s.addr, reason))
        self._close(s, reason)

    def _identity(self, s: _Session) -> PeerIdentity:
        conn = s.conn
        cipher = conn.get_cipher_name() or ""
        if s.psk_identity is not None and "PSK" in cipher:
            return PeerIdentity(cipher=cipher, psk_identity=s.psk_identity)
        cert = conn.get_peer_certificate(as_cryptography=True)
        if cert is None:  # pragma: no cover - VERIFY_FAIL_IF_NO_PEER_CERT prevents it
            return PeerIdentity(cipher=cipher)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = cns[0].value if cns else None
        return PeerIdentity(
            cipher=cipher,
            common_name=cn if isinstance(cn, str) else None,
            fingerprint=cert.fingerprint(hashes.SHA256()),
            certificate=cert,
        )

    # -- plumbing --------------------------------------------------------------------

    @staticmethod
    def _read_all(conn: SSL.Connection) -> bytes:
        chunks = []
        try:
            while True:
                chunks.append(conn.bio_read(READ_CHUNK))
        except SSL.WantReadError:
            pass
        return b"".join(chunks)

    def _flush(self, s: _Session) -> None:
        data = self._read_all(s.conn)
        if not data:
            return
        addr = s.addr
        for datagram in pack_records(data, self.config.mtu):
            self._out.append((datagram, addr))

    def _close(self, s: _Session, reason: str) -> None:
        if s.closed:
            return
        s.closed = True
        if self._sessions.get(s.addr) is s:
            del self._sessions[s.addr]
        if s.established:
            self.counters.sessions_closed += 1
            self._events.append(SessionClosed(s.addr, s.identity, reason))
        else:
            self._handshaking -= 1


__all__ = [
    "DEFAULT_CIPHERS",
    "DtlsConfig",
    "DtlsCounters",
    "DtlsServer",
    "Event",
    "PeerIdentity",
    "SessionClosed",
    "SessionEstablished",
]

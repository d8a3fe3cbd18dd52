"""CoAP over DTLS on one UDP socket: `CoapEndpoint` with a `DtlsServer` under it.

Datagrams from the socket go through the DTLS server; the application data they
carry goes to the CoAP engine with the peer's UDP address as its address. What
the engine sends to an address is encrypted with that address's session, so the
server's own requests to a device travel in the session the device opened (and
are dropped, then retried and failed by the engine, when there is none).

`CoapEndpoint` writes through `self.transport.sendto`; this class hands it a
transport that encrypts, so `coap/endpoint.py` needs no hook.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapEndpoint
from shoal.coap.engine import Addr, Engine
from shoal.dtls.server import (
    DtlsConfig,
    DtlsServer,
    PeerIdentity,
    SessionClosed,
    SessionEstablished,
)

log = logging.getLogger(__name__)


class _EncryptingTransport:
    """What `CoapEndpoint` sees as its transport: sendto encrypts per peer."""

    __slots__ = ("_dtls", "raw")

    def __init__(self, raw: asyncio.DatagramTransport, dtls: DtlsServer) -> None:
        self.raw = raw
        self._dtls = dtls

    def sendto(self, data: bytes, addr: Any = None) -> None:
        raw_sendto = self.raw.sendto
        for datagram in self._dtls.send(addr, data):
            raw_sendto(datagram, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def close(self) -> None:
        self.raw.close()

    def is_closing(self) -> bool:
        return self.raw.is_closing()


class DtlsCoapEndpoint(CoapEndpoint):
    """A CoAP endpoint that speaks only coaps:// (DTLS 1.2) on its socket."""

    def __init__(
        self,
        config: CoapConfig | None = None,
        engine: Engine | None = None,
        *,
        dtls: DtlsServer | DtlsConfig | None = None,
    ) -> None:
        if dtls is None:
            raise TypeError("DtlsCoapEndpoint needs dtls=DtlsServer(...) or DtlsConfig(...)")
        super().__init__(config, engine)
        self.dtls = dtls if isinstance(dtls, DtlsServer) else DtlsServer(dtls)
        self.raw_transport: asyncio.DatagramTransport | None = None
        self._dtls_timer: asyncio.TimerHandle | None = None
        self._dtls_timer_at: float | None = None
        self.on_session_established: Callable[[Addr, PeerIdentity], None] | None = None
        self.on_session_closed: Callable[[Addr, PeerIdentity | None, str], None] | None = None

    @classmethod
    async def create(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        config: CoapConfig | None = None,
        rcvbuf: int = 4 * 1024 * 1024,
        *,
        dtls: DtlsServer | DtlsConfig | None = None,
    ) -> DtlsCoapEndpoint:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        except OSError:
            pass
        sock.bind((host, port))
        sock.setblocking(False)
        _, proto = await loop.create_datagram_endpoint(lambda: cls(config, dtls=dtls), sock=sock)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw_transport = transport  # type: ignore[assignment]
        self.transport = _EncryptingTransport(transport, self.dtls)  # type: ignore[arg-type,assignment]

    def close(self) -> None:
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        super().close()

    def peer_identity(self, addr: Addr) -> PeerIdentity | None:
        """Who holds the DTLS session of `addr` (None: no established session)."""
        return self.dtls.peer_identity(addr)

    def close_session(self, addr: Addr) -> bool:
        """End `addr`'s session with a close_notify."""
        found = self.dtls.close_session(addr, self.loop.time())
        self._after_dtls()
        return found

    # -- datagrams -------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        now = self.loop.time()
        dtls = self.dtls
        plaintexts = dtls.receive_datagram(data, addr, now)
        if dtls._out or dtls._events or not plaintexts:
            self._after_dtls()
        if plaintexts:
            engine = self.engine
            for plaintext in plaintexts:
                engine.receive_datagram(plaintext, addr, now)
            self._drain(now)

    def _after_dtls(self) -> None:
        """Send handshake datagrams, report session events, re-arm the DTLS timer."""
        dtls = self.dtls
        out = dtls.datagrams_to_send()
        raw = self.raw_transport
        if out and raw is not None:
            for datagram, addr in out:
                raw.sendto(datagram, addr)  # type: ignore[arg-type]
        while (ev := dtls.next_event()) is not None:
            try:
                if type(ev) is SessionEstablished:
                    if self.on_session_established is not None:
                        self.on_session_established(ev.addr, ev.identity)
                elif type(ev) is SessionClosed and self.on_session_closed is not None:
                    self.on_session_closed(ev.addr, ev.identity, ev.reason)
            except Exception:
                log.exception("DTLS session callback failed")
        when = dtls.get_timer()
        if when is None:
            return
        if self._dtls_timer_at is not None and self._dtls_timer_at <= when:
            return
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        self._dtls_timer_at = when
        self._dtls_timer = self.loop.call_at(when, self._on_dtls_timer)

    def _on_dtls_timer(self) -> None:
        self._dtls_timer = None
        self._dtls_timer_at = None
        self.dtls.handle_timer(self.loop.time())
        self._after_dtls()

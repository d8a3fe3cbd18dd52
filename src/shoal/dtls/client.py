"""A small DTLS 1.2 client over memory BIOs, for tests, benchmarks and the simulator.

Sans-IO like the server: `start()` gives the first flight, `receive_datagram`
takes what the server sent and returns application data, `send` encrypts,
`get_timeout`/`handle_timeout` drive retransmission. `handshake_blocking` runs
a handshake over a connected UDP socket.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from shoal.dtls import psk as _psk
from shoal.dtls.records import pack_records
from shoal.dtls.server import DTLS1_2_VERSION, MAX_RECORD


class DtlsHandshakeError(Exception):
    """The handshake failed or did not finish in time."""


def client_context(
    *,
    psk: tuple[bytes, bytes] | None = None,
    certificate: bytes | None = None,
    private_key: bytes | None = None,
    ca: bytes | None = None,
    ciphers: str | None = None,
) -> tuple[SSL.Context, Any]:
    """A client context for PSK `(identity, key)` or a PEM certificate and key.

    `ca` (PEM) makes the client verify the server's certificate. Returns the
    context and an object to keep alive with it (the PSK callback).
    """
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET)
    keep: Any = None
    if ciphers is None:
        ciphers = "PSK-AES128-CCM8:PSK-AES128-CBC-SHA256" if psk else "ECDHE-ECDSA-AES128-CCM8"
    ctx.set_cipher_list((ciphers + ":@SECLEVEL=0").encode())
    if psk is not None:
        keep = _psk.set_psk_client_callback(ctx, psk[0], psk[1])
    if certificate is not None:
        chain = x509.load_pem_x509_certificates(certificate)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        assert private_key is not None, "certificate needs private_key"
        ctx.use_privatekey(serialization.load_pem_private_key(private_key, None))  # type: ignore[arg-type]
    if ca is not None:
        store = ctx.get_cert_store()
        assert store is not None
        for c in x509.load_pem_x509_certificates(ca):
            store.add_cert(crypto.X509.from_cryptography(c))
        ctx.set_verify(SSL.VERIFY_PEER)
    return ctx, keep


class DtlsClient:
    """One client session; every datagram it returns goes to the one server."""

    def __init__(self, context: SSL.Context, mtu: int = 1232, keep: Any = None) -> None:
        self.conn = SSL.Connection(context)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(mtu)
        self.mtu = mtu
        self.established = False
        self._keep = keep

    def _output(self) -> list[bytes]:
        chunks = []
        try:
            while True:
                chunks.append(self.conn.bio_read(MAX_RECORD))
        except SSL.WantReadError:
            pass
        return pack_records(b"".join(chunks), self.mtu)

    def _advance(self) -> None:
        if self.established:
            return
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            return
        except SSL.Error as exc:
            raise DtlsHandshakeError(str(exc)) from exc
        self.established = True

    def start(self) -> list[bytes]:
        self._advance()
        return self._output()

    def receive_datagram(self, data: bytes) -> tuple[list[bytes], list[bytes]]:
        """(application data, datagrams to send back)."""
        self.conn.bio_write(data)
        self._advance()
        plain: list[bytes] = []
        if self.established:
            try:
                while True:
                    plain.append(self.conn.recv(MAX_RECORD))
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass
        return plain, self._output()

    def send(self, plaintext: bytes) -> list[bytes]:
        self.conn.send(plaintext)
        return self._output()

    def get_timeout(self) -> float | None:
        return self.conn.DTLSv1_get_timeout()

    def handle_timeout(self) -> list[bytes]:
        try:
            self.conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            raise DtlsHandshakeError(str(exc)) from exc
        return self._output()

    def cipher(self) -> str | None:
        return self.conn.get_cipher_name()


def handshake_blocking(client: DtlsClient, sock: socket.socket, timeout: float = 10.0) -> None:
    """Run `client`'s handshake over connected UDP `sock`; DtlsHandshakeError on failure."""
    deadline = time.monotonic() + timeout
    for d in client.start():
        sock.send(d)
    while not client.established:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DtlsHandshakeError("handshake timed out")
        wait = client.get_timeout()
        wait = left if wait is None else min(max(wait, 0.001), left)
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            data = sock.recv(65536)
            client.conn.bio_write(data)
            client._advance()
            out = client._output()
        else:
            out = client.handle_timeout()
        for d in out:
            sock.send(d)


def receive_blocking(client: DtlsClient, sock: socket.socket, timeout: float) -> list[bytes]:
    """Wait up to `timeout` for application data (answering any retransmissions)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return []
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return []
        plain, out = client.receive_datagram(sock.recv(65536))
        for d in out:
            sock.send(d)
        if plain:
            return plain

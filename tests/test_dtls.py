"""DTLS 1.2 server sessions: libcoap clients over loopback, refusals, cookies, timers.

Independent peers: libcoap's `coap-client-openssl` and `coap-client-gnutls`
(Debian libcoap3-bin) for PSK and certificates; a pyOpenSSL client
(`shoal.dtls.client`) where libcoap cannot help (server-initiated requests,
forged cookies). Every wait is bounded; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes

from pki import Pki, make_pki
from shoal.coap.codes import ACK, CON, Code
from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapRequestError
from shoal.coap.message import Message
from shoal.dtls import psk
from shoal.dtls.client import (
    DtlsClient,
    DtlsHandshakeError,
    client_context,
    handshake_blocking,
    receive_blocking,
)
from shoal.dtls.cookie import COOKIE_LEN, CookieJar
from shoal.dtls.endpoint import DtlsCoapEndpoint
from shoal.dtls.records import (
    HANDSHAKE_HEADER_LEN,
    HEADER_LEN,
    count_records,
    pack_records,
    parse_client_hello,
)
from shoal.dtls.server import (
    DtlsConfig,
    DtlsServer,
    PeerIdentity,
    SessionClosed,
    SessionEstablished,
)

IDENTITY = b"pen07-oxygen-0042"
KEY = b"fish-farm-psk-16"  # printable: libcoap takes -k as text
CCM8 = "PSK-AES128-CCM8"
CBC = "PSK-AES128-CBC-SHA256"
LIBCOAP = ("coap-client-openssl", "coap-client-gnutls")


def psk_lookup(identity: bytes) -> bytes | None:
    return KEY if identity == IDENTITY else None


# -- a small PKI, made fresh for the module (helpers in tests/pki.py) ------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# -- a Shoal DTLS endpoint on an ephemeral port ----------------------------------------


class Served:
    def __init__(self, ep: DtlsCoapEndpoint) -> None:
        self.ep = ep
        self.established: list[tuple[Any, PeerIdentity]] = []
        self.closed: list[tuple[Any, str]] = []
        ep.on_session_established = lambda a, i: self.established.append((a, i))
        ep.on_session_closed = lambda a, i, r: self.closed.append((a, r))

    @property
    def port(self) -> int:
        return self.ep.address[1]

    @property
    def counters(self) -> Any:
        return self.ep.dtls.counters

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 20.0) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not cond():
            if loop.time() > end:
                return False
            await asyncio.sleep(0.05)
        return True


StartServer = Callable[..., Awaitable[Served]]


@pytest.fixture
async def start_server(pki: Pki) -> AsyncIterator[StartServer]:
    eps: list[DtlsCoapEndpoint] = []

    async def start(
        ciphers: str | None = None,
        certs: bool = True,
        coap: CoapConfig | None = None,
        **kw: Any,
    ) -> Served:
        cfg = DtlsConfig(psk_lookup=psk_lookup, **kw)
        if ciphers is not None:
            cfg.ciphers = ciphers + ":@SECLEVEL=0"
        if certs:
            cfg.certificate_chain = pki.server_chain
            cfg.private_key = pki.server_key
            cfg.client_cas = pki.ca_pem
        ep = await DtlsCoapEndpoint.create("127.0.0.1", 0, config=coap, dtls=cfg)
        eps.append(ep)

        def hello(request: Message, addr: Any) -> Message:
            ident = ep.peer_identity(addr)
            return Message(code=Code.CONTENT, payload=b"hello " + str(ident).encode())

        ep.route("/hello", hello)
        return Served(ep)

    yield start
    for ep in eps:
        ep.close()


async def libcoap(client: str, *args: str, bound: int = 20) -> tuple[int, str]:
    """Run a libcoap client; it gives up by itself after `bound` seconds (-B)."""
    if shutil.which(client) is None:
        pytest.skip(f"{client} not installed (Debian libcoap3-bin)")
    proc = await asyncio.create_subprocess_exec(
        client,
        "-B",
        str(bound),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), bound + 30)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -9, out.decode(errors="replace")
    return proc.returncode or 0, out.decode(errors="replace")


# -- the binding this module depends on ------------------------------------------------


def test_binding_exposes_psk_and_dtls() -> None:
    """Fails loudly if cryptography's OpenSSL binding drops what PSK DTLS needs."""
    assert psk.missing_psk_symbols() == []
    psk.require_psk_binding()
    lib = psk.lib
    for name in (
        "SSL_CTX_set_psk_server_callback",
        "DTLS_method",
        "DTLSv1_listen",
        "DTLSv1_handle_timeout",
        "SSL_CTX_set_cookie_generate_cb",
        "SSL_CTX_set_cookie_verify_cb",
    ):
        assert hasattr(lib, name), f"cryptography's binding lost {name}"
    from OpenSSL import SSL

    for name in ("DTLSv1_listen", "DTLSv1_get_timeout", "DTLSv1_handle_timeout", "bio_read"):
        assert hasattr(SSL.Connection, name), f"pyOpenSSL lost Connection.{name}"


# -- libcoap clients: PSK ----------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
@pytest.mark.parametrize("cipher", [CCM8, CBC])
async def test_libcoap_psk_get(start_server: StartServer, client: str, cipher: str) -> None:
    served = await start_server(ciphers=cipher, certs=False)
    rc, out = await libcoap(
        client,
        "-u",
        IDENTITY.decode(),
        "-k",
        KEY.decode(),
        f"coaps://127.0.0.1:{served.port}/hello",
    )
    assert rc == 0, out
    assert f"hello psk:{IDENTITY.decode()}" in out
    assert served.established, out
    _, ident = served.established[0]
    assert ident.cipher == cipher
    assert ident.psk_identity == IDENTITY
    assert served.counters.handshakes_completed == 1


# -- libcoap clients: certificates -------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
@pytest.mark.parametrize("cipher", [None, "ECDHE-ECDSA-AES128-GCM-SHA256"])
async def test_libcoap_certificate_get(
    start_server: StartServer, pki: Pki, client: str, cipher: str | None
) -> None:
    served = await start_server(ciphers=cipher)  # PSK and certificates on one context
    rc, out = await libcoap(
        client,
        "-c",
        pki.path("client.pem"),
        "-j",
        pki.path("client.key"),
        "-C",
        pki.path("ca.pem"),
        f"coaps://127.0.0.1:{served.port}/hello",
    )
    assert rc == 0, out
    assert "hello x509:CN=pen07-camera-0003" in out
    _, ident = served.established[0]
    assert not ident.is_psk
    assert ident.cipher == (cipher or "ECDHE-ECDSA-AES128-CCM8")  # CCM8 first by default
    assert ident.common_name == "pen07-camera-0003"
    assert ident.fingerprint == pki.client_cert.fingerprint(hashes.SHA256())
    assert ident.fingerprint is not None and ident.fingerprint.hex() in out


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
async def test_wrong_key_times_out(start_server: StartServer, client: str) -> None:
    served = await start_server(certs=False, handshake_timeout=2.0)
    _rc, out = await libcoap(
        client,
        "-u",
        IDENTITY.decode(),
        "-k",
        "not-the-right-key",
        f"coaps://127.0.0.1:{served.port}/hello",
        bound=4,
    )
    assert "hello" not in out
    assert not served.established
    # A wrong PSK shows only as a handshake that never finishes.
    assert await served.wait_for(lambda: served.counters.handshake_timeouts >= 1)
    assert served.counters.psk_timeouts >= 1
    assert served.ep.dtls.sessions == 0


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
async def test_unknown_identity_refused(start_server: StartServer, client: str) -> None:
    served = await start_server(certs=False)
    _rc, out = await libcoap(
        client,
        "-u",
        "pen99-stranger",
        "-k",
        KEY.decode(),
        f"coaps://127.0.0.1:{served.port}/hello",
        bound=3,
    )
    assert "hello" not in out
    assert await served.wait_for(lambda: served.counters.unknown_identity >= 1)
    assert "pen99-stranger" in served.ep.dtls.recent_refusals[0][2]
    assert not served.established
    assert served.ep.dtls.sessions == 0


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
async def test_certificate_from_other_ca_refused(
    start_server: StartServer, pki: Pki, client: str
) -> None:
    served = await start_server()
    _rc, out = await libcoap(
        client,
        "-c",
        pki.path("rogue.pem"),
        "-j",
        pki.path("rogue.key"),
        "-R",
        pki.path("ca.pem"),
        f"coaps://127.0.0.1:{served.port}/hello",
        bound=3,
    )
    assert "hello" not in out
    assert await served.wait_for(lambda: served.counters.bad_certificate >= 1)
    assert not served.established
    assert served.ep.dtls.sessions == 0


def test_certificate_required_without_psk(pki: Pki) -> None:
    """An ECDHE-ECDSA client without a certificate is refused."""
    srv = DtlsServer(
        DtlsConfig(
            psk_lookup=psk_lookup,
            certificate_chain=pki.server_chain,
            private_key=pki.server_key,
            client_cas=pki.ca_pem,
        )
    )
    ctx, keep = client_context(ca=pki.ca_pem, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(DtlsHandshakeError):
        run_in_memory(srv, DtlsClient(ctx, keep=keep), ("10.0.0.1", 5684))
    assert srv.counters.bad_certificate == 1
    assert srv.sessions == 0


# -- cookies and floods ------------------------------------------------------------------


def first_hello(identity: bytes = IDENTITY) -> bytes:
    ctx, keep = client_context(psk=(identity, KEY))
    (hello,) = DtlsClient(ctx, keep=keep).start()
    return hello


def with_cookie(hello: bytes, cookie: bytes) -> bytes:
    """The same ClientHello carrying `cookie` (lengths fixed up)."""
    body = HEADER_LEN + HANDSHAKE_HEADER_LEN
    sid_at = body + 2 + 32
    cookie_at = sid_at + 1 + hello[sid_at]
    old = hello[cookie_at]
    new = hello[:cookie_at] + bytes([len(cookie)]) + cookie + hello[cookie_at + 1 + old :]
    delta = len(cookie) - old
    rec_len = int.from_bytes(hello[11:13], "big") + delta
    msg_len = int.from_bytes(hello[HEADER_LEN + 1 : HEADER_LEN + 4], "big") + delta
    m = msg_len.to_bytes(3, "big")
    h = HEADER_LEN
    return (
        new[:11]
        + rec_len.to_bytes(2, "big")
        + new[13 : h + 1]
        + m
        + new[h + 4 : h + 9]
        + m
        + new[h + 12 :]
    )


def test_parse_client_hello() -> None:
    hello = first_hello()
    info = parse_client_hello(hello)
    assert info is not None
    assert info.cookie == b""
    forged = with_cookie(hello, b"\xaa" * COOKIE_LEN)
    info2 = parse_client_hello(forged)
    assert info2 is not None
    assert info2.cookie == b"\xaa" * COOKIE_LEN
    assert info2.random == info.random
    assert info2.params == info.params  # the cookie is not part of what it binds
    assert parse_client_hello(b"\x17" + hello[1:]) is None
    assert parse_client_hello(hello[:40]) is None
    assert parse_client_hello(b"") is None


def test_client_hello_flood_keeps_no_state() -> None:
    srv = DtlsServer(DtlsConfig(psk_lookup=psk_lookup))
    hello = first_hello()
    for i in range(1000):
        srv.receive_datagram(hello, (f"10.1.{i // 250}.{i % 250}", 40000 + i), 1.0 + i * 1e-3)
    assert srv.counters.hello_verify_sent == 1000
    assert len(srv.datagrams_to_send()) == 1000
    forged = with_cookie(hello, b"\x55" * COOKIE_LEN)
    for i in range(1000):
        srv.receive_datagram(forged, ("10.2.0.1", 40000 + i), 3.0)
    assert srv.counters.bad_cookies == 1000
    assert srv.sessions == 0
    assert srv.handshaking == 0
    assert srv.counters.handshakes_started == 0
    assert srv.get_timer() is None


async def test_client_hello_flood_over_udp(start_server: StartServer) -> None:
    served = await start_server(certs=False)
    hello = first_hello()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    try:
        for s in socks:
            s.connect(("127.0.0.1", served.port))
            s.setblocking(False)
        for i in range(1000):
            socks[i % len(socks)].send(hello)
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the server drain its socket
        await served.wait_for(lambda: served.counters.hello_verify_sent >= 1000)
        got = 0
        for s in socks:
            while True:
                try:
                    reply = s.recv(2048)
                except BlockingIOError:
                    break
                assert reply[0] == 22 and reply[HEADER_LEN] == 3  # HelloVerifyRequest
                got += 1
    finally:
        for s in socks:
            s.close()
    # Loopback UDP may drop under a small rmem_max; every hello that arrived was
    # answered statelessly.
    assert 0 < got <= served.counters.hello_verify_sent <= 1000
    assert served.ep.dtls.sessions == 0
    assert served.ep.dtls.handshaking == 0
    assert served.counters.handshakes_started == 0


def test_cookie_is_bound_to_the_address() -> None:
    srv = DtlsServer(DtlsConfig(psk_lookup=psk_lookup))
    ctx, keep = client_context(psk=(IDENTITY, KEY))
    cl = DtlsClient(ctx, keep=keep)
    (hello,) = cl.start()
    srv.receive_datagram(hello, ("10.0.0.1", 1000), 0.0)
    ((hvr, _),) = srv.datagrams_to_send()
    _, (hello2,) = cl.receive_datagram(hvr)
    assert parse_client_hello(hello2) is not None
    srv.receive_datagram(hello2, ("10.0.0.2", 1000), 0.1)  # replayed from elsewhere
    assert srv.counters.bad_cookies == 1
    assert srv.sessions == 0
    srv.receive_datagram(hello2, ("10.0.0.1", 1000), 0.2)
    assert srv.sessions == 1
    assert srv.counters.handshakes_started == 1


def test_cookie_secret_rotation() -> None:
    jar = CookieJar(lifetime=10.0)
    peer = b"('10.0.0.1', 5684)params"
    c = jar.make(peer, 0.0)
    assert jar.check(peer, c, 5.0)
    assert jar.check(peer, c, 15.0)  # previous secret still accepted
    assert not jar.check(peer + b"x", c, 15.0)
    assert not jar.check(peer, c, 40.0)  # two rotations later
    assert not jar.check(peer, c[:-1], 40.0)


# -- in-memory handshakes: table, timers, events -----------------------------------------


def run_in_memory(
    srv: DtlsServer, client: DtlsClient, addr: Any, now: float = 0.0, rounds: int = 12
) -> bool:
    out = client.start()
    for _ in range(rounds):
        for d in out:
            srv.receive_datagram(d, addr, now)
        back = [d for d, a in srv.datagrams_to_send() if a == addr]
        out = []
        for d in back:
            _, more = client.receive_datagram(d)
            out += more
        if client.established and not out:
            break
    return client.established


def psk_client(identity: bytes = IDENTITY, key: bytes = KEY, ciphers: str | None = None) -> Any:
    ctx, keep = client_context(psk=(identity, key), ciphers=ciphers)
    return DtlsClient(ctx, keep=keep)


def test_in_memory_psk_both_suites_and_data() -> None:
    srv = DtlsServer(DtlsConfig(psk_lookup=psk_lookup))
    for i, cipher in enumerate((CCM8, CBC)):
        addr = ("10.0.0.9", 6000 + i)
        cl = psk_client(ciphers=cipher)
        assert run_in_memory(srv, cl, addr)
        ident = srv.peer_identity(addr)
        assert ident is not None and ident.cipher == cipher and ident.psk_identity == IDENTITY
        (record,) = cl.send(b"\x40\x01\x00\x01")
        assert srv.receive_datagram(record, addr, 1.0) == [b"\x40\x01\x00\x01"]
        (back,) = srv.send(addr, b"\x60\x45\x00\x01")
        assert cl.receive_datagram(back) == ([b"\x60\x45\x00\x01"], [])
        assert srv.send(addr, b"x" * 17000) == []  # too large for a record: dropped
        assert srv.is_established(addr)
    assert srv.counters.send_too_large == 2
    events = [srv.next_event(), srv.next_event(), srv.next_event()]
    assert [type(e) for e in events] == [SessionEstablished, SessionEstablished, type(None)]


def test_certificate_flight_is_split_to_the_mtu(pki: Pki) -> None:
    srv = DtlsServer(
        DtlsConfig(
            certificate_chain=pki.server_chain + pki.ca_pem,  # a longer flight
            private_key=pki.server_key,
            client_cas=pki.ca_pem,
            mtu=400,
        )
    )
    ctx, keep = client_context(
        certificate=pki.client_pem, private_key=pki.client_key, ca=pki.ca_pem
    )
    cl = DtlsClient(ctx, mtu=400, keep=keep)
    addr = ("10.0.0.3", 7000)
    sizes: list[int] = []
    out = cl.start()
    for _ in range(12):
        for d in out:
            srv.receive_datagram(d, addr, 0.0)
        back = srv.datagrams_to_send()
        sizes += [len(d) for d, _ in back]
        out = []
        for d, _ in back:
            out += cl.receive_datagram(d)[1]
        if cl.established and not out:
            break
    assert cl.established
    assert max(sizes) <= 400
    assert len(sizes) > 3
    ident = srv.peer_identity(addr)
    assert ident is not None and ident.common_name == "pen07-camera-0003"


def test_session_table_cap_idle_expiry_and_eviction() -> None:
    srv = DtlsServer(
        DtlsConfig(psk_lookup=psk_lookup, max_sessions=2, idle_timeout=100.0, stale_after=50.0)
    )
    assert run_in_memory(srv, psk_client(), ("10.0.0.1", 1), now=0.0)
    assert run_in_memory(srv, psk_client(), ("10.0.0.2", 1), now=10.0)
    # full, and nobody is stale yet: a third peer is refused
    assert not run_in_memory(srv, psk_client(), ("10.0.0.3", 1), now=20.0, rounds=3)
    assert srv.counters.refused_full >= 1
    assert srv.sessions == 2
    # at 60 the first is stale: it gives way
    assert run_in_memory(srv, psk_client(), ("10.0.0.3", 1), now=60.0)
    assert srv.counters.sessions_evicted == 1
    assert srv.peer_identity(("10.0.0.1", 1)) is None
    timer = srv.get_timer()
    assert timer is not None and timer == pytest.approx(110.0)
    srv.handle_timer(110.0)  # 10.0.0.2 idle since 10
    assert srv.peer_identity(("10.0.0.2", 1)) is None
    assert srv.peer_identity(("10.0.0.3", 1)) is not None
    srv.handle_timer(200.0)
    assert srv.sessions == 0
    assert srv.counters.sessions_expired == 2
    reasons = []
    while (ev := srv.next_event()) is not None:
        if isinstance(ev, SessionClosed):
            reasons.append(ev.reason)
    assert reasons == ["evicted", "idle", "idle"]


def test_handshake_deadline_and_retransmission() -> None:
    srv = DtlsServer(DtlsConfig(psk_lookup=psk_lookup, handshake_timeout=5.0))
    cl = psk_client()
    addr = ("10.0.0.5", 9)
    (hello,) = cl.start()
    srv.receive_datagram(hello, addr, 0.0)
    ((hvr, _),) = srv.datagrams_to_send()
    _, (hello2,) = cl.receive_datagram(hvr)
    srv.receive_datagram(hello2, addr, 0.0)
    flight = srv.datagrams_to_send()
    assert flight and srv.handshaking == 1
    timer = srv.get_timer()
    assert timer is not None and 0.0 < timer <= 5.0
    srv.handle_timer(4.0)  # OpenSSL's own clock decides whether to resend; no crash
    srv.handle_timer(5.0)
    assert srv.sessions == 0 and srv.handshaking == 0
    assert srv.counters.handshake_timeouts == 1
    assert srv.get_timer() is None


def test_close_notify_and_rehandshake_from_same_address() -> None:
    srv = DtlsServer(DtlsConfig(psk_lookup=psk_lookup))
    addr = ("10.0.0.6", 5684)
    cl = psk_client()
    assert run_in_memory(srv, cl, addr)
    # the device reboots behind the same NAT mapping and handshakes again
    cl2 = psk_client()
    assert run_in_memory(srv, cl2, addr, now=5.0)
    assert srv.sessions == 1
    (record,) = cl2.send(b"again")
    assert srv.receive_datagram(record, addr, 6.0) == [b"again"]
    # the old session's records no longer decrypt
    (old,) = cl.send(b"stale")
    assert srv.receive_datagram(old, addr, 6.5) == []
    cl2.conn.shutdown()
    (alert,) = cl2._output()
    assert srv.receive_datagram(alert, addr, 7.0) == []
    assert srv.sessions == 0
    evs = []
    while (ev := srv.next_event()) is not None:
        evs.append(ev)
    closed = [e.reason for e in evs if isinstance(e, SessionClosed)]
    assert closed == ["new handshake", "closed by peer"]
    assert srv.send(addr, b"x") == []
    assert srv.counters.send_no_session == 1


def test_datagrams_from_strangers_are_dropped() -> None:
    srv = DtlsServer(DtlsConfig(psk_lookup=psk_lookup))
    assert srv.receive_datagram(b"\x17\xfe\xfd" + b"\x00" * 20, ("10.0.0.7", 1), 0.0) == []
    assert srv.receive_datagram(b"", ("10.0.0.7", 1), 0.0) == []
    assert srv.receive_datagram(b"\x40\x01\x00\x01", ("10.0.0.7", 1), 0.0) == []
    assert srv.counters.datagrams_dropped == 3
    assert srv.sessions == 0 and srv.datagrams_to_send() == []


def test_records_packing() -> None:
    def rec(n: int) -> bytes:
        return b"\x16\xfe\xfd" + b"\x00" * 8 + n.to_bytes(2, "big") + b"x" * n

    stream = rec(100) + rec(200) + rec(900) + rec(50)
    assert count_records(stream) == 4
    assert count_records(stream[:-1]) == 3
    dgrams = pack_records(stream, 400)
    assert b"".join(dgrams) == stream
    assert [count_records(d) for d in dgrams] == [2, 1, 1]
    assert pack_records(b"", 400) == []
    assert pack_records(rec(10), 400) == [rec(10)]


# -- server-initiated requests through the device's session ------------------------------


async def test_server_request_goes_through_the_device_session(start_server: StartServer) -> None:
    served = await start_server(certs=False, coap=CoapConfig(ack_timeout=0.3, max_retransmit=1))
    ep = served.ep
    port = served.port
    connected = asyncio.Event()
    loop = asyncio.get_running_loop()

    def device() -> tuple[tuple[str, int], Message]:
        """A pyOpenSSL DTLS client: handshake, then answer one request from the server."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        try:
            cl = psk_client()
            handshake_blocking(cl, sock, timeout=20.0)
            loop.call_soon_threadsafe(connected.set)
            plain = receive_blocking(cl, sock, timeout=20.0)
            assert plain, "no request from the server"
            request = Message.decode(plain[0])
            reply = Message(
                mtype=ACK,
                code=Code.CONTENT,
                mid=request.mid,
                token=request.token,
                payload=b"21.5",
            )
            for d in cl.send(reply.encode()):
                sock.send(d)
            return sock.getsockname(), request
        finally:
            sock.close()

    dev = asyncio.create_task(asyncio.to_thread(device))
    await asyncio.wait_for(connected.wait(), 30)
    (addr, ident) = served.established[0]
    assert ident.psk_identity == IDENTITY
    assert ep.peer_identity(addr) == ident
    response = await asyncio.wait_for(
        ep.request(addr, Message(code=Code.GET, mtype=CON).add(11, "3303").add(11, "0")), 30
    )
    dev_addr, request = await asyncio.wait_for(dev, 30)
    assert tuple(dev_addr) == tuple(addr)
    assert request.path_str() in ("/3303/0", "3303/0")
    assert response.code == Code.CONTENT and response.payload == b"21.5"
    # an address without a session gets nothing; the engine gives up on it
    with pytest.raises(CoapRequestError):
        await asyncio.wait_for(
            ep.request(("127.0.0.1", 9), Message(code=Code.GET, mtype=CON).add(11, "3")), 30
        )
    assert served.counters.send_no_session >= 1


async def test_server_retransmits_a_lost_flight(start_server: StartServer) -> None:
    """The client drops the server's first flight and never resends: the endpoint's
    DTLS timer must resend it."""
    served = await start_server(certs=False)
    port = served.port

    def device() -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(10.0)
        try:
            cl = psk_client()
            (hello,) = cl.start()
            sock.send(hello)
            _, out = cl.receive_datagram(sock.recv(4096))  # HelloVerifyRequest
            for d in out:
                sock.send(d)
            sock.recv(4096)  # the server's flight: dropped
            while not cl.established:  # no client timeouts: only the server may resend
                _, out = cl.receive_datagram(sock.recv(4096))
                for d in out:
                    sock.send(d)
            return True
        finally:
            sock.close()

    assert await asyncio.wait_for(asyncio.to_thread(device), 30)
    assert await served.wait_for(lambda: bool(served.established))
    assert served.counters.handshakes_completed == 1

"""DTLS 1.2 record framing, just enough for a server over memory BIOs.

A memory BIO is a byte stream: OpenSSL's records come out of it glued together,
so the server splits them on record headers and packs them into datagrams no
larger than the MTU (RFC 6347 4.1.1 allows several records per datagram, never
one record across two). Incoming ClientHellos are read here, before OpenSSL
sees them, to route them and to bind the cookie to the hello's parameters.
"""

from __future__ import annotations

HEADER_LEN = 13  # type, version, epoch, sequence number, length
HANDSHAKE_HEADER_LEN = 12  # type, length, message_seq, fragment offset and length

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

CLIENT_HELLO = 1


class ClientHello:
    """The parts of an unfragmented epoch-0 ClientHello the server routes on."""

    __slots__ = ("cookie", "params", "random")

    def __init__(self, random: bytes, cookie: bytes, params: bytes) -> None:
        self.random = random
        self.cookie = cookie
        # version, random, session id, cipher suites and compression methods:
        # what RFC 6347 4.2.1 suggests binding the cookie to.
        self.params = params


def parse_client_hello(datagram: bytes) -> ClientHello | None:
    """The ClientHello that opens `datagram`, or None if it does not start with one."""
    if len(datagram) < HEADER_LEN + HANDSHAKE_HEADER_LEN + 2 + 32 + 1 + 1:
        return None
    if datagram[0] != HANDSHAKE or datagram[1] != 0xFE or datagram[3:5] != b"\x00\x00":
        return None
    rec_len = int.from_bytes(datagram[11:13], "big")
    end = HEADER_LEN + rec_len
    if end > len(datagram):
        return None
    h = HEADER_LEN
    if datagram[h] != CLIENT_HELLO:
        return None
    msg_len = int.from_bytes(datagram[h + 1 : h + 4], "big")
    frag_off = int.from_bytes(datagram[h + 6 : h + 9], "big")
    frag_len = int.from_bytes(datagram[h + 9 : h + 12], "big")
    body = h + HANDSHAKE_HEADER_LEN
    if frag_off != 0 or frag_len != msg_len or body + msg_len > end:
        return None  # fragmented ClientHellos are not supported (nor by OpenSSL's listen)
    p = body + 2 + 32
    random = datagram[body + 2 : p]
    sid_end = p + 1 + datagram[p]
    if sid_end >= end:
        return None
    cookie_end = sid_end + 1 + datagram[sid_end]
    if cookie_end + 2 > end:
        return None
    cookie = datagram[sid_end + 1 : cookie_end]
    suites_end = cookie_end + 2 + int.from_bytes(datagram[cookie_end : cookie_end + 2], "big")
    if suites_end >= end:
        return None
    comp_end = suites_end + 1 + datagram[suites_end]
    if comp_end > end:
        return None
    params = datagram[body:sid_end] + datagram[cookie_end:comp_end]
    return ClientHello(random, cookie, params)


def count_records(data: bytes) -> int:
    """How many whole records `data` holds (trailing garbage is not counted)."""
    n = 0
    i = 0
    size = len(data)
    while i + HEADER_LEN <= size:
        i += HEADER_LEN + int.from_bytes(data[i + 11 : i + 13], "big")
        if i > size:
            break
        n += 1
    return n


def pack_records(data: bytes, mtu: int) -> list[bytes]:
    """Cut a stream of records into datagrams of at most `mtu` bytes.

    Whole records only; a record longer than `mtu` travels alone.
    """
    size = len(data)
    if size <= mtu:
        return [data] if data else []
    out: list[bytes] = []
    start = 0
    i = 0
    while i + HEADER_LEN <= size:
        nxt = i + HEADER_LEN + int.from_bytes(data[i + 11 : i + 13], "big")
        if nxt - start > mtu and i > start:
            out.append(data[start:i])
            start = i
        i = nxt
    if start < size:
        out.append(data[start:size])
    return out

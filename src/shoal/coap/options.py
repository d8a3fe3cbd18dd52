"""CoAP option numbers, their formats, and the Block option value.

Option values are kept as raw bytes in messages; this module converts them to
and from the uint / string forms the RFCs define.
"""

from __future__ import annotations

from dataclasses import dataclass

IF_MATCH = 1
URI_HOST = 3
ETAG = 4
IF_NONE_MATCH = 5
OBSERVE = 6
URI_PORT = 7
LOCATION_PATH = 8
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
URI_QUERY = 15
ACCEPT = 17
LOCATION_QUERY = 20
BLOCK2 = 23
BLOCK1 = 27
SIZE2 = 28
PROXY_URI = 35
PROXY_SCHEME = 39
SIZE1 = 60
NO_RESPONSE = 258

NAMES: dict[int, str] = {
    IF_MATCH: "If-Match",
    URI_HOST: "Uri-Host",
    ETAG: "ETag",
    IF_NONE_MATCH: "If-None-Match",
    OBSERVE: "Observe",
    URI_PORT: "Uri-Port",
    LOCATION_PATH: "Location-Path",
    URI_PATH: "Uri-Path",
    CONTENT_FORMAT: "Content-Format",
    MAX_AGE: "Max-Age",
    URI_QUERY: "Uri-Query",
    ACCEPT: "Accept",
    LOCATION_QUERY: "Location-Query",
    BLOCK2: "Block2",
    BLOCK1: "Block1",
    SIZE2: "Size2",
    PROXY_URI: "Proxy-Uri",
    PROXY_SCHEME: "Proxy-Scheme",
    SIZE1: "Size1",
    NO_RESPONSE: "No-Response",
}

UINT_OPTIONS = frozenset(
    {OBSERVE, URI_PORT, CONTENT_FORMAT, MAX_AGE, ACCEPT, BLOCK2, BLOCK1, SIZE2, SIZE1, NO_RESPONSE}
)
STRING_OPTIONS = frozenset(
    {URI_HOST, LOCATION_PATH, URI_PATH, URI_QUERY, LOCATION_QUERY, PROXY_URI, PROXY_SCHEME}
)

# Options this engine understands. An unknown *critical* option (odd number) in a
# request is answered 4.02 Bad Option; in a response it makes us reject it.
KNOWN = frozenset(NAMES)

# Options that are not part of the cache key of a request (RFC 7252 5.4.6,
# RFC 7959 2.10, RFC 7641 2): used to recognise "the same request" for block-wise.
NO_CACHE_KEY = frozenset({OBSERVE, BLOCK1, BLOCK2, SIZE1, SIZE2, ETAG, NO_RESPONSE})


def is_critical(number: int) -> bool:
    return bool(number & 1)


def encode_uint(value: int) -> bytes:
    """Shortest big-endian form; zero is the empty string (RFC 7252 3.2)."""
    if value < 0:
        raise ValueError("uint option values are non-negative")
    if value == 0:
        return b""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_uint(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


MAX_SZX = 6  # 1024 bytes; 7 is reserved (BERT in RFC 8323 only)


@dataclass(frozen=True, slots=True)
class Block:
    """A Block1/Block2 value: block number, more flag, size exponent (RFC 7959 2.2)."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 1 << (self.szx + 4)

    @property
    def offset(self) -> int:
        return self.num << (self.szx + 4)

    def encode(self) -> bytes:
        return encode_uint(self.num << 4 | (8 if self.more else 0) | self.szx)

    @classmethod
    def decode(cls, raw: bytes) -> Block:
        if len(raw) > 3:
            raise ValueError("Block option longer than 3 bytes")
        v = decode_uint(raw)
        return cls(v >> 4, bool(v & 8), v & 7)


def szx_for(size: int) -> int:
    """The size exponent for a block size of 16..1024 bytes (rounded down)."""
    size = max(16, min(size, 1024))
    return size.bit_length() - 5

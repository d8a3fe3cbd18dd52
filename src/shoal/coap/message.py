"""The CoAP message: one value type and its wire codec (RFC 7252 section 3).

Options are held as a list of `(number, raw bytes)` pairs in wire order. The
decoder makes one pass over the datagram and never raises anything but
`MessageFormatError`, which carries what the message layer needs to answer a
broken confirmable message with a Reset.
"""

from __future__ import annotations

from collections.abc import Iterable

from shoal.coap import options as o
from shoal.coap.codes import ACK, CON, NON, RST, code_str

Option = tuple[int, bytes]


class MessageFormatError(ValueError):
    """A datagram that is not a valid CoAP message.

    `mid` and `mtype` are set when the fixed header could be read, so the caller
    can reject a confirmable message with a Reset (RFC 7252 4.2).
    """

    def __init__(self, reason: str, mtype: int | None = None, mid: int | None = None) -> None:
        super().__init__(reason)
        self.mtype = mtype
        self.mid = mid


class Message:
    """A CoAP message. Mutable while being built; treat received ones as read-only."""

    __slots__ = ("code", "mid", "mtype", "options", "payload", "token")

    def __init__(
        self,
        mtype: int = CON,
        code: int = 0,
        mid: int = 0,
        token: bytes = b"",
        options: list[Option] | None = None,
        payload: bytes = b"",
    ) -> None:
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options: list[Option] = options if options is not None else []
        self.payload = payload

    # -- building ---------------------------------------------------------------

    def add(self, number: int, value: bytes | str | int) -> Message:
        """Append an option; str is UTF-8, int is the shortest uint."""
        if isinstance(value, str):
            raw = value.encode()
        elif isinstance(value, int):
            raw = o.encode_uint(value)
        else:
            raw = value
        self.options.append((number, raw))
        return self

    def set(self, number: int, value: bytes | str | int | None) -> Message:
        """Replace every occurrence of an option (None removes it)."""
        self.options = [opt for opt in self.options if opt[0] != number]
        if value is not None:
            self.add(number, value)
        return self

    def remove(self, number: int) -> Message:
        return self.set(number, None)

    # -- reading ----------------------------------------------------------------

    def opt(self, number: int) -> bytes | None:
        for num, value in self.options:
            if num == number:
                return value
        return None

    def opts(self, number: int) -> list[bytes]:
        return [value for num, value in self.options if num == number]

    def uint(self, number: int) -> int | None:
        raw = self.opt(number)
        return None if raw is None else int.from_bytes(raw, "big")

    @property
    def uri_path(self) -> list[str]:
        return [v.decode("utf-8", "replace") for n, v in self.options if n == o.URI_PATH]

    @property
    def uri_query(self) -> list[str]:
        return [v.decode("utf-8", "replace") for n, v in self.options if n == o.URI_QUERY]

    @property
    def location_path(self) -> list[str]:
        return [v.decode("utf-8", "replace") for n, v in self.options if n == o.LOCATION_PATH]

    @property
    def location_query(self) -> list[str]:
        return [v.decode("utf-8", "replace") for n, v in self.options if n == o.LOCATION_QUERY]

    @property
    def content_format(self) -> int | None:
        return self.uint(o.CONTENT_FORMAT)

    @property
    def accept(self) -> int | None:
        return self.uint(o.ACCEPT)

    @property
    def observe(self) -> int | None:
        return self.uint(o.OBSERVE)

    @property
    def max_age(self) -> int:
        age = self.uint(o.MAX_AGE)
        return 60 if age is None else age

    @property
    def block1(self) -> o.Block | None:
        raw = self.opt(o.BLOCK1)
        return None if raw is None else o.Block.decode(raw)

    @property
    def block2(self) -> o.Block | None:
        raw = self.opt(o.BLOCK2)
        return None if raw is None else o.Block.decode(raw)

    @property
    def size1(self) -> int | None:
        return self.uint(o.SIZE1)

    @property
    def size2(self) -> int | None:
        return self.uint(o.SIZE2)

    @property
    def etags(self) -> list[bytes]:
        return self.opts(o.ETAG)

    def path_str(self) -> str:
        return "/" + "/".join(self.uri_path)

    def cache_key(self, body: bool = False) -> tuple[int, tuple[Option, ...], bytes]:
        """What makes two requests 'the same' for block-wise transfers.

        With `body`, a FETCH's payload is part of it (RFC 8132 2.3): two
        Read-Composites of different paths are different requests.
        """
        opts = tuple(opt for opt in self.options if opt[0] not in o.NO_CACHE_KEY)
        return self.code, opts, self.payload if body and self.code == 5 else b""

    def unknown_critical(self) -> int | None:
        """The first critical option this engine does not implement, if any."""
        known = o.KNOWN
        for num, _ in self.options:
            if num & 1 and num not in known:
                return num
        return None

    # -- wire -------------------------------------------------------------------

    def encode(self) -> bytes:
        token = self.token
        if len(token) > 8:
            # would overflow into the type bits and make a different message
            raise ValueError("token longer than 8 bytes")
        head = bytes(
            (
                0x40 | self.mtype << 4 | len(token),
                self.code,
                self.mid >> 8 & 0xFF,
                self.mid & 0xFF,
            )
        )
        parts = [head, token]
        if self.options:
            parts.append(encode_options(self.options))
        if self.payload:
            parts.append(b"\xff")
            parts.append(self.payload)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Message:
        n = len(data)
        if n < 4:
            raise MessageFormatError("shorter than the 4-byte header")
        b0 = data[0]
        mtype = b0 >> 4 & 3
        mid = data[2] << 8 | data[3]
        if b0 >> 6 != 1:
            raise MessageFormatError("unknown CoAP version", None, None)
        tkl = b0 & 0x0F
        if tkl > 8:
            raise MessageFormatError("token length above 8", mtype, mid)
        code = data[1]
        pos = 4 + tkl
        if pos > n:
            raise MessageFormatError("truncated token", mtype, mid)
        token = data[4:pos]
        opts: list[Option] = []
        number = 0
        payload = b""
        while pos < n:
            byte = data[pos]
            pos += 1
            if byte == 0xFF:
                if pos >= n:
                    raise MessageFormatError("payload marker with no payload", mtype, mid)
                payload = data[pos:]
                break
            delta = byte >> 4
            length = byte & 0x0F
            if delta >= 13:
                if delta == 13:
                    if pos >= n:
                        raise MessageFormatError("truncated option delta", mtype, mid)
                    delta = data[pos] + 13
                    pos += 1
                elif delta == 14:
                    if pos + 1 >= n:
                        raise MessageFormatError("truncated option delta", mtype, mid)
                    delta = (data[pos] << 8 | data[pos + 1]) + 269
                    pos += 2
                else:
                    raise MessageFormatError("option delta 15 is reserved", mtype, mid)
            if length >= 13:
                if length == 13:
                    if pos >= n:
                        raise MessageFormatError("truncated option length", mtype, mid)
                    length = data[pos] + 13
                    pos += 1
                elif length == 14:
                    if pos + 1 >= n:
                        raise MessageFormatError("truncated option length", mtype, mid)
                    length = (data[pos] << 8 | data[pos + 1]) + 269
                    pos += 2
                else:
                    raise MessageFormatError("option length 15 is reserved", mtype, mid)
            number += delta
            end = pos + length
            if end > n:
                raise MessageFormatError("option value runs past the datagram", mtype, mid)
            opts.append((number, data[pos:end]))
            pos = end
        if code == 0 and (tkl or opts or payload):
            raise MessageFormatError("empty message with token, options or payload", mtype, mid)
        cls_ = code >> 5
        if cls_ in (1, 6, 7):
            raise MessageFormatError("reserved code class", mtype, mid)
        msg = cls.__new__(cls)
        msg.mtype = mtype
        msg.code = code
        msg.mid = mid
        msg.token = token
        msg.options = opts
        msg.payload = payload
        return msg

    def __repr__(self) -> str:
        kind = ("CON", "NON", "ACK", "RST")[self.mtype]
        opts = ", ".join(f"{o.NAMES.get(n, n)}={v!r}" for n, v in self.options)
        return (
            f"<Message {kind} {code_str(self.code)} mid={self.mid} token={self.token.hex()}"
            f" [{opts}] {len(self.payload)}B>"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.mtype == other.mtype
            and self.code == other.code
            and self.mid == other.mid
            and self.token == other.token
            and sorted(self.options, key=_num) == sorted(other.options, key=_num)
            and self.payload == other.payload
        )

    __hash__ = None  # type: ignore[assignment]


def _num(opt: Option) -> int:
    return opt[0]


def _ext(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    v = value - 269
    return 14, bytes((v >> 8, v & 0xFF))


def encode_options(options: Iterable[Option]) -> bytes:
    """Options in number order (stable for repeated ones), delta-encoded."""
    opts = options if isinstance(options, list) else list(options)
    out = bytearray()
    last = 0
    for number, value in opts:
        delta = number - last
        if delta < 0:  # not in number order (rare): encode a sorted copy instead
            return encode_options(sorted(opts, key=_num))
        last = number
        length = len(value)
        if delta < 13 and length < 13:
            out.append(delta << 4 | length)
        else:
            d, dx = _ext(delta)
            ln, lx = _ext(length)
            out.append(d << 4 | ln)
            out += dx
            out += lx
        out += value
    return bytes(out)


def empty(mtype: int, mid: int) -> bytes:
    """An Empty ACK or RST for `mid`: the most frequent tiny datagram."""
    return bytes((0x40 | mtype << 4, 0, mid >> 8 & 0xFF, mid & 0xFF))


__all__ = ["ACK", "CON", "NON", "RST", "Message", "MessageFormatError", "Option", "empty"]

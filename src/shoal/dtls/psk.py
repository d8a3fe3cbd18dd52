"""Pre-shared keys on a pyOpenSSL context, through the `cryptography` binding.

pyOpenSSL has no public PSK call. The OpenSSL binding that ships with
`cryptography` exposes `SSL_CTX_set_psk_server_callback` (and the client one),
so this module is the one place that reaches under pyOpenSSL for it. If a
future `cryptography` drops these symbols, `tests/test_dtls.py` fails loudly on
`require_psk_binding()` rather than letting PSK devices time out.

The cffi callback objects returned here must stay referenced as long as the
context lives (the server and client keep them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

log = logging.getLogger(__name__)

_binding = Binding()
ffi: Any = _binding.ffi
lib: Any = _binding.lib

REQUIRED_SYMBOLS = (
    "SSL_CTX_set_psk_server_callback",
    "SSL_CTX_set_psk_client_callback",
    "SSL_CTX_use_psk_identity_hint",
)

MAX_IDENTITY_LEN = 256  # OpenSSL's PSK_MAX_IDENTITY_LEN

PskLookup = Callable[[bytes], bytes | None]


class PskUnavailable(RuntimeError):
    """The `cryptography` binding no longer exposes the PSK callbacks."""


def missing_psk_symbols() -> list[str]:
    return [name for name in REQUIRED_SYMBOLS if not hasattr(lib, name)]


def require_psk_binding() -> None:
    missing = missing_psk_symbols()
    if missing or not getattr(lib, "Cryptography_HAS_PSK", True):
        raise PskUnavailable(
            "cryptography's OpenSSL binding lacks " + ", ".join(missing or ["PSK support"])
        )


def _ssl_ctx(context: SSL.Context) -> Any:
    return context._context  # the SSL_CTX* pyOpenSSL wraps


def set_psk_server_callback(
    context: SSL.Context, lookup: PskLookup, identity_hint: bytes | None = None
) -> Any:
    """Ask `lookup(identity)` for the key of each PSK handshake; None refuses it.

    Returns the cffi callback, which the caller keeps alive with the context.
    """
    require_psk_binding()

    def _server_cb(ssl: Any, identity: Any, psk: Any, max_len: int) -> int:
        try:
            ident = ffi.string(identity) if identity != ffi.NULL else b""
            key = lookup(ident)
        except Exception:
            log.exception("PSK lookup failed")
            return 0
        if not key or len(key) > max_len:
            return 0
        ffi.memmove(psk, key, len(key))
        return len(key)

    cb = ffi.callback("unsigned int(SSL *, char *, unsigned char *, unsigned int)")(_server_cb)
    lib.SSL_CTX_set_psk_server_callback(_ssl_ctx(context), cb)
    if (
        identity_hint is not None
        and lib.SSL_CTX_use_psk_identity_hint(_ssl_ctx(context), identity_hint) != 1
    ):
        raise ValueError("PSK identity hint refused by OpenSSL")
    return cb


def set_psk_client_callback(context: SSL.Context, identity: bytes, key: bytes) -> Any:
    """Make a client context answer every PSK handshake with `identity` and `key`."""
    require_psk_binding()
    if b"\0" in identity or len(identity) > MAX_IDENTITY_LEN:
        raise ValueError("PSK identity must be at most 256 bytes without NUL")

    def _client_cb(
        ssl: Any, hint: Any, ident_out: Any, max_ident: int, psk_out: Any, max_psk: int
    ) -> int:
        if len(identity) + 1 > max_ident or len(key) > max_psk:
            return 0
        ffi.memmove(ident_out, identity + b"\0", len(identity) + 1)
        ffi.memmove(psk_out, key, len(key))
        return len(key)

    cb = ffi.callback(
        "unsigned int(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)"
    )(_client_cb)
    lib.SSL_CTX_set_psk_client_callback(_ssl_ctx(context), cb)
    return cb

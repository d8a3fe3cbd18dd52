"""Stateless HelloVerifyRequest cookies (RFC 6347 4.2.1) with a rotating secret.

cookie = HMAC-SHA256(secret, client address || ClientHello parameters)[:16]

The secret changes every `lifetime` seconds; a cookie made with the previous
secret is still accepted, so a client that got its cookie just before a
rotation is not sent round again. Nothing is stored per client.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from hashlib import sha256

COOKIE_LEN = 16


class CookieJar:
    __slots__ = ("_current", "_lifetime", "_previous", "_rotated_at", "_urandom")

    def __init__(self, lifetime: float = 60.0, urandom: Callable[[int], bytes] = os.urandom):
        self._lifetime = lifetime
        self._urandom = urandom
        self._current = urandom(32)
        self._previous = self._current
        self._rotated_at: float | None = None

    def _rotate(self, now: float) -> None:
        at = self._rotated_at
        if at is None:
            self._rotated_at = now
            return
        if now - at < self._lifetime:
            return
        if now - at >= 2 * self._lifetime:
            self._previous = self._urandom(32)  # both secrets are too old
        else:
            self._previous = self._current
        self._current = self._urandom(32)
        self._rotated_at = now

    def make(self, peer: bytes, now: float) -> bytes:
        self._rotate(now)
        return hmac.new(self._current, peer, sha256).digest()[:COOKIE_LEN]

    def check(self, peer: bytes, cookie: bytes, now: float) -> bool:
        self._rotate(now)
        if len(cookie) != COOKIE_LEN:
            return False
        if hmac.compare_digest(hmac.new(self._current, peer, sha256).digest()[:COOKIE_LEN], cookie):
            return True
        previous = hmac.new(self._previous, peer, sha256).digest()[:COOKIE_LEN]
        return hmac.compare_digest(previous, cookie)

"""Passwords (argon2id through argon2-cffi) and random secrets.

Hashing runs in worker threads so the event loop, which also carries the CoAP
server, never stalls on it; a semaphore caps how many run at once, as each takes
tens of milliseconds and 64 MiB with argon2-cffi's default (RFC 9106) parameters.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "shoal_"
_ALPHABET = string.ascii_letters + string.digits


def new_secret() -> str:
    """256 random bits, URL-safe (session ids, CSRF tokens)."""
    return secrets.token_urlsafe(32)


def new_token() -> str:
    """An API token: `shoal_` and 256 random bits; recognisable in logs and by
    secret scanners."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_password(length: int = 20) -> str:
    """A random password to hand out once (bootstrap admin, `shoal user add`)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def digest(secret: str) -> str:
    """What is stored of a session id or token: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Passwords:
    """argon2id hashing off the event loop, with a bound on parallel work."""

    def __init__(self, hasher: PasswordHasher | None = None, parallel: int = 2) -> None:
        self.hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(parallel)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        if password_hash is None:
            # no such user: do the same work anyway, so timing does not tell
            if self._dummy is None:
                self._dummy = self.hasher.hash(new_secret())
            password_hash = self._dummy
            known = False
        else:
            known = True
        try:
            return self.hasher.verify(password_hash, password) and known
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

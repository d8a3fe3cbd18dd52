"""Secrets at rest: device PSKs and private keys, sealed with the node's master key.

A DTLS server must know each device's PSK in plaintext to finish a handshake, so
the security store cannot keep a one-way hash as it would for a password. It keeps
AES-256-GCM ciphertext instead, with the endpoint, purpose and field as associated
data (a sealed key copied onto another row does not open). The 32-byte master key
comes from `SHOAL_SECRET_KEY` (URL-safe base64) or from a file (by default
`<data dir>/secret.key`, created with mode 0600 on first start). A database dump
without that key gives away no device key; losing the key means re-provisioning
every device, so back it up apart from the database.

All nodes of a fleet must share the master key (same env variable or file).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
PREFIX = "v1:"
ENV_VAR = "SHOAL_SECRET_KEY"


class SealError(ValueError):
    """A sealed secret that does not open with this master key (or was tampered with)."""


class KeyBox:
    """Seals and opens small secrets with one master key."""

    __slots__ = ("_aead",)

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise ValueError(f"master key must be {MASTER_KEY_BYTES} bytes")
        self._aead = AESGCM(master_key)

    def __repr__(self) -> str:
        return "<KeyBox>"

    @classmethod
    def generate(cls) -> KeyBox:
        return cls(secrets.token_bytes(MASTER_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str) -> KeyBox:
        try:
            raw = base64.urlsafe_b64decode(text.strip().encode())
        except (binascii.Error, ValueError) as exc:
            raise ValueError("master key is not base64") from exc
        return cls(raw)

    @classmethod
    def load(cls, path: str | Path | None, env: dict[str, str] | None = None) -> KeyBox:
        """`SHOAL_SECRET_KEY` if set, else the key file at `path` (created if missing)."""
        environ = os.environ if env is None else env
        text = environ.get(ENV_VAR)
        if text:
            return cls.from_text(text)
        if path is None:
            raise ValueError(f"no master key: set {ENV_VAR} or give a key file")
        p = Path(path)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            encoded = base64.urlsafe_b64encode(secrets.token_bytes(MASTER_KEY_BYTES))
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(encoded + b"\n")
        return cls.from_text(p.read_text())

    def seal(self, secret: bytes, context: str) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret, context.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, token: str, context: str) -> bytes:
        if not token.startswith(PREFIX):
            raise SealError("unknown sealed format")
        try:
            raw = base64.urlsafe_b64decode(token[len(PREFIX) :].encode())
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (binascii.Error, ValueError, InvalidTag) as exc:
            raise SealError("sealed secret does not open with this master key") from exc

"""Tables of the security store: device credentials and provisioned Access Control.

A credential row belongs to an endpoint name, not to a `device` row: credentials
are created before the device ever registers (that is how it is allowed to).
One row per (endpoint, purpose): "server" credentials open `/rd`, "bootstrap"
credentials open `/bs`, and the two never stand in for each other.

Secrets at rest (`psk_key`, `private_key`) hold `shoal.security.keys.KeyBox`
ciphertext, never plaintext: a copy of the database alone does not give away
a device's key. A revoked row stays for the record, with its secrets and
identities cleared (so a new device may use them) and the identity it had in
`revoked_identity`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shoal.store.schema import Base


class SecurityCredentialRow(Base):
    __tablename__ = "security_credential"
    __table_args__ = (
        UniqueConstraint("endpoint", "purpose"),
        UniqueConstraint("purpose", "cert_fingerprint"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(255))
    # "server" or "bootstrap"
    purpose: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenant.id", ondelete="RESTRICT"), index=True
    )
    # the enclosure the device was provisioned for (correlation source 3)
    enclosure_code: Mapped[str | None] = mapped_column(String(16))
    # allowed security modes, comma-separated: "psk", "x509", "nosec"
    modes: Mapped[str] = mapped_column(String(32))
    # PSK identities are unique over both purposes: one DTLS lookup serves both
    psk_identity: Mapped[str | None] = mapped_column(String(255), unique=True)
    psk_key: Mapped[str | None] = mapped_column(Text)
    cert_common_name: Mapped[str | None] = mapped_column(String(255), index=True)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(64))  # SHA-256, hex
    # for a bootstrap server to deliver a certificate account (optional)
    certificate: Mapped[str | None] = mapped_column(Text)
    private_key: Mapped[str | None] = mapped_column(Text)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_identity: Mapped[str | None] = mapped_column(String(255))


class AccessControlRow(Base):
    """One Access Control (object 2) instance to provision on a device."""

    __tablename__ = "access_control_entry"
    __table_args__ = (UniqueConstraint("endpoint", "instance_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(255), index=True)
    instance_id: Mapped[int] = mapped_column(Integer)  # the /2/<i> instance
    object_id: Mapped[int] = mapped_column(Integer)  # /2/i/0
    object_instance_id: Mapped[int] = mapped_column(Integer)  # /2/i/1 (65535: the object)
    acl: Mapped[dict[str, Any]]  # /2/i/2: {"<short server id>": rights bits}
    owner: Mapped[int] = mapped_column(Integer)  # /2/i/3
    updated_at: Mapped[datetime]

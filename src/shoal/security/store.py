"""The security store: who may talk to Shoal, and how.

Per endpoint name there is at most one active credential per purpose:

- "server" credentials open the registration interface (`/rd`, `/dp`);
- "bootstrap" credentials open the bootstrap interface (`/bs`) only.

A credential allows some security modes: "psk" (an identity and a key Shoal
generates with `secrets`, shown once in the API answer), "x509" (a device
certificate from a configured CA, named by its SHA-256 fingerprint or its
common name) and "nosec" (plain CoAP, only where an operator allows it). It
also carries the tenant and, optionally, the enclosure the device was
provisioned for: enclosure correlation source 3.

The DTLS handshake asks `psk_lookup(identity)` for every PSK session, so the
active credentials live in an in-memory `CredentialCache` (dict lookups, no
I/O), loaded at start and updated by every create, rotate, update and revoke
of this store. Listeners hear of each change; the security service uses that
to close the DTLS sessions of revoked credentials.

PSKs are stored sealed (see `shoal.security.keys`): the DTLS server needs them
in plaintext, so they cannot be hashed; they are never logged, and `repr` of a
credential leaves them out. With several nodes each keeps its own cache; a
change made on one node reaches the others when they `load()` again (there is
no cross-node invalidation yet).
"""

from __future__ import annotations

import binascii
import enum
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from shoal.lwm2m.bootstrap import OBJECT_LEVEL, AccessControl
from shoal.security.keys import KeyBox
from shoal.store.db import Database
from shoal.store.errors import Conflict, Invalid, NotFound
from shoal.store.inventory import normalize_enclosure_code
from shoal.store.security_schema import AccessControlRow, SecurityCredentialRow

log = logging.getLogger(__name__)

MAX_PSK_IDENTITY = 128  # bytes; OpenSSL allows 256, many device stacks less
PSK_KEY_CHARS = 22  # secrets.token_urlsafe(16): 128 bits in URL-safe text


class Purpose(enum.StrEnum):
    SERVER = "server"
    BOOTSTRAP = "bootstrap"


class SecurityMode(enum.StrEnum):
    PSK = "psk"
    X509 = "x509"
    NOSEC = "nosec"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Credential:
    """One endpoint's credential for one purpose. Secrets are left out of `repr`."""

    endpoint: str
    purpose: Purpose
    modes: frozenset[SecurityMode]
    tenant_id: int | None = None
    enclosure_code: str | None = None
    psk_identity: bytes | None = None
    psk_key: bytes | None = field(default=None, repr=False)
    cert_common_name: str | None = None
    cert_fingerprint: bytes | None = None
    certificate_pem: str | None = field(default=None, repr=False)
    private_key_pem: bytes | None = field(default=None, repr=False)
    generation: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_identity: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, mode: SecurityMode) -> bool:
        return self.revoked_at is None and mode in self.modes

    def describe(self) -> dict[str, Any]:
        """Everything an operator may see again: no key, no private key."""
        return {
            "endpoint": self.endpoint,
            "purpose": str(self.purpose),
            "modes": sorted(str(m) for m in self.modes),
            "tenant_id": self.tenant_id,
            "enclosure_code": self.enclosure_code,
            "psk_identity": _text(self.psk_identity),
            "has_psk_key": self.psk_key is not None,
            "cert_common_name": self.cert_common_name,
            "cert_fingerprint": self.cert_fingerprint.hex() if self.cert_fingerprint else None,
            "has_certificate": self.certificate_pem is not None,
            "has_private_key": self.private_key_pem is not None,
            "generation": self.generation,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "revoked_at": _iso(self.revoked_at),
            "revoked_identity": self.revoked_identity,
            "active": self.active,
        }


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


@dataclass(frozen=True, slots=True)
class CredentialChange:
    """What a listener hears: `before` None on create, `after.active` False on revoke."""

    kind: str  # "created", "rotated", "updated", "revoked"
    before: Credential | None
    after: Credential


#: Access Control instances to provision are the bootstrap module's values
AccessControlEntry = AccessControl


# -- the hot-path cache ------------------------------------------------------------------


class CredentialCache:
    """Active credentials by endpoint, PSK identity, fingerprint and common name."""

    __slots__ = ("_by_cn", "_by_endpoint", "_by_fingerprint", "_by_psk")

    def __init__(self) -> None:
        self._by_endpoint: dict[tuple[str, Purpose], Credential] = {}
        self._by_psk: dict[bytes, Credential] = {}
        self._by_fingerprint: dict[tuple[Purpose, bytes], Credential] = {}
        self._by_cn: dict[tuple[Purpose, str], Credential] = {}

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def clear(self) -> None:
        self._by_endpoint.clear()
        self._by_psk.clear()
        self._by_fingerprint.clear()
        self._by_cn.clear()

    def put(self, cred: Credential) -> None:
        self.discard(cred.endpoint, cred.purpose)
        if not cred.active:
            return
        self._by_endpoint[(cred.endpoint, cred.purpose)] = cred
        if cred.psk_identity is not None and cred.psk_key is not None:
            self._by_psk[cred.psk_identity] = cred
        if cred.cert_fingerprint is not None:
            self._by_fingerprint[(cred.purpose, cred.cert_fingerprint)] = cred
        if cred.cert_common_name is not None and cred.cert_fingerprint is None:
            # a credential that names a fingerprint pins that certificate: its CN
            # alone does not let another certificate in
            self._by_cn[(cred.purpose, cred.cert_common_name)] = cred

    def discard(self, endpoint: str, purpose: Purpose) -> None:
        old = self._by_endpoint.pop((endpoint, purpose), None)
        if old is None:
            return
        if old.psk_identity is not None and self._by_psk.get(old.psk_identity) is old:
            del self._by_psk[old.psk_identity]
        if old.cert_fingerprint is not None:
            key = (old.purpose, old.cert_fingerprint)
            if self._by_fingerprint.get(key) is old:
                del self._by_fingerprint[key]
        if old.cert_common_name is not None:
            cn_key = (old.purpose, old.cert_common_name)
            if self._by_cn.get(cn_key) is old:
                del self._by_cn[cn_key]

    def psk_lookup(self, identity: bytes) -> bytes | None:
        """The DTLS server's question: the key of an active PSK identity, or None."""
        cred = self._by_psk.get(identity)
        if cred is None or SecurityMode.PSK not in cred.modes:
            return None
        return cred.psk_key

    def get(self, endpoint: str, purpose: Purpose) -> Credential | None:
        return self._by_endpoint.get((endpoint, purpose))

    def by_psk_identity(self, identity: bytes) -> Credential | None:
        return self._by_psk.get(identity)

    def by_certificate(
        self, purpose: Purpose, fingerprint: bytes | None, common_name: str | None
    ) -> Credential | None:
        """A credential naming this certificate: by fingerprint first, then by CN."""
        if fingerprint is not None:
            cred = self._by_fingerprint.get((purpose, fingerprint))
            if cred is not None:
                return cred
        if common_name is not None:
            return self._by_cn.get((purpose, common_name))
        return None

    def all(self) -> Iterable[Credential]:
        return self._by_endpoint.values()


# -- input checks ------------------------------------------------------------------------


def parse_modes(modes: Iterable[str | SecurityMode]) -> frozenset[SecurityMode]:
    out: set[SecurityMode] = set()
    for m in modes:
        try:
            out.add(SecurityMode(str(m).lower()))
        except ValueError:
            raise Invalid(f"unknown security mode {m!r}: use psk, x509 or nosec") from None
    if not out:
        raise Invalid("a credential needs at least one security mode")
    return frozenset(out)


def parse_fingerprint(text: str) -> bytes:
    """SHA-256 fingerprint as 64 hex digits, colons and spaces allowed."""
    cleaned = text.replace(":", "").replace(" ", "").strip()
    try:
        raw = binascii.unhexlify(cleaned)
    except (binascii.Error, ValueError):
        raise Invalid("certificate fingerprint must be hex (SHA-256)") from None
    if len(raw) != 32:
        raise Invalid("certificate fingerprint must be a SHA-256: 32 bytes, 64 hex digits")
    return raw


def certificate_facts(pem: str) -> tuple[str | None, bytes]:
    """(common name, SHA-256 fingerprint) of a PEM certificate."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise Invalid("certificate is not a PEM X.509 certificate") from None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    return (cn if isinstance(cn, str) else None), cert.fingerprint(hashes.SHA256())


def _check_private_key(pem: bytes) -> None:
    try:
        serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError):
        raise Invalid("private key is not an unencrypted PEM private key") from None


def _check_endpoint(endpoint: str) -> str:
    if not endpoint or len(endpoint.encode()) > 255:
        raise Invalid("endpoint name must be 1 to 255 bytes")
    return endpoint


def new_psk_key() -> bytes:
    """128 random bits as 22 URL-safe characters: usable as a text key (libcoap's -k)
    and as 44 hex digits by devices that take hex."""
    return secrets.token_urlsafe(16).encode()


def default_psk_identity(endpoint: str, purpose: Purpose) -> bytes:
    return (endpoint if purpose == Purpose.SERVER else endpoint + "/bs").encode()


class _Unset(enum.Enum):
    UNSET = 0


UNSET = _Unset.UNSET


# -- the store ---------------------------------------------------------------------------


class SecurityStore:
    """Credentials and Access Control provisioning in the database, with a hot cache."""

    def __init__(
        self, db: Database, keybox: KeyBox, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.db = db
        self.keybox = keybox
        self.cache = CredentialCache()
        self._clock = clock
        self._listeners: list[Callable[[CredentialChange], None]] = []

    # the DTLS server's and the correlation's questions, answered from memory

    def psk_lookup(self, identity: bytes) -> bytes | None:
        return self.cache.psk_lookup(identity)

    def provisioned_enclosure(self, endpoint: str) -> str | None:
        """The enclosure code the device's credentials were created for, if any."""
        for purpose in (Purpose.SERVER, Purpose.BOOTSTRAP):
            cred = self.cache.get(endpoint, purpose)
            if cred is not None and cred.enclosure_code:
                return cred.enclosure_code
        return None

    def add_listener(self, listener: Callable[[CredentialChange], None]) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _changed(self, kind: str, before: Credential | None, after: Credential) -> None:
        self.cache.put(after)
        change = CredentialChange(kind, before, after)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("security store listener failed")

    async def load(self) -> int:
        """(Re)load every active credential into the cache."""
        async with self.db.session(readonly=True) as s:
            rows = (
                await s.scalars(
                    select(SecurityCredentialRow).where(SecurityCredentialRow.revoked_at.is_(None))
                )
            ).all()
            creds = [self._credential(r) for r in rows]
        self.cache.clear()
        for c in creds:
            self.cache.put(c)
        return len(creds)

    # -- rows <-> values -------------------------------------------------------------

    @staticmethod
    def _context(endpoint: str, purpose: str, what: str) -> str:
        return f"shoal/{what}\0{endpoint}\0{purpose}"

    def _credential(self, row: SecurityCredentialRow) -> Credential:
        key = None
        if row.psk_key is not None:
            key = self.keybox.open(row.psk_key, self._context(row.endpoint, row.purpose, "psk"))
        private = None
        if row.private_key is not None:
            private = self.keybox.open(
                row.private_key, self._context(row.endpoint, row.purpose, "private-key")
            )
        return Credential(
            endpoint=row.endpoint,
            purpose=Purpose(row.purpose),
            modes=frozenset(SecurityMode(m) for m in row.modes.split(",") if m),
            tenant_id=row.tenant_id,
            enclosure_code=row.enclosure_code,
            psk_identity=row.psk_identity.encode() if row.psk_identity is not None else None,
            psk_key=key,
            cert_common_name=row.cert_common_name,
            cert_fingerprint=bytes.fromhex(row.cert_fingerprint) if row.cert_fingerprint else None,
            certificate_pem=row.certificate,
            private_key_pem=private,
            generation=row.generation,
            created_at=row.created_at,
            updated_at=row.updated_at,
            revoked_at=row.revoked_at,
            revoked_identity=row.revoked_identity,
        )

    def _fill(self, row: SecurityCredentialRow, cred: Credential) -> None:
        ep, purpose = cred.endpoint, str(cred.purpose)
        row.modes = ",".join(sorted(str(m) for m in cred.modes))
        row.tenant_id = cred.tenant_id
        row.enclosure_code = cred.enclosure_code
        row.psk_identity = _text(cred.psk_identity)
        row.psk_key = (
            self.keybox.seal(cred.psk_key, self._context(ep, purpose, "psk"))
            if cred.psk_key is not None
            else None
        )
        row.cert_common_name = cred.cert_common_name
        row.cert_fingerprint = cred.cert_fingerprint.hex() if cred.cert_fingerprint else None
        row.certificate = cred.certificate_pem
        row.private_key = (
            self.keybox.seal(cred.private_key_pem, self._context(ep, purpose, "private-key"))
            if cred.private_key_pem is not None
            else None
        )
        row.generation = cred.generation
        row.updated_at = cred.updated_at or self._clock()
        row.revoked_at = cred.revoked_at
        row.revoked_identity = cred.revoked_identity

    def _check_unique(self, cred: Credential) -> None:
        """Identities must name one credential (the cache knows every active one)."""
        if cred.psk_identity is not None:
            other = self.cache.by_psk_identity(cred.psk_identity)
            if other is not None and (other.endpoint, other.purpose) != (
                cred.endpoint,
                cred.purpose,
            ):
                raise Conflict(
                    f"PSK identity {_text(cred.psk_identity)!r} belongs to {other.endpoint}"
                )
        if cred.cert_fingerprint is not None:
            other = self.cache.by_certificate(cred.purpose, cred.cert_fingerprint, None)
            if other is not None and other.endpoint != cred.endpoint:
                raise Conflict(f"that certificate belongs to {other.endpoint}")
        if cred.cert_common_name is not None and cred.cert_fingerprint is None:
            other = self.cache.by_certificate(cred.purpose, None, cred.cert_common_name)
            if other is not None and other.endpoint != cred.endpoint:
                raise Conflict(
                    f"certificate common name {cred.cert_common_name!r} belongs to {other.endpoint}"
                )

    # -- create, rotate, update, revoke ------------------------------------------------

    async def create(
        self,
        endpoint: str,
        purpose: Purpose | str = Purpose.SERVER,
        modes: Iterable[str | SecurityMode] = (SecurityMode.PSK,),
        *,
        psk_identity: str | bytes | None = None,
        certificate_pem: str | None = None,
        cert_common_name: str | None = None,
        cert_fingerprint: str | bytes | None = None,
        private_key_pem: str | bytes | None = None,
        tenant_id: int | None = None,
        enclosure_code: str | None = None,
    ) -> Credential:
        """A new credential; a PSK key is generated. The answer is the only time the
        key leaves Shoal other than through the bootstrap server."""
        endpoint = _check_endpoint(endpoint)
        purpose = Purpose(purpose)
        mode_set = parse_modes(modes)
        identity: bytes | None = None
        key: bytes | None = None
        if SecurityMode.PSK in mode_set:
            if isinstance(psk_identity, str):
                identity = psk_identity.encode()
            else:
                identity = psk_identity or default_psk_identity(endpoint, purpose)
            if not identity or len(identity) > MAX_PSK_IDENTITY:
                raise Invalid(f"PSK identity must be 1 to {MAX_PSK_IDENTITY} bytes")
            key = new_psk_key()
        elif psk_identity:
            raise Invalid("a PSK identity needs the psk mode")
        cn, fp, cert_pem, private = self._certificate_inputs(
            mode_set, certificate_pem, cert_common_name, cert_fingerprint, private_key_pem
        )
        code = normalize_enclosure_code(enclosure_code) if enclosure_code else None
        now = self._clock()
        cred = Credential(
            endpoint=endpoint,
            purpose=purpose,
            modes=mode_set,
            tenant_id=tenant_id,
            enclosure_code=code,
            psk_identity=identity,
            psk_key=key,
            cert_common_name=cn,
            cert_fingerprint=fp,
            certificate_pem=cert_pem,
            private_key_pem=private,
            created_at=now,
            updated_at=now,
        )
        self._check_unique(cred)
        try:
            async with self.db.session() as s:
                row = await s.scalar(
                    select(SecurityCredentialRow).where(
                        SecurityCredentialRow.endpoint == endpoint,
                        SecurityCredentialRow.purpose == str(purpose),
                    )
                )
                if row is not None and row.revoked_at is None:
                    raise Conflict(f"{endpoint} already has {purpose} credentials")
                if row is None:
                    row = SecurityCredentialRow(
                        endpoint=endpoint, purpose=str(purpose), created_at=now
                    )
                    s.add(row)
                else:  # a revoked credential is replaced in place: the next generation
                    cred = replace(cred, generation=row.generation + 1)
                    row.created_at = now
                self._fill(row, cred)
        except IntegrityError as exc:
            raise Conflict(f"credential clashes with another device's: {exc.orig}") from None
        log.info(
            "created %s credentials for %s (%s)",
            purpose,
            endpoint,
            ",".join(sorted(mode_set)),
        )
        self._changed("created", None, cred)
        return cred

    def _certificate_inputs(
        self,
        modes: frozenset[SecurityMode],
        certificate_pem: str | None,
        cert_common_name: str | None,
        cert_fingerprint: str | bytes | None,
        private_key_pem: str | bytes | None,
    ) -> tuple[str | None, bytes | None, str | None, bytes | None]:
        if SecurityMode.X509 not in modes:
            if certificate_pem or cert_common_name or cert_fingerprint or private_key_pem:
                raise Invalid("certificate details need the x509 mode")
            return None, None, None, None
        cn, fp = cert_common_name, None
        if isinstance(cert_fingerprint, bytes):
            fp = cert_fingerprint
        elif cert_fingerprint:
            fp = parse_fingerprint(cert_fingerprint)
        if certificate_pem:
            pem_cn, pem_fp = certificate_facts(certificate_pem)
            if fp is not None and fp != pem_fp:
                raise Invalid("fingerprint does not match the certificate")
            fp = pem_fp
            cn = cn or pem_cn
        if cn is None and fp is None:
            raise Invalid("x509 needs a certificate, a common name or a SHA-256 fingerprint")
        private: bytes | None = None
        if private_key_pem:
            if not certificate_pem:
                raise Invalid("a private key needs its certificate")
            private = (
                private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
            )
            _check_private_key(private)
        return cn, fp, certificate_pem or None, private

    async def _row(self, s: Any, endpoint: str, purpose: Purpose) -> SecurityCredentialRow:
        row: SecurityCredentialRow | None = await s.scalar(
            select(SecurityCredentialRow).where(
                SecurityCredentialRow.endpoint == endpoint,
                SecurityCredentialRow.purpose == str(purpose),
            )
        )
        if row is None or row.revoked_at is not None:
            raise NotFound(f"{endpoint} has no active {purpose} credentials")
        return row

    async def rotate(self, endpoint: str, purpose: Purpose | str = Purpose.SERVER) -> Credential:
        """A new PSK key for the same identity (the old key stops working at once)."""
        purpose = Purpose(purpose)
        async with self.db.session() as s:
            row = await self._row(s, endpoint, purpose)
            before = self._credential(row)
            if SecurityMode.PSK not in before.modes:
                raise Invalid("only PSK keys rotate; replace a certificate with an update")
            after = replace(
                before,
                psk_key=new_psk_key(),
                generation=before.generation + 1,
                updated_at=self._clock(),
            )
            self._fill(row, after)
        log.info("rotated the %s PSK of %s (generation %d)", purpose, endpoint, after.generation)
        self._changed("rotated", before, after)
        return after

    async def update(
        self,
        endpoint: str,
        purpose: Purpose | str = Purpose.SERVER,
        *,
        modes: Iterable[str | SecurityMode] | _Unset = UNSET,
        enclosure_code: str | _Unset | None = UNSET,
        tenant_id: int | _Unset | None = UNSET,
        certificate_pem: str | _Unset | None = UNSET,
        cert_common_name: str | _Unset | None = UNSET,
        cert_fingerprint: str | _Unset | None = UNSET,
    ) -> Credential:
        """Change modes, enclosure, tenant or certificate; a PSK key is generated when
        the psk mode is added, and dropped when it is removed."""
        purpose = Purpose(purpose)
        async with self.db.session() as s:
            row = await self._row(s, endpoint, purpose)
            before = self._credential(row)
            after = before
            if not isinstance(modes, _Unset):
                mode_set = parse_modes(modes)
                after = replace(after, modes=mode_set)
                if SecurityMode.PSK in mode_set and after.psk_key is None:
                    after = replace(
                        after,
                        psk_identity=default_psk_identity(endpoint, purpose),
                        psk_key=new_psk_key(),
                    )
                elif SecurityMode.PSK not in mode_set:
                    after = replace(after, psk_identity=None, psk_key=None)
            if not isinstance(enclosure_code, _Unset):
                code = normalize_enclosure_code(enclosure_code) if enclosure_code else None
                after = replace(after, enclosure_code=code)
            if not isinstance(tenant_id, _Unset):
                after = replace(after, tenant_id=tenant_id)
            cert_given = not (
                isinstance(certificate_pem, _Unset)
                and isinstance(cert_common_name, _Unset)
                and isinstance(cert_fingerprint, _Unset)
            )
            pem: str | None
            cn: str | None
            fp: str | bytes | None
            private: bytes | None
            if cert_given:
                pem = None if isinstance(certificate_pem, _Unset) else certificate_pem
                cn = None if isinstance(cert_common_name, _Unset) else cert_common_name
                fp = None if isinstance(cert_fingerprint, _Unset) else cert_fingerprint
                # a private key kept for bootstrap belongs to its certificate only
                same = pem is not None and pem == after.certificate_pem
                private = after.private_key_pem if same else None
            elif SecurityMode.X509 in after.modes:
                pem, cn = after.certificate_pem, after.cert_common_name
                fp, private = after.cert_fingerprint, after.private_key_pem
            else:
                pem = cn = fp = private = None
            c_cn, c_fp, c_pem, c_priv = self._certificate_inputs(after.modes, pem, cn, fp, private)
            after = replace(
                after,
                cert_common_name=c_cn,
                cert_fingerprint=c_fp,
                certificate_pem=c_pem,
                private_key_pem=c_priv,
            )
            if after == before:
                return before
            after = replace(after, updated_at=self._clock())
            self._check_unique(after)
            self._fill(row, after)
        log.info("updated %s credentials of %s", purpose, endpoint)
        self._changed("updated", before, after)
        return after

    async def revoke(self, endpoint: str, purpose: Purpose | str = Purpose.SERVER) -> Credential:
        """Stop the credential now: secrets and identities cleared, the row kept."""
        purpose = Purpose(purpose)
        async with self.db.session() as s:
            row = await self._row(s, endpoint, purpose)
            before = self._credential(row)
            identity = _text(before.psk_identity) or before.cert_common_name
            if identity is None and before.cert_fingerprint is not None:
                identity = before.cert_fingerprint.hex()
            after = replace(
                before,
                psk_identity=None,
                psk_key=None,
                cert_common_name=None,
                cert_fingerprint=None,
                certificate_pem=None,
                private_key_pem=None,
                revoked_at=self._clock(),
                revoked_identity=identity,
                updated_at=self._clock(),
            )
            self._fill(row, after)
        log.warning("revoked %s credentials of %s (identity %s)", purpose, endpoint, identity)
        self._changed("revoked", before, after)
        return after

    async def get(self, endpoint: str, purpose: Purpose | str = Purpose.SERVER) -> Credential:
        """The stored credential, revoked or not (NotFound if there never was one)."""
        async with self.db.session(readonly=True) as s:
            row = await s.scalar(
                select(SecurityCredentialRow).where(
                    SecurityCredentialRow.endpoint == endpoint,
                    SecurityCredentialRow.purpose == str(Purpose(purpose)),
                )
            )
            if row is None:
                raise NotFound(f"{endpoint} has no {Purpose(purpose)} credentials")
            return self._credential(row)

    async def list_credentials(self, endpoint: str | None = None) -> list[Credential]:
        async with self.db.session(readonly=True) as s:
            q = select(SecurityCredentialRow).order_by(
                SecurityCredentialRow.endpoint, SecurityCredentialRow.purpose
            )
            if endpoint is not None:
                q = q.where(SecurityCredentialRow.endpoint == endpoint)
            return [self._credential(r) for r in (await s.scalars(q)).all()]

    # -- Access Control provisioning ---------------------------------------------------

    async def access_control(self, endpoint: str) -> list[AccessControlEntry]:
        async with self.db.session(readonly=True) as s:
            rows = (
                await s.scalars(
                    select(AccessControlRow)
                    .where(AccessControlRow.endpoint == endpoint)
                    .order_by(AccessControlRow.instance_id)
                )
            ).all()
            return [
                AccessControlEntry(
                    r.instance_id,
                    r.object_id,
                    r.object_instance_id,
                    {int(k): int(v) for k, v in r.acl.items()},
                    r.owner,
                )
                for r in rows
            ]

    async def set_access_control(
        self, endpoint: str, entries: Iterable[AccessControlEntry]
    ) -> list[AccessControlEntry]:
        """Replace the Access Control instances the bootstrap server writes."""
        endpoint = _check_endpoint(endpoint)
        items = sorted(entries, key=lambda e: e.instance_id)
        seen: set[int] = set()
        for e in items:
            _check_acl(e)
            if e.instance_id in seen:
                raise Invalid(f"Access Control instance {e.instance_id} given twice")
            seen.add(e.instance_id)
        now = self._clock()
        async with self.db.session() as s:
            await s.execute(delete(AccessControlRow).where(AccessControlRow.endpoint == endpoint))
            for e in items:
                s.add(
                    AccessControlRow(
                        endpoint=endpoint,
                        instance_id=e.instance_id,
                        object_id=e.object_id,
                        object_instance_id=e.object_instance_id,
                        acl={str(k): v for k, v in e.acl.items()},
                        owner=e.owner,
                        updated_at=now,
                    )
                )
        return items


def _check_acl(e: AccessControlEntry) -> None:
    if not 0 <= e.instance_id < 65535:
        raise Invalid("Access Control instance id must be 0..65534")
    if not 0 <= e.object_id <= 65535 or e.object_id == 2:
        raise Invalid("Access Control object id must be 0..65535 and not 2")
    if not 0 <= e.object_instance_id <= OBJECT_LEVEL:
        raise Invalid("object instance id must be 0..65535 (65535: the whole object)")
    if not 0 <= e.owner <= 65535:
        raise Invalid("owner must be a Short Server ID")
    for ssid, rights in e.acl.items():
        if not 0 <= ssid <= 65535:
            raise Invalid(f"ACL key {ssid} is not a Short Server ID")
        if not 0 <= rights <= 31:
            raise Invalid(f"ACL rights {rights} must be 0..31 (R1 W2 E4 D8 C16)")

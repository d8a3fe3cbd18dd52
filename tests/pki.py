"""A small PKI for DTLS tests: a farm CA, a server certificate, device certificates,
and a second CA whose certificates Shoal must refuse.

Shared by `test_dtls.py`, `test_security.py` and `test_bootstrap.py`; everything is
made fresh (EC P-256) so nothing secret is checked in.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    dir: Path
    ca_pem: bytes
    server_chain: bytes
    server_key: bytes
    client_cert: x509.Certificate
    client_pem: bytes
    client_key: bytes
    rogue_pem: bytes
    rogue_key: bytes
    ca_cert: x509.Certificate | None = None
    ca_key: ec.EllipticCurvePrivateKey | None = None

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def issue(self, cn: str, name: str | None = None) -> tuple[x509.Certificate, str, str]:
        """A device certificate for `cn` from the farm CA, written to `name`.pem/.key;
        returns the certificate and the two file paths."""
        assert self.ca_cert is not None and self.ca_key is not None
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert(cn, key, (self.ca_cert.subject, self.ca_key))
        stem = name or cn
        (self.dir / f"{stem}.pem").write_bytes(pem(cert))
        (self.dir / f"{stem}.key").write_bytes(key_pem(key))
        return cert, self.path(f"{stem}.pem"), self.path(f"{stem}.key")


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (name, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [x509.OID_SERVER_AUTH if server else x509.OID_CLIENT_AUTH]
                + ([x509.OID_CLIENT_AUTH] if server else [])
            ),
            critical=False,
        )
        if issuer is not None:
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
            )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(d: Path) -> Pki:
    """The farm CA, `localhost` server, device `pen07-camera-0003`, and a rogue device
    with the same name from another CA; every file written under `d`."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("Shoal test farm CA", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = make_cert("localhost", srv_key, (ca.subject, ca_key), server=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = make_cert("pen07-camera-0003", cli_key, (ca.subject, ca_key))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = make_cert("Somebody else's CA", other_key, ca=True)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = make_cert("pen07-camera-0003", rogue_key, (other.subject, other_key))
    p = Pki(
        dir=d,
        ca_pem=pem(ca),
        server_chain=pem(srv),
        server_key=key_pem(srv_key),
        client_cert=cli,
        client_pem=pem(cli),
        client_key=key_pem(cli_key),
        rogue_pem=pem(rogue),
        rogue_key=key_pem(rogue_key),
        ca_cert=ca,
        ca_key=ca_key,
    )
    files = {
        "ca.pem": p.ca_pem,
        "server.pem": p.server_chain,
        "server.key": p.server_key,
        "client.pem": p.client_pem,
        "client.key": p.client_key,
        "rogue.pem": p.rogue_pem,
        "rogue.key": p.rogue_key,
        "other-ca.pem": pem(other),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return p

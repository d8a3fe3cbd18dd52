"""DTLS 1.2 server sessions (PSK and X.509) for CoAP, over pyOpenSSL memory BIOs.

`DtlsServer` is the sans-IO core (cookie exchange, session table, identity of
the peer); `DtlsCoapEndpoint` (in `shoal.dtls.endpoint`) runs it under the CoAP
endpoint on one UDP socket.
"""

from shoal.dtls.server import (
    DEFAULT_CIPHERS,
    DtlsConfig,
    DtlsCounters,
    DtlsServer,
    PeerIdentity,
    SessionClosed,
    SessionEstablished,
)

__all__ = [
    "DEFAULT_CIPHERS",
    "DtlsConfig",
    "DtlsCounters",
    "DtlsServer",
    "PeerIdentity",
    "SessionClosed",
    "SessionEstablished",
]

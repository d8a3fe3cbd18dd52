"""Transmission parameters (RFC 7252 4.8) and the engine's memory caps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoapConfig:
    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    nstart: int = 1
    # How long a duplicate CON/NON is recognised and answered from cache.
    exchange_lifetime: float = 247.0
    non_lifetime: float = 145.0
    # How long a client waits for a separate or NON response before failing.
    response_timeout: float = 93.0
    # A deferred CON request gets an Empty ACK after this long without a response.
    ack_delay: float = 1.0
    # Memory caps: each bounds one table; the oldest entries go first.
    max_dedup_entries: int = 100_000
    max_exchanges: int = 50_000
    max_reassemblies: int = 1_000
    max_body_size: int = 64 * 1024 * 1024
    max_block2_cache: int = 1_000
    max_observers: int = 100_000
    block_lifetime: float = 60.0
    # Preferred block size exponent: 6 = 1024 bytes.
    block_szx: int = 6
    # Observe server: every Nth notification (and at least daily) is confirmable
    # so observers that vanished are noticed (RFC 7641 4.5).
    notify_con_every: int = 20
    notify_con_interval: float = 86400.0

    @property
    def max_transmit_span(self) -> float:
        return self.ack_timeout * ((1 << self.max_retransmit) - 1) * self.ack_random_factor

    @property
    def block_size(self) -> int:
        return 1 << (self.block_szx + 4)

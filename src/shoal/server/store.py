"""Where registrations live: an interface and the in-memory implementation.

The in-memory store is the single-node default; a Redis store (scale-out) keeps
the same interface. Expiry uses one heap of (deadline, id) with lazy deletion,
so an Update costs a push, not a search.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Protocol

from shoal.server.registration import Registration


class RegistrationStore(Protocol):
    def add(self, registration: Registration) -> Registration | None:
        """Store; returns the registration it replaced for the same endpoint."""
        ...

    def touch(self, registration: Registration) -> None:
        """The registration's expiry moved (Update)."""
        ...

    def remove(self, registration_id: str) -> Registration | None: ...

    def get(self, registration_id: str) -> Registration | None: ...

    def by_endpoint(self, endpoint: str) -> Registration | None: ...

    def pop_expired(self, now: float) -> list[Registration]: ...

    def __iter__(self) -> Iterator[Registration]: ...

    def __len__(self) -> int: ...


class InMemoryRegistrationStore:
    """Dicts by id and endpoint plus an expiry heap."""

    def __init__(self) -> None:
        self._by_id: dict[str, Registration] = {}
        self._by_ep: dict[str, Registration] = {}
        self._expiry: list[tuple[float, str]] = []

    def add(self, registration: Registration) -> Registration | None:
        old = self._by_ep.get(registration.endpoint)
        if old is not None:
            self._by_id.pop(old.id, None)
        self._by_id[registration.id] = registration
        self._by_ep[registration.endpoint] = registration
        heapq.heappush(self._expiry, (registration.expires_at, registration.id))
        return old

    def touch(self, registration: Registration) -> None:
        heapq.heappush(self._expiry, (registration.expires_at, registration.id))
        if len(self._expiry) > 4 * len(self._by_id) + 1024:
            self._compact()

    def _compact(self) -> None:
        self._expiry = [(r.expires_at, r.id) for r in self._by_id.values()]
        heapq.heapify(self._expiry)

    def remove(self, registration_id: str) -> Registration | None:
        reg = self._by_id.pop(registration_id, None)
        if reg is not None and self._by_ep.get(reg.endpoint) is reg:
            del self._by_ep[reg.endpoint]
        return reg

    def get(self, registration_id: str) -> Registration | None:
        return self._by_id.get(registration_id)

    def by_endpoint(self, endpoint: str) -> Registration | None:
        return self._by_ep.get(endpoint)

    def pop_expired(self, now: float) -> list[Registration]:
        expired: list[Registration] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            deadline, rid = heapq.heappop(heap)
            reg = self._by_id.get(rid)
            if reg is not None and reg.expires_at == deadline and deadline <= now:
                self.remove(rid)
                expired.append(reg)
        return expired

    def next_expiry(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

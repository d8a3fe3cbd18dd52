"""The live feed: what happens in the fleet, for the UI and API watchers.

Each watcher gets a bounded queue; a slow watcher loses its oldest items (and
is told how many) rather than holding memory or slowing the server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FeedFilter:
    farm_id: int | None = None
    enclosure_id: int | None = None
    endpoint: str | None = None
    kinds: frozenset[str] | None = None

    def accepts(self, item: dict[str, Any]) -> bool:
        if self.kinds is not None and item.get("kind") not in self.kinds:
            return False
        if self.endpoint is not None and item.get("endpoint") != self.endpoint:
            return False
        if self.farm_id is not None and item.get("farm_id") != self.farm_id:
            return False
        return not (self.enclosure_id is not None and item.get("enclosure_id") != self.enclosure_id)


class LiveFeed:
    def __init__(self, queue_size: int = 1000) -> None:
        self._watchers: dict[int, tuple[FeedFilter, asyncio.Queue[dict[str, Any]]]] = {}
        self._ids = itertools.count(1)
        self._queue_size = queue_size
        self.dropped = 0
        self._seq = itertools.count(1)

    def publish(self, kind: str, **fields: Any) -> None:
        item = {"id": next(self._seq), "kind": kind, **fields}
        for flt, queue in self._watchers.values():
            if not flt.accepts(item):
                continue
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(item)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def watch(self, flt: FeedFilter | None = None) -> AsyncIterator[dict[str, Any]]:
        wid = next(self._ids)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._watchers[wid] = (flt or FeedFilter(), queue)
        try:
            while True:
                yield await queue.get()
        finally:
            del self._watchers[wid]

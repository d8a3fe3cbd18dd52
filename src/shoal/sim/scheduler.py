"""One timer heap for a whole simulated fleet, and the simulated clock.

Ten thousand devices each sampling their sensors, renewing their registration and
checking their observations would mean tens of thousands of asyncio timer handles
and tasks. Instead every device puts plain callbacks in one heap; a single loop
timer wakes for the earliest and runs everything due within a few milliseconds of
it, so a fleet costs one wake-up per batch rather than one per device. Callbacks
are synchronous; only a callback that starts network I/O spawns a task.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Timer:
    """A scheduled callback; `cancel()` makes the heap skip it."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], object]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Callbacks at loop times, batched: entries due within `batch` seconds run together."""

    def __init__(self, batch: float = 0.005) -> None:
        self.loop = asyncio.get_running_loop()
        self.batch = batch
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._closed = False
        self.errors = 0

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, fn: Callable[[], object]) -> Timer:
        timer = Timer(when, fn)
        if self._closed:
            timer.cancelled = True
            return timer
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        if self._armed_at is None or when < self._armed_at:
            self._arm(when)
        return timer

    def call_later(self, delay: float, fn: Callable[[], object]) -> Timer:
        return self.call_at(self.loop.time() + max(0.0, delay), fn)

    def __len__(self) -> int:
        return len(self._heap)

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_at = None
        self._heap.clear()

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = None
        heap = self._heap
        limit = self.loop.time() + self.batch
        while heap and heap[0][0] <= limit:
            timer = heapq.heappop(heap)[2]
            if timer.cancelled:
                continue
            timer.cancelled = True  # fired: a late cancel() is harmless
            try:
                timer.fn()
            except Exception:
                self.errors += 1
                log.exception("simulator timer callback failed")
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if heap and not self._closed:
            self._arm(heap[0][0])


class SimClock:
    """Simulated wall-clock time: starts at the real time, runs `scale` times faster.

    Sensor values follow daily cycles on this clock, so a scale of 1440 shows a
    whole simulated day per real minute.
    """

    __slots__ = ("_loop", "_t0", "epoch0", "scale")

    def __init__(self, scale: float = 1.0, epoch0: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self.epoch0 = time.time() if epoch0 is None else epoch0
        self.scale = scale

    def now(self) -> float:
        """Simulated seconds since the Unix epoch."""
        return self.epoch0 + (self._loop.time() - self._t0) * self.scale

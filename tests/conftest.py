"""Shared test settings: nothing here knows about any one protocol layer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

T = TypeVar("T")

# The test machine is small and busy: no per-example deadline, and a slow data
# generator is not a failure.
settings.register_profile(
    "shoal",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("shoal")


@pytest.fixture
def uvloop_run() -> Callable[..., Any]:
    """Run a coroutine to completion on uvloop, the loop production uses.

    `uvloop_run(coro, timeout=60)` fails the test with TimeoutError after
    `timeout` seconds instead of hanging. Falls back to the default loop where
    uvloop is missing.
    """

    def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        try:
            import uvloop

            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            factory = asyncio.new_event_loop

        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await coro

        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(bounded())

    return run

"""Events the LwM2M server publishes; domain services subscribe to them.

Handlers run synchronously on the event loop, in subscription order. A handler
that must do I/O schedules its own task; a failing handler is logged and does
not stop the others (one broken subscriber must not stall the server).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path

if TYPE_CHECKING:
    from shoal.server.observation import Observation
    from shoal.server.registration import Registration

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Registered:
    registration: Registration
    replaced: Registration | None = None  # a re-register of a known endpoint


@dataclass(frozen=True, slots=True)
class Updated:
    registration: Registration
    address_changed: bool = False
    objects_changed: bool = False


@dataclass(frozen=True, slots=True)
class Deregistered:
    registration: Registration


@dataclass(frozen=True, slots=True)
class Expired:
    registration: Registration


@dataclass(frozen=True, slots=True)
class Notification:
    registration: Registration
    observation: Observation
    values: dict[Path, Value]
    timestamped: list[tuple[float | None, dict[Path, Value]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SendReceived:
    """Data the device pushed with the 1.1 Send operation (POST /dp)."""

    registration: Registration
    timestamped: list[tuple[float | None, dict[Path, Value]]]


@dataclass(frozen=True, slots=True)
class RequestFailed:
    registration: Registration
    operation: str
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ObservationEnded:
    registration: Registration
    observation: Observation
    reason: str


ServerEvent = (
    Registered
    | Updated
    | Deregistered
    | Expired
    | Notification
    | SendReceived
    | RequestFailed
    | ObservationEnded
)

E = TypeVar("E")


class EventBus:
    """Typed publish/subscribe within one process."""

    def __init__(self) -> None:
        self._subs: dict[type, list[Callable[[Any], None]]] = {}
        self.handler_errors = 0

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call `handler` for every event of `kind`; returns an unsubscribe function."""
        handlers = self._subs.setdefault(kind, [])
        handlers.append(handler)

        def unsubscribe() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return unsubscribe

    def publish(self, event: object) -> None:
        handlers = self._subs.get(type(event))
        if not handlers:
            return
        for handler in list(handlers):
            try:
                handler(event)
            except Exception:
                self.handler_errors += 1
                log.exception("event handler failed for %s", type(event).__name__)

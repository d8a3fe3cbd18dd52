"""Observations the server holds on devices' resources."""

from __future__ import annotations

import itertools
from typing import Any

from shoal.lwm2m.path import Path

_ids = itertools.count(1)


class Observation:
    """One Observe (or Observe-Composite) the server asked a device for."""

    __slots__ = (
        "coap",
        "composite",
        "content_format",
        "created_at",
        "endpoint",
        "id",
        "notifications",
        "paths",
        "registration_id",
    )

    def __init__(
        self,
        registration_id: str,
        endpoint: str,
        paths: tuple[Path, ...],
        composite: bool,
        content_format: int | None,
        created_at: float,
    ) -> None:
        self.id = next(_ids)
        self.registration_id = registration_id
        self.endpoint = endpoint
        self.paths = paths
        self.composite = composite
        self.content_format = content_format
        self.created_at = created_at
        self.notifications = 0
        self.coap: Any = None  # the CoAP-level observation handle

    @property
    def path(self) -> Path:
        return self.paths[0]

    def __repr__(self) -> str:
        paths = ",".join(str(p) for p in self.paths)
        return f"<Observation {self.id} {self.endpoint} {paths}>"

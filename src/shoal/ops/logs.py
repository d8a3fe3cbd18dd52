"""Structured logs: one JSON object per line (`SHOAL_LOG_FORMAT=json`).

Each line has `time` (UTC, ISO 8601 with milliseconds), `level`, `logger` and
`message`; `exc` holds a formatted traceback when there is one, and anything
passed through `extra=` that is not a standard `LogRecord` attribute becomes a
field of its own (values JSON cannot hold are written with `str`).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

# the attributes every LogRecord has: everything else came from `extra=`
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    def __init__(self, *, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    level: int = logging.INFO, fmt: str | None = None, *, static: dict[str, Any] | None = None
) -> None:
    """Root logging to stderr: `fmt` "json" or "text" (default: SHOAL_LOG_FORMAT,
    else text). Replaces the root handlers, so it may be called again."""
    chosen = (fmt or os.environ.get("SHOAL_LOG_FORMAT") or "text").strip().lower()
    if chosen not in ("json", "text"):
        raise ValueError(f"SHOAL_LOG_FORMAT must be json or text, not {chosen!r}")
    handler = logging.StreamHandler()
    if chosen == "json":
        handler.setFormatter(JsonFormatter(static=static))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)

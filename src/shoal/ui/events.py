"""Device events in words an operator reads in a feed (the JS says the same of live ones)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Events that say something about a device's state, in the feed's colours.
TONES = {
    "registered": "good",
    "assigned": "good",
    "updated": "quiet",
    "deregistered": "warn",
    "expired": "bad",
    "unassigned": "warn",
    "request_failed": "bad",
    "firmware_changed": "info",
    "status_changed": "info",
    "value": "quiet",
}


def describe(kind: str, detail: Mapping[str, Any] | None) -> str:
    d = detail or {}
    if kind == "registered":
        address = d.get("address")
        return f"registered from {address}" if address else "registered"
    if kind == "updated":
        return "updated its registration"
    if kind == "deregistered":
        return "deregistered"
    if kind == "expired":
        return "stopped talking: registration expired"
    if kind == "unassigned":
        reason = d.get("reason")
        return f"waits for an enclosure: {reason}" if reason else "waits for an enclosure"
    if kind == "assigned":
        code = d.get("code")
        source = str(d.get("source") or "").replace("_", " ")
        where = f"placed in {code}" if code else "placed in an enclosure"
        return f"{where} ({source})" if source else where
    if kind == "firmware_changed":
        old, new = d.get("from") or d.get("old"), d.get("to") or d.get("new")
        return f"firmware {old} → {new}" if old else f"reports firmware {new}"
    if kind == "status_changed":
        return f"status {d.get('from')} → {d.get('to')}"
    if kind == "request_failed":
        op = d.get("operation") or "request"
        path = d.get("path") or ""
        reason = d.get("reason") or "failed"
        return f"{op} {path} failed: {reason}".replace("  ", " ")
    return kind.replace("_", " ")

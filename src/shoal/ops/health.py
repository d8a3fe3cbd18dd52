"""Liveness and readiness of one node.

Liveness answers as long as the event loop runs the HTTP server. Readiness asks
whether the node can take work: the database answers a query within `timeout`,
the CoAP endpoint (and CoAPS, when configured) holds a bound socket, and the
HTTP server has started. Event exporters are reported but never make a node
unready: a broker outage must not take devices away from it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from shoal import __version__

_STARTED = time.monotonic()


@dataclass(slots=True)
class Probe:
    ok: bool
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": "ok" if self.ok else "unavailable", "checks": self.checks}


def liveness() -> dict[str, Any]:
    return {
        "status": "ok",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
    }


async def check_database(db: Any, timeout: float) -> dict[str, Any]:
    if db is None:
        return {"ok": False, "error": "no database"}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with db.session(readonly=True) as session:
                await session.execute(text("SELECT 1"))
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "dialect": getattr(db, "dialect", None), "ms": _ms(started)}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def check_endpoint(endpoint: Any) -> dict[str, Any]:
    transport = getattr(endpoint, "transport", None)
    if endpoint is None or transport is None or transport.is_closing():
        return {"ok": False, "error": "not bound"}
    try:
        host, port = endpoint.address
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "address": f"{host}:{port}"}


async def readiness(node: Any, timeout: float = 2.0) -> Probe:
    checks: dict[str, dict[str, Any]] = {}
    checks["database"] = await check_database(getattr(node, "db", None), timeout)
    server = getattr(node, "server", None)
    checks["coap"] = check_endpoint(getattr(server, "endpoint", None))
    config = getattr(node, "config", None)
    secure = getattr(server, "secure_endpoint", None)
    if getattr(config, "coaps", False) and secure is not None:
        checks["coaps"] = check_endpoint(secure)
    http = getattr(node, "http", None)
    if http is not None:
        checks["http"] = {"ok": bool(getattr(http, "started", False))}
    ok = all(c["ok"] for c in checks.values())
    for exp in getattr(node, "exporters", None) or ():
        stats = exp.stats()
        name = getattr(getattr(exp, "publisher", None), "name", "export")
        checks[f"export_{name}"] = {"ok": bool(stats["connected"]), "informational": True, **stats}
    return Probe(ok, checks)

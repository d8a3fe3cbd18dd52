"""The FastAPI application: routers plus the objects they share."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from shoal import __version__
from shoal.api import inventory, live, operations, problems
from shoal.ui import install as install_ui


def create_app(**state: Any) -> FastAPI:
    """Build the app; `state` holds lwm2m, inventory, event_log, telemetry_*, feed, tenant_id."""
    app = FastAPI(
        title="Shoal",
        version=__version__,
        description="LwM2M device management for fish farms",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    for key, value in state.items():
        setattr(app.state, key, value)
    app.state.queued_requests = operations.QueuedRequests()
    problems.install(app)
    app.include_router(inventory.router)
    app.include_router(operations.router)
    app.include_router(live.router)
    install_ui(app)
    return app

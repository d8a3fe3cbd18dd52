"""The FastAPI application: routers plus the objects they share."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI

from shoal import __version__
from shoal.api import (
    alerts,
    auth,
    firmware,
    inventory,
    live,
    operations,
    ops,
    problems,
    security,
)
from shoal.auth import http as auth_http
from shoal.ui import install as install_ui
from shoal.ui import login


def create_app(**state: Any) -> FastAPI:
    """Build the app; `state` holds lwm2m, inventory, event_log, telemetry_*, feed,
    tenant_id and auth (an AuthService; without it every request is the node's own
    admin of `tenant_id`). Every route, including routers added later, depends on
    `authorize`: the roles each needs are in `shoal.auth.policy`."""
    app = FastAPI(
        dependencies=[Depends(auth_http.authorize)],
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
    auth_http.install(app)
    app.include_router(auth.router)
    app.include_router(login.router)
    app.include_router(inventory.router)
    app.include_router(operations.router)
    app.include_router(live.router)
    app.include_router(security.router)
    app.include_router(alerts.router)
    app.include_router(firmware.router)
    app.include_router(ops.router)
    install_ui(app)
    return app

"""The operator web UI: server-rendered pages, with small hand-written JS and CSS
shipped in this package (nothing from a CDN: a farm's network may have no internet).

`install(app)` adds the pages at `/` and the static files at `/static`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from shoal.ui.routes import NAV, STATIC_DIR, NavItem, router

__all__ = ["NAV", "NavItem", "install", "router"]


def install(app: FastAPI, *, dependencies: Sequence[Any] = ()) -> None:
    """Serve the UI from `app` (idempotent). `dependencies` (e.g. a login check,
    `[Depends(require_user)]`) apply to every page."""
    if getattr(app.state, "ui_installed", False):
        return
    app.state.ui_installed = True
    app.include_router(router, dependencies=list(dependencies))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

"""Operations endpoints: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

All three are public in `shoal.auth.policy` (scrapers and load balancers carry no
session): they reveal counts and health, never device data. `/readyz` answers 503
while the node is not ready. The node is `app.state.node`; an `OpsMeter` on
`app.state.ops_meter` and exporters on `node.exporters` add their series.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from shoal.ops import health
from shoal.ops.metrics import CONTENT_TYPE, node_registry, render

router = APIRouter(tags=["operations"])


def _registry(request: Request) -> CollectorRegistry:
    state = request.app.state
    registry: CollectorRegistry | None = getattr(state, "metrics_registry", None)
    if registry is None:
        node = getattr(state, "node", None)
        registry = node_registry(
            node if node is not None else state, getattr(state, "ops_meter", None)
        )
        state.metrics_registry = registry
    return registry


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(render(_registry(request)), media_type=CONTENT_TYPE)


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Liveness: the process serves HTTP."""
    return health.liveness()


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: database reachable, CoAP bound, HTTP started (503 otherwise)."""
    node = getattr(request.app.state, "node", None)
    probe = await health.readiness(node)
    return JSONResponse(probe.as_dict(), status_code=200 if probe.ok else 503)

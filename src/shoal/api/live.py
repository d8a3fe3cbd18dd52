"""Telemetry history, the live event stream (SSE) and node status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from shoal.api.inventory import _own_device, store_problem
from shoal.api.problems import Problem
from shoal.auth.http import principal_of
from shoal.auth.scope import DevicePlaces, feed_item_visible
from shoal.domain.feed import FeedFilter, LiveFeed
from shoal.store import StoreError, TelemetryBucket, TelemetryStore

router = APIRouter(prefix="/api/v1", tags=["telemetry and events"])


def _time(text: str | None, default: datetime) -> datetime:
    if text is None:
        return default
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Problem(400, "Invalid time", f"{text!r} is not ISO 8601") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.get("/devices/{endpoint}/telemetry")
async def telemetry(
    request: Request,
    endpoint: str,
    path: str,
    start: str | None = None,
    end: str | None = None,
    step: int | None = None,
    limit: int = 10_000,
) -> dict[str, Any]:
    """Samples of one path; with `step` (seconds) aggregated per step."""
    device = await _own_device(request, endpoint)
    now = datetime.now(UTC)
    t_end = _time(end, now + timedelta(seconds=1))
    t_start = _time(start, t_end - timedelta(hours=24))
    store: TelemetryStore = request.app.state.telemetry_store
    try:
        if step is None:
            points = await store.query(device.id, path, t_start, t_end, limit=limit)
            items = [{"time": p.time.isoformat(), "value": p.value, "unit": p.unit} for p in points]
        else:
            buckets: list[TelemetryBucket] = await store.query(
                device.id, path, t_start, t_end, timedelta(seconds=step), limit=limit
            )
            items = [
                {
                    "time": b.start.isoformat(),
                    "count": b.count,
                    "min": b.min,
                    "max": b.max,
                    "avg": b.avg,
                    "last": b.last,
                    "unit": b.unit,
                }
                for b in buckets
            ]
    except StoreError as exc:
        raise store_problem(exc) from None
    return {"endpoint": endpoint, "path": path, "step": step, "items": items}


def _places(request: Request) -> DevicePlaces:
    """Where devices are (tenant, farm), shared by every watcher of the app."""
    places: DevicePlaces | None = getattr(request.app.state, "device_places", None)
    if places is None:
        places = DevicePlaces(request.app.state.inventory)
        request.app.state.device_places = places
    return places


@router.get("/events", summary="Live events (server-sent events)")
async def events(
    request: Request,
    farm: int | None = None,
    enclosure: int | None = None,
    device: str | None = None,
    kind: str | None = None,
) -> StreamingResponse:
    """`kind` is a comma-separated list (e.g. `registered,expired`); default: all."""
    feed: LiveFeed = request.app.state.feed
    kinds = frozenset(k.strip() for k in kind.split(",") if k.strip()) if kind else None
    flt = FeedFilter(farm_id=farm, enclosure_id=enclosure, endpoint=device, kinds=kinds)
    who = principal_of(request)
    places = _places(request)

    async def stream() -> AsyncIterator[str]:
        yield ": shoal live events\n\n"
        async for item in feed.watch(flt):
            if await request.is_disconnected():
                break
            if not await feed_item_visible(who, places, item):
                continue  # another tenant's, or outside the principal's farms
            yield f"id: {item['id']}\nevent: {item['kind']}\ndata: {json.dumps(item)}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get("/status", summary="Node status")
async def status(request: Request) -> dict[str, Any]:
    state = request.app.state
    writer = state.telemetry_writer.stats()
    return {
        "devices_registered": len(state.lwm2m.store),
        "counters": state.lwm2m.counters,
        "observations": len(state.lwm2m.observations()),
        "telemetry_queue": {
            "queued": writer.queued,
            "bound": writer.bound,
            "written": writer.written,
            "dropped_over_bound": writer.dropped_over_bound,
            "failures": writer.failures,
        },
        "live_watchers": state.feed.watchers,
        "live_dropped": state.feed.dropped,
    }

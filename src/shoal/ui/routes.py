"""The operator pages. Every page is rendered on the server from the same objects
the API uses; the pages' own JS then keeps them current from the live feed
(`/api/v1/events`) and performs changes through the JSON API, so validation and
error messages are the API's.

All pages hang off `router`: a login dependency added to it covers every page.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import available_timezones

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from shoal.auth.http import principal_of, tenant_of
from shoal.domain.alerts import Alerting
from shoal.firmware.campaigns import Campaign
from shoal.firmware.repository import Package
from shoal.firmware.service import FirmwareService
from shoal.server.server import Lwm2mServer
from shoal.store import (
    ENCLOSURE_CODE_ALPHABET,
    Device,
    DeviceKind,
    Enclosure,
    EnclosureKind,
    EventLog,
    Farm,
    Inventory,
    StoreError,
    TelemetryBucket,
    TelemetryPoint,
    TelemetryStore,
)
from shoal.store.alerts import Alert, AlertFilter
from shoal.ui import events as event_text
from shoal.ui.fleetview import (
    GROUP_LABELS,
    GROUPS,
    SORTS,
    STATUS_LABELS,
    Counts,
    DeviceQuery,
    counts_by_enclosure,
    recent_events,
    search_devices,
    status_group,
)
from shoal.ui.labels import qr_svg, qr_svg_document
from shoal.ui.model import (
    BATTERY,
    FISH_COUNT,
    FISH_LENGTH,
    METRICS,
    WINDOW_BY_KEY,
    WINDOWS,
    object_tree,
    resource_name,
    unit_text,
    value_unit,
)

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
templates = Jinja2Templates(directory=TEMPLATES_DIR)


@dataclass(frozen=True, slots=True)
class NavItem:
    key: str
    label: str
    href: str


# The main navigation. A feature with pages (alerts, firmware, security) adds its
# entry here and includes its own router next to this one.
NAV: list[NavItem] = [
    NavItem("overview", "Overview", "/"),
    NavItem("farms", "Farms", "/farms"),
    NavItem("devices", "Devices", "/devices"),
    NavItem("alerts", "Alerts", "/alerts"),
    NavItem("firmware", "Firmware", "/firmware"),
]

PAGE_SIZE = 50


# -- template helpers -----------------------------------------------------------------


@cache
def _static_version(name: str) -> str:
    try:
        return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]
    except OSError:
        return "0"


def static_url(name: str) -> str:
    """`/static/<name>?v=<hash>`: browsers cache hard, upgrades still show."""
    return f"/static/{name}?v={_static_version(name)}"


def ep_url(endpoint: str) -> str:
    return "/devices/" + quote(endpoint, safe="")


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat() if value is not None else ""


def when(value: datetime | None, style: str = "datetime") -> Markup:
    """A `<time>` element the JS shows in the browser's zone (relative for `ago`)."""
    if value is None:
        return Markup('<span class="muted">never</span>')
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time datetime="{}" data-style="{}">{}</time>').format(_iso(value), style, text)


def fmt_value(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if digits is not None:
            return f"{value:.{digits}f}"
        return f"{value:.6g}"
    return str(value)


templates.env.globals.update(
    static=static_url,
    nav=NAV,
    group_labels=GROUP_LABELS,
    groups=GROUPS,
    status_labels=STATUS_LABELS,
    status_group=status_group,
    ep_url=ep_url,
    when=when,
    describe_event=event_text.describe,
    event_tone=lambda kind: event_text.TONES.get(kind, "info"),
    unit_text=unit_text,
    value_unit=value_unit,
    fmt_value=fmt_value,
    code_alphabet=ENCLOSURE_CODE_ALPHABET,
)
templates.env.filters["q"] = lambda text: quote(str(text), safe="")


# -- state access (the API's objects) ---------------------------------------------------


def _inventory(request: Request) -> Inventory:
    inv: Inventory = request.app.state.inventory
    return inv


def _tenant(request: Request) -> int:
    """The tenant whose fleet the pages show: the signed-in user's."""
    return tenant_of(request)


def _lwm2m(request: Request) -> Lwm2mServer:
    server: Lwm2mServer = request.app.state.lwm2m
    return server


def _telemetry(request: Request) -> TelemetryStore:
    store: TelemetryStore = request.app.state.telemetry_store
    return store


async def _unassigned_count(request: Request) -> int:
    page = await _inventory(request).list_devices(unassigned=True, limit=1)
    return page.total


async def _page(
    request: Request,
    template: str,
    section: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    context.setdefault("events_url", "/api/v1/events")
    context["section"] = section
    context["inbox_count"] = await _unassigned_count(request)
    return templates.TemplateResponse(request, template, context, status_code=status_code)


async def _not_found(request: Request, what: str) -> HTMLResponse:
    return await _page(request, "not_found.html", "", status_code=404, what=what, events_url="")


async def _own_farm(request: Request, farm_id: int) -> Farm | None:
    try:
        farm = await _inventory(request).get_farm(farm_id)
    except StoreError:
        return None
    if farm.tenant_id != _tenant(request) or not principal_of(request).sees_farm(farm.id):
        return None
    return farm


async def _own_enclosure(request: Request, enclosure_id: int) -> Enclosure | None:
    try:
        enc = await _inventory(request).get_enclosure(enclosure_id)
    except StoreError:
        return None
    if enc.tenant_id != _tenant(request) or not principal_of(request).sees_farm(enc.farm_id):
        return None
    return enc


async def _own_device(request: Request, endpoint: str) -> Device | None:
    try:
        device = await _inventory(request).get_device(endpoint)
    except StoreError:
        return None
    if device.tenant_id is not None and device.tenant_id != _tenant(request):
        return None
    who = principal_of(request)
    if who.farm_scoped and (
        device.enclosure_id is None or await _own_enclosure(request, device.enclosure_id) is None
    ):
        return None
    return device


@dataclass(frozen=True, slots=True)
class EnclosureTile:
    enclosure: Enclosure
    counts: Counts


@dataclass(frozen=True, slots=True)
class FarmHealth:
    farm: Farm
    tiles: list[EnclosureTile]
    counts: Counts


async def _farm_health(request: Request) -> tuple[list[FarmHealth], Counts, dict[int, Farm]]:
    inv = _inventory(request)
    tenant = _tenant(request)
    who = principal_of(request)
    farms = [f for f in await inv.list_farms(tenant_id=tenant) if who.sees_farm(f.id)]
    enclosures = await inv.list_enclosures(tenant_id=tenant)
    counts = await counts_by_enclosure(inv, tenant)
    by_farm: dict[int, list[EnclosureTile]] = {f.id: [] for f in farms}
    for enc in enclosures:
        by_farm.setdefault(enc.farm_id, []).append(EnclosureTile(enc, counts.get(enc.id, Counts())))
    out: list[FarmHealth] = []
    total = Counts()
    for farm in farms:
        farm_counts = Counts()
        for tile in by_farm[farm.id]:
            farm_counts.merge(tile.counts)
        total.merge(farm_counts)
        out.append(FarmHealth(farm, by_farm[farm.id], farm_counts))
    return out, total, {f.id: f for f in farms}


# -- overview ---------------------------------------------------------------------------


@router.get("/")
async def overview(request: Request) -> HTMLResponse:
    farms, total, _ = await _farm_health(request)
    events = await recent_events(_inventory(request), _tenant(request), limit=30)
    return await _page(
        request,
        "overview.html",
        "overview",
        farms=farms,
        total=total,
        events=events,
        alert_counts=_open_alert_counts(request),
    )


# -- farms and enclosures -------------------------------------------------------------------


@cache
def _time_zones() -> list[str]:
    return sorted(z for z in available_timezones() if "/" in z or z == "UTC")


@router.get("/farms")
async def farms_page(request: Request) -> HTMLResponse:
    farms, _, _ = await _farm_health(request)
    return await _page(request, "farms.html", "farms", farms=farms, time_zones=_time_zones())


@router.get("/farms/{farm_id}")
async def farm_page(request: Request, farm_id: int) -> HTMLResponse:
    farm = await _own_farm(request, farm_id)
    if farm is None:
        return await _not_found(request, f"farm {farm_id}")
    inv = _inventory(request)
    enclosures = await inv.list_enclosures(farm_id=farm.id)
    counts = await counts_by_enclosure(inv, _tenant(request))
    tiles = [EnclosureTile(e, counts.get(e.id, Counts())) for e in enclosures]
    return await _page(
        request,
        "farm.html",
        "farms",
        farm=farm,
        tiles=tiles,
        time_zones=_time_zones(),
        enclosure_kinds=list(EnclosureKind),
        events_url=f"/api/v1/events?farm={farm.id}",
    )


def _coap_address(request: Request) -> str:
    try:
        host, port = _lwm2m(request).address[:2]
    except (AssertionError, AttributeError, TypeError, ValueError):
        return "coap://<server>:5683"
    if host in ("0.0.0.0", "::"):
        host = request.url.hostname or host
    return f"coap://[{host}]:{port}" if ":" in str(host) else f"coap://{host}:{port}"


@router.get("/enclosures/{enclosure_id}")
async def enclosure_page(request: Request, enclosure_id: int) -> HTMLResponse:
    enc = await _own_enclosure(request, enclosure_id)
    if enc is None:
        return await _not_found(request, f"enclosure {enclosure_id}")
    inv = _inventory(request)
    farm = await inv.get_farm(enc.farm_id)
    page = await inv.list_devices(tenant_id=_tenant(request), enclosure_id=enc.id, limit=1000)
    devices = page.items
    store = _telemetry(request)
    latest: dict[str, dict[str, TelemetryPoint]] = {}
    for device in devices:
        latest[device.endpoint] = await store.latest(device.id)
    server = _lwm2m(request)
    sleeping = {}
    for device in devices:
        reg = server.store.by_endpoint(device.endpoint)
        sleeping[device.endpoint] = reg is not None and server.is_sleeping(reg)
    metrics = []
    for metric in METRICS:
        newest: tuple[datetime, str, Any, str | None] | None = None
        for ep, points in latest.items():
            p = points.get(metric.path)
            fresher = p is not None and (newest is None or p.time > newest[0])
            if p is not None and fresher and isinstance(p.value, (int, float)):
                newest = (p.time, ep, p.value, p.unit)
        metrics.append((metric, newest))
    cameras = [d for d in devices if d.kind == DeviceKind.CAMERA]
    sensors = [d for d in devices if d.kind != DeviceKind.CAMERA]
    events = await recent_events(inv, _tenant(request), enclosure_id=enc.id, limit=20)
    return await _page(
        request,
        "enclosure.html",
        "farms",
        enclosure=enc,
        farm=farm,
        devices=devices,
        sensors=sensors,
        cameras=cameras,
        latest=latest,
        sleeping=sleeping,
        metrics=metrics,
        windows=WINDOWS,
        fish_count=FISH_COUNT,
        fish_length=FISH_LENGTH,
        battery=BATTERY,
        coap=_coap_address(request),
        qr=Markup(qr_svg(enc.code, title=f"Enclosure id {enc.code}")),
        enclosure_kinds=list(EnclosureKind),
        events=events,
        events_url=f"/api/v1/events?enclosure={enc.id}",
    )


@router.get("/enclosures/{enclosure_id}/label")
async def enclosure_label(request: Request, enclosure_id: int) -> HTMLResponse:
    enc = await _own_enclosure(request, enclosure_id)
    if enc is None:
        return await _not_found(request, f"enclosure {enclosure_id}")
    farm = await _inventory(request).get_farm(enc.farm_id)
    return templates.TemplateResponse(
        request,
        "label.html",
        {
            "enclosure": enc,
            "farm": farm,
            "qr": Markup(qr_svg(enc.code, title=f"Enclosure id {enc.code}")),
            "coap": _coap_address(request),
        },
    )


@router.get("/enclosures/{enclosure_id}/qr.svg")
async def enclosure_qr(request: Request, enclosure_id: int) -> Response:
    enc = await _own_enclosure(request, enclosure_id)
    if enc is None:
        return await _not_found(request, f"enclosure {enclosure_id}")
    return Response(
        qr_svg_document(enc.code, title=f"Enclosure id {enc.code}"),
        media_type="image/svg+xml",
        headers={"Content-Disposition": f'inline; filename="{enc.code}.svg"'},
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@router.get("/enclosures/{enclosure_id}/telemetry.json", response_class=JSONResponse)
async def enclosure_telemetry(
    request: Request, enclosure_id: int, window: str = "1h"
) -> JSONResponse:
    """Chart data of every water-quality metric of the enclosure, one series per
    sensor, aggregated to the window's step (one request per page load)."""
    enc = await _own_enclosure(request, enclosure_id)
    if enc is None:
        return JSONResponse({"detail": f"no enclosure {enclosure_id}"}, status_code=404)
    key, _, seconds, step = WINDOW_BY_KEY.get(window, WINDOWS[0])
    end = datetime.now(UTC) + timedelta(seconds=1)
    start = end - timedelta(seconds=seconds)
    inv = _inventory(request)
    page = await inv.list_devices(tenant_id=_tenant(request), enclosure_id=enc.id, limit=1000)
    sensors = [d for d in page.items if d.kind != DeviceKind.CAMERA]
    store = _telemetry(request)
    metrics: dict[str, Any] = {}
    for metric in METRICS:
        series = []
        unit = None
        for device in sensors:
            buckets: list[TelemetryBucket] = await store.query(
                device.id, metric.path, start, end, timedelta(seconds=step)
            )
            points = []
            for b in buckets:
                v = _number(b.avg)
                if v is not None:
                    points.append([int(b.start.timestamp() * 1000) + step * 500, v])
                unit = unit or b.unit
            if points:
                series.append({"endpoint": device.endpoint, "points": points})
        metrics[metric.key] = {
            "path": metric.path,
            "unit": unit_text(unit) or metric.unit,
            "series": series,
        }
    return JSONResponse(
        {
            "window": key,
            "start": int(start.timestamp() * 1000),
            "end": int(end.timestamp() * 1000),
            "step": step,
            "metrics": metrics,
        }
    )


# -- devices --------------------------------------------------------------------------------


def _int(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        return None


@router.get("/devices")
async def devices_page(
    request: Request,
    q: str = "",
    farm: str | None = None,
    enclosure: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    unassigned: str | None = None,
    sort: str = "endpoint",
    dir: str = "asc",
    page: str = "1",
) -> HTMLResponse:
    page_no = max(1, _int(page) or 1)
    inv = _inventory(request)
    tenant = _tenant(request)
    farms = await inv.list_farms(tenant_id=tenant)
    enclosures = await inv.list_enclosures(tenant_id=tenant)
    farm_names = {f.id: f.name for f in farms}
    enc_by_id = {e.id: e for e in enclosures}
    inbox = unassigned in ("1", "true", "yes")
    query = DeviceQuery(
        text=q,
        farm_id=_int(farm),
        enclosure_id=_int(enclosure),
        group=status if status in GROUP_LABELS else None,
        kind=DeviceKind(kind) if kind in set(DeviceKind) else None,
        unassigned=inbox,
        sort=sort if sort in SORTS else "endpoint",
        descending=dir == "desc",
        limit=PAGE_SIZE,
        offset=(page_no - 1) * PAGE_SIZE,
    )
    result = await search_devices(inv, tenant, query)
    who = principal_of(request)
    if who.farm_scoped:
        # a user limited to some farms sees their devices only (on this page)
        farms = [f for f in farms if who.sees_farm(f.id)]
        enclosures = [e for e in enclosures if who.sees_farm(e.farm_id)]
        enc_by_id = {e.id: e for e in enclosures}
        shown = [d for d in result.items if d.enclosure_id in enc_by_id]
        result = replace(result, items=shown, total=len(shown))
    server = _lwm2m(request)
    sleeping = {}
    for device in result.items:
        reg = server.store.by_endpoint(device.endpoint)
        sleeping[device.endpoint] = reg is not None and server.is_sleeping(reg)
    params = {
        k: v
        for k, v in {
            "q": q,
            "farm": farm,
            "enclosure": enclosure,
            "status": status,
            "kind": kind,
            "unassigned": "true" if inbox else None,
        }.items()
        if v
    }

    def link(**changes: Any) -> str:
        merged: dict[str, Any] = {**params, "sort": query.sort, "dir": dir, **changes}
        return "/devices?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})

    def sort_link(column: str) -> str:
        # a column sorts ascending first; its second click reverses it
        descending = query.sort == column and not query.descending
        return link(sort=column, dir="desc" if descending else "asc")

    pages = max(1, -(-result.total // PAGE_SIZE))
    return await _page(
        request,
        "inbox.html" if inbox else "devices.html",
        "devices",
        devices=result.items,
        total=result.total,
        query=query,
        q=q,
        params=params,
        farms=farms,
        farm_names=farm_names,
        enclosures=enclosures,
        enc_by_id=enc_by_id,
        kinds=[k for k in DeviceKind],
        sleeping=sleeping,
        page=page_no,
        pages=pages,
        link=link,
        sort_link=sort_link,
        filtered=bool(params) and not inbox,
    )


@router.get("/devices/{endpoint}")
async def device_page(request: Request, endpoint: str) -> HTMLResponse:
    device = await _own_device(request, endpoint)
    if device is None:
        return await _not_found(request, f"device {endpoint!r}")
    inv = _inventory(request)
    server = _lwm2m(request)
    registry = server.registry
    reg = server.store.by_endpoint(device.endpoint)
    tree = object_tree(reg, registry) if reg is not None else []
    observed = (
        {str(p) for o in server.observations(device.endpoint) for p in o.paths}
        if reg is not None
        else set()
    )
    enclosure = farm = None
    if device.enclosure_id is not None:
        enclosure = await inv.get_enclosure(device.enclosure_id)
        farm = await inv.get_farm(enclosure.farm_id)
    latest = await _telemetry(request).latest(device.id)
    log: EventLog = request.app.state.event_log
    history, enclosures, farms = await asyncio.gather(
        log.query(device_id=device.id, limit=50),
        inv.list_enclosures(tenant_id=_tenant(request)),
        inv.list_farms(tenant_id=_tenant(request)),
    )
    live_values = sorted(
        ((path, p) for path, p in latest.items()),
        key=lambda item: [int(x) for x in item[0].strip("/").split("/") if x.isdigit()],
    )
    return await _page(
        request,
        "device.html",
        "devices",
        device=device,
        reg=reg,
        sleeping=reg is not None and server.is_sleeping(reg),
        tree=tree,
        observed=observed,
        enclosure=enclosure,
        farm=farm,
        latest=latest,
        live_values=live_values,
        value_name=lambda path: resource_name(registry, path),
        value_meta={m.path: {"name": m.label, "unit": m.unit} for m in METRICS},
        history=history,
        enclosures=enclosures,
        farm_names={f.id: f.name for f in farms},
        events_url=f"/api/v1/events?device={quote(device.endpoint, safe='')}",
    )


# -- alerts -----------------------------------------------------------------------------

SEVERITIES = ("critical", "high", "warning", "info")
ALERT_STATES = {
    "active": ("Open or acknowledged", ("open", "acknowledged")),
    "open": ("Open", ("open",)),
    "acknowledged": ("Acknowledged", ("acknowledged",)),
    "resolved": ("Resolved", ("resolved",)),
    "all": ("All", None),
}
ALERT_LIMIT = 200


def _alerting(request: Request) -> Alerting | None:
    alerting: Alerting | None = getattr(request.app.state, "alerting", None)
    return alerting


def _sees_alert(request: Request, alert: Alert) -> bool:
    if alert.tenant_id is not None and alert.tenant_id != _tenant(request):
        return False
    who = principal_of(request)
    return not who.farm_scoped or (alert.farm_id is not None and who.sees_farm(alert.farm_id))


def _open_alert_counts(request: Request) -> dict[str, int] | None:
    """Unresolved alerts by severity (None when alerting is off)."""
    alerting = _alerting(request)
    if alerting is None:
        return None
    counts = dict.fromkeys(SEVERITIES, 0)
    for alert in alerting.alerts.active.values():
        if alert.state != "resolved" and _sees_alert(request, alert):
            counts[alert.severity] = counts.get(alert.severity, 0) + 1
    return counts


@router.get("/alerts")
async def alerts_page(request: Request, state: str = "active", severity: str = "") -> HTMLResponse:
    alerting = _alerting(request)
    state = state if state in ALERT_STATES else "active"
    severity = severity if severity in SEVERITIES else ""
    alerts: list[Alert] = []
    total = 0
    if alerting is not None:
        flt = AlertFilter(state=ALERT_STATES[state][1], severity=[severity] if severity else None)
        page = await alerting.store.list_alerts(flt, limit=ALERT_LIMIT)
        live = alerting.alerts.by_id
        alerts = [live.get(a.id) or a for a in page.items]
        wanted = ALERT_STATES[state][1]
        alerts = [  # the live object may be newer than its stored row
            a for a in alerts if _sees_alert(request, a) and (wanted is None or a.state in wanted)
        ]
        total = page.total if len(alerts) == len(page.items) else len(alerts)
    enclosures = {
        e.id: e for e in await _inventory(request).list_enclosures(tenant_id=_tenant(request))
    }
    who = principal_of(request)
    return await _page(
        request,
        "alerts.html",
        "alerts",
        enabled=alerting is not None,
        alerts=alerts,
        total=total,
        state=state,
        severity=severity,
        states=ALERT_STATES,
        severities=SEVERITIES,
        enclosures=enclosures,
        actor=who.username or "operator",
        alert_counts=_open_alert_counts(request),
        filtered=state != "active" or bool(severity),
    )


# -- firmware ---------------------------------------------------------------------------

CAMPAIGN_ACTIONS = {
    # action: (label, states it applies in)
    "start": ("Start", ("draft",)),
    "pause": ("Pause", ("running",)),
    "resume": ("Resume", ("paused",)),
    "cancel": ("Cancel", ("draft", "running", "paused")),
}


def _firmware(request: Request) -> FirmwareService | None:
    service: FirmwareService | None = getattr(request.app.state, "firmware", None)
    return service


def progress(counts: dict[str, int]) -> dict[str, int]:
    """Done, failed and total devices of a campaign, and their percentages."""
    total = counts.get("total", 0)
    done = counts.get("succeeded", 0)
    failed = counts.get("failures", 0)
    return {
        "total": total,
        "done": done,
        "failed": failed,
        "done_pct": round(100 * done / total) if total else 0,
        "failed_pct": round(100 * failed / total) if total else 0,
    }


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024 or unit == "MB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


templates.env.globals.update(
    campaign_progress=progress,
    campaign_actions=CAMPAIGN_ACTIONS,
    size_text=size_text,
)


@router.get("/firmware")
async def firmware_page(request: Request) -> HTMLResponse:
    service = _firmware(request)
    packages: list[Package] = []
    campaigns: list[Campaign] = []
    if service is not None:
        tenant = _tenant(request)
        packages = await service.repository.list_packages(tenant_id=tenant)
        campaigns = await service.campaigns.list_campaigns(tenant)
    return await _page(
        request,
        "firmware.html",
        "firmware",
        enabled=service is not None,
        packages=packages,
        package_by_id={p.id: p for p in packages},
        campaigns=campaigns,
    )


@router.get("/firmware/campaigns/{campaign_id}")
async def campaign_page(request: Request, campaign_id: int) -> HTMLResponse:
    service = _firmware(request)
    if service is None:
        return await _not_found(request, f"campaign {campaign_id}")
    try:
        campaign = await service.campaigns.get(campaign_id)
    except StoreError:
        return await _not_found(request, f"campaign {campaign_id}")
    if campaign.tenant_id is not None and campaign.tenant_id != _tenant(request):
        return await _not_found(request, f"campaign {campaign_id}")
    devices = await service.campaigns.devices(campaign_id)
    try:
        package: Package | None = await service.repository.get(campaign.package_id)
    except StoreError:
        package = None
    return await _page(
        request,
        "campaign.html",
        "firmware",
        campaign=campaign,
        devices=devices,
        package=package,
    )

"""Farms, enclosures and devices over HTTP."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from shoal.api.problems import Problem
from shoal.auth.http import principal_of, tenant_of
from shoal.store import (
    Conflict,
    CorrelationSource,
    Device,
    DeviceKind,
    DeviceStatus,
    EnclosureKind,
    Invalid,
    Inventory,
    NotFound,
    Page,
    StoreError,
)

router = APIRouter(prefix="/api/v1", tags=["inventory"])


def _inv(request: Request) -> Inventory:
    inv: Inventory = request.app.state.inventory
    return inv


def _tenant(request: Request) -> int:
    """The signed-in principal's tenant: every query below is filtered by it."""
    return tenant_of(request)


def store_problem(exc: StoreError) -> Problem:
    if isinstance(exc, NotFound):
        return Problem(404, "Not found", str(exc))
    if isinstance(exc, Conflict):
        return Problem(409, "Conflict", str(exc))
    if isinstance(exc, Invalid):
        return Problem(422, "Invalid", str(exc))
    return Problem(500, "Storage error", str(exc))


def _json(record: Any) -> dict[str, Any]:
    out = asdict(record)
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
    return out


# -- farms -------------------------------------------------------------------------


class FarmIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    location: str = ""
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    time_zone: str = "UTC"


class FarmPatch(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    location: str | None = None
    latitude: float | None = Field(None, ge=-90, le=90)
    longitude: float | None = Field(None, ge=-180, le=180)
    time_zone: str | None = None


@router.get("/farms")
async def list_farms(request: Request) -> list[dict[str, Any]]:
    farms = await _inv(request).list_farms(tenant_id=_tenant(request))
    who = principal_of(request)
    return [_json(f) for f in farms if who.sees_farm(f.id)]


@router.post("/farms", status_code=201)
async def create_farm(request: Request, body: FarmIn) -> dict[str, Any]:
    if principal_of(request).farm_scoped:
        raise Problem(403, "Forbidden", "a user limited to some farms cannot add farms")
    try:
        farm = await _inv(request).create_farm(
            _tenant(request),
            body.name,
            location=body.location,
            latitude=body.latitude,
            longitude=body.longitude,
            time_zone=body.time_zone,
        )
    except StoreError as exc:
        raise store_problem(exc) from None
    return _json(farm)


async def _own_farm(request: Request, farm_id: int) -> Any:
    try:
        farm = await _inv(request).get_farm(farm_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    if farm.tenant_id != _tenant(request) or not principal_of(request).sees_farm(farm.id):
        raise Problem(404, "Not found", f"no farm {farm_id}")
    return farm


@router.get("/farms/{farm_id}")
async def get_farm(request: Request, farm_id: int) -> dict[str, Any]:
    return _json(await _own_farm(request, farm_id))


@router.patch("/farms/{farm_id}")
async def patch_farm(request: Request, farm_id: int, body: FarmPatch) -> dict[str, Any]:
    await _own_farm(request, farm_id)
    changes = body.model_dump(exclude_unset=True)
    try:
        farm = await _inv(request).update_farm(farm_id, **changes)
    except StoreError as exc:
        raise store_problem(exc) from None
    return _json(farm)


@router.delete("/farms/{farm_id}", status_code=204)
async def delete_farm(request: Request, farm_id: int) -> Response:
    await _own_farm(request, farm_id)
    try:
        await _inv(request).delete_farm(farm_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    return Response(status_code=204)


# -- enclosures --------------------------------------------------------------------


class EnclosureIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: EnclosureKind = EnclosureKind.CAGE
    species: str = ""
    code: str | None = Field(None, description="e.g. ENC-7K3M; generated when absent")


class EnclosurePatch(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    kind: EnclosureKind | None = None
    species: str | None = None


@router.get("/farms/{farm_id}/enclosures")
async def list_enclosures(request: Request, farm_id: int) -> list[dict[str, Any]]:
    await _own_farm(request, farm_id)
    return [_json(e) for e in await _inv(request).list_enclosures(farm_id=farm_id)]


@router.post("/farms/{farm_id}/enclosures", status_code=201)
async def create_enclosure(request: Request, farm_id: int, body: EnclosureIn) -> dict[str, Any]:
    await _own_farm(request, farm_id)
    try:
        enc = await _inv(request).create_enclosure(
            farm_id, body.name, kind=body.kind, species=body.species, code=body.code
        )
    except StoreError as exc:
        raise store_problem(exc) from None
    return _json(enc)


async def _own_enclosure(request: Request, enclosure_id: int) -> Any:
    try:
        enc = await _inv(request).get_enclosure(enclosure_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    if enc.tenant_id != _tenant(request) or not principal_of(request).sees_farm(enc.farm_id):
        raise Problem(404, "Not found", f"no enclosure {enclosure_id}")
    return enc


@router.get("/enclosures/{enclosure_id}")
async def get_enclosure(request: Request, enclosure_id: int) -> dict[str, Any]:
    return _json(await _own_enclosure(request, enclosure_id))


@router.patch("/enclosures/{enclosure_id}")
async def patch_enclosure(
    request: Request, enclosure_id: int, body: EnclosurePatch
) -> dict[str, Any]:
    await _own_enclosure(request, enclosure_id)
    try:
        enc = await _inv(request).update_enclosure(
            enclosure_id, **body.model_dump(exclude_unset=True)
        )
    except StoreError as exc:
        raise store_problem(exc) from None
    return _json(enc)


@router.delete("/enclosures/{enclosure_id}", status_code=204)
async def delete_enclosure(request: Request, enclosure_id: int) -> Response:
    await _own_enclosure(request, enclosure_id)
    try:
        await _inv(request).delete_enclosure(enclosure_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    return Response(status_code=204)


# -- devices -----------------------------------------------------------------------


def _device_json(request: Request, device: Any) -> dict[str, Any]:
    out = _json(device)
    out.pop("object_links", None)
    server = request.app.state.lwm2m
    reg = server.store.by_endpoint(device.endpoint)
    out["registered"] = reg is not None
    if reg is not None:
        out["objects"] = sorted(reg.objects)
        out["sleeping"] = server.is_sleeping(reg)
    return out


@router.get("/devices")
async def list_devices(
    request: Request,
    farm: int | None = None,
    enclosure: int | None = None,
    status: DeviceStatus | None = None,
    kind: DeviceKind | None = None,
    firmware: str | None = None,
    unassigned: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    who = principal_of(request)
    inv = _inv(request)
    filters: dict[str, Any] = {
        "enclosure_id": enclosure,
        "status": status,
        "kind": kind,
        "firmware": firmware,
        "unassigned": unassigned,
    }
    if farm is not None:
        await _own_farm(request, farm)  # another tenant's, or outside the user's farms: 404
    if enclosure is not None:
        await _own_enclosure(request, enclosure)
    try:
        if not 1 <= limit <= 1000 or offset < 0:
            raise Invalid("limit must be 1..1000 and offset >= 0")
        if who.farm_scoped and farm is None:
            # only the principal's farms (none of them holds unassigned devices)
            found: list[Device] = []
            for farm_id in sorted(who.farm_ids or ()) if not unassigned else ():
                found += await _every_device(
                    inv, tenant_id=who.tenant_id, farm_id=farm_id, **filters
                )
            page = _slice(sorted(found, key=lambda d: d.endpoint), limit, offset)
        elif unassigned:
            # the tenant's own devices waiting for an enclosure, and those of no tenant yet
            waiting = await _every_device(inv, tenant_id=None, farm_id=farm, **filters)
            mine = [d for d in waiting if d.tenant_id in (None, who.tenant_id)]
            page = _slice(mine, limit, offset)
        else:
            page = await inv.list_devices(
                tenant_id=who.tenant_id, farm_id=farm, limit=limit, offset=offset, **filters
            )
    except StoreError as exc:
        raise store_problem(exc) from None
    return {
        "items": [_device_json(request, d) for d in page.items],
        "total": page.total,
        "limit": page.limit,
        "offset": page.offset,
    }


async def _every_device(inv: Inventory, **filters: Any) -> list[Device]:
    found: list[Device] = []
    while True:
        page = await inv.list_devices(limit=1000, offset=len(found), **filters)
        found += page.items
        if len(page.items) < 1000:
            return found


def _slice(items: list[Device], limit: int, offset: int) -> Page[Device]:
    return Page(items[offset : offset + limit], len(items), limit, offset)


async def _own_device(request: Request, endpoint: str) -> Any:
    """The device, if the principal's tenant (or no tenant yet) owns it and, for a
    principal limited to some farms, it sits in one of them; else 404."""
    try:
        device = await _inv(request).get_device(endpoint)
    except StoreError as exc:
        raise store_problem(exc) from None
    if device.tenant_id is not None and device.tenant_id != _tenant(request):
        raise Problem(404, "Not found", f"no device {endpoint!r}")
    who = principal_of(request)
    if who.farm_scoped:
        farm_id = None
        if device.enclosure_id is not None:
            try:
                farm_id = (await _inv(request).get_enclosure(device.enclosure_id)).farm_id
            except StoreError:
                farm_id = None
        if not who.sees_farm(farm_id):
            raise Problem(404, "Not found", f"no device {endpoint!r}")
    return device


@router.get("/devices/{endpoint}")
async def get_device(request: Request, endpoint: str) -> dict[str, Any]:
    return _device_json(request, await _own_device(request, endpoint))


class DevicePatch(BaseModel):
    enclosure_id: int | None = Field(None, description="assign to this enclosure (manual)")
    enclosure_code: str | None = Field(None, description="or by its code, e.g. ENC-7K3M")


@router.patch("/devices/{endpoint}")
async def patch_device(request: Request, endpoint: str, body: DevicePatch) -> dict[str, Any]:
    await _own_device(request, endpoint)
    inv = _inv(request)
    try:
        if body.enclosure_code is not None:
            enc_id = (await inv.get_enclosure_by_code(body.enclosure_code)).id
        elif body.enclosure_id is not None:
            enc_id = body.enclosure_id
        else:
            raise Problem(422, "Nothing to change", "give enclosure_id or enclosure_code")
        await _own_enclosure(request, enc_id)
        device = await inv.assign_enclosure(endpoint, enc_id, CorrelationSource.MANUAL)
        enc = await inv.get_enclosure(enc_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    fleet = getattr(request.app.state, "fleet", None)
    if fleet is not None:
        fleet.placed(endpoint, enc.farm_id, enc.id, CorrelationSource.MANUAL)
    return _device_json(request, device)


@router.get("/devices/{endpoint}/events")
async def device_events(request: Request, endpoint: str, limit: int = 100) -> list[dict[str, Any]]:
    device = await _own_device(request, endpoint)
    try:
        events = await request.app.state.event_log.query(device_id=device.id, limit=limit)
    except StoreError as exc:
        raise store_problem(exc) from None
    return [_json(e) for e in events]

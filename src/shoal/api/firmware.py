"""Firmware packages and update campaigns over HTTP.

Packages are uploaded as the raw request body (`application/octet-stream`,
streamed to disk, size-limited) with their metadata in the query string:

    curl --data-binary @fw.bin -H 'Content-Type: application/octet-stream' \\
      'http://host:8080/api/v1/firmware/packages?name=wq-fw&version=2.1.0&device_kind=sensor'

Devices pulling over HTTP fetch `GET /api/v1/firmware/download/<token>`: the
token is their only credential (short-lived, one per device and package).
Progress is on the live stream (`/api/v1/events`): `campaign`,
`firmware_started`, `firmware_progress`, `firmware_succeeded`,
`firmware_failed`, `firmware_rolled_back`.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from shoal.api.inventory import store_problem
from shoal.api.problems import Problem
from shoal.firmware.campaigns import (
    Campaign,
    CampaignDevice,
    DeviceState,
    Preview,
    Rollout,
    Targets,
)
from shoal.firmware.repository import Package, PackageMeta, PackageType, TooLarge
from shoal.firmware.service import FirmwareService
from shoal.store import DeviceKind, Invalid, StoreError

router = APIRouter(prefix="/api/v1/firmware", tags=["firmware"])


def _service(request: Request) -> FirmwareService:
    service: FirmwareService | None = getattr(request.app.state, "firmware", None)
    if service is None:
        raise Problem(503, "Firmware service not running")
    return service


def _tenant(request: Request) -> int | None:
    tenant_id: int | None = getattr(request.app.state, "tenant_id", None)
    return tenant_id


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def package_json(p: Package) -> dict[str, Any]:
    out = {k: _iso(v) for k, v in asdict(p).items()}
    out["package_type"] = str(p.package_type)
    out["device_kind"] = str(p.device_kind) if p.device_kind else None
    out["models"] = list(p.models)
    return out


def campaign_json(c: Campaign) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "package_id": c.package_id,
        "state": str(c.state),
        "pause_reason": c.pause_reason,
        "targets": c.targets.to_dict(),
        "rollout": c.rollout.to_dict(),
        "canary_checked": bool(c.progress.get("canary_checked")),
        "counts": c.counts,
        "created_at": _iso(c.created_at),
        "started_at": _iso(c.started_at),
        "finished_at": _iso(c.finished_at),
        "updated_at": _iso(c.updated_at),
    }


def device_json(d: CampaignDevice) -> dict[str, Any]:
    out = {k: _iso(v) for k, v in asdict(d).items()}
    out["state"] = str(d.state)
    return out


def preview_json(p: Preview) -> dict[str, Any]:
    return {
        "count": len(p.devices),
        "batches": p.batches,
        "devices": [asdict(d) for d in p.devices],
        "excluded": p.excluded,
    }


# -- packages --------------------------------------------------------------------------


@router.post("/packages", status_code=201)
async def upload_package(
    request: Request,
    name: str,
    version: str,
    package_type: PackageType = PackageType.FIRMWARE,
    device_kind: DeviceKind | None = None,
    models: str | None = None,
    applies_to: str | None = None,
    notes: str = "",
    signature: str | None = None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """Upload a package: the body is the image, the query its metadata. `models` is a
    comma-separated list; `applies_to` a version spec such as `>=1.0,<2.0`."""
    service = _service(request)
    limit = service.repository.max_size
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Problem(413, "Package too large", f"the limit is {limit} bytes", limit=limit)
    meta = PackageMeta(
        name=name,
        version=version,
        package_type=package_type,
        device_kind=device_kind,
        models=tuple((models or "").split(",")),
        applies_to=applies_to,
        signature=signature,
        notes=notes,
        sha256=sha256,
        tenant_id=_tenant(request),
    )
    try:
        package = await service.repository.add(meta, request.stream())
    except TooLarge as exc:
        raise Problem(413, "Package too large", str(exc), limit=exc.limit) from None
    except StoreError as exc:
        raise store_problem(exc) from None
    return package_json(package)


@router.get("/packages")
async def list_packages(
    request: Request,
    package_type: PackageType | None = None,
    name: str | None = None,
    device_kind: DeviceKind | None = None,
) -> list[dict[str, Any]]:
    packages = await _service(request).repository.list_packages(
        tenant_id=_tenant(request), package_type=package_type, name=name, device_kind=device_kind
    )
    return [package_json(p) for p in packages]


async def _package(request: Request, package_id: int) -> Package:
    try:
        package = await _service(request).repository.get(package_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    tenant = _tenant(request)
    if package.tenant_id is not None and tenant is not None and package.tenant_id != tenant:
        raise Problem(404, "Not found", f"no package {package_id}")
    return package


@router.get("/packages/{package_id}")
async def get_package(request: Request, package_id: int) -> dict[str, Any]:
    return package_json(await _package(request, package_id))


@router.get("/packages/{package_id}/content")
async def package_content(request: Request, package_id: int) -> FileResponse:
    package = await _package(request, package_id)
    path = _service(request).repository.blob_path(package.sha256)
    filename = f"{package.name}-{package.version}.bin"
    return FileResponse(path, media_type="application/octet-stream", filename=filename)


@router.delete("/packages/{package_id}", status_code=204)
async def delete_package(request: Request, package_id: int, force: bool = False) -> Response:
    await _package(request, package_id)
    try:
        await _service(request).repository.delete(package_id, force=force)
    except StoreError as exc:
        raise store_problem(exc) from None
    return Response(status_code=204)


@router.get("/download/{token}", include_in_schema=False)
async def download(request: Request, token: str) -> FileResponse:
    """Pull delivery over HTTP: the device's short-lived token names the package."""
    service = _service(request)
    grant = service.files.lookup(token)
    if grant is None:
        raise Problem(404, "Unknown or expired download token")
    path = service.repository.blob_path(grant.package.sha256)
    return FileResponse(path, media_type="application/octet-stream")


# -- campaigns -------------------------------------------------------------------------


class CampaignIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    package_id: int
    targets: dict[str, Any]
    rollout: dict[str, Any] = Field(default_factory=dict)


class PreviewIn(BaseModel):
    package_id: int
    targets: dict[str, Any]
    rollout: dict[str, Any] = Field(default_factory=dict)


async def _campaign(request: Request, campaign_id: int) -> Campaign:
    try:
        campaign = await _service(request).campaigns.get(campaign_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    tenant = _tenant(request)
    if campaign.tenant_id is not None and tenant is not None and campaign.tenant_id != tenant:
        raise Problem(404, "Not found", f"no campaign {campaign_id}")
    return campaign


@router.post("/campaigns", status_code=201)
async def create_campaign(request: Request, body: CampaignIn) -> dict[str, Any]:
    await _package(request, body.package_id)
    try:
        campaign = await _service(request).campaigns.create(
            _tenant(request), body.name, body.package_id, body.targets, body.rollout
        )
    except StoreError as exc:
        raise store_problem(exc) from None
    except (ValueError, TypeError) as exc:
        raise Problem(422, "Invalid", str(exc)) from None
    return campaign_json(await _service(request).campaigns.get(campaign.id))


@router.post("/campaigns/preview")
async def preview_new_campaign(request: Request, body: PreviewIn) -> dict[str, Any]:
    """Which devices a campaign with these targets would update, in which batch."""
    package = await _package(request, body.package_id)
    try:
        targets = Targets.from_dict(body.targets)
        rollout = Rollout.from_dict(body.rollout)
        preview = await _service(request).campaigns.preview_for(
            _tenant(request), package, targets, rollout
        )
    except StoreError as exc:
        raise store_problem(exc) from None
    except (ValueError, TypeError) as exc:
        raise Problem(422, "Invalid", str(exc)) from None
    return preview_json(preview)


@router.get("/campaigns")
async def list_campaigns(request: Request) -> list[dict[str, Any]]:
    campaigns = await _service(request).campaigns.list_campaigns(_tenant(request))
    return [campaign_json(c) for c in campaigns]


@router.get("/campaigns/{campaign_id}")
async def get_campaign(request: Request, campaign_id: int) -> dict[str, Any]:
    return campaign_json(await _campaign(request, campaign_id))


@router.get("/campaigns/{campaign_id}/preview")
async def preview_campaign(request: Request, campaign_id: int) -> dict[str, Any]:
    await _campaign(request, campaign_id)
    try:
        preview = await _service(request).campaigns.preview(campaign_id)
    except StoreError as exc:
        raise store_problem(exc) from None
    return preview_json(preview)


@router.get("/campaigns/{campaign_id}/devices")
async def campaign_devices(
    request: Request, campaign_id: int, state: DeviceState | None = None
) -> list[dict[str, Any]]:
    """Progress per device: state, step, versions, delivery, result code, reason."""
    await _campaign(request, campaign_id)
    devices = await _service(request).campaigns.devices(campaign_id, state)
    return [device_json(d) for d in devices]


async def _action(request: Request, campaign_id: int, action: str) -> dict[str, Any]:
    await _campaign(request, campaign_id)
    manager = _service(request).campaigns
    try:
        if action == "start":
            campaign = await manager.start_campaign(campaign_id)
        elif action == "pause":
            campaign = await manager.pause(campaign_id)
        elif action == "resume":
            campaign = await manager.resume(campaign_id)
        elif action == "cancel":
            campaign = await manager.cancel(campaign_id)
        else:
            campaign = await manager.rollback(campaign_id)
    except Invalid as exc:
        raise Problem(409, "Cannot start", str(exc)) from None
    except StoreError as exc:
        raise store_problem(exc) from None
    return campaign_json(campaign)


@router.post("/campaigns/{campaign_id}/start")
async def start_campaign(request: Request, campaign_id: int) -> dict[str, Any]:
    """Freeze the device list (canary, batches) and start updating."""
    return await _action(request, campaign_id, "start")


@router.post("/campaigns/{campaign_id}/pause")
async def pause_campaign(request: Request, campaign_id: int) -> dict[str, Any]:
    """Start no more devices; updates in flight finish."""
    return await _action(request, campaign_id, "pause")


@router.post("/campaigns/{campaign_id}/resume")
async def resume_campaign(request: Request, campaign_id: int) -> dict[str, Any]:
    """Go on after a pause (also after an automatic one: the failure rate restarts)."""
    return await _action(request, campaign_id, "resume")


@router.post("/campaigns/{campaign_id}/cancel")
async def cancel_campaign(request: Request, campaign_id: int) -> dict[str, Any]:
    """Stop for good; devices not yet executing their update are left as they were."""
    return await _action(request, campaign_id, "cancel")


@router.post("/campaigns/{campaign_id}/rollback")
async def rollback_campaign(request: Request, campaign_id: int) -> dict[str, Any]:
    """Give every device the campaign updated its previous version back."""
    return await _action(request, campaign_id, "rollback")


@router.post("/campaigns/{campaign_id}/devices/{endpoint}/rollback")
async def rollback_device(request: Request, campaign_id: int, endpoint: str) -> dict[str, Any]:
    await _campaign(request, campaign_id)
    try:
        device = await _service(request).campaigns.rollback_device(campaign_id, endpoint)
    except StoreError as exc:
        raise store_problem(exc) from None
    return device_json(device)

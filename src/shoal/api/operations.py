"""Device operations on LwM2M paths over HTTP.

Answers carry decoded values with the model's names and units. A device that
does not answer gives 504; a sleeping (queue-mode) device gives 202 with the id
of the queued request, whose outcome is at `/api/v1/requests/{id}`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from shoal.api.inventory import _own_device
from shoal.api.problems import Problem
from shoal.api.values import ValueError_, describe, from_json
from shoal.auth.http import note_audit, principal_of
from shoal.lwm2m import requests as rq
from shoal.lwm2m.attributes import InvalidAttributes, NotificationAttributes
from shoal.lwm2m.link import DiscoveredLink
from shoal.lwm2m.path import InvalidPath, Path
from shoal.server.registration import Registration
from shoal.server.server import Lwm2mServer, RequestError, UnknownDevice
from shoal.store import NotFound

router = APIRouter(prefix="/api/v1", tags=["device operations"])

FORMATS = {
    "text": rq.TEXT,
    "opaque": rq.OPAQUE,
    "tlv": rq.TLV,
    "senml-json": rq.SENML_JSON,
    "senml-cbor": rq.SENML_CBOR,
    "oma-json": rq.OMA_JSON,
    "lwm2m-cbor": rq.LWM2M_CBOR,
}


class QueuedRequests:
    """Requests waiting for sleeping devices, and the outcome once they ran."""

    def __init__(self, keep: int = 10_000) -> None:
        self._ids = itertools.count(1)
        self._tasks: OrderedDict[int, asyncio.Task[dict[str, Any]]] = OrderedDict()
        self._tenants: dict[int, int | None] = {}
        self._keep = keep

    def add(self, task: asyncio.Task[dict[str, Any]], tenant_id: int | None = None) -> int:
        rid = next(self._ids)
        self._tasks[rid] = task
        self._tenants[rid] = tenant_id
        while len(self._tasks) > self._keep:
            old_id, old = self._tasks.popitem(last=False)
            self._tenants.pop(old_id, None)
            old.cancel()
        return rid

    def get(self, rid: int, tenant_id: int | None = None) -> asyncio.Task[dict[str, Any]] | None:
        """The request, if queued for `tenant_id` (when given): ids are sequential,
        so another tenant's must not be guessable."""
        owner = self._tenants.get(rid)
        if tenant_id is not None and owner is not None and owner != tenant_id:
            return None
        return self._tasks.get(rid)


async def _check_device(request: Request, endpoint: str) -> None:
    """Another tenant's device, or one outside the principal's farms, answers 404
    as in the inventory. A device registered a moment ago, not stored yet, has no
    tenant yet (like an unassigned one)."""
    who = principal_of(request)
    if who.local:
        return
    try:
        await request.app.state.inventory.get_device(endpoint)
    except NotFound:
        if who.farm_scoped:
            raise Problem(404, "Not found", f"no device {endpoint!r}") from None
        return
    await _own_device(request, endpoint)


def _brief(value: Any) -> Any:
    """A written value as the audit log keeps it: short."""
    text = value if isinstance(value, (int, float, bool)) or value is None else repr(value)
    return text if not isinstance(text, str) or len(text) <= 200 else text[:200] + "…"


def _server(request: Request) -> Lwm2mServer:
    server: Lwm2mServer = request.app.state.lwm2m
    return server


def _queue(request: Request) -> QueuedRequests:
    queued: QueuedRequests = request.app.state.queued_requests
    return queued


def _path(text: str) -> Path:
    try:
        return Path.parse("/" + text)
    except InvalidPath as exc:
        raise Problem(400, "Invalid LwM2M path", str(exc)) from None


def _fmt(name: str | None) -> int | None:
    if name is None:
        return None
    if name not in FORMATS:
        raise Problem(400, "Unknown content format", f"choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def _registration(server: Lwm2mServer, endpoint: str) -> Registration:
    try:
        return server.registration(endpoint)
    except UnknownDevice:
        raise Problem(404, "Device not registered", f"no registration for {endpoint!r}") from None


def _links(links: list[DiscoveredLink]) -> list[dict[str, Any]]:
    out = []
    for link in links:
        entry: dict[str, Any] = {"path": str(link.path)}
        if link.dim is not None:
            entry["dim"] = link.dim
        if link.version is not None:
            entry["version"] = link.version
        attrs = {
            q.split("=")[0]: q.split("=", 1)[1] for q in link.attributes.to_query() if "=" in q
        }
        if attrs:
            entry["attributes"] = attrs
        out.append(entry)
    return out


def _answer(server: Lwm2mServer, response: rq.Response) -> dict[str, Any]:
    body: dict[str, Any] = {"status": response.code_text, "ok": response.ok}
    if response.values:
        body["values"] = describe(response.values, server.registry)
    if response.links:
        body["links"] = _links(response.links)
    if response.location:
        body["location"] = response.location
    if response.error:
        body["error"] = response.error
    return body


async def _run(
    request: Request, endpoint: str, op: rq.Request, observe: bool = False
) -> JSONResponse | dict[str, Any]:
    server = _server(request)
    await _check_device(request, endpoint)
    reg = _registration(server, endpoint)

    async def perform() -> dict[str, Any]:
        if observe:
            assert isinstance(op, rq.Observe)
            response, obs = await server.observe(reg.endpoint, op.path, op.content_format)
            body = _answer(server, response)
            body["observation"] = obs.id if obs is not None else None
            return body
        return _answer(server, await server.send(reg, op))

    if server.is_sleeping(reg):
        task = asyncio.get_running_loop().create_task(perform())
        rid = _queue(request).add(task, principal_of(request).tenant_id)
        return JSONResponse(
            {"queued": True, "request_id": rid, "detail": "device is sleeping (queue mode)"},
            status_code=202,
        )
    try:
        return await perform()
    except RequestError as exc:
        if "timeout" in exc.reason:
            raise Problem(504, "Device did not answer", f"{endpoint}: {exc.reason}") from None
        raise Problem(502, "Device request failed", f"{endpoint}: {exc.reason}") from None


@router.get("/devices/{endpoint}/data/{path:path}", summary="Read", response_model=None)
async def read(
    request: Request, endpoint: str, path: str, format: str | None = None
) -> JSONResponse | dict[str, Any]:
    return await _run(request, endpoint, rq.Read(_path(path), _fmt(format)))


class WriteBody(BaseModel):
    value: Any = Field(None, description="value for a single resource path")
    values: dict[str, Any] | None = Field(None, description="path -> value, for an instance")


@router.put("/devices/{endpoint}/data/{path:path}", summary="Write", response_model=None)
async def write(
    request: Request,
    endpoint: str,
    path: str,
    body: WriteBody,
    partial: bool = False,
    format: str | None = None,
) -> JSONResponse | dict[str, Any]:
    server = _server(request)
    target = _path(path)
    try:
        if body.values is not None:
            vals = {}
            for key, raw in body.values.items():
                p = _path(key.lstrip("/"))
                if not p.startswith(target):
                    raise Problem(400, "Path outside the target", f"{p} is not under {target}")
                vals[p] = from_json(p, raw, server.registry)
        elif target.is_resource() or target.is_resource_instance():
            vals = {target: from_json(target, body.value, server.registry)}
        else:
            raise Problem(400, "Nothing to write", "give 'value' for a resource or 'values'")
    except ValueError_ as exc:
        raise Problem(400, "Value does not fit the resource", str(exc)) from None
    note_audit(request, values={str(p): _brief(v) for p, v in vals.items()})
    return await _run(request, endpoint, rq.Write(target, vals, partial, _fmt(format)))


class ExecuteBody(BaseModel):
    arguments: str = ""


@router.post("/devices/{endpoint}/execute/{path:path}", summary="Execute", response_model=None)
async def execute(
    request: Request, endpoint: str, path: str, body: ExecuteBody | None = None
) -> JSONResponse | dict[str, Any]:
    args = body.arguments if body is not None else ""
    note_audit(request, arguments=args[:200])
    return await _run(request, endpoint, rq.Execute(_path(path), args))


@router.get("/devices/{endpoint}/discover/{path:path}", summary="Discover", response_model=None)
async def discover(request: Request, endpoint: str, path: str) -> JSONResponse | dict[str, Any]:
    return await _run(request, endpoint, rq.Discover(_path(path)))


class CreateBody(BaseModel):
    instance_id: int | None = None
    values: dict[str, Any] = Field(default_factory=dict, description="resource id -> value")


@router.post("/devices/{endpoint}/objects/{object_id}", summary="Create", response_model=None)
async def create(
    request: Request, endpoint: str, object_id: int, body: CreateBody
) -> JSONResponse | dict[str, Any]:
    server = _server(request)
    iid = body.instance_id if body.instance_id is not None else 0
    try:
        vals = {}
        for key, raw in body.values.items():
            p = Path(object_id, iid, int(key))
            vals[p] = from_json(p, raw, server.registry)
    except (ValueError, InvalidPath) as exc:
        raise Problem(400, "Invalid instance values", str(exc)) from None
    return await _run(request, endpoint, rq.Create(object_id, vals, body.instance_id))


@router.delete(
    "/devices/{endpoint}/data/{path:path}", summary="Delete an object instance", response_model=None
)
async def delete(request: Request, endpoint: str, path: str) -> JSONResponse | dict[str, Any]:
    return await _run(request, endpoint, rq.Delete(_path(path)))


@router.put(
    "/devices/{endpoint}/attributes/{path:path}", summary="Write-Attributes", response_model=None
)
async def write_attributes(
    request: Request, endpoint: str, path: str, body: dict[str, float | int | None]
) -> JSONResponse | dict[str, Any]:
    query = [k if v is None else f"{k}={v}" for k, v in body.items()]
    try:
        attrs = NotificationAttributes.from_query(query)
    except InvalidAttributes as exc:
        raise Problem(400, "Invalid attributes", str(exc)) from None
    return await _run(request, endpoint, rq.WriteAttributes(_path(path), attrs))


@router.post("/devices/{endpoint}/observe/{path:path}", summary="Observe", response_model=None)
async def observe(
    request: Request, endpoint: str, path: str, format: str | None = None
) -> JSONResponse | dict[str, Any]:
    return await _run(request, endpoint, rq.Observe(_path(path), _fmt(format)), observe=True)


@router.delete(
    "/devices/{endpoint}/observe/{path:path}", summary="Cancel observation", response_model=None
)
async def cancel_observe(request: Request, endpoint: str, path: str) -> dict[str, Any]:
    server = _server(request)
    await _check_device(request, endpoint)
    _registration(server, endpoint)
    target = _path(path)
    cancelled = 0
    for obs in server.observations(endpoint):
        if target in obs.paths:
            try:
                await server.cancel_observation(obs)
            except RequestError:
                pass  # the device is gone; the observation is dropped anyway
            cancelled += 1
    if not cancelled:
        raise Problem(404, "No such observation", f"{endpoint} is not observed at {target}")
    return {"cancelled": cancelled}


@router.get(
    "/devices/{endpoint}/observations", summary="Observations held on a device", response_model=None
)
async def observations(request: Request, endpoint: str) -> list[dict[str, Any]]:
    server = _server(request)
    await _check_device(request, endpoint)
    _registration(server, endpoint)
    return [
        {"id": o.id, "paths": [str(p) for p in o.paths], "notifications": o.notifications}
        for o in server.observations(endpoint)
    ]


@router.get("/requests/{request_id}", summary="Outcome of a queued request", response_model=None)
async def queued_request(request: Request, request_id: int) -> dict[str, Any]:
    task = _queue(request).get(request_id, principal_of(request).tenant_id)
    if task is None:
        raise Problem(404, "Unknown request", f"no queued request {request_id}")
    if not task.done():
        return {"request_id": request_id, "state": "queued"}
    if task.cancelled():
        return {"request_id": request_id, "state": "cancelled"}
    exc = task.exception()
    if exc is not None:
        return {"request_id": request_id, "state": "failed", "error": str(exc)}
    return {"request_id": request_id, "state": "done", "result": task.result()}

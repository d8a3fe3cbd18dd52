"""Health, device profiles, alert rules, alerts, channels, escalation policies and
silences over HTTP. Alert events also reach the live stream (`/api/v1/events`,
kinds `alert_raised`, `alert_acknowledged`, `alert_resolved`, ...; `health`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from shoal.api.problems import Problem
from shoal.auth.http import tenant_of
from shoal.domain.alerts import AlertError, Alerting, EscalationPolicy, Rule, RuleError
from shoal.domain.channels import ChannelError, ChannelKind, ChannelSpec, DeliveryError
from shoal.domain.health import Health
from shoal.domain.profiles import DEFAULT_PROFILES, DeviceProfile, ProfileError
from shoal.store import Conflict, Invalid, NotFound, StoreError
from shoal.store.alerts import AlertFilter, AlertState, Severity

router = APIRouter(prefix="/api/v1", tags=["health and alerts"])

SeverityName = Literal["critical", "high", "warning", "info"]


def _alerting(request: Request) -> Alerting:
    alerting: Alerting | None = getattr(request.app.state, "alerting", None)
    if alerting is None:
        raise Problem(503, "Alerting is not running")
    return alerting


def _tenant(request: Request) -> int | None:
    """The signed-in user's tenant (the node's own tenant when accounts are off)."""
    return tenant_of(request)


def _store_problem(exc: StoreError) -> Problem:
    if isinstance(exc, NotFound):
        return Problem(404, "Not found", str(exc))
    if isinstance(exc, Conflict):
        return Problem(409, "Conflict", str(exc))
    if isinstance(exc, Invalid):
        return Problem(422, "Invalid", str(exc))
    return Problem(500, "Storage error", str(exc))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# -- health ----------------------------------------------------------------------------


def _health_item(alerting: Alerting, endpoint: str, now: float) -> dict[str, Any]:
    h = alerting.health.devices[endpoint]
    place = alerting.directory.get(endpoint)
    profile = alerting.profiles.profile_of(endpoint)
    return {
        **h.as_dict(now),
        "farm_id": place.farm_id,
        "enclosure_id": place.enclosure_id,
        "profile": None if profile is None else profile.name,
    }


@router.get("/health/devices", summary="Health of every device")
async def device_health(
    request: Request,
    status: Health | None = None,
    farm: int | None = None,
    enclosure: int | None = None,
) -> list[dict[str, Any]]:
    alerting = _alerting(request)
    now = asyncio.get_running_loop().time()
    out = []
    for endpoint, h in sorted(alerting.health.devices.items()):
        if status is not None and h.status != status:
            continue
        place = alerting.directory.get(endpoint)
        if farm is not None and place.farm_id != farm:
            continue
        if enclosure is not None and place.enclosure_id != enclosure:
            continue
        out.append(_health_item(alerting, endpoint, now))
    return out


@router.get("/health/devices/{endpoint}", summary="Health of one device")
async def one_device_health(request: Request, endpoint: str) -> dict[str, Any]:
    alerting = _alerting(request)
    if endpoint not in alerting.health.devices:
        raise Problem(404, "Not found", f"no health known for {endpoint!r}")
    return _health_item(alerting, endpoint, asyncio.get_running_loop().time())


@router.get("/health/enclosures", summary="Health rolled up per enclosure")
async def enclosure_health(request: Request) -> dict[str, Any]:
    rollups = _alerting(request).health.rollups("enclosure")
    return {str(k): v for k, v in rollups.items()}


@router.get("/health/enclosures/{enclosure_id}")
async def one_enclosure_health(request: Request, enclosure_id: int) -> dict[str, Any]:
    return _alerting(request).health.rollup(enclosure_id=enclosure_id)


@router.get("/health/farms", summary="Health rolled up per farm")
async def farm_health(request: Request) -> dict[str, Any]:
    rollups = _alerting(request).health.rollups("farm")
    return {str(k): v for k, v in rollups.items()}


@router.get("/health/farms/{farm_id}")
async def one_farm_health(request: Request, farm_id: int) -> dict[str, Any]:
    return _alerting(request).health.rollup(farm_id=farm_id)


@router.get("/health", summary="Fleet health, detection latency and alerting counters")
async def health_summary(request: Request) -> dict[str, Any]:
    return _alerting(request).status()


# -- profiles --------------------------------------------------------------------------


class ResourceIn(BaseModel):
    path: str
    pmin: int | None = Field(None, ge=0)
    pmax: int | None = Field(None, ge=1)
    st: float | None = Field(None, ge=0)
    quantity: str | None = None
    expected: tuple[float, float] | None = None
    possible: tuple[float, float] | None = None
    varies: bool = False


class ProfileIn(BaseModel):
    kind: Literal["*", "sensor", "camera", "unknown"] = "*"
    model: str | None = None
    objects: list[int] = []
    resources: list[ResourceIn] = []
    report_interval: float | None = Field(None, gt=0)
    priority: int = 0


@router.get("/profiles")
async def list_profiles(request: Request) -> list[dict[str, Any]]:
    alerting = _alerting(request)
    return [p.as_dict() for p in alerting.profiles.profiles.values()]


@router.get("/profiles/{name}")
async def get_profile(request: Request, name: str) -> dict[str, Any]:
    profile = _alerting(request).profiles.profiles.get(name)
    if profile is None:
        raise Problem(404, "Not found", f"no profile {name!r}")
    return profile.as_dict()


@router.put("/profiles/{name}", summary="Create or replace a profile (applied again at once)")
async def put_profile(request: Request, name: str, body: ProfileIn) -> dict[str, Any]:
    alerting = _alerting(request)
    data = body.model_dump(exclude_none=True)
    data["resources"] = [r.model_dump(exclude_none=True) for r in body.resources]
    try:
        profile = DeviceProfile.from_dict(data, name=name)
    except ProfileError as exc:
        raise Problem(422, "Invalid profile", str(exc)) from None
    stored = profile.as_dict()
    stored.pop("name")
    await alerting.store.put_profile(_tenant(request), name, stored)
    alerting.profiles.set_profile(profile)
    alerting.alerts._rules_changed()
    return profile.as_dict()


@router.delete("/profiles/{name}", status_code=204)
async def delete_profile(request: Request, name: str) -> Response:
    alerting = _alerting(request)
    try:
        await alerting.store.delete_profile(_tenant(request), name)
    except StoreError as exc:
        raise _store_problem(exc) from None
    builtin = {p.name: p for p in DEFAULT_PROFILES}.get(name)
    if builtin is not None:
        alerting.profiles.set_profile(builtin)
    else:
        alerting.profiles.remove_profile(name)
    return Response(status_code=204)


# -- rules -----------------------------------------------------------------------------


class RuleIn(BaseModel):
    key: str
    kind: str
    severity: SeverityName = "warning"
    enabled: bool = True
    farm_id: int | None = None
    enclosure_id: int | None = None
    profile: str | None = None
    params: dict[str, Any] = {}


class RulePatch(BaseModel):
    severity: SeverityName | None = None
    enabled: bool | None = None
    params: dict[str, Any] | None = None


def _rule(request: Request, body: RuleIn) -> Rule:
    try:
        return Rule(
            key=body.key,
            kind=body.kind,  # type: ignore[arg-type]  # validated by Rule
            severity=Severity(body.severity),
            params=body.params,
            enabled=body.enabled,
            tenant_id=_tenant(request),
            farm_id=body.farm_id,
            enclosure_id=body.enclosure_id,
            profile=body.profile,
        )
    except (RuleError, ValueError) as exc:
        raise Problem(422, "Invalid rule", str(exc)) from None


@router.get("/alert-rules")
async def list_rules(request: Request) -> list[dict[str, Any]]:
    rules = _alerting(request).alerts.rules.values()
    return [r.as_dict() for r in sorted(rules, key=lambda r: r.id or 0)]


@router.post("/alert-rules", status_code=201)
async def create_rule(request: Request, body: RuleIn) -> dict[str, Any]:
    alerting = _alerting(request)
    rule = _rule(request, body)
    for other in alerting.alerts.rules.values():
        scope = (other.tenant_id, other.farm_id, other.enclosure_id, other.profile)
        if other.key == rule.key and scope == (
            rule.tenant_id,
            rule.farm_id,
            rule.enclosure_id,
            rule.profile,
        ):
            raise Problem(409, "Conflict", f"rule {rule.key!r} already exists in that scope")
    record = await alerting.store.create_rule(**rule.to_values())
    await alerting.alerts.reload()
    return Rule.from_record(record).as_dict()


@router.get("/alert-rules/{rule_id}")
async def get_rule(request: Request, rule_id: int) -> dict[str, Any]:
    rule = _alerting(request).alerts.rules.get(rule_id)
    if rule is None:
        raise Problem(404, "Not found", f"no rule {rule_id}")
    return rule.as_dict()


@router.patch("/alert-rules/{rule_id}")
async def patch_rule(request: Request, rule_id: int, body: RulePatch) -> dict[str, Any]:
    alerting = _alerting(request)
    current = alerting.alerts.rules.get(rule_id)
    if current is None:
        raise Problem(404, "Not found", f"no rule {rule_id}")
    changes = body.model_dump(exclude_none=True)
    try:
        Rule(
            **{
                **current.to_values(),
                **changes,
                "kind": current.kind,
                "severity": Severity(changes.get("severity", current.severity)),
            }
        )
    except (RuleError, ValueError) as exc:
        raise Problem(422, "Invalid rule", str(exc)) from None
    try:
        record = await alerting.store.update_rule(rule_id, **changes)
    except StoreError as exc:
        raise _store_problem(exc) from None
    await alerting.alerts.reload()
    return Rule.from_record(record).as_dict()


@router.delete("/alert-rules/{rule_id}", status_code=204)
async def delete_rule(request: Request, rule_id: int) -> Response:
    alerting = _alerting(request)
    try:
        await alerting.store.delete_rule(rule_id)
    except StoreError as exc:
        raise _store_problem(exc) from None
    await alerting.alerts.reload()
    return Response(status_code=204)


# -- alerts ----------------------------------------------------------------------------


class AlertAction(BaseModel):
    by: str = Field(min_length=1, max_length=200)
    note: str | None = Field(None, max_length=4000)


@router.get("/alerts", summary="Alerts, newest first (history included)")
async def list_alerts(
    request: Request,
    state: str | None = None,
    severity: str | None = None,
    farm: int | None = None,
    enclosure: int | None = None,
    device: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """`state` and `severity` take comma-separated lists (`state=open,acknowledged`)."""
    alerting = _alerting(request)
    states = _list_of(state, [str(s) for s in AlertState], "state")
    severities = _list_of(severity, [str(s) for s in Severity], "severity")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    flt = AlertFilter(
        state=states,
        severity=severities,
        farm_id=farm,
        enclosure_id=enclosure,
        endpoint=device,
        rule_key=rule,
        since=since,
    )
    try:
        page = await alerting.store.list_alerts(flt, limit=limit, offset=offset)
    except StoreError as exc:
        raise _store_problem(exc) from None
    live = alerting.alerts.by_id
    items = [(live.get(a.id) or a).as_dict() for a in page.items]
    return {"items": items, "total": page.total, "limit": limit, "offset": offset}


def _list_of(text: str | None, allowed: list[str], what: str) -> list[str] | None:
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise Problem(400, f"Invalid {what}", f"{', '.join(bad)}: use {', '.join(allowed)}")
    return values


@router.get("/alerts/{alert_id}")
async def get_alert(request: Request, alert_id: int) -> dict[str, Any]:
    alerting = _alerting(request)
    try:
        alert = await alerting.alerts.get(alert_id)
        events = await alerting.store.alert_events(alert_id)
    except StoreError as exc:
        raise _store_problem(exc) from None
    return {
        **alert.as_dict(),
        "events": [
            {"time": _iso(e.time), "kind": e.kind, "actor": e.actor, "detail": e.detail}
            for e in events
        ],
    }


@router.post("/alerts/{alert_id}/acknowledge")
async def acknowledge_alert(request: Request, alert_id: int, body: AlertAction) -> dict[str, Any]:
    alerting = _alerting(request)
    try:
        alert = alerting.alerts.acknowledge(alert_id, body.by, body.note)
    except AlertError as exc:
        raise Problem(409, "Alert not open", str(exc)) from None
    return alert.as_dict()


@router.post("/alerts/{alert_id}/resolve")
async def resolve_alert(request: Request, alert_id: int, body: AlertAction) -> dict[str, Any]:
    alerting = _alerting(request)
    try:
        alert = alerting.alerts.resolve(alert_id, body.by, body.note)
    except AlertError as exc:
        raise Problem(409, "Alert not open", str(exc)) from None
    return alert.as_dict()


# -- channels --------------------------------------------------------------------------


class ChannelIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    kind: ChannelKind
    config: dict[str, Any]
    enabled: bool = True
    min_severity: SeverityName = "info"


class ChannelPatch(BaseModel):
    config: dict[str, Any] | None = None
    enabled: bool | None = None
    min_severity: SeverityName | None = None


def _channel_out(alerting: Alerting, spec: ChannelSpec) -> dict[str, Any]:
    stats = alerting.dispatcher.stats(spec.name)
    return {
        "id": alerting.alerts.channel_ids.get(spec.name),
        "name": spec.name,
        "kind": str(spec.kind),
        "enabled": spec.enabled,
        "min_severity": spec.min_severity,
        "config": spec.public_config(),
        "delivery": None if stats is None else stats.as_dict(),
    }


def _spec(alerting: Alerting, name: str) -> ChannelSpec:
    spec = alerting.dispatcher.channels.get(name)
    if spec is None:
        raise Problem(404, "Not found", f"no channel {name!r}")
    return spec


@router.get("/channels")
async def list_channels(request: Request) -> list[dict[str, Any]]:
    alerting = _alerting(request)
    return [_channel_out(alerting, s) for s in alerting.dispatcher.channels.values()]


@router.post("/channels", status_code=201)
async def create_channel(request: Request, body: ChannelIn) -> dict[str, Any]:
    alerting = _alerting(request)
    try:
        spec = ChannelSpec(body.name, body.kind, body.config, body.enabled, body.min_severity)
    except (ChannelError, ValueError) as exc:
        raise Problem(422, "Invalid channel", str(exc)) from None
    try:
        await alerting.store.create_channel(
            tenant_id=_tenant(request),
            name=spec.name,
            kind=str(spec.kind),
            enabled=spec.enabled,
            min_severity=spec.min_severity,
            config=dict(spec.config),
        )
    except StoreError as exc:
        raise _store_problem(exc) from None
    await alerting.alerts.reload()
    return _channel_out(alerting, spec)


@router.get("/channels/{name}")
async def get_channel(request: Request, name: str) -> dict[str, Any]:
    alerting = _alerting(request)
    return _channel_out(alerting, _spec(alerting, name))


@router.patch("/channels/{name}")
async def patch_channel(request: Request, name: str, body: ChannelPatch) -> dict[str, Any]:
    alerting = _alerting(request)
    spec = _spec(alerting, name)
    config = dict(spec.config)
    if body.config is not None:
        # a masked secret sent back unchanged keeps the stored one
        config.update({k: v for k, v in body.config.items() if v != "***"})
    try:
        new = ChannelSpec(
            name,
            spec.kind,
            config,
            spec.enabled if body.enabled is None else body.enabled,
            body.min_severity or spec.min_severity,
        )
    except (ChannelError, ValueError) as exc:
        raise Problem(422, "Invalid channel", str(exc)) from None
    channel_id = alerting.alerts.channel_ids[name]
    await alerting.store.update_channel(
        channel_id, config=dict(new.config), enabled=new.enabled, min_severity=new.min_severity
    )
    await alerting.alerts.reload()
    return _channel_out(alerting, new)


@router.delete("/channels/{name}", status_code=204)
async def delete_channel(request: Request, name: str) -> Response:
    alerting = _alerting(request)
    _spec(alerting, name)
    await alerting.store.delete_channel(alerting.alerts.channel_ids[name])
    await alerting.alerts.reload()
    return Response(status_code=204)


@router.post("/channels/{name}/test", summary="Send a test notice through one channel now")
async def test_channel(request: Request, name: str) -> dict[str, Any]:
    alerting = _alerting(request)
    spec = _spec(alerting, name)
    now = datetime.now(UTC).isoformat()
    notice = {
        "event": "test",
        "sent_at": now,
        "alert": {
            "id": 0,
            "title": "Test notice from Shoal",
            "severity": "info",
            "message": f"channel {name} works",
            "subject": f"channel:{name}",
            "state": "open",
            "first_at": now,
        },
        "place": {},
    }
    try:
        await alerting.dispatcher.send_test(spec, notice)
    except DeliveryError as exc:
        raise Problem(502, "Delivery failed", str(exc)) from None
    return {"delivered": True, "channel": name}


# -- escalation policies ---------------------------------------------------------------


class StepIn(BaseModel):
    after: float = Field(0, ge=0)
    channels: list[str] = Field(min_length=1)


class PolicyIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    enabled: bool = True
    steps: list[StepIn] = Field(min_length=1)
    repeat_every: float | None = Field(None, gt=0)
    min_severity: SeverityName = "warning"
    farm_id: int | None = None
    enclosure_id: int | None = None
    rule_keys: list[str] | None = None


def _policy(body: PolicyIn) -> EscalationPolicy:
    data = body.model_dump()
    name, enabled = data.pop("name"), data.pop("enabled")
    try:
        return EscalationPolicy.from_body(name, data, enabled)
    except RuleError as exc:
        raise Problem(422, "Invalid escalation policy", str(exc)) from None


@router.get("/escalation-policies")
async def list_policies(request: Request) -> list[dict[str, Any]]:
    return [p.as_dict() for p in _alerting(request).alerts.policies.values()]


@router.post("/escalation-policies", status_code=201)
async def create_policy(request: Request, body: PolicyIn) -> dict[str, Any]:
    alerting = _alerting(request)
    policy = _policy(body)
    try:
        record = await alerting.store.create_policy(
            tenant_id=_tenant(request), name=policy.name, enabled=policy.enabled, body=policy.body()
        )
    except StoreError as exc:
        raise _store_problem(exc) from None
    await alerting.alerts.reload()
    return EscalationPolicy.from_record(record).as_dict()


@router.put("/escalation-policies/{policy_id}")
async def replace_policy(request: Request, policy_id: int, body: PolicyIn) -> dict[str, Any]:
    alerting = _alerting(request)
    policy = _policy(body)
    try:
        record = await alerting.store.update_policy(
            policy_id, name=policy.name, enabled=policy.enabled, body=policy.body()
        )
    except StoreError as exc:
        raise _store_problem(exc) from None
    await alerting.alerts.reload()
    return EscalationPolicy.from_record(record).as_dict()


@router.delete("/escalation-policies/{policy_id}", status_code=204)
async def delete_policy(request: Request, policy_id: int) -> Response:
    alerting = _alerting(request)
    try:
        await alerting.store.delete_policy(policy_id)
    except StoreError as exc:
        raise _store_problem(exc) from None
    await alerting.alerts.reload()
    return Response(status_code=204)


# -- silences and maintenance windows --------------------------------------------------


class SilenceIn(BaseModel):
    kind: Literal["silence", "maintenance"] = "silence"
    farm_id: int | None = None
    enclosure_id: int | None = None
    endpoint: str | None = None
    rule_key: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    duration: float | None = Field(None, gt=0, description="seconds, instead of ends_at")
    reason: str = ""
    created_by: str = Field(min_length=1, max_length=200)


def _silence_out(s: Any) -> dict[str, Any]:
    return {
        "id": s.id,
        "kind": s.kind,
        "farm_id": s.farm_id,
        "enclosure_id": s.enclosure_id,
        "endpoint": s.endpoint,
        "rule_key": s.rule_key,
        "starts_at": _iso(s.starts_at),
        "ends_at": _iso(s.ends_at),
        "reason": s.reason,
        "created_by": s.created_by,
    }


@router.get("/silences")
async def list_silences(request: Request, active: bool = False) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    silences = _alerting(request).alerts.silences.values()
    return [_silence_out(s) for s in silences if not active or s.starts_at <= now < s.ends_at]


@router.post("/silences", status_code=201)
async def create_silence(request: Request, body: SilenceIn) -> dict[str, Any]:
    alerting = _alerting(request)
    starts = body.starts_at or datetime.now(UTC)
    starts = starts if starts.tzinfo else starts.replace(tzinfo=UTC)
    ends = body.ends_at
    if ends is None:
        if body.duration is None:
            raise Problem(422, "Invalid silence", "give ends_at or duration")
        ends = starts + timedelta(seconds=body.duration)
    ends = ends if ends.tzinfo else ends.replace(tzinfo=UTC)
    try:
        record = await alerting.store.create_silence(
            tenant_id=_tenant(request),
            kind=body.kind,
            farm_id=body.farm_id,
            enclosure_id=body.enclosure_id,
            endpoint=body.endpoint,
            rule_key=body.rule_key,
            starts_at=starts,
            ends_at=ends,
            reason=body.reason,
            created_by=body.created_by,
        )
    except StoreError as exc:
        raise _store_problem(exc) from None
    alerting.alerts.add_silence(record)
    return _silence_out(record)


@router.delete("/silences/{silence_id}", status_code=204)
async def delete_silence(request: Request, silence_id: int) -> Response:
    alerting = _alerting(request)
    try:
        await alerting.store.delete_silence(silence_id)
    except StoreError as exc:
        raise _store_problem(exc) from None
    alerting.alerts.remove_silence(silence_id)
    return Response(status_code=204)

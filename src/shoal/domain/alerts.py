"""Malfunction rules and the alert lifecycle.

Rules look at every value a device reports (notifications, Sends, the first
answer to an observation) and at the health service's verdicts. A rule has a
kind, a severity, parameters and a scope: global, a tenant, a device profile, a
farm or an enclosure. For one device, rules with the same key override each
other, the most specific scope winning (enclosure > farm > profile > tenant >
global), so a farm can loosen one threshold without copying the rest, or switch
a rule off with `enabled: false`.

Kinds: threshold and range on a resource; impossible value (outside what the
sensor can physically measure: pH 15 is a sensor fault, not a chemistry event);
stuck value (unchanged for N readings while it should vary); spike (rate of
change); device error codes (/3/0/11); battery level; signal strength; failed
firmware update (/5/0/5); disagreement between probes of one quantity in one
enclosure; not responding (from health); observation refused (from the profile
service); channel failing (from the dispatcher).

Alerts: one active alert per (subject, key) — a repeat only counts up. Lifecycle
open -> acknowledged (who, note) -> resolved (automatically once the condition
has stayed clear for the rule's `clear_after`, or by hand). An alert that comes
back within `flap_window` of resolving is reopened rather than duplicated; past
`flap_limit` reopenings it is marked flapping and stops notifying until it
settles. Silences and maintenance windows (farm, enclosure, device, optionally
one rule) keep alerts recorded but quiet. Escalation policies notify the next
contacts when nobody acknowledges within T, and repeat every R.

Everything in memory is the truth for open alerts; one worker writes it to the
store in order (insert, then batched updates), and only after an insert does an
alert reach the live feed and the channels, so every notice carries its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shoal.domain.channels import (
    ChannelDispatcher,
    ChannelKind,
    ChannelSpec,
    DeliveryConfig,
)
from shoal.domain.feed import LiveFeed
from shoal.domain.health import (
    DeviceDirectory,
    DeviceHealth,
    Health,
    HealthConfig,
    HealthService,
    Place,
)
from shoal.domain.profiles import (
    AppliedProfile,
    DeviceProfile,
    ProfileConfig,
    ProfileService,
    ResourceSpec,
)
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path
from shoal.server import events as ev
from shoal.server.registration import Registration
from shoal.server.server import Lwm2mServer
from shoal.store import Database, Inventory
from shoal.store.alerts import (
    Alert,
    AlertState,
    AlertStore,
    PolicyRecord,
    RuleRecord,
    Severity,
    SilenceRecord,
)

if TYPE_CHECKING:
    from shoal.node import ShoalNode

log = logging.getLogger(__name__)


class RuleKind(enum.StrEnum):
    THRESHOLD = "threshold"
    RANGE = "range"
    IMPOSSIBLE = "impossible"
    STUCK = "stuck"
    SPIKE = "spike"
    ERROR_CODE = "error_code"
    BATTERY = "battery"
    SIGNAL = "signal"
    FIRMWARE = "firmware"
    DISAGREEMENT = "disagreement"
    NOT_RESPONDING = "not_responding"
    OBSERVATION = "observation"
    CHANNEL = "channel"


VALUE_KINDS = frozenset(
    {
        RuleKind.THRESHOLD,
        RuleKind.RANGE,
        RuleKind.IMPOSSIBLE,
        RuleKind.STUCK,
        RuleKind.SPIKE,
        RuleKind.BATTERY,
        RuleKind.SIGNAL,
        RuleKind.FIRMWARE,
    }
)

# Device object /3/0/11
ERROR_CODES: dict[int, tuple[str, Severity]] = {
    1: ("Low battery", Severity.WARNING),
    2: ("External power supply off", Severity.HIGH),
    3: ("GPS module failure", Severity.WARNING),
    4: ("Low received signal strength", Severity.WARNING),
    5: ("Out of memory", Severity.HIGH),
    6: ("SMS failure", Severity.INFO),
    7: ("IP connectivity failure", Severity.HIGH),
    8: ("Peripheral malfunction", Severity.HIGH),
}
# Firmware Update object /5/0/5
FIRMWARE_RESULTS: dict[int, str] = {
    2: "not enough flash memory for the package",
    3: "out of RAM during download",
    4: "connection lost during download",
    5: "integrity check failure",
    6: "unsupported package type",
    7: "invalid URI",
    8: "firmware update failed",
    9: "unsupported protocol",
}
P_BATTERY = Path(3, 0, 9)
P_ERROR_CODE = Path(3, 0, 11)
P_SIGNAL = Path(4, 0, 2)
P_FW_RESULT = Path(5, 0, 5)

_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")


class RuleError(ValueError):
    """A rule that cannot be evaluated as written."""


def _num(params: Mapping[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuleError(f"{name} must be a number")
    return float(value)


@dataclass(frozen=True, slots=True)
class Rule:
    key: str
    kind: RuleKind
    severity: Severity = Severity.WARNING
    params: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    tenant_id: int | None = None
    farm_id: int | None = None
    enclosure_id: int | None = None
    profile: str | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        if not _KEY.fullmatch(self.key):
            raise RuleError("rule key must be 1-100 of a-z, 0-9, _ . - (starting alphanumeric)")
        object.__setattr__(self, "kind", RuleKind(self.kind))
        object.__setattr__(self, "severity", Severity(self.severity))
        p = self.params
        for name in (
            "min",
            "max",
            "critical_min",
            "critical_max",
            "hysteresis",
            "count",
            "epsilon",
            "max_rate",
            "below",
            "critical_below",
            "clear_after",
            "min_devices",
            "max_age",
        ):
            _num(p, name)
        path = p.get("path")
        if path is not None:
            try:
                Path.parse(str(path).replace("*", "0"))
            except ValueError as exc:
                raise RuleError(f"path: {exc}") from None
        if self.kind == RuleKind.THRESHOLD:
            if path is None and p.get("quantity") is None:
                raise RuleError("a threshold rule needs a path or a quantity")
            if _num(p, "min") is None and _num(p, "max") is None:
                raise RuleError("a threshold rule needs min or max")
        if self.kind == RuleKind.STUCK and (_num(p, "count") or 10) < 2:
            raise RuleError("count must be at least 2")
        for name in ("limits", "quantities"):
            table = p.get(name)
            if table is not None and (
                not isinstance(table, Mapping)
                or not all(isinstance(v, (int, float)) for v in table.values())
            ):
                raise RuleError(f"{name} must map quantities to numbers")

    @property
    def scope_rank(self) -> int:
        if self.enclosure_id is not None:
            return 4
        if self.farm_id is not None:
            return 3
        if self.profile is not None:
            return 2
        if self.tenant_id is not None:
            return 1
        return 0

    @property
    def clear_after(self) -> float:
        value = _num(self.params, "clear_after")
        if value is not None:
            return value
        return 60.0 if self.kind == RuleKind.SPIKE else 0.0

    def in_scope(self, place: Place, profile: str | None) -> bool:
        if self.tenant_id is not None and place.tenant_id != self.tenant_id:
            return False
        if self.farm_id is not None and place.farm_id != self.farm_id:
            return False
        if self.enclosure_id is not None and place.enclosure_id != self.enclosure_id:
            return False
        return self.profile is None or self.profile == profile

    def selects(self, path: Path, spec: ResourceSpec | None) -> bool:
        """Whether this value rule looks at a value at `path`."""
        p = self.params
        pattern = p.get("path")
        if pattern is not None:
            return _path_match(str(pattern), path)
        quantity = p.get("quantity")
        if quantity is not None:
            return spec is not None and spec.quantity == quantity
        kind = self.kind
        if kind == RuleKind.RANGE:
            return spec is not None and spec.expected is not None
        if kind == RuleKind.IMPOSSIBLE:
            return spec is not None and spec.possible is not None
        if kind == RuleKind.STUCK:
            return spec is not None and spec.varies
        if kind == RuleKind.SPIKE:
            limits = p.get("limits") or {}
            return spec is not None and spec.quantity in limits
        if kind == RuleKind.BATTERY:
            return path == P_BATTERY
        if kind == RuleKind.SIGNAL:
            return path == P_SIGNAL
        if kind == RuleKind.FIRMWARE:
            return path == P_FW_RESULT
        return False

    def to_values(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": str(self.kind),
            "severity": str(self.severity),
            "enabled": self.enabled,
            "tenant_id": self.tenant_id,
            "farm_id": self.farm_id,
            "enclosure_id": self.enclosure_id,
            "profile": self.profile,
            "params": dict(self.params),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.to_values()}

    @classmethod
    def from_record(cls, r: RuleRecord) -> Rule:
        return cls(
            key=r.key,
            kind=RuleKind(r.kind),
            severity=Severity(r.severity),
            params=dict(r.params),
            enabled=r.enabled,
            tenant_id=r.tenant_id,
            farm_id=r.farm_id,
            enclosure_id=r.enclosure_id,
            profile=r.profile,
            id=r.id,
        )


def _path_match(pattern: str, path: Path) -> bool:
    parts = pattern.strip("/").split("/")
    if len(parts) != len(path):
        return False
    return all(part == "*" or int(part) == path[i] for i, part in enumerate(parts))


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("not_responding", RuleKind.NOT_RESPONDING, Severity.HIGH),
    Rule("impossible_value", RuleKind.IMPOSSIBLE, Severity.HIGH),
    Rule("out_of_range", RuleKind.RANGE, Severity.WARNING, {"hysteresis": 0.0}),
    Rule(
        "low_oxygen",
        RuleKind.THRESHOLD,
        Severity.CRITICAL,
        {"quantity": "dissolved_oxygen", "min": 4.0, "hysteresis": 0.3},
    ),
    Rule("stuck_value", RuleKind.STUCK, Severity.WARNING, {"count": 30}),
    Rule(
        "spike",
        RuleKind.SPIKE,
        Severity.WARNING,
        # largest believable change per minute
        {"limits": {"ph": 1.0, "water_temperature": 2.0, "dissolved_oxygen": 4.0}},
    ),
    Rule("device_error", RuleKind.ERROR_CODE, Severity.HIGH),
    Rule(
        "low_battery",
        RuleKind.BATTERY,
        Severity.WARNING,
        {"below": 20.0, "critical_below": 10.0, "hysteresis": 2.0},
    ),
    Rule("weak_signal", RuleKind.SIGNAL, Severity.WARNING, {"below": -110.0, "hysteresis": 3.0}),
    Rule("firmware_failed", RuleKind.FIRMWARE, Severity.HIGH),
    Rule(
        "probe_disagreement",
        RuleKind.DISAGREEMENT,
        Severity.WARNING,
        {
            "quantities": {"ph": 0.5, "dissolved_oxygen": 2.0, "water_temperature": 1.5},
            "min_devices": 3,
            "max_age": 900,
        },
    ),
    Rule("observation_refused", RuleKind.OBSERVATION, Severity.WARNING),
    Rule("channel_failure", RuleKind.CHANNEL, Severity.HIGH),
)


# -- escalation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EscalationStep:
    after: float  # seconds after the alert opened
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    name: str
    steps: tuple[EscalationStep, ...]
    repeat_every: float | None = None
    min_severity: Severity = Severity.WARNING
    farm_id: int | None = None
    enclosure_id: int | None = None
    rule_keys: tuple[str, ...] | None = None
    enabled: bool = True
    id: int | None = None

    def __post_init__(self) -> None:
        if not self.steps:
            raise RuleError("a policy needs at least one step")
        last = -1.0
        for step in self.steps:
            if step.after < last:
                raise RuleError("steps must be in order of `after`")
            if not step.channels:
                raise RuleError("every step names at least one channel")
            last = step.after
        if self.repeat_every is not None and self.repeat_every <= 0:
            raise RuleError("repeat_every must be positive")

    def matches(self, alert: Alert) -> bool:
        if not self.enabled or Severity(alert.severity).rank < self.min_severity.rank:
            return False
        if self.farm_id is not None and alert.farm_id != self.farm_id:
            return False
        if self.enclosure_id is not None and alert.enclosure_id != self.enclosure_id:
            return False
        return self.rule_keys is None or _base_key(alert.rule_key) in self.rule_keys

    @property
    def specificity(self) -> tuple[int, int]:
        place = 2 if self.enclosure_id is not None else 1 if self.farm_id is not None else 0
        return place, self.min_severity.rank

    def body(self) -> dict[str, Any]:
        return {
            "steps": [{"after": s.after, "channels": list(s.channels)} for s in self.steps],
            "repeat_every": self.repeat_every,
            "min_severity": str(self.min_severity),
            "farm_id": self.farm_id,
            "enclosure_id": self.enclosure_id,
            "rule_keys": None if self.rule_keys is None else list(self.rule_keys),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "enabled": self.enabled, **self.body()}

    @classmethod
    def from_body(
        cls, name: str, body: Mapping[str, Any], enabled: bool = True, id: int | None = None
    ) -> EscalationPolicy:
        try:
            steps = tuple(
                EscalationStep(float(s.get("after", 0)), tuple(str(c) for c in s["channels"]))
                for s in body["steps"]
            )
            keys = body.get("rule_keys")
            repeat = body.get("repeat_every")
            return cls(
                name=name,
                steps=steps,
                repeat_every=None if repeat is None else float(repeat),
                min_severity=Severity(body.get("min_severity", "warning")),
                farm_id=body.get("farm_id"),
                enclosure_id=body.get("enclosure_id"),
                rule_keys=None if keys is None else tuple(str(k) for k in keys),
                enabled=enabled,
                id=id,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RuleError(f"bad escalation policy: {exc}") from None

    @classmethod
    def from_record(cls, r: PolicyRecord) -> EscalationPolicy:
        return cls.from_body(r.name, r.body, r.enabled, r.id)


@dataclass(slots=True)
class _Escalation:
    policy: EscalationPolicy
    base: float  # loop time the alert (re)opened
    level: int  # index of the last step notified (-1: none yet)
    last_notified: float | None = None


# -- alert service ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertConfig:
    flap_window: float = 600.0
    flap_limit: int = 3
    tick_interval: float = 1.0
    persist_interval: float = 1.0
    seed_default_rules: bool = True
    # Cap on distinct (device, path) value histories kept for stuck/spike rules.
    max_series: int = 2_000_000


@dataclass(frozen=True, slots=True)
class Condition:
    subject: str
    key: str
    rule: Rule
    severity: Severity
    title: str
    message: str
    detail: dict[str, Any]
    endpoint: str | None
    place: Place


@dataclass(slots=True)
class _Series:
    value: float
    at: float
    same: int = 1


Outcome = tuple[Severity, str, str, dict[str, Any]]
# neither raise nor clear (inside the hysteresis band, no history yet); compared by identity
_KEEP: Outcome = (Severity.INFO, "", "", {})


class _Check:
    """One value rule compiled for one resource of one device: parameters parsed
    once, so the ingest path only compares numbers."""

    __slots__ = (
        "below",
        "cmax",
        "cmin",
        "count",
        "critical",
        "hi",
        "hold",
        "hyst",
        "key",
        "kind",
        "limit",
        "lo",
        "name",
        "path_text",
        "rule",
    )

    def __init__(self, rule: Rule, spec: ResourceSpec | None, path: Path) -> None:
        p = rule.params
        self.rule = rule
        self.kind = rule.kind
        self.path_text = str(path)
        self.key = f"{rule.key}@{path}"
        self.name = _quantity_name(spec, path)
        self.hold = rule.clear_after
        lo, hi = _num(p, "min"), _num(p, "max")
        if rule.kind == RuleKind.RANGE and spec is not None and spec.expected is not None:
            lo = spec.expected[0] if lo is None else lo
            hi = spec.expected[1] if hi is None else hi
        if rule.kind == RuleKind.IMPOSSIBLE and spec is not None and spec.possible is not None:
            lo = spec.possible[0] if lo is None else lo
            hi = spec.possible[1] if hi is None else hi
        self.lo, self.hi = lo, hi
        self.hyst = _num(p, "hysteresis") or 0.0
        self.cmin, self.cmax = _num(p, "critical_min"), _num(p, "critical_max")
        self.count = int(_num(p, "count") or 10)
        limit = _num(p, "max_rate")
        limits = p.get("limits") or {}
        if limit is None and spec is not None and spec.quantity in limits:
            limit = float(limits[spec.quantity])
        self.limit = limit
        below = _num(p, "below")
        if below is None:
            below = 20.0 if rule.kind == RuleKind.BATTERY else -110.0
        self.below = below
        self.critical = _num(p, "critical_below")

    def evaluate(
        self, value: float, at: float, previous: tuple[float, float, int] | None
    ) -> Outcome | None:
        """An outcome to raise, None to clear, `_KEEP` to leave as it is."""
        kind = self.kind
        name = self.name
        severity = self.rule.severity
        if kind in (RuleKind.THRESHOLD, RuleKind.RANGE, RuleKind.IMPOSSIBLE):
            lo, hi = self.lo, self.hi
            low = lo is not None and value < lo
            high = hi is not None and value > hi
            if low or high:
                bound = lo if low else hi
                cmin, cmax = self.cmin, self.cmax
                if (cmin is not None and value < cmin) or (cmax is not None and value > cmax):
                    severity = Severity.CRITICAL
                side = "below" if low else "above"
                if kind == RuleKind.IMPOSSIBLE:
                    title = f"Impossible {name} value (sensor fault)"
                    message = (
                        f"{name} reads {_fmt(value)}, outside what the sensor can measure "
                        f"({_fmt(lo)} to {_fmt(hi)}): the probe is faulty"
                    )
                elif kind == RuleKind.RANGE:
                    title = f"{name.capitalize()} out of expected range"
                    message = f"{name} is {_fmt(value)}, expected {_fmt(lo)} to {_fmt(hi)}"
                else:
                    title = f"{name.capitalize()} {side} {_fmt(bound)}"
                    message = f"{name} is {_fmt(value)} ({side} {_fmt(bound)})"
                return severity, title, message, {"low": lo, "high": hi}
            hyst = self.hyst
            if (lo is None or value >= lo + hyst) and (hi is None or value <= hi - hyst):
                return None
            return _KEEP
        if kind == RuleKind.STUCK:
            same = previous[2] + 1 if previous is not None and value == previous[0] else 1
            if same >= self.count:
                return (
                    severity,
                    f"Stuck {name} value",
                    f"{name} unchanged at {_fmt(value)} for {same} readings",
                    {"readings": same},
                )
            return None if same == 1 else _KEEP
        if kind == RuleKind.SPIKE:
            limit = self.limit
            if previous is None or limit is None:
                return _KEEP
            # a change larger than a minute's worth, however fast it came
            dt = max(0.0, at - previous[1])
            change = value - previous[0]
            if abs(change) > limit * max(dt, 60.0) / 60.0:
                return (
                    severity,
                    f"Spike in {name}",
                    f"{name} changed by {_fmt(change)} in {dt:.0f} s "
                    f"(limit {_fmt(limit)} per minute)",
                    {"change": change, "seconds": dt},
                )
            return None
        if kind in (RuleKind.BATTERY, RuleKind.SIGNAL):
            below = self.below
            battery = kind == RuleKind.BATTERY
            unit = "%" if battery else " dBm"
            if value < below:
                if self.critical is not None and value < self.critical:
                    severity = Severity.CRITICAL
                what = "battery level" if battery else "signal strength"
                return (
                    severity,
                    "Low battery" if battery else "Weak radio signal",
                    f"{what} {_fmt(value)}{unit} (below {_fmt(below)}{unit})",
                    {},
                )
            return None if value >= below + self.hyst else _KEEP
        if kind == RuleKind.FIRMWARE:
            result = int(value)
            if result in FIRMWARE_RESULTS:
                return (
                    severity,
                    "Firmware update failed",
                    f"update result {result}: {FIRMWARE_RESULTS[result]}",
                    {"result": result},
                )
            return None if result in (0, 1) else _KEEP
        return _KEEP


@dataclass(slots=True)
class _PathChecks:
    gen: tuple[int, int, str | None]
    checks: list[_Check]
    quantity: str | None
    disagreement: list[Rule]


class AlertError(Exception):
    """An alert operation that does not apply (acknowledging a resolved alert...)."""


Job = Callable[[], Awaitable[None]]


class AlertService:
    def __init__(
        self,
        store: AlertStore,
        directory: DeviceDirectory,
        profiles: ProfileService | None,
        feed: LiveFeed | None,
        dispatcher: ChannelDispatcher,
        config: AlertConfig | None = None,
        server: Lwm2mServer | None = None,
    ) -> None:
        self.store = store
        self.directory = directory
        self.profiles = profiles
        self.feed = feed
        self.dispatcher = dispatcher
        self.config = config or AlertConfig()
        self.server = server
        self.rules: dict[int, Rule] = {}
        self.policies: dict[int, EscalationPolicy] = {}
        self.silences: dict[int, SilenceRecord] = {}
        self.channel_ids: dict[str, int] = {}
        self.active: dict[tuple[str, str], Alert] = {}
        self.by_id: dict[int, Alert] = {}
        self.stats = {
            "values": 0,
            "raised": 0,
            "repeats": 0,
            "reopened": 0,
            "resolved": 0,
            "notices": 0,
            "suppressed": 0,
        }
        self._rules_gen = 0
        self._rule_cache: dict[str, tuple[tuple[int, int, str | None], list[Rule]]] = {}
        self._series: dict[tuple[str, Path], _Series] = {}
        self._checks: dict[tuple[str, Path], _PathChecks] = {}
        self._codes: dict[str, set[int]] = {}
        self._latest: dict[tuple[int, str], dict[str, tuple[float, float]]] = {}
        self._clearing: dict[tuple[str, str], float] = {}
        self._recent: dict[tuple[str, str], tuple[Alert, float]] = {}
        self._escalations: dict[tuple[str, str], _Escalation] = {}
        self._notified: dict[int, set[str]] = {}
        self._pending_events: list[tuple[Alert, str, str | None, dict[str, Any] | None, datetime]]
        self._pending_events = []
        self._dirty: set[int] = set()
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        dispatcher.on_failure = self._channel_failed
        dispatcher.on_success = self._channel_ok
        if profiles is not None:
            profiles.on_values.append(self._on_profile_values)
            profiles.on_applied.append(self._on_profile_applied)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        for alert in await self.store.active_alerts():
            self.active[(alert.subject, alert.rule_key)] = alert
            self.by_id[alert.id] = alert
        if self.server is not None:
            bus = self.server.bus
            self._unsubscribe = [
                bus.subscribe(ev.Notification, self._on_notification),
                bus.subscribe(ev.SendReceived, self._on_send),
            ]
        loop = asyncio.get_running_loop()
        now = loop.time()
        for alert in self.active.values():
            if alert.state == AlertState.OPEN and not alert.silenced:
                self._start_escalation(alert, now, notify_first=False)
        self._tasks = [
            loop.create_task(self._work()),
            loop.create_task(self._tick_loop()),
        ]

    async def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        self._enqueue(self._flush)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._jobs.join(), 10.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every queued write and announcement ran (tests)."""
        self._enqueue(self._flush)
        await self._jobs.join()

    async def reload(self) -> None:
        """(Re)load rules, channels, policies and silences from the store."""
        records = await self.store.list_rules()
        if not records and self.config.seed_default_rules:
            for rule in DEFAULT_RULES:
                await self.store.create_rule(**rule.to_values())
            records = await self.store.list_rules()
        self.rules = {r.id: Rule.from_record(r) for r in records}
        self._rules_changed()
        channels = await self.store.list_channels()
        self.channel_ids = {c.name: c.id for c in channels}
        current = set(self.dispatcher.channels)
        for c in channels:
            spec = ChannelSpec(c.name, ChannelKind(c.kind), c.config, c.enabled, c.min_severity)
            if self.dispatcher.channels.get(c.name) != spec:
                self.dispatcher.set_channel(spec)
            current.discard(c.name)
        for name in current:
            self.dispatcher.remove_channel(name)
        self.policies = {
            p.id: EscalationPolicy.from_record(p) for p in await self.store.list_policies()
        }
        self.silences = {s.id: s for s in await self.store.list_silences()}

    def _rules_changed(self) -> None:
        self._rules_gen += 1
        self._rule_cache.clear()
        self._checks.clear()

    def _enqueue(self, job: Job) -> None:
        self._jobs.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except Exception:
                log.exception("alert job failed")
            finally:
                self._jobs.task_done()

    async def _tick_loop(self) -> None:
        last_flush = 0.0
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                now = self._now()
                self.tick(now)
                if now - last_flush >= self.config.persist_interval and (
                    self._dirty or self._pending_events
                ):
                    last_flush = now
                    self._enqueue(self._flush)
            except Exception:
                log.exception("alert tick failed")

    # -- rules for a device ------------------------------------------------------------

    def _profile_name(self, endpoint: str) -> str | None:
        if self.profiles is None:
            return None
        profile = self.profiles.profile_of(endpoint)
        return None if profile is None else profile.name

    def _profile(self, endpoint: str) -> DeviceProfile | None:
        return None if self.profiles is None else self.profiles.profile_of(endpoint)

    def rules_for(self, endpoint: str) -> list[Rule]:
        """The effective, enabled rules for one device (most specific scope per key)."""
        profile = self._profile_name(endpoint)
        place = self.directory.get(endpoint)
        gen = (self._rules_gen, self.directory.generation, profile)
        cached = self._rule_cache.get(endpoint)
        if cached is not None and cached[0] == gen:
            return cached[1]
        return self._cache_rules(endpoint, gen, self._effective(place, profile))

    def _cache_rules(
        self, endpoint: str, gen: tuple[int, int, str | None], rules: list[Rule]
    ) -> list[Rule]:
        self._rule_cache[endpoint] = (gen, rules)
        return rules

    def _effective(self, place: Place, profile: str | None) -> list[Rule]:
        chosen: dict[str, Rule] = {}
        for rule in self.rules.values():
            if not rule.in_scope(place, profile):
                continue
            held = chosen.get(rule.key)
            if held is None or rule.scope_rank > held.scope_rank:
                chosen[rule.key] = rule
        return [r for r in chosen.values() if r.enabled]

    def _rule_of_kind(self, kind: RuleKind, place: Place, profile: str | None) -> Rule | None:
        for rule in self._effective(place, profile):
            if rule.kind == kind:
                return rule
        return None

    # -- values ----------------------------------------------------------------------

    def _on_notification(self, event: ev.Notification) -> None:
        endpoint = event.registration.endpoint
        if event.timestamped and any(t is not None for t, _ in event.timestamped):
            now = time.time()
            for ts, values in sorted(event.timestamped, key=lambda tv: tv[0] or now):
                self.observe_values(endpoint, values, ts or now)
        else:
            self.observe_values(endpoint, event.values, time.time())

    def _on_send(self, event: ev.SendReceived) -> None:
        endpoint = event.registration.endpoint
        now = time.time()
        for ts, values in sorted(event.timestamped, key=lambda tv: tv[0] or now):
            self.observe_values(endpoint, values, ts or now)

    def _on_profile_values(self, reg: Registration, values: dict[Path, Value]) -> None:
        self.observe_values(reg.endpoint, values, time.time())

    def _checks_for(
        self, endpoint: str, path: Path, rules: list[Rule], profile: DeviceProfile | None
    ) -> _PathChecks:
        gen = (
            self._rules_gen,
            self.directory.generation,
            None if profile is None else profile.name,
        )
        ident = (endpoint, path)
        cached = self._checks.get(ident)
        if cached is not None and cached.gen == gen:
            return cached
        spec = None if profile is None else profile.spec_for(path)
        checks = [
            _Check(rule, spec, path)
            for rule in rules
            if rule.kind in VALUE_KINDS and rule.selects(path, spec)
        ]
        quantity = spec.quantity if spec is not None else None
        disagree = [r for r in rules if r.kind == RuleKind.DISAGREEMENT] if quantity else []
        entry = _PathChecks(gen, checks, quantity, disagree)
        if len(self._checks) < self.config.max_series:
            self._checks[ident] = entry
        return entry

    def observe_values(self, endpoint: str, values: Mapping[Path, Value], at: float) -> None:
        """Run the device's value rules over one set of readings taken at `at` (unix)."""
        if not values:
            return
        rules = self.rules_for(endpoint)
        if not rules:
            return
        self.stats["values"] += len(values)
        profile = self._profile(endpoint)
        place = self.directory.get(endpoint)
        subject = f"device:{endpoint}"
        codes: set[int] | None = None
        for path, value in values.items():
            if len(path) >= 3 and path[0] == 3 and path[1] == 0 and path[2] == 11:
                codes = codes or set()
                if isinstance(value, int) and not isinstance(value, bool) and value != 0:
                    codes.add(value)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            number = float(value)
            if not math.isfinite(number):
                continue
            entry = self._checks_for(endpoint, path, rules, profile)
            key = (endpoint, path)
            series = self._series.get(key)
            previous = None if series is None else (series.value, series.at, series.same)
            for check in entry.checks:
                outcome = check.evaluate(number, at, previous)
                if outcome is None:
                    if (subject, check.key) in self.active:
                        self.clear_alert(subject, check.key, check.hold)
                elif outcome is not _KEEP:
                    severity, title, message, detail = outcome
                    detail.update(path=check.path_text, value=number)
                    self.raise_alert(
                        Condition(
                            subject,
                            check.key,
                            check.rule,
                            severity,
                            title,
                            message,
                            detail,
                            endpoint,
                            place,
                        )
                    )
            if series is None:
                if len(self._series) < self.config.max_series:
                    self._series[key] = _Series(number, at)
            else:
                series.same = series.same + 1 if number == series.value else 1
                series.value, series.at = number, at
            if entry.quantity is not None and place.enclosure_id is not None:
                for rule in entry.disagreement:
                    self._disagreement(rule, endpoint, place, entry.quantity, number, at)
        if codes is not None:
            for rule in rules:
                if rule.kind == RuleKind.ERROR_CODE:
                    self._error_codes(rule, subject, endpoint, place, codes)

    def _error_codes(
        self, rule: Rule, subject: str, endpoint: str, place: Place, codes: set[int]
    ) -> None:
        overrides = rule.params.get("codes") or {}
        before = self._codes.get(endpoint, set())
        for code in codes:
            title, severity = ERROR_CODES.get(code, (f"Device error {code}", rule.severity))
            custom = overrides.get(str(code))
            if isinstance(custom, Mapping):
                title = str(custom.get("title", title))
                severity = Severity(custom.get("severity", severity))
            elif custom is False:
                continue
            self.raise_alert(
                Condition(
                    subject,
                    f"{rule.key}@{code}",
                    rule,
                    severity,
                    title,
                    f"the device reports error code {code} ({title.lower()}) on /3/0/11",
                    {"code": code},
                    endpoint,
                    place,
                )
            )
        for code in before - codes:
            self.clear_alert(subject, f"{rule.key}@{code}", rule.clear_after)
        self._codes[endpoint] = set(codes)

    def _disagreement(
        self, rule: Rule, endpoint: str, place: Place, quantity: str, value: float, at: float
    ) -> None:
        tolerances = rule.params.get("quantities") or {}
        if quantity not in tolerances or place.enclosure_id is None:
            return
        tolerance = float(tolerances[quantity])
        max_age = _num(rule.params, "max_age") or 900.0
        min_devices = int(_num(rule.params, "min_devices") or 3)
        group = self._latest.setdefault((place.enclosure_id, quantity), {})
        group[endpoint] = (value, at)
        fresh = {ep: v for ep, (v, t) in group.items() if at - t <= max_age}
        key = f"{rule.key}@{quantity}"
        label = quantity.replace("_", " ").capitalize()
        if len(fresh) >= max(3, min_devices):
            # the median of all probes: with three or more, one drifting probe cannot move it
            median = statistics.median(fresh.values())
            others = [v for ep, v in fresh.items() if ep != endpoint]
            if abs(value - median) > tolerance:
                self.raise_alert(
                    Condition(
                        f"device:{endpoint}",
                        key,
                        rule,
                        rule.severity,
                        f"{label} probe disagrees with its neighbours",
                        f"{quantity} {_fmt(value)} differs from the median {_fmt(median)} "
                        f"of the {len(fresh)} probes in the enclosure by "
                        f"{_fmt(abs(value - median))} (tolerance {_fmt(tolerance)})",
                        {"value": value, "median": median, "others": len(others)},
                        endpoint,
                        place,
                    )
                )
            else:
                self.clear_alert(f"device:{endpoint}", key, rule.clear_after)
        elif len(fresh) == 2:
            subject = f"enclosure:{place.enclosure_id}"
            a, b = fresh.values()
            enclosure_place = Place(None, place.tenant_id, place.farm_id, place.enclosure_id)
            if abs(a - b) > tolerance:
                self.raise_alert(
                    Condition(
                        subject,
                        key,
                        rule,
                        rule.severity,
                        f"{label} probes disagree",
                        f"the two {quantity} probes read {_fmt(a)} and {_fmt(b)} "
                        f"(tolerance {_fmt(tolerance)})",
                        {"values": sorted(fresh.values())},
                        None,
                        enclosure_place,
                    )
                )
            else:
                self.clear_alert(subject, key, rule.clear_after)

    # -- signals from health, profiles and channels ----------------------------------

    def on_health(self, h: DeviceHealth, previous: Health | None) -> None:
        place = self.directory.get(h.endpoint)
        subject = f"device:{h.endpoint}"
        rule = self._rule_of_kind(RuleKind.NOT_RESPONDING, place, self._profile_name(h.endpoint))
        if rule is None:
            return
        if h.status.alarming:
            title = "Device offline" if h.status == Health.OFFLINE else "Device not responding"
            self.raise_alert(
                Condition(
                    subject,
                    rule.key,
                    rule,
                    rule.severity,
                    title,
                    h.reason,
                    {"status": str(h.status), "since": h.since.isoformat()},
                    h.endpoint,
                    place,
                )
            )
        elif h.status == Health.DEREGISTERED:
            self.clear_alert(subject, rule.key, 0.0, note="device de-registered")
        else:
            self.clear_alert(subject, rule.key, rule.clear_after, note=h.reason)

    def firmware_failed(self, failure: Any) -> None:
        """A firmware campaign gave up on a device (`shoal.firmware` failure hook).

        Raised under the same rule key as the /5/0/5 check so the two merge into
        one alert per device rather than two.
        """
        endpoint: str = failure.endpoint
        place = self.directory.get(endpoint)
        rule = self._rule_of_kind(RuleKind.FIRMWARE, place, self._profile_name(endpoint))
        if rule is None:
            return
        what = "rollback" if failure.rollback else "update"
        self.raise_alert(
            Condition(
                f"device:{endpoint}",
                rule.key,
                rule,
                rule.severity,
                f"Firmware {what} failed",
                f"{failure.package} {failure.target_version}: {failure.step}: {failure.reason}",
                {
                    "campaign_id": failure.campaign_id,
                    "step": failure.step,
                    "reason": failure.reason,
                    "result_code": failure.result_code,
                    "from_version": failure.from_version,
                    "target_version": failure.target_version,
                    "rollback": failure.rollback,
                },
                endpoint,
                place,
            )
        )

    def _on_profile_applied(self, applied: AppliedProfile) -> None:
        place = self.directory.get(applied.endpoint)
        rule = self._rule_of_kind(RuleKind.OBSERVATION, place, applied.profile.name)
        if rule is None:
            return
        subject = f"device:{applied.endpoint}"
        for path, reason in applied.refused.items():
            self.raise_alert(
                Condition(
                    subject,
                    f"{rule.key}@{path}",
                    rule,
                    rule.severity,
                    "Observation refused",
                    f"profile {applied.profile.name}: {path}: {reason}",
                    {"path": path, "reason": reason, "profile": applied.profile.name},
                    applied.endpoint,
                    place,
                )
            )
        for path in applied.observed:
            self.clear_alert(subject, f"{rule.key}@{path}", 0.0)

    def _channel_failed(self, name: str, error: str) -> None:
        rule = self._rule_of_kind(RuleKind.CHANNEL, Place(), None)
        if rule is None:
            return
        self.raise_alert(
            Condition(
                f"channel:{name}",
                rule.key,
                rule,
                rule.severity,
                f"Notification channel {name} failing",
                f"delivery through {name} failed after every retry: {error}",
                {"channel": name, "error": error},
                None,
                Place(),
            )
        )

    def _channel_ok(self, name: str) -> None:
        rule = self._rule_of_kind(RuleKind.CHANNEL, Place(), None)
        if rule is not None:
            self.clear_alert(f"channel:{name}", rule.key, 0.0, note="delivering again")

    # -- lifecycle -------------------------------------------------------------------

    def raise_alert(self, c: Condition) -> Alert:
        """The condition holds: open an alert, or count a repeat of the open one."""
        ident = (c.subject, c.key)
        now_loop = self._now()
        wall = _utcnow()
        self._clearing.pop(ident, None)
        alert = self.active.get(ident)
        if alert is not None:
            alert.count += 1
            alert.last_at = wall
            alert.message = c.message
            alert.detail = dict(c.detail)
            if self._flapping(alert):
                alert.detail["flapping"] = True
            self.stats["repeats"] += 1
            if Severity(c.severity).rank > Severity(alert.severity).rank:
                before = alert.severity
                alert.severity = str(c.severity)
                self._event(alert, "severity_raised", None, {"from": before, "to": alert.severity})
                self._announce_later(alert, "severity_raised")
            self._touch(alert)
            return alert
        silenced = self.silenced_by(c.subject, c.key, c.endpoint, c.place, wall) is not None
        recent = self._recent.pop(ident, None)
        if recent is not None and now_loop - recent[1] <= self.config.flap_window:
            alert = recent[0]
            alert.state = AlertState.OPEN
            alert.count += 1
            alert.flaps += 1
            alert.last_at = wall
            alert.severity = str(c.severity)
            alert.message = c.message
            alert.detail = dict(c.detail)
            alert.resolved_at = alert.resolved_by = alert.resolve_note = None
            alert.acknowledged_at = alert.acknowledged_by = alert.ack_note = None
            alert.silenced = silenced
            alert.escalation_level = 0
            flapping = self._flapping(alert)
            if flapping:
                alert.detail["flapping"] = True
            self.active[ident] = alert
            if alert.id:
                self.by_id[alert.id] = alert
            self.stats["reopened"] += 1
            self._event(alert, "reopened", None, {"flaps": alert.flaps})
            self._touch(alert)
            if not flapping:
                self._start_escalation(alert, now_loop, notify_first=True)
            self._announce_later(alert, "reopened", notify=not flapping)
            return alert
        alert = Alert(
            id=0,
            tenant_id=c.place.tenant_id,
            rule_key=c.key,
            rule_kind=str(c.rule.kind),
            subject=c.subject,
            endpoint=c.endpoint,
            farm_id=c.place.farm_id,
            enclosure_id=c.place.enclosure_id,
            severity=str(c.severity),
            state=AlertState.OPEN,
            title=c.title[:200],
            message=c.message,
            detail=dict(c.detail),
            count=1,
            flaps=0,
            silenced=silenced,
            first_at=wall,
            last_at=wall,
        )
        self.active[ident] = alert
        self.stats["raised"] += 1
        self._enqueue(lambda: self._insert(alert))
        self._start_escalation(alert, now_loop, notify_first=True)
        return alert

    def _flapping(self, alert: Alert) -> bool:
        """Reopened too often within the flap window: recorded, not notified."""
        return alert.flaps >= self.config.flap_limit

    def clear_alert(
        self, subject: str, key: str, hold: float = 0.0, note: str | None = None
    ) -> None:
        """The condition no longer holds: resolve after it stayed clear for `hold` s."""
        ident = (subject, key)
        alert = self.active.get(ident)
        if alert is None:
            return
        if hold <= 0:
            self._resolve(alert, "auto", note or "condition cleared")
            return
        self._clearing.setdefault(ident, self._now())

    def _resolve(self, alert: Alert, by: str, note: str | None) -> None:
        ident = (alert.subject, alert.rule_key)
        self.active.pop(ident, None)
        self._clearing.pop(ident, None)
        alert.state = AlertState.RESOLVED
        alert.resolved_at = _utcnow()
        alert.resolved_by = by
        alert.resolve_note = note
        self._recent[ident] = (alert, self._now())
        self._escalations.pop((alert.subject, alert.rule_key), None)
        self.stats["resolved"] += 1
        self._event(alert, "resolved", by, {"note": note} if note else None)
        self._touch(alert)
        self._announce_later(alert, "resolved", notify=not self._flapping(alert))

    def acknowledge(self, alert_id: int, by: str, note: str | None = None) -> Alert:
        alert = self.by_id.get(alert_id)
        if alert is None or not alert.is_active:
            raise AlertError(f"alert {alert_id} is not open")
        if alert.state == AlertState.ACKNOWLEDGED:
            return alert
        alert.state = AlertState.ACKNOWLEDGED
        alert.acknowledged_at = _utcnow()
        alert.acknowledged_by = by
        alert.ack_note = note
        self._escalations.pop((alert.subject, alert.rule_key), None)
        self._event(alert, "acknowledged", by, {"note": note} if note else None)
        self._touch(alert)
        self._announce_later(alert, "acknowledged", notify=False)
        return alert

    def resolve(self, alert_id: int, by: str, note: str | None = None) -> Alert:
        alert = self.by_id.get(alert_id)
        if alert is None or not alert.is_active:
            raise AlertError(f"alert {alert_id} is not open")
        self._resolve(alert, by, note)
        return alert

    def tick(self, now: float) -> None:
        """Resolve what stayed clear, forget old flaps, escalate, end silences."""
        for ident, since in list(self._clearing.items()):
            alert = self.active.get(ident)
            if alert is None:
                del self._clearing[ident]
                continue
            rule_hold = self._hold_for(alert)
            if now - since >= rule_hold:
                self._resolve(alert, "auto", "condition cleared")
        window = self.config.flap_window
        for ident, (_, at) in list(self._recent.items()):
            if now - at > window:
                del self._recent[ident]
        wall = _utcnow()
        for alert in list(self.active.values()):
            if alert.silenced and alert.id:
                place = Place(None, alert.tenant_id, alert.farm_id, alert.enclosure_id)
                if (
                    self.silenced_by(alert.subject, alert.rule_key, alert.endpoint, place, wall)
                    is None
                ):
                    alert.silenced = False
                    self._event(alert, "unsilenced", None, None)
                    self._touch(alert)
                    self._start_escalation(alert, now, notify_first=True)
                    self._announce_later(alert, "raised")
        for ident, esc in list(self._escalations.items()):
            alert = self.active.get(ident)
            if alert is None:
                del self._escalations[ident]
            elif alert.state == AlertState.OPEN and not alert.silenced and alert.id:
                self._escalate_due(alert, esc, now)

    def _hold_for(self, alert: Alert) -> float:
        base = _base_key(alert.rule_key)
        for rule in self.rules.values():
            if rule.key == base:
                return rule.clear_after
        return 0.0

    # -- silences ----------------------------------------------------------------------

    def silenced_by(
        self, subject: str, key: str, endpoint: str | None, place: Place, at: datetime
    ) -> SilenceRecord | None:
        base = _base_key(key)
        for s in self.silences.values():
            if not (s.starts_at <= at < s.ends_at):
                continue
            if s.tenant_id is not None and place.tenant_id not in (None, s.tenant_id):
                continue
            if s.rule_key is not None and s.rule_key not in (base, key):
                continue
            if s.endpoint is not None and s.endpoint != endpoint:
                continue
            if s.enclosure_id is not None and s.enclosure_id != place.enclosure_id:
                continue
            if s.farm_id is not None and s.farm_id != place.farm_id:
                continue
            if (
                s.endpoint is None
                and s.enclosure_id is None
                and s.farm_id is None
                and subject.startswith("channel:")
            ):
                continue
            return s
        return None

    def add_silence(self, silence: SilenceRecord) -> None:
        self.silences[silence.id] = silence
        wall = _utcnow()
        for alert in self.active.values():
            place = Place(None, alert.tenant_id, alert.farm_id, alert.enclosure_id)
            if not alert.silenced and self.silenced_by(
                alert.subject, alert.rule_key, alert.endpoint, place, wall
            ):
                alert.silenced = True
                self._escalations.pop((alert.subject, alert.rule_key), None)
                self._event(alert, "silenced", silence.created_by, {"silence": silence.id})
                self._touch(alert)

    def remove_silence(self, silence_id: int) -> None:
        self.silences.pop(silence_id, None)

    # -- escalation and notices --------------------------------------------------------

    def policy_for(self, alert: Alert) -> EscalationPolicy | None:
        best: EscalationPolicy | None = None
        for policy in self.policies.values():
            if policy.matches(alert) and (best is None or policy.specificity > best.specificity):
                best = policy
        return best

    def _start_escalation(self, alert: Alert, now: float, notify_first: bool) -> None:
        if alert.silenced:
            return
        policy = self.policy_for(alert)
        if policy is None:
            return
        self._escalations[(alert.subject, alert.rule_key)] = _Escalation(
            policy, now, -1 if notify_first else 0
        )

    def _escalate_due(self, alert: Alert, esc: _Escalation, now: float) -> None:
        steps = esc.policy.steps
        nxt = esc.level + 1
        if nxt < len(steps):
            if nxt == 0 and steps[0].after <= 0:
                return  # the first notice goes out when the alert is announced
            if now - esc.base >= steps[nxt].after:
                esc.level = nxt
                esc.last_notified = now
                alert.escalation_level = nxt
                channels = steps[nxt].channels
                detail = {"level": nxt, "channels": list(channels)}
                self._event(alert, "escalated" if nxt else "notified", None, detail)
                self._touch(alert)
                self._announce_later(alert, "escalated" if nxt else "raised", channels=channels)
            return
        repeat = esc.policy.repeat_every
        last = esc.last_notified
        if repeat is not None and last is not None and now - last >= repeat:
            esc.last_notified = now
            channels = steps[esc.level].channels
            self._event(alert, "repeated", None, {"level": esc.level})
            self._announce_later(alert, "repeated", channels=channels)

    def _routes(self, alert: Alert, event: str) -> tuple[str, ...]:
        """Channels for an alert's first notice (or its resolution)."""
        if alert.silenced:
            return ()
        excluded = (
            alert.subject[len("channel:") :] if alert.subject.startswith("channel:") else None
        )
        if event == "resolved":
            names = self._notified.pop(alert.id, None)
            if names is not None:
                return tuple(n for n in names if n != excluded)
        if event in ("raised", "reopened"):
            esc = self._escalations.get((alert.subject, alert.rule_key))
            if esc is not None:
                steps = esc.policy.steps
                if steps[0].after <= 0:
                    esc.level = 0
                    esc.last_notified = self._now()
                    return tuple(n for n in steps[0].channels if n != excluded)
                return ()
        return tuple(
            name
            for name, spec in self.dispatcher.channels.items()
            if spec.accepts(alert.severity) and name != excluded
        )

    def _announce_later(
        self,
        alert: Alert,
        event: str,
        notify: bool = True,
        channels: Iterable[str] | None = None,
    ) -> None:
        chosen = None if channels is None else tuple(channels)
        self._enqueue(lambda: self._announce(alert, event, notify, chosen))

    async def _announce(
        self, alert: Alert, event: str, notify: bool, channels: tuple[str, ...] | None
    ) -> None:
        if alert.id == 0:
            return  # its insert failed; nothing to point at
        if self.feed is not None:
            self.feed.publish(
                f"alert_{event}",
                alert_id=alert.id,
                endpoint=alert.endpoint,
                subject=alert.subject,
                farm_id=alert.farm_id,
                enclosure_id=alert.enclosure_id,
                rule=alert.rule_key,
                severity=alert.severity,
                state=alert.state,
                title=alert.title,
                message=alert.message,
                count=alert.count,
                silenced=alert.silenced,
            )
        if not notify or alert.silenced:
            if alert.silenced:
                self.stats["suppressed"] += 1
            return
        names = channels if channels is not None else self._routes(alert, event)
        if not names:
            return
        notice = self.notice(alert, event)
        sent = self._notified.setdefault(alert.id, set()) if event != "resolved" else set()
        for name in names:
            if self.dispatcher.enqueue(name, notice):
                self.stats["notices"] += 1
                sent.add(name)
        if event != "resolved":
            alert.notified_at = _utcnow()
            self._dirty.add(alert.id)

    def notice(self, alert: Alert, event: str) -> dict[str, Any]:
        d = self.directory
        place = {
            "farm": d.farm_names.get(alert.farm_id) if alert.farm_id else None,
            "enclosure": d.enclosure_names.get(alert.enclosure_id) if alert.enclosure_id else None,
        }
        return {
            "event": event,
            "sent_at": _utcnow().isoformat(),
            "alert": alert.as_dict(),
            "place": place,
            "escalation_level": alert.escalation_level,
        }

    # -- persistence -------------------------------------------------------------------

    def _touch(self, alert: Alert) -> None:
        if alert.id:
            self._dirty.add(alert.id)

    def _event(
        self, alert: Alert, kind: str, actor: str | None, detail: dict[str, Any] | None
    ) -> None:
        self._pending_events.append((alert, kind, actor, detail, _utcnow()))

    async def _insert(self, alert: Alert) -> None:
        await self.store.insert_alert(alert, "raised")
        self.by_id[alert.id] = alert
        await self._announce(alert, "raised", True, None)

    async def _flush(self) -> None:
        ready = [e for e in self._pending_events if e[0].id]
        self._pending_events = [e for e in self._pending_events if not e[0].id]
        dirty = [self.by_id[i] for i in self._dirty if i in self.by_id]
        self._dirty.clear()
        if not ready and not dirty:
            return
        events = [(a.id, kind, actor, detail, at) for a, kind, actor, detail, at in ready]
        await self.store.save_alerts(dirty, events)
        for alert in dirty:
            if not alert.is_active:
                self.by_id.pop(alert.id, None)

    # -- reading -----------------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        return sorted(self.active.values(), key=lambda a: a.first_at)

    async def get(self, alert_id: int) -> Alert:
        alert = self.by_id.get(alert_id)
        if alert is not None:
            return alert
        return await self.store.get_alert(alert_id)


def _base_key(key: str) -> str:
    return key.split("@", 1)[0]


def _quantity_name(spec: ResourceSpec | None, path: Path) -> str:
    if spec is not None and spec.quantity:
        return spec.quantity.replace("_", " ")
    return str(path)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- composition -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertingConfig:
    health: HealthConfig = field(default_factory=HealthConfig)
    profiles: ProfileConfig = field(default_factory=ProfileConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    directory_refresh: float = 60.0


class Alerting:
    """Profiles, health, rules, alerts and channels wired together for one node.

    `Alerting.attach(node)` builds it from a `ShoalNode`; `start()` after the
    node's fleet restored its registrations, `stop()` before the node stops.
    """

    def __init__(
        self,
        server: Lwm2mServer,
        db: Database,
        inventory: Inventory,
        feed: LiveFeed | None,
        *,
        place_of: Callable[[str], tuple[int | None, int | None]] | None = None,
        config: AlertingConfig | None = None,
        profiles: Iterable[DeviceProfile] | None = None,
    ) -> None:
        self.config = config or AlertingConfig()
        self.server = server
        self.store = AlertStore(db)
        self.directory = DeviceDirectory(inventory, place_of)
        self.profiles = (
            ProfileService(server, self.config.profiles)
            if profiles is None
            else ProfileService(server, self.config.profiles, profiles)
        )
        self.dispatcher = ChannelDispatcher(self.config.delivery)
        self.alerts = AlertService(
            self.store,
            self.directory,
            self.profiles,
            feed,
            self.dispatcher,
            self.config.alerts,
            server,
        )
        self.health = HealthService(server, self.directory, self.profiles, feed, self.config.health)
        self.health.on_change.append(self.alerts.on_health)
        self._refresher: asyncio.Task[None] | None = None

    @classmethod
    def attach(
        cls,
        node: ShoalNode,
        config: AlertingConfig | None = None,
        profiles: Iterable[DeviceProfile] | None = None,
    ) -> Alerting:
        return cls(
            node.server,
            node.db,
            node.inventory,
            node.feed,
            place_of=node.fleet.place_of,
            config=config,
            profiles=profiles,
        )

    async def start(self) -> None:
        await self.load_profiles()
        await self.directory.refresh_all()
        await self.alerts.start()
        await self.health.start()
        await self.profiles.start()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.profiles.stop()
        await self.health.stop()
        await self.alerts.stop()
        await self.dispatcher.close()

    async def load_profiles(self) -> None:
        """Stored profiles replace the built-in ones of the same name."""
        for record in await self.store.list_profiles():
            try:
                profile = DeviceProfile.from_dict(record.body, name=record.name)
            except ValueError as exc:
                log.warning("stored profile %s ignored: %s", record.name, exc)
                continue
            self.profiles.profiles[profile.name] = profile

    async def _refresh_loop(self) -> None:
        """Newly registered devices every second (after the fleet placed them), and
        everything every `directory_refresh` seconds (manual moves, restored devices)."""
        loop = asyncio.get_running_loop()
        last_full = loop.time()
        while True:
            await asyncio.sleep(1.0)
            try:
                if loop.time() - last_full >= self.config.directory_refresh:
                    last_full = loop.time()
                    self.directory.stale.clear()
                    await self.directory.refresh_all()
                elif self.directory.stale:
                    await self.directory.refresh_stale()
            except Exception:
                log.exception("device directory refresh failed")

    async def drain(self) -> None:
        await self.health.drain()
        await self.alerts.drain()

    def status(self) -> dict[str, Any]:
        return {
            "alerts": dict(self.alerts.stats),
            "open_alerts": len(self.alerts.active),
            "health": self.health.rollup(),
            "detection_latency": self.health.latency_summary(),
            "channels": {
                name: stats.as_dict()
                for name in self.dispatcher.channels
                if (stats := self.dispatcher.stats(name)) is not None
            },
        }


__all__ = [
    "DEFAULT_RULES",
    "Alert",
    "AlertConfig",
    "AlertError",
    "AlertService",
    "Alerting",
    "AlertingConfig",
    "Condition",
    "EscalationPolicy",
    "EscalationStep",
    "Rule",
    "RuleError",
    "RuleKind",
]

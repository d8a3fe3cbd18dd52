"""Device profiles: what Shoal observes on a kind of device, and what it expects.

A profile names the resources to observe with their notification attributes
(pmin, pmax, st), the quantity each one measures (so probes of the same quantity
in one enclosure can be compared), the range a healthy value stays in, the range
a physically possible value stays in, and how often the device should Send.

The profile service applies the matching profile on every registration, again
after a re-registration or a server restart, and checks it on a timer: an
observation the device refused is flagged, one that went missing is placed again
(the reconnect bug ThingsBoard users keep meeting).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.lwm2m.attributes import InvalidAttributes, NotificationAttributes
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import InvalidPath, Path
from shoal.server import events as ev
from shoal.server.registration import Registration
from shoal.server.server import Lwm2mServer, RequestError

log = logging.getLogger(__name__)

CAMERA_OBJECT = 33001
SENSOR_OBJECTS = (3303, 3325, 3326, 3327, 3300, 3316, 3319, 3320)


class ProfileError(ValueError):
    """A profile document that does not make sense."""


def _pair(value: object, what: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise ProfileError(f"{what} must be [low, high]")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi:
        raise ProfileError(f"{what}: low {lo} is above high {hi}")
    return lo, hi


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """One resource a profile observes. `path` may use `*` for the instance."""

    path: str
    pmin: int | None = None
    pmax: int | None = None
    st: float | None = None
    quantity: str | None = None
    expected: tuple[float, float] | None = None
    possible: tuple[float, float] | None = None
    varies: bool = False  # a live sensor value: unchanged for long means stuck

    def __post_init__(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) < 1 or len(parts) > 3:
            raise ProfileError(f"{self.path!r}: observe an object, instance or resource")
        try:
            Path.parse(self.path.replace("*", "0"))
        except InvalidPath as exc:
            raise ProfileError(f"{self.path!r}: {exc}") from None
        try:
            self.attributes()
        except InvalidAttributes as exc:
            raise ProfileError(f"{self.path}: {exc}") from None

    def attributes(self) -> NotificationAttributes | None:
        if self.pmin is None and self.pmax is None and self.st is None:
            return None
        return NotificationAttributes(pmin=self.pmin, pmax=self.pmax, st=self.st)

    def expand(self, reg: Registration) -> list[Path]:
        """The concrete paths on this device (a `*` instance becomes each instance)."""
        parts = self.path.strip("/").split("/")
        oid = int(parts[0])
        info = reg.links.objects.get(oid)
        if info is None:
            return []
        if len(parts) >= 2 and parts[1] == "*":
            instances = getattr(info, "instances", ()) or (0,)
            rest = [int(p) for p in parts[2:]]
            return [Path(oid, i, *rest) for i in instances]
        return [Path.parse(self.path)]

    def covers(self, path: Path) -> bool:
        """Whether a value at `path` is one this spec describes."""
        parts = self.path.strip("/").split("/")
        if len(path) < len(parts):
            return False
        return all(part == "*" or int(part) == path[i] for i, part in enumerate(parts))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        for name in ("pmin", "pmax", "st", "quantity"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.expected is not None:
            out["expected"] = list(self.expected)
        if self.possible is not None:
            out["possible"] = list(self.possible)
        if self.varies:
            out["varies"] = True
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ResourceSpec:
        unknown = set(d) - {"path", "pmin", "pmax", "st", "quantity", "expected", "possible"}
        unknown -= {"varies"}
        if unknown:
            raise ProfileError(f"unknown resource fields: {', '.join(sorted(unknown))}")
        path = d.get("path")
        if not isinstance(path, str):
            raise ProfileError("a resource needs a path")
        ints = {}
        for name in ("pmin", "pmax"):
            v = d.get(name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ProfileError(f"{path}: {name} must be a whole number of seconds")
            ints[name] = v
        st = d.get("st")
        if st is not None and (not isinstance(st, (int, float)) or isinstance(st, bool)):
            raise ProfileError(f"{path}: st must be a number")
        quantity = d.get("quantity")
        if quantity is not None and not isinstance(quantity, str):
            raise ProfileError(f"{path}: quantity must be text")
        return cls(
            path=path,
            pmin=ints["pmin"],
            pmax=ints["pmax"],
            st=None if st is None else float(st),
            quantity=quantity,
            expected=_pair(d.get("expected"), f"{path}: expected"),
            possible=_pair(d.get("possible"), f"{path}: possible"),
            varies=bool(d.get("varies", False)),
        )


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """Which devices it fits (kind, model pattern, objects), and what to observe."""

    name: str
    kind: str = "*"  # sensor, camera, unknown or *
    model: str | None = None  # fnmatch pattern on the Device object's model (/3/0/1)
    objects: tuple[int, ...] = ()  # all of them must be present
    resources: tuple[ResourceSpec, ...] = ()
    report_interval: float | None = None  # expected seconds between Sends
    priority: int = 0  # the highest-priority match wins

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 100:
            raise ProfileError("profile name must be 1-100 characters")
        if self.report_interval is not None and self.report_interval <= 0:
            raise ProfileError("report_interval must be positive")

    def matches(self, kind: str, model: str | None, reg: Registration) -> bool:
        if self.kind not in ("*", kind):
            return False
        if self.model is not None and (model is None or not fnmatch.fnmatch(model, self.model)):
            return False
        return all(reg.supports(o) for o in self.objects)

    def spec_for(self, path: Path) -> ResourceSpec | None:
        for spec in self.resources:
            if spec.covers(path):
                return spec
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "model": self.model,
            "objects": list(self.objects),
            "resources": [r.as_dict() for r in self.resources],
            "report_interval": self.report_interval,
            "priority": self.priority,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str | None = None) -> DeviceProfile:
        known = {"name", "kind", "model", "objects", "resources", "report_interval", "priority"}
        unknown = set(d) - known
        if unknown:
            raise ProfileError(f"unknown profile fields: {', '.join(sorted(unknown))}")
        resources = d.get("resources", [])
        if not isinstance(resources, list):
            raise ProfileError("resources must be a list")
        objects = d.get("objects", [])
        if not isinstance(objects, list) or not all(isinstance(o, int) for o in objects):
            raise ProfileError("objects must be a list of object ids")
        kind = d.get("kind", "*")
        if kind not in ("*", "sensor", "camera", "unknown"):
            raise ProfileError("kind must be sensor, camera, unknown or *")
        interval = d.get("report_interval")
        if interval is not None and not isinstance(interval, (int, float)):
            raise ProfileError("report_interval must be a number of seconds")
        model = d.get("model")
        return cls(
            name=str(name if name is not None else d.get("name", "")),
            kind=str(kind),
            model=None if model is None else str(model),
            objects=tuple(objects),
            resources=tuple(ResourceSpec.from_dict(r) for r in resources),
            report_interval=None if interval is None else float(interval),
            priority=int(d.get("priority", 0)),
        )


def _device_resources() -> tuple[ResourceSpec, ...]:
    return (
        ResourceSpec("/3/0/9", pmax=3600, quantity="battery", possible=(0.0, 100.0)),
        ResourceSpec("/3/0/11", pmax=3600),
        ResourceSpec("/4/0/2", pmax=3600, quantity="signal"),
        ResourceSpec("/5/0/5"),
    )


WATER_QUALITY = DeviceProfile(
    name="water-quality",
    kind="sensor",
    resources=(
        ResourceSpec(
            "/3303/0/5700",
            pmin=10,
            pmax=300,
            st=0.1,
            quantity="water_temperature",
            expected=(0.0, 30.0),
            possible=(-5.0, 45.0),
            varies=True,
        ),
        ResourceSpec(
            "/3325/0/5700",
            pmin=10,
            pmax=300,
            st=0.1,
            quantity="dissolved_oxygen",
            expected=(5.0, 15.0),
            possible=(0.0, 25.0),
            varies=True,
        ),
        ResourceSpec(
            "/3326/0/5700",
            pmin=10,
            pmax=300,
            st=0.05,
            quantity="ph",
            expected=(6.5, 8.5),
            possible=(0.0, 14.0),
            varies=True,
        ),
        ResourceSpec(
            "/3327/0/5700",
            pmin=10,
            pmax=300,
            quantity="salinity",
            possible=(0.0, 100.0),
            varies=True,
        ),
        *_device_resources(),
    ),
)

FISH_CAMERA = DeviceProfile(
    name="fish-camera",
    kind="camera",
    resources=(
        ResourceSpec("/33001/0/0", pmin=10, pmax=600),
        ResourceSpec("/33001/0/1", pmin=10, pmax=600),
        *_device_resources(),
    ),
)

GENERIC = DeviceProfile(name="generic", kind="*", priority=-100, resources=_device_resources())

DEFAULT_PROFILES = (WATER_QUALITY, FISH_CAMERA, GENERIC)


def device_kind(reg: Registration) -> str:
    """The same classification as the fleet service's (sensor, camera, unknown)."""
    if reg.supports(CAMERA_OBJECT):
        return "camera"
    if any(reg.supports(o) for o in SENSOR_OBJECTS):
        return "sensor"
    return "unknown"


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    apply_on_register: bool = True
    # Read /3/0/1 (model) when some profile matches on it.
    read_model: bool = True
    # How often observations are checked against the profile (and re-placed).
    check_interval: float = 60.0
    # Before the first check after start, give restored observations time to land.
    restore_delay: float = 5.0


@dataclass(slots=True)
class AppliedProfile:
    """What the profile service did on one device."""

    endpoint: str
    profile: DeviceProfile
    observed: dict[str, float | None] = field(default_factory=dict)  # path -> pmax
    refused: dict[str, str] = field(default_factory=dict)  # path -> reason
    registration_id: str = ""


ValuesListener = Callable[[Registration, dict[Path, Value]], None]
AppliedListener = Callable[[AppliedProfile], None]


class ProfileService:
    """Holds the profiles and applies the right one to every registered device."""

    def __init__(
        self,
        server: Lwm2mServer,
        config: ProfileConfig | None = None,
        profiles: Iterable[DeviceProfile] = DEFAULT_PROFILES,
    ) -> None:
        self.server = server
        self.config = config or ProfileConfig()
        self.profiles: dict[str, DeviceProfile] = {p.name: p for p in profiles}
        self.applied: dict[str, AppliedProfile] = {}
        self.models: dict[str, str | None] = {}
        self.on_values: list[ValuesListener] = []
        self.on_applied: list[AppliedListener] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._applying: dict[str, asyncio.Task[None]] = {}
        self._checker: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        bus = self.server.bus
        self._unsubscribe = [
            bus.subscribe(ev.Registered, self._on_registered),
            bus.subscribe(ev.Updated, self._on_updated),
            bus.subscribe(ev.Deregistered, self._on_gone),
            bus.subscribe(ev.Expired, self._on_gone),
        ]
        self._checker = asyncio.get_running_loop().create_task(self._check_loop())

    async def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        tasks = [*self._tasks]
        if self._checker is not None:
            tasks.append(self._checker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- choosing --------------------------------------------------------------------

    def set_profile(self, profile: DeviceProfile) -> None:
        self.profiles[profile.name] = profile
        for applied in list(self.applied.values()):
            if applied.profile.name == profile.name:
                self.reapply(applied.endpoint)

    def remove_profile(self, name: str) -> None:
        self.profiles.pop(name, None)

    def choose(self, reg: Registration, model: str | None = None) -> DeviceProfile | None:
        kind = device_kind(reg)
        best: DeviceProfile | None = None
        for profile in self.profiles.values():
            if profile.matches(kind, model, reg) and (
                best is None or _specificity(profile) > _specificity(best)
            ):
                best = profile
        return best

    def profile_of(self, endpoint: str) -> DeviceProfile | None:
        applied = self.applied.get(endpoint)
        return None if applied is None else applied.profile

    # -- server events ----------------------------------------------------------------

    def _on_registered(self, event: ev.Registered) -> None:
        if self.config.apply_on_register:
            self._schedule(event.registration)

    def _on_updated(self, event: ev.Updated) -> None:
        reg = event.registration
        applied = self.applied.get(reg.endpoint)
        stale = applied is None or applied.registration_id != reg.id
        if self.config.apply_on_register and (event.objects_changed or stale):
            self._schedule(reg)

    def _on_gone(self, event: ev.Deregistered | ev.Expired) -> None:
        endpoint = event.registration.endpoint
        self.applied.pop(endpoint, None)
        task = self._applying.pop(endpoint, None)
        if task is not None:
            task.cancel()

    def _schedule(self, reg: Registration) -> None:
        running = self._applying.get(reg.endpoint)
        if running is not None and not running.done():
            running.cancel()
        task = self._spawn(self._apply_logged(reg))
        self._applying[reg.endpoint] = task

    def reapply(self, endpoint: str) -> None:
        reg = self.server.store.by_endpoint(endpoint)
        if reg is not None:
            self._schedule(reg)

    async def _apply_logged(self, reg: Registration) -> None:
        try:
            await self.apply(reg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("applying the profile to %s failed", reg.endpoint)
        finally:
            if self._applying.get(reg.endpoint) is asyncio.current_task():
                del self._applying[reg.endpoint]

    # -- applying ---------------------------------------------------------------------

    async def _model(self, reg: Registration) -> str | None:
        if reg.endpoint in self.models:
            return self.models[reg.endpoint]
        model: str | None = None
        wants_model = any(p.model is not None for p in self.profiles.values())
        if wants_model and self.config.read_model and reg.supports(3):
            try:
                resp = await self.server.read(reg.endpoint, "/3/0/1")
                value = resp.values.get(Path(3, 0, 1)) if resp.ok else None
                model = None if value is None else str(value)
            except (RequestError, KeyError):
                model = None
            self.models[reg.endpoint] = model
        return model

    async def apply(self, reg: Registration) -> AppliedProfile | None:
        """Write the profile's attributes and observe its resources; record refusals."""
        profile = self.choose(reg, await self._model(reg))
        if profile is None:
            return None
        applied = AppliedProfile(reg.endpoint, profile, registration_id=reg.id)
        held = {str(p) for o in self.server.observations(reg.endpoint) for p in o.paths}
        for spec in profile.resources:
            for path in spec.expand(reg):
                if self.server.store.get(reg.id) is not reg:
                    return None  # re-registered or gone meanwhile
                text = str(path)
                reason = await self._place(reg, spec, path, held)
                if reason is None:
                    applied.observed[text] = None if spec.pmax is None else float(spec.pmax)
                else:
                    applied.refused[text] = reason
        self.applied[reg.endpoint] = applied
        for listener in self.on_applied:
            try:
                listener(applied)
            except Exception:
                log.exception("profile listener failed")
        return applied

    async def _place(
        self, reg: Registration, spec: ResourceSpec, path: Path, held: set[str]
    ) -> str | None:
        """Attributes then observation of one path; the reason it failed, or None."""
        attrs = spec.attributes()
        if attrs is not None:
            try:
                resp = await self.server.write_attributes(reg.endpoint, path, attrs)
            except (RequestError, KeyError) as exc:
                return f"write-attributes failed: {exc}"
            if not resp.ok:
                return f"write-attributes refused ({_code(resp.code)})"
        if str(path) in held:
            return None
        try:
            resp, obs = await self.server.observe(reg.endpoint, path)
        except (RequestError, KeyError) as exc:
            return f"observe failed: {exc}"
        if not resp.ok:
            return f"observe refused ({_code(resp.code)})"
        if obs is None:
            return "observe not accepted"
        if resp.values:
            for listener in self.on_values:
                try:
                    listener(reg, dict(resp.values))
                except Exception:
                    log.exception("profile values listener failed")
        return None

    # -- checking ---------------------------------------------------------------------

    async def _check_loop(self) -> None:
        await asyncio.sleep(self.config.restore_delay)
        while True:
            try:
                self.check()
            except Exception:
                log.exception("profile check failed")
            await asyncio.sleep(self.config.check_interval)

    def check(self) -> int:
        """Re-apply where an observation the profile wants is gone (or never placed);
        returns how many devices were scheduled."""
        scheduled = 0
        for reg in list(self.server.store):
            if reg.endpoint in self._applying or self.server.is_sleeping(reg):
                continue
            applied = self.applied.get(reg.endpoint)
            if applied is None or applied.registration_id != reg.id:
                self._schedule(reg)
                scheduled += 1
                continue
            held = {str(p) for o in self.server.observations(reg.endpoint) for p in o.paths}
            if any(path not in held for path in applied.observed):
                self._schedule(reg)
                scheduled += 1
        return scheduled


def _specificity(profile: DeviceProfile) -> tuple[int, bool, int]:
    return (profile.priority, profile.model is not None, len(profile.objects))


def _code(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"

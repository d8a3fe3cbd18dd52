"""One simulated LwM2M client on its own UDP socket.

A `SimDevice` is a real CoAP endpoint: it registers to the server, keeps the
registration alive, answers the server's device-management requests on the
same socket (NAT-style, as the server expects), sends notifications under the
attributes the server wrote, pushes Send reports and runs the Firmware Update
state machine. Timers go through the fleet's shared `Scheduler`; a device has a
task only while it waits for the network (a registration exchange, a download).

Faults can be switched on at any time to give the server something to detect:
silence, error codes, a stuck sensor, a draining battery, a reboot loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.coap import options as o
from shoal.coap.codes import Code
from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapEndpoint, CoapRequestError
from shoal.coap.engine import Addr, Observer
from shoal.coap.message import Message
from shoal.lwm2m import content
from shoal.lwm2m.attributes import InvalidAttributes, NotificationAttributes
from shoal.lwm2m.content import ContentFormat as CF
from shoal.lwm2m.link import Link, RegistrationLinks, format_links, format_registration_links
from shoal.lwm2m.model import Operations, Value
from shoal.lwm2m.path import InvalidPath, Path
from shoal.lwm2m.registry import ModelRegistry, default_registry
from shoal.sim import firmware as fw
from shoal.sim.profiles import DAY, PROFILES, Profile, diurnal, sim_datetime
from shoal.sim.scheduler import Scheduler, SimClock, Timer
from shoal.sim.tree import NUMERIC_TYPES, ObjectTree

log = logging.getLogger(__name__)

LINK_FORMAT = 40
VERSIONS = ("1.0", "1.1", "1.2")

# What a client of each version can produce and consume.
FORMATS: dict[str, frozenset[int]] = {
    "1.0": frozenset({CF.TEXT, CF.OPAQUE, CF.TLV, CF.OMA_JSON}),
    "1.1": frozenset(
        {CF.TEXT, CF.OPAQUE, CF.CBOR, CF.SENML_JSON, CF.SENML_CBOR, CF.TLV, CF.OMA_JSON}
    ),
    "1.2": frozenset(
        {
            CF.TEXT,
            CF.OPAQUE,
            CF.CBOR,
            CF.SENML_JSON,
            CF.SENML_CBOR,
            CF.TLV,
            CF.OMA_JSON,
            CF.LWM2M_CBOR,
        }
    ),
}
# The `ct` of the registration's root link.
DECLARED_FORMATS: dict[str, tuple[int, ...]] = {
    "1.0": (),
    "1.1": (CF.SENML_JSON,),
    "1.2": (CF.CBOR, CF.SENML_JSON, CF.SENML_CBOR, CF.TLV, CF.OMA_JSON, CF.LWM2M_CBOR),
}
PATH_LIST_FORMATS = frozenset({CF.SENML_JSON, CF.SENML_CBOR})
COMPOSITE_FORMATS = frozenset({CF.SENML_JSON, CF.SENML_CBOR, CF.LWM2M_CBOR})

# Device object /3/0 error codes
ERROR_LOW_BATTERY = 1
LOW_BATTERY_LEVEL = 15.0

# Executable resources every simulated device implements (object id, resource id).
_COMMON_EXECUTABLES = {(1, 8), (3, 4), (3, 5), (3, 12), (5, 2), (5, 10)}

P_LIFETIME = Path(1, 0, 1)
P_MUTE_SEND = Path(1, 0, 23)
P_FIRMWARE_VERSION = Path(3, 0, 3)
P_BATTERY = Path(3, 0, 9)
P_MEMORY_FREE = Path(3, 0, 10)
P_ERROR_CODE = Path(3, 0, 11)
P_CURRENT_TIME = Path(3, 0, 13)
P_BATTERY_STATUS = Path(3, 0, 20)
P_SIGNAL = Path(4, 0, 2)
P_LINK_QUALITY = Path(4, 0, 3)


def device_coap_config() -> CoapConfig:
    """Small tables: a device talks to one server, and there may be 10,000 of them."""
    return CoapConfig(
        max_dedup_entries=512,
        max_exchanges=64,
        max_reassemblies=4,
        max_block2_cache=8,
        max_observers=256,
    )


@dataclass(slots=True)
class DeviceConfig:
    """How one simulated device behaves; `Fleet` fills these from its own config."""

    endpoint: str
    profile: str = "water"
    version: str = "1.1"
    lifetime: int = 300
    enclosure: str | None = None
    enclosure_param: str = "enc"
    bind_host: str = "127.0.0.1"
    seed: int = 0
    serial: str = ""
    # Real seconds between sensor samples (value changes, observation checks).
    sample_interval: float = 10.0
    # Real seconds between Send reports (1.1+); None: only on demand.
    send_interval: float | None = None
    send_format: int = CF.SENML_CBOR
    # Registration Update after this fraction of the lifetime.
    update_ratio: float = 0.8
    firmware_version: str = "1.0.0"
    firmware_outcome: fw.FirmwareOutcome | str = fw.FirmwareOutcome.SUCCESS
    firmware_update_delay: float = 2.0
    reboot_delay: float = 1.0
    # Cap on one registration exchange, on top of CoAP's own retransmission limit.
    request_timeout: float = 60.0
    retry_min: float = 2.0
    retry_max: float = 60.0
    coap: CoapConfig = field(default_factory=device_coap_config)


class SimStats:
    """Counters shared by the devices of a fleet (plain ints: one event loop)."""

    __slots__ = (
        "deregistrations",
        "failed",
        "firmware_updates",
        "notifications",
        "reboots",
        "registered",
        "registration_failures",
        "registrations",
        "requests",
        "sends",
        "update_failures",
        "updates",
    )

    def __init__(self) -> None:
        self.registered = 0  # devices registered right now
        self.failed = 0  # devices whose last registration attempt failed
        self.registrations = 0
        self.registration_failures = 0
        self.updates = 0
        self.update_failures = 0
        self.deregistrations = 0
        self.requests = 0
        self.notifications = 0
        self.sends = 0
        self.reboots = 0
        self.firmware_updates = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in sorted(self.__slots__)}


class _DeviceEndpoint(CoapEndpoint):
    """A CoAP endpoint that can play dead: datagrams in are dropped while `silent`."""

    silent = False

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.silent:
            return
        super().datagram_received(data, addr)


class _Watch:
    """Server-side state of one observation the device holds (attributes, last values)."""

    __slots__ = ("last_number", "last_sent", "paths", "pending")

    def __init__(self, paths: list[Path], now: float, last_number: float | None) -> None:
        self.paths = paths
        self.last_sent = now
        self.last_number = last_number
        self.pending = False


def _reply(code: int, text: str = "") -> Message:
    return Message(code=code, payload=text.encode())


def _int_attr(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_attr(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _affects(watched: list[Path], changed: Iterable[Path]) -> bool:
    for c in changed:
        for w in watched:
            if c.startswith(w) or w.startswith(c):
                return True
    return False


class SimDevice:
    """One LwM2M client: object tree, registration, DM operations, observe, firmware."""

    def __init__(
        self,
        config: DeviceConfig,
        server: tuple[str, int],
        *,
        scheduler: Scheduler | None = None,
        clock: SimClock | None = None,
        stats: SimStats | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        if config.version not in VERSIONS:
            raise ValueError(f"unsupported LwM2M version {config.version!r}")
        if config.profile not in PROFILES:
            raise ValueError(f"unknown profile {config.profile!r}")
        self.config = config
        self.name = config.endpoint
        self.server = server
        self.registry = registry or default_registry()
        self.stats = stats or SimStats()
        self._scheduler = scheduler
        self._own_scheduler = scheduler is None
        self._clock = clock
        self.rng = random.Random(config.seed)
        self.profile: Profile = PROFILES[config.profile](self.rng)
        self.tree = ObjectTree(self.registry)
        self.formats = FORMATS[config.version]
        self.firmware = fw.FirmwareUpdater(
            self, fw.FirmwareOutcome(config.firmware_outcome), config.firmware_update_delay
        )
        self.attributes: dict[Path, NotificationAttributes] = {}
        self.endpoint: _DeviceEndpoint | None = None
        self.location: list[str] | None = None
        self.registered = False
        self.registrations = 0
        self.running = False
        # faults
        self.stuck = False
        self.battery_drain: float | None = None  # % per real minute when draining fast
        self.reboot_loop: float | None = None
        self._silent = False
        self._error_codes: list[int] = []
        # simulation state
        self._battery = 100.0 - self.rng.uniform(0.0, 30.0)
        self._signal = self.rng.uniform(-95.0, -70.0)
        self._signal_mean = self._signal
        self._last_t: float | None = None
        self._watches: dict[tuple[Addr, bytes], _Watch] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[str, Timer] = {}
        self._reg_task: asyncio.Task[Any] | None = None
        self._reg_next: str | None = None
        self._retry_delay = config.retry_min
        self._lifetime_changed = False
        self._links_changed = False
        self._registered_event: asyncio.Event | None = None
        self._failed = False
        self._populated = False

    # -- properties ------------------------------------------------------------------

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = Scheduler()
        return self._scheduler

    @property
    def clock(self) -> SimClock:
        if self._clock is None:
            self._clock = SimClock()
        return self._clock

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def silent(self) -> bool:
        return self._silent

    @property
    def address(self) -> tuple[str, int] | None:
        return None if self.endpoint is None else self.endpoint.address

    @property
    def lifetime(self) -> int:
        value = self.tree.get(P_LIFETIME)
        return value if isinstance(value, int) and value > 0 else self.config.lifetime

    @property
    def firmware_version(self) -> str:
        value = self.tree.get(P_FIRMWARE_VERSION)
        return value if isinstance(value, str) else ""

    @property
    def battery(self) -> float:
        return self._battery

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> bool:
        """Open the socket and register; True when the first Register succeeded.

        A device whose first attempt fails keeps retrying in the background.
        """
        if self.running:
            return self.registered
        self.running = True
        self._registered_event = asyncio.Event()
        if not self._populated:
            self._populate()
        try:
            await self._open()
        except OSError:
            self.running = False
            raise
        self._schedule_sample(self.rng.uniform(0.0, self.config.sample_interval))
        self._schedule_send()
        await self._spawn(self._registration_op("register"))
        return self.registered

    async def stop(self, deregister: bool = True, timeout: float = 10.0) -> None:
        """De-register (unless silent or told not to), cancel timers, close the socket."""
        if not self.running:
            return
        self.running = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._reg_task is not None and not self._reg_task.done():
            self._reg_task.cancel()
        if deregister and self.registered and not self._silent and self.endpoint is not None:
            try:
                await asyncio.wait_for(self._deregister(), timeout)
            except (TimeoutError, CoapRequestError):
                pass
        self._set_registered(False)
        self._set_failed(False)
        for task in list(self._tasks):
            task.cancel()
        self._close()
        if self._own_scheduler and self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None

    async def wait_registered(self, timeout: float = 30.0) -> None:
        """Wait until the device is registered (again: after a reboot, for instance)."""
        assert self._registered_event is not None, "device not started"
        await asyncio.wait_for(self._registered_event.wait(), timeout)

    async def _open(self) -> None:
        ep = await _DeviceEndpoint.create(
            self.config.bind_host, 0, self.config.coap, rcvbuf=256 * 1024
        )
        assert isinstance(ep, _DeviceEndpoint)
        ep.silent = self._silent
        ep.route_prefix("/", self._on_request, observable=True)
        ep.on_observer_removed = self._on_observer_removed
        self.endpoint = ep

    def _close(self) -> None:
        self._watches.clear()
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: background task failed", self.name, exc_info=task.exception())

    def _later(self, name: str, delay: float, fn: Any) -> None:
        """One named timer per purpose: scheduling it again replaces the old one."""
        old = self._timers.get(name)
        if old is not None:
            old.cancel()
        if self.running:
            self._timers[name] = self.scheduler.call_later(delay, fn)

    # -- the object tree ---------------------------------------------------------------

    def _populate(self) -> None:
        """Objects 1, 3, 4, 5 and the profile's own, with their first values."""
        self._populated = True
        cfg = self.config
        tree = self.tree
        profile = self.profile
        t = self.clock.now()
        tree.add_instance(
            1,
            0,
            {
                0: 1,
                1: cfg.lifetime,
                6: False,
                7: "U",
                23: False,
            },
        )
        serial = cfg.serial or f"SIM{cfg.seed & 0xFFFFFFFF:08X}"
        tree.add_instance(
            3,
            0,
            {
                0: profile.manufacturer,
                1: profile.model_number,
                2: serial,
                3: cfg.firmware_version,
                6: {0: 1, 1: 7} if profile.solar else {0: 1},
                7: {0: 3700, 1: 5000} if profile.solar else {0: 3700},
                8: {0: 120, 1: 0} if profile.solar else {0: 120},
                9: round(self._battery),
                10: self.rng.randrange(200, 400),
                11: {0: 0},
                13: sim_datetime(t),
                14: "+00:00",
                15: "UTC",
                16: "U",
                17: profile.device_type,
                18: "rev-B",
                19: cfg.firmware_version,
                20: 0,
                21: 512,
            },
        )
        bearer = 21 if profile.kind == "camera" else 7  # WLAN / NB-IoT
        tree.add_instance(
            4,
            0,
            {
                0: bearer,
                1: {0: bearer, 1: 6},
                2: round(self._signal),
                3: self._link_quality(),
                4: {0: cfg.bind_host},
                8: self.rng.randrange(1, 1 << 28),
                9: 1,
                10: 242,
            },
        )
        tree.add_instance(5, 0, fw.FirmwareUpdater.initial_values())
        profile.populate(tree, t)
        tree.executables |= _COMMON_EXECUTABLES
        tree.executables.update(profile.executables)

    def _link_quality(self) -> int:
        return max(0, min(100, round((self._signal + 120.0) * 2)))

    def registration_links(self) -> str:
        """The Register/Update payload for this device's objects."""
        objects = {
            oid: info
            for oid, info in self.tree.links(versions=self.version != "1.0").items()
            if oid != 0
        }
        links = RegistrationLinks("/", DECLARED_FORMATS[self.version], objects)
        return format_registration_links(links)

    def set_value(self, path: Path | str, value: Value) -> None:
        """Change a resource from outside (tests, demos); observers are told."""
        p = Path.parse(path) if isinstance(path, str) else path
        self.tree.set(p, value)
        self._changed([p])

    def value(self, path: Path | str) -> Value | None:
        return self.tree.get(Path.parse(path) if isinstance(path, str) else path)

    # -- simulation ticks --------------------------------------------------------------

    def _schedule_sample(self, delay: float) -> None:
        self._later("sample", delay, self._sample)

    def _sample(self) -> None:
        if not self.running:
            return
        self._schedule_sample(self.config.sample_interval)
        if self.endpoint is None:  # rebooting
            return
        t = self.clock.now()
        changed = self.profile.step(self.tree, t, self.stuck)
        changed += self._step_common(t)
        self._changed(changed)

    def _step_common(self, t: float) -> list[Path]:
        """Battery, signal, clock and memory of objects 3 and 4."""
        last = self._last_t
        self._last_t = t
        dt = 0.0 if last is None else max(0.0, t - last)
        tree = self.tree
        rng = self.rng
        changed = [P_CURRENT_TIME]
        tree.set(P_CURRENT_TIME, sim_datetime(t))
        profile = self.profile
        drain = profile.battery_drain_per_day * dt / DAY
        if self.battery_drain is not None:
            drain += self.battery_drain * self.config.sample_interval / 60.0
        charge = 0.0
        if profile.solar and self.battery_drain is None:
            charge = 3.0 * profile.battery_drain_per_day * max(0.0, diurnal(t, 13.0)) * dt / DAY
        before = self._battery
        self._battery = max(0.0, min(100.0, self._battery - drain + charge))
        if round(self._battery) != round(before):
            tree.set(P_BATTERY, round(self._battery))
            changed.append(P_BATTERY)
        low = self._battery < LOW_BATTERY_LEVEL
        status = 4 if low else 0
        if tree.get(P_BATTERY_STATUS) != status:
            tree.set(P_BATTERY_STATUS, status)
            changed.append(P_BATTERY_STATUS)
        if low != (ERROR_LOW_BATTERY in self._error_codes):
            codes = [c for c in self._error_codes if c != ERROR_LOW_BATTERY]
            self._set_error_codes([ERROR_LOW_BATTERY, *codes] if low else codes)
            changed.append(P_ERROR_CODE)
        self._signal += rng.gauss(0.0, 1.5) + 0.1 * (self._signal_mean - self._signal)
        signal = round(self._signal)
        if tree.get(P_SIGNAL) != signal:
            tree.set(P_SIGNAL, signal)
            tree.set(P_LINK_QUALITY, self._link_quality())
            changed += [P_SIGNAL, P_LINK_QUALITY]
        if rng.random() < 0.1:
            free = tree.get(P_MEMORY_FREE)
            if isinstance(free, int):
                tree.set(P_MEMORY_FREE, max(32, min(480, free + rng.randrange(-8, 9))))
                changed.append(P_MEMORY_FREE)
        if self._battery <= 0.0 and not self._silent:
            log.info("%s: battery empty, going silent", self.name)
            self.set_silent(True)
        return changed

    # -- faults --------------------------------------------------------------------------

    def set_silent(self, silent: bool = True) -> None:
        """Stop answering: drop every incoming datagram and send nothing.

        Coming back sends an Update at once (and re-registers if the server
        forgot the device meanwhile).
        """
        if silent == self._silent:
            return
        self._silent = silent
        if self.endpoint is not None:
            self.endpoint.silent = silent
        if not silent and self.running:
            self._later("registration", 0.0, self._registration_due)

    def set_error_codes(self, codes: Iterable[int]) -> None:
        """Report these Device error codes (/3/0/11); empty means 0, no error."""
        self._set_error_codes(list(codes))
        self._changed([P_ERROR_CODE])

    def _set_error_codes(self, codes: list[int]) -> None:
        self._error_codes = [c for c in dict.fromkeys(codes) if c != 0]
        values = dict(enumerate(self._error_codes)) if self._error_codes else {0: 0}
        self.tree.set_multi(P_ERROR_CODE, values)

    @property
    def error_codes(self) -> list[int]:
        return list(self._error_codes)

    def set_stuck(self, stuck: bool = True) -> None:
        """Freeze the sensor values (a fouled or failed probe)."""
        self.stuck = stuck

    def set_battery_drain(self, percent_per_minute: float | None) -> None:
        """Drain the battery fast (percent per real minute); None for normal drain."""
        self.battery_drain = percent_per_minute

    def set_battery(self, level: float) -> None:
        """Replace/recharge the battery; a device that died of it comes back."""
        self._battery = max(0.0, min(100.0, level))
        self.tree.set(P_BATTERY, round(self._battery))
        self._changed([P_BATTERY])
        if self._battery > 0 and self._silent:
            self.set_silent(False)

    def set_reboot_loop(self, interval: float | None) -> None:
        """Reboot (and register again) every `interval` real seconds; None stops it."""
        self.reboot_loop = interval
        if interval is None:
            timer = self._timers.pop("reboot-loop", None)
            if timer is not None:
                timer.cancel()
        else:
            self._later("reboot-loop", interval, self._reboot_loop_due)

    def set_firmware_outcome(self, outcome: fw.FirmwareOutcome | str) -> None:
        self.firmware.outcome = fw.FirmwareOutcome(outcome)

    def _reboot_loop_due(self) -> None:
        if self.reboot_loop is None or not self.running:
            return
        self._later("reboot-loop", self.reboot_loop, self._reboot_loop_due)
        self.reboot()

    def reboot(self, delay: float = 0.05) -> None:
        """Restart: observations and the socket are lost, the device registers again."""
        self._later("reboot", delay, lambda: self._spawn(self._reboot()))

    async def _reboot(self) -> None:
        if not self.running:
            return
        self.stats.reboots += 1
        for name in ("registration", "watch", "send"):
            timer = self._timers.pop(name, None)
            if timer is not None:
                timer.cancel()
        if self._reg_task is not None and not self._reg_task.done():
            self._reg_task.cancel()
        self._reg_next = None
        self._set_registered(False)
        self.location = None
        self._close()
        await asyncio.sleep(self.config.reboot_delay)
        if not self.running or self.endpoint is not None:
            return
        await self._open()
        self._schedule_send()
        await self._registration_op("register")

    # -- registration ----------------------------------------------------------------------

    def _set_registered(self, registered: bool) -> None:
        if registered != self.registered:
            self.stats.registered += 1 if registered else -1
            self.registered = registered
        if self._registered_event is not None:
            if registered:
                self._registered_event.set()
            else:
                self._registered_event.clear()

    def _set_failed(self, failed: bool) -> None:
        if failed != self._failed:
            self.stats.failed += 1 if failed else -1
            self._failed = failed

    def request_update(self, links: bool = False) -> None:
        """Send a registration Update soon (after a Create/Delete, a lifetime change...)."""
        self._links_changed = self._links_changed or links
        self._later("registration", 0.0, self._registration_due)

    def _registration_due(self) -> None:
        if not self.running or self.endpoint is None:
            return
        if self._silent:
            # a silent device sends nothing; look again later
            self._later("registration", self._update_delay(), self._registration_due)
            return
        kind = "update" if self.location is not None else "register"
        self._spawn(self._registration_op(kind))

    def _update_delay(self) -> float:
        lifetime = self.lifetime
        base = max(1.0, lifetime * self.config.update_ratio)
        return base * self.rng.uniform(0.95, 1.0)

    async def _registration_op(self, kind: str) -> None:
        """Run registration exchanges one at a time; a request during one runs after it."""
        if self._reg_task is not None and not self._reg_task.done():
            if kind == "register" or self._reg_next is None:
                self._reg_next = kind
            return
        task = asyncio.current_task()
        self._reg_task = task
        try:
            next_kind: str | None = kind
            while next_kind is not None and self.running and self.endpoint is not None:
                self._reg_next = None
                if next_kind == "register":
                    await self._register()
                else:
                    await self._update()
                next_kind = self._reg_next
        finally:
            if self._reg_task is task:
                self._reg_task = None

    def _register_message(self) -> Message:
        cfg = self.config
        msg = Message(code=Code.POST).add(o.URI_PATH, "rd")
        msg.add(o.URI_QUERY, f"ep={self.name}")
        msg.add(o.URI_QUERY, f"lt={self.lifetime}")
        msg.add(o.URI_QUERY, f"lwm2m={self.version}")
        msg.add(o.URI_QUERY, "b=U")
        if cfg.enclosure:
            msg.add(o.URI_QUERY, f"{cfg.enclosure_param}={cfg.enclosure}")
        msg.add(o.CONTENT_FORMAT, LINK_FORMAT)
        msg.payload = self.registration_links().encode()
        return msg

    async def _exchange(self, msg: Message) -> Message | None:
        ep = self.endpoint
        if ep is None:
            return None
        try:
            return await asyncio.wait_for(ep.request(self.server, msg), self.config.request_timeout)
        except (TimeoutError, CoapRequestError) as exc:
            log.debug("%s: %s failed: %s", self.name, msg.path_str(), exc)
            return None

    async def _register(self) -> None:
        self._lifetime_changed = self._links_changed = False
        resp = await self._exchange(self._register_message())
        if resp is not None and resp.code == Code.CREATED and resp.location_path:
            self.location = resp.location_path
            self.registrations += 1
            self.stats.registrations += 1
            self._retry_delay = self.config.retry_min
            self._set_failed(False)
            self._set_registered(True)
            self._later("registration", self._update_delay(), self._registration_due)
            return
        self.stats.registration_failures += 1
        self.location = None
        self._set_registered(False)
        self._set_failed(True)
        self._retry_later()

    def _retry_later(self) -> None:
        delay = self._retry_delay * self.rng.uniform(0.8, 1.2)
        self._retry_delay = min(self.config.retry_max, self._retry_delay * 2)
        self._later("registration", delay, self._registration_due)

    async def _update(self) -> None:
        if self.location is None:
            await self._register()
            return
        msg = Message(code=Code.POST)
        for seg in self.location:
            msg.add(o.URI_PATH, seg)
        if self._lifetime_changed:
            msg.add(o.URI_QUERY, f"lt={self.lifetime}")
        if self._links_changed:
            msg.add(o.CONTENT_FORMAT, LINK_FORMAT)
            msg.payload = self.registration_links().encode()
        self._lifetime_changed = self._links_changed = False
        resp = await self._exchange(msg)
        if resp is not None and resp.code == Code.CHANGED:
            self.stats.updates += 1
            self._set_registered(True)
            self._later("registration", self._update_delay(), self._registration_due)
            return
        self.stats.update_failures += 1
        if resp is not None:
            # 4.04: the server forgot us (expired, restarted); any refusal: start over
            self.location = None
            self._set_registered(False)
            await self._register()
            return
        self._set_registered(False)
        self._retry_later()

    async def _deregister(self) -> None:
        if self.location is None or self.endpoint is None:
            return
        msg = Message(code=Code.DELETE)
        for seg in self.location:
            msg.add(o.URI_PATH, seg)
        resp = await self.endpoint.request(self.server, msg)
        if resp.code == Code.DELETED:
            self.stats.deregistrations += 1
        self.location = None
        self._set_registered(False)

    # -- Send ------------------------------------------------------------------------------

    def _schedule_send(self) -> None:
        interval = self.config.send_interval
        if interval and self.version != "1.0":
            self._later("send", interval * self.rng.uniform(0.5, 1.0), self._send_due)

    def _send_due(self) -> None:
        interval = self.config.send_interval
        if not self.running or not interval:
            return
        self._later("send", interval, self._send_due)
        if self.registered and not self._silent:
            self._spawn(self.send())

    async def send(self, paths: Iterable[Path | str] | None = None) -> Message | None:
        """LwM2M 1.1 Send (`POST /dp`) of the profile's values or of `paths`.

        Returns the server's answer, None when the device cannot send (1.0, not
        registered, silent, Mute Send set, no answer).
        """
        if self.version == "1.0" or not self.registered or self._silent:
            return None
        if self.tree.get(P_MUTE_SEND) is True:
            return None
        chosen = self.profile.send_paths() if paths is None else paths
        values: dict[Path, Value] = {}
        for p in chosen:
            path = Path.parse(p) if isinstance(p, str) else p
            values.update(self.tree.read(path))
        fmt = self.config.send_format
        msg = Message(code=Code.POST).add(o.URI_PATH, "dp").add(o.CONTENT_FORMAT, fmt)
        msg.payload = content.encode(fmt, values, Path(), self.registry)
        resp = await self._exchange(msg)
        if resp is not None:
            self.stats.sends += 1
        return resp

    # -- serving the server's requests -------------------------------------------------

    def _on_request(self, request: Message, remote: Addr) -> Message:
        self.stats.requests += 1
        try:
            path = Path.from_segments(request.uri_path)
        except InvalidPath:
            return _reply(Code.NOT_FOUND, "not an LwM2M path")
        code = request.code
        if code == Code.GET:
            if request.accept == LINK_FORMAT:
                return self._discover(path)
            response = self._read(path, request.accept)
            if request.observe == 0 and response.code == Code.CONTENT:
                self._watch(request, remote, [path])
            return response
        if code == Code.PUT:
            if request.uri_query and request.content_format is None and not request.payload:
                return self._write_attributes(path, request.uri_query)
            return self._write(path, request, partial=False)
        if code == Code.POST:
            if path.is_object():
                return self._create(path, request)
            if path.is_instance():
                return self._write(path, request, partial=True)
            if path.is_resource():
                if (path[0], path[2]) in self.tree.executables:
                    return self._execute(path, request)
                rm = self.tree.resource_model(path[0], path[2])
                if rm is not None and rm.multiple and self.version != "1.0":
                    return self._write(path, request, partial=True)
                if not self.tree.exists(path):
                    return _reply(Code.NOT_FOUND)
            return _reply(Code.METHOD_NOT_ALLOWED)
        if code == Code.DELETE:
            return self._delete(path)
        if code == Code.FETCH and self.version != "1.0":
            return self._read_composite(request, remote)
        if code == Code.IPATCH and self.version != "1.0":
            return self._write_composite(path, request)
        return _reply(Code.METHOD_NOT_ALLOWED)

    def _default_format(self, path: Path) -> int:
        if self.version == "1.0":
            return CF.TLV
        return CF.SENML_CBOR

    def _read(self, path: Path, accept: int | None) -> Message:
        tree = self.tree
        if path.is_root():
            return _reply(Code.METHOD_NOT_ALLOWED)
        if len(path) >= 3 and tree.instance(path[0], path[1]) is not None:
            rm = tree.resource_model(path[0], path[2])
            if rm is not None and not rm.operations & Operations.READ:
                return _reply(Code.METHOD_NOT_ALLOWED)
        if not tree.exists(path):
            return _reply(Code.NOT_FOUND)
        fmt = self._default_format(path) if accept is None else accept
        if fmt not in self.formats:
            return _reply(Code.NOT_ACCEPTABLE)
        values = tree.read(path, with_empty=fmt in (CF.TLV, CF.LWM2M_CBOR))
        try:
            payload = content.encode(fmt, values, path, self.registry)
        except content.CodecError as exc:
            return _reply(Code.NOT_ACCEPTABLE, str(exc))
        return Message(code=Code.CONTENT, payload=payload).add(o.CONTENT_FORMAT, fmt)

    def _discover(self, path: Path) -> Message:
        tree = self.tree
        if path.is_root() or path.is_resource_instance():
            return _reply(Code.METHOD_NOT_ALLOWED)
        if not tree.exists(path):
            return _reply(Code.NOT_FOUND)
        links: list[Link] = []
        params: dict[str, str | None]
        oid = path[0]
        if path.is_object():
            params = self._attr_params(path)
            om = tree.object_model(oid)
            if self.version != "1.0" and om is not None and om.version != "1.0":
                params["ver"] = om.version
            links.append(Link(str(path), params))
        iids = [path[1]] if len(path) >= 2 else sorted(tree.objects.get(oid, {}))
        for iid in iids:
            if len(path) <= 2:
                links.append(Link(f"/{oid}/{iid}", self._attr_params(Path(oid, iid))))
            rids = [path[2]] if len(path) == 3 else tree.resource_ids(oid, iid)
            for rid in rids:
                rpath = Path(oid, iid, rid)
                params = {}  # dim first, as clients write it
                dim = tree.dim(rpath)
                if dim is not None:
                    params["dim"] = str(dim)
                params.update(self._attr_params(rpath))
                links.append(Link(str(rpath), params))
        payload = format_links(links).encode()
        return Message(code=Code.CONTENT, payload=payload).add(o.CONTENT_FORMAT, LINK_FORMAT)

    def _attr_params(self, path: Path) -> dict[str, str | None]:
        attrs = self.attributes.get(path)
        if attrs is None:
            return {}
        params: dict[str, str | None] = {}
        for query in attrs.to_query():
            name, _, value = query.partition("=")
            params[name] = value
        return params

    def _check_writes(
        self, values: Mapping[Path, Value], create: bool = False
    ) -> tuple[int, str] | None:
        """Every value must name a known, writable resource of an existing instance."""
        tree = self.tree
        for p in values:
            if len(p) < 3:
                continue
            if not create and tree.instance(p[0], p[1]) is None:
                return Code.NOT_FOUND, f"no instance {Path(p[0], p[1])}"
            rm = tree.resource_model(p[0], p[2])
            if rm is None:
                return Code.NOT_FOUND, f"no resource {p}"
            if not create and not rm.operations & Operations.WRITE:
                return Code.METHOD_NOT_ALLOWED, f"{p} is not writable"
            if rm.operations & Operations.EXECUTE:
                return Code.BAD_REQUEST, f"{p} is executable"
        return None

    def _write(self, path: Path, request: Message, partial: bool) -> Message:
        tree = self.tree
        if len(path) < 2:
            return _reply(Code.METHOD_NOT_ALLOWED)
        if not tree.exists(path) and not (
            len(path) >= 3
            and tree.instance(path[0], path[1]) is not None
            and tree.resource_model(path[0], path[2]) is not None
        ):
            return _reply(Code.NOT_FOUND)
        fmt = request.content_format
        if fmt is None:
            return _reply(Code.BAD_REQUEST, "Write needs a Content-Format")
        if fmt not in self.formats:
            return _reply(Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            values = content.decode(fmt, request.payload, path, self.registry)
        except content.CodecError as exc:
            return _reply(Code.BAD_REQUEST, str(exc))
        problem = self._check_writes(values)
        if problem is not None:
            return _reply(*problem)
        return self._apply_writes(path, values, replace=not partial)

    def _apply_writes(self, path: Path, values: Mapping[Path, Value], replace: bool) -> Message:
        """Store written values; firmware resources go to the state machine instead."""
        tree = self.tree
        changed: list[Path] = []
        multi: dict[Path, dict[int, Value]] = {}
        singles: dict[Path, Value] = {}
        for p, v in values.items():
            if len(p) == 2:
                continue
            rm = tree.resource_model(p[0], p[2])
            if len(p) == 4:
                multi.setdefault(Path(p[0], p[1], p[2]), {})[p[3]] = v
            elif rm is not None and rm.multiple:
                multi.setdefault(p, {})  # an empty multiple resource
            else:
                singles[p] = v
        if replace and path.is_instance():
            inst = tree.instance(path[0], path[1]) or {}
            given = {p[2] for p in values if len(p) >= 3}
            for rid in list(inst):
                rm = tree.resource_model(path[0], rid)
                if (
                    rid not in given
                    and rm is not None
                    and rm.operations & Operations.WRITE
                    and not rm.mandatory
                ):
                    del inst[rid]
                    changed.append(Path(path[0], path[1], rid))
        code: int = Code.CHANGED
        for p, v in singles.items():
            hooked = self._write_hook(p, v)
            if hooked is not None:
                if hooked != Code.CHANGED:
                    code = hooked
                continue
            tree.set(p, v)
            changed.append(p)
        for p, instances in multi.items():
            if replace and not path.is_resource_instance():
                tree.set_multi(p, instances)
            else:
                for riid, v in instances.items():
                    tree.set(p.child(riid), v)
            changed.append(p)
        self._changed(changed)
        return _reply(code)

    def _write_hook(self, path: Path, value: Value) -> int | None:
        """Resources whose write does something; None for a plain store."""
        if path == fw.PACKAGE:
            data = value if isinstance(value, bytes) else str(value).encode()
            return self.firmware.write_package(data)
        if path == fw.PACKAGE_URI:
            return self.firmware.write_uri(str(value))
        if path == P_LIFETIME:
            if not isinstance(value, int) or value <= 0:
                return Code.BAD_REQUEST
            self.tree.set(path, value)
            self._lifetime_changed = True
            self.request_update()
            return Code.CHANGED
        return None

    def _execute(self, path: Path, request: Message) -> Message:
        tree = self.tree
        if tree.instance(path[0], path[1]) is None:
            return _reply(Code.NOT_FOUND)
        key = (path[0], path[2])
        if key == (1, 8):
            self.request_update()
        elif key == (3, 4):
            self.reboot()
        elif key == (3, 5):
            self._factory_reset()
        elif key == (3, 12):
            self.set_error_codes([])
        elif key == (5, 2):
            return _reply(self.firmware.execute_update())
        elif key == (5, 10):
            return _reply(self.firmware.cancel())
        else:
            changed = self.profile.execute(tree, path, self.clock.now())
            if changed is None:
                return _reply(Code.METHOD_NOT_ALLOWED)
            self._changed(changed)
        return _reply(Code.CHANGED)

    def _factory_reset(self) -> None:
        self.attributes.clear()
        self.stuck = False
        self.battery_drain = None
        self._error_codes = []
        firmware_version = self.firmware_version
        self.tree = ObjectTree(self.registry)
        self.firmware = fw.FirmwareUpdater(
            self, self.firmware.outcome, self.config.firmware_update_delay
        )
        self._populate()
        self.tree.set(P_FIRMWARE_VERSION, firmware_version)
        self.reboot()

    def _create(self, path: Path, request: Message) -> Message:
        tree = self.tree
        oid = path[0]
        om = tree.object_model(oid)
        if om is None:
            return _reply(Code.NOT_FOUND)
        if oid in (0, 1, 3, 4, 5) or (not om.multiple and tree.objects.get(oid)):
            return _reply(Code.METHOD_NOT_ALLOWED)
        fmt = request.content_format
        if fmt is None or fmt not in self.formats:
            return _reply(Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            values = content.decode(fmt, request.payload, path, self.registry)
        except content.CodecError:
            try:
                root = Path(oid, tree.free_instance_id(oid))
                values = content.decode(fmt, request.payload, root, self.registry)
            except content.CodecError as exc:
                return _reply(Code.BAD_REQUEST, str(exc))
        iids = {p[1] for p in values if len(p) >= 2}
        if len(iids) > 1:
            return _reply(Code.BAD_REQUEST, "Create makes one instance")
        iid = iids.pop() if iids else tree.free_instance_id(oid)
        if tree.instance(oid, iid) is not None:
            return _reply(Code.BAD_REQUEST, f"instance /{oid}/{iid} exists")
        problem = self._check_writes(values, create=True)
        if problem is not None:
            return _reply(Code.BAD_REQUEST, problem[1])
        resources: dict[int, Value | dict[int, Value]] = {}
        for p, v in values.items():
            if len(p) == 3:
                rm = tree.resource_model(oid, p[2])
                resources[p[2]] = {} if rm is not None and rm.multiple else v
            elif len(p) == 4:
                holder = resources.setdefault(p[2], {})
                if isinstance(holder, dict):
                    holder[p[3]] = v
        tree.add_instance(oid, iid, resources)
        self.request_update(links=True)
        response = _reply(Code.CREATED)
        response.add(o.LOCATION_PATH, str(oid)).add(o.LOCATION_PATH, str(iid))
        return response

    def _delete(self, path: Path) -> Message:
        tree = self.tree
        if not path.is_instance():
            return _reply(Code.METHOD_NOT_ALLOWED)
        if not tree.exists(path):
            return _reply(Code.NOT_FOUND)
        om = tree.object_model(path[0])
        if path[0] in (0, 1, 3, 4, 5) or om is None or not om.multiple:
            return _reply(Code.METHOD_NOT_ALLOWED)
        tree.remove_instance(path[0], path[1])
        for p in [p for p in self.attributes if p.startswith(path)]:
            del self.attributes[p]
        self._changed([path])
        self.request_update(links=True)
        return _reply(Code.DELETED)

    def _write_attributes(self, path: Path, query: list[str]) -> Message:
        tree = self.tree
        if path.is_root():
            return _reply(Code.METHOD_NOT_ALLOWED)
        if not tree.exists(path):
            return _reply(Code.NOT_FOUND)
        try:
            update = NotificationAttributes.from_query(query)
        except InvalidAttributes as exc:
            return _reply(Code.BAD_REQUEST, str(exc))
        if any(_float_attr(getattr(update, n)) is not None for n in ("gt", "lt", "st")):
            rm = tree.resource_model(path[0], path[2]) if len(path) >= 3 else None
            if rm is None or rm.type not in NUMERIC_TYPES:
                return _reply(Code.BAD_REQUEST, "gt, lt and st need a numeric resource")
        current = self.attributes.get(path, NotificationAttributes())
        try:
            merged = current.apply(update)
        except InvalidAttributes as exc:
            return _reply(Code.BAD_REQUEST, str(exc))
        if merged.is_empty():
            self.attributes.pop(path, None)
        else:
            self.attributes[path] = merged
        self._service_soon()
        return _reply(Code.CHANGED)

    def _read_composite(self, request: Message, remote: Addr) -> Message:
        response = self._composite_response(request)
        if request.observe == 0 and response.code == Code.CONTENT:
            try:
                paths = content.decode_paths(request.content_format or 0, request.payload)
            except content.CodecError:
                return response
            self._watch(request, remote, paths)
        return response

    def _composite_response(self, request: Message) -> Message:
        if request.uri_path:
            return _reply(Code.METHOD_NOT_ALLOWED)
        cf = request.content_format
        if cf is None or cf not in PATH_LIST_FORMATS or cf not in self.formats:
            return _reply(Code.UNSUPPORTED_CONTENT_FORMAT)
        accept = cf if request.accept is None else request.accept
        if accept not in COMPOSITE_FORMATS or accept not in self.formats:
            return _reply(Code.NOT_ACCEPTABLE)
        try:
            paths = content.decode_paths(cf, request.payload)
        except content.CodecError as exc:
            return _reply(Code.BAD_REQUEST, str(exc))
        values: dict[Path, Value] = {}
        for p in paths:
            if not p.is_root() and self.tree.exists(p):
                values.update(self.tree.read(p))
        try:
            payload = content.encode(accept, values, Path(), self.registry)
        except content.CodecError as exc:
            return _reply(Code.NOT_ACCEPTABLE, str(exc))
        return Message(code=Code.CONTENT, payload=payload).add(o.CONTENT_FORMAT, accept)

    def _write_composite(self, path: Path, request: Message) -> Message:
        if not path.is_root():
            return _reply(Code.METHOD_NOT_ALLOWED)
        cf = request.content_format
        if cf is None or cf not in COMPOSITE_FORMATS or cf not in self.formats:
            return _reply(Code.UNSUPPORTED_CONTENT_FORMAT)
        try:
            values = content.decode(cf, request.payload, Path(), self.registry)
        except content.CodecError as exc:
            return _reply(Code.BAD_REQUEST, str(exc))
        problem = self._check_writes(values)
        if problem is not None:
            return _reply(*problem)
        return self._apply_writes(path, values, replace=False)

    # -- observations --------------------------------------------------------------------

    def _watch(self, request: Message, remote: Addr, paths: list[Path]) -> None:
        if self.endpoint is None:
            return
        now = self.endpoint.now()
        number = self.tree.number(paths[0]) if len(paths) == 1 else None
        self._watches[(remote, request.token)] = _Watch(paths, now, number)
        self._service_soon()

    def _on_observer_removed(self, observer: Observer, reason: str) -> None:
        self._watches.pop(observer.key, None)

    @property
    def observations(self) -> int:
        """How many observations the server holds on this device."""
        return 0 if self.endpoint is None else len(self.endpoint.engine.observers())

    def _default_attributes(self) -> NotificationAttributes:
        pmin = self.tree.get(Path(1, 0, 2))
        pmax = self.tree.get(Path(1, 0, 3))
        try:
            return NotificationAttributes(
                pmin=pmin if isinstance(pmin, int) and pmin >= 0 else None,
                pmax=pmax if isinstance(pmax, int) and pmax > 0 else None,
            )
        except InvalidAttributes:
            return NotificationAttributes()

    def effective_attributes(self, path: Path) -> NotificationAttributes:
        """Attributes for an observation of `path`: the server defaults, then each level
        from object down to the path, the deeper one winning."""
        eff = self._default_attributes()
        for n in range(1, len(path) + 1):
            attrs = self.attributes.get(Path(*path[:n]))
            if attrs is None:
                continue
            try:
                eff = eff.apply(attrs)
            except InvalidAttributes:
                eff = attrs
        return eff

    def _changed(self, changed: list[Path]) -> None:
        """Values changed: mark the observations they concern, then notify what is due."""
        if not self._watches or not changed:
            return
        for watch in self._watches.values():
            if watch.pending or not _affects(watch.paths, changed):
                continue
            if len(watch.paths) == 1:
                watch.pending = self._crossed(watch, self.effective_attributes(watch.paths[0]))
            else:
                watch.pending = True
        self._service_soon()

    def _service_soon(self) -> None:
        """Notify from the scheduler, not from inside a request handler."""
        timer = self._timers.get("watch")
        if timer is None or timer.cancelled or timer.when > self.scheduler.time():
            self._later("watch", 0.0, self._service)

    def _crossed(self, watch: _Watch, attrs: NotificationAttributes) -> bool:
        """With gt/lt/st on a numeric resource, only crossings and steps count."""
        gt, lt, st = _float_attr(attrs.gt), _float_attr(attrs.lt), _float_attr(attrs.st)
        if gt is None and lt is None and st is None:
            return True
        value = self.tree.number(watch.paths[0])
        last = watch.last_number
        if value is None or last is None:
            return True
        if st is not None and abs(value - last) >= st:
            return True
        if gt is not None and (last > gt) != (value > gt):
            return True
        return lt is not None and (last < lt) != (value < lt)

    def _service(self) -> None:
        """Send the notifications that are due (pmin passed with a change, or pmax)."""
        ep = self.endpoint
        if ep is None or not self._watches:
            return
        engine = ep.engine
        now = ep.now()
        observers = {obs.key: obs for obs in engine.observers()}
        next_due: float | None = None
        sent = False
        for key, watch in list(self._watches.items()):
            obs = observers.get(key)
            if obs is None:
                if now - watch.last_sent > 1.0:  # the observe answer never registered
                    del self._watches[key]
                continue
            single = len(watch.paths) == 1
            attrs = (
                self.effective_attributes(watch.paths[0]) if single else self._default_attributes()
            )
            pmin = _int_attr(attrs.pmin) or 0
            pmax = _int_attr(attrs.pmax)
            if pmax is not None and (pmax <= 0 or pmax < pmin):
                pmax = None  # the spec says to ignore such a pmax
            due = (watch.pending and now >= watch.last_sent + pmin) or (
                pmax is not None and now >= watch.last_sent + pmax
            )
            if due:
                watch.last_sent = now
                watch.pending = False
                if single:
                    watch.last_number = self.tree.number(watch.paths[0])
                if not self._silent:
                    engine.notify(obs, self._representation(obs.request), now, attrs.con == 1)
                    self.stats.notifications += 1
                    sent = True
                if key not in self._watches:
                    continue
            candidates = []
            if watch.pending:
                candidates.append(watch.last_sent + pmin)
            if pmax is not None:
                candidates.append(watch.last_sent + pmax)
            for when in candidates:
                next_due = when if next_due is None else min(next_due, when)
        if sent:
            ep.flush()
        if next_due is not None:
            timer = self._timers.get("watch")
            if timer is None or timer.cancelled or timer.when > next_due + 0.001:
                self._later("watch", max(0.0, next_due - now), self._service)

    def _representation(self, request: Message) -> Message:
        """The current answer to an observe request, for a notification."""
        if request.code == Code.FETCH:
            return self._composite_response(request)
        try:
            path = Path.from_segments(request.uri_path)
        except InvalidPath:
            return _reply(Code.NOT_FOUND)
        return self._read(path, request.accept)

    # -- FirmwareHost ----------------------------------------------------------------------

    def fw_set(self, values: dict[Path, Value]) -> None:
        for p, v in values.items():
            self.tree.set(p, v)
        self._changed(list(values))

    def fw_spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._spawn(coro)

    def fw_later(self, delay: float, fn: Any) -> None:
        self._later("firmware", delay, fn)

    def fw_endpoint(self) -> CoapEndpoint | None:
        return self.endpoint

    def fw_install(self, info: fw.PackageInfo) -> None:
        self.stats.firmware_updates += 1
        if info.kind == "model":
            changed = []
            for rid, value in ((2, info.name), (3, info.version)):
                p = Path(33001, 0, rid)
                if self.tree.instance(33001, 0) is not None:
                    self.tree.set(p, value)
                    changed.append(p)
            self._changed(changed)
            return
        self.tree.set(P_FIRMWARE_VERSION, info.version)
        self.tree.set(Path(3, 0, 19), info.version)
        self.reboot()

    def __repr__(self) -> str:
        state = "registered" if self.registered else "not registered"
        return f"<SimDevice {self.name} {self.config.profile} lwm2m={self.version} {state}>"

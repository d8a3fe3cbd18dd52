"""Many simulated devices in one process: a fish farm's worth of clients on real UDP.

Each device keeps its own socket (the server must see distinct addresses, as it
would through NAT), so a large fleet needs the open-file limit raised and more
source addresses than one loopback address has ports: beyond one address's
ephemeral port range, devices bind 127.0.0.2, 127.0.0.3 and so on. Registrations
start with bounded concurrency so the server sees a storm it can survive, with a
progress bar for the operator watching thousands of devices come up.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from tqdm import tqdm

from shoal.lwm2m.registry import ModelRegistry, default_registry
from shoal.sim.device import DeviceConfig, SimDevice, SimStats
from shoal.sim.firmware import FirmwareOutcome
from shoal.sim.scheduler import Scheduler, SimClock

log = logging.getLogger(__name__)

FAULTS = ("silent", "stuck", "battery", "reboot", "errors")
PROFILE_CHOICES = ("water", "camera", "mixed")


def raise_nofile_limit(wanted: int = 0) -> int:
    """Raise the soft open-file limit to the hard limit; returns the soft limit now."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + 1024, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def _ephemeral_ports() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return hi - lo + 1
    except (OSError, ValueError):
        return 28232


# Devices per source address: the kernel picks each device's port from the
# ephemeral range of its bound address; keep some of the range for everyone else.
DEVICES_PER_ADDRESS = max(1024, _ephemeral_ports() - 2048)


def bind_host_for(index: int, server_host: str, per_address: int = DEVICES_PER_ADDRESS) -> str:
    """The local address device `index` binds: spread over 127.0.0.1..254 for a
    loopback server, the wildcard address for a remote one."""
    try:
        ip = ipaddress.ip_address(server_host)
    except ValueError:
        return "0.0.0.0"
    if ip.version == 6:
        return "::1" if ip.is_loopback else "::"
    if not ip.is_loopback:
        return "0.0.0.0"
    return f"127.0.0.{1 + (index // per_address) % 254}"


def pick_share(rng: random.Random, shares: Mapping[str, float]) -> str | None:
    """One key of `shares` with its probability (None for the remaining share)."""
    x = rng.random()
    for key, share in shares.items():
        if x < share:
            return key
        x -= share
    return None


@dataclass(slots=True)
class FleetConfig:
    """A fleet: how many devices of which kind, where they register, how they behave."""

    server: tuple[str, int] = ("127.0.0.1", 5683)
    count: int = 10
    profile: str = "mixed"
    camera_share: float = 0.2  # of a mixed fleet
    enclosures: Sequence[str] = ()
    enclosure_param: str = "enc"
    version: str = "1.1"
    lifetime: int = 300
    name_prefix: str = "sim"
    name_format: str = "{prefix}-{kind}-{index:05d}"
    first_index: int = 0
    seed: int = 1
    concurrency: int = 100
    sample_interval: float = 10.0
    send_interval: float | None = None
    time_scale: float = 1.0
    bind_host: str | None = None  # None: chosen from the device index
    firmware_outcomes: Mapping[str, float] = field(default_factory=dict)
    faults: Mapping[str, float] = field(default_factory=dict)
    progress: bool = True
    # Any other DeviceConfig field, applied to every device (firmware_update_delay...).
    device: Mapping[str, Any] = field(default_factory=dict)


class Fleet:
    """Starts, runs and stops a fleet of `SimDevice`s sharing one scheduler."""

    def __init__(self, config: FleetConfig, registry: ModelRegistry | None = None) -> None:
        if config.profile not in PROFILE_CHOICES:
            raise ValueError(f"unknown profile {config.profile!r}")
        unknown = set(config.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {', '.join(sorted(unknown))}")
        for name in config.firmware_outcomes:
            FirmwareOutcome(name)  # raises ValueError on a bad name
        known = {f.name for f in fields(DeviceConfig)}
        bad = set(config.device) - known
        if bad:
            raise ValueError(f"unknown device settings: {', '.join(sorted(bad))}")
        self.config = config
        self.registry = registry or default_registry()
        self.stats = SimStats()
        self.devices: list[SimDevice] = []
        self.open_failures = 0
        self.scheduler: Scheduler | None = None
        self.clock: SimClock | None = None
        self.server: tuple[str, int] = config.server
        self._by_name: dict[str, SimDevice] = {}

    # -- building -----------------------------------------------------------------------

    def device_config(self, index: int) -> DeviceConfig:
        """The configuration of device `index` (deterministic for a given seed)."""
        cfg = self.config
        rng = random.Random(cfg.seed * 1_000_003 + index)
        kind = cfg.profile
        if kind == "mixed":
            kind = "camera" if rng.random() < cfg.camera_share else "water"
        enclosure = cfg.enclosures[index % len(cfg.enclosures)] if cfg.enclosures else None
        serial = f"SN{cfg.seed % 1000:03d}{index:07d}"
        name = cfg.name_format.format(
            prefix=cfg.name_prefix, kind=kind, index=index, enc=enclosure or "", serial=serial
        )
        outcome = pick_share(rng, cfg.firmware_outcomes) or FirmwareOutcome.SUCCESS.value
        dc = DeviceConfig(
            endpoint=name,
            profile=kind,
            version=cfg.version,
            lifetime=cfg.lifetime,
            enclosure=enclosure,
            enclosure_param=cfg.enclosure_param,
            bind_host=cfg.bind_host or bind_host_for(index, self.server[0]),
            seed=rng.getrandbits(64),
            serial=serial,
            sample_interval=cfg.sample_interval,
            send_interval=cfg.send_interval,
            firmware_outcome=FirmwareOutcome(outcome),
        )
        return replace(dc, **cfg.device) if cfg.device else dc

    def _make(self, index: int) -> SimDevice:
        device = SimDevice(
            self.device_config(index),
            self.server,
            scheduler=self.scheduler,
            clock=self.clock,
            stats=self.stats,
            registry=self.registry,
        )
        self.devices.append(device)
        self._by_name[device.name] = device
        return device

    # -- running ------------------------------------------------------------------------

    async def start(self) -> dict[str, int]:
        """Create and register every device; returns `summary()` when all tried once."""
        cfg = self.config
        limit = raise_nofile_limit(cfg.count + 256)
        if 0 < limit < cfg.count + 64:
            log.warning("open-file limit %d is too low for %d devices", limit, cfg.count)
        host, port = self.server
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        self.server = (str(infos[0][4][0]), int(infos[0][4][1]))
        self.scheduler = Scheduler()
        self.clock = SimClock(cfg.time_scale)
        start = cfg.first_index
        devices = [self._make(i) for i in range(start, start + cfg.count)]
        await self._each(devices, self._start_one, "registering")
        self._inject_configured_faults()
        return self.summary()

    async def _start_one(self, device: SimDevice) -> None:
        try:
            await device.start()
        except OSError as exc:
            self.open_failures += 1
            log.warning("%s: cannot open its socket: %s", device.name, exc)
            device.running = False

    async def _each(
        self, devices: Sequence[SimDevice], fn: Any, desc: str, progress: bool | None = None
    ) -> None:
        """Run `fn(device)` over devices with bounded concurrency and a progress bar."""
        show = self.config.progress if progress is None else progress
        bar = tqdm(total=len(devices), desc=desc, unit="dev", disable=not show, leave=True)
        it: Iterator[SimDevice] = iter(devices)
        done = 0

        async def worker() -> None:
            nonlocal done
            for device in it:
                await fn(device)
                done += 1
                bar.update(1)
                if done % 50 == 0 or done == len(devices):
                    bar.set_postfix(
                        registered=self.stats.registered, failed=self.stats.failed, refresh=False
                    )

        workers = max(1, min(self.config.concurrency, len(devices)))
        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            bar.close()

    async def stop(self, deregister: bool = True) -> dict[str, int]:
        """De-register every device (bounded concurrency) and close all sockets."""

        async def stop_one(device: SimDevice) -> None:
            await device.stop(deregister=deregister)

        running = [d for d in self.devices if d.running]
        await self._each(running, stop_one, "deregistering")
        if self.scheduler is not None:
            self.scheduler.close()
        return self.summary()

    # -- inspecting and faults ----------------------------------------------------------

    def device(self, name: str) -> SimDevice:
        return self._by_name[name]

    def summary(self) -> dict[str, int]:
        s = self.stats.as_dict()
        s["devices"] = len(self.devices)
        s["open_failures"] = self.open_failures
        return s

    def inject(
        self,
        fault: str,
        share: float = 1.0,
        devices: Iterable[SimDevice] | None = None,
        seed: int | None = None,
    ) -> list[SimDevice]:
        """Switch `fault` on for a share of the devices (or the ones given)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        rng = random.Random(self.config.seed if seed is None else seed)
        pool = list(self.devices if devices is None else devices)
        chosen = [d for d in pool if rng.random() < share]
        for device in chosen:
            apply_fault(device, fault, rng)
        return chosen

    def _inject_configured_faults(self) -> None:
        for n, (fault, share) in enumerate(self.config.faults.items()):
            if share > 0:
                chosen = self.inject(fault, share, seed=self.config.seed + 7919 * (n + 1))
                log.info("fault %s on %d devices", fault, len(chosen))


def apply_fault(device: SimDevice, fault: str, rng: random.Random | None = None) -> None:
    """Switch one fault on (see `FAULTS`)."""
    rng = rng or random.Random()
    if fault == "silent":
        device.set_silent(True)
    elif fault == "stuck":
        device.set_stuck(True)
    elif fault == "battery":
        device.set_battery_drain(5.0)
    elif fault == "reboot":
        device.set_reboot_loop(rng.uniform(45.0, 90.0))
    elif fault == "errors":
        device.set_error_codes([rng.choice((4, 7, 8))])
    else:
        raise ValueError(f"unknown fault {fault!r}")

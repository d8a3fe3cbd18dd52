"""One device's update: deliver the package, Execute Update, verify, soak, roll back.

The state machine follows the Firmware Update object (5). It observes State
(/5/0/3) and Update Result (/5/0/5), and reads them as well every
`poll_interval` (a lost notification must not stall an update). Steps:

1. the device is registered; read what it runs (/3/0/3, or the camera's
   recognition-model version /33001/0/3 for a model package) and object 5;
2. deliver, chosen from Delivery Method (/5/0/9) and Protocol Support (/5/0/8):
   pull (Shoal writes a Package URI to /5/0/1 naming its own CoAP file server,
   `coap://<server>/fw/<token>`, or its HTTP endpoint, with a per-device token
   that expires) or push (a block-wise Write of the package to /5/0/0); wait
   for Downloaded;
3. Execute /5/0/2;
4. the device comes back (re-registration after the reboot, or Update Result 1)
   and reports the target version within a timeout;
5. it stays healthy for a soak period: registered, no reboots, same version,
   no malfunction error code (/3/0/11), and whatever `health_check` says.

Every step has a deadline, so nothing stays "in progress" forever; every Update
Result code becomes a reason an operator can act on. A job resumed after a
server restart looks at the device first and never flashes it again if it
already runs the target version.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shoal.coap import options as o
from shoal.coap.codes import Code, code_str
from shoal.coap.engine import Addr
from shoal.coap.message import Message
from shoal.firmware.repository import Package, PackageRepository, PackageType
from shoal.firmware.versions import same_version
from shoal.lwm2m import requests as rq
from shoal.lwm2m.path import Path
from shoal.server import events as ev
from shoal.server.observation import Observation
from shoal.server.registration import Registration
from shoal.server.server import Lwm2mServer, RequestError, UnknownDevice

log = logging.getLogger(__name__)

# State /5/0/3
IDLE = 0
DOWNLOADING = 1
DOWNLOADED = 2
UPDATING = 3
STATE_NAMES = {
    IDLE: "Idle",
    DOWNLOADING: "Downloading",
    DOWNLOADED: "Downloaded",
    UPDATING: "Updating",
}

# Update Result /5/0/5 and what an operator should read for each
RESULT_INITIAL = 0
RESULT_SUCCESS = 1
RESULT_CONNECTION_LOST = 4
RESULT_INVALID_URI = 7
RESULT_UNSUPPORTED_PROTOCOL = 9
UPDATE_RESULTS: dict[int, str] = {
    0: "no result yet (initial value)",
    1: "firmware updated successfully",
    2: "not enough flash memory for the new package",
    3: "out of RAM during the download",
    4: "connection lost during the download",
    5: "integrity check failure of the downloaded package",
    6: "unsupported package type",
    7: "invalid URI",
    8: "firmware update failed",
    9: "unsupported protocol",
    10: "firmware update cancelled",
    11: "firmware update deferred",
}
# Device error codes /3/0/11
ERROR_CODES: dict[int, str] = {
    0: "no error",
    1: "low battery power",
    2: "external power supply off",
    3: "GPS module failure",
    4: "low received signal strength",
    5: "out of memory",
    6: "SMS failure",
    7: "IP connectivity failure",
    8: "peripheral malfunction",
}

PACKAGE = Path(5, 0, 0)
PACKAGE_URI = Path(5, 0, 1)
UPDATE = Path(5, 0, 2)
STATE = Path(5, 0, 3)
UPDATE_RESULT = Path(5, 0, 5)
PKG_VERSION = Path(5, 0, 7)
PROTOCOL_SUPPORT = Path(5, 0, 8)
DELIVERY_METHOD = Path(5, 0, 9)
FIRMWARE_OBJECT = Path(5, 0)
DEVICE_REBOOT = Path(3, 0, 4)
ERROR_CODE = Path(3, 0, 11)

# Protocol Support /5/0/8 values, Delivery Method /5/0/9 values
PROTO_COAP = 0
PROTO_COAPS = 1
PROTO_HTTP = 2
METHOD_PULL = 0
METHOD_PUSH = 1
METHOD_BOTH = 2


def describe_result(code: int | None) -> str:
    if code is None:
        return "no Update Result"
    text = UPDATE_RESULTS.get(code, "unknown Update Result")
    return f"{text} (Update Result {code})"


def describe_error(code: int) -> str:
    return f"{ERROR_CODES.get(code, 'unknown error')} (error code {code})"


class Delivery(enum.StrEnum):
    AUTO = "auto"
    PULL_COAP = "pull-coap"
    PULL_HTTP = "pull-http"
    PUSH = "push"


class Step(enum.StrEnum):
    WAITING = "waiting"  # for the device to be registered and awake
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    UPDATING = "updating"  # Execute sent (persisted before it goes out)
    VERIFYING = "verifying"
    SOAKING = "soaking"
    ROLLING_BACK = "rolling_back"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """Timeouts of each step (seconds) and what counts as healthy."""

    request_timeout: float = 30.0
    register_timeout: float = 300.0  # a device we start on must be registered by then
    download_timeout: float = 900.0
    update_timeout: float = 300.0  # Execute until the device is back or reports a result
    reboot_grace: float = 60.0  # after Update Result 1, wait this long for the re-registration
    verify_timeout: float = 120.0
    soak: float = 300.0
    rollback_soak: float = 60.0
    soak_max_reboots: int = 0
    unhealthy_error_codes: tuple[int, ...] = (5, 7, 8)
    poll_interval: float = 5.0
    token_lifetime: float = 1800.0
    max_attempts: int = 2
    firmware_version_path: str = "/3/0/3"
    model_version_path: str = "/33001/0/3"
    # Base URIs devices use to reach this server; None: worked out from the sockets.
    coap_base_uri: str | None = None
    http_base_uri: str | None = None

    def version_path(self, package_type: PackageType) -> Path:
        text = (
            self.model_version_path
            if package_type == PackageType.MODEL
            else self.firmware_version_path
        )
        return Path.parse(text)


class StepFailed(Exception):
    """The update of one device failed at one step, for a reason."""

    def __init__(self, step: Step, reason: str, result_code: int | None = None) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.result_code = result_code


class _Transient(Exception):
    """A request that may work if tried again (no answer, device rebooting)."""


@dataclass(slots=True)
class UpdateOutcome:
    ok: bool
    step: Step
    reason: str | None = None
    result_code: int | None = None
    from_version: str | None = None
    version: str | None = None  # what the device runs at the end, when known
    delivery: str | None = None
    attempts: int = 0
    skipped: bool = False  # already ran the target version
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class ResumeHint:
    """What was persisted about a job a restart interrupted."""

    from_version: str | None
    executed: bool
    attempts: int = 0


class Progress(Protocol):
    async def __call__(self, step: Step, **fields: Any) -> None: ...


async def _no_progress(step: Step, **fields: Any) -> None:
    return None


HealthCheck = Callable[[str], Awaitable[str | None]]


# -- the file server -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    package: Package
    endpoint: str
    expires: float


class FileServer:
    """Serves packages to pulling devices at `/fw/<token>` (CoAP) and through the API
    (HTTP), one short-lived token per device and package."""

    def __init__(self, repository: PackageRepository, lifetime: float = 1800.0) -> None:
        self.repository = repository
        self.lifetime = lifetime
        self._grants: dict[str, Grant] = {}
        self.requests = 0
        self.refused = 0

    async def issue(self, package: Package, endpoint: str, lifetime: float | None = None) -> str:
        await self.repository.content(package)  # warm the cache: blocks are served from it
        self._sweep()
        token = secrets.token_urlsafe(16)
        self._grants[token] = Grant(
            package, endpoint, time.monotonic() + (lifetime or self.lifetime)
        )
        return token

    def revoke(self, token: str) -> None:
        self._grants.pop(token, None)

    def lookup(self, token: str) -> Grant | None:
        grant = self._grants.get(token)
        if grant is None:
            return None
        if grant.expires < time.monotonic():
            del self._grants[token]
            return None
        return grant

    def _sweep(self) -> None:
        now = time.monotonic()
        for token in [t for t, g in self._grants.items() if g.expires < now]:
            del self._grants[token]

    def coap_handler(self, request: Message, remote: Addr) -> Message | Awaitable[Message]:
        """`GET /fw/<token>`: the whole package; the CoAP layer cuts it into Block2."""
        self.requests += 1
        if request.code != Code.GET:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        path = request.uri_path
        grant = self.lookup(path[1]) if len(path) == 2 else None
        if grant is None:
            self.refused += 1
            return Message(code=Code.NOT_FOUND, payload=b"unknown or expired download token")
        data = self.repository.cached(grant.package.sha256)
        if data is None:
            return self._load(grant.package)
        return _content(grant.package, data)

    async def _load(self, package: Package) -> Message:
        return _content(package, await self.repository.content(package))


def _content(package: Package, data: bytes) -> Message:
    msg = Message(code=Code.CONTENT, payload=data)
    msg.add(o.ETAG, bytes.fromhex(package.sha256[:16]))
    msg.add(o.CONTENT_FORMAT, rq.OPAQUE)
    return msg


# -- watching the device ------------------------------------------------------------------


class DeviceWatch:
    """What the server's events told about one device while a job runs."""

    __slots__ = ("_event", "endpoint", "gone", "registrations", "result", "state", "updates")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.state: int | None = None
        self.result: int | None = None
        self.registrations = 0
        self.updates = 0
        self.gone: str | None = None
        self._event = asyncio.Event()

    def poke(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for news (or `timeout`); True when something arrived."""
        if timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True


@dataclass(slots=True)
class _FwState:
    state: int | None = None
    result: int | None = None
    pkg_version: str | None = None
    protocols: set[int] = field(default_factory=set)
    methods: int | None = None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _fw_state(values: dict[Path, Any]) -> _FwState:
    fw = _FwState(_int(values.get(STATE)), _int(values.get(UPDATE_RESULT)))
    pv = values.get(PKG_VERSION)
    fw.pkg_version = pv if isinstance(pv, str) and pv else None
    for p, v in values.items():
        if len(p) >= 3 and p[0] == 5 and p[2] == 8 and _int(v) is not None:
            fw.protocols.add(int(v))
    fw.methods = _int(values.get(DELIVERY_METHOD))
    return fw


class _Job:
    __slots__ = ("coaps", "endpoint", "observations", "watch")

    def __init__(self, endpoint: str, watch: DeviceWatch) -> None:
        self.endpoint = endpoint
        self.watch = watch
        self.observations: list[Observation] = []
        self.coaps = False  # pull over CoAPS: the device is on DTLS and supports it


# -- the updater ------------------------------------------------------------------------


class Updater:
    """Runs update and rollback jobs, one per device, against the LwM2M server."""

    def __init__(
        self,
        server: Lwm2mServer,
        repository: PackageRepository,
        files: FileServer,
        config: DeliveryConfig | None = None,
        health_check: HealthCheck | None = None,
    ) -> None:
        self.server = server
        self.repository = repository
        self.files = files
        self.config = config or DeliveryConfig()
        self.health_check = health_check
        self._watches: dict[str, list[DeviceWatch]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self.http_base: str | None = None

    def start(self) -> None:
        bus = self.server.bus
        self._unsubscribe = [
            bus.subscribe(ev.Notification, self._on_notification),
            bus.subscribe(ev.Registered, self._on_registered),
            bus.subscribe(ev.Updated, self._on_updated),
            bus.subscribe(ev.Deregistered, self._on_gone),
            bus.subscribe(ev.Expired, self._on_gone),
        ]

    def stop(self) -> None:
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe = []

    # -- events ----------------------------------------------------------------------

    def _on_notification(self, event: ev.Notification) -> None:
        watches = self._watches.get(event.registration.endpoint)
        if not watches:
            return
        values = event.values
        state = _int(values.get(STATE))
        result = _int(values.get(UPDATE_RESULT))
        if state is None and result is None:
            return
        for w in watches:
            if state is not None:
                w.state = state
            if result is not None:
                w.result = result
            w.poke()

    def _on_registered(self, event: ev.Registered) -> None:
        for w in self._watches.get(event.registration.endpoint, ()):
            w.registrations += 1
            w.gone = None
            w.state = w.result = None  # a rebooted device: read again
            w.poke()

    def _on_updated(self, event: ev.Updated) -> None:
        for w in self._watches.get(event.registration.endpoint, ()):
            w.updates += 1
            w.poke()

    def _on_gone(self, event: ev.Deregistered | ev.Expired) -> None:
        what = "de-registered" if isinstance(event, ev.Deregistered) else "registration expired"
        for w in self._watches.get(event.registration.endpoint, ()):
            w.gone = what
            w.poke()

    def watching(self, endpoint: str) -> bool:
        return bool(self._watches.get(endpoint))

    # -- public jobs ---------------------------------------------------------------------

    async def update(
        self,
        endpoint: str,
        package: Package,
        *,
        delivery: Delivery = Delivery.AUTO,
        resume: ResumeHint | None = None,
        progress: Progress = _no_progress,
        cancelled: Callable[[], bool] = lambda: False,
        soak: float | None = None,
    ) -> UpdateOutcome:
        """Bring `endpoint` to `package`; the outcome says how it went (never raises
        for a device failure)."""
        job = self._start_job(endpoint)
        outcome = UpdateOutcome(False, Step.CHECKING)
        try:
            await self._update(job, package, delivery, resume, progress, cancelled, soak, outcome)
        except StepFailed as exc:
            outcome.ok = False
            outcome.step = exc.step
            outcome.reason = exc.reason
            outcome.result_code = exc.result_code
        finally:
            await self._end_job(job)
        return outcome

    async def rollback(
        self,
        endpoint: str,
        from_version: str,
        package_type: PackageType,
        previous: Package | None,
        *,
        progress: Progress = _no_progress,
    ) -> UpdateOutcome:
        """Give the device its previous version back: discard a pending package, get a
        hung update out of Updating (reboot), or flash `previous` if it runs another
        version now."""
        job = self._start_job(endpoint)
        outcome = UpdateOutcome(False, Step.ROLLING_BACK, from_version=from_version)
        cfg = self.config
        try:
            await progress(Step.ROLLING_BACK)
            version_path = cfg.version_path(package_type)
            deadline = self._deadline(cfg.verify_timeout + cfg.register_timeout)
            fw = await self._read_fw(job, deadline, Step.ROLLING_BACK)
            if fw.state == UPDATING:
                # a hung update: only a reboot gets the device out of it
                before = job.watch.registrations
                await self._request(
                    job,
                    rq.Execute(DEVICE_REBOOT),
                    self._deadline(cfg.request_timeout * 2),
                    Step.ROLLING_BACK,
                )
                await self._wait_registration(job, before, self._deadline(cfg.update_timeout))
                fw = await self._read_fw(job, self._deadline(cfg.verify_timeout), Step.ROLLING_BACK)
            current = await self._read_version(
                job, version_path, self._deadline(cfg.verify_timeout), Step.ROLLING_BACK
            )
            outcome.version = current
            if same_version(current, from_version):
                if fw.state in (DOWNLOADING, DOWNLOADED, UPDATING):
                    await self._reset(job, self._deadline(cfg.verify_timeout))
                outcome.ok = True
                outcome.reason = f"runs {from_version}; the new package was discarded"
                return outcome
            if previous is None:
                raise StepFailed(
                    Step.ROLLING_BACK,
                    f"previous version {from_version} is not in the repository",
                )
        except StepFailed as exc:
            outcome.reason = exc.reason
            outcome.result_code = exc.result_code
            return outcome
        finally:
            await self._end_job(job)
        back = await self.update(endpoint, previous, progress=progress, soak=cfg.rollback_soak)
        back.from_version = outcome.version
        if back.skipped:
            back.ok = True
        return back

    # -- the update ----------------------------------------------------------------------

    async def _update(
        self,
        job: _Job,
        package: Package,
        delivery: Delivery,
        resume: ResumeHint | None,
        progress: Progress,
        cancelled: Callable[[], bool],
        soak: float | None,
        outcome: UpdateOutcome,
    ) -> None:
        cfg = self.config
        target = package.version
        version_path = cfg.version_path(package.package_type)
        await progress(Step.WAITING)
        reg = await self._registered(job, self._deadline(cfg.register_timeout), Step.WAITING)
        if not reg.supports(5):
            raise StepFailed(Step.CHECKING, "the device has no Firmware Update object (5)")
        if not reg.supports(version_path[0]):
            raise StepFailed(Step.CHECKING, f"the device has no object {version_path[0]}")
        await progress(Step.CHECKING)
        deadline = self._deadline(cfg.verify_timeout)
        current = await self._read_version(job, version_path, deadline, Step.CHECKING)
        outcome.from_version = resume.from_version if resume and resume.from_version else current
        outcome.version = current
        outcome.attempts = resume.attempts if resume else 0
        await progress(Step.CHECKING, from_version=outcome.from_version)
        executed = resume is not None and resume.executed
        if same_version(current, target):
            if not executed:
                outcome.ok = True
                outcome.skipped = True
                outcome.step = Step.DONE
                outcome.reason = f"already runs {target}"
                return
            # restarted after Execute and the device already runs it: verify only
            await self._verify_and_soak(job, package, version_path, progress, soak, outcome)
            return
        if not executed and package.applies_to and not package.applies_over(current):
            outcome.skipped = True
            outcome.step = Step.DONE
            outcome.reason = (
                f"runs {current or 'an unknown version'}; the package applies over "
                f"{package.applies_to}"
            )
            return
        await self._observe(job)
        fw = await self._read_fw(job, deadline, Step.CHECKING)
        go_execute = False
        if executed:
            if fw.state == UPDATING or fw.result == RESULT_SUCCESS:
                await self._after_execute(job, package, job.watch.registrations, fw)
                await self._verify_and_soak(job, package, version_path, progress, soak, outcome)
                return
            if fw.result not in (None, RESULT_INITIAL, RESULT_SUCCESS):
                raise StepFailed(Step.UPDATING, describe_result(fw.result), fw.result)
            go_execute = fw.state == DOWNLOADED and _pkg_matches(fw, target)
        elif fw.state == UPDATING:
            raise StepFailed(Step.CHECKING, "the device is busy with another update (Updating)")
        elif resume is not None and fw.state == DOWNLOADED and _pkg_matches(fw, target):
            go_execute = True
        if not go_execute:
            if fw.state in (DOWNLOADING, DOWNLOADED):
                await self._reset(job, self._deadline(cfg.verify_timeout))
            outcome.delivery = await self._deliver(
                job, package, fw, delivery, progress, cancelled, outcome
            )
        if cancelled():
            await self._reset(job, self._deadline(cfg.verify_timeout))
            outcome.cancelled = True
            outcome.reason = "cancelled before Update was executed"
            outcome.step = Step.DOWNLOADED
            return
        await progress(Step.UPDATING, executed=True)
        before = job.watch.registrations
        fw = await self._execute(job)
        await self._after_execute(job, package, before, fw)
        await self._verify_and_soak(job, package, version_path, progress, soak, outcome)

    async def _deliver(
        self,
        job: _Job,
        package: Package,
        fw: _FwState,
        preferred: Delivery,
        progress: Progress,
        cancelled: Callable[[], bool],
        outcome: UpdateOutcome,
    ) -> str:
        plan = self._plan(fw, preferred, job)
        index = 0
        last: StepFailed | None = None
        for _ in range(max(1, self.config.max_attempts)):
            if cancelled():
                break
            method = plan[min(index, len(plan) - 1)]
            outcome.attempts += 1
            outcome.delivery = str(method)
            await progress(Step.DOWNLOADING, delivery=str(method), attempts=outcome.attempts)
            try:
                await self._deliver_once(job, package, method)
            except StepFailed as exc:
                last = exc
                if exc.result_code in (RESULT_UNSUPPORTED_PROTOCOL, RESULT_INVALID_URI):
                    if index + 1 >= len(plan):
                        raise
                    index += 1  # this device cannot pull from there: the next way
                elif exc.result_code not in (None, RESULT_CONNECTION_LOST):
                    raise  # integrity, storage, package type: trying again will not help
                log.info("%s: %s delivery failed (%s), trying again", job.endpoint, method, exc)
                await self._reset(job, self._deadline(self.config.verify_timeout))
                continue
            await progress(Step.DOWNLOADED, delivery=str(method))
            return str(method)
        if last is not None:
            raise last
        return str(plan[0])

    def _plan(self, fw: _FwState, preferred: Delivery, job: _Job) -> list[Delivery]:
        """The delivery methods to try, best first. A device on DTLS that supports
        CoAPS pulls over CoAPS from the server's DTLS endpoint."""
        methods = fw.methods if fw.methods is not None else METHOD_BOTH
        can_pull = methods in (METHOD_PULL, METHOD_BOTH)
        can_push = methods in (METHOD_PUSH, METHOD_BOTH)
        protocols = fw.protocols or {PROTO_COAP}
        job.coaps = PROTO_COAPS in protocols and self._on_dtls(job)
        options: list[Delivery] = []
        if can_pull and (PROTO_COAP in protocols or job.coaps):
            options.append(Delivery.PULL_COAP)
        if can_pull and PROTO_HTTP in protocols and self._http_base() is not None:
            options.append(Delivery.PULL_HTTP)
        if can_push:
            options.append(Delivery.PUSH)
        if preferred != Delivery.AUTO:
            if preferred not in options:
                raise StepFailed(
                    Step.CHECKING,
                    f"the device does not accept {preferred} delivery "
                    f"(delivery method {methods}, protocols {sorted(protocols)})",
                )
            return [preferred]
        if not options:
            raise StepFailed(Step.CHECKING, "no delivery method both sides support")
        return options

    async def _deliver_once(self, job: _Job, package: Package, method: Delivery) -> None:
        cfg = self.config
        deadline = self._deadline(cfg.download_timeout)
        watch = job.watch
        watch.state = watch.result = None
        if method == Delivery.PUSH:
            data = await self.repository.content(package)
            write = rq.Write(PACKAGE, {PACKAGE: data}, content_format=rq.OPAQUE)
            resp = await self._request(job, write, deadline, Step.DOWNLOADING, single=True)
            if not resp.ok:
                detail = f"{code_str(resp.code)} {resp.error or ''}".strip()
                raise StepFailed(
                    Step.DOWNLOADING,
                    f"the device refused the package: {detail}",
                    2 if resp.code == Code.REQUEST_ENTITY_TOO_LARGE else None,
                )
            await self._wait_downloaded(job, deadline)
            return
        token = await self.files.issue(package, job.endpoint, cfg.token_lifetime)
        try:
            uri = self._uri(method, token, job)
            write = rq.Write(PACKAGE_URI, {PACKAGE_URI: uri}, content_format=rq.TEXT)
            resp = await self._request(job, write, deadline, Step.DOWNLOADING)
            if not resp.ok:
                raise StepFailed(
                    Step.DOWNLOADING,
                    f"the device refused the Package URI: {code_str(resp.code)}",
                    RESULT_INVALID_URI if resp.code == Code.BAD_REQUEST else None,
                )
            await self._wait_downloaded(job, deadline)
        finally:
            self.files.revoke(token)

    async def _wait_downloaded(self, job: _Job, deadline: float) -> None:
        watch = job.watch
        polled = 0.0
        while True:
            now = _now()
            if now - polled >= self.config.poll_interval or watch.state is None:
                polled = now
                await self._poll(job, deadline)
            if watch.state == DOWNLOADED:
                return
            if watch.state == IDLE and watch.result not in (None, RESULT_INITIAL, RESULT_SUCCESS):
                raise StepFailed(Step.DOWNLOADING, describe_result(watch.result), watch.result)
            if watch.state == UPDATING:
                return  # some devices go on by themselves
            remaining = deadline - _now()
            if remaining <= 0:
                raise StepFailed(
                    Step.DOWNLOADING,
                    f"no complete download within {self.config.download_timeout:g} s "
                    f"(state {STATE_NAMES.get(watch.state or 0, watch.state)})",
                )
            await watch.wait(min(remaining, self.config.poll_interval))

    async def _execute(self, job: _Job) -> _FwState:
        cfg = self.config
        deadline = self._deadline(cfg.request_timeout * 2)
        for _ in range(2):
            try:
                resp = await self._send(job, rq.Execute(UPDATE), deadline)
            except _Transient:
                resp = None
            fw = await self._read_fw(
                job, self._deadline(cfg.verify_timeout), Step.UPDATING, quiet=True
            )
            if fw.state == UPDATING or fw.result == RESULT_SUCCESS:
                return fw
            if resp is not None and resp.ok:
                return fw
            if fw.result not in (None, RESULT_INITIAL):
                raise StepFailed(Step.UPDATING, describe_result(fw.result), fw.result)
            if resp is not None:
                raise StepFailed(
                    Step.UPDATING,
                    f"the device refused Update: {code_str(resp.code)} "
                    f"(state {STATE_NAMES.get(fw.state or 0, fw.state)})",
                )
        raise StepFailed(Step.UPDATING, "Execute Update got no answer")

    async def _after_execute(
        self, job: _Job, package: Package, registrations_before: int, fw: _FwState
    ) -> None:
        """Until the device is back on its new software or says it failed."""
        cfg = self.config
        watch = job.watch
        if fw.state is not None:
            watch.state = fw.state
        if fw.result is not None:
            watch.result = fw.result
        deadline = self._deadline(cfg.update_timeout)
        reboots = package.package_type == PackageType.FIRMWARE
        polled = _now()
        while True:
            if watch.registrations > registrations_before:
                return  # rebooted into something: verification reads what
            if watch.result == RESULT_SUCCESS:
                if reboots:
                    grace = min(deadline, self._deadline(cfg.reboot_grace))
                    await self._wait_registration(job, registrations_before, grace, required=False)
                return
            if watch.result not in (None, RESULT_INITIAL) and watch.state != UPDATING:
                raise StepFailed(Step.UPDATING, describe_result(watch.result), watch.result)
            remaining = deadline - _now()
            if remaining <= 0:
                state = (
                    STATE_NAMES.get(watch.state, "unknown")
                    if watch.state is not None
                    else "unknown"
                )
                raise StepFailed(
                    Step.UPDATING,
                    f"the device did not finish the update within {cfg.update_timeout:g} s "
                    f"(last state {state})",
                )
            await watch.wait(min(remaining, cfg.poll_interval))
            if _now() - polled >= cfg.poll_interval and watch.registrations <= registrations_before:
                polled = _now()
                try:
                    await self._poll(job, min(deadline, self._deadline(cfg.request_timeout)))
                except StepFailed:
                    pass  # rebooting devices do not answer

    async def _verify_and_soak(
        self,
        job: _Job,
        package: Package,
        version_path: Path,
        progress: Progress,
        soak: float | None,
        outcome: UpdateOutcome,
    ) -> None:
        cfg = self.config
        target = package.version
        await progress(Step.VERIFYING)
        deadline = self._deadline(cfg.verify_timeout)
        version = await self._read_version(job, version_path, deadline, Step.VERIFYING)
        outcome.version = version
        if not same_version(version, target):
            result = job.watch.result
            extra = f"; {describe_result(result)}" if result not in (None, RESULT_INITIAL) else ""
            raise StepFailed(
                Step.VERIFYING,
                f"the device came back on {version or 'an unknown version'}, not {target}{extra}",
                result if result not in (None, RESULT_INITIAL, RESULT_SUCCESS) else None,
            )
        await progress(Step.SOAKING)
        await self._soak(job, target, version_path, cfg.soak if soak is None else soak)
        outcome.ok = True
        outcome.step = Step.DONE

    async def _soak(self, job: _Job, target: str, version_path: Path, period: float) -> None:
        cfg = self.config
        watch = job.watch
        start = watch.registrations
        deadline = self._deadline(max(0.0, period))
        while True:
            if watch.registrations - start > cfg.soak_max_reboots:
                raise StepFailed(
                    Step.SOAKING,
                    f"the device rebooted {watch.registrations - start} time(s) during the "
                    f"{period:g} s soak period",
                )
            remaining = deadline - _now()
            if remaining <= 0:
                break
            await watch.wait(remaining)
        if watch.gone is not None:
            raise StepFailed(Step.SOAKING, f"the device {watch.gone} during the soak period")
        check = self._deadline(cfg.verify_timeout)
        version = await self._read_version(job, version_path, check, Step.SOAKING)
        if not same_version(version, target):
            raise StepFailed(
                Step.SOAKING, f"the device fell back to {version} during the soak period"
            )
        reg = self.server.store.by_endpoint(job.endpoint)
        if reg is not None and reg.supports(3):
            try:
                resp = await self._request(job, rq.Read(ERROR_CODE), check, Step.SOAKING)
            except StepFailed:
                resp = None
            if resp is not None and resp.ok:
                reported = {_int(c) for c in resp.values.values()}
                codes = sorted(
                    c for c in reported if c is not None and c in cfg.unhealthy_error_codes
                )
                if codes:
                    text = ", ".join(describe_error(c) for c in codes)
                    raise StepFailed(Step.SOAKING, f"the device reports {text} after the update")
        if self.health_check is not None:
            problem = await self.health_check(job.endpoint)
            if problem:
                raise StepFailed(Step.SOAKING, f"unhealthy after the update: {problem}")

    # -- helpers ---------------------------------------------------------------------------

    def _start_job(self, endpoint: str) -> _Job:
        watch = DeviceWatch(endpoint)
        self._watches.setdefault(endpoint, []).append(watch)
        return _Job(endpoint, watch)

    async def _end_job(self, job: _Job) -> None:
        watches = self._watches.get(job.endpoint)
        if watches is not None and job.watch in watches:
            watches.remove(job.watch)
            if not watches:
                del self._watches[job.endpoint]
        for obs in job.observations:
            try:
                await self.server.cancel_observation(obs, proactive=False)
            except RequestError:
                pass

    async def _observe(self, job: _Job) -> None:
        """Observe State and Update Result (best effort: polling covers a refusal)."""
        held = {str(p) for obs in self.server.observations(job.endpoint) for p in obs.paths}
        for path in (STATE, UPDATE_RESULT):
            if str(path) in held:
                continue
            try:
                async with asyncio.timeout(self.config.request_timeout):
                    resp, obs = await self.server.observe(job.endpoint, path)
            except (RequestError, UnknownDevice, TimeoutError):
                continue
            if obs is not None:
                job.observations.append(obs)
            value = _int(resp.values.get(path)) if resp.ok else None
            if value is not None:
                if path == STATE:
                    job.watch.state = value
                else:
                    job.watch.result = value

    def _deadline(self, seconds: float) -> float:
        return _now() + seconds

    async def _registered(self, job: _Job, deadline: float, step: Step) -> Registration:
        while True:
            reg = self.server.store.by_endpoint(job.endpoint)
            if reg is not None:
                return reg
            remaining = deadline - _now()
            if remaining <= 0:
                raise StepFailed(step, "the device is not registered")
            await job.watch.wait(min(remaining, self.config.poll_interval))

    async def _wait_registration(
        self, job: _Job, before: int, deadline: float, required: bool = True
    ) -> None:
        while job.watch.registrations <= before:
            remaining = deadline - _now()
            if remaining <= 0:
                if required:
                    raise StepFailed(Step.UPDATING, "the device did not register again in time")
                return
            await job.watch.wait(remaining)

    async def _send(self, job: _Job, request: rq.Request, deadline: float) -> rq.Response:
        """One request; `_Transient` when it may work later."""
        reg = self.server.store.by_endpoint(job.endpoint)
        if reg is None:
            raise _Transient("not registered")
        timeout = min(self.config.request_timeout, deadline - _now())
        if isinstance(request, rq.Write) and request.path == PACKAGE:
            timeout = deadline - _now()  # a block-wise push takes as long as it takes
        if timeout <= 0:
            raise _Transient("out of time")
        try:
            async with asyncio.timeout(timeout):
                return await self.server.send(reg, request)
        except TimeoutError:
            raise _Transient(f"no answer within {timeout:.0f} s") from None
        except RequestError as exc:
            raise _Transient(exc.reason) from None

    async def _request(
        self,
        job: _Job,
        request: rq.Request,
        deadline: float,
        step: Step,
        single: bool = False,
    ) -> rq.Response:
        """A request, tried again (device rebooting, a lost answer) until `deadline`."""
        last = "no answer"
        while True:
            try:
                return await self._send(job, request, deadline)
            except _Transient as exc:
                last = str(exc)
            remaining = deadline - _now()
            if single or remaining <= 0:
                raise StepFailed(step, f"{request.operation} {_path_text(request)}: {last}")
            await job.watch.wait(min(remaining, self.config.poll_interval))

    async def _read_fw(
        self, job: _Job, deadline: float, step: Step, quiet: bool = False
    ) -> _FwState:
        try:
            resp = await self._request(job, rq.Read(FIRMWARE_OBJECT), deadline, step)
        except StepFailed:
            if quiet:
                return _FwState(job.watch.state, job.watch.result)
            raise
        if not resp.ok:
            if quiet:
                return _FwState(job.watch.state, job.watch.result)
            raise StepFailed(step, f"reading /5/0 failed: {resp.code_text}")
        fw = _fw_state(resp.values)
        if fw.state is not None:
            job.watch.state = fw.state
        if fw.result is not None:
            job.watch.result = fw.result
        return fw

    async def _poll(self, job: _Job, deadline: float) -> None:
        await self._read_fw(
            job, min(deadline, self._deadline(self.config.request_timeout)), Step.DOWNLOADING
        )

    async def _read_version(self, job: _Job, path: Path, deadline: float, step: Step) -> str | None:
        resp = await self._request(job, rq.Read(path), deadline, step)
        if resp.code == Code.NOT_FOUND:
            return None
        if not resp.ok:
            raise StepFailed(step, f"reading {path} failed: {resp.code_text}")
        value = resp.values.get(path)
        return None if value is None else str(value)

    async def _reset(self, job: _Job, deadline: float) -> None:
        """Back to Idle: an empty Package URI (or an empty Package) cancels a download."""
        resp = await self._request(
            job,
            rq.Write(PACKAGE_URI, {PACKAGE_URI: ""}, content_format=rq.TEXT),
            deadline,
            Step.CHECKING,
        )
        if not resp.ok:
            write = rq.Write(PACKAGE, {PACKAGE: b""}, content_format=rq.OPAQUE)
            resp = await self._request(job, write, deadline, Step.CHECKING)
        job.watch.state = IDLE if resp.ok else job.watch.state

    def _http_base(self) -> str | None:
        return self.config.http_base_uri or self.http_base

    def _uri(self, method: Delivery, token: str, job: _Job) -> str:
        if method == Delivery.PULL_HTTP:
            base = self._http_base()
            assert base is not None
            return f"{base.rstrip('/')}/api/v1/firmware/download/{token}"
        base = self.config.coap_base_uri
        secure = self.server.secure_address if job.coaps else None
        if secure is not None:
            scheme, (host, port) = "coaps", secure
        else:
            scheme, (host, port) = "coap", self.server.address
        if base is None or secure is not None:
            if host in ("0.0.0.0", "::", ""):
                reg = self.server.store.by_endpoint(job.endpoint)
                host = _local_address_towards(reg.address if reg is not None else None) or host
            base = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
        return f"{base.rstrip('/')}/fw/{token}"

    def _on_dtls(self, job: _Job) -> bool:
        reg = self.server.store.by_endpoint(job.endpoint)
        secure = self.server.secure_endpoint
        return reg is not None and secure is not None and reg.transport is secure


def _pkg_matches(fw: _FwState, target: str) -> bool:
    return fw.pkg_version is None or same_version(fw.pkg_version, target)


def _path_text(request: rq.Request) -> str:
    path = getattr(request, "path", None)
    return str(path) if path is not None else ""


def _local_address_towards(addr: object) -> str | None:
    """The local address the kernel would use to reach `addr` (for a wildcard bind)."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((addr[0], addr[1]))
            return str(s.getsockname()[0])
    except OSError:
        return None


def _now() -> float:
    return asyncio.get_running_loop().time()

"""The Firmware Update object (5) of a simulated device, and the package format it reads.

A package starts with one header line naming what it installs, so the simulator
can report the new version after the reboot the way a real device would:

    SHOALFW <version>[ sha256=<hex of the body>]\\n<body>
    SHOALMODEL <model name> <version>[ sha256=<hex>]\\n<body>

The second kind replaces the camera's recognition model (object 33001) instead of
the firmware. A digest that does not match the body fails the integrity check
(Update Result 5), as a corrupted download would; a package without a header is
accepted as opaque firmware. Which outcome the update itself has is injected per
device, so campaign and rollback logic can be tested against failures.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.coap import options as o
from shoal.coap.codes import Code
from shoal.coap.endpoint import CoapEndpoint, CoapRequestError
from shoal.coap.message import Message
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path

# State /5/0/3
IDLE = 0
DOWNLOADING = 1
DOWNLOADED = 2
UPDATING = 3

# Update Result /5/0/5
RESULT_INITIAL = 0
RESULT_SUCCESS = 1
RESULT_NO_STORAGE = 2
RESULT_OUT_OF_MEMORY = 3
RESULT_CONNECTION_LOST = 4
RESULT_INTEGRITY_FAILURE = 5
RESULT_UNSUPPORTED_TYPE = 6
RESULT_INVALID_URI = 7
RESULT_UPDATE_FAILED = 8
RESULT_UNSUPPORTED_PROTOCOL = 9
RESULT_CANCELLED = 10

# Protocol support /5/0/8 and delivery method /5/0/9
PROTOCOL_COAP = 0
PROTOCOL_HTTP = 2
DELIVERY_BOTH = 2

PACKAGE = Path(5, 0, 0)
PACKAGE_URI = Path(5, 0, 1)
UPDATE = Path(5, 0, 2)
STATE = Path(5, 0, 3)
UPDATE_RESULT = Path(5, 0, 5)
PKG_NAME = Path(5, 0, 6)
PKG_VERSION = Path(5, 0, 7)
PROTOCOL_SUPPORT = Path(5, 0, 8)
DELIVERY_METHOD = Path(5, 0, 9)

MAX_PACKAGE = 64 * 1024 * 1024

_HEADER = re.compile(
    rb"(?:SHOALFW (?P<fw>[^\s]+)|SHOALMODEL (?P<mname>[^\s]+) (?P<mver>[^\s]+))"
    rb"(?: sha256=(?P<digest>[0-9a-fA-F]{64}))?\n"
)


class FirmwareOutcome(enum.Enum):
    """What happens when the server updates this device (injected per device)."""

    SUCCESS = "success"
    INTEGRITY_FAILURE = "integrity"  # the downloaded package fails its check: result 5
    UPDATE_FAILURE = "failure"  # Execute Update fails: result 8, back to Downloaded
    HANG = "hang"  # Execute Update never finishes: stays Updating


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """What a package header says. `kind` is "firmware" or "model"."""

    kind: str
    name: str
    version: str
    intact: bool


def make_package(
    version: str,
    body: bytes = b"",
    *,
    model_name: str | None = None,
    corrupt: bool = False,
    size: int = 0,
) -> bytes:
    """Build a package the simulator understands (for tests, demos and the CLI).

    `size` pads the body to that many bytes (to exercise block-wise transfer);
    `corrupt` flips a byte after computing the digest.
    """
    if size > len(body):
        body = body + bytes((i * 7 + 3) & 0xFF for i in range(size - len(body)))
    digest = hashlib.sha256(body).hexdigest()
    if model_name is None:
        head = f"SHOALFW {version} sha256={digest}\n"
    else:
        head = f"SHOALMODEL {model_name} {version} sha256={digest}\n"
    if corrupt:
        body = (bytes((body[0] ^ 0xFF,)) + body[1:]) if body else b"\x00"
    return head.encode() + body


def parse_package(data: bytes) -> PackageInfo:
    m = _HEADER.match(data)
    if m is None:
        digest = hashlib.sha256(data).hexdigest()[:8]
        return PackageInfo("firmware", "firmware", f"pkg-{digest}", True)
    body = data[m.end() :]
    want = m.group("digest")
    intact = want is None or hashlib.sha256(body).hexdigest() == want.decode().lower()
    if m.group("fw") is not None:
        return PackageInfo("firmware", "shoal-firmware", m.group("fw").decode(), intact)
    return PackageInfo("model", m.group("mname").decode(), m.group("mver").decode(), intact)


class FirmwareHost(Protocol):
    """What the state machine needs from its device (SimDevice implements it)."""

    def fw_set(self, values: dict[Path, Value]) -> None: ...

    def fw_spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...

    def fw_later(self, delay: float, fn: Callable[[], object]) -> None: ...

    def fw_endpoint(self) -> CoapEndpoint | None: ...

    def fw_install(self, info: PackageInfo) -> None:
        """Apply a successful update (new version) and reboot if it is firmware."""


class FirmwareUpdater:
    """Object 5's state machine: push, pull, update, with an injectable outcome."""

    __slots__ = (
        "_generation",
        "download_timeout",
        "host",
        "outcome",
        "package",
        "result",
        "state",
        "update_delay",
    )

    def __init__(
        self,
        host: FirmwareHost,
        outcome: FirmwareOutcome = FirmwareOutcome.SUCCESS,
        update_delay: float = 2.0,
        download_timeout: float = 120.0,
    ) -> None:
        self.host = host
        self.outcome = outcome
        self.update_delay = update_delay
        self.download_timeout = download_timeout
        self.state = IDLE
        self.result = RESULT_INITIAL
        self.package: PackageInfo | None = None
        self._generation = 0  # bumped by reset/cancel so a late download is ignored

    @staticmethod
    def initial_values() -> dict[int, Value | dict[int, Value]]:
        return {
            0: b"",  # write-only: stored so Discover lists it, never read back
            1: "",
            3: IDLE,
            5: RESULT_INITIAL,
            6: "",
            7: "",
            8: {0: PROTOCOL_COAP, 1: PROTOCOL_HTTP},
            9: DELIVERY_BOTH,
        }

    def _set(self, state: int | None = None, result: int | None = None) -> None:
        values: dict[Path, Value] = {}
        if state is not None and state != self.state:
            self.state = state
            values[STATE] = state
        if result is not None and result != self.result:
            self.result = result
            values[UPDATE_RESULT] = result
        if values:
            self.host.fw_set(values)

    def _reset(self) -> None:
        self._generation += 1
        self.package = None
        self.host.fw_set({PKG_NAME: "", PKG_VERSION: "", PACKAGE_URI: ""})
        self._set(IDLE, RESULT_INITIAL)

    # -- server operations, each returning the CoAP response code ------------------

    def write_package(self, data: bytes) -> int:
        """Push delivery: the whole package, reassembled from Block1 by the CoAP layer."""
        if data in (b"", b"\x00"):
            self._reset()
            return Code.CHANGED
        if self.state not in (IDLE, DOWNLOADED):
            return Code.BAD_REQUEST
        self._generation += 1
        self._set(DOWNLOADING, RESULT_INITIAL)
        self._downloaded(data)
        return Code.CHANGED

    def write_uri(self, uri: str) -> int:
        """Pull delivery: remember the URI and start downloading it."""
        if not uri:
            self._reset()
            return Code.CHANGED
        if self.state not in (IDLE, DOWNLOADED):
            return Code.BAD_REQUEST
        self.host.fw_set({PACKAGE_URI: uri})
        try:
            parts = urllib.parse.urlsplit(uri)
            _ = parts.port
        except ValueError:
            self._set(IDLE, RESULT_INVALID_URI)
            return Code.CHANGED
        if parts.scheme not in ("coap", "http"):
            known = parts.scheme in ("coaps", "https", "coap+tcp", "coaps+tcp")
            self._set(IDLE, RESULT_UNSUPPORTED_PROTOCOL if known else RESULT_INVALID_URI)
            return Code.CHANGED
        if not parts.hostname:
            self._set(IDLE, RESULT_INVALID_URI)
            return Code.CHANGED
        self._generation += 1
        self._set(DOWNLOADING, RESULT_INITIAL)
        self.host.fw_spawn(self._download(uri, parts, self._generation))
        return Code.CHANGED

    def execute_update(self) -> int:
        if self.state != DOWNLOADED or self.package is None:
            return Code.METHOD_NOT_ALLOWED
        self._set(UPDATING)
        generation = self._generation
        if self.outcome is not FirmwareOutcome.HANG:
            self.host.fw_later(self.update_delay, lambda: self._finish_update(generation))
        return Code.CHANGED

    def cancel(self) -> int:
        if self.state == UPDATING:
            return Code.METHOD_NOT_ALLOWED
        self._generation += 1
        self.package = None
        self._set(IDLE, RESULT_CANCELLED)
        return Code.CHANGED

    # -- internals -----------------------------------------------------------------

    def _downloaded(self, data: bytes) -> None:
        info = parse_package(data)
        if not info.intact or self.outcome is FirmwareOutcome.INTEGRITY_FAILURE:
            self.package = None
            self._set(IDLE, RESULT_INTEGRITY_FAILURE)
            return
        self.package = info
        self.host.fw_set({PKG_NAME: info.name, PKG_VERSION: info.version})
        self._set(DOWNLOADED, RESULT_INITIAL)

    def _finish_update(self, generation: int) -> None:
        if generation != self._generation or self.state != UPDATING or self.package is None:
            return
        if self.outcome is FirmwareOutcome.UPDATE_FAILURE:
            self._set(DOWNLOADED, RESULT_UPDATE_FAILED)
            return
        info = self.package
        self.package = None
        self._set(IDLE, RESULT_SUCCESS)
        self.host.fw_install(info)

    async def _download(self, uri: str, parts: urllib.parse.SplitResult, generation: int) -> None:
        try:
            data = await asyncio.wait_for(self._fetch(uri, parts), self.download_timeout)
        except _FetchError as exc:
            result = exc.result
            data = None
        except (TimeoutError, OSError, CoapRequestError):
            result = RESULT_CONNECTION_LOST
            data = None
        if generation != self._generation:
            return
        if data is None:
            self._set(IDLE, result)
            return
        if len(data) > MAX_PACKAGE:
            self._set(IDLE, RESULT_NO_STORAGE)
            return
        self._downloaded(data)

    async def _fetch(self, uri: str, parts: urllib.parse.SplitResult) -> bytes:
        if parts.scheme == "http":
            return await asyncio.to_thread(_http_get, uri, self.download_timeout)
        endpoint = self.host.fw_endpoint()
        if endpoint is None:
            raise _FetchError(RESULT_CONNECTION_LOST)
        host = parts.hostname or ""
        port = parts.port or 5683
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=2)  # SOCK_DGRAM
        if not infos:
            raise _FetchError(RESULT_INVALID_URI)
        addr = infos[0][4][:2]
        msg = Message(code=Code.GET)
        for seg in parts.path.split("/"):
            if seg:
                msg.add(o.URI_PATH, urllib.parse.unquote(seg))
        if parts.query:
            for q in parts.query.split("&"):
                msg.add(o.URI_QUERY, urllib.parse.unquote(q))
        response = await endpoint.request(addr, msg)
        if response.code != Code.CONTENT:
            raise _FetchError(RESULT_INVALID_URI)
        return response.payload


class _FetchError(Exception):
    def __init__(self, result: int) -> None:
        super().__init__(result)
        self.result = result


def _http_get(uri: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as resp:
            data: bytes = resp.read(MAX_PACKAGE + 1)
            return data
    except urllib.error.HTTPError as exc:
        raise _FetchError(RESULT_INVALID_URI) from exc
    except urllib.error.URLError as exc:
        raise _FetchError(RESULT_CONNECTION_LOST) from exc

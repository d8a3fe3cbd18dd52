"""A Shoal node with health and alerting attached, simulated devices, and tiny
receivers (HTTP, SMTP, MQTT) for the health and alert tests.

Latencies are small so tests finish quickly, but nothing asserts on timing: each
wait is a generous poll for a condition.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from shoal.api import alerts as alerts_api
from shoal.domain.alerts import AlertConfig, Alerting, AlertingConfig, Rule
from shoal.domain.channels import DeliveryConfig
from shoal.domain.fleet import FleetConfig
from shoal.domain.health import HealthConfig
from shoal.domain.profiles import DeviceProfile, ProfileConfig, ResourceSpec
from shoal.node import NodeConfig, ShoalNode
from shoal.sim import DeviceConfig, SimDevice
from shoal.store.alerts import Alert

WAIT = 45.0  # generous: the test machine is small and busy

# pH every second at most (pmax 1), error codes as they change.
FAST_WATER = DeviceProfile(
    name="fast-water",
    kind="sensor",
    resources=(
        ResourceSpec(
            "/3326/0/5700",
            pmax=1,
            quantity="ph",
            expected=(6.5, 8.5),
            possible=(0.0, 14.0),
            varies=True,
        ),
        ResourceSpec("/3/0/11"),
    ),
)


async def wait_for(
    predicate: Callable[[], Any], timeout: float = WAIT, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Harness:
    node: ShoalNode
    alerting: Alerting
    devices: list[SimDevice] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host, port = self.node.http_address
        return f"http://{host}:{port}/api/v1"

    async def device(self, name: str, **kw: Any) -> SimDevice:
        cfg = DeviceConfig(
            endpoint=name,
            profile=kw.pop("profile", "water"),
            version=kw.pop("version", "1.1"),
            lifetime=kw.pop("lifetime", 60),
            sample_interval=kw.pop("sample_interval", 0.5),
            **kw,
        )
        device = SimDevice(cfg, self.node.server.address)
        self.devices.append(device)
        assert await device.start(), f"{name} did not register"
        return device

    async def profiled(self, device: SimDevice) -> None:
        """Wait until the profile service observed what the profile asks for."""
        profiles = self.alerting.profiles
        await wait_for(
            lambda: device.name in profiles.applied and device.observations > 0,
            what=f"profile applied to {device.name}",
        )

    def alert(self, endpoint: str | None, key: str) -> Alert | None:
        subject = f"device:{endpoint}" if endpoint is not None else None
        for alert in self.alerting.alerts.active.values():
            if alert.rule_key == key and (subject is None or alert.subject == subject):
                return alert
        return None

    async def wait_alert(self, endpoint: str | None, key: str, timeout: float = WAIT) -> Alert:
        alert: Alert = await wait_for(
            lambda: self.alert(endpoint, key), timeout, f"alert {key} on {endpoint}"
        )
        await wait_for(lambda: alert.id != 0, timeout, "alert stored")
        return alert

    async def set_rule(self, key: str, **changes: Any) -> Rule:
        """Change the global rule `key` (severity, enabled, params merged)."""
        alerts = self.alerting.alerts
        rule = next(r for r in alerts.rules.values() if r.key == key and r.scope_rank == 0)
        assert rule.id is not None
        params = {**rule.params, **changes.pop("params", {})}
        await self.alerting.store.update_rule(rule.id, params=params, **changes)
        await alerts.reload()
        return next(r for r in alerts.rules.values() if r.id == rule.id)


def alerting_config(latency: float = 2.0, **kw: Any) -> AlertingConfig:
    return AlertingConfig(
        health=HealthConfig(detection_latency=latency),
        profiles=ProfileConfig(check_interval=2.0, restore_delay=0.5),
        alerts=AlertConfig(tick_interval=0.1, persist_interval=0.2, **kw),
        delivery=DeliveryConfig(attempts=2, backoff=0.1, backoff_max=0.5, attempt_timeout=5.0),
        directory_refresh=1.0,
    )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    node = ShoalNode(
        NodeConfig(
            coap_port=0,
            http_port=0,
            data_dir=str(tmp_path),
            fleet=FleetConfig(observe_on_register=False, read_identity=False),
            secure=False,  # the simulated devices speak NoSec
        )
    )
    node.server.config = replace(node.server.config, expiry_grace=1.0, expiry_check_interval=0.2)
    await node.start()
    alerting = Alerting.attach(node, alerting_config(), profiles=[FAST_WATER])
    await alerting.start()
    node.app.state.alerting = alerting
    node.app.include_router(alerts_api.router)
    h = Harness(node, alerting)
    try:
        yield h
    finally:
        for device in h.devices:
            await device.stop(deregister=False, timeout=2.0)
        await alerting.stop()
        await node.stop()


# -- receivers -------------------------------------------------------------------------


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """A tiny HTTP/1.1 server on loopback that records every request."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []
        self.status = 200
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(HttpRequest(method, path, headers, body))
                reply = b"ok"
                writer.write(
                    f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook"


def mqtt_reachable(host: str = "127.0.0.1", port: int = 1883) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False

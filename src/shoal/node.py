"""A Shoal node: the LwM2M server, the database, the fleet service and the HTTP API
wired together in one process (the composition root)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import uvicorn

from shoal.api.app import create_app
from shoal.coap.config import CoapConfig
from shoal.domain.feed import LiveFeed
from shoal.domain.fleet import FleetConfig, FleetService
from shoal.server.server import Lwm2mServer, ServerConfig
from shoal.store import Database, EventLog, Inventory, TelemetryStore, TelemetryWriter, default_url

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: str = "./data"
    database_url: str | None = None
    telemetry_raw_for: timedelta = timedelta(days=7)
    retention_interval: float = 3600.0
    fleet: FleetConfig = field(default_factory=FleetConfig)
    coap: CoapConfig = field(default_factory=CoapConfig)

    @classmethod
    def from_env(cls, **overrides: object) -> NodeConfig:
        """`SHOAL_*` environment variables, then explicit overrides (CLI flags)."""
        env = os.environ
        values: dict[str, object] = {}
        for name, cast in (
            ("coap_host", str),
            ("coap_port", int),
            ("http_host", str),
            ("http_port", int),
            ("data_dir", str),
            ("database_url", str),
        ):
            raw = env.get("SHOAL_" + name.upper())
            if raw:
                values[name] = cast(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


class ShoalNode:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        url = config.database_url
        if url is None:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True)
            url = default_url(config.data_dir)
        self.db = Database(url)
        self.inventory = Inventory(self.db)
        self.event_log = EventLog(self.db)
        self.telemetry_writer = TelemetryWriter(self.db)
        self.telemetry_store = TelemetryStore(self.db)
        self.feed = LiveFeed()
        self.server = Lwm2mServer(
            ServerConfig(host=config.coap_host, port=config.coap_port, coap=config.coap)
        )
        self.fleet = FleetService(
            self.server, self.inventory, self.telemetry_writer, self.feed, config.fleet
        )
        self.http: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.db.migrate()
        self.telemetry_writer.start()
        await self.server.start()
        await self.fleet.start()
        restored = await self.fleet.restore()
        if restored:
            log.info("restored %d registrations from the database", restored)
        tenant = await self.inventory.ensure_tenant(self.config.fleet.tenant)
        app = create_app(
            lwm2m=self.server,
            inventory=self.inventory,
            event_log=self.event_log,
            telemetry_writer=self.telemetry_writer,
            telemetry_store=self.telemetry_store,
            feed=self.feed,
            fleet=self.fleet,
            tenant_id=tenant.id,
            node=self,
        )
        self.app = app
        uv_config = uvicorn.Config(
            app,
            host=self.config.http_host,
            port=self.config.http_port,
            log_level="warning",
            lifespan="off",
            # live event streams never end by themselves: do not wait for them
            timeout_graceful_shutdown=2,
        )
        self.http = uvicorn.Server(uv_config)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.http.serve()))
        self._tasks.append(loop.create_task(self._retention_loop()))
        while not self.http.started:
            if self._tasks[0].done():
                self._tasks[0].result()  # raises the bind error
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.02)

    @property
    def http_address(self) -> tuple[str, int]:
        assert self.http is not None and self.http.servers
        sock = self.http.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return host, port

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_interval)
            try:
                result = await self.telemetry_store.apply_retention(self.config.telemetry_raw_for)
                log.info("telemetry retention: %d rows rolled up", result.rolled_rows)
            except Exception:
                log.exception("telemetry retention failed")

    async def stop(self) -> None:
        if self.http is not None:
            self.http.should_exit = True
        for task in self._tasks[1:]:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fleet.stop()
        await self.server.stop()
        await self.telemetry_writer.close()
        await self.db.close()

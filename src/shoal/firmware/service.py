"""The firmware service: repository, file server, updater and campaigns wired together.

`FirmwareService(...)` is what a node holds: `start()` after the LwM2M server
(it adds the `/fw` file route to the server's CoAP endpoint) and after the HTTP
server (for pull over HTTP it needs the base URI devices reach it at),
`stop()` before the server stops. The HTTP API is `shoal.api.firmware.router`,
finding the service at `app.state.firmware`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shoal.domain.feed import LiveFeed
from shoal.firmware.campaigns import CampaignManager, FailureHook
from shoal.firmware.delivery import DeliveryConfig, FileServer, HealthCheck, Updater
from shoal.firmware.repository import DEFAULT_MAX_SIZE, PackageRepository
from shoal.server.server import Lwm2mServer
from shoal.store import Database, EventLog, Inventory


@dataclass(frozen=True, slots=True)
class FirmwareConfig:
    max_package_size: int = DEFAULT_MAX_SIZE
    package_cache_bytes: int = 256 * 1024 * 1024
    # How often campaigns are looked at when nothing happens (events wake it earlier).
    tick: float = 2.0
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)


class FirmwareService:
    def __init__(
        self,
        server: Lwm2mServer,
        db: Database,
        inventory: Inventory,
        event_log: EventLog,
        feed: LiveFeed,
        data_dir: str | Path,
        config: FirmwareConfig | None = None,
        *,
        on_failure: FailureHook | None = None,
        health_check: HealthCheck | None = None,
    ) -> None:
        self.config = config or FirmwareConfig()
        self.server = server
        self.repository = PackageRepository(
            db,
            Path(data_dir) / "firmware",
            max_size=self.config.max_package_size,
            cache_bytes=self.config.package_cache_bytes,
        )
        self.files = FileServer(self.repository, self.config.delivery.token_lifetime)
        self.updater = Updater(
            server, self.repository, self.files, self.config.delivery, health_check
        )
        self.campaigns = CampaignManager(
            db,
            inventory,
            event_log,
            feed,
            self.repository,
            self.updater,
            server,
            tick=self.config.tick,
            on_failure=on_failure,
        )
        self.started = False

    @property
    def on_failure(self) -> FailureHook | None:
        """Called once per failed device update (and failed rollback): the alert hook."""
        return self.campaigns.on_failure

    @on_failure.setter
    def on_failure(self, hook: FailureHook | None) -> None:
        self.campaigns.on_failure = hook

    @property
    def health_check(self) -> HealthCheck | None:
        """`async (endpoint) -> problem text or None`, asked at the end of each soak."""
        return self.updater.health_check

    @health_check.setter
    def health_check(self, check: HealthCheck | None) -> None:
        self.updater.health_check = check

    async def start(self, http_base: str | None = None) -> None:
        """`http_base`: e.g. "http://192.0.2.10:8080", for pull over HTTP."""
        if self.server.endpoint is None:
            raise RuntimeError("start the LwM2M server before the firmware service")
        for endpoint in self.server.endpoints:  # CoAP, and CoAPS when configured
            endpoint.route_prefix("/fw", self.files.coap_handler)
        self.updater.http_base = http_base
        self.updater.start()
        await self.campaigns.start()
        self.started = True

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        await self.campaigns.stop()
        self.updater.stop()

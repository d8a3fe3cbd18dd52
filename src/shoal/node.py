"""A Shoal node: the LwM2M server, the database, the fleet service and the HTTP API
wired together in one process (the composition root)."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import uvicorn

from shoal.api.app import create_app
from shoal.auth import AuthService, AuthStore
from shoal.coap.config import CoapConfig
from shoal.domain.alerts import Alerting, AlertingConfig
from shoal.domain.feed import LiveFeed
from shoal.domain.fleet import FleetConfig, FleetService
from shoal.dtls.server import DtlsConfig
from shoal.firmware import FirmwareConfig, FirmwareService
from shoal.ops.export import EventExporter, exporter_from_url
from shoal.ops.metrics import OpsMeter
from shoal.security.authorizer import AuthorizationConfig
from shoal.security.keys import KeyBox
from shoal.security.service import SecurityService
from shoal.security.store import SecurityStore
from shoal.server.bootstrap import BootstrapConfig, BootstrapServer
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
    # Health, rules and alerts (issue 6). None: not running. `from_env` (so the CLI)
    # turns it on; the device profiles then decide what is observed.
    alerting: AlertingConfig | None = None
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    # Event export (issue 9): nats://host:4222[?stream=NAME] / mqtt://host:1883; None: off
    export_nats: str | None = None
    export_mqtt: str | None = None
    coap: CoapConfig = field(default_factory=CoapConfig)
    # Security (issue 5). Secure mode refuses devices without credentials (`shoal
    # demo` runs with secure=False). CoAPS listens on `coaps_port` (None: 5684 beside
    # the default CoAP port 5683, else an ephemeral port); coaps=False turns it off.
    secure: bool = True
    coaps: bool = True
    coaps_port: int | None = None
    certificate: str | None = None  # PEM file: server certificate chain (X.509 suites)
    private_key: str | None = None  # PEM file: its private key
    client_cas: str | None = None  # PEM file: CAs whose device certificates are accepted
    secret_key_file: str | None = None  # master key sealing PSKs (default <data_dir>/secret.key)
    public_host: str | None = None  # the host devices reach, for bootstrap-written URIs
    authorization: AuthorizationConfig | None = None  # None: defaults with `secure`
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    # User accounts on the HTTP API and UI. `from_env` (so `shoal serve` and
    # `shoal demo`) turns them on unless SHOAL_AUTH=off; demo adds the documented
    # demo admin. A certificate and key (PEM files) switch HTTP to HTTPS.
    auth: bool = False
    demo: bool = False
    http_cert: str | None = None
    http_key: str | None = None

    @property
    def resolved_coaps_port(self) -> int:
        if self.coaps_port is not None:
            return self.coaps_port
        return 5684 if self.coap_port == 5683 else 0

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
            ("secure", _flag),
            ("coaps_port", int),
            ("certificate", str),
            ("private_key", str),
            ("client_cas", str),
            ("secret_key_file", str),
            ("public_host", str),
            ("http_cert", str),
            ("http_key", str),
            ("export_nats", str),
            ("export_mqtt", str),
        ):
            raw = env.get("SHOAL_" + name.upper())
            if raw:
                values[name] = cast(raw)
        values["auth"] = _flag(env.get("SHOAL_AUTH", "on"))
        if _flag(env.get("SHOAL_ALERTING", "on")):
            # profiles observe what each device kind reports, with its attributes
            values["alerting"] = AlertingConfig()
            values["fleet"] = FleetConfig(observe_on_register=False)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("0", "false", "no", "off")


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


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
        self.auth = AuthService(AuthStore(self.db), enabled=config.auth or config.demo)
        self.telemetry_writer = TelemetryWriter(self.db)
        self.telemetry_store = TelemetryStore(self.db)
        self.feed = LiveFeed()
        self.keybox = KeyBox.load(config.secret_key_file or Path(config.data_dir) / "secret.key")
        self.security_store = SecurityStore(self.db, self.keybox)
        dtls = None
        if config.coaps:
            dtls = DtlsConfig(
                psk_lookup=self.security_store.psk_lookup,
                certificate_chain=_read(config.certificate),
                private_key=_read(config.private_key),
                client_cas=_read(config.client_cas),
            )
        self.server = Lwm2mServer(
            ServerConfig(
                host=config.coap_host,
                port=config.coap_port,
                coap=config.coap,
                coaps_port=config.resolved_coaps_port,
                dtls=dtls,
            )
        )
        self.security = SecurityService(
            self.security_store,
            self.server,
            config.authorization or AuthorizationConfig(secure=config.secure),
        )
        bootstrap = config.bootstrap
        self.bootstrap = BootstrapServer(
            self.server,
            self.security,
            replace(
                bootstrap,
                public_host=bootstrap.public_host or config.public_host,
                server_certificate=bootstrap.server_certificate or _read(config.certificate),
                enclosure_resource=bootstrap.enclosure_resource
                or config.fleet.correlation.resource,
            ),
        )
        self.fleet = FleetService(
            self.server, self.inventory, self.telemetry_writer, self.feed, config.fleet
        )
        self.fleet.provisioning = self.security_store  # correlation source 3
        self.firmware = FirmwareService(
            self.server,
            self.db,
            self.inventory,
            self.event_log,
            self.feed,
            config.data_dir,
            config.firmware,
        )
        self.exporters: list[EventExporter] = [
            exporter_from_url(self.feed, url, tenant=config.fleet.tenant)
            for url in (config.export_nats, config.export_mqtt)
            if url
        ]
        self.ops_meter = OpsMeter(self.feed, self.server)
        self.alerting: Alerting | None = None
        if config.alerting is not None:
            self.alerting = Alerting(
                self.server,
                self.db,
                self.inventory,
                self.feed,
                place_of=self.fleet.place_of,
                config=config.alerting,
            )
        self.http: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.db.migrate()
        self.telemetry_writer.start()
        self.ops_meter.start()
        for exporter in self.exporters:
            await exporter.start()
        await self.security.start()  # the credential cache, before any device may come
        await self.server.start()
        self.security.attach_server()
        self.bootstrap.start()
        await self.fleet.start()
        restored = await self.fleet.restore()
        if restored:
            log.info("restored %d registrations from the database", restored)
        if self.alerting is not None:
            await self.alerting.start()
            self.firmware.on_failure = self.alerting.alerts.firmware_failed
        tenant = await self.inventory.ensure_tenant(self.config.fleet.tenant)
        await self.auth.bootstrap(tenant.id, demo=self.config.demo)
        app = create_app(
            auth=self.auth,
            lwm2m=self.server,
            inventory=self.inventory,
            event_log=self.event_log,
            telemetry_writer=self.telemetry_writer,
            telemetry_store=self.telemetry_store,
            feed=self.feed,
            fleet=self.fleet,
            alerting=self.alerting,
            firmware=self.firmware,
            ops_meter=self.ops_meter,
            security=self.security,
            bootstrap=self.bootstrap,
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
            ssl_certfile=self._tls()[0],
            ssl_keyfile=self._tls()[1],
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
        host, port = self.http_address
        scheme = "https" if self.config.http_cert else "http"
        await self.firmware.start(http_base=f"{scheme}://{self.config.public_host or host}:{port}")

    def _tls(self) -> tuple[str | None, str | None]:
        """The HTTPS certificate and key files, both or neither."""
        cert, key = self.config.http_cert, self.config.http_key
        if (cert is None) != (key is None):
            raise ValueError("HTTPS needs both http_cert and http_key (SHOAL_HTTP_CERT/KEY)")
        return cert, key

    @property
    def http_url(self) -> str:
        """`http(s)://host:port` of the API and UI."""
        host, port = self.http_address
        scheme = "https" if self._tls()[0] else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

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
        await self.firmware.stop()
        if self.alerting is not None:
            await self.alerting.stop()
        await self.fleet.stop()
        await self.bootstrap.stop()
        self.security.stop()
        await self.server.stop()
        for exporter in self.exporters:
            await exporter.stop()  # up to 2 s to drain
        await self.ops_meter.stop()
        await self.telemetry_writer.close()
        await self.db.close()

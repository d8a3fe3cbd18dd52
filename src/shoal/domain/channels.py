"""Notification channels: where alert notices go, and how they get there.

Kinds: `webhook` (JSON, HMAC-SHA256 signed), `slack` (any Slack-compatible
incoming webhook: Slack, Mattermost, Rocket.Chat), `email` (SMTP, optional
STARTTLS and login) and `mqtt` (publish to a broker). The live UI feed is not a
channel here: the alert service publishes every alert event to it directly.

Each channel has its own queue and worker, so a channel that hangs or fails
delays only itself. A delivery is retried with exponential back-off and jitter;
when every attempt failed, `on_failure` is called (the alert service raises a
"channel failing" alert, which goes out through the other channels) and the
next success calls `on_success` (which resolves it).

Webhook signature: header `Shoal-Signature: t=<unix time>,v1=<hex>` where hex is
HMAC-SHA256(secret, "<t>." + body), the scheme Stripe uses; receivers check it
with `verify_signature`, which also refuses stale timestamps (replays).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import random
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Shoal-Signature"
EVENT_HEADER = "Shoal-Event"
SEVERITIES = ("info", "warning", "high", "critical")


class ChannelKind(enum.StrEnum):
    WEBHOOK = "webhook"
    SLACK = "slack"
    EMAIL = "email"
    MQTT = "mqtt"


class ChannelError(ValueError):
    """A channel configuration that cannot work."""


class DeliveryError(Exception):
    """One delivery attempt failed."""


# Settings each kind requires, and the ones it accepts.
_REQUIRED: dict[ChannelKind, set[str]] = {
    ChannelKind.WEBHOOK: {"url", "secret"},
    ChannelKind.SLACK: {"url"},
    ChannelKind.EMAIL: {"host", "sender", "to"},
    ChannelKind.MQTT: {"host"},
}
_OPTIONAL: dict[ChannelKind, set[str]] = {
    ChannelKind.WEBHOOK: {"headers", "timeout"},
    ChannelKind.SLACK: {"username", "icon_emoji", "channel", "timeout"},
    ChannelKind.EMAIL: {"port", "starttls", "ssl", "username", "password", "timeout"},
    ChannelKind.MQTT: {"port", "topic", "qos", "retain", "username", "password", "tls", "timeout"},
}
SECRET_SETTINGS = frozenset({"secret", "password"})


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    kind: ChannelKind
    config: Mapping[str, Any]
    enabled: bool = True
    min_severity: str = "info"

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 100:
            raise ChannelError("channel name must be 1-100 characters")
        if self.min_severity not in SEVERITIES:
            raise ChannelError(f"min_severity must be one of {', '.join(SEVERITIES)}")
        kind = ChannelKind(self.kind)
        missing = _REQUIRED[kind] - set(self.config)
        if missing:
            raise ChannelError(f"{kind} channel needs {', '.join(sorted(missing))}")
        unknown = set(self.config) - _REQUIRED[kind] - _OPTIONAL[kind]
        if unknown:
            raise ChannelError(f"{kind} channel does not take {', '.join(sorted(unknown))}")
        if kind in (ChannelKind.WEBHOOK, ChannelKind.SLACK):
            url = str(self.config["url"])
            if not url.startswith(("http://", "https://")):
                raise ChannelError("url must be http:// or https://")
        if kind == ChannelKind.EMAIL:
            to = self.config["to"]
            if not isinstance(to, list) or not to or not all(isinstance(t, str) for t in to):
                raise ChannelError("to must be a list of e-mail addresses")
        if kind == ChannelKind.MQTT and int(self.config.get("qos", 1)) not in (0, 1, 2):
            raise ChannelError("qos must be 0, 1 or 2")

    def accepts(self, severity: str) -> bool:
        return self.enabled and SEVERITIES.index(severity) >= SEVERITIES.index(self.min_severity)

    def public_config(self) -> dict[str, Any]:
        """The configuration with secrets masked (for the API)."""
        return {k: ("***" if k in SECRET_SETTINGS else v) for k, v in self.config.items()}


# -- signing -------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, header: str, body: bytes, *, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Check a `Shoal-Signature` header against the raw body (and its age)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# -- rendering -----------------------------------------------------------------------


def summary(notice: Mapping[str, Any]) -> str:
    """One line for humans: `[CRITICAL] Peripheral malfunction: sim-1 (raised)`."""
    alert = notice.get("alert", {})
    where = alert.get("endpoint") or alert.get("subject") or ""
    place = notice.get("place") or {}
    at = ", ".join(str(v) for v in (place.get("farm"), place.get("enclosure")) if v)
    return (
        f"[{str(alert.get('severity', 'info')).upper()}] {alert.get('title', 'alert')}: "
        f"{where}{f' ({at})' if at else ''} - {notice.get('event', 'raised')}"
    )


def body_text(notice: Mapping[str, Any]) -> str:
    alert = notice.get("alert", {})
    lines = [summary(notice), "", str(alert.get("message", ""))]
    for key in ("state", "count", "first_at", "last_at", "rule_key", "id"):
        if alert.get(key) is not None:
            lines.append(f"{key}: {alert[key]}")
    if notice.get("escalation_level"):
        lines.append(f"escalation level: {notice['escalation_level']}")
    return "\n".join(lines) + "\n"


def encode(notice: Mapping[str, Any]) -> bytes:
    return json.dumps(notice, separators=(",", ":"), sort_keys=True, default=str).encode()


# -- senders -------------------------------------------------------------------------


class Sender(Protocol):
    async def send(self, notice: Mapping[str, Any]) -> None: ...

    async def close(self) -> None: ...


class WebhookSender:
    def __init__(self, spec: ChannelSpec, client: httpx.AsyncClient) -> None:
        self.spec = spec
        self.client = client

    async def send(self, notice: Mapping[str, Any]) -> None:
        cfg = self.spec.config
        body = encode(notice)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Shoal-Alerts/1",
            SIGNATURE_HEADER: sign(str(cfg["secret"]), body, int(time.time())),
            EVENT_HEADER: str(notice.get("event", "alert")),
        }
        headers.update({str(k): str(v) for k, v in dict(cfg.get("headers") or {}).items()})
        await _post(self.client, str(cfg["url"]), body, headers, cfg)

    async def close(self) -> None:
        return None


class SlackSender:
    def __init__(self, spec: ChannelSpec, client: httpx.AsyncClient) -> None:
        self.spec = spec
        self.client = client

    async def send(self, notice: Mapping[str, Any]) -> None:
        cfg = self.spec.config
        alert = notice.get("alert", {})
        payload: dict[str, Any] = {"text": f"{summary(notice)}\n{alert.get('message', '')}"}
        for key in ("username", "icon_emoji", "channel"):
            if cfg.get(key):
                payload[key] = cfg[key]
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        await _post(self.client, str(cfg["url"]), body, headers, cfg)

    async def close(self) -> None:
        return None


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], cfg: Any
) -> None:
    timeout = float(cfg.get("timeout", 10.0))
    try:
        resp = await client.post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if resp.status_code >= 300:
        raise DeliveryError(f"HTTP {resp.status_code} from {url}")


class EmailSender:
    """Plain-text mail over SMTP; smtplib runs in a worker thread."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec

    async def send(self, notice: Mapping[str, Any]) -> None:
        msg = EmailMessage()
        cfg = self.spec.config
        msg["Subject"] = summary(notice)
        msg["From"] = str(cfg["sender"])
        msg["To"] = ", ".join(cfg["to"])
        msg.set_content(body_text(notice))
        try:
            await asyncio.to_thread(self._deliver, msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP: {exc}") from None

    def _deliver(self, msg: EmailMessage) -> None:
        cfg = self.spec.config
        host, timeout = str(cfg["host"]), float(cfg.get("timeout", 10.0))
        smtp: smtplib.SMTP
        if cfg.get("ssl"):
            smtp = smtplib.SMTP_SSL(host, int(cfg.get("port", 465)), timeout=timeout)
        else:
            smtp = smtplib.SMTP(host, int(cfg.get("port", 25)), timeout=timeout)
        with smtp:
            if cfg.get("starttls"):
                smtp.starttls(context=ssl.create_default_context())
            if cfg.get("username"):
                smtp.login(str(cfg["username"]), str(cfg.get("password", "")))
            smtp.send_message(msg)

    async def close(self) -> None:
        return None


class MqttSender:
    """Publishes the JSON notice; keeps one connection, reconnects after a failure."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self._client: Any = None

    async def _connect(self) -> Any:
        import aiomqtt

        cfg = self.spec.config
        tls = ssl.create_default_context() if cfg.get("tls") else None
        client = aiomqtt.Client(
            hostname=str(cfg["host"]),
            port=int(cfg.get("port", 8883 if tls else 1883)),
            username=cfg.get("username"),
            password=cfg.get("password"),
            tls_context=tls,
            timeout=float(cfg.get("timeout", 10.0)),
        )
        await client.__aenter__()
        return client

    async def send(self, notice: Mapping[str, Any]) -> None:
        import aiomqtt

        cfg = self.spec.config
        alert = notice.get("alert", {})
        topic = str(cfg.get("topic", "shoal/alerts/{severity}")).format(
            severity=alert.get("severity", "info"),
            farm_id=alert.get("farm_id") or "none",
            enclosure_id=alert.get("enclosure_id") or "none",
            endpoint=alert.get("endpoint") or "none",
            event=notice.get("event", "alert"),
        )
        try:
            if self._client is None:
                self._client = await self._connect()
            await self._client.publish(
                topic,
                encode(notice),
                qos=int(cfg.get("qos", 1)),
                retain=bool(cfg.get("retain", False)),
            )
        except (aiomqtt.MqttError, OSError) as exc:
            await self.close()
            raise DeliveryError(f"MQTT: {exc}") from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


# -- dispatch ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    attempts: int = 5
    backoff: float = 1.0  # first retry after this; doubles each time
    backoff_max: float = 60.0
    attempt_timeout: float = 15.0
    queue_size: int = 10_000


@dataclass(slots=True)
class ChannelStats:
    sent: int = 0
    failed: int = 0  # notices given up on
    retries: int = 0
    dropped: int = 0  # queue overflow
    last_error: str | None = None
    last_sent_at: float | None = None
    failing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "retries": self.retries,
            "dropped": self.dropped,
            "last_error": self.last_error,
            "failing": self.failing,
        }


@dataclass(slots=True)
class _Worker:
    spec: ChannelSpec
    sender: Sender
    queue: asyncio.Queue[dict[str, Any]]
    task: asyncio.Task[None] | None = None
    stats: ChannelStats = field(default_factory=ChannelStats)


class ChannelDispatcher:
    def __init__(
        self,
        config: DeliveryConfig | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        on_success: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or DeliveryConfig()
        self.on_failure = on_failure
        self.on_success = on_success
        self._workers: dict[str, _Worker] = {}
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client

    def sender_for(self, spec: ChannelSpec) -> Sender:
        kind = ChannelKind(spec.kind)
        if kind == ChannelKind.WEBHOOK:
            return WebhookSender(spec, self.client)
        if kind == ChannelKind.SLACK:
            return SlackSender(spec, self.client)
        if kind == ChannelKind.EMAIL:
            return EmailSender(spec)
        return MqttSender(spec)

    @property
    def channels(self) -> dict[str, ChannelSpec]:
        return {name: w.spec for name, w in self._workers.items()}

    def stats(self, name: str) -> ChannelStats | None:
        worker = self._workers.get(name)
        return None if worker is None else worker.stats

    def set_channel(self, spec: ChannelSpec) -> None:
        """Add or replace a channel (its queued notices carry over)."""
        old = self._workers.pop(spec.name, None)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.config.queue_size)
        stats = ChannelStats()
        if old is not None:
            queue, stats = old.queue, old.stats
            self._retire(old)
        worker = _Worker(spec, self.sender_for(spec), queue, stats=stats)
        worker.task = asyncio.get_running_loop().create_task(self._run(worker))
        self._workers[spec.name] = worker

    def remove_channel(self, name: str) -> None:
        worker = self._workers.pop(name, None)
        if worker is not None:
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        if worker.task is not None:
            worker.task.cancel()
        sender = worker.sender
        task = asyncio.get_running_loop().create_task(sender.close())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def enqueue(self, name: str, notice: dict[str, Any]) -> bool:
        """Queue a notice for one channel; False if there is no such channel."""
        worker = self._workers.get(name)
        if worker is None or not worker.spec.enabled:
            return False
        if worker.queue.full():
            worker.queue.get_nowait()
            worker.queue.task_done()
            worker.stats.dropped += 1
        worker.queue.put_nowait(notice)
        return True

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every queue is empty (tests, shutdown)."""
        async with asyncio.timeout(timeout):
            for worker in list(self._workers.values()):
                await worker.queue.join()

    async def send_test(self, spec: ChannelSpec, notice: dict[str, Any]) -> None:
        """One direct attempt, outside the queue: raises DeliveryError on failure."""
        sender = self.sender_for(spec)
        try:
            async with asyncio.timeout(self.config.attempt_timeout):
                await sender.send(notice)
        except TimeoutError:
            raise DeliveryError("timed out") from None
        finally:
            await sender.close()

    async def _run(self, worker: _Worker) -> None:
        while True:
            notice = await worker.queue.get()
            try:
                await self._deliver(worker, notice)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("channel %s: delivery crashed", worker.spec.name)
            finally:
                worker.queue.task_done()

    async def _deliver(self, worker: _Worker, notice: dict[str, Any]) -> None:
        cfg = self.config
        name = worker.spec.name
        stats = worker.stats
        delay = cfg.backoff
        for attempt in range(1, cfg.attempts + 1):
            try:
                async with asyncio.timeout(cfg.attempt_timeout):
                    await worker.sender.send(notice)
            except (DeliveryError, TimeoutError) as exc:
                stats.last_error = str(exc) or type(exc).__name__
                log.info("channel %s: attempt %d failed: %s", name, attempt, stats.last_error)
                if attempt == cfg.attempts:
                    break
                stats.retries += 1
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(cfg.backoff_max, delay * 2)
                continue
            stats.sent += 1
            stats.last_sent_at = time.time()
            if stats.failing:
                stats.failing = False
                if self.on_success is not None:
                    self.on_success(name)
            return
        stats.failed += 1
        if not stats.failing:
            stats.failing = True
        if self.on_failure is not None:
            self.on_failure(name, stats.last_error or "delivery failed")

    async def close(self) -> None:
        workers = list(self._workers.values())
        self._workers.clear()
        tasks = [w.task for w in workers if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in workers:
            await w.sender.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

"""Event export: the live feed, streamed to NATS JetStream and MQTT.

An `EventExporter` watches the `LiveFeed` and copies every item into its own bounded
buffer at once (so the feed never drops on its account), then hands the items to a
`Publisher` in order, a window at a time. An item leaves the buffer only when the
broker acknowledged it: a JetStream publish ack, an MQTT PUBACK (QoS 1). A failed
window goes back to the front of the buffer and is retried after an exponential
back-off, reconnecting first: delivery is at-least-once. Duplicates are possible
after a failure; JetStream drops them itself (each message carries a
`Nats-Msg-Id`), MQTT subscribers can use the `export_id` field of the payload.

The buffer is bounded (`buffer_size`): an outage longer than it holds loses the
oldest items, counted in `stats()["dropped"]` (and on `/metrics`).

Addresses, per tenant, farm, enclosure and device (ids; `unassigned` where the
device is not placed yet, `_` for items without a device such as campaign steps):

    NATS   <prefix>.<tenant>.<farm>.<enclosure>.<endpoint>.telemetry|events
    MQTT   <prefix>/<tenant>/<farm>/<enclosure>/<endpoint>/telemetry|events

Feed items of kind `value` are telemetry; every other kind is an event. Each token
keeps letters, digits, `-` and `_` only (others become `_`); the payload is the
feed item as JSON with `tenant` and `export_id` added, so the exact endpoint name
is always in the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from shoal.domain.feed import FeedFilter, LiveFeed

log = logging.getLogger(__name__)

TELEMETRY_KINDS = frozenset({"value"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class Route:
    """Where one item goes, before a publisher joins it into a subject or topic."""

    tenant: str
    farm: str
    enclosure: str
    endpoint: str
    stream: str  # "telemetry" or "events"

    def parts(self) -> tuple[str, ...]:
        return (self.tenant, self.farm, self.enclosure, self.endpoint, self.stream)


def token(value: object, missing: str) -> str:
    """One subject/topic level: never empty, never a separator or wildcard."""
    if value is None or value == "":
        return missing
    return _UNSAFE.sub("_", str(value))


def route_of(item: dict[str, Any], tenant: str) -> Route:
    stream = "telemetry" if item.get("kind") in TELEMETRY_KINDS else "events"
    return Route(
        tenant=token(item.get("tenant", tenant), "default"),
        farm=token(item.get("farm_id"), "unassigned"),
        enclosure=token(item.get("enclosure_id"), "unassigned"),
        endpoint=token(item.get("endpoint"), "_"),
        stream=stream,
    )


@dataclass(frozen=True, slots=True)
class Outgoing:
    route: Route
    payload: bytes
    msg_id: str


class Publisher(Protocol):
    """A broker connection. `publish` returns once the broker acknowledged the
    message and raises on any failure (the exporter then reconnects and retries)."""

    name: str

    async def connect(self) -> None: ...

    async def publish(self, message: Outgoing) -> None: ...

    async def close(self) -> None: ...


class NatsPublisher:
    """JetStream publishing with acks. A stream must cover `<prefix>.>` (or give
    `stream=` to have it created or extended at connect); without one JetStream has
    no responder and the items stay buffered."""

    name = "nats"

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "shoal",
        stream: str | None = None,
        ack_timeout: float = 5.0,
        connect_timeout: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.stream = stream
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self._nc: Any = None
        self._js: Any = None

    def subject(self, route: Route) -> str:
        return ".".join((self.prefix, *route.parts()))

    async def connect(self) -> None:
        import nats

        async def _quiet(exc: Exception) -> None:
            log.debug("nats: %s", exc)

        # allow_reconnect=False makes nats-py retry a refused first connect forever;
        # one quick attempt instead, our own loop backs off and reconnects
        self._nc = await asyncio.wait_for(
            nats.connect(
                self.url,
                connect_timeout=self.connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=_quiet,
                name="shoal-export",
            ),
            self.connect_timeout * 3,
        )
        self._js = self._nc.jetstream(timeout=self.ack_timeout)
        if self.stream is not None:
            await self._ensure_stream(self.stream)

    async def _ensure_stream(self, name: str) -> None:
        from nats.js.errors import NotFoundError

        subjects = [f"{self.prefix}.>"]
        try:
            info = await self._js.stream_info(name)
        except NotFoundError:
            await self._js.add_stream(name=name, subjects=subjects)
            return
        have = list(info.config.subjects or [])
        if subjects[0] not in have:
            info.config.subjects = [*have, *subjects]
            await self._js.update_stream(config=info.config)

    async def publish(self, message: Outgoing) -> None:
        if self._js is None or self._nc is None or not self._nc.is_connected:
            raise ConnectionError("nats: not connected")
        await self._js.publish(
            self.subject(message.route),
            message.payload,
            timeout=self.ack_timeout,
            headers={"Nats-Msg-Id": message.msg_id},
        )

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()


class MqttPublisher:
    """MQTT 3.1.1 publishing at QoS 1: `publish` waits for the PUBACK."""

    name = "mqtt"

    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        prefix: str = "shoal",
        client_id: str | None = None,
        ack_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url if "://" in url else "mqtt://" + url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 1883
        self.username = parts.username
        self.password = parts.password
        self.prefix = prefix
        self.client_id = client_id or "shoal-export-" + secrets.token_hex(4)
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self._client: Any = None

    def topic(self, route: Route) -> str:
        return "/".join((self.prefix, *route.parts()))

    async def connect(self) -> None:
        import aiomqtt

        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self.username,
            password=self.password,
            timeout=self.connect_timeout,
        )
        await client.__aenter__()
        self._client = client

    async def publish(self, message: Outgoing) -> None:
        if self._client is None:
            raise ConnectionError("mqtt: not connected")
        await self._client.publish(
            self.topic(message.route), message.payload, qos=1, timeout=self.ack_timeout
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


class EventExporter:
    """Feed → bounded buffer → publisher, at least once, with back-off."""

    def __init__(
        self,
        feed: LiveFeed,
        publisher: Publisher,
        *,
        tenant: str = "default",
        buffer_size: int = 10_000,
        window: int = 64,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        feed_filter: FeedFilter | None = None,
    ) -> None:
        if buffer_size < 1 or window < 1:
            raise ValueError("buffer_size and window must be positive")
        self.feed = feed
        self.publisher = publisher
        self.tenant = tenant
        self.buffer_size = buffer_size
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.feed_filter = feed_filter or FeedFilter()
        self._buffer: deque[Outgoing] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._boot = secrets.token_hex(6)  # feed ids restart with the process
        self._connected = False
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0
        self.delivered = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching the feed (from now on nothing published is missed) and
        delivering; the broker may be down, delivery then waits and retries."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        watchers = self.feed.watchers
        self._tasks = [
            loop.create_task(self._collect(), name=f"shoal-export-{self.publisher.name}-feed"),
            loop.create_task(self._deliver(), name=f"shoal-export-{self.publisher.name}"),
        ]
        for _ in range(100):  # the watcher registers at the collector's first step
            if self.feed.watchers > watchers:
                break
            await asyncio.sleep(0)

    async def stop(self, drain: float = 2.0) -> None:
        """Stop watching, give delivery `drain` seconds to empty the buffer, close."""
        if not self._tasks:
            return
        collector, deliverer = self._tasks
        # what the feed already queued for us: the woken collector takes it all in one
        # step (a non-empty queue's get does not suspend)
        for _ in range(3):
            await asyncio.sleep(0)
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        if drain > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), drain)
        deliverer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await deliverer
        self._tasks = []
        await self.publisher.close()
        self._connected = False
        if self._buffer:
            log.warning(
                "%s export stopped with %d items undelivered", self.publisher.name, len(self)
            )

    async def _drained(self) -> None:
        while self._buffer or self._inflight:
            await asyncio.sleep(0.02)

    # -- buffer ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._buffer) + self._inflight

    def offer(self, item: dict[str, Any]) -> None:
        """Buffer one feed item (the watcher calls this; tests may too)."""
        route = route_of(item, self.tenant)
        self._seq += 1
        msg_id = f"{self._boot}-{item.get('id', f'x{self._seq}')}"
        body = {**item, "tenant": route.tenant, "export_id": msg_id}
        payload = json.dumps(body, default=str, separators=(",", ":")).encode()
        while len(self) >= self.buffer_size and self._buffer:
            self._buffer.popleft()
            self.dropped += 1
        if len(self) >= self.buffer_size:  # everything is in flight: drop the newest
            self.dropped += 1
            return
        self._buffer.append(Outgoing(route, payload, msg_id))
        self._wake.set()

    async def _collect(self) -> None:
        # a cancel lands inside the feed's generator, which unregisters the watcher
        async for item in self.feed.watch(self.feed_filter):
            self.offer(item)

    # -- delivery ----------------------------------------------------------------------

    async def _deliver(self) -> None:
        backoff = self.backoff_initial
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if not self._connected:
                    await self.publisher.connect()
                    self._connected = True
                    log.info("%s export connected", self.publisher.name)
                await self._send_window()
                backoff = self.backoff_initial
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "%s export failed (%s); %d items kept, retry in %.1fs",
                    self.publisher.name,
                    self.last_error,
                    len(self),
                    backoff,
                )
                self._connected = False
                await self.publisher.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    async def _send_window(self) -> None:
        n = min(self.window, len(self._buffer))
        batch = [self._buffer.popleft() for _ in range(n)]
        self._inflight = n
        try:
            results: Sequence[BaseException | None] = await asyncio.gather(
                *(self.publisher.publish(m) for m in batch), return_exceptions=True
            )
        except BaseException:
            self._buffer.extendleft(reversed(batch))  # cancelled: keep them all
            raise
        finally:
            self._inflight = 0
        failed = [m for m, r in zip(batch, results, strict=True) if r is not None]
        self.delivered += n - len(failed)
        if failed:
            self._buffer.extendleft(reversed(failed))
            raise next(r for r in results if r is not None)

    # -- introspection -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    def stats(self) -> dict[str, int | bool | str | None]:
        return {
            "buffered": len(self),
            "buffer_size": self.buffer_size,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failures": self.failures,
            "connected": self._connected,
            "last_error": self.last_error,
        }


def exporter_from_url(
    feed: LiveFeed, url: str, *, tenant: str = "default", prefix: str = "shoal", **kwargs: Any
) -> EventExporter:
    """`nats://host:port` or `mqtt://host:port` (as in SHOAL_EXPORT_NATS/_MQTT).
    A NATS URL may name the stream to create or extend: `nats://host:4222?stream=SHOAL`."""
    parts = urlsplit(url)
    publisher: Publisher
    if parts.scheme in ("nats", "tls"):
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        base = parts._replace(query="").geturl()
        publisher = NatsPublisher(base, prefix=prefix, stream=query.get("stream"))
    elif parts.scheme in ("mqtt", "tcp"):
        publisher = MqttPublisher(url, prefix=prefix)
    else:
        raise ValueError(f"export URL must be nats:// or mqtt://, not {url!r}")
    return EventExporter(feed, publisher, tenant=tenant, **kwargs)

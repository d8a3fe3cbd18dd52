"""Prometheus metrics for one node, read at scrape time from the node's services.

Everything is looked up with `getattr`, so a node without alerting, DTLS or an
exporter simply has fewer series. `OpsMeter` adds what no service counts itself:
feed items per kind, campaign states (from the feed's `campaign` items) and failed
device requests (from the server's event bus); it runs while the node runs.

Series (all prefixed `shoal_`):

    lwm2m_<counter>_total          server counters: registered, updated, deregistered,
                                   expired, rejected, notifications, sends, ...
    registrations                  registrations held now
    observations                   active observations
    queued_requests                requests waiting for queue-mode devices
    device_requests_failed_total   {operation}
    coap_<stat>_total              {transport}: retransmissions, timeouts, duplicates, ...
    coap_state                     {transport, table}: pending exchanges, dedup, observers, ...
    dtls_sessions                  DTLS sessions in the table
    dtls_<counter>_total           handshakes, refusals, session ends ...
    telemetry_queue_depth / telemetry_queue_bound / telemetry_written_total /
    telemetry_dropped_total / telemetry_rejected_total / telemetry_write_failures_total
    feed_watchers / feed_dropped_total / feed_items_total {kind}
    alerts_active                  {severity}
    alert_<stat>_total             raised, resolved, repeats, notices, ...
    campaigns                      {state}
    export_buffered / export_delivered_total / export_dropped_total /
    export_failures_total / export_connected   {sink}
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shoal.domain.feed import FeedFilter, LiveFeed

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OpsMeter:
    """Counts what the services do not: feed items, campaign states, failed requests."""

    def __init__(self, feed: LiveFeed | None, server: Any = None) -> None:
        self.feed = feed
        self.server = server
        self.items: Counter[str] = Counter()
        self.campaigns: dict[Any, str] = {}
        self.failed_requests: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        bus = getattr(self.server, "bus", None)
        if bus is not None and self._unsubscribe is None:
            from shoal.server import events as ev

            self._unsubscribe = bus.subscribe(ev.RequestFailed, self._on_failed)
        if self.feed is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(self.feed), name="shoal-ops-meter"
            )

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_failed(self, event: Any) -> None:
        self.failed_requests[str(getattr(event, "operation", "unknown"))] += 1

    async def _watch(self, feed: LiveFeed) -> None:
        async for item in feed.watch(FeedFilter()):
            self.observe(item)

    def observe(self, item: dict[str, Any]) -> None:
        kind = str(item.get("kind", "unknown"))
        self.items[kind] += 1
        if kind == "campaign" and item.get("campaign_id") is not None:
            self.campaigns[item["campaign_id"]] = str(item.get("state", "unknown"))


def _counter(name: str, doc: str, value: float, unit: str = "") -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value, unit=unit)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    rows: Iterable[tuple[list[str], float]],
) -> Metric:
    metric = family(name, doc, labels=labels)
    for values, value in rows:
        metric.add_metric(values, value)
    return metric


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).lower()


class NodeCollector(Collector):
    """Reads a node (anything with the attributes of `ShoalNode`) at each scrape."""

    def __init__(
        self, node: Any, meter: OpsMeter | None = None, exporters: Iterable[Any] = ()
    ) -> None:
        self.node = node
        self.meter = meter
        self.exporters = list(exporters)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        server = getattr(node, "server", None)
        yield from self._server(server)
        yield from self._coap(server)
        yield from self._dtls(server)
        yield from self._telemetry(getattr(node, "telemetry_writer", None))
        yield from self._feed(getattr(node, "feed", None))
        yield from self._alerts(getattr(node, "alerting", None))
        yield from self._meter()
        yield from self._exports([*self.exporters, *(getattr(node, "exporters", None) or ())])

    def _server(self, server: Any) -> Iterator[Metric]:
        if server is None:
            return
        for key, value in sorted((getattr(server, "counters", None) or {}).items()):
            yield _counter(f"shoal_lwm2m_{_safe(key)}", f"LwM2M server: {key}", value)
        store = getattr(server, "store", None)
        if store is not None:
            with contextlib.suppress(Exception):
                yield _gauge("shoal_registrations", "Registrations held now", len(store))
        observations = getattr(server, "_observations", None)
        if isinstance(observations, dict):
            total = sum(len(v) for v in observations.values())
            yield _gauge("shoal_observations", "Active LwM2M observations", total)
        queues = getattr(server, "_queues", None)
        if isinstance(queues, dict):
            depth = sum(len(q) for q in queues.values())
            yield _gauge("shoal_queued_requests", "Requests queued for sleeping devices", depth)

    def _coap(self, server: Any) -> Iterator[Metric]:
        endpoints = list(getattr(server, "endpoints", None) or [])
        secure = getattr(server, "secure_endpoint", None)
        stats: dict[str, list[tuple[list[str], float]]] = {}
        sizes: list[tuple[list[str], float]] = []
        for ep in endpoints:
            transport = "coaps" if ep is secure or hasattr(ep, "dtls") else "coap"
            engine = getattr(ep, "engine", None)
            if engine is None:
                continue
            for key, value in (getattr(engine, "stats", None) or {}).items():
                stats.setdefault(key, []).append(([transport], value))
            with contextlib.suppress(Exception):
                for key, value in engine.sizes().items():
                    sizes.append(([transport, key], value))
        for key, rows in sorted(stats.items()):
            name = f"shoal_coap_{_safe(key)}"
            yield _labelled(CounterMetricFamily, name, f"CoAP: {key}", ["transport"], rows)
        if sizes:
            yield _labelled(
                GaugeMetricFamily,
                "shoal_coap_state",
                "CoAP engine tables (pending exchanges, dedup, observers, ...)",
                ["transport", "table"],
                sizes,
            )

    def _dtls(self, server: Any) -> Iterator[Metric]:
        dtls = getattr(getattr(server, "secure_endpoint", None), "dtls", None)
        if dtls is None:
            return
        sessions = getattr(dtls, "sessions", None)
        if isinstance(sessions, int):
            yield _gauge(
                "shoal_dtls_sessions", "DTLS sessions, established or in handshake", sessions
            )
        counters = getattr(dtls, "counters", None)
        if counters is not None and hasattr(counters, "as_dict"):
            for key, value in sorted(counters.as_dict().items()):
                yield _counter(f"shoal_dtls_{_safe(key)}", f"DTLS: {key}", value)

    def _telemetry(self, writer: Any) -> Iterator[Metric]:
        if writer is None or not hasattr(writer, "stats"):
            return
        s = writer.stats()
        yield _gauge(
            "shoal_telemetry_queue_depth", "Telemetry rows waiting to be written", s.queued
        )
        yield _gauge("shoal_telemetry_queue_bound", "Telemetry queue bound", s.bound)
        yield _counter("shoal_telemetry_written", "Telemetry rows written", s.written)
        yield _counter(
            "shoal_telemetry_dropped", "Telemetry rows dropped at the bound", s.dropped_over_bound
        )
        yield _counter("shoal_telemetry_rejected", "Telemetry rows rejected", s.rejected)
        yield _counter("shoal_telemetry_write_failures", "Failed telemetry batches", s.failures)

    def _feed(self, feed: Any) -> Iterator[Metric]:
        if feed is None:
            return
        yield _gauge("shoal_feed_watchers", "Live feed watchers", getattr(feed, "watchers", 0))
        yield _counter(
            "shoal_feed_dropped",
            "Feed items dropped for slow watchers",
            getattr(feed, "dropped", 0),
        )

    def _alerts(self, alerting: Any) -> Iterator[Metric]:
        service = getattr(alerting, "alerts", None)
        if service is None:
            return
        for key, value in sorted((getattr(service, "stats", None) or {}).items()):
            yield _counter(f"shoal_alert_{_safe(key)}", f"Alerting: {key}", value)
        active = getattr(service, "active", None)
        if isinstance(active, dict):
            by_severity = Counter(str(getattr(a, "severity", "unknown")) for a in active.values())
            yield _labelled(
                GaugeMetricFamily,
                "shoal_alerts_active",
                "Open alerts by severity",
                ["severity"],
                [([sev], n) for sev, n in sorted(by_severity.items())],
            )

    def _meter(self) -> Iterator[Metric]:
        meter = self.meter
        if meter is None:
            return
        yield _labelled(
            CounterMetricFamily,
            "shoal_feed_items",
            "Live feed items by kind",
            ["kind"],
            [([k], n) for k, n in sorted(meter.items.items())],
        )
        yield _labelled(
            CounterMetricFamily,
            "shoal_device_requests_failed",
            "Failed device requests by operation",
            ["operation"],
            [([k], n) for k, n in sorted(meter.failed_requests.items())],
        )
        states = Counter(meter.campaigns.values())
        yield _labelled(
            GaugeMetricFamily,
            "shoal_campaigns",
            "Firmware campaigns by state (seen on the feed since start)",
            ["state"],
            [([k], n) for k, n in sorted(states.items())],
        )

    def _exports(self, exporters: list[Any]) -> Iterator[Metric]:
        if not exporters:
            return
        rows: dict[str, list[tuple[list[str], float]]] = {}
        for exp in exporters:
            sink = str(getattr(getattr(exp, "publisher", None), "name", "unknown"))
            s = exp.stats()
            for key in ("buffered", "delivered", "dropped", "failures", "connected"):
                rows.setdefault(key, []).append(([sink], float(s[key])))
        yield _labelled(
            GaugeMetricFamily,
            "shoal_export_buffered",
            "Items awaiting a broker ack",
            ["sink"],
            rows["buffered"],
        )
        for key in ("delivered", "dropped", "failures"):
            yield _labelled(
                CounterMetricFamily,
                f"shoal_export_{key}",
                f"Event export: {key}",
                ["sink"],
                rows[key],
            )
        yield _labelled(
            GaugeMetricFamily,
            "shoal_export_connected",
            "1 if connected to the broker",
            ["sink"],
            rows["connected"],
        )


def node_registry(
    node: Any, meter: OpsMeter | None = None, exporters: Iterable[Any] = (), process: bool = True
) -> CollectorRegistry:
    """A registry of its own per node (several nodes may share a process in tests)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, meter, exporters))
    if process:
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

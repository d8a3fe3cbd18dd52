"""Event export to NATS JetStream and MQTT: at-least-once through a bounded buffer.

The broker tests use the machine's brokers (127.0.0.1:4222 and :1883) and are
skipped when those are not reachable; the buffer and retry logic is tested
in-process with a fake publisher."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from shoal.domain.feed import LiveFeed
from shoal.node import NodeConfig, ShoalNode
from shoal.ops.export import (
    EventExporter,
    MqttPublisher,
    NatsPublisher,
    Outgoing,
    exporter_from_url,
    route_of,
)
from shoal.sim import DeviceConfig, SimDevice


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class FakeBroker:
    """Refuses connections while `down`; may fail chosen publishes once."""

    name = "fake"

    def __init__(self) -> None:
        self.down = True
        self.connected = False
        self.received: list[dict[str, Any]] = []
        self.addresses: list[str] = []
        self.fail_once: set[int] = set()
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1
        if self.down:
            raise ConnectionRefusedError("broker down")
        self.connected = True

    async def publish(self, message: Outgoing) -> None:
        if self.down or not self.connected:
            raise ConnectionError("not connected")
        body = json.loads(message.payload)
        await asyncio.sleep(0)
        if body["id"] in self.fail_once:
            self.fail_once.discard(body["id"])
            raise TimeoutError("no ack")
        self.received.append(body)
        self.addresses.append("/".join(message.route.parts()))

    async def close(self) -> None:
        self.connected = False


def test_routes_per_tenant_farm_enclosure() -> None:
    value = {"kind": "value", "endpoint": "urn:imei:1.2", "farm_id": 3, "enclosure_id": 7}
    r = route_of(value, "acme")
    assert r.parts() == ("acme", "3", "7", "urn_imei_1_2", "telemetry")
    assert NatsPublisher(prefix="shoal").subject(r) == "shoal.acme.3.7.urn_imei_1_2.telemetry"
    assert MqttPublisher(prefix="shoal").topic(r) == "shoal/acme/3/7/urn_imei_1_2/telemetry"
    event = route_of({"kind": "registered", "endpoint": "p#1", "farm_id": None}, "t")
    assert event.parts() == ("t", "unassigned", "unassigned", "p_1", "events")
    assert route_of({"kind": "campaign", "campaign_id": 1}, "t").endpoint == "_"
    with pytest.raises(ValueError):
        exporter_from_url(LiveFeed(), "http://x")


async def test_items_wait_for_the_broker_and_arrive_after() -> None:
    feed = LiveFeed()
    broker = FakeBroker()
    exporter = EventExporter(
        feed, broker, tenant="acme", window=4, backoff_initial=0.01, backoff_max=0.05
    )
    await exporter.start()
    try:
        for i in range(10):
            feed.publish("value", endpoint="p1", value=i, farm_id=1, enclosure_id=2)
        await eventually(lambda: broker.connects >= 3)
        assert broker.received == []
        assert len(exporter) == 10 and exporter.failures >= 3
        broker.fail_once = {3, 8}  # lost acks: those two are sent again
        broker.down = False
        await eventually(lambda: exporter.delivered == 10)
        assert sorted(b["value"] for b in broker.received) == list(range(10))
        assert all(a == "acme/1/2/p1/telemetry" for a in broker.addresses)
        assert len(exporter) == 0 and exporter.dropped == 0
        assert broker.received[0]["tenant"] == "acme" and broker.received[0]["export_id"]
        # a broker going away mid-stream: kept, then delivered on reconnect
        broker.down = True
        await broker.close()
        failures = exporter.failures
        feed.publish("registered", endpoint="p2")
        await eventually(lambda: exporter.failures >= failures + 2)
        assert len(exporter) == 1
        broker.down = False
        await eventually(lambda: exporter.delivered == 11)
        assert broker.addresses[-1] == "acme/unassigned/unassigned/p2/events"
    finally:
        await exporter.stop(drain=0.5)
    assert feed.watchers == 0


async def test_bounded_buffer_drops_the_oldest() -> None:
    feed = LiveFeed()
    broker = FakeBroker()
    exporter = EventExporter(feed, broker, buffer_size=5, backoff_initial=0.01)
    await exporter.start()
    try:
        for i in range(8):
            feed.publish("value", endpoint="p", value=i)
        await eventually(lambda: exporter.dropped == 3)
        broker.down = False
        await eventually(lambda: exporter.delivered == 5)
        assert [b["value"] for b in broker.received] == [3, 4, 5, 6, 7]
    finally:
        await exporter.stop()


async def test_stop_drains_what_the_broker_accepts() -> None:
    feed = LiveFeed()
    broker = FakeBroker()
    broker.down = False
    exporter = EventExporter(feed, broker)
    await exporter.start()
    for i in range(100):
        feed.publish("value", endpoint="p", value=i)
    await exporter.stop(drain=5)
    assert len(broker.received) == 100


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ShoalNode]:
    n = ShoalNode(NodeConfig(coap_port=0, http_port=0, data_dir=str(tmp_path), secure=False))
    await n.start()
    yield n
    await n.stop()


@pytest.mark.skipif(not reachable(4222), reason="no NATS server on 127.0.0.1:4222")
async def test_nats_jetstream_consumer_receives_telemetry(node: ShoalNode) -> None:
    import nats

    prefix = "shoaltest" + uuid.uuid4().hex[:8]
    stream = prefix.upper()
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{prefix}.>"])
    # first pointed at a closed port: the items wait in the buffer
    publisher = NatsPublisher(f"nats://127.0.0.1:{closed_port()}", prefix=prefix)
    exporter = EventExporter(node.feed, publisher, backoff_initial=0.05, backoff_max=0.5)
    await exporter.start()
    device = SimDevice(DeviceConfig("nats-probe-1", sample_interval=0.3), node.server.address)
    try:
        await device.start()
        await eventually(lambda: exporter.failures >= 1)
        assert exporter.delivered == 0 and len(exporter) >= 1
        publisher.url = "nats://127.0.0.1:4222"  # the broker "comes back"
        sub = await js.pull_subscribe(f"{prefix}.*.*.*.nats-probe-1.telemetry", stream=stream)
        msgs: list[Any] = []
        deadline = asyncio.get_running_loop().time() + 60
        while not msgs and asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await sub.fetch(1, timeout=1)
            except nats.errors.TimeoutError:
                continue
        assert msgs, "no telemetry reached JetStream"
        body = json.loads(msgs[0].data)
        assert body["kind"] == "value" and body["endpoint"] == "nats-probe-1"
        assert msgs[0].subject == f"{prefix}.default.unassigned.unassigned.nats-probe-1.telemetry"
        await msgs[0].ack()
        events = await js.pull_subscribe(f"{prefix}.*.*.*.nats-probe-1.events", stream=stream)
        got = await events.fetch(10, timeout=30)
        kinds = [json.loads(m.data)["kind"] for m in got]
        assert "registered" in kinds  # published while the broker was unreachable
        assert exporter.connected
    finally:
        await device.stop()
        await exporter.stop()
        await js.delete_stream(stream)
        await nc.close()


@pytest.mark.skipif(not reachable(1883), reason="no MQTT broker on 127.0.0.1:1883")
async def test_mqtt_subscriber_receives_events(node: ShoalNode) -> None:
    import aiomqtt

    prefix = "shoaltest" + uuid.uuid4().hex[:8]
    exporter = exporter_from_url(node.feed, "mqtt://127.0.0.1:1883", prefix=prefix)
    await exporter.start()
    device = SimDevice(DeviceConfig("mqtt-probe-1", sample_interval=0.3), node.server.address)
    try:
        async with aiomqtt.Client("127.0.0.1", 1883) as sub:
            await sub.subscribe(f"{prefix}/#", qos=1)
            await device.start()
            seen: dict[str, list[dict[str, Any]]] = {"events": [], "telemetry": []}

            async def collect() -> None:
                async for message in sub.messages:
                    topic = str(message.topic)
                    assert isinstance(message.payload, bytes)
                    seen[topic.rsplit("/", 1)[1]].append(json.loads(message.payload))
                    kinds = {e["kind"] for e in seen["events"]}
                    if "registered" in kinds and seen["telemetry"]:
                        assert topic.startswith(f"{prefix}/default/unassigned/unassigned/")
                        return

            await asyncio.wait_for(collect(), 20)
        registered = next(e for e in seen["events"] if e["kind"] == "registered")
        assert registered["endpoint"] == "mqtt-probe-1"
        assert seen["telemetry"][0]["kind"] == "value"
    finally:
        await device.stop()
        await exporter.stop()

"""Operations: /metrics in Prometheus text, /healthz and /readyz, JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.api import ops as ops_api
from shoal.node import NodeConfig, ShoalNode
from shoal.ops.logs import JsonFormatter, configure_logging
from shoal.ops.metrics import OpsMeter
from shoal.sim import DeviceConfig, SimDevice


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[ShoalNode]:
    n = ShoalNode(NodeConfig(coap_port=0, http_port=0, data_dir=str(tmp_path), secure=False))
    await n.start()
    # the wiring node.py will do: the meter, then the router
    meter = OpsMeter(n.feed, n.server)
    meter.start()
    n.app.state.ops_meter = meter
    n.app.include_router(ops_api.router)
    yield n
    await meter.stop()
    await n.stop()


@pytest.fixture
async def http(node: ShoalNode) -> AsyncIterator[httpx.AsyncClient]:
    host, port = node.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as client:
        yield client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@asynccontextmanager
async def device(node: ShoalNode, endpoint: str) -> AsyncIterator[SimDevice]:
    d = SimDevice(DeviceConfig(endpoint, sample_interval=0.3), node.server.address)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def test_metrics_count_a_registered_device(node: ShoalNode, http: httpx.AsyncClient) -> None:
    async with device(node, "ops-probe-1"):

        async def registered() -> bool:
            r = await http.get("/metrics")
            got = samples(r.text)
            return (
                got.get(("shoal_lwm2m_registered_total", ()), 0) >= 1
                and got.get(("shoal_feed_items_total", (("kind", "registered"),)), 0) >= 1
            )

        await eventually(registered)
        r = await http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)
        assert got[("shoal_registrations", ())] == 1
        assert got[("shoal_telemetry_queue_depth", ())] >= 0
        assert ("shoal_feed_watchers", ()) in got
        assert ("shoal_coap_state", (("table", "pending"), ("transport", "coap"))) in got
        assert ("shoal_coap_retransmissions_total", (("transport", "coap"),)) in got
        assert "process_resident_memory_bytes" in r.text or "python_info" in r.text

        async def notified() -> bool:
            got = samples((await http.get("/metrics")).text)
            return got.get(("shoal_lwm2m_notifications_total", ()), 0) >= 1

        await eventually(notified)
    got = samples((await http.get("/metrics")).text)
    assert got[("shoal_lwm2m_deregistered_total", ())] >= 1


async def test_metrics_without_optional_services() -> None:
    from prometheus_client import generate_latest

    from shoal.ops.metrics import node_registry

    class Bare:
        pass

    text = generate_latest(node_registry(Bare(), process=False)).decode()
    assert text == ""  # nothing to say, and no error


async def test_healthz_and_readyz(node: ShoalNode, http: httpx.AsyncClient) -> None:
    live = await http.get("/healthz")
    assert live.status_code == 200 and live.json()["status"] == "ok"
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["database"]["ok"] and checks["coap"]["ok"] and checks["http"]["ok"]
    host, port = node.server.address
    assert checks["coap"]["address"] == f"{host}:{port}"


async def test_readyz_is_503_when_the_database_fails(
    node: ShoalNode, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def session(self, readonly: bool = False) -> Any:
            raise OSError("database unreachable")

    monkeypatch.setattr(node, "db", Broken())
    ready = await http.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert not body["checks"]["database"]["ok"]
    assert "unreachable" in body["checks"]["database"]["error"]
    assert (await http.get("/healthz")).status_code == 200


def test_json_log_lines_parse() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(static={"node": "n1"}))
    logger = logging.getLogger("shoal.test.jsonlogs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("device %s registered", "probe-1", extra={"endpoint": "probe-1"})
        try:
            raise ValueError("multi\nline")
        except ValueError:
            logger.exception("it failed: %s", {"a": 1})
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "device probe-1 registered"
    assert first["level"] == "INFO" and first["logger"] == "shoal.test.jsonlogs"
    assert first["endpoint"] == "probe-1" and first["node"] == "n1"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: multi" in second["exc"]


def test_configure_logging_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        monkeypatch.setenv("SHOAL_LOG_FORMAT", "json")
        configure_logging()
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        monkeypatch.setenv("SHOAL_LOG_FORMAT", "text")
        configure_logging()
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        with pytest.raises(ValueError):
            configure_logging(fmt="xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

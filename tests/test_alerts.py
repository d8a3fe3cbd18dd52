"""Malfunction rules, the alert lifecycle, channels and escalation, end to end:
a Shoal node with alerting attached, simulated devices with injected faults,
and real receivers (HTTP on loopback, aiosmtpd, the local MQTT broker)."""

from __future__ import annotations

import asyncio
import uuid
from email import message_from_bytes
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from alerting_fixtures import (
    Harness,
    HttpReceiver,
    closed_port_url,
    free_port,
    mqtt_reachable,
    wait_for,
)
from alerting_fixtures import harness as harness
from shoal.domain.alerts import Condition, Rule, RuleKind
from shoal.domain.channels import SIGNATURE_HEADER, verify_signature
from shoal.domain.health import Place
from shoal.store import alert_schema
from shoal.store.alerts import Severity
from shoal.store.db import create_sync_engine
from shoal.store.migrations import current_revision, head_revision, upgrade
from shoal.store.schema import Base

PH = "/3326/0/5700"


async def test_malfunctions_raise_their_alerts_and_duplicates_collapse(harness: Harness) -> None:
    h = harness
    await h.set_rule("stuck_value", params={"count": 5})
    erring = await h.device("wq-erring")
    stuck = await h.device("wq-stuck")
    lying = await h.device("wq-lying")
    for d in (erring, stuck, lying):
        await h.profiled(d)

    erring.set_error_codes([8])
    stuck.set_stuck(True)
    lying.set_stuck(True)
    lying.set_value(PH, 15.0)  # pH 15 does not exist: the probe is broken

    malfunction = await h.wait_alert("wq-erring", "device_error@8")
    assert malfunction.title == "Peripheral malfunction"
    assert malfunction.severity == "high" and malfunction.rule_kind == "error_code"

    impossible = await h.wait_alert("wq-lying", f"impossible_value@{PH}")
    assert "15" in impossible.message and "faulty" in impossible.message
    assert impossible.severity == "high"

    frozen = await h.wait_alert("wq-stuck", f"stuck_value@{PH}")
    assert frozen.title == "Stuck ph value"
    # pmax keeps the same reading coming: the one alert counts them
    await wait_for(lambda: frozen.count >= 3, what="repeats counted")
    await h.alerting.drain()
    page = await h.alerting.store.list_alerts(
        _filter(endpoint="wq-stuck", rule_key=f"stuck_value@{PH}")
    )
    assert page.total == 1
    assert page.items[0].count >= 3

    # the error clears: the alert resolves by itself
    erring.set_error_codes([])
    await wait_for(lambda: h.alert("wq-erring", "device_error@8") is None, what="error cleared")
    await h.alerting.drain()
    assert (await h.alerting.store.get_alert(malfunction.id)).state == "resolved"


def _filter(**kw: Any) -> Any:
    from shoal.store.alerts import AlertFilter

    return AlertFilter(**kw)


async def test_drifting_probe_disagrees_with_its_neighbours(harness: Harness) -> None:
    h = harness
    inv = h.node.inventory
    tenant = await inv.ensure_tenant("default")
    farm = await inv.create_farm(tenant.id, "Fjord Farm")
    pen = await inv.create_enclosure(farm.id, "Pen 1")
    await h.set_rule("stuck_value", enabled=False)  # the probes are frozen on purpose
    probes = [await h.device(f"wq-pen1-{i}", enclosure=pen.code) for i in range(3)]
    for d in probes:
        await h.profiled(d)
        d.set_stuck(True)
    for d, value in zip(probes, (7.9, 8.0, 8.1), strict=True):
        d.set_value(PH, value)
    await wait_for(
        lambda: h.alerting.directory.get("wq-pen1-2").enclosure_id == pen.id, what="placement"
    )
    drifting = probes[2]
    for value in (8.3, 8.6, 8.9, 9.2):
        drifting.set_value(PH, value)
        await asyncio.sleep(1.2)
    alert = await h.wait_alert("wq-pen1-2", "probe_disagreement@ph")
    assert alert.enclosure_id == pen.id and alert.farm_id == farm.id
    assert "median" in alert.message
    assert h.alert("wq-pen1-0", "probe_disagreement@ph") is None
    # enclosure rollup of health and alerts filtered by enclosure over HTTP
    async with httpx.AsyncClient(base_url=h.base_url) as client:
        listed = (await client.get("/alerts", params={"enclosure": pen.id})).json()
        assert any(a["rule_key"] == "probe_disagreement@ph" for a in listed["items"])
        rollup = (await client.get(f"/health/enclosures/{pen.id}")).json()
        assert rollup["devices"] == 3 and rollup["state"] == "ok"
    # back in line: resolved
    drifting.set_value(PH, 8.0)
    await wait_for(
        lambda: h.alert("wq-pen1-2", "probe_disagreement@ph") is None, what="agreement again"
    )


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


async def test_channels_deliver_signed_webhook_mail_slack_and_mqtt(harness: Harness) -> None:
    from aiosmtpd.controller import Controller

    h = harness
    receiver = HttpReceiver()
    await receiver.start()
    mailbox = _Mailbox()
    smtp_port = free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    topic_root = f"shoal-test/{uuid.uuid4().hex}"
    mqtt_messages: list[Any] = []
    mqtt_task = None
    mqtt_ready = asyncio.Event()
    use_mqtt = mqtt_reachable()
    if use_mqtt:
        mqtt_task = asyncio.get_running_loop().create_task(
            _subscribe(f"{topic_root}/#", mqtt_messages, mqtt_ready)
        )
        await asyncio.wait_for(mqtt_ready.wait(), 20)
    secret = "s3cret-key"
    try:
        async with httpx.AsyncClient(base_url=h.base_url, timeout=30) as client:
            channels: list[dict[str, Any]] = [
                {
                    "name": "ops-hook",
                    "kind": "webhook",
                    "config": {"url": receiver.url + "/hook", "secret": secret},
                },
                {"name": "chat", "kind": "slack", "config": {"url": receiver.url + "/slack"}},
                {
                    "name": "mail",
                    "kind": "email",
                    "config": {
                        "host": "127.0.0.1",
                        "port": smtp_port,
                        "sender": "shoal@farm.example",
                        "to": ["manager@farm.example"],
                    },
                },
                {
                    "name": "broken",
                    "kind": "webhook",
                    "config": {"url": closed_port_url(), "secret": "x"},
                },
            ]
            if use_mqtt:
                channels.append(
                    {
                        "name": "broker",
                        "kind": "mqtt",
                        "config": {
                            "host": "127.0.0.1",
                            "topic": topic_root + "/{severity}/{endpoint}",
                        },
                    }
                )
            for ch in channels:
                resp = await client.post("/channels", json=ch)
                assert resp.status_code == 201, resp.text
            listed = (await client.get("/channels")).json()
            hook = next(c for c in listed if c["name"] == "ops-hook")
            assert hook["config"]["secret"] == "***"  # secrets never leave
            bad = await client.post("/channels", json={"name": "x", "kind": "email", "config": {}})
            assert bad.status_code == 422

            test = await client.post("/channels/ops-hook/test")
            assert test.status_code == 200, test.text
            failed = await client.post("/channels/broken/test")
            assert failed.status_code == 502

            device = await h.device("wq-mal")
            await h.profiled(device)
            device.set_error_codes([8])
            alert = await h.wait_alert("wq-mal", "device_error@8")

            def hooks(event: str) -> list[Any]:
                return [
                    r
                    for r in receiver.requests
                    if r.path == "/hook" and r.json().get("event") == event
                ]

            await wait_for(
                lambda: any(r.json()["alert"]["id"] == alert.id for r in hooks("raised")),
                what="webhook",
            )
            req = next(r for r in hooks("raised") if r.json()["alert"]["id"] == alert.id)
            signature = req.headers[SIGNATURE_HEADER.lower()]
            assert verify_signature(secret, signature, req.body)
            assert not verify_signature("wrong", signature, req.body)
            assert not verify_signature(secret, signature, req.body + b" ")
            assert req.json()["alert"]["title"] == "Peripheral malfunction"
            assert hooks("test"), "the test notice went through the webhook too"

            await wait_for(
                lambda: any(
                    "Peripheral malfunction" in r.json()["text"]
                    for r in receiver.requests
                    if r.path == "/slack"
                ),
                what="slack-compatible webhook",
            )
            await wait_for(
                lambda: any("Peripheral malfunction" in m["Subject"] for m in mailbox.messages),
                what="mail",
            )
            mail = next(m for m in mailbox.messages if "Peripheral malfunction" in m["Subject"])
            assert mail["To"] == "manager@farm.example"
            assert "wq-mal" in mail.get_payload()
            if use_mqtt:
                await wait_for(
                    lambda: any(t.endswith("/high/wq-mal") for t, _ in mqtt_messages),
                    what="mqtt message",
                )

            # the broken channel raised its own alert, delivered through the others
            failing = await h.wait_alert(None, "channel_failure")
            assert failing.subject == "channel:broken"
            await wait_for(
                lambda: any(
                    r.json()["alert"]["rule_key"] == "channel_failure" for r in hooks("raised")
                ),
                what="channel failure notice",
            )
            stats = (await client.get("/channels/broken")).json()["delivery"]
            assert stats["failing"] is True and stats["failed"] >= 1
    finally:
        if mqtt_task is not None:
            mqtt_task.cancel()
            await asyncio.gather(mqtt_task, return_exceptions=True)
        smtp.stop()
        await receiver.stop()
    if not use_mqtt:
        pytest.skip("MQTT broker on 127.0.0.1:1883 not reachable: MQTT delivery not checked")


async def _subscribe(topic: str, out: list[Any], ready: asyncio.Event) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for message in client.messages:
            out.append((str(message.topic), message.payload))


async def test_unacknowledged_critical_alert_escalates(harness: Harness) -> None:
    h = harness
    receiver = HttpReceiver()
    await receiver.start()
    try:
        async with httpx.AsyncClient(base_url=h.base_url, timeout=30) as client:
            for name in ("on-call", "manager"):
                resp = await client.post(
                    "/channels",
                    json={
                        "name": name,
                        "kind": "webhook",
                        "config": {"url": f"{receiver.url}/{name}", "secret": "k"},
                    },
                )
                assert resp.status_code == 201
            policy = {
                "name": "critical",
                "min_severity": "critical",
                "steps": [
                    {"after": 0, "channels": ["on-call"]},
                    {"after": 1, "channels": ["manager"]},
                ],
                "repeat_every": 1,
            }
            resp = await client.post("/escalation-policies", json=policy)
            assert resp.status_code == 201, resp.text
            await h.set_rule("device_error", params={"codes": {"8": {"severity": "critical"}}})
            device = await h.device("wq-critical")
            await h.profiled(device)
            device.set_error_codes([8])
            alert = await h.wait_alert("wq-critical", "device_error@8")
            assert alert.severity == "critical"

            def to(name: str, event: str) -> int:
                return sum(
                    1
                    for r in receiver.requests
                    if r.path == f"/{name}" and r.json()["event"] == event
                )

            await wait_for(lambda: to("on-call", "raised") == 1, what="first contact")
            await wait_for(lambda: to("manager", "escalated") == 1, what="escalation")
            await wait_for(lambda: to("manager", "repeated") >= 1, what="repeat")
            assert to("manager", "raised") == 0  # the manager only hears of it late
            assert alert.escalation_level == 1

            ack = await client.post(
                f"/alerts/{alert.id}/acknowledge",
                json={"by": "kari", "note": "diver on the way"},
            )
            assert ack.status_code == 200
            assert ack.json()["state"] == "acknowledged"
            assert ack.json()["acknowledged_by"] == "kari"
            await h.alerting.drain()
            before = to("manager", "repeated")
            await asyncio.sleep(2.5)
            assert to("manager", "repeated") == before  # acknowledged: no more repeats
            again = await client.post(f"/alerts/{alert.id}/acknowledge", json={"by": "kari"})
            assert again.status_code == 200
            resolved = await client.post(
                f"/alerts/{alert.id}/resolve", json={"by": "kari", "note": "probe replaced"}
            )
            assert resolved.json()["state"] == "resolved"
            assert resolved.json()["resolved_by"] == "kari"
            closed = await client.post(f"/alerts/{alert.id}/resolve", json={"by": "kari"})
            assert closed.status_code == 409
            await h.alerting.drain()
            history = (await client.get(f"/alerts/{alert.id}")).json()
            kinds = [e["kind"] for e in history["events"]]
            assert kinds[0] == "raised"
            assert {"escalated", "acknowledged", "resolved"} <= set(kinds)
    finally:
        await receiver.stop()


async def test_flap_damping_silences_and_history(harness: Harness) -> None:
    h = harness
    alerts = h.alerting.alerts
    receiver = HttpReceiver()
    await receiver.start()
    try:
        async with httpx.AsyncClient(base_url=h.base_url, timeout=30) as client:
            resp = await client.post(
                "/channels",
                json={
                    "name": "hook",
                    "kind": "webhook",
                    "config": {"url": receiver.url + "/h", "secret": "k"},
                },
            )
            assert resp.status_code == 201
            rule = Rule("flappy", RuleKind.THRESHOLD, Severity.WARNING, {"path": PH, "max": 9})
            place = Place(None, None, 7, 70)

            def condition(endpoint: str) -> Condition:
                return Condition(
                    f"device:{endpoint}",
                    "flappy",
                    rule,
                    Severity.WARNING,
                    "Flappy",
                    "m",
                    {},
                    endpoint,
                    place,
                )

            first = alerts.raise_alert(condition("dev-flap"))
            for _ in range(5):  # raise and clear in quick succession
                alerts.raise_alert(condition("dev-flap"))
                alerts.clear_alert("device:dev-flap", "flappy")
                alerts.raise_alert(condition("dev-flap"))
            current = h.alert("dev-flap", "flappy")
            assert current is first  # reopened, never duplicated
            assert first.flaps >= 3 and first.detail and first.detail.get("flapping")
            await h.alerting.drain()
            page = await h.alerting.store.list_alerts(_filter(endpoint="dev-flap"))
            assert page.total == 1
            notices = len([r for r in receiver.requests if r.path == "/h"])
            assert notices <= 2 * h.alerting.alerts.config.flap_limit
            for _ in range(5):  # flapping: no more notices either way
                alerts.clear_alert("device:dev-flap", "flappy")
                alerts.raise_alert(condition("dev-flap"))
            await h.alerting.drain()
            await h.alerting.dispatcher.drain()
            assert len([r for r in receiver.requests if r.path == "/h"]) == notices

            # a maintenance window on the enclosure: recorded, not notified
            resp = await client.post(
                "/silences",
                json={
                    "kind": "maintenance",
                    "enclosure_id": 70,
                    "duration": 600,
                    "reason": "net change",
                    "created_by": "ola",
                },
            )
            assert resp.status_code == 201, resp.text
            silence_id = resp.json()["id"]
            quiet = alerts.raise_alert(condition("dev-quiet"))
            assert quiet.silenced
            await h.alerting.drain()
            assert not any(
                r.json()["alert"]["endpoint"] == "dev-quiet"
                for r in receiver.requests
                if r.path == "/h"
            )
            active = (await client.get("/silences", params={"active": True})).json()
            assert [s["id"] for s in active] == [silence_id]
            # the window ends: the still-open alert is announced after all
            assert (await client.delete(f"/silences/{silence_id}")).status_code == 204
            await wait_for(
                lambda: any(
                    r.json()["alert"]["endpoint"] == "dev-quiet"
                    for r in receiver.requests
                    if r.path == "/h"
                ),
                what="notice after the silence",
            )
            listed = (await client.get("/alerts", params={"state": "open", "farm": 7})).json()
            assert {a["endpoint"] for a in listed["items"]} == {"dev-flap", "dev-quiet"}
            bad = await client.get("/alerts", params={"state": "sleepy"})
            assert bad.status_code == 400
    finally:
        await receiver.stop()


async def test_rules_and_profiles_over_http(harness: Harness) -> None:
    h = harness
    async with httpx.AsyncClient(base_url=h.base_url, timeout=30) as client:
        rules = (await client.get("/alert-rules")).json()
        keys = {r["key"] for r in rules}
        assert {"not_responding", "stuck_value", "device_error", "probe_disagreement"} <= keys
        override = {
            "key": "low_oxygen",
            "kind": "threshold",
            "severity": "critical",
            "farm_id": 3,
            "params": {"quantity": "dissolved_oxygen", "min": 6.0},
        }
        resp = await client.post("/alert-rules", json=override)
        assert resp.status_code == 201, resp.text
        rule_id = resp.json()["id"]
        dup = await client.post("/alert-rules", json=override)
        assert dup.status_code == 409
        invalid = await client.post(
            "/alert-rules", json={"key": "x", "kind": "threshold", "params": {}}
        )
        assert invalid.status_code == 422
        patched = await client.patch(f"/alert-rules/{rule_id}", json={"params": {"min": 5.5}})
        assert patched.status_code == 422  # a threshold without its quantity
        patched = await client.patch(
            f"/alert-rules/{rule_id}",
            json={"params": {"quantity": "dissolved_oxygen", "min": 5.5}},
        )
        assert patched.json()["params"]["min"] == 5.5
        # the farm's override wins there, the global rule elsewhere
        alerts = h.alerting.alerts
        tenant = h.node.app.state.tenant_id
        on_farm = alerts._effective(Place(None, tenant, 3, None), None)
        elsewhere = alerts._effective(Place(None, tenant, 4, None), None)
        assert next(r for r in on_farm if r.key == "low_oxygen").params["min"] == 5.5
        assert next(r for r in elsewhere if r.key == "low_oxygen").params["min"] == 4.0
        assert (await client.delete(f"/alert-rules/{rule_id}")).status_code == 204

        profile = {
            "kind": "sensor",
            "model": "WQ-*",
            "resources": [
                {"path": "/3325/0/5700", "pmin": 5, "pmax": 60, "quantity": "dissolved_oxygen"}
            ],
            "report_interval": 300,
        }
        resp = await client.put("/profiles/oxygen-only", json=profile)
        assert resp.status_code == 200, resp.text
        got = (await client.get("/profiles/oxygen-only")).json()
        assert got["resources"][0]["pmax"] == 60 and got["model"] == "WQ-*"
        stored = await h.alerting.store.list_profiles()
        assert [p.name for p in stored] == ["oxygen-only"]
        bad = await client.put(
            "/profiles/bad", json={"resources": [{"path": "/3325/0/5700", "pmin": 9, "pmax": 3}]}
        )
        assert bad.status_code == 422
        assert (await client.delete("/profiles/oxygen-only")).status_code == 204
        assert (await client.get("/profiles/oxygen-only")).status_code == 404
        names = {p["name"] for p in (await client.get("/profiles")).json()}
        assert "fast-water" in names

        policy = {"name": "p", "steps": [{"after": 0, "channels": ["x"]}]}
        created = await client.post("/escalation-policies", json=policy)
        assert created.status_code == 201
        pid = created.json()["id"]
        policy["repeat_every"] = 60
        replaced = await client.put(f"/escalation-policies/{pid}", json=policy)
        assert replaced.json()["repeat_every"] == 60
        assert (await client.delete(f"/escalation-policies/{pid}")).status_code == 204
        assert (await client.get("/escalation-policies")).json() == []


def test_migration_builds_the_alert_tables(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert current_revision(url) == head_revision()
    assert "alert" in Base.metadata.tables and alert_schema.AlertRow.__tablename__ == "alert"
    engine = create_sync_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert [d for d in diffs if _touches(d, ALERT_TABLES)] == []


ALERT_TABLES = {
    "device_profile",
    "alert_rule",
    "alert",
    "alert_event",
    "notification_channel",
    "escalation_policy",
    "alert_silence",
}


def _touches(diff: Any, tables: set[str]) -> bool:
    """Whether one autogenerate difference concerns one of `tables`."""
    items = diff if isinstance(diff, list) else [diff]
    for item in items:
        for part in item:
            name = getattr(part, "name", None) if not isinstance(part, str) else part
            table = getattr(part, "table", None)
            if name in tables or getattr(table, "name", None) in tables:
                return True
    return False

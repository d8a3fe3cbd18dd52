"""Health and alerting under load: detection latency and rule cost.

`python bench/health.py` starts a Shoal node (SQLite in a temp dir, loopback
ports) with health and alerting attached, and a simulated fleet in a child
process (so the devices do not share the server's core). Every device gets a
profile observing pH and temperature with pmax `--pmax` and its error codes.

1. Throughput, end to end: the same fleet load for `--window` seconds with all
   rules on, then with every rule off, twice each, interleaved. Reported: the
   notifications the server handled per second and the server process's CPU
   time per 1000 notifications (the fleet's own CPU is in the child, not here).
   The ratio on/off is the rules' cost on the ingest path.
2. Throughput, in-process ceiling: `--synthetic` Notification events published
   on the server's event bus as fast as they go (fleet, health and alert
   subscribers all attached), rules on against rules off.
3. Detection: `--kill` random devices go silent at once; for each, the time
   from going silent to "not responding" being raised. Reported p50/p99/max from
   the kill, and after the missed deadline (what the `--latency` setting bounds).

Stops by itself (`--timeout` caps the whole run); loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from shoal.coap.endpoint import new_event_loop
from shoal.domain.alerts import AlertConfig, Alerting, AlertingConfig
from shoal.domain.fleet import FleetConfig as NodeFleetConfig
from shoal.domain.health import HealthConfig
from shoal.domain.profiles import DeviceProfile, ProfileConfig, ResourceSpec
from shoal.lwm2m.path import Path
from shoal.node import NodeConfig, ShoalNode
from shoal.server import events as ev


def bench_profile(pmax: int) -> DeviceProfile:
    return DeviceProfile(
        name="bench-water",
        kind="sensor",
        resources=(
            ResourceSpec(
                "/3326/0/5700",
                pmax=pmax,
                quantity="ph",
                expected=(6.5, 8.5),
                possible=(0.0, 14.0),
                varies=True,
            ),
            ResourceSpec(
                "/3303/0/5700",
                pmax=pmax,
                quantity="water_temperature",
                expected=(0.0, 30.0),
                possible=(-5.0, 45.0),
                varies=True,
            ),
            ResourceSpec("/3/0/11"),
        ),
    )


# -- the fleet, in a child process -----------------------------------------------------


def fleet_child(conn: Connection, server: tuple[str, int], args: dict[str, Any]) -> None:
    from shoal.sim import Fleet, FleetConfig

    async def main() -> None:
        fleet = Fleet(
            FleetConfig(
                server=server,
                count=args["devices"],
                profile="water",
                lifetime=args["lifetime"],
                sample_interval=args["sample"],
                concurrency=200,
                progress=False,
                seed=7,
            )
        )
        summary = await fleet.start()
        conn.send(("started", summary))
        loop = asyncio.get_running_loop()
        while True:
            msg = await loop.run_in_executor(None, conn.recv)
            if msg[0] == "kill":
                names = set(msg[1])
                at = time.time()
                for d in fleet.devices:
                    if d.name in names:
                        d.set_silent(True)
                conn.send(("killed", at))
            elif msg[0] == "stop":
                await fleet.stop(deregister=False)
                conn.send(("stopped", fleet.summary()))
                return

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


class FleetProcess:
    def __init__(self, server: tuple[str, int], args: argparse.Namespace) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        options = {
            "devices": args.devices,
            "lifetime": args.lifetime,
            "sample": args.sample,
        }
        self.proc = ctx.Process(target=fleet_child, args=(child, server, options), daemon=True)

    async def call(self, *msg: Any, timeout: float = 600.0) -> Any:
        if msg:
            self.conn.send(msg)
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(
            loop.run_in_executor(None, self.conn.poll, timeout), timeout + 5
        )
        if not ready:
            raise TimeoutError(f"fleet did not answer {msg[:1]}")
        return self.conn.recv()

    def terminate(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(5)


# -- measuring -------------------------------------------------------------------------


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    v = sorted(values)
    return {
        "n": len(v),
        "p50": round(v[len(v) // 2], 3),
        "p99": round(v[min(len(v) - 1, int(0.99 * len(v)))], 3),
        "max": round(v[-1], 3),
    }


def set_rules(alerting: Alerting, on: bool, saved: dict[int, Any]) -> None:
    alerts = alerting.alerts
    if on:
        alerts.rules = dict(saved)
    else:
        alerts.rules = {}
    alerts._rules_changed()


async def end_to_end(node: ShoalNode, alerting: Alerting, window: float) -> dict[str, float]:
    counters = node.server.counters
    n0, c0, t0 = counters["notifications"], time.process_time(), time.monotonic()
    v0 = alerting.alerts.stats["values"]
    await asyncio.sleep(window)
    n1, c1, t1 = counters["notifications"], time.process_time(), time.monotonic()
    n = max(1, n1 - n0)
    return {
        "notifications_per_s": (n1 - n0) / (t1 - t0),
        "cpu_ms_per_1000": (c1 - c0) / n * 1e6,
        "values_checked": alerting.alerts.stats["values"] - v0,
    }


async def synthetic(node: ShoalNode, count: int) -> float:
    """Notifications per second through the event bus with every subscriber on."""
    server = node.server
    regs = [r for r in list(server.store)][:1000]
    held = [(r, server.observations(r.endpoint)) for r in regs]
    held = [(r, obs[0]) for r, obs in held if obs]
    if not held:
        return 0.0
    ph = Path(3326, 0, 5700)
    rng = random.Random(3)
    events = [
        ev.Notification(r, o, {ph: round(7.5 + rng.random(), 2)})
        for r, o in (held[i % len(held)] for i in range(count))
    ]
    bus = server.bus
    started = time.perf_counter()
    for i, event in enumerate(events):
        bus.publish(event)
        if i % 500 == 0:
            await asyncio.sleep(0)
    return count / (time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix="shoal-bench-health-")
    node = ShoalNode(
        NodeConfig(
            coap_port=0,
            http_port=0,
            data_dir=data_dir,
            fleet=NodeFleetConfig(observe_on_register=False, read_identity=False),
            secure=False,  # the simulated devices speak NoSec
        )
    )
    node.server.config = replace(node.server.config, expiry_grace=5.0)
    await node.start()
    config = AlertingConfig(
        health=HealthConfig(detection_latency=args.latency),
        profiles=ProfileConfig(check_interval=60.0, restore_delay=1.0),
        alerts=AlertConfig(tick_interval=0.5, persist_interval=1.0),
        directory_refresh=3600.0,
    )
    alerting = Alerting.attach(node, config, profiles=[bench_profile(args.pmax)])
    await alerting.start()
    fleet = FleetProcess(node.server.address, args)
    fleet.proc.start()
    result: dict[str, Any] = {
        "devices": args.devices,
        "pmax": args.pmax,
        "sample_interval": args.sample,
        "latency_setting": args.latency,
        "check_interval": config.health.interval,
    }
    try:
        t0 = time.monotonic()
        kind, summary = await fleet.call(timeout=args.timeout)
        assert kind == "started", kind
        print(f"fleet up: {summary['registered']} registered in {time.monotonic() - t0:.1f} s")
        applied = alerting.profiles.applied

        deadline = time.monotonic() + args.timeout / 2
        while len(applied) < summary["registered"] and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        result["profiles_applied"] = len(applied)
        result["observations"] = len(node.server.observations())
        print(
            f"profiles applied to {len(applied)} devices, "
            f"{result['observations']} observations, after {time.monotonic() - t0:.1f} s"
        )
        await asyncio.sleep(min(args.pmax, 10))  # let the notification rhythm settle

        saved = dict(alerting.alerts.rules)
        rounds: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
        for state in ("on", "off", "on", "off"):
            set_rules(alerting, state == "on", saved)
            rounds[state].append(await end_to_end(node, alerting, args.window))
            print(f"rules {state}: {rounds[state][-1]}")
        set_rules(alerting, True, saved)

        def med(state: str, key: str) -> float:
            return statistics.median(r[key] for r in rounds[state])

        result["end_to_end"] = {
            "rules_on_notifications_per_s": round(med("on", "notifications_per_s"), 1),
            "rules_off_notifications_per_s": round(med("off", "notifications_per_s"), 1),
            "rules_on_cpu_ms_per_1000": round(med("on", "cpu_ms_per_1000"), 1),
            "rules_off_cpu_ms_per_1000": round(med("off", "cpu_ms_per_1000"), 1),
        }
        e2e = result["end_to_end"]
        e2e["throughput_ratio_on_off"] = round(
            e2e["rules_on_notifications_per_s"] / max(1e-9, e2e["rules_off_notifications_per_s"]),
            3,
        )
        e2e["cpu_ratio_on_off"] = round(
            e2e["rules_on_cpu_ms_per_1000"] / max(1e-9, e2e["rules_off_cpu_ms_per_1000"]), 3
        )

        syn: dict[str, list[float]] = {"on": [], "off": []}
        for state in ("on", "off", "on", "off"):
            set_rules(alerting, state == "on", saved)
            syn[state].append(await synthetic(node, args.synthetic))
        set_rules(alerting, True, saved)
        on, off = statistics.median(syn["on"]), statistics.median(syn["off"])
        result["in_process"] = {
            "rules_on_per_s": round(on),
            "rules_off_per_s": round(off),
            "ratio_on_off": round(on / max(1e-9, off), 3),
        }
        print(f"in-process: {result['in_process']}")
        await asyncio.sleep(2)

        # -- kill and detect --------------------------------------------------------
        names = sorted(applied)
        victims = random.Random(11).sample(names, min(args.kill, len(names)))
        for ep in victims:
            if alerting.alerts.active.get((f"device:{ep}", "not_responding")) is not None:
                print(f"note: {ep} was already flagged before the kill")
        alerting.health.detections.clear()  # a bounded deque: count from empty
        before = 0
        kind, killed_at = await fleet.call("kill", victims)
        assert kind == "killed"
        wanted = set(victims)
        found: dict[str, Any] = {}
        limit = time.monotonic() + args.pmax + args.latency + args.detect_timeout
        while len(found) < len(wanted) and time.monotonic() < limit:
            for d in list(alerting.health.detections)[before:]:
                if d.endpoint in wanted and d.endpoint not in found:
                    found[d.endpoint] = d
            await asyncio.sleep(0.1)
        from_kill = [d.at.timestamp() - killed_at for d in found.values()]
        after_deadline = [d.deadline_latency for d in found.values()]
        raised = []
        for ep in found:
            alert = alerting.alerts.active.get((f"device:{ep}", "not_responding"))
            if alert is not None:
                raised.append(alert.first_at.timestamp() - killed_at)
        result["detection"] = {
            "killed": len(victims),
            "detected": len(found),
            "signals": sorted({d.signal for d in found.values()}),
            "from_kill_s": pct(from_kill),
            "after_deadline_s": pct(after_deadline),
            "alert_raised_from_kill_s": pct(raised),
            "false_detections": sum(
                1 for d in list(alerting.health.detections)[before:] if d.endpoint not in wanted
            ),
        }
        result["alerting"] = dict(alerting.alerts.stats)
        result["telemetry_dropped"] = node.telemetry_writer.stats().dropped_over_bound
    finally:
        try:
            await fleet.call("stop", timeout=60)
        except (TimeoutError, EOFError, OSError):
            pass
        fleet.terminate()
        await alerting.stop()
        await node.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--kill", type=int, default=100)
    parser.add_argument("--pmax", type=int, default=30, help="observation pmax (s)")
    parser.add_argument("--latency", type=float, default=5.0, help="detection latency setting")
    parser.add_argument("--sample", type=float, default=20.0, help="device sample interval (s)")
    parser.add_argument("--lifetime", type=int, default=600)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--synthetic", type=int, default=50_000, help="events per in-process run")
    parser.add_argument("--detect-timeout", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=1200.0, help="cap on the whole run")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.timeout):
            return await run(args)

    loop = new_event_loop()
    try:
        result = loop.run_until_complete(bounded())
    finally:
        loop.close()
    print(json.dumps(result, indent=2))
    sys.stdout.flush()
    os._exit(0)  # the executor thread reading the pipe must not hold the exit


if __name__ == "__main__":
    main()

"""API Read latency while a fleet notifies: p50/p99 of `GET .../data/{path}`.

One command: a Shoal node (SQLite, NoSec) in a child process pinned to core 0;
N simulated devices (default 1,000) in this process pinned to core 1, each
observed on one resource and notifying about once a second; then sequential
API Reads of random devices, timed end to end (HTTP -> LwM2M Read -> device ->
decoded JSON). The same Reads are also timed with the fleet quiet, side by side,
and the last line gives both and their ratio. Loopback only; bounded; the child
is killed at the end.

    .venv/bin/python bench/api_read.py [--devices 1000] [--reads 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from shoal.coap.endpoint import run
from shoal.sim import Fleet, FleetConfig

CHILD = """
import asyncio, sys
from shoal.coap.endpoint import run
from shoal.domain.fleet import FleetConfig
from shoal.node import NodeConfig, ShoalNode

async def main(coap_port, http_port, data_dir):
    fleet = FleetConfig(sensor_paths=("/3303/0/5700",), read_identity=False)
    node = ShoalNode(NodeConfig(coap_port=coap_port, http_port=http_port, data_dir=data_dir,
                                secure=False, coaps=False, fleet=fleet))
    await node.start()
    print("READY", flush=True)
    await asyncio.Event().wait()

run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
"""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(0, {core})


async def time_reads(http: httpx.AsyncClient, endpoints: list[str], n: int) -> list[float]:
    rng = random.Random(7)
    out: list[float] = []
    for _ in range(n):
        ep = rng.choice(endpoints)
        t0 = time.perf_counter()
        r = await http.get(f"/api/v1/devices/{ep}/data/3303/0/5700")
        dt = time.perf_counter() - t0
        if r.status_code == 200:
            out.append(dt * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(args: argparse.Namespace) -> int:
    coap_port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    data_dir = tempfile.mkdtemp(prefix="shoal-bench-")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(coap_port), str(http_port), data_dir],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: pin(0),
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 120)
        if b"READY" not in line:
            print("node did not start", file=sys.stderr)
            return 1
        pin(1)
        fleet = Fleet(
            FleetConfig(
                server=("127.0.0.1", coap_port),
                count=args.devices,
                profile="water",
                progress=True,
                sample_interval=1.0,
            )
        )
        await fleet.start()
        for d in fleet.devices:
            d.set_stuck(True)  # frozen values: no notifications for the quiet baseline
        endpoints = [d.name for d in fleet.devices]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=60) as http:
            await asyncio.sleep(5)  # observations placed
            quiet = await time_reads(http, endpoints, args.reads)
            for d in fleet.devices:
                d.set_stuck(False)  # values move every second: one notification each
            await asyncio.sleep(5)
            status0 = (await http.get("/api/v1/status")).json()["counters"]["notifications"]
            t0 = time.monotonic()
            busy = await time_reads(http, endpoints, args.reads)
            status1 = (await http.get("/api/v1/status")).json()["counters"]["notifications"]
            rate = (status1 - status0) / (time.monotonic() - t0)
        await fleet.stop()
        print(f"devices={args.devices} reads={args.reads} notifications/s during reads={rate:.0f}")
        print(f"quiet fleet : p50={pct(quiet, 0.5):.1f} ms p99={pct(quiet, 0.99):.1f} ms")
        print(f"notifying   : p50={pct(busy, 0.5):.1f} ms p99={pct(busy, 0.99):.1f} ms")
        print(
            f"api-read: p50={pct(busy, 0.5):.1f}ms p99={pct(busy, 0.99):.1f}ms "
            f"busy/quiet p50={pct(busy, 0.5) / pct(quiet, 0.5):.2f} notify/s={rate:.0f}"
        )
        return 0
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=300)
    sys.exit(run(main(parser.parse_args())))

"""Firmware delivery at fleet scale: one image to N simulated devices, pull and push.

One command, `python bench/firmware.py` (default 1,000 devices, a 1 MiB image),
runs a whole Shoal node (LwM2M server, SQLite, HTTP API, firmware service) in its
own process pinned to core 0 and N `SimDevice`s (real LwM2M clients, one UDP
socket each) in this process pinned to core 1, all on 127.0.0.1. For each
delivery method it uploads a package through the API, starts a campaign over
every device (no canary, no soak, `--concurrency` devices at a time) and polls
until it completes:

- pull-coap: Shoal writes a Package URI `coap://127.0.0.1:<port>/fw/<token>` to
             /5/0/1; each device GETs it block-wise (Block2, 1024-byte blocks)
             from the server's own CoAP endpoint;
- push:      Shoal writes the package to /5/0/0, block-wise (Block1).

Then Execute /5/0/2, the device reboots, registers again and reports the new
version in /3/0/3, which Shoal reads to verify. Reported per method: wall time
from start to completed, devices/s, 1024-byte blocks/s (payload blocks the
image needed, N x ceil(size/1024)), the server's CPU seconds (user+system, from
/proc) and its share of one core, and how many devices failed. The last line is
the figure `docs/performance.md` quotes:
`firmware: pull-coap <s> s <blocks/s> blocks/s; push <s> s <blocks/s> blocks/s`.

Bounded: the server child dies with the benchmark (PR_SET_PDEATHSIG, alarm),
every wait has a deadline (`--timeout` per campaign).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import httpx

from coap import LOADGEN_CORE, SERVER_CORE, _child_setup, cpu_seconds, describe_machine, free_port
from shoal.coap.endpoint import run
from shoal.sim import Fleet, FleetConfig, make_package

SERVER = r"""
import asyncio, sys
from shoal.coap.endpoint import run
from shoal.node import NodeConfig, ShoalNode
from shoal.firmware import DeliveryConfig, FirmwareConfig

async def main(coap_port, http_port, data_dir):
    cfg = FirmwareConfig(tick=0.5, delivery=DeliveryConfig(
        request_timeout=60.0, download_timeout=900.0, update_timeout=300.0,
        reboot_grace=60.0, verify_timeout=120.0, soak=0.0, poll_interval=5.0))
    node = ShoalNode(
        NodeConfig(
            coap_port=coap_port, http_port=http_port, data_dir=data_dir, secure=False,
            firmware=cfg, coaps=False,
        )
    )
    await node.start()
    print("READY", flush=True)
    await asyncio.Event().wait()

run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
"""


@dataclass
class Result:
    method: str
    devices: int
    seconds: float
    server_cpu: float
    succeeded: int
    failed: int
    blocks: int

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.seconds if self.seconds else float("nan")


def start_server(work: str, lifetime: int, pin: bool) -> tuple[subprocess.Popen[bytes], int, int]:
    coap_port = free_port()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(coap_port), str(http_port), work],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=_child_setup(SERVER_CORE if pin else None, lifetime),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the Shoal node ended during start-up")
        if line.strip() == b"READY":
            return proc, coap_port, http_port
    raise RuntimeError("the Shoal node did not start in 60 s")


async def wait_registered(http: httpx.AsyncClient, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await http.get("/api/v1/devices", params={"unassigned": True, "limit": 1})
        if resp.status_code == 200 and resp.json()["total"] >= count:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{count} devices did not all reach the inventory in {timeout:.0f} s")


async def campaign(
    http: httpx.AsyncClient,
    pid: int,
    method: str,
    version: str,
    image: bytes,
    devices: int,
    concurrency: int,
    timeout: float,
) -> Result:
    up = await http.post(
        "/api/v1/firmware/packages",
        params={"name": "shoal-firmware", "version": version, "device_kind": "sensor"},
        content=image,
    )
    up.raise_for_status()
    body = {
        "name": f"bench {method}",
        "package_id": up.json()["id"],
        "targets": {"kinds": ["sensor"]},
        "rollout": {
            "canary": 0,
            "max_concurrent": concurrency,
            "delivery": method,
            "soak": 0,
            "failure_threshold": 1.0,
            "auto_rollback": False,
        },
    }
    created = await http.post("/api/v1/firmware/campaigns", json=body)
    created.raise_for_status()
    cid = created.json()["id"]
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    started = await http.post(f"/api/v1/firmware/campaigns/{cid}/start")
    started.raise_for_status()
    deadline = time.monotonic() + timeout
    last = -1
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = (await http.get(f"/api/v1/firmware/campaigns/{cid}")).json()
        counts = state["counts"]
        done = counts["succeeded"] + counts["failed"] + counts["skipped"]
        if done != last and sys.stderr.isatty():
            print(f"\r  {method}: {done}/{counts['total']} devices", end="", file=sys.stderr)
            last = done
        if state["state"] == "completed":
            break
        await asyncio.sleep(0.25)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    if sys.stderr.isatty():
        print(file=sys.stderr)
    counts = state.get("counts", {})
    if state.get("state") != "completed":
        print(f"  {method}: not completed in {timeout:.0f} s: {counts}")
    if counts.get("failures"):
        rows = (await http.get(f"/api/v1/firmware/campaigns/{cid}/devices")).json()
        reasons: dict[str, int] = {}
        for row in rows:
            if row.get("outcome") == "failure":
                key = f"{row['step']}: {row['reason']}"
                reasons[key] = reasons.get(key, 0) + 1
        for reason, n in sorted(reasons.items(), key=lambda x: -x[1])[:5]:
            print(f"  {method}: {n} x {reason}")
    blocks = devices * math.ceil(len(image) / 1024)
    return Result(
        method,
        counts.get("total", 0),
        seconds,
        cpu,
        counts.get("succeeded", 0),
        counts.get("failures", 0),
        blocks,
    )


async def bench(args: argparse.Namespace) -> list[Result]:
    pin = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    describe_machine(pin)
    if pin:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    lifetime = int(args.timeout * 3 + 600)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="shoal-fw-bench-") as work:
        proc, coap_port, http_port = start_server(work, lifetime, pin)
        fleet = Fleet(
            FleetConfig(
                server=("127.0.0.1", coap_port),
                count=args.devices,
                profile="water",
                lifetime=3600,
                concurrency=100,
                sample_interval=3600.0,
                progress=sys.stderr.isatty(),
                device={
                    "firmware_update_delay": 0.1,
                    "reboot_delay": 0.1,
                    "retry_min": 1.0,
                    "retry_max": 5.0,
                    "request_timeout": 60.0,
                },
            )
        )
        try:
            summary = await fleet.start()
            print(f"{args.devices} simulated devices: {summary}")
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http_port}", timeout=60
            ) as http:
                await wait_registered(http, args.devices, 300)
                await asyncio.sleep(2.0)  # let identity reads and observations settle
                versions = iter(["2.0.0", "3.0.0", "4.0.0"])
                for method in args.methods:
                    version = next(versions)
                    image = make_package(version, size=args.size)
                    r = await campaign(
                        http,
                        proc.pid,
                        method,
                        version,
                        image,
                        args.devices,
                        args.concurrency,
                        args.timeout,
                    )
                    results.append(r)
                    print(
                        f"  {r.method:9}: {r.succeeded}/{r.devices} updated, {r.failed} failed, "
                        f"{r.seconds:6.1f} s, {r.devices / r.seconds:6.1f} devices/s, "
                        f"{r.blocks_per_s:8.0f} blocks/s, server CPU {r.server_cpu:6.1f} s "
                        f"({r.server_cpu / r.seconds:4.0%} of a core)"
                    )
        finally:
            await fleet.stop(deregister=False)
            proc.kill()
            proc.wait()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices")
    parser.add_argument("--size", type=int, default=1024 * 1024, help="image size in bytes")
    parser.add_argument(
        "--methods",
        default="pull-coap,push",
        help="comma-separated: pull-coap, push, pull-http",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="devices at a time")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per campaign")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = run(bench(args))
    line = "; ".join(f"{r.method} {r.seconds:.1f} s {r.blocks_per_s:.0f} blocks/s" for r in results)
    print(f"firmware: {line}")
    return 0 if all(r.failed == 0 and r.succeeded == r.devices for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

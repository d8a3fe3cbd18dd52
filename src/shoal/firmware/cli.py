"""`shoal campaign watch <id>`: a campaign's progress as terminal bars.

Polls the HTTP API (`GET /api/v1/firmware/campaigns/<id>` and its devices)
and draws one bar for the whole campaign and one per batch, with failures and
the pause reason as they happen. Ends when the campaign is finished
(completed, cancelled, rolled back); exit status 0 when no device failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import httpx
from tqdm import tqdm

FINAL = frozenset({"completed", "cancelled", "rolled_back"})
DONE_STATES = frozenset(
    {"succeeded", "failed", "skipped", "cancelled", "rolled_back", "rollback_failed"}
)


def _fetch(client: httpx.Client, campaign_id: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    c = client.get(f"/api/v1/firmware/campaigns/{campaign_id}")
    c.raise_for_status()
    d = client.get(f"/api/v1/firmware/campaigns/{campaign_id}/devices")
    d.raise_for_status()
    return c.json(), d.json()


def watch(
    campaign_id: int,
    base_url: str = "http://127.0.0.1:8080",
    *,
    interval: float = 1.0,
    timeout: float | None = None,
    exit_on_pause: bool = False,
    token: str | None = None,
    out: TextIO | None = None,
    client: httpx.Client | None = None,
) -> int:
    """Draw progress until the campaign ends (or `timeout` seconds pass).

    `token` is an API token (`Authorization: Bearer`), needed when the node
    requires sign-in. Returns 0 when it ended without failures, 1 with failures
    or on a pause (with `exit_on_pause`), 2 when it could not be read or
    `timeout` passed.
    """
    stream = out or sys.stderr
    own = client is None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    http = client or httpx.Client(base_url=base_url, timeout=10.0, headers=headers)
    bars: dict[str, tqdm] = {}
    seen_failures: set[str] = set()
    last_pause: str | None = None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            try:
                campaign, devices = _fetch(http, campaign_id)
            except httpx.HTTPError as exc:
                print(f"cannot read campaign {campaign_id}: {exc}", file=stream)
                return 2
            _draw(campaign, devices, bars, stream)
            for d in devices:
                if d.get("outcome") == "failure" and d["endpoint"] not in seen_failures:
                    seen_failures.add(d["endpoint"])
                    note = f" ({d['rollback_note']})" if d.get("rollback_note") else ""
                    tqdm.write(f"FAILED {d['endpoint']}: {d.get('reason')}{note}", file=stream)
            state = campaign["state"]
            if state == "paused" and campaign.get("pause_reason") != last_pause:
                last_pause = campaign.get("pause_reason")
                tqdm.write(f"PAUSED: {last_pause}", file=stream)
                if exit_on_pause:
                    return 1
            if state in FINAL:
                counts = campaign.get("counts", {})
                summary = ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "total")
                tqdm.write(f"campaign {campaign_id} {state}: {summary}", file=stream)
                return 1 if counts.get("failures") else 0
            if deadline is not None and time.monotonic() > deadline:
                return 2
            time.sleep(interval)
    finally:
        for bar in bars.values():
            bar.close()
        if own:
            http.close()


def _draw(
    campaign: dict[str, Any], devices: list[dict[str, Any]], bars: dict[str, tqdm], out: TextIO
) -> None:
    total = len(devices)
    done = sum(1 for d in devices if d["state"] in DONE_STATES)
    failed = sum(1 for d in devices if d.get("outcome") == "failure")
    active = sum(1 for d in devices if d["state"] in ("in_progress", "rolling_back"))
    bar = bars.get("all")
    if bar is None:
        title = f"#{campaign['id']} {campaign['name']}"[:30]
        bar = bars["all"] = tqdm(total=total, desc=title, unit="dev", file=out, position=0)
    _set(bar, done, total)
    bar.set_postfix(state=campaign["state"], active=active, failed=failed, refresh=False)
    bar.refresh()
    batches = sorted({int(d["batch"]) for d in devices})
    for i, number in enumerate(batches, start=1):
        members = [d for d in devices if int(d["batch"]) == number]
        key = f"batch{number}"
        b = bars.get(key)
        if b is None:
            label = "  canary" if number == 0 else f"  batch {number}"
            b = bars[key] = tqdm(total=len(members), desc=label, unit="dev", file=out, position=i)
        _set(b, sum(1 for d in members if d["state"] in DONE_STATES), len(members))
        steps: dict[str, int] = {}
        for d in members:
            if d["state"] in ("in_progress", "rolling_back") and d.get("step"):
                steps[d["step"]] = steps.get(d["step"], 0) + 1
        b.set_postfix(steps, refresh=False)
        b.refresh()


def _set(bar: tqdm, n: int, total: int) -> None:
    if bar.total != total:
        bar.total = total
    bar.n = n


def main(argv: Sequence[str] | None = None) -> int:
    """`shoal campaign watch ID [--url URL] [--token T] [--interval S] [--exit-on-pause]`."""
    parser = argparse.ArgumentParser(prog="shoal campaign")
    sub = parser.add_subparsers(dest="action", required=True)
    w = sub.add_parser("watch", help="show a campaign's progress until it ends")
    w.add_argument("campaign_id", type=int)
    w.add_argument("--url", default="http://127.0.0.1:8080", help="Shoal's HTTP address")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    w.add_argument("--exit-on-pause", action="store_true", help="stop watching at a pause")
    w.add_argument(
        "--token",
        default=os.environ.get("SHOAL_TOKEN"),
        help="API token (default: $SHOAL_TOKEN)",
    )
    args = parser.parse_args(argv)
    return watch(
        args.campaign_id,
        args.url,
        interval=args.interval,
        exit_on_pause=args.exit_on_pause,
        token=args.token,
    )


if __name__ == "__main__":
    sys.exit(main())

"""`shoal simulate` / `python -m shoal.sim`: run a fleet against a server from a shell.

Example::

    shoal simulate --server coap://127.0.0.1:5683 --count 100 --profile mixed \\
        --enclosures ENC-AAAA,ENC-BBBB --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import urllib.parse
from collections.abc import Sequence

from shoal.coap.endpoint import run
from shoal.sim.device import VERSIONS
from shoal.sim.firmware import FirmwareOutcome
from shoal.sim.fleet import FAULTS, PROFILE_CHOICES, Fleet, FleetConfig


def parse_server(text: str) -> tuple[str, int]:
    """`coap://host:port`, `host:port`, `[::1]:5683` or `host` (port 5683)."""
    if "://" not in text:
        text = "coap://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "coap":
        raise argparse.ArgumentTypeError(
            f"unsupported scheme {parts.scheme!r}: the simulator speaks plain coap:// (no DTLS)"
        )
    try:
        port = parts.port or 5683
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"no host in {text!r}")
    return parts.hostname, port


def parse_shares(text: str) -> dict[str, float]:
    """`name=0.1,other=0.05` to a dict (a bare name means 1.0)."""
    shares: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            share = float(value) if sep else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad share {item!r}") from None
        if not 0.0 <= share <= 1.0:
            raise argparse.ArgumentTypeError(f"share out of 0..1 in {item!r}")
        shares[name.strip()] = share
    return shares


def _faults(text: str) -> dict[str, float]:
    shares = parse_shares(text)
    bad = set(shares) - set(FAULTS)
    if bad:
        raise argparse.ArgumentTypeError(f"unknown faults {sorted(bad)}; known: {FAULTS}")
    return shares


def _outcomes(text: str) -> dict[str, float]:
    shares = parse_shares(text)
    known = {o.value for o in FirmwareOutcome}
    bad = set(shares) - known
    if bad:
        raise argparse.ArgumentTypeError(f"unknown outcomes {sorted(bad)}; known: {sorted(known)}")
    return shares


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The simulator's options, for `shoal simulate` to reuse."""
    a = parser.add_argument
    a("--server", type=parse_server, default=("127.0.0.1", 5683), help="coap://host:port")
    a("--count", type=int, default=10, help="number of devices")
    a("--profile", choices=PROFILE_CHOICES, default="mixed")
    a("--camera-share", type=float, default=0.2, help="share of cameras in a mixed fleet")
    a("--enclosures", default="", help="comma-separated enclosure ids, assigned round-robin")
    a("--enclosure-param", default="enc", help="registration query parameter for the id")
    a("--duration", type=float, default=0.0, help="seconds to run; 0 runs until interrupted")
    a("--lifetime", type=int, default=300, help="registration lifetime (s)")
    a("--lwm2m-version", choices=VERSIONS, default="1.1")
    a("--name-prefix", default="sim")
    a(
        "--name-format",
        default="{prefix}-{kind}-{index:05d}",
        help="fields: prefix kind index enc serial",
    )
    a("--first-index", type=int, default=0)
    a("--seed", type=int, default=1)
    a("--concurrency", type=int, default=100, help="registrations in flight while starting")
    a("--sample-interval", type=float, default=10.0, help="real seconds between sensor samples")
    a("--send-interval", type=float, default=None, help="seconds between Send reports (1.1+)")
    a("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    a("--firmware-update-delay", type=float, default=2.0)
    a(
        "--firmware-outcomes",
        type=_outcomes,
        default={},
        help="e.g. integrity=0.05,failure=0.05,hang=0.01 (the rest succeed)",
    )
    a("--faults", type=_faults, default={}, help=f"shares of {', '.join(FAULTS)}, e.g. stuck=0.05")
    a("--status-interval", type=float, default=10.0, help="seconds between status lines")
    a("--no-progress", action="store_true", help="no progress bars")
    a("-v", "--verbose", action="count", default=0)
    return parser


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    return FleetConfig(
        server=args.server,
        count=args.count,
        profile=args.profile,
        camera_share=args.camera_share,
        enclosures=tuple(e.strip() for e in args.enclosures.split(",") if e.strip()),
        enclosure_param=args.enclosure_param,
        version=args.lwm2m_version,
        lifetime=args.lifetime,
        name_prefix=args.name_prefix,
        name_format=args.name_format,
        first_index=args.first_index,
        seed=args.seed,
        concurrency=args.concurrency,
        sample_interval=args.sample_interval,
        send_interval=args.send_interval,
        time_scale=args.time_scale,
        firmware_outcomes=args.firmware_outcomes,
        faults=args.faults,
        progress=not args.no_progress,
        device={"firmware_update_delay": args.firmware_update_delay},
    )


def _status(fleet: Fleet) -> str:
    s = fleet.summary()
    return (
        f"devices={s['devices']} registered={s['registered']} failed={s['failed']} "
        f"updates={s['updates']} requests={s['requests']} notifications={s['notifications']} "
        f"sends={s['sends']} reboots={s['reboots']}"
    )


async def simulate(config: FleetConfig, duration: float, status_interval: float = 10.0) -> int:
    """Run a fleet for `duration` seconds (0: until SIGINT/SIGTERM); exit status."""
    fleet = Fleet(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await fleet.start()
        print(f"started: {_status(fleet)}", flush=True)
        deadline = loop.time() + duration if duration > 0 else None
        while not stop.is_set():
            wait = status_interval
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            if not stop.is_set():
                print(_status(fleet), flush=True)
    finally:
        summary = await fleet.stop()
        print(f"stopped: {_status(fleet)}", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0 if summary["registrations"] > 0 or config.count == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(
        argparse.ArgumentParser(
            prog="shoal simulate", description="Simulate a fleet of LwM2M fish-farm devices."
        )
    )
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
        result: int = run(simulate(config, args.duration, args.status_interval))
    except ValueError as exc:
        print(f"shoal simulate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result

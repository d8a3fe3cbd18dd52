"""`shoal serve | demo | simulate`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from shoal.auth import cli as auth_cli
from shoal.coap.endpoint import run
from shoal.node import NodeConfig, ShoalNode
from shoal.ops.logs import configure_logging
from shoal.server import events as ev
from shoal.server.server import Lwm2mServer

log = logging.getLogger("shoal")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coap-host", default=None, help="CoAP bind address (default 127.0.0.1)")
    p.add_argument("--coap-port", type=int, default=None, help="CoAP port (default 5683)")
    p.add_argument("--coaps-port", type=int, default=None, help="CoAPS port (default 5684)")
    p.add_argument("--http-host", default=None, help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (default 8080)")
    p.add_argument("--data-dir", default=None, help="data directory (default ./data)")
    p.add_argument("--database-url", default=None, help="e.g. postgresql+psycopg://host/db")
    p.add_argument("-v", "--verbose", action="store_true", help="log every registration")


def _node_config(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig.from_env(
        coap_host=args.coap_host,
        coap_port=args.coap_port,
        coaps_port=args.coaps_port,
        secure=False if args.command == "demo" else None,  # the demo fleet speaks NoSec
        demo=True if args.command == "demo" else None,  # the documented demo admin
        http_host=args.http_host,
        http_port=args.http_port,
        data_dir=args.data_dir,
        database_url=args.database_url,
    )


def _log_events(server: Lwm2mServer, verbose: bool) -> None:
    if not verbose:
        return
    bus = server.bus
    bus.subscribe(ev.Registered, lambda e: log.info("registered %s", e.registration))
    bus.subscribe(ev.Deregistered, lambda e: log.info("de-registered %s", e.registration))
    bus.subscribe(ev.Expired, lambda e: log.info("expired %s", e.registration))


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover
            pass
    await stop.wait()


async def _report(server: Lwm2mServer, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        c = server.counters
        log.info(
            "devices=%d registered=%d updates=%d notifications=%d sends=%d rejected=%d",
            len(server.store),
            c["registered"],
            c["updated"],
            c["notifications"],
            c["sends"],
            c["rejected"],
        )


async def _start(args: argparse.Namespace) -> ShoalNode:
    node = ShoalNode(_node_config(args))
    await node.start()
    _log_events(node.server, args.verbose)
    host, port = node.server.address
    log.info("LwM2M server on coap://%s:%d", host, port)
    if node.server.secure_address is not None:
        log.info("LwM2M server on coaps://%s:%d", *node.server.secure_address)
    if not node.security.secure:
        log.warning("insecure mode: devices without credentials may register over NoSec")
    log.info("web UI and API on %s (API docs: /api/v1/docs)", node.http_url)
    return node


async def serve(args: argparse.Namespace) -> None:
    node = await _start(args)
    reporter = asyncio.get_running_loop().create_task(_report(node.server, 10.0))
    try:
        await _wait_for_stop()
    finally:
        reporter.cancel()
        await node.stop()


async def demo(args: argparse.Namespace) -> None:
    """The node, a seeded demo farm and a simulated fleet: try Shoal in one command."""
    from shoal.demo import seed_demo_farms
    from shoal.sim import Fleet, FleetConfig

    node = await _start(args)
    codes = await seed_demo_farms(node.inventory, node.config.fleet.tenant)
    host, port = node.server.address
    log.info("starting %d simulated devices in enclosures %s", args.devices, ", ".join(codes))
    fleet = Fleet(
        FleetConfig(
            server=(host, port),
            count=args.devices,
            profile="mixed",
            enclosures=codes,
            progress=False,
            sample_interval=5.0,
        )
    )
    await fleet.start()
    reporter = asyncio.get_running_loop().create_task(_report(node.server, 10.0))
    try:
        await _wait_for_stop()
    finally:
        reporter.cancel()
        await fleet.stop()
        await node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shoal", description="LwM2M device management for fish farms"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the LwM2M server")
    _server_args(p_serve)
    p_demo = sub.add_parser("demo", help="run the server with a simulated demo fleet")
    _server_args(p_demo)
    p_demo.add_argument("--devices", type=int, default=30, help="simulated devices (default 30)")
    sub.add_parser("simulate", help="run a simulated fleet against a server", add_help=False)
    sub.add_parser("campaign", help="firmware campaigns (watch progress)", add_help=False)
    auth_cli.add_parsers(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "campaign":
        from shoal.firmware.cli import main as campaign_main

        return int(campaign_main(argv[1:]) or 0)
    if argv and argv[0] == "simulate":
        from shoal.sim import main as sim_main

        return int(sim_main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    if args.command in ("user", "token"):
        return auth_cli.run(args)
    configure_logging()  # SHOAL_LOG_FORMAT=json for one JSON object per line
    try:
        if args.command == "serve":
            run(serve(args))
        elif args.command == "demo":
            run(demo(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

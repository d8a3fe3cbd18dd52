"""DTLS handshakes and session memory: Shoal's DTLS server against libcoap's, side by side.

One command, `python bench/dtls.py`, starts two servers, each in its own
process pinned to core 0:

- shoal:   `DtlsCoapEndpoint` (pyOpenSSL over memory BIOs, uvloop), PSK and
           certificates on one context, like a production Shoal node;
- libcoap: `coap-server-openssl -k <psk> -c server.pem -j server.key -C ca.pem`
           (C, OpenSSL with datagram BIOs), PSK and certificates at once.

The same client-side driver, in this process pinned to core 1, runs full DTLS
1.2 handshakes against each (cookie exchange included, a fresh UDP socket and
source port per handshake, `--inflight` handshakes at a time, close_notify after
each so the server frees the session):

- psk:   TLS_PSK_WITH_AES_128_CCM_8 (CBC-SHA256 offered too);
- ecdhe: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (GCM offered too) with a client
         certificate the server verifies against its CA; P-256 everywhere.

The client costs about as much CPU per handshake as the server, so the wall
rate can be the client's ceiling. The figure compared is therefore handshakes
per second of *server* CPU (user+system time of the server process from /proc);
the table also shows the wall rate and how busy the server was.

Memory: fresh servers, a few warm-up sessions kept open, then `--sessions` more
sessions kept open; (RSS after - RSS before) / sessions, per mode.

Servers not being measured are stopped (SIGSTOP). Everything is on 127.0.0.1;
child processes die with this one and after `--lifetime` seconds at most.
The last line is the summary:
`dtls: psk shoal/libcoap=<r> ecdhe shoal/libcoap=<r> mem shoal/libcoap=<r>`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SERVER_CORE = 0
LOADGEN_CORE = 1
PSK_IDENTITY = b"pen07-oxygen-0042"
PSK_KEY = b"fish-farm-psk-16"
CIPHERS = {
    "psk": "PSK-AES128-CCM8:PSK-AES128-CBC-SHA256",
    "ecdhe": "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256",
}


# -- certificates ---------------------------------------------------------------------


def make_pki(d: Path) -> None:
    """A CA, a server certificate and a device certificate, ECDSA P-256, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(cn: str, key: Any, issuer: Any = None, ca: bool = False) -> Any:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        issuer_name, issuer_key = issuer or (name, key)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )

    def write(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)

    def key_pem(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("Shoal bench CA", ca_key, ca=True)
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(f"bench-{role}", key, (ca.subject, ca_key))
        write(f"{role}.pem", c.public_bytes(serialization.Encoding.PEM))
        write(f"{role}.key", key_pem(key))
    write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))


# -- the Shoal server (child process) -------------------------------------------------


async def serve_shoal(port: int, pki: Path) -> None:
    import asyncio

    from shoal.coap.codes import Code
    from shoal.coap.message import Message
    from shoal.dtls import DtlsConfig
    from shoal.dtls.endpoint import DtlsCoapEndpoint

    keys = {PSK_IDENTITY: PSK_KEY}
    cfg = DtlsConfig(
        psk_lookup=lambda ident: keys.get(ident, PSK_KEY),  # any identity, like libcoap -k
        certificate_chain=(pki / "server.pem").read_bytes(),
        private_key=(pki / "server.key").read_bytes(),
        client_cas=(pki / "ca.pem").read_bytes(),
        max_handshakes=10_000,
    )
    ep = await DtlsCoapEndpoint.create(HOST, port, dtls=cfg)
    ep.route("/hello", lambda m, a: Message(code=Code.CONTENT, payload=b"hello world"))
    print(f"PORT {ep.address[1]}", flush=True)
    await asyncio.Event().wait()


# -- process management ---------------------------------------------------------------


_PR_SET_PDEATHSIG = 1


def _child_setup(core: int | None, lifetime: int) -> Callable[[], None]:
    def setup() -> None:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if core is not None:
            os.sched_setaffinity(0, {core})
        signal.alarm(lifetime)  # survives exec: a hard bound on the child's life

    return setup


def free_port_pair() -> int:
    """A UDP port p with p+1 free too (libcoap serves DTLS on its port + 1)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind((HOST, 0))
            p: int = a.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                    b.bind((HOST, p + 1))
            except OSError:
                continue
            return p
    raise RuntimeError("no free pair of UDP ports")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Server:
    name: str
    dtls_port: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pause(self) -> None:
        if self.proc is not None and self.proc.poll() is None and not self.stopped:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None and self.stopped:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.stopped = False


class Fleet:
    def __init__(self, pin: bool, lifetime: int) -> None:
        self.pin = pin
        self.lifetime = lifetime
        self.servers: list[Server] = []

    def start(self, server: Server, reports_port: bool = False) -> Server:
        """Start `server`; with `reports_port` it binds port 0 and prints `PORT <n>`."""
        server.proc = subprocess.Popen(
            server.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if reports_port else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_child_setup(SERVER_CORE if self.pin else None, self.lifetime),
        )
        self.servers.append(server)
        if reports_port:
            out = server.proc.stdout
            assert out is not None
            ready, _, _ = select.select([out], [], [], 30.0)
            line = out.readline().decode() if ready else ""
            if not line.startswith("PORT "):
                raise RuntimeError(f"{server.name} did not start")
            server.dtls_port = int(line.split()[1])
        return server

    def only(self, server: Server) -> None:
        for s in self.servers:
            if s is not server:
                s.pause()
        server.resume()

    def stop(self, server: Server) -> None:
        if server.proc is None or server.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            server.proc.send_signal(signal.SIGCONT)
            server.proc.terminate()
        try:
            server.proc.wait(3.0)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(2.0)

    def close(self) -> None:
        for s in self.servers:
            self.stop(s)
        self.servers.clear()


# -- the client-side handshake driver (this process) -----------------------------------


class Driver:
    """Full DTLS handshakes from fresh sockets, `inflight` at a time, polled with epoll."""

    def __init__(self, pki: Path) -> None:
        from shoal.dtls.client import client_context

        self.contexts: dict[str, tuple[Any, Any]] = {
            "psk": client_context(psk=(PSK_IDENTITY, PSK_KEY), ciphers=CIPHERS["psk"]),
            "ecdhe": client_context(
                certificate=(pki / "client.pem").read_bytes(),
                private_key=(pki / "client.key").read_bytes(),
                ciphers=CIPHERS["ecdhe"],
            ),
        }
        self.ciphers: dict[tuple[str, int], str] = {}

    def run(
        self,
        mode: str,
        port: int,
        *,
        count: int | None = None,
        duration: float | None = None,
        inflight: int = 8,
        keep: bool = False,
        timeout: float = 5.0,
    ) -> tuple[int, int, list[Any]]:
        """Handshakes until `count` are done or `duration` passed: (ok, failed, kept).

        With `keep`, established sessions stay open and are returned as
        (socket, client) pairs; otherwise each gets a close_notify at once.
        """
        from OpenSSL import SSL

        from shoal.dtls.client import DtlsClient, DtlsHandshakeError

        ctx, cb = self.contexts[mode]
        poller = select.epoll()
        slots: dict[int, tuple[socket.socket, DtlsClient, float]] = {}
        kept: list[Any] = []
        ok = failed = started = 0
        t0 = time.perf_counter()
        end = t0 + duration if duration is not None else None

        def more() -> bool:
            if count is not None and started >= count:
                return False
            return end is None or time.perf_counter() < end

        def start() -> None:
            nonlocal started
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            s.connect((HOST, port))
            s.setblocking(False)
            cl = DtlsClient(ctx, keep=cb)
            for d in cl.start():
                s.send(d)
            slots[s.fileno()] = (s, cl, time.perf_counter() + timeout)
            poller.register(s.fileno(), select.EPOLLIN)
            started += 1

        def finish(fd: int, success: bool) -> None:
            nonlocal ok, failed
            s, cl, _ = slots.pop(fd)
            poller.unregister(fd)
            if success:
                ok += 1
                self.ciphers[(mode, port)] = cl.cipher() or "?"
                if keep:
                    kept.append((s, cl))
                    return
                with contextlib.suppress(SSL.Error, OSError):
                    cl.conn.shutdown()
                    for d in cl._output():
                        s.send(d)
            else:
                failed += 1
            s.close()

        try:
            while True:
                while len(slots) < inflight and more():
                    start()
                if not slots:
                    break
                now = time.perf_counter()
                wait = 0.05
                for _fd, (_s, cl, _dl) in slots.items():
                    t = cl.get_timeout()
                    if t is not None:
                        wait = min(wait, t)
                for fd, _ev in poller.poll(max(wait, 0.0005)):
                    s, cl, _dl = slots[fd]
                    try:
                        data = s.recv(4096)
                        _, out = cl.receive_datagram(data)
                        for d in out:
                            s.send(d)
                    except (DtlsHandshakeError, SSL.Error, ConnectionRefusedError):
                        finish(fd, False)
                        continue
                    except BlockingIOError:
                        continue
                    if cl.established:
                        finish(fd, True)
                now = time.perf_counter()
                for fd in list(slots):
                    s, cl, dl = slots[fd]
                    if now > dl:
                        finish(fd, False)
                        continue
                    t = cl.get_timeout()
                    if t is not None and t <= 0:
                        try:
                            for d in cl.handle_timeout():
                                s.send(d)
                        except (DtlsHandshakeError, OSError):
                            finish(fd, False)
        finally:
            for fd in list(slots):
                finish(fd, False)
            poller.close()
        return ok, failed, kept


def close_kept(kept: list[Any]) -> None:
    from OpenSSL import SSL

    for s, cl in kept:
        with contextlib.suppress(SSL.Error, OSError):
            cl.conn.shutdown()
            for d in cl._output():
                s.send(d)
        s.close()


def wait_ready(driver: Driver, server: Server, timeout: float = 15.0) -> None:
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early ({server.proc.returncode})")
        ok, _, _ = driver.run("psk", server.dtls_port, count=1, inflight=1, timeout=1.0)
        if ok:
            return
    raise RuntimeError(f"{server.name} did not complete a PSK handshake within {timeout:.0f}s")


# -- measuring ---------------------------------------------------------------------------


def core_busy() -> dict[int, float]:
    """Busy seconds of each core so far (all but idle and iowait)."""
    tick = os.sysconf("SC_CLK_TCK")
    busy: dict[int, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                busy[int(name[3:])] = (sum(v) - v[3] - v[4]) / tick
    return busy


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def wait_quiet(max_other: float, limit: float) -> None:
    """Wait up to `limit` s for both cores to be mostly idle (other benches, tests)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        a = core_busy()
        time.sleep(0.5)
        b = core_busy()
        if all((b[c] - a.get(c, 0.0)) / 0.5 <= max_other for c in (SERVER_CORE, LOADGEN_CORE)):
            return


@dataclass
class Rate:
    server: str
    mode: str
    ok: int
    failed: int
    wall: float
    server_cpu: float
    other: float = 0.0  # share of core 0 or 1 (the larger) other processes took

    @property
    def per_wall_s(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0

    @property
    def per_cpu_s(self) -> float:
        return self.ok / self.server_cpu if self.server_cpu > 0 else 0.0

    @property
    def busy(self) -> float:
        return self.server_cpu / self.wall if self.wall > 0 else 0.0


def measure_rate(
    driver: Driver, fleet: Fleet, server: Server, mode: str, args: argparse.Namespace
) -> Rate:
    """One measurement; repeated (up to --retries) when other processes used our cores."""
    fleet.only(server)
    best: Rate | None = None
    for _ in range(args.retries + 1):
        wait_quiet(args.max_other, args.quiet_wait)
        port, inflight = server.dtls_port, args.inflight
        driver.run(mode, port, duration=min(0.5, args.seconds), inflight=inflight)  # warm-up
        cores0, cpu0, own0 = core_busy(), cpu_seconds(server.pid), own_cpu()
        t0 = time.perf_counter()
        ok, failed, _ = driver.run(mode, port, duration=args.seconds, inflight=inflight)
        time.sleep(0.05)  # the server's last flights
        wall = time.perf_counter() - t0
        cores1, cpu, own = core_busy(), cpu_seconds(server.pid) - cpu0, own_cpu() - own0
        c0 = cores1[SERVER_CORE] - cores0[SERVER_CORE]
        c1 = cores1[LOADGEN_CORE] - cores0[LOADGEN_CORE]
        other = max(c0 - cpu, c1 - own, 0.0) / wall if args.pin else 0.0
        rate = Rate(server.name, mode, ok, failed, wall, cpu, other)
        if best is None or rate.other < best.other:
            best = rate
        if other <= args.max_other:
            break
    assert best is not None
    return best


def measure_memory(
    driver: Driver, fleet: Fleet, server: Server, sessions: dict[str, int]
) -> tuple[dict[str, float], dict[str, int], list[Any]]:
    """KiB per open session for each mode, sessions that failed, and what to close."""
    fleet.only(server)
    all_kept: list[Any] = []
    per: dict[str, float] = {}
    failures: dict[str, int] = {}
    for mode, n in sessions.items():
        _, _, warm = driver.run(mode, server.dtls_port, count=20, inflight=4, keep=True)
        all_kept += warm
        time.sleep(0.2)
        before = rss_kib(server.pid)
        ok, failed, kept = driver.run(mode, server.dtls_port, count=n, inflight=8, keep=True)
        all_kept += kept
        time.sleep(0.2)
        after = rss_kib(server.pid)
        per[mode] = (after - before) / max(ok, 1)
        failures[mode] = failed
    return per, failures, all_kept


def bench(args: argparse.Namespace) -> int:
    coap_server = shutil.which("coap-server-openssl")
    if coap_server is None:
        print("coap-server-openssl not found (Debian libcoap3-bin)", file=sys.stderr)
        return 1
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            print("needs two cores to pin server and load apart (--no-pin)", file=sys.stderr)
            return 1
        os.sched_setaffinity(0, {LOADGEN_CORE})
    with tempfile.TemporaryDirectory(prefix="shoal-dtls-bench-") as tmp:
        pki = Path(tmp)
        make_pki(pki)
        driver = Driver(pki)
        fleet = Fleet(args.pin, args.lifetime)

        def start_libcoap() -> Server:
            # libcoap serves DTLS on its port + 1 and cannot be asked for port 0:
            # another process may take the pair first, so try a few.
            for _ in range(5):
                lp = free_port_pair()
                server = Server(
                    "libcoap",
                    lp + 1,
                    [
                        coap_server,
                        "-A",
                        HOST,
                        "-p",
                        str(lp),
                        "-k",
                        PSK_KEY.decode(),
                        "-c",
                        str(pki / "server.pem"),
                        "-j",
                        str(pki / "server.key"),
                        "-C",
                        str(pki / "ca.pem"),
                        "-v",
                        "0",
                    ],
                )
                fleet.start(server)
                fleet.only(server)
                try:
                    wait_ready(driver, server)
                except RuntimeError:
                    fleet.stop(server)
                    fleet.servers.remove(server)
                    continue
                return server
            raise RuntimeError("libcoap server did not start")

        def start_servers() -> tuple[Server, Server]:
            shoal = Server(
                "shoal", 0, [sys.executable, __file__, "--serve", "0", "--pki", str(pki)]
            )
            fleet.start(shoal, reports_port=True)
            fleet.only(shoal)
            wait_ready(driver, shoal)
            return shoal, start_libcoap()

        try:
            # memory first, on fresh processes
            shoal, libcoap = start_servers()
            sessions = {"psk": args.sessions, "ecdhe": max(1, args.sessions // 2)}
            mem: dict[str, dict[str, float]] = {}
            for s in (shoal, libcoap):
                per, failures, kept = measure_memory(driver, fleet, s, sessions)
                mem[s.name] = per
                for mode, f in failures.items():
                    if f:
                        print(f"note: {s.name} {mode}: {f} sessions failed", file=sys.stderr)
                close_kept(kept)
            fleet.close()
            # handshake rates, rounds interleaved, on fresh processes
            shoal, libcoap = start_servers()
            rates: list[Rate] = []
            for _ in range(args.rounds):
                for mode in ("psk", "ecdhe"):
                    for s in (shoal, libcoap):
                        rates.append(measure_rate(driver, fleet, s, mode, args))
            ciphers = {
                (s.name, mode): driver.ciphers.get((mode, s.dtls_port), "?")
                for s in (shoal, libcoap)
                for mode in ("psk", "ecdhe")
            }
        finally:
            fleet.close()

    report(rates, mem, sessions, ciphers, args)
    return 0


def report(
    rates: list[Rate],
    mem: dict[str, dict[str, float]],
    sessions: dict[str, int],
    ciphers: dict[tuple[str, str], str],
    args: argparse.Namespace,
) -> None:
    def med(server: str, mode: str, attr: str) -> float:
        vals = [getattr(r, attr) for r in rates if r.server == server and r.mode == mode]
        return statistics.median(vals) if vals else 0.0

    pin = "server core 0, load core 1" if args.pin else "unpinned"
    print(
        f"DTLS 1.2 handshakes ({args.rounds} rounds x {args.seconds:.0f} s, "
        f"{args.inflight} in flight, {pin}); medians"
    )
    head = (
        f"{'mode':6} {'server':8} {'cipher':32} {'hs/s wall':>10} "
        f"{'server busy':>11} {'hs/s per server CPU-s':>22} {'failed':>6} {'other':>6}"
    )
    print(head)
    print("-" * len(head))
    ratio: dict[str, float] = {}
    for mode in ("psk", "ecdhe"):
        for server in ("shoal", "libcoap"):
            failed = sum(r.failed for r in rates if r.server == server and r.mode == mode)
            print(
                f"{mode:6} {server:8} {ciphers.get((server, mode), '?'):32} "
                f"{med(server, mode, 'per_wall_s'):10.0f} "
                f"{med(server, mode, 'busy') * 100:10.0f}% "
                f"{med(server, mode, 'per_cpu_s'):22.0f} {failed:6d} "
                f"{med(server, mode, 'other') * 100:5.0f}%"
            )
        lib = med("libcoap", mode, "per_cpu_s")
        ratio[mode] = med("shoal", mode, "per_cpu_s") / lib if lib else 0.0
    print()
    print("Memory per open session (RSS delta / sessions)")
    for mode, n in sessions.items():
        row = "  ".join(f"{server} {mem[server][mode]:6.1f} KiB" for server in ("shoal", "libcoap"))
        print(f"{mode:6} {n:5d} sessions: {row}")
    lib_mem = mem["libcoap"]["psk"]
    ratio["mem"] = mem["shoal"]["psk"] / lib_mem if lib_mem > 0 else 0.0
    print()
    print(
        f"dtls: psk shoal/libcoap={ratio['psk']:.2f} ecdhe shoal/libcoap={ratio['ecdhe']:.2f} "
        f"mem shoal/libcoap={ratio['mem']:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    ap.add_argument("--inflight", type=int, default=32, help="handshakes in flight")
    ap.add_argument("--sessions", type=int, default=1000, help="open sessions for memory (PSK)")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.15,
        help="repeat a run when other processes took more than this share of core 0 or 1",
    )
    ap.add_argument("--retries", type=int, default=2, help="repeats of a disturbed run")
    ap.add_argument("--quiet-wait", type=float, default=5.0, help="s to wait for idle cores")
    ap.add_argument("--lifetime", type=int, default=600, help="hard bound on children, s")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve is not None:
        from shoal.coap.endpoint import run

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            run(serve_shoal(args.serve, args.pki))
        return 0
    if not 1 <= args.rounds <= 10 or not 0.5 <= args.seconds <= 60:
        ap.error("rounds 1..10, seconds 0.5..60")
    if not 1 <= args.inflight <= 64 or not 10 <= args.sessions <= 10_000:
        ap.error("inflight 1..64, sessions 10..10000")
    if not 0 <= args.retries <= 5 or not 0 <= args.quiet_wait <= 60:
        ap.error("retries 0..5, quiet-wait 0..60 s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return bench(args)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

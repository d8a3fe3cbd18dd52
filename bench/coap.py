"""CoAP server throughput: Shoal's engine against libcoap (C) and aiocoap, side by side.

One command, `python bench/coap.py` (also `make bench`), starts every server in
its own process pinned to core 0 and drives them from a lean load generator
pinned to core 1 (the main process): 1000 UDP sockets, one per simulated
device, connected to the server under test and polled with epoll; requests are
pre-encoded datagrams that only get a fresh message id and token. 64 requests
are in flight at any time (closed loop), responses are matched by token and
message id.

Scenarios (all on 127.0.0.1, nothing else is touched):

- echo:     a raw UDP echo server; its rate is the generator's ceiling.
- register: CON `POST /rd?ep=..&lt=300&lwm2m=1.1&b=U` with a CoRE link body
            -> 2.01 Created, Location-Path rd/<id> (Shoal, aiocoap, coap-rd).
- get:      CON `GET /hello` -> 2.05 "hello world" (Shoal, aiocoap, coap-server).
- ingest:   NON 2.05 notifications with Observe, on tokens of observations the
            Shoal server established itself; open loop, counted by the server.

Idle servers use no CPU; whatever else runs on the two cores during a run is
measured from /proc, and a disturbed run is repeated. Rounds interleave the
servers, the table shows medians, and the last line is the figure `make bench`
reports:
`register: shoal/libcoap=<ratio> shoal/aiocoap=<ratio>`.

`docs/performance.md` explains the method and the figures seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
SERVER_CORE = 0
LOADGEN_CORE = 1

# CoAP numbers the generator needs (kept independent of Shoal's codec on purpose).
CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT = 1, 2, 3
CREATED, CHANGED, CONTENT = 0x41, 0x44, 0x45
OPT_OBSERVE, OPT_URI_PATH, OPT_CONTENT_FORMAT, OPT_URI_QUERY = 6, 11, 12, 15
LINK_FORMAT = 40

LINKS = (
    b'</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>,</4/0>,</5/0>,'
    b"</3303/0>,</3325/0>,</3326/0>,</3327/0>,</3300/0>"
)
HELLO = b"hello world"


def endpoint_name(i: int) -> str:
    """A fish-farm-looking endpoint name, one per simulated device."""
    return f"pen{i % 40:02d}-sensor-{i:05d}"


# -- a tiny CoAP encoder (the load generator's own) ---------------------------------


def _ext(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda opt: opt[0]):
        d, dx = _ext(number - last)
        ln, lx = _ext(len(value))
        out.append(d << 4 | ln)
        out += dx + lx + value
        last = number
    return bytes(out)


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes = b"",
    options: Iterable[tuple[int, bytes]] = (),
    payload: bytes = b"",
) -> bytes:
    head = bytes((0x40 | mtype << 4 | len(token), code)) + mid.to_bytes(2, "big") + token
    body = encode_options(options)
    return head + body + (b"\xff" + payload if payload else b"")


def register_tail(i: int) -> bytes:
    """Options and payload of device i's Register request (after header and token)."""
    opts = [
        (OPT_URI_PATH, b"rd"),
        (OPT_CONTENT_FORMAT, bytes((LINK_FORMAT,))),
        (OPT_URI_QUERY, f"ep={endpoint_name(i)}".encode()),
        (OPT_URI_QUERY, b"lt=300"),
        (OPT_URI_QUERY, b"lwm2m=1.1"),
        (OPT_URI_QUERY, b"b=U"),
    ]
    return encode_options(opts) + b"\xff" + LINKS


def get_tail(_i: int) -> bytes:
    return encode_options([(OPT_URI_PATH, b"hello")])


# -- server side (child processes) ----------------------------------------------------


class Registry:
    """The work a Register handler does at least: parse, validate, store, name.

    Shared by the Shoal and aiocoap servers so both do the same work per request.
    """

    def __init__(self) -> None:
        self.by_ep: dict[str, tuple[Any, ...]] = {}
        self.by_id: dict[str, tuple[Any, ...]] = {}
        self.seq = 0

    def register(self, queries: Iterable[str], payload: bytes, remote: Any) -> str | None:
        params: dict[str, str] = {}
        for q in queries:
            k, _, v = q.partition("=")
            params[k] = v
        ep = params.get("ep")
        if not ep or not payload:
            return None
        try:
            lifetime = int(params.get("lt", "86400"))
        except ValueError:
            return None
        self.seq += 1
        reg_id = f"{self.seq:x}"
        old = self.by_ep.get(ep)
        if old is not None:
            self.by_id.pop(old[0], None)
        rec = (reg_id, ep, lifetime, params.get("lwm2m", "1.0"), params.get("b", "U"), remote)
        self.by_ep[ep] = self.by_id[reg_id] = (*rec, payload)
        return reg_id


async def serve_shoal(port: int, ctl_port: int) -> None:
    from shoal.coap import options as o
    from shoal.coap.codes import Code
    from shoal.coap.endpoint import CoapEndpoint
    from shoal.coap.message import Message

    ep = await CoapEndpoint.create(HOST, port)
    ctl = await CoapEndpoint.create(HOST, ctl_port)
    registry = Registry()
    created, bad_request, not_allowed = int(Code.CREATED), int(Code.BAD_REQUEST), 0xA5

    def register(request: Message, remote: Any) -> Message:
        if request.code != POST:
            return Message(code=not_allowed)
        if request.content_format != LINK_FORMAT:
            return Message(code=bad_request)
        reg_id = registry.register(request.uri_query, request.payload, remote)
        if reg_id is None:
            return Message(code=bad_request)
        return Message(
            code=created, options=[(o.LOCATION_PATH, b"rd"), (o.LOCATION_PATH, reg_id.encode())]
        )

    def hello(request: Message, remote: Any) -> Message:
        return Message(code=CONTENT, options=[(o.CONTENT_FORMAT, b"")], payload=HELLO)

    # ingest: the server observes a resource on each device that asks for it
    received = [0]
    latest: dict[Any, bytes] = {}
    tasks: set[asyncio.Task[Any]] = set()

    def on_notify(remote: Any) -> Callable[[Message], None]:
        def notified(msg: Message) -> None:
            received[0] += 1
            latest[remote] = msg.payload

        return notified

    async def observe(remote: Any) -> None:
        req = Message(code=GET)
        for seg in (b"3303", b"0", b"5700"):
            req.add(o.URI_PATH, seg)
        with contextlib.suppress(Exception):
            await ep.observe(remote, req, on_notify(remote))

    def observe_me(request: Message, remote: Any) -> Message:
        task = asyncio.get_running_loop().create_task(observe(remote))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return Message(code=CHANGED)

    def count(request: Message, remote: Any) -> Message:
        now = asyncio.get_running_loop().time()
        return Message(code=CONTENT, payload=f"{received[0]} {now:.6f}".encode())

    ep.route("/rd", register)
    ep.route("/hello", hello)
    ep.route("/bench/observe", observe_me)
    ctl.route("/count", count)
    await asyncio.Event().wait()


async def serve_aiocoap(port: int) -> None:
    import logging

    import aiocoap
    import aiocoap.resource as res

    logging.basicConfig(level=logging.ERROR)
    registry = Registry()

    class RD(res.Resource):  # type: ignore[misc]
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            if request.opt.content_format != LINK_FORMAT:
                return aiocoap.Message(code=aiocoap.BAD_REQUEST)
            reg_id = registry.register(request.opt.uri_query, request.payload, request.remote)
            if reg_id is None:
                return aiocoap.Message(code=aiocoap.BAD_REQUEST)
            return aiocoap.Message(code=aiocoap.CREATED, location_path=("rd", reg_id))

    class Hello(res.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(code=aiocoap.CONTENT, content_format=0, payload=HELLO)

    site = res.Site()
    site.add_resource(["rd"], RD())
    site.add_resource(["hello"], Hello())
    await aiocoap.Context.create_server_context(site, bind=(HOST, port))
    await asyncio.Event().wait()


def serve_echo(port: int) -> None:
    """A raw UDP echo: the cheapest possible 'server', to bound the generator."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((HOST, port))
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:  # ends by SIGTERM, parent death or the lifetime alarm
        data, addr = recvfrom(2048)
        sendto(data, addr)


async def serve_uvloop_echo(port: int) -> None:
    """Echo from an asyncio protocol on uvloop: the floor of any uvloop server here."""

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.sendto = transport.sendto  # type: ignore[attr-defined]

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.sendto(data, addr)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((HOST, port))
    sock.setblocking(False)
    await asyncio.get_running_loop().create_datagram_endpoint(Echo, sock=sock)
    await asyncio.Event().wait()


def child_main(args: argparse.Namespace) -> None:
    if args.serve == "echo":
        serve_echo(args.port)
        return
    from shoal.coap.endpoint import run

    if args.serve == "shoal":
        run(serve_shoal(args.port, args.ctl_port))
    elif args.serve == "aiocoap":
        # on uvloop like Shoal by default (its faster loop); `--aiocoap-loop asyncio`
        # runs it on the standard loop it is developed on
        if args.aiocoap_loop == "uvloop":
            run(serve_aiocoap(args.port))
        else:
            asyncio.run(serve_aiocoap(args.port))
    elif args.serve == "uvloop-echo":
        run(serve_uvloop_echo(args.port))


# -- process management ---------------------------------------------------------------


def add_noise_options(ap: argparse.ArgumentParser, quiet_wait: float, budget: float) -> None:
    """The options every benchmark here shares for living with a busy machine."""
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.15,
        help="repeat a run when other processes took more than this share of a core we use",
    )
    ap.add_argument("--retries", type=int, default=2, help="repeats of a disturbed run")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=quiet_wait,
        help="seconds to wait for idle cores per run",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=budget,
        help="seconds after which the bench stops waiting for idle cores and repeating runs",
    )


def blast_notifications(
    socks: list[socket.socket],
    templates: list[bytearray],
    mids: list[int],
    seqs: list[int],
    seq_at: list[int],
    until: float,
) -> int:
    """Open-loop NON notifications, round-robin over the devices' sockets, until
    `until` (perf_counter): each datagram gets the device's next message id and
    Observe number written into its pre-encoded template. Returns how many went out."""
    pack_into = struct.pack_into
    perf = time.perf_counter
    n = len(socks)
    sent = i = 0
    while True:
        for _ in range(512):
            buf = templates[i]
            mids[i] = mid = (mids[i] + 1) & 0xFFFF
            seqs[i] = seq = seqs[i] + 1
            pack_into(">H", buf, 2, mid)
            pack_into(">I", buf, seq_at[i], 0x63000000 | (seq & 0xFFFFFF))
            try:
                socks[i].send(buf)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
            i = i + 1 if i + 1 < n else 0
        if perf() >= until:
            return sent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


_PR_SET_PDEATHSIG = 1


def _child_setup(core: int | None, lifetime: int) -> Callable[[], None]:
    def setup() -> None:
        # die with the parent, even if it is killed with SIGKILL
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if core is not None:
            os.sched_setaffinity(0, {core})
        signal.alarm(lifetime)  # kept across exec: a hard bound on the child's life

    return setup


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str  # e.g. "shoal", "libcoap-rd"
    kind: str  # shoal | aiocoap | libcoap | echo
    port: int
    argv: list[str]
    ctl_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None  # the child's stderr, read if it dies early

    def errors(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        text: str = self.log.read()[-2000:].decode(errors="replace")
        return text

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class Fleet:
    """Every child process of the benchmark; `close` kills them all, always."""

    def __init__(self, pin: bool, lifetime: int) -> None:
        self.pin = pin
        self.lifetime = lifetime
        self.servers: list[Server] = []

    def start(self, server: Server) -> Server:
        server.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        server.proc = subprocess.Popen(
            server.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=server.log,
            preexec_fn=_child_setup(SERVER_CORE if self.pin else None, self.lifetime),
        )
        self.servers.append(server)
        return server

    def close(self) -> None:
        for s in self.servers:
            if s.proc is None or s.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                s.proc.terminate()
        deadline = time.monotonic() + 3.0
        for s in self.servers:
            if s.proc is None:
                continue
            try:
                s.proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    s.proc.wait(10.0)
            if s.log is not None:
                s.log.close()


def coap_call(port: int, data: bytes, timeout: float = 3.0) -> bytes | None:
    """One request over a throw-away socket, retried every 100 ms up to `timeout`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.connect((HOST, port))
        s.settimeout(0.1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ConnectionRefusedError):
                s.send(data)
            try:
                reply = s.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                continue
            if reply[2:4] == data[2:4]:
                return reply
    return None


def wait_ready(server: Server, timeout: float = 15.0) -> None:
    """A CoAP ping (Empty CON) answered by anything means the server is up."""
    assert server.proc is not None
    deadline = time.monotonic() + timeout
    mid = 1
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited early ({server.proc.returncode}): {server.errors()}"
            )
        if coap_call(server.port, encode(CON, 0, mid), 0.3) is not None:
            return
        mid += 1
    raise RuntimeError(f"{server.name} did not answer a CoAP ping within {timeout:.0f}s")


# -- the load generator (this process) ------------------------------------------------


@dataclass
class Run:
    scenario: str
    server: str
    rate: float  # completed requests (or ingested notifications) per second
    ok: int = 0
    errors: int = 0
    lost: int = 0
    offered: float = 0.0  # ingest: datagrams per second the generator sent
    use: Usage = field(default_factory=lambda: Usage(0.0, 0.0, 0.0, 0.0))
    attempts: int = 1
    disturbed: bool = False  # other processes used our cores during the run


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def core_busy() -> dict[int, float]:
    """Busy seconds of each core (everything but idle and iowait, steal included)."""
    tick = os.sysconf("SC_CLK_TCK")
    busy: dict[int, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                busy[int(name[3:])] = (sum(v) - v[3] - v[4]) / tick
    return busy


@dataclass
class Usage:
    """CPU use during a measurement, in cores: `other*` is what other processes took."""

    server: float
    gen: float
    other_server_core: float
    other_gen_core: float


@dataclass
class Snap:
    t: float
    server: float
    gen: float
    cores: dict[int, float]

    @classmethod
    def take(cls, pid: int) -> Snap:
        return cls(time.perf_counter(), cpu_seconds(pid), _own_cpu(), core_busy())

    def usage_since(self, start: Snap) -> Usage:
        span = max(self.t - start.t, 1e-9)
        server = (self.server - start.server) / span
        gen = (self.gen - start.gen) / span
        c0 = (self.cores.get(SERVER_CORE, 0.0) - start.cores.get(SERVER_CORE, 0.0)) / span
        c1 = (self.cores.get(LOADGEN_CORE, 0.0) - start.cores.get(LOADGEN_CORE, 0.0)) / span
        return Usage(server, gen, max(0.0, c0 - server), max(0.0, c1 - gen))


class LoadGen:
    """1000 UDP sockets (one per simulated device) polled with epoll."""

    def __init__(self, n_sockets: int) -> None:
        self.socks: list[socket.socket] = []
        self.poller = select.epoll()
        for _ in range(n_sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            s.setblocking(False)
            self.socks.append(s)
            self.poller.register(s.fileno(), select.EPOLLIN)
        self.index = {s.fileno(): i for i, s in enumerate(self.socks)}
        self.mids = [(i * 7919) & 0xFFFF for i in range(n_sockets)]

    def close(self) -> None:
        self.poller.close()
        for s in self.socks:
            s.close()

    def aim(self, port: int) -> None:
        """Connect every socket to the server under test and drop stale datagrams."""
        for s in self.socks:
            s.connect((HOST, port))
            for _ in range(64):
                try:
                    s.recv(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break

    def closed_loop(
        self,
        tails: list[bytes],
        head: tuple[int, int],
        expect: int | None,
        warmup: float,
        duration: float,
        inflight: int,
        server_pid: int,
        timeout: float = 2.0,
        spin: bool = False,
    ) -> tuple[float, int, int, int, Usage]:
        """Keep `inflight` requests outstanding; returns (rate, ok, errors, lost, usage).

        The datagram of socket i is header + mid + token + tails[i]; the token
        names the in-flight slot and a generation, so late answers are ignored.
        """
        socks = self.socks
        n = len(socks)
        mids = self.mids
        b0 = 0x40 | head[0] << 4 | 4
        templates = [bytearray(bytes((b0, head[1], 0, 0, 0, 0, 0, 0)) + t) for t in tails]
        pack_into = struct.pack_into
        unpack_from = struct.unpack_from
        slot_tok = [-1] * inflight
        slot_mid = [0] * inflight
        slot_sent = [0.0] * inflight
        gen = 0
        nxt = 0
        ok = errors = lost = 0
        perf = time.perf_counter

        def issue(slot: int, now: float) -> None:
            nonlocal gen, nxt
            i = nxt
            nxt = i + 1 if i + 1 < n else 0
            gen = (gen + 1) & 0xFFFFFF
            tok = slot << 24 | gen
            mid = mids[i] = (mids[i] + 1) & 0xFFFF
            buf = templates[i]
            pack_into(">HI", buf, 2, mid, tok)
            slot_tok[slot] = tok
            slot_mid[slot] = mid
            slot_sent[slot] = now
            try:  # (try costs nothing on 3.11; contextlib.suppress would)
                socks[i].send(buf)
            except (BlockingIOError, ConnectionRefusedError):
                pass  # lost: the timeout below replaces it

        start = perf()
        for slot in range(inflight):
            issue(slot, start)
        mark_at = start + warmup
        end_at = mark_at + duration
        drain_until = end_at + 1.0
        mark: Snap | None = None
        end: Snap | None = None
        mark_ok = end_ok = 0
        ending = False
        active = inflight
        check_at = start + 0.25
        poll = self.poller.poll
        sock_of = {fd: socks[i] for fd, i in self.index.items()}
        wait = 0.0 if spin else 0.05
        while active:
            events = poll(wait)
            now = perf()
            for fd, _ in events:
                sock = sock_of[fd]
                try:
                    data = sock.recv(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                if len(data) < 8 or data[0] & 0x0F != 4:
                    continue  # Empty ACK of a separate response, or not ours
                first, code, mid, tok = unpack_from(">BBHI", data)
                slot = tok >> 24
                if slot >= inflight or slot_tok[slot] != tok:
                    continue  # late answer to a request already given up
                if expect is None:  # echo: our own request came back
                    ok += 1
                else:
                    mtype = first >> 4 & 3
                    if mtype == ACK:
                        if mid != slot_mid[slot]:
                            continue
                    elif mtype == CON:  # separate response: acknowledge it
                        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                            sock.send(bytes((0x60, 0)) + mid.to_bytes(2, "big"))
                    if code == expect:
                        ok += 1
                    else:
                        errors += 1
                if ending:
                    slot_tok[slot] = -1
                    active -= 1
                else:
                    issue(slot, now)
            if now >= check_at:
                check_at = now + 0.25
                if mark is None and now >= mark_at:
                    mark_ok, mark = ok, Snap.take(server_pid)
                if not ending and now >= end_at:
                    ending = True
                    end_ok, end = ok, Snap.take(server_pid)
                if now >= drain_until:
                    break
                for slot in range(inflight):
                    if slot_tok[slot] >= 0 and now - slot_sent[slot] > timeout:
                        lost += 1
                        if ending:
                            slot_tok[slot] = -1
                            active -= 1
                        else:
                            issue(slot, now)
        if end is None:  # every request was lost; report what there is
            end_ok, end = ok, Snap.take(server_pid)
        if mark is None:
            mark = Snap(start, end.server, end.gen, end.cores)
        span = max(end.t - mark.t, 1e-9)
        return (end_ok - mark_ok) / span, ok, errors, lost, end.usage_since(mark)

    # -- ingest ---------------------------------------------------------------------

    def establish_observations(self, port: int, timeout: float = 15.0) -> list[bytes | None]:
        """Each socket asks Shoal to observe it and answers Shoal's GET (Observe=0).

        Returns the observation token of each socket (None where it failed).
        """
        socks = self.socks
        tokens: list[bytes | None] = [None] * len(socks)
        pending = set(range(len(socks)))
        post_tail = encode_options([(OPT_URI_PATH, b"bench"), (OPT_URI_PATH, b"observe")])
        deadline = time.monotonic() + timeout
        resend_at = 0.0
        while pending and time.monotonic() < deadline:
            if time.monotonic() >= resend_at:
                resend_at = time.monotonic() + 2.0
                for n_sent, i in enumerate(sorted(pending)):
                    self.mids[i] = mid = (self.mids[i] + 1) & 0xFFFF
                    req = encode(CON, POST, mid, i.to_bytes(4, "big")) + post_tail
                    with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                        socks[i].send(req)
                    if n_sent % 64 == 63:
                        self._answer_gets(tokens, pending, 0.0)
            self._answer_gets(tokens, pending, 0.05)
        return tokens

    def _answer_gets(self, tokens: list[bytes | None], pending: set[int], wait: float) -> None:
        for fd, _ in self.poller.poll(wait):
            i = self.index[fd]
            try:
                data = self.socks[i].recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                continue
            if len(data) < 4 or data[1] != GET or data[0] >> 4 & 3 != CON:
                continue
            tkl = data[0] & 0x0F
            token = data[4 : 4 + tkl]
            ack = encode(
                ACK, CONTENT, data[2] << 8 | data[3], token, [(OPT_OBSERVE, b"\x01")], b"12.5"
            )
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                self.socks[i].send(ack)
            tokens[i] = token
            pending.discard(i)

    def flood_notifications(
        self,
        tokens: list[bytes | None],
        ctl_port: int,
        warmup: float,
        duration: float,
        server_pid: int,
    ) -> tuple[float, float, int, Usage]:
        """Send NON 2.05 notifications as fast as possible, round-robin over devices.

        Returns (ingested/s counted by the server, offered/s, ingested, usage).
        """
        live = [i for i, t in enumerate(tokens) if t is not None]
        socks = [self.socks[i] for i in live]
        n = len(socks)
        templates = []
        seq_at = []
        for i in live:
            tok = tokens[i]
            assert tok is not None
            head = bytes((0x40 | NON << 4 | len(tok), CONTENT, 0, 0)) + tok
            seq_at.append(len(head))
            opts = encode_options([(OPT_OBSERVE, b"\x00\x00\x02"), (OPT_CONTENT_FORMAT, b"")])
            templates.append(bytearray(head + opts + b"\xff" + b"12.5"))
        seqs = [2] * n
        # each device's one message-id sequence, shared with its requests: a
        # repeated (port, mid) would be taken for a duplicate by the server
        mids = [self.mids[i] for i in live]
        perf = time.perf_counter

        def blast(until: float) -> int:
            return blast_notifications(socks, templates, mids, seqs, seq_at, until)

        blast(perf() + warmup)
        c0, t0 = read_count(ctl_port)
        mark = Snap.take(server_pid)
        sent = blast(mark.t + duration)
        end = Snap.take(server_pid)
        for k, i in enumerate(live):
            self.mids[i] = mids[k]
        c1, t1 = read_count(ctl_port)
        # let the server work off its socket backlog before the next measurement
        settle_until = time.monotonic() + 3.0
        last = c1
        while time.monotonic() < settle_until:
            time.sleep(0.1)
            c, _ = read_count(ctl_port)
            if c == last:
                break
            last = c
        span = max(t1 - t0, 1e-9)
        wall = max(end.t - mark.t, 1e-9)
        return (c1 - c0) / span, sent / wall, c1 - c0, end.usage_since(mark)


_ctl_mid = [0]


def read_count(ctl_port: int) -> tuple[int, float]:
    _ctl_mid[0] = (_ctl_mid[0] + 1) & 0xFFFF
    req = encode(CON, GET, _ctl_mid[0], b"\x01", [(OPT_URI_PATH, b"count")])
    reply = coap_call(ctl_port, req, 5.0)
    if reply is None:
        raise RuntimeError("the Shoal server did not report its notification count")
    count, when = reply[reply.index(b"\xff") + 1 :].split()
    return int(count), float(when)


# -- orchestration --------------------------------------------------------------------


def start_servers(fleet: Fleet, args: argparse.Namespace) -> dict[str, Server]:
    me = [sys.executable, os.path.abspath(__file__), "--serve"]
    servers: dict[str, Server] = {}
    p = free_port()
    servers["echo"] = Server("udp-echo", "echo", p, [*me, "echo", "--port", str(p)])
    p = free_port()
    servers["uvloop-echo"] = Server(
        "uvloop-echo", "echo", p, [*me, "uvloop-echo", "--port", str(p)]
    )
    p, c = free_port(), free_port()
    servers["shoal"] = Server(
        "shoal", "shoal", p, [*me, "shoal", "--port", str(p), "--ctl-port", str(c)], ctl_port=c
    )
    if not args.shoal_only:
        p = free_port()
        argv = [*me, "aiocoap", "--port", str(p), "--aiocoap-loop", args.aiocoap_loop]
        servers["aiocoap"] = Server("aiocoap", "aiocoap", p, argv)
        for tool, key in (("coap-rd-notls", "libcoap-rd"), ("coap-server-notls", "libcoap")):
            path = shutil.which(tool)
            if path is None:
                raise RuntimeError(f"{tool} not found: install libcoap3-bin (make system-deps)")
            p = free_port()
            argv = [path, "-A", HOST, "-p", str(p), "-v", "0"]
            if tool == "coap-server-notls":
                argv += ["-d", "10"]  # allow PUT to create /hello
            servers[key] = Server(key, "libcoap", p, argv)
    for s in servers.values():
        fleet.start(s)
    for s in servers.values():
        wait_ready(s)
    if "libcoap" in servers:
        put = encode(CON, PUT, 7, b"\x07", [(OPT_URI_PATH, b"hello")], HELLO)
        reply = coap_call(servers["libcoap"].port, put)
        if reply is None or reply[1] not in (CREATED, CHANGED):
            raise RuntimeError("coap-server-notls did not create /hello")
    return servers


class ServerFailed(RuntimeError):
    """A server died or stopped answering; the benchmark goes on without it."""


def check_alive(server: Server) -> None:
    if server.proc is not None and server.proc.poll() is not None:
        raise ServerFailed(
            f"{server.name} exited with code {server.proc.returncode}: {server.errors()}"
        )


def check_once(server: Server, tail: bytes, code: int, expect: int) -> None:
    """One request by hand before a run: a wrong answer fails loudly, not as a rate."""
    check_alive(server)
    mid = int.from_bytes(os.urandom(2), "big")
    reply = coap_call(server.port, encode(CON, code, mid, os.urandom(4)) + tail, 10.0)
    if reply is None or reply[1] != expect:
        check_alive(server)
        got = "nothing" if reply is None else f"code {reply[1] >> 5}.{reply[1] & 31:02d}"
        raise ServerFailed(f"{server.name}: expected {expect >> 5}.{expect & 31:02d}, got {got}")


def measure(gen: LoadGen, scenario: str, server: Server, args: argparse.Namespace) -> Run:
    gen.aim(server.port)
    n = len(gen.socks)
    if scenario == "ingest":
        assert server.ctl_port is not None
        tokens = gen.establish_observations(server.port)
        have = sum(t is not None for t in tokens)
        if have < n * 0.99:
            raise ServerFailed(f"only {have}/{n} observations were established")
        rate, offered, count, use = gen.flood_notifications(
            tokens, server.ctl_port, args.warmup, args.duration, server.pid
        )
        return Run(scenario, server.name, rate, count, 0, 0, offered, use)
    expect: int | None
    if scenario == "get":
        tails, head, expect = [get_tail(i) for i in range(n)], (CON, GET), CONTENT
    else:  # register (and echo, which answers with the request itself)
        tails, head = [register_tail(i) for i in range(n)], (CON, POST)
        expect = None if server.kind == "echo" else CREATED
    if expect is not None:
        check_once(server, tails[0], head[1], expect)
    rate, ok, errors, lost, use = gen.closed_loop(
        tails, head, expect, args.warmup, args.duration, args.inflight, server.pid, spin=args.spin
    )
    check_alive(server)
    return Run(scenario, server.name, rate, ok, errors, lost, 0.0, use)


def measure_clean(gen: LoadGen, scenario: str, server: Server, args: argparse.Namespace) -> Run:
    """Measure on quiet cores; repeat (bounded) while other processes used them.

    Other people's tests and builds on a shared machine take whole cores for
    seconds; a run they disturb says nothing about the servers.
    """
    attempts = 0
    while True:
        attempts += 1
        spare = args.deadline - time.monotonic()
        if spare > 0:
            wait_quiet(args.max_other, min(args.quiet_wait, spare))
        run = measure(gen, scenario, server, args)
        run.attempts = attempts
        u = run.use
        # others on the generator's core only matter if that core ran out
        run.disturbed = u.other_server_core > args.max_other or (
            u.other_gen_core > args.max_other and u.gen + u.other_gen_core > 0.85
        )
        if not run.disturbed or attempts > args.retries or time.monotonic() > args.deadline:
            return run


def wait_quiet(max_other: float, limit: float) -> None:
    """Wait up to `limit` seconds until both cores are idle (our servers idle too)."""
    until = time.monotonic() + limit
    while True:
        a = core_busy()
        time.sleep(0.3)
        b = core_busy()
        busy = max((b.get(c, 0.0) - a.get(c, 0.0)) / 0.3 for c in (SERVER_CORE, LOADGEN_CORE))
        if busy <= max_other or time.monotonic() >= until:
            return


PLAN: list[tuple[str, list[str]]] = [
    ("echo", ["echo", "uvloop-echo"]),
    ("register", ["shoal", "libcoap-rd", "aiocoap"]),
    ("get", ["shoal", "libcoap", "aiocoap"]),
    ("ingest", ["shoal"]),
]


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def clean(runs: list[Run]) -> list[Run]:
    """The undisturbed runs, or all of them when every run was disturbed."""
    return [r for r in runs if not r.disturbed] or runs


def report(runs: list[Run], servers: dict[str, Server]) -> None:
    by: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        by.setdefault((r.scenario, r.server), []).append(r)

    def med(scenario: str, name: str) -> float:
        rs = clean(by.get((scenario, name), []))
        return statistics.median(r.rate for r in rs) if rs else float("nan")

    refs = {"register": "libcoap-rd", "get": "libcoap"}
    print()
    print(
        f"{'scenario':9} {'server':11} {'median/s':>9} {'each run/s':>22} {'vs libcoap':>10}"
        f" {'srv cpu':>7} {'gen cpu':>7} {'others c0/c1':>12} {'err':>4} {'lost':>4}"
    )
    for scenario, names in PLAN:
        for key in names:
            rs = by.get((scenario, servers[key].name), []) if key in servers else []
            if not rs:
                continue
            name = rs[0].server
            m = med(scenario, name)
            ref = refs.get(scenario)
            vs = f"{m / med(scenario, ref):9.2f}x" if ref and ref != name else ""
            each = " ".join(_fmt_rate(r.rate) + ("*" if r.disturbed else "") for r in rs)

            kept = clean(rs)

            def mu(attr: str, kept: list[Run] = kept) -> float:
                return float(statistics.median(getattr(r.use, attr) for r in kept))

            others = f"{mu('other_server_core'):.0%}/{mu('other_gen_core'):.0%}"
            print(
                f"{scenario:9} {name:11} {_fmt_rate(m):>9} {each:>22} {vs:>10}"
                f" {mu('server'):7.0%} {mu('gen'):7.0%} {others:>12}"
                f" {sum(r.errors for r in rs):4d} {sum(r.lost for r in rs):4d}"
            )
            if scenario == "ingest":
                offered = statistics.median(r.offered for r in rs)
                print(f"{'':22}(open loop: the generator offered {_fmt_rate(offered)}/s)")
    if any(r.disturbed for r in runs):
        print(
            "* disturbed: other processes took a core; left out of the median if others ran clean"
        )
    # a ceiling: other load can only lower it, so the best echo run of either counts
    echo_runs = by.get(("echo", "udp-echo"), []) + by.get(("echo", "uvloop-echo"), [])
    echo = max((r.rate for r in echo_runs), default=float("nan"))
    fastest = max(
        (
            m
            for s, ns in PLAN[1:3]
            for k in ns
            if k in servers
            if (m := med(s, servers[k].name)) > 0
        ),
        default=float("nan"),
    )
    print()
    print(
        f"generator ceiling (best UDP echo run): {_fmt_rate(echo)}/s = "
        f"{echo / fastest:.1f}x the fastest closed-loop server (median)"
    )
    if not echo >= 1.5 * fastest:
        print("WARNING: the load generator may be the bottleneck (echo < 1.5x fastest server)")
    if "libcoap" in servers and ("get", "shoal") in by:
        print(
            f"get: shoal/libcoap={med('get', 'shoal') / med('get', 'libcoap'):.2f}"
            f" shoal/aiocoap={med('get', 'shoal') / med('get', 'aiocoap'):.2f}"
        )
    if "libcoap-rd" in servers and ("register", "shoal") in by:
        shoal, libcoap, aio = (med("register", n) for n in ("shoal", "libcoap-rd", "aiocoap"))
        print(f"register: shoal/libcoap={shoal / libcoap:.2f} shoal/aiocoap={shoal / aio:.2f}")


def describe_machine(pin: bool) -> None:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, {model}; load average {load[0]:.2f} "
        f"{load[1]:.2f} {load[2]:.2f}; python {sys.version.split()[0]}"
    )
    if pin:
        print(f"servers pinned to core {SERVER_CORE}, load generator to core {LOADGEN_CORE}")
    else:
        print("WARNING: fewer than 2 usable cores: nothing pinned, figures are not comparable")


def bench(args: argparse.Namespace) -> int:
    cores = os.sched_getaffinity(0)
    pin = SERVER_CORE in cores and LOADGEN_CORE in cores
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.sockets + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    rounds = args.rounds
    lifetime = int(args.budget + rounds * 8 * (args.warmup + args.duration + 30) + 300)
    fleet = Fleet(pin, lifetime)
    gen: LoadGen | None = None
    runs: list[Run] = []
    failed: dict[str, str] = {}
    try:
        describe_machine(pin)
        print(
            f"{args.sockets} devices (source ports), {args.inflight} requests in flight, "
            f"{rounds} rounds of {args.warmup:g}s warm-up + {args.duration:g}s measured"
        )
        servers = start_servers(fleet, args)
        if pin:
            os.sched_setaffinity(0, {LOADGEN_CORE})
        gen = LoadGen(args.sockets)
        for rnd in range(rounds):
            for scenario, names in PLAN:
                if scenario not in args.scenarios:
                    continue
                keys = [k for k in names if k in servers]
                shift = rnd % len(keys)
                for key in keys[shift:] + keys[:shift]:  # A/B interleaving
                    if key in failed:
                        continue
                    try:
                        run = measure_clean(gen, scenario, servers[key], args)
                    except ServerFailed as exc:
                        failed[key] = str(exc)
                        print(f"  round {rnd + 1} {scenario:8} FAILED: {exc}", flush=True)
                        continue
                    runs.append(run)
                    u = run.use
                    extra = f"  offered {run.offered:,.0f}/s" if run.offered else ""
                    redo = f"  (attempt {run.attempts})" if run.attempts > 1 else ""
                    redo += "  DISTURBED" if run.disturbed else ""
                    print(
                        f"  round {rnd + 1} {scenario:8} {run.server:11} {run.rate:9,.0f}/s"
                        f"  cpu server {u.server:4.0%} generator {u.gen:4.0%}"
                        f"  others c0 {u.other_server_core:3.0%} c1 {u.other_gen_core:3.0%}"
                        f"  err {run.errors} lost {run.lost}{extra}{redo}",
                        flush=True,
                    )
        for key, why in failed.items():
            print(f"{servers[key].name} failed and was left out after that: {why}")
        report(runs, servers)
        return 0 if "shoal" not in failed else 1
    finally:
        if gen is not None:
            gen.close()
        fleet.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument(
        "--scenarios",
        default="echo,register,get,ingest",
        type=lambda s: set(s.split(",")),
        help="comma-separated subset of echo,register,get,ingest",
    )
    ap.add_argument("--shoal-only", action="store_true", help="skip libcoap and aiocoap")
    ap.add_argument(
        "--spin",
        action="store_true",
        help="generator busy-polls instead of sleeping in epoll (no wake-up cost for servers)",
    )
    add_noise_options(ap, quiet_wait=10.0, budget=900.0)
    ap.add_argument(
        "--serve", choices=["shoal", "aiocoap", "echo", "uvloop-echo"], help=argparse.SUPPRESS
    )
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ctl-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument(
        "--aiocoap-loop", choices=["uvloop", "asyncio"], default="uvloop", help="aiocoap's loop"
    )
    args = ap.parse_args(argv)
    if args.serve:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            child_main(args)
        return 0
    if not 1 <= args.rounds <= 20 or not 0 < args.duration <= 60 or not 0 <= args.warmup <= 30:
        ap.error("rounds 1..20, duration 0..60 s, warm-up 0..30 s")
    if not 0 <= args.retries <= 5:
        ap.error("retries 0..5")
    if not 1 <= args.inflight <= 255 or not args.inflight <= args.sockets <= 5000:
        ap.error("inflight 1..255 and at most --sockets; sockets up to 5000")
    if not 0 <= args.quiet_wait <= 60 or not 0 <= args.budget <= 3600:
        ap.error("quiet-wait 0..60 s, budget 0..3600 s")
    args.deadline = time.monotonic() + args.budget
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return bench(args)
    except KeyboardInterrupt:
        print("interrupted; servers killed", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
            print("too many open files: raise `ulimit -n`", file=sys.stderr)
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Peers for the security and bootstrap tests.

- `libcoap(...)`: run one of libcoap's command-line clients, bounded in time.
- `DtlsClientEndpoint`: a whole CoAP endpoint (client and server) inside one
  client DTLS session (`shoal.dtls.client`, pyOpenSSL), so a test device can both
  register and answer the server's requests through its session, as a real
  LwM2M client does. libcoap's clients cannot serve requests.
- `DeviceTree`: the little object tree of a test LwM2M client: Security (0),
  Server (1) and Access Control (2) for the bootstrap server to delete, discover
  and write, a Device object (3) to read, and any vendor resource.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterable
from typing import Any

import pytest
from OpenSSL import SSL

from shoal.coap import options as o
from shoal.coap.codes import Code
from shoal.coap.config import CoapConfig
from shoal.coap.endpoint import CoapEndpoint
from shoal.coap.engine import Addr
from shoal.coap.message import Message
from shoal.dtls.client import DtlsClient, DtlsHandshakeError, client_context
from shoal.lwm2m import content
from shoal.lwm2m import requests as rq
from shoal.lwm2m.model import Value
from shoal.lwm2m.path import Path
from shoal.lwm2m.registry import default_registry

LIBCOAP = ("coap-client-openssl", "coap-client-gnutls")
LINKS = "</1/0>,</3/0>"


async def libcoap(client: str, *args: str, bound: int = 20) -> tuple[int, str]:
    """Run a libcoap client; it gives up by itself after `bound` seconds (-B)."""
    if shutil.which(client) is None:
        pytest.skip(f"{client} not installed (Debian libcoap3-bin)")
    proc = await asyncio.create_subprocess_exec(
        client,
        "-B",
        str(bound),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), bound + 30)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -9, out.decode(errors="replace")
    return proc.returncode or 0, out.decode(errors="replace")


def quick_coap() -> CoapConfig:
    return CoapConfig(ack_timeout=1.0, max_retransmit=2)


class _Encrypting:
    __slots__ = ("ep",)

    def __init__(self, ep: DtlsClientEndpoint) -> None:
        self.ep = ep

    def sendto(self, data: bytes, addr: Any = None) -> None:
        ep = self.ep
        if ep.dtls.established and ep.raw is not None and not ep.raw.is_closing():
            for d in ep.dtls.send(data):
                ep.raw.sendto(d)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        assert self.ep.raw is not None
        return self.ep.raw.get_extra_info(name, default)

    def close(self) -> None:
        if self.ep.raw is not None:
            self.ep.raw.close()

    def is_closing(self) -> bool:
        return self.ep.raw is None or self.ep.raw.is_closing()


class DtlsClientEndpoint(CoapEndpoint):
    """A CoAP endpoint speaking through one client DTLS session to `server`."""

    def __init__(self, client: DtlsClient, server: tuple[str, int], config: CoapConfig) -> None:
        super().__init__(config)
        self.dtls = client
        self.server = server
        self.raw: asyncio.DatagramTransport | None = None
        self.established = asyncio.Event()
        self.error: Exception | None = None
        self._dtls_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(
        cls,
        server: tuple[str, int],
        *,
        psk: tuple[bytes, bytes] | None = None,
        certificate: bytes | None = None,
        private_key: bytes | None = None,
        ca: bytes | None = None,
        config: CoapConfig | None = None,
        timeout: float = 20.0,
    ) -> DtlsClientEndpoint:
        ctx, keep = client_context(psk=psk, certificate=certificate, private_key=private_key, ca=ca)
        client = DtlsClient(ctx, keep=keep)
        loop = asyncio.get_running_loop()
        _, ep = await loop.create_datagram_endpoint(
            lambda: cls(client, server, config or quick_coap()), remote_addr=server
        )
        ep._send(client.start())
        ep._arm()
        try:
            await asyncio.wait_for(ep.established.wait(), timeout)
        except TimeoutError:
            ep.close()
            raise DtlsHandshakeError("handshake timed out") from None
        if ep.error is not None:
            ep.close()
            raise ep.error
        return ep

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self.transport = _Encrypting(self)  # type: ignore[assignment]

    @property
    def closed_by_peer(self) -> bool:
        return bool(self.dtls.conn.get_shutdown() & SSL.RECEIVED_SHUTDOWN)

    def _send(self, datagrams: Iterable[bytes]) -> None:
        if self.raw is not None and not self.raw.is_closing():
            for d in datagrams:
                self.raw.sendto(d)

    def _arm(self) -> None:
        if self.dtls.established or self.error is not None:
            return
        wait = self.dtls.get_timeout()
        if wait is None:
            return
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
        self._dtls_timer = self.loop.call_later(max(wait, 0.01), self._on_dtls_timer)

    def _on_dtls_timer(self) -> None:
        self._dtls_timer = None
        try:
            self._send(self.dtls.handle_timeout())
        except DtlsHandshakeError as exc:
            self.error = exc
            self.established.set()
            return
        self._arm()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        try:
            plain, out = self.dtls.receive_datagram(data)
        except DtlsHandshakeError as exc:
            self.error = exc
            self.established.set()
            return
        except SSL.Error as exc:
            self.error = exc
            return
        self._send(out)
        if self.dtls.established and not self.established.is_set():
            self.established.set()
        for p in plain:
            super().datagram_received(p, self.server)
        self._arm()

    def close(self) -> None:
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        super().close()

    # -- LwM2M client messages ----------------------------------------------------------

    async def post(
        self, path: str, queries: Iterable[str] = (), payload: bytes = b"", fmt: int | None = None
    ) -> Message:
        return await self.request(self.server, coap_request(Code.POST, path, queries, payload, fmt))

    async def register(self, endpoint: str, lifetime: int = 300) -> Message:
        queries = (f"ep={endpoint}", f"lt={lifetime}", "lwm2m=1.1", "b=U")
        return await self.post("/rd", queries, LINKS.encode(), 40)


def coap_request(
    code: int,
    path: str,
    queries: Iterable[str] = (),
    payload: bytes = b"",
    fmt: int | None = None,
) -> Message:
    msg = Message(code=code)
    for seg in path.strip("/").split("/"):
        if seg:
            msg.add(o.URI_PATH, seg)
    if fmt is not None:
        msg.add(o.CONTENT_FORMAT, fmt)
    for q in queries:
        msg.add(o.URI_QUERY, q)
    msg.payload = payload
    return msg


def register_message(endpoint: str, lifetime: int = 300) -> Message:
    queries = (f"ep={endpoint}", f"lt={lifetime}", "lwm2m=1.1", "b=U")
    return coap_request(Code.POST, "/rd", queries, LINKS.encode(), 40)


class DeviceTree:
    """What a test LwM2M client holds, and how it answers the bootstrap server."""

    def __init__(self, values: dict[Path, Value] | None = None) -> None:
        self.registry = default_registry()
        self.values: dict[Path, Value] = dict(values or {})
        self.finished = asyncio.Event()
        self.requests: list[str] = []

    def install(self, ep: CoapEndpoint, objects: Iterable[int] = (0, 1, 2, 3)) -> None:
        for obj in objects:
            ep.route_prefix(f"/{obj}", self.handle)
        ep.route("/bs", self._finish)

    def _finish(self, request: Message, remote: Addr) -> Message:
        self.requests.append(f"{Code(request.code).name} /bs")
        self.finished.set()
        return Message(code=Code.CHANGED)

    def instances(self, object_id: int) -> list[int]:
        return sorted({p[1] for p in self.values if p[0] == object_id and len(p) >= 2})

    def instance(self, object_id: int, instance_id: int) -> dict[Path, Value]:
        prefix = Path(object_id, instance_id)
        return {p: v for p, v in self.values.items() if p.startswith(prefix)}

    def _is_bootstrap_account(self, instance_id: int) -> bool:
        return self.values.get(Path(0, instance_id, 1)) is True

    def handle(self, request: Message, remote: Addr) -> Message:
        path = Path.from_segments(request.uri_path)
        name = Code(request.code).name
        self.requests.append(f"{name} {path}")
        if request.code == Code.DELETE:
            for p in [p for p in self.values if p.startswith(path)]:
                if p[0] == 0 and self._is_bootstrap_account(p[1]):
                    continue  # Delete never removes the Bootstrap-Server account
                del self.values[p]
            return Message(code=Code.DELETED)
        if request.code == Code.GET:
            if request.opt(o.ACCEPT) is not None and request.accept == rq.LINK_FORMAT:
                links = ",".join(f"</{path[0]}/{i}>" for i in self.instances(path[0]))
                return Message(code=Code.CONTENT, payload=f'lwm2m="1.1",{links}'.encode()).add(
                    o.CONTENT_FORMAT, rq.LINK_FORMAT
                )
            found = {p: v for p, v in self.values.items() if p.startswith(path)}
            if not found:
                return Message(code=Code.NOT_FOUND)
            body = content.encode(rq.TLV, found, path, self.registry)
            return Message(code=Code.CONTENT, payload=body).add(o.CONTENT_FORMAT, rq.TLV)
        if request.code in (Code.PUT, Code.POST):
            fmt = request.content_format
            if fmt is None:
                return Message(code=Code.BAD_REQUEST)
            try:
                written = content.decode(fmt, request.payload, path, self.registry)
            except content.CodecError as exc:
                return Message(code=Code.BAD_REQUEST, payload=str(exc).encode())
            if request.code == Code.PUT and len(path) == 2:
                for p in [p for p in self.values if p.startswith(path)]:
                    del self.values[p]
            self.values.update(written)
            return Message(code=Code.CHANGED)
        return Message(code=Code.METHOD_NOT_ALLOWED)

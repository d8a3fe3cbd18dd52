"""The bootstrap server: `/bs` on the LwM2M server's endpoints.

A device that holds bootstrap credentials (PSK identity, certificate, or NoSec
where an operator allowed it) asks `POST /bs?ep=<name>`; Shoal answers 2.04 and
provisions it through the same socket and DTLS session (message rules in
`shoal.lwm2m.bootstrap`): it deletes the old Security and Server accounts, writes
the account of this LwM2M server (URI, security mode, PSK identity and key or
certificates, Short Server ID) and its Server instance (lifetime, binding), the
Access Control instances stored for the device, optionally the enclosure code
into a configurable resource, and ends with Bootstrap-Finish. The device then
registers with what it was given.

Bootstrap credentials never open `/rd`, and server credentials never open `/bs`.
A device without server credentials gets a fresh PSK (never shown to anyone)
when `create_server_credentials` is on. Secrets are only ever written inside a
DTLS session: a NoSec bootstrap may only provision a NoSec account.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.coap.codes import Code, code_str
from shoal.coap.endpoint import CoapEndpoint, CoapRequestError
from shoal.coap.engine import Addr
from shoal.coap.message import Message
from shoal.dtls.endpoint import DtlsCoapEndpoint
from shoal.lwm2m import requests as rq
from shoal.lwm2m.bootstrap import (
    SECURITY,
    SERVER,
    BootstrapDelete,
    BootstrapDiscover,
    BootstrapFinish,
    BootstrapRequest,
    SecurityAccount,
    SecurityModeCode,
    ServerAccount,
    bootstrap_write,
    discovered_instances,
    free_instances,
    parse_bootstrap_request,
    write_format,
)
from shoal.lwm2m.path import Path
from shoal.lwm2m.registration import RegistrationError
from shoal.security.service import SecurityService
from shoal.security.store import Credential, Purpose, SecurityMode
from shoal.server.authorization import Peer
from shoal.server.server import Lwm2mServer

log = logging.getLogger(__name__)

BootstrapStep = BootstrapDelete | BootstrapDiscover | BootstrapFinish | rq.Write


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    # URIs written into the Security account; None: made from the server's own
    # endpoints, with `public_host` (what devices reach, e.g. behind NAT) if given.
    server_uri: str | None = None  # coaps:// for PSK and certificate accounts
    nosec_server_uri: str | None = None  # coap:// for NoSec accounts
    public_host: str | None = None
    short_server_id: int = 101
    lifetime: int = 3600
    binding: str = "U"
    notification_storing: bool = True
    delete_paths: tuple[str, ...] = ("/0", "/1")
    # Where the enclosure code goes (e.g. a vendor resource the device reports back,
    # correlation source 4); None: not written.
    enclosure_resource: Path | None = None
    # PEM of the server certificate, written as the Server Public Key of X.509 accounts
    server_certificate: bytes | None = None
    create_server_credentials: bool = True
    session_timeout: float = 120.0
    max_sessions_kept: int = 10_000


class BootstrapFailed(Exception):
    pass


@dataclass(slots=True)
class BootstrapSession:
    """One bootstrap of one device, for the operator's view."""

    endpoint: str
    address: str
    secure: bool
    started_at: float
    state: str = "running"  # "running", "finished", "failed"
    finished_at: float | None = None
    error: str | None = None
    security_mode: str | None = None
    steps: list[dict[str, str]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "address": self.address,
            "secure": self.secure,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "security_mode": self.security_mode,
            "steps": list(self.steps),
        }


def _uri(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _key_der(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, None)
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class BootstrapServer:
    def __init__(
        self,
        server: Lwm2mServer,
        security: SecurityService,
        config: BootstrapConfig | None = None,
    ) -> None:
        self.server = server
        self.security = security
        self.config = config or BootstrapConfig()
        self.sessions: OrderedDict[str, BootstrapSession] = OrderedDict()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.counters: dict[str, int] = {"requested": 0, "finished": 0, "failed": 0}

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Serve `/bs` on every endpoint of the (started) LwM2M server."""
        if not self.server.endpoints:
            raise RuntimeError("start the LwM2M server before the bootstrap server")
        for ep in self.server.endpoints:
            ep.route("/bs", partial(self._on_bs, transport=ep))

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self, endpoint: str, timeout: float = 60.0) -> BootstrapSession:
        """Wait for the running bootstrap of `endpoint` to end (tests, tools)."""
        task = self._tasks.get(endpoint)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        return self.sessions[endpoint]

    def server_uri(self, secure: bool) -> str:
        cfg = self.config
        configured = cfg.server_uri if secure else cfg.nosec_server_uri
        if configured:
            return configured
        address = self.server.secure_address if secure else self.server.address
        if address is None:
            raise BootstrapFailed("no CoAPS endpoint to send the device to")
        host = cfg.public_host or address[0]
        return _uri("coaps" if secure else "coap", host, address[1])

    # -- the request -------------------------------------------------------------------

    def _on_bs(
        self, request: Message, remote: Addr, transport: CoapEndpoint | None = None
    ) -> Message:
        if request.code != Code.POST:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        authorizer = self.security.authorizer
        identity = None
        if isinstance(transport, DtlsCoapEndpoint):
            identity = transport.peer_identity(remote)
        peer = Peer(remote, transport, identity)
        try:
            authorizer.admit(remote)
            bs = parse_bootstrap_request(request.uri_path, request.uri_query)
            authorizer.authorize_bootstrap(bs.endpoint, peer)
            if identity is None:
                mode = self._account_mode(
                    self.security.store.cache.get(bs.endpoint, Purpose.SERVER)
                )
                if mode != SecurityMode.NOSEC:
                    raise RegistrationError(
                        (4, 3), "a NoSec bootstrap may only provision a NoSec account"
                    )
        except RegistrationError as exc:
            authorizer.refused(remote, exc)
            cls, detail = exc.code
            return Message(code=cls << 5 | detail, payload=exc.message.encode())
        assert transport is not None
        self.counters["requested"] += 1
        old = self._tasks.pop(bs.endpoint, None)
        if old is not None:
            old.cancel()  # the device started over
        session = BootstrapSession(bs.endpoint, str(remote), identity is not None, time.time())
        self.sessions[bs.endpoint] = session
        self.sessions.move_to_end(bs.endpoint)
        while len(self.sessions) > self.config.max_sessions_kept:
            self.sessions.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._run(bs, remote, transport, session))
        self._tasks[bs.endpoint] = task
        task.add_done_callback(partial(self._done, bs.endpoint))
        return Message(code=Code.CHANGED)

    def _done(self, endpoint: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(endpoint) is task:
            del self._tasks[endpoint]

    def _account_mode(self, cred: Credential | None) -> SecurityMode | None:
        """Which account this server credential becomes (None: nothing deliverable)."""
        if cred is None:
            return SecurityMode.PSK if self.config.create_server_credentials else None
        if cred.allows(SecurityMode.PSK) and cred.psk_key is not None:
            return SecurityMode.PSK
        if (
            cred.allows(SecurityMode.X509)
            and cred.certificate_pem is not None
            and cred.private_key_pem is not None
        ):
            return SecurityMode.X509
        if cred.allows(SecurityMode.NOSEC):
            return SecurityMode.NOSEC
        return None

    # -- the sequence ------------------------------------------------------------------

    async def _run(
        self, bs: BootstrapRequest, remote: Addr, transport: CoapEndpoint, session: BootstrapSession
    ) -> None:
        try:
            async with asyncio.timeout(self.config.session_timeout):
                await self._provision(bs, remote, transport, session)
        except asyncio.CancelledError:
            session.state, session.error = "failed", "cancelled"
            self.counters["failed"] += 1
            raise
        except (BootstrapFailed, TimeoutError, RequestFailedError) as exc:
            session.state, session.error = "failed", str(exc) or "timed out"
            self.counters["failed"] += 1
            log.warning("bootstrap of %s failed: %s", bs.endpoint, session.error)
        except Exception as exc:
            session.state, session.error = "failed", f"internal error: {exc}"
            self.counters["failed"] += 1
            log.exception("bootstrap of %s failed", bs.endpoint)
        else:
            session.state = "finished"
            self.counters["finished"] += 1
            log.info("bootstrapped %s (%s account)", bs.endpoint, session.security_mode)
        finally:
            session.finished_at = time.time()

    async def _server_credential(self, bs: BootstrapRequest) -> Credential:
        store = self.security.store
        cred = store.cache.get(bs.endpoint, Purpose.SERVER)
        if cred is not None:
            return cred
        if not self.config.create_server_credentials:
            raise BootstrapFailed(f"{bs.endpoint} has no server credentials")
        boot = store.cache.get(bs.endpoint, Purpose.BOOTSTRAP)
        return await store.create(
            bs.endpoint,
            Purpose.SERVER,
            (SecurityMode.PSK,),
            tenant_id=boot.tenant_id if boot else None,
            enclosure_code=boot.enclosure_code if boot else None,
        )

    def _security_account(self, cred: Credential) -> SecurityAccount:
        mode = self._account_mode(cred)
        ssid = self.config.short_server_id
        if mode == SecurityMode.PSK:
            assert cred.psk_identity is not None and cred.psk_key is not None
            return SecurityAccount(
                self.server_uri(True),
                SecurityModeCode.PSK,
                public_key_or_identity=cred.psk_identity,
                secret_key=cred.psk_key,
                short_server_id=ssid,
            )
        if mode == SecurityMode.X509:
            assert cred.certificate_pem is not None and cred.private_key_pem is not None
            server_cert = self.config.server_certificate
            return SecurityAccount(
                self.server_uri(True),
                SecurityModeCode.CERTIFICATE,
                public_key_or_identity=_der(cred.certificate_pem.encode()),
                server_public_key=_der(server_cert) if server_cert else b"",
                secret_key=_key_der(cred.private_key_pem),
                short_server_id=ssid,
            )
        if mode == SecurityMode.NOSEC:
            return SecurityAccount(
                self.server_uri(False), SecurityModeCode.NOSEC, short_server_id=ssid
            )
        raise BootstrapFailed(f"the server credentials of {cred.endpoint} cannot be delivered")

    async def _provision(
        self, bs: BootstrapRequest, remote: Addr, transport: CoapEndpoint, session: BootstrapSession
    ) -> None:
        cfg = self.config
        store = self.security.store
        cred = await self._server_credential(bs)
        if not session.secure and self._account_mode(cred) != SecurityMode.NOSEC:
            raise BootstrapFailed("a NoSec bootstrap may only provision a NoSec account")
        account = self._security_account(cred)
        session.security_mode = SecurityModeCode(account.mode).name.lower()
        acls = await store.access_control(bs.endpoint)
        target = rq.Target((), write_format(bs), self.server.registry)

        async def step(request: BootstrapStep, what: str, fatal: bool = True) -> Message:
            message = request.to_coap(target)
            try:
                answer = await transport.request(remote, message)
            except CoapRequestError as exc:
                session.steps.append({"step": what, "result": f"no answer: {exc}"})
                raise RequestFailedError(f"{what}: no answer ({exc})") from None
            result = code_str(answer.code)
            session.steps.append({"step": what, "result": result})
            if fatal and answer.code >> 5 != 2:
                detail = answer.payload.decode("utf-8", "replace")
                raise BootstrapFailed(f"{what} answered {result} {detail}".strip())
            return answer

        for text in cfg.delete_paths:
            path = Path.parse(text)
            await step(BootstrapDelete(path), f"delete {path}", fatal=False)
        found = await step(BootstrapDiscover(Path(SECURITY)), "discover /0", fatal=False)
        kept = discovered_instances(found.payload) if found.code == Code.CONTENT else {0}
        (security_id,) = free_instances(kept, 1)
        values = account.values(security_id)
        await step(bootstrap_write(Path(SECURITY, security_id), values), f"write /0/{security_id}")
        server_account = ServerAccount(
            cfg.short_server_id, cfg.lifetime, cfg.binding, cfg.notification_storing
        )
        await step(bootstrap_write(Path(SERVER, 0), server_account.values(0)), "write /1/0")
        for acl in acls:
            path = Path(2, acl.instance_id)
            await step(bootstrap_write(path, acl.values()), f"write {path}")
        code = store.provisioned_enclosure(bs.endpoint)
        if cfg.enclosure_resource is not None and code:
            res = cfg.enclosure_resource
            await step(bootstrap_write(res, {res: code}), f"write {res}", fatal=False)
        await step(BootstrapFinish(), "finish")

    def status(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "running": sorted(self._tasks)}


class RequestFailedError(BootstrapFailed):
    """A bootstrap request got no answer."""

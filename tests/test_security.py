"""Security store, CoAPS registration and registration authorisation, end to end.

A whole node (server, database, API) in secure mode with a CoAPS endpoint on an
ephemeral port. Devices: libcoap's `coap-client-openssl` and `coap-client-gnutls`
(independent peers) registering with PSK and with certificates; a pyOpenSSL DTLS
client (`lwm2m_peers.DtlsClientEndpoint`) where a device must also answer the
server, or hold a session open while an operator revokes it. Every wait is
bounded; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path as FsPath
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select

from lwm2m_peers import (
    LIBCOAP,
    LINKS,
    DeviceTree,
    DtlsClientEndpoint,
    coap_request,
    libcoap,
    quick_coap,
    register_message,
)
from pki import Pki, make_pki
from shoal.coap.codes import Code
from shoal.coap.endpoint import CoapEndpoint
from shoal.coap.message import Message
from shoal.domain.fleet import FleetConfig
from shoal.dtls.client import DtlsHandshakeError
from shoal.lwm2m.path import Path
from shoal.node import NodeConfig, ShoalNode
from shoal.security.authorizer import AuthorizationConfig, RefusalLimiter
from shoal.security.keys import KeyBox, SealError
from shoal.security.store import Purpose, SecurityStore
from shoal.store import CorrelationSource
from shoal.store.security_schema import SecurityCredentialRow

SENML_JSON = 110


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


StartNode = Callable[..., Awaitable[ShoalNode]]


@pytest.fixture
async def start_node(tmp_path: FsPath, pki: Pki) -> AsyncIterator[StartNode]:
    nodes: list[ShoalNode] = []

    async def start(**kw: Any) -> ShoalNode:
        settings: dict[str, Any] = {
            "coap_port": 0,
            "coaps_port": 0,
            "http_port": 0,
            "data_dir": str(tmp_path / f"node{len(nodes)}"),
            "certificate": pki.path("server.pem"),
            "private_key": pki.path("server.key"),
            "client_cas": pki.path("ca.pem"),
            "fleet": FleetConfig(read_identity=False, observe_on_register=False),
            "coap": quick_coap(),
        }
        settings.update(kw)
        node = ShoalNode(NodeConfig(**settings))
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture
async def node(start_node: StartNode) -> ShoalNode:
    return await start_node()


@pytest.fixture
async def http(node: ShoalNode) -> AsyncIterator[httpx.AsyncClient]:
    host, port = node.http_address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as client:
        yield client


async def create(http: httpx.AsyncClient, endpoint: str, **body: Any) -> dict[str, Any]:
    r = await http.post(f"/api/v1/devices/{endpoint}/credentials", json=body)
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


def coaps_uri(node: ShoalNode, endpoint: str) -> str:
    assert node.server.secure_address is not None
    port = node.server.secure_address[1]
    return f"coaps://127.0.0.1:{port}/rd?ep={endpoint}&lt=300&lwm2m=1.1&b=U"


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def plain_client() -> CoapEndpoint:
    return await CoapEndpoint.create("127.0.0.1", 0, quick_coap())


def code_of(msg: Message) -> str:
    return f"{msg.code >> 5}.{msg.code & 31:02d}"


# -- libcoap registering over CoAPS ------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
async def test_libcoap_registers_with_psk(
    node: ShoalNode, http: httpx.AsyncClient, client: str
) -> None:
    ep = f"pen01-oxygen-{client[-3:]}"
    cred = await create(http, ep)
    assert cred["psk_identity"] == ep and len(cred["psk_key"]) == 22
    rc, out = await libcoap(
        client,
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        LINKS,
        "-u",
        cred["psk_identity"],
        "-k",
        cred["psk_key"],
        coaps_uri(node, ep),
    )
    assert rc == 0, out
    reg = node.server.store.by_endpoint(ep)
    assert reg is not None, out
    assert reg.identity == f"psk:{ep}"
    assert reg.transport is node.server.secure_endpoint
    assert node.server.secure_endpoint is not None
    assert node.server.secure_endpoint.dtls.counters.handshakes_completed == 1


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
async def test_libcoap_registers_with_certificate(
    node: ShoalNode, http: httpx.AsyncClient, pki: Pki, client: str
) -> None:
    ep = "pen07-camera-0003"  # the CN of the module's client certificate
    cred = await create(http, ep, modes=["x509"], certificate=pki.client_pem.decode())
    assert cred["cert_common_name"] == ep
    assert cred["cert_fingerprint"] == pki.client_cert.fingerprint(hashes.SHA256()).hex()
    assert "psk_key" not in cred
    rc, out = await libcoap(
        client,
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        LINKS,
        "-c",
        pki.path("client.pem"),
        "-j",
        pki.path("client.key"),
        "-C",
        pki.path("ca.pem"),
        coaps_uri(node, ep),
    )
    assert rc == 0, out
    reg = node.server.store.by_endpoint(ep)
    assert reg is not None, out
    assert reg.identity is not None and reg.identity.startswith(f"x509:CN={ep};sha256=")


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
async def test_refused_wrong_key_unknown_identity_other_ca(
    node: ShoalNode, http: httpx.AsyncClient, pki: Pki, client: str
) -> None:
    ep = "pen02-oxygen-0002"
    cred = await create(http, ep)
    await create(http, "pen07-camera-0003", modes=["x509"], certificate=pki.client_pem.decode())
    secure = node.server.secure_endpoint
    assert secure is not None
    counters = secure.dtls.counters
    post = ("-m", "post", "-t", "40", "-e", LINKS)

    # a wrong key: the handshake never finishes
    _rc, out = await libcoap(
        client, *post, "-u", cred["psk_identity"], "-k", "not-the-key", coaps_uri(node, ep), bound=4
    )
    assert node.server.store.by_endpoint(ep) is None, out

    # an identity the store does not know
    _rc, out = await libcoap(
        client, *post, "-u", "stranger", "-k", "whatever", coaps_uri(node, "stranger"), bound=4
    )
    assert node.server.store.by_endpoint("stranger") is None, out
    assert counters.unknown_identity >= 1

    # a certificate with the right name from another CA
    _rc, out = await libcoap(
        client,
        *post,
        "-c",
        pki.path("rogue.pem"),
        "-j",
        pki.path("rogue.key"),
        "-C",
        pki.path("ca.pem"),
        coaps_uri(node, "pen07-camera-0003"),
        bound=4,
    )
    assert node.server.store.by_endpoint("pen07-camera-0003") is None, out
    assert counters.bad_certificate >= 1
    assert counters.handshakes_completed == 0


@pytest.mark.interop
@pytest.mark.parametrize("client", LIBCOAP)
async def test_identity_a_cannot_register_endpoint_b(
    node: ShoalNode, http: httpx.AsyncClient, client: str
) -> None:
    a = await create(http, "pen03-oxygen-000a")
    await create(http, "pen03-oxygen-000b")
    _rc, out = await libcoap(
        client,
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        LINKS,
        "-u",
        a["psk_identity"],
        "-k",
        a["psk_key"],
        coaps_uri(node, "pen03-oxygen-000b"),
    )
    assert "4.03" in out, out
    assert node.server.store.by_endpoint("pen03-oxygen-000b") is None
    assert node.security.authorizer.counters["wrong_identity"] >= 1


async def test_nosec_only_where_allowed(node: ShoalNode, http: httpx.AsyncClient) -> None:
    await create(http, "pen04-psk-only")
    await create(http, "pen04-nosec-ok", modes=["nosec"])
    client = await plain_client()
    try:
        server = node.server.address
        unknown = await client.request(server, register_message("pen04-unknown"))
        assert code_of(unknown) == "4.03"
        psk_only = await client.request(server, register_message("pen04-psk-only"))
        assert code_of(psk_only) == "4.03"
        allowed = await client.request(server, register_message("pen04-nosec-ok"))
        assert allowed.code == Code.CREATED
    finally:
        client.close()
    reg = node.server.store.by_endpoint("pen04-nosec-ok")
    assert reg is not None and reg.identity == "nosec" and reg.transport is None
    assert node.server.store.by_endpoint("pen04-unknown") is None
    counters = node.security.authorizer.counters
    assert counters["no_credentials"] >= 1 and counters["nosec_refused"] >= 1


@pytest.mark.interop
async def test_libcoap_notls_refused_in_secure_mode(node: ShoalNode) -> None:
    host, port = node.server.address
    _rc, out = await libcoap(
        "coap-client-notls",
        "-m",
        "post",
        "-t",
        "40",
        "-e",
        LINKS,
        f"coap://{host}:{port}/rd?ep=pen05-plain&lt=300",
    )
    assert "4.03" in out, out
    assert node.server.store.by_endpoint("pen05-plain") is None


async def test_insecure_mode_lets_unknown_endpoints_in(start_node: StartNode) -> None:
    node = await start_node(secure=False)
    await node.security_store.create("pen06-held", modes=["psk"])
    client = await plain_client()
    try:
        ok = await client.request(node.server.address, register_message("pen06-anyone"))
        assert ok.code == Code.CREATED
        held = await client.request(node.server.address, register_message("pen06-held"))
        assert code_of(held) == "4.03"  # credentials exist: no downgrade to NoSec
    finally:
        client.close()


async def test_refusals_are_rate_limited_per_source(start_node: StartNode) -> None:
    node = await start_node(authorization=AuthorizationConfig(refusal_budget=3))
    client = await plain_client()
    try:
        codes = []
        for i in range(6):
            answer = await client.request(node.server.address, register_message(f"flood-{i}"))
            codes.append(code_of(answer))
    finally:
        client.close()
    assert codes == ["4.03"] * 3 + ["4.29"] * 3
    status = node.security.status()
    assert status["counters"]["throttled"] == 3
    assert status["throttled_hosts"] == ["127.0.0.1"]
    assert status["counters"]["log_suppressed"] >= 3
    assert node.server.counters["rejected"] == 6


def test_refusal_limiter_window() -> None:
    now = [0.0]
    limiter = RefusalLimiter(budget=2, window=10.0, max_hosts=2, clock=lambda: now[0])
    a, b, c = ("10.0.0.1", 1000), ("10.0.0.1", 2000), ("10.0.0.2", 1000)
    assert limiter.record(a) and limiter.record(b)  # same host, any port
    assert limiter.limited(a) and limiter.limited(("10.0.0.1", 3))
    assert not limiter.record(a)  # over budget: not logged
    assert not limiter.limited(c)
    now[0] = 10.5
    assert not limiter.limited(a)  # the window passed
    limiter.record(c)
    limiter.record(("10.0.0.3", 1))
    limiter.record(("10.0.0.4", 1))
    assert len(limiter) <= 2  # bounded table


# -- a registration belongs to its identity ----------------------------------------------------


async def dtls_device(node: ShoalNode, identity: str, key: str) -> DtlsClientEndpoint:
    assert node.server.secure_address is not None
    return await DtlsClientEndpoint.connect(
        node.server.secure_address, psk=(identity.encode(), key.encode())
    )


async def test_registration_is_bound_to_its_identity(
    node: ShoalNode, http: httpx.AsyncClient
) -> None:
    a = await create(http, "pen08-oxygen-000a")
    b = await create(http, "pen08-oxygen-000b")
    dev_a = await dtls_device(node, a["psk_identity"], a["psk_key"])
    dev_b = await dtls_device(node, b["psk_identity"], b["psk_key"])
    plain = await plain_client()
    tree = DeviceTree({Path(3, 0, 0): "Shoal test", Path(3, 0, 9): 87})
    tree.install(dev_a)
    try:
        created = await dev_a.register("pen08-oxygen-000a")
        assert created.code == Code.CREATED
        location = "/" + "/".join(created.location_path)
        assert location.startswith("/rd/")

        # another identity may neither update nor de-register it, nor send on it
        update_b = await dev_b.post(location)
        assert code_of(update_b) == "4.03"
        delete_b = await dev_b.request(dev_b.server, coap_request(Code.DELETE, location))
        assert code_of(delete_b) == "4.03"
        senml = json.dumps([{"n": "/3303/0/5700", "v": 21.5}]).encode()
        send_b = await dev_b.post("/dp", (), senml, SENML_JSON)
        assert code_of(send_b) == "4.03"
        # nor may anyone over NoSec, even knowing the registration id
        server = node.server.address
        update_plain = await plain.request(server, coap_request(Code.POST, location))
        assert code_of(update_plain) == "4.03"
        send_plain = await plain.request(server, coap_request(Code.POST, "/dp", (), senml, 110))
        assert code_of(send_plain) == "4.03"

        # the holder may: Update, Send, and the server's requests go through its session
        assert (await dev_a.post(location)).code == Code.CHANGED
        assert (await dev_a.post("/dp", (), senml, SENML_JSON)).code == Code.CHANGED
        response = await asyncio.wait_for(node.server.read("pen08-oxygen-000a", "/3/0/0"), 30)
        assert response.ok and response.values[Path(3, 0, 0)] == "Shoal test"
        assert "GET /3/0/0" in tree.requests
        deleted = await dev_a.request(dev_a.server, coap_request(Code.DELETE, location))
        assert deleted.code == Code.DELETED
    finally:
        for ep in (dev_a, dev_b, plain):
            ep.close()
    assert node.server.store.by_endpoint("pen08-oxygen-000a") is None
    assert node.security.authorizer.counters["downgrade_refused"] >= 1


async def test_revoke_closes_the_session_and_ends_the_registration(
    node: ShoalNode, http: httpx.AsyncClient
) -> None:
    ep = "pen09-oxygen-0009"
    cred = await create(http, ep)
    dev = await dtls_device(node, cred["psk_identity"], cred["psk_key"])
    try:
        assert (await dev.register(ep)).code == Code.CREATED
        await eventually(lambda: node.security.session_count() == 1)
        revoked = await http.delete(f"/api/v1/devices/{ep}/credentials/server")
        assert revoked.status_code == 204
        await eventually(lambda: dev.closed_by_peer)
        assert node.server.store.by_endpoint(ep) is None
        assert node.security.session_count() == 0
        assert node.security.sessions_closed_on_change == 1
    finally:
        dev.close()
    with pytest.raises(DtlsHandshakeError):
        await dtls_device(node, cred["psk_identity"], cred["psk_key"])
    after = (await http.get(f"/api/v1/devices/{ep}/credentials/server")).json()
    assert after["active"] is False and after["revoked_identity"] == ep
    assert after["psk_identity"] is None and after["has_psk_key"] is False


async def test_rotate_replaces_the_key(node: ShoalNode, http: httpx.AsyncClient) -> None:
    ep = "pen10-oxygen-0010"
    old = await create(http, ep)
    rotated = await http.post(f"/api/v1/devices/{ep}/credentials/server/rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["psk_key"] != old["psk_key"] and new["generation"] == 2
    assert rotated.headers["cache-control"] == "no-store"
    assert node.server.secure_address is not None
    with pytest.raises(DtlsHandshakeError):  # a wrong key: the handshake never finishes
        await DtlsClientEndpoint.connect(
            node.server.secure_address,
            psk=(ep.encode(), old["psk_key"].encode()),
            timeout=3.0,
        )
    dev = await dtls_device(node, ep, new["psk_key"])
    try:
        assert (await dev.register(ep)).code == Code.CREATED
    finally:
        dev.close()


async def test_provisioned_enclosure_places_the_device(
    node: ShoalNode, http: httpx.AsyncClient
) -> None:
    tenant = await node.inventory.ensure_tenant(node.config.fleet.tenant)
    farm = await node.inventory.create_farm(tenant.id, "Fjord")
    enclosure = await node.inventory.create_enclosure(farm.id, "Pen 11")
    ep = "sn-0000011"  # names no enclosure and sends no enc=
    await create(http, ep, modes=["nosec"], enclosure_code=enclosure.code.lower())
    assert node.security_store.provisioned_enclosure(ep) == enclosure.code
    client = await plain_client()
    try:
        assert (await client.request(node.server.address, register_message(ep))).code == 65
    finally:
        client.close()
    await node.fleet.drain()
    device = await node.inventory.get_device(ep)
    assert device.enclosure_id == enclosure.id
    assert device.correlation_source == CorrelationSource.PROVISIONING


# -- the API and the store -----------------------------------------------------------------


async def test_credentials_api(node: ShoalNode, http: httpx.AsyncClient, pki: Pki) -> None:
    base = "/api/v1/devices/pen12-camera/credentials"
    created = await http.post(base, json={"modes": ["psk", "x509"], "cert_common_name": "cam12"})
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    body = created.json()
    assert body["psk_key"] and body["psk_key_hex"] == body["psk_key"].encode().hex()
    again = await http.post(base, json={})
    assert again.status_code == 409
    shown = (await http.get(f"{base}/server")).json()
    assert "psk_key" not in shown and shown["has_psk_key"] is True
    assert shown["modes"] == ["psk", "x509"]
    listed = (await http.get(base)).json()
    assert [c["purpose"] for c in listed] == ["server"]

    taken = await http.post(
        "/api/v1/devices/other/credentials", json={"psk_identity": "pen12-camera"}
    )
    assert taken.status_code == 409
    bad_mode = await http.post("/api/v1/devices/x/credentials", json={"modes": ["rpk"]})
    assert bad_mode.status_code == 422
    x509_bare = await http.post("/api/v1/devices/x/credentials", json={"modes": ["x509"]})
    assert x509_bare.status_code == 422
    bad_fp = await http.post(
        "/api/v1/devices/x/credentials", json={"modes": ["x509"], "cert_fingerprint": "abcd"}
    )
    assert bad_fp.status_code == 422

    patched = await http.patch(f"{base}/server", json={"modes": ["x509"]})
    assert patched.status_code == 200, patched.text
    assert patched.json()["psk_identity"] is None and "psk_key" not in patched.json()
    readded = await http.patch(f"{base}/server", json={"modes": ["x509", "psk"]})
    assert readded.json()["psk_key"]  # a new key, shown once
    bad_code = await http.patch(f"{base}/server", json={"enclosure_code": "nope"})
    assert bad_code.status_code == 422

    bootstrap = await http.post(base, json={"purpose": "bootstrap"})
    assert bootstrap.status_code == 201
    assert bootstrap.json()["psk_identity"] == "pen12-camera/bs"
    assert (await http.delete(f"{base}/server")).status_code == 204
    assert (await http.delete(f"{base}/server")).status_code == 404
    recreated = await http.post(base, json={})
    assert recreated.status_code == 201 and recreated.json()["generation"] == 2
    assert (await http.get("/api/v1/devices/nobody/credentials/server")).status_code == 404

    acl = [
        {"instance_id": 0, "object_id": 3, "object_instance_id": 0, "acl": {"101": 7}, "owner": 101}
    ]
    put = await http.put("/api/v1/devices/pen12-camera/access-control", json=acl)
    assert put.status_code == 200, put.text
    got = (await http.get("/api/v1/devices/pen12-camera/access-control")).json()
    assert got == [{**acl[0], "acl": {"101": 7}}]
    bad_acl = [{**acl[0], "object_id": 2}]
    put_bad = await http.put("/api/v1/devices/pen12-camera/access-control", json=bad_acl)
    assert put_bad.status_code == 422

    status = (await http.get("/api/v1/security")).json()
    assert status["secure"] is True and status["credentials"] >= 2
    assert "dtls" in status and "bootstrap" in status


async def test_keys_are_sealed_at_rest(node: ShoalNode) -> None:
    store = node.security_store
    cred = await store.create("pen13-oxygen")
    assert cred.psk_key is not None and cred.psk_key.decode() not in repr(cred)
    async with node.db.session(readonly=True) as s:
        sealed = await s.scalar(
            select(SecurityCredentialRow.psk_key).where(
                SecurityCredentialRow.endpoint == "pen13-oxygen"
            )
        )
    assert sealed is not None and sealed.startswith("v1:")
    assert cred.psk_key.decode() not in sealed
    # the same master key reloads the cache; another one opens nothing
    again = SecurityStore(node.db, node.keybox)
    assert await again.load() >= 1
    assert again.psk_lookup(b"pen13-oxygen") == cred.psk_key
    stranger = SecurityStore(node.db, KeyBox.generate())
    with pytest.raises(SealError):
        await stranger.load()
    secret_file = FsPath(node.config.data_dir) / "secret.key"
    assert secret_file.stat().st_mode & 0o077 == 0
    assert (await store.get("pen13-oxygen", Purpose.SERVER)).active

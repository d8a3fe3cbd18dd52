"""The bootstrap server: sans-IO message rules, then whole bootstraps of a test client.

The client (`lwm2m_peers.DeviceTree` served by `DtlsClientEndpoint`, a CoAP
endpoint inside a pyOpenSSL DTLS session) holds a Bootstrap-Server account,
asks `POST /bs`, lets Shoal delete, discover and write its Security, Server and
Access Control objects, and then registers with what it was given, through a
new DTLS session with the provisioned PSK. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path as FsPath
from typing import Any

import httpx
import pytest

from lwm2m_peers import (
    DeviceTree,
    DtlsClientEndpoint,
    coap_request,
    quick_coap,
    register_message,
)
from shoal.coap.codes import Code
from shoal.coap.endpoint import CoapEndpoint
from shoal.coap.message import Message
from shoal.domain.correlation import CorrelationConfig
from shoal.domain.fleet import FleetConfig
from shoal.lwm2m import content
from shoal.lwm2m import requests as rq
from shoal.lwm2m.bootstrap import (
    AccessControl,
    BootstrapDelete,
    BootstrapDiscover,
    BootstrapError,
    BootstrapFinish,
    BootstrapRequest,
    SecurityAccount,
    SecurityModeCode,
    ServerAccount,
    access_control_from_values,
    bootstrap_write,
    discovered_instances,
    free_instances,
    parse_bootstrap_request,
    write_format,
)
from shoal.lwm2m.path import Path
from shoal.lwm2m.registry import default_registry
from shoal.node import NodeConfig, ShoalNode
from shoal.security.store import Purpose
from shoal.server.bootstrap import BootstrapConfig
from shoal.store import CorrelationSource

ENCLOSURE_RESOURCE = Path(33010, 0, 1)  # a vendor resource the device reports back

# -- sans-IO rules -------------------------------------------------------------------------


def test_parse_bootstrap_request() -> None:
    req = parse_bootstrap_request(["bs"], ["ep=pen01-oxygen", "pct=112"])
    assert req == BootstrapRequest("pen01-oxygen", 112)
    assert write_format(req) == rq.SENML_CBOR
    assert write_format(BootstrapRequest("x", 0)) == rq.TLV  # text cannot carry an instance
    assert write_format(BootstrapRequest("x")) == rq.TLV
    assert parse_bootstrap_request(["bs"], ["ep=a", "vendor=1"]).extra == {"vendor": "1"}
    for path, queries, code in (
        (["bs"], [], (4, 0)),
        (["bs"], ["ep="], (4, 0)),
        (["bs"], ["ep=a", "ep=b"], (4, 0)),
        (["bs"], ["ep=a", "pct=json"], (4, 0)),
        (["bs"], ["ep=" + "x" * 256], (4, 0)),
        (["rd"], ["ep=a"], (4, 4)),
        (["bs", "x"], ["ep=a"], (4, 4)),
    ):
        with pytest.raises(BootstrapError) as err:
            parse_bootstrap_request(path, queries)
        assert err.value.code == code


def test_security_server_and_access_control_values_encode() -> None:
    registry = default_registry()
    account = SecurityAccount(
        "coaps://192.0.2.1:5684",
        SecurityModeCode.PSK,
        public_key_or_identity=b"pen01",
        secret_key=b"k" * 22,
        short_server_id=101,
    )
    assert "k" * 22 not in repr(account)
    values = account.values(1)
    assert values[Path(0, 1, 0)] == "coaps://192.0.2.1:5684"
    assert values[Path(0, 1, 1)] is False and values[Path(0, 1, 2)] == 0
    assert values[Path(0, 1, 10)] == 101
    server = ServerAccount(101, 3600, "UQ").values(0)
    assert server == {
        Path(1, 0, 0): 101,
        Path(1, 0, 1): 3600,
        Path(1, 0, 6): True,
        Path(1, 0, 7): "UQ",
    }
    acl = AccessControl(4, 3, 0, {101: 7, 0: 1}, 101)
    for fmt in (rq.TLV, rq.SENML_CBOR, rq.SENML_JSON):
        for p, vals in ((Path(0, 1), values), (Path(1, 0), server), (Path(2, 4), acl.values())):
            msg = bootstrap_write(p, vals).to_coap(rq.Target((), fmt, registry))
            assert msg.code == Code.PUT and msg.content_format == fmt
            assert content.decode(fmt, msg.payload, p, registry) == vals
    assert access_control_from_values(acl.values()) == [acl]


def test_bootstrap_messages_and_discovery() -> None:
    delete = BootstrapDelete(Path(0)).to_coap()
    assert delete.code == Code.DELETE and delete.uri_path == ["0"]
    assert BootstrapDelete(Path()).to_coap().uri_path == []
    with pytest.raises(rq.RequestBuildError):
        BootstrapDelete(Path(0, 1, 2)).to_coap()
    discover = BootstrapDiscover(Path(0)).to_coap()
    assert discover.code == Code.GET and discover.accept == rq.LINK_FORMAT
    finish = BootstrapFinish().to_coap()
    assert finish.code == Code.POST and finish.uri_path == ["bs"]
    answer = b'lwm2m="1.1",</0/0>,</0/3>;ssid=101;uri="coaps://x",</1/0>;ssid=101,</3/0>'
    assert discovered_instances(answer) == {0, 3}
    assert discovered_instances(answer, 1) == {0}
    assert discovered_instances(b"</0/5>") == {5}
    assert discovered_instances(b"not links") == set()
    assert discovered_instances(b'lwm2m="1.0"') == set()
    assert free_instances({0, 1, 3}, 2) == [2, 4]
    assert free_instances(set(), 1) == [0]


# -- a node and a bootstrapping client --------------------------------------------------------


StartNode = Callable[..., Awaitable[ShoalNode]]


@pytest.fixture
async def start_node(tmp_path: FsPath) -> AsyncIterator[StartNode]:
    nodes: list[ShoalNode] = []

    async def start(**kw: Any) -> ShoalNode:
        settings: dict[str, Any] = {
            "coap_port": 0,
            "coaps_port": 0,
            "http_port": 0,
            "data_dir": str(tmp_path / f"node{len(nodes)}"),
            "fleet": FleetConfig(
                read_identity=False,
                observe_on_register=False,
                correlation=CorrelationConfig(endpoint_pattern=None),
            ),
            "bootstrap": BootstrapConfig(enclosure_resource=ENCLOSURE_RESOURCE, lifetime=600),
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


def factory_tree(node: ShoalNode, identity: bytes, key: bytes) -> DeviceTree:
    """A client as it leaves the factory: a Bootstrap-Server account and an old
    server account that the bootstrap must replace."""
    assert node.server.secure_address is not None
    port = node.server.secure_address[1]
    boot = SecurityAccount(
        f"coaps://127.0.0.1:{port}",
        SecurityModeCode.PSK,
        public_key_or_identity=identity,
        secret_key=key,
        bootstrap_server=True,
    )
    old = SecurityAccount("coap://203.0.113.9:5683", SecurityModeCode.NOSEC, short_server_id=9)
    values = {**boot.values(0), **old.values(1), **ServerAccount(9, 60).values(0)}
    values[Path(3, 0, 0)] = "Shoal test device"
    values[ENCLOSURE_RESOURCE] = "unset"
    return DeviceTree(values)


def bootstrap_request(endpoint: str) -> Message:
    return coap_request(Code.POST, "/bs", (f"ep={endpoint}",))


def code_of(msg: Message) -> str:
    return f"{msg.code >> 5}.{msg.code & 31:02d}"


async def test_psk_bootstrap_then_registration(node: ShoalNode, http: httpx.AsyncClient) -> None:
    ep = "pen21-oxygen-0021"
    tenant = await node.inventory.ensure_tenant(node.config.fleet.tenant)
    farm = await node.inventory.create_farm(tenant.id, "Fjord")
    enclosure = await node.inventory.create_enclosure(farm.id, "Pen 21")
    boot = await http.post(
        f"/api/v1/devices/{ep}/credentials",
        json={"purpose": "bootstrap", "enclosure_code": enclosure.code},
    )
    assert boot.status_code == 201, boot.text
    acl = [
        {
            "instance_id": 0,
            "object_id": 3,
            "object_instance_id": 0,
            "acl": {"101": 7},
            "owner": 101,
        },
        {
            "instance_id": 1,
            "object_id": 5,
            "object_instance_id": 65535,
            "acl": {"0": 1},
            "owner": 101,
        },
    ]
    assert (await http.put(f"/api/v1/devices/{ep}/access-control", json=acl)).status_code == 200

    identity, key = boot.json()["psk_identity"].encode(), boot.json()["psk_key"].encode()
    tree = factory_tree(node, identity, key)
    assert node.server.secure_address is not None
    bs = await DtlsClientEndpoint.connect(node.server.secure_address, psk=(identity, key))
    tree.install(bs, objects=(0, 1, 2, 3, 33010))
    try:
        asked = await bs.request(bs.server, bootstrap_request(ep))
        assert asked.code == Code.CHANGED
        await asyncio.wait_for(tree.finished.wait(), 30)
    finally:
        bs.close()
    session = await node.bootstrap.wait(ep)
    assert session.state == "finished", session.describe()
    assert tree.requests[:3] == ["DELETE /0", "DELETE /1", "GET /0"]
    assert tree.requests[-1] == "POST /bs"

    # the bootstrap account stays; the old server account is gone; a new one at /0/1
    assert tree.instances(0) == [0, 1]
    assert tree.values[Path(0, 0, 1)] is True
    account = tree.instance(0, 1)
    secure_port = node.server.secure_address[1]
    assert account[Path(0, 1, 0)] == f"coaps://127.0.0.1:{secure_port}"
    assert account[Path(0, 1, 1)] is False
    assert account[Path(0, 1, 2)] == SecurityModeCode.PSK
    assert account[Path(0, 1, 3)] == ep.encode()  # the server identity, not the bootstrap one
    assert account[Path(0, 1, 10)] == 101
    server_key = account[Path(0, 1, 5)]
    assert isinstance(server_key, bytes) and server_key != key
    assert tree.instance(1, 0) == {
        Path(1, 0, 0): 101,
        Path(1, 0, 1): 600,
        Path(1, 0, 6): True,
        Path(1, 0, 7): "U",
    }
    assert access_control_from_values(tree.values) == [
        AccessControl(0, 3, 0, {101: 7}, 101),
        AccessControl(1, 5, 65535, {0: 1}, 101),
    ]
    written = tree.values[ENCLOSURE_RESOURCE]
    assert (written.decode() if isinstance(written, bytes) else written) == enclosure.code

    # the server credentials were made for it: shown to nobody, PSK, same enclosure
    creds = {c["purpose"]: c for c in (await http.get(f"/api/v1/devices/{ep}/credentials")).json()}
    assert creds["server"]["psk_identity"] == ep and creds["server"]["active"]
    assert creds["server"]["enclosure_code"] == enclosure.code
    last = (await http.get(f"/api/v1/devices/{ep}/bootstrap")).json()
    assert last["state"] == "finished" and last["security_mode"] == "psk"

    # the bootstrap credentials do not open /rd
    bs_again = await DtlsClientEndpoint.connect(node.server.secure_address, psk=(identity, key))
    try:
        refused = await bs_again.register(ep)
        assert code_of(refused) == "4.03"
    finally:
        bs_again.close()

    # the device registers with what it was given, and answers through its session
    dev = await DtlsClientEndpoint.connect(
        node.server.secure_address, psk=(account[Path(0, 1, 3)], server_key)
    )
    tree.install(dev)
    try:
        registered = await dev.register(ep, lifetime=600)
        assert registered.code == Code.CREATED
        # the server credentials do not open /bs
        assert code_of(await dev.request(dev.server, bootstrap_request(ep))) == "4.03"
        read = await asyncio.wait_for(node.server.read(ep, "/3/0/0"), 30)
        assert read.ok and read.values[Path(3, 0, 0)] == "Shoal test device"
        on_device = await http.get(f"/api/v1/devices/{ep}/access-control/device")
        assert on_device.status_code == 200, on_device.text
        assert on_device.json()["instances"] == acl
        await node.fleet.drain()
        device = await node.inventory.get_device(ep)
        assert device.enclosure_id == enclosure.id
        assert device.correlation_source == CorrelationSource.PROVISIONING
    finally:
        dev.close()


async def test_nosec_bootstrap_only_for_a_nosec_account(
    start_node: StartNode,
) -> None:
    node = await start_node(secure=True)
    store = node.security_store
    await store.create("pen22-psk", Purpose.BOOTSTRAP, ("nosec",))
    await store.create("pen22-psk", Purpose.SERVER, ("psk",))
    await store.create("pen22-open", Purpose.BOOTSTRAP, ("nosec",))
    await store.create("pen22-open", Purpose.SERVER, ("nosec",))
    client = await CoapEndpoint.create("127.0.0.1", 0, quick_coap())
    tree = DeviceTree({Path(3, 0, 0): "plain"})
    tree.install(client)
    try:
        server = node.server.address
        # a NoSec bootstrap never carries a key
        leak = await client.request(server, bootstrap_request("pen22-psk"))
        assert code_of(leak) == "4.03"
        # nobody bootstraps without bootstrap credentials, even where NoSec is allowed
        stranger = await client.request(server, bootstrap_request("pen22-stranger"))
        assert code_of(stranger) == "4.03"
        ok = await client.request(server, bootstrap_request("pen22-open"))
        assert ok.code == Code.CHANGED
        await asyncio.wait_for(tree.finished.wait(), 30)
        session = await node.bootstrap.wait("pen22-open")
        assert session.state == "finished", session.describe()
        account = tree.instance(0, 0)  # no bootstrap account listed: instance 0 is free
        host, port = server
        assert account[Path(0, 0, 0)] == f"coap://{host}:{port}"
        assert account[Path(0, 0, 2)] == SecurityModeCode.NOSEC
        assert account[Path(0, 0, 5)] == b""
        registered = await client.request(server, register_message("pen22-open"))
        assert registered.code == Code.CREATED
    finally:
        client.close()
    assert node.bootstrap.counters["finished"] == 1


async def test_bootstrap_fails_when_the_client_refuses_a_write(
    node: ShoalNode, http: httpx.AsyncClient
) -> None:
    ep = "pen23-oxygen"
    boot = (
        await http.post(f"/api/v1/devices/{ep}/credentials", json={"purpose": "bootstrap"})
    ).json()
    identity, key = boot["psk_identity"].encode(), boot["psk_key"].encode()
    tree = factory_tree(node, identity, key)
    assert node.server.secure_address is not None
    bs = await DtlsClientEndpoint.connect(node.server.secure_address, psk=(identity, key))
    tree.install(bs, objects=(0, 2, 3))
    bs.route_prefix("/1", lambda request, remote: Message(code=Code.UNAUTHORIZED))
    try:
        assert (await bs.request(bs.server, bootstrap_request(ep))).code == Code.CHANGED
        session = await asyncio.wait_for(_ended(node, ep), 30)
    finally:
        bs.close()
    assert session.state == "failed"
    assert session.error is not None and "write /1/0 answered 4.01" in session.error
    assert not tree.finished.is_set()  # no Bootstrap-Finish after a failed write


async def _ended(node: ShoalNode, endpoint: str) -> Any:
    while True:
        session = node.bootstrap.sessions.get(endpoint)
        if session is not None and session.state != "running":
            return session
        await asyncio.sleep(0.05)

"""The pure parts of ``kpctl auth sign --format=kubernetes``: where the front door is, which clusters get a
context, the kubeconfig's shape; and the registry's ping reporting ``kube_public_addr``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from registry.cli.kpctl.auth import front_door_address, kubeconfig_document, reachable_clusters
from registry.core.errors import BadParameter
from registry.core.kube_route import cluster_prefix
from registry.core.resources import CommandLabel, KubeCluster, KubeServer, Metadata, Role, RoleConditions, User
from registry.testing import ADMIN, InProcessRegistry

ALICE = User(metadata=Metadata(name="alice"), roles=("r",))


def _server(name: str, labels: dict[str, str], host: str = "h1", dynamic: dict[str, str] | None = None) -> KubeServer:
    cluster = KubeCluster(
        metadata=Metadata(name=name, labels=labels),
        dynamic_labels={k: CommandLabel(("x",), period="1m", result=v) for k, v in (dynamic or {}).items()},
    )
    expires = datetime.now(tz=UTC) + timedelta(minutes=1)
    return KubeServer(Metadata(name=name, expires=expires), host_id=host, hostname="", version="", cluster=cluster)


def _role(allow: dict[str, str], deny: dict[str, str] | None = None) -> Role:
    return Role(
        metadata=Metadata(name="r"),
        allow=RoleConditions(kubernetes_labels=allow, kubernetes_groups=("g",)),
        deny=RoleConditions(kubernetes_labels=deny or {}),
    )


def test_reachable_clusters_use_static_and_dynamic_labels_of_any_heartbeat() -> None:
    servers = [
        _server("b", {"env": "prod"}),
        _server("a", {"env": "dev"}, dynamic={"env": "prod"}),  # a dynamic label wins a key conflict
        _server("c", {"env": "dev"}, host="h1"),
        _server("c", {"env": "dev"}, host="h2", dynamic={"env": "prod"}),  # another agent sees it as prod
        _server("d", {"env": "prod", "tier": "secret"}),
    ]
    allowed, served = reachable_clusters(ALICE, [_role({"env": "prod"}, {"tier": "secret"})], servers)
    assert allowed == ["a", "b", "c"]
    assert served == {"a", "b", "c", "d"}
    assert reachable_clusters(ALICE, [], servers)[0] == []


@pytest.mark.parametrize(
    ("ping", "used", "override", "expected", "noted"),
    [
        ({"kube_public_addr": "kube.example.com:443"}, "127.0.0.1:3025", None, "kube.example.com:443", False),
        ({"kube_public_addr": "kube.example.com:443"}, "127.0.0.1:3025", "k2:8443", "k2:8443", False),
        ({"kube_public_addr": ""}, "reg.example.com:3025", None, "reg.example.com:3026", True),
        ({}, "[::1]:3025", None, "[::1]:3026", True),  # an older registry: no field
        ({"kube_public_addr": "0.0.0.0:3026"}, "10.0.0.1:3025", None, "10.0.0.1:3026", True),
        ({"kube_public_addr": "bad host\n:1"}, "10.0.0.1:3025", None, "10.0.0.1:3026", True),
        ({}, "10.0.0.1:3025", "[fd00::1]", "[fd00::1]:3026", False),
    ],
)
def test_front_door_address(ping: dict[str, str], used: str, override: str | None, expected: str, noted: bool) -> None:
    address, notes = front_door_address(ping, used, override)
    assert address == expected
    assert bool(notes) == noted
    assert all("\n" not in note for note in notes)


@pytest.mark.parametrize("override", ["0.0.0.0:3026", "[::]:1", "kube:0", "https://kube", "kube:70000", "a\x1b:1"])
def test_front_door_override_must_be_dialable(override: str) -> None:
    with pytest.raises(BadParameter, match="--kube-public-addr"):
        front_door_address({}, "127.0.0.1:3025", override)


def test_kubeconfig_document_shape() -> None:
    doc = kubeconfig_document(
        kubeport_cluster="main",
        user="alice",
        clusters=["a", "b"],
        current="b",
        front_door="kube:3026",
        cert_pem=b"CERT\n",
        key_pem=b"KEY\n",
        ca_pems=[b"CA1", b"CA2\n"],
    )
    assert doc["current-context"] == "main-b"
    assert [c["name"] for c in doc["contexts"]] == ["main-a", "main-b"]
    assert doc["contexts"][1]["context"] == {"cluster": "main-b", "user": "main-alice"}
    assert doc["clusters"][0]["cluster"]["server"] == "https://kube:3026" + cluster_prefix("a")
    assert doc["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0ExCkNBMgo="  # CA1\nCA2\n
    assert doc["users"] == [
        {"name": "main-alice", "user": {"client-certificate-data": "Q0VSVAo=", "client-key-data": "S0VZCg=="}}
    ]


async def test_ping_reports_the_front_door_address() -> None:
    async with InProcessRegistry.open() as reg:
        async with reg.client(ADMIN) as client:
            assert (await client.ping())["kube_public_addr"] == ""
        reg.registry.kube_public_addr = "kube.example.com:443"
        async with reg.client(ADMIN) as client:
            assert (await client.ping())["kube_public_addr"] == "kube.example.com:443"

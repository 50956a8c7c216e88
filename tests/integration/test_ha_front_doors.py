"""Several registries on one etcd (issue 11 §2): each runs a front door and announces it; an agent configured
with a dead registry first and both live ones joins through a live one, keeps a tunnel to both front doors,
and kubectl works through each. When one registry goes away, kubectl through the other keeps working, the
agent drops the dead front door's tunnel and keeps serving. ``kpctl --registry dead,alive`` works.

Real etcd (``tests/fakes/etcd_server.py``), real registries and front doors on 127.0.0.1, a real agent and
real kubectl against the fake Kubernetes API. The front-door TTL and the agent's refresh period are
shortened (``monkeypatch``) so that a registry's departure is seen within seconds, not tens of seconds.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from agent.config import parse_config
from agent.service import Agent
from registry.cli import kubeport_main
from registry.frontdoor.run import run_frontdoor
from registry.host.cmdline import parse_command_line
from registry.server.serve import RegistryInfo, serve_registry
from registry.server.store_config import StoreConfig
from tests.e2e.e2e_helpers import free_port
from tests.fakes.etcd_server import shared_etcd, unique_prefix
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import SKIP_REASON, find_kubectl
from tests.helpers import KUBE_ACCESS, cluster_doc, kpctl
from tests.integration.access_setup import kubectl_until_routed, served
from tests.integration.test_agent_inprocess import admin, new_token, wait_for

pytestmark = pytest.mark.slow


async def start_registry(
    nursery: trio.Nursery, data_dir: Path, store: StoreConfig, **frontdoor: Any
) -> tuple[RegistryInfo, trio.CancelScope]:
    """A registry with its front door in its own cancel scope (cancelling it is the registry going away)."""
    scope = trio.CancelScope()
    frontdoor.setdefault("listen", "127.0.0.1:0")

    async def run(task_status: trio.TaskStatus[RegistryInfo]) -> None:
        with scope:
            await serve_registry(
                data_dir=data_dir,
                listen="127.0.0.1:0",
                cluster_name="ha-cluster",
                store_config=store,
                companions=[functools.partial(run_frontdoor, **frontdoor)],
                task_status=task_status,
            )

    info: RegistryInfo = await nursery.start(run)
    return info, scope


async def sign(data_dir: Path, user: str, out: Path) -> Path:
    """``kpctl auth sign`` through the registry of ``data_dir``: the kubeconfig names that registry's front door."""
    signed = await kpctl(
        "auth", "sign", f"--user={user}", "--format=kubernetes", f"--out={out}", "--ttl=1h", "--data-dir", str(data_dir)
    )
    assert signed.code == 0, signed.err
    return out


def server_of(kubeconfig: Path) -> str:
    doc: dict[str, Any] = yaml.safe_load(kubeconfig.read_text())
    return str(doc["clusters"][0]["cluster"]["server"])


async def test_an_agent_keeps_a_tunnel_to_every_front_door_and_survives_losing_a_registry(
    fake_kube: FakeKube, nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = find_kubectl("1.33")
    if kubectl is None:
        pytest.skip(SKIP_REASON)
    monkeypatch.setattr("registry.server.frontdoors.FRONTDOOR_TTL", 3.0)
    monkeypatch.setattr("agent.access.REFRESH_INTERVAL", 0.5)
    etcd = shared_etcd()
    store = StoreConfig(store=f"etcd://{etcd.endpoint}", etcd_prefix=unique_prefix())
    first_dir, second_dir = tmp_path / "r1", tmp_path / "r2"
    first, stop_first = await start_registry(nursery, first_dir, store)
    second_dir.mkdir(mode=0o700)
    shutil.copy2(first_dir / "etcd.key", second_dir / "etcd.key")  # every replica holds the same sealing key
    second, _ = await start_registry(nursery, second_dir, store)
    assert first.kube_address != second.kube_address

    fake_kube.grant("viewers", kind="Group", verbs=["get", "list"], resources=["pods"])
    fake_kube.add_pod("web-1")
    async with await admin(first) as client:
        await client.create(cluster_doc("prod", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "prod"}))
    role = tmp_path / "role.yaml"
    role.write_text(KUBE_ACCESS)
    assert (await kpctl("create", "-f", str(role), "--data-dir", str(first_dir))).code == 0
    assert (await kpctl("users", "add", "alice", "--roles=kube-access", "--data-dir", str(first_dir))).code == 0

    # The agent lists a dead registry first: it joins through a live one.
    dead = f"127.0.0.1:{free_port()}"
    doc = {
        "kubeport": {
            "registry": [dead, first.address, second.address],
            "token": await new_token(second),
            "ca_pin": first.ca_pin,
            "data_dir": str(tmp_path / "agent"),
        },
        "kubernetes_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "resources": [{"labels": {"*": "*"}}]},
    }
    agent = Agent(parse_config(yaml.safe_dump(doc), source="ha agent"))
    with trio.fail_after(60):
        await nursery.start(agent.serve)
    doors = tuple(sorted([first.kube_address, second.kube_address]))

    async def both_tunnels_up() -> bool:
        await trio.lowlevel.checkpoint()
        return agent.tunnels is not None and agent.tunnels.connected() == doors

    await wait_for(both_tunnels_up, timeout=30, what="a tunnel to each front door")
    await wait_for(lambda: served(first, "prod"), timeout=30, what="the agent serving prod")

    kubeconfigs = {
        "first": await sign(first_dir, "alice", tmp_path / "kc-first"),
        "second": await sign(second_dir, "alice", tmp_path / "kc-second"),
    }
    assert first.kube_address in server_of(kubeconfigs["first"])
    assert second.kube_address in server_of(kubeconfigs["second"])
    for name, kubeconfig in kubeconfigs.items():
        code, out, err = await kubectl_until_routed(
            kubectl, ["get", "pods", "-n", "default"], kubeconfig=kubeconfig, home=tmp_path / f"home-{name}"
        )
        assert code == 0, err
        assert "web-1" in out

    stop_first.cancel()  # the first registry and its front door go away

    async def only_second() -> bool:
        await trio.lowlevel.checkpoint()
        return agent.tunnels is not None and agent.tunnels.addresses == (second.kube_address,)

    await wait_for(only_second, timeout=30, what="the agent dropping the dead front door's tunnel")
    assert agent.tunnels is not None and agent.tunnels.statistics()["dropped_total"] == 1
    code, out, err = await kubectl_until_routed(
        kubectl, ["get", "pods", "-n", "default"], kubeconfig=kubeconfigs["second"], home=tmp_path / "home-after"
    )
    assert code == 0, err
    assert "web-1" in out

    # Still serving: its heartbeats reach the surviving registry.
    async def renewed_through_second() -> bool:
        async with await admin(second) as client:
            servers, _ = await client.list("kube_server")
        return any(s["metadata"]["name"] == "prod" for s in servers)

    await wait_for(renewed_through_second, timeout=30, what="the agent still serving prod")

    # Through the dead first, then the live second: kpctl fails over.
    listed = await kpctl(
        "get", "kube_clusters", "--registry", f"{first.address},{second.address}", "--data-dir", str(second_dir)
    )
    assert listed.code == 0, listed.err
    assert "prod" in listed.out
    monkeypatch.setenv("KUBEPORT_REGISTRY", f"{first.address},{second.address}")
    listed = await kpctl("get", "kube_clusters", "--data-dir", str(second_dir))
    assert listed.code == 0, listed.err
    assert "prod" in listed.out


async def test_front_doors_behind_one_load_balancer_announce_their_own_tunnel_addresses(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """``--kube-public-addr`` names the balancer in kubeconfigs; ``--kube-tunnel-addr`` lets each front door
    announce where agents reach it directly, so the agent holds a tunnel to each (through the balancer it
    would reach only one of them)."""
    etcd = shared_etcd()
    store = StoreConfig(store=f"etcd://{etcd.endpoint}", etcd_prefix=unique_prefix())
    balancer = "kube.example.com:443"
    ports = [free_port(), free_port()]
    infos = []
    for index, port in enumerate(ports):
        data_dir = tmp_path / f"r{index}"
        if index:
            data_dir.mkdir(mode=0o700)
            shutil.copy2(tmp_path / "r0" / "etcd.key", data_dir / "etcd.key")
        info, _ = await start_registry(
            nursery,
            data_dir,
            store,
            listen=f"127.0.0.1:{port}",
            public_addr=balancer,
            tunnel_addr=f"127.0.0.1:{port}",
        )
        infos.append(info)
    async with await admin(infos[1]) as client:
        ping = await client.ping()
    assert ping["kube_public_addr"] == balancer  # what kubeconfigs name: unchanged
    assert ping.get("kube_front_doors") == [f"127.0.0.1:{p}" for p in sorted(ports)]

    doc = {
        "kubeport": {
            "registry": f"{infos[0].address},{infos[1].address}",
            "token": await new_token(infos[0]),
            "ca_pin": infos[0].ca_pin,
            "data_dir": str(tmp_path / "agent"),
        },
        "kubernetes_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "resources": [{"labels": {"*": "*"}}]},
    }
    agent = Agent(parse_config(yaml.safe_dump(doc), source="ha agent"))
    await nursery.start(agent.serve)

    async def both_tunnels_up() -> bool:
        await trio.lowlevel.checkpoint()
        return agent.tunnels is not None and len(agent.tunnels.connected()) == 2

    await wait_for(both_tunnels_up, timeout=30, what="a tunnel to each front door behind the balancer")


@pytest.mark.parametrize("value", ["3026", ":3026", "", "a b:1", "http://h:1", "h\n:1", "h" * 300])
def test_kube_tunnel_addr_needs_a_dialable_host(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_command_line(kubeport_main.build_parser(), ["registry", "start", "--kube-tunnel-addr", value])
    assert exc.value.code == 2
    assert "--kube-tunnel-addr" in capsys.readouterr().err


def test_kube_tunnel_addr_reaches_the_front_door() -> None:
    args = parse_command_line(kubeport_main.build_parser(), ["registry", "start", "--kube-tunnel-addr", "fd1:3026"])
    assert args.kube_tunnel_addr == "fd1:3026"
    companion = kubeport_main._frontdoor(args)
    assert isinstance(companion, functools.partial)
    assert companion.keywords["tunnel_addr"] == "fd1:3026"

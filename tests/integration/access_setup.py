"""What the end-to-end access tests share (issue 9): a real registry with its front door on free ports, a real
agent holding a tunnel to it, the fake Kubernetes API registered as a kube_cluster, and kubeconfigs written by
``kpctl auth sign`` for real kubectl.

``access_registry`` is a fixture (import it into the test module); :func:`start_access` does the rest of the
walkthrough in one call and returns an :class:`Access` with what the tests need.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from agent.service import Agent
from registry.core.identity import CertAuthority
from registry.frontdoor.run import run_frontdoor
from registry.server.serve import RegistryInfo, serve_registry
from registry.server.service import Registry
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import run_kubectl
from tests.helpers import KUBE_ACCESS, cluster_doc, kpctl
from tests.integration.test_agent_inprocess import admin, agent_config, new_token, wait_for


@dataclass
class AccessRegistry:
    """The registry (as :class:`RegistryInfo` gives it) and its cluster CA, captured by a companion."""

    info: RegistryInfo
    ca: CertAuthority


@dataclass
class Access:
    registry: AccessRegistry
    cluster: str
    kubeconfig: Path
    homes: Path
    _count: list[int] = field(default_factory=lambda: [0])

    def home(self) -> Path:
        """A fresh HOME for one kubectl run (kubectl caches discovery per HOME)."""
        self._count[0] += 1
        return self.homes / f"home-{self._count[0]}"


async def served(registry: RegistryInfo, name: str) -> bool:
    async with await admin(registry) as client:
        servers, _ = await client.list("kube_server")
    return any(s["metadata"]["name"] == name for s in servers)


# How kubectl shows the front door's 503 while no agent holds a tunnel yet: the reason (older kubectl), the
# Status message, and kubectl 1.33's own wording for a 503.
_NOT_ROUTED_YET = ("ServiceUnavailable", "no agent", "the server is currently unable to handle the request")


async def kubectl_until_routed(binary: str, args: list[str], *, kubeconfig: Path, home: Path) -> tuple[int, str, str]:
    """Run kubectl; while the agent's tunnel is still coming up the front door answers 503 (no agent with a
    live tunnel), so retry that one answer for a few seconds (bounded)."""
    with trio.fail_after(30):
        while True:
            result = await run_kubectl(binary, args, kubeconfig=kubeconfig, home=home)
            out, err = result.stdout.decode(), result.stderr.decode()
            if not any(sign in err for sign in _NOT_ROUTED_YET):
                return result.returncode, out, err
            await trio.sleep(0.2)  # a bounded retry of a refused call, not a wait for a condition to sleep on


async def _capture_ca(
    found: list[CertAuthority], _registry: Registry, ca: CertAuthority, task_status: trio.TaskStatus[None]
) -> None:
    found.append(ca)
    task_status.started()
    await trio.sleep_forever()


async def start_access_registry(nursery: trio.Nursery, data_dir: Path) -> AccessRegistry:
    found: list[CertAuthority] = []
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(
            data_dir=data_dir,
            listen="127.0.0.1:0",
            cluster_name="test-cluster",
            companions=[
                functools.partial(run_frontdoor, listen="127.0.0.1:0"),
                functools.partial(_capture_ca, found),
            ],
            task_status=task_status,
        )
    )
    return AccessRegistry(info, found[0])


@pytest.fixture
async def access_registry(nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AccessRegistry:
    data_dir = tmp_path / "registry-data"
    registry = await start_access_registry(nursery, data_dir)
    monkeypatch.setenv("KUBEPORT_DATA_DIR", str(data_dir))
    return registry


async def start_agent(registry: RegistryInfo, nursery: trio.Nursery, data_dir: Path) -> Agent:
    config = agent_config(registry, await new_token(registry), data_dir, [{"labels": {"*": "*"}}])
    agent = Agent(config)
    await nursery.start(agent.serve)
    return agent


async def add_cluster(registry: RegistryInfo, fake: FakeKube, name: str, labels: dict[str, str]) -> None:
    async with await admin(registry) as client:
        await client.create(cluster_doc(name, fake.kubeconfig_yaml(token="admin-token"), labels))
    await wait_for(lambda: served(registry, name), what=f"the agent serving {name}")


async def add_user(tmp_path: Path, user: str, roles: dict[str, str]) -> Path:
    """Create the roles (name -> YAML) and ``user`` with them; return the kubeconfig ``kpctl auth sign`` wrote."""
    for name, text in roles.items():
        path = tmp_path / f"role-{name}.yaml"
        path.write_text(text)
        created = await kpctl("create", "-f", str(path))
        assert created.code == 0, created.err
    added = await kpctl("users", "add", user, f"--roles={','.join(roles)}")
    assert added.code == 0, added.err
    kubeconfig = tmp_path / f"kubeconfig-{user}"
    signed = await kpctl("auth", "sign", f"--user={user}", "--format=kubernetes", f"--out={kubeconfig}", "--ttl=1h")
    assert signed.code == 0, signed.err
    return kubeconfig


async def start_access(
    registry: AccessRegistry,
    fake: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    *,
    cluster: str = "mycluster",
    user: str = "alice",
    roles: dict[str, str] | None = None,
) -> Access:
    """The walkthrough in one call: an agent serving every cluster, the fake registered as ``cluster``, the
    roles and ``user`` created, the user's kubeconfig signed."""
    await start_agent(registry.info, nursery, tmp_path / "agent")
    await add_cluster(registry.info, fake, cluster, {"env": "prod"})
    kubeconfig = await add_user(tmp_path, user, roles if roles is not None else {"kube-access": KUBE_ACCESS})
    return Access(registry, cluster, kubeconfig, tmp_path / "homes")

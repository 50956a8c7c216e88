"""End to end, high availability (issue 11 §2): real ``kubeport registry start --store etcd://`` processes, a
real ``kubeport agent start`` whose config lists both registries, and real kubectl.

One registry is killed with SIGKILL: kubectl through the other registry's front door keeps working at once
(the agent holds a tunnel to each front door), and the agent keeps serving: a cluster created through the
surviving registry afterwards is picked up and reachable.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
import yaml

from tests.e2e.e2e_helpers import Harness, agent_config_yaml, new_token, served
from tests.fakes.etcd_server import shared_etcd, unique_prefix
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import SKIP_REASON, find_kubectl
from tests.helpers import KUBE_ACCESS, kpctl, seed_kube_cluster_yaml
from tests.integration.access_setup import kubectl_until_routed

pytestmark = pytest.mark.slow


async def test_kill_9_one_registry_and_kubectl_through_the_other_keeps_working(
    tmp_path: Path, fake_kube: FakeKube
) -> None:
    kubectl = find_kubectl("1.33")
    if kubectl is None:
        pytest.skip(SKIP_REASON)
    etcd = shared_etcd()
    store = ("--store", f"etcd://{etcd.endpoint}", "--etcd-prefix", unique_prefix())
    first_dir, second_dir = tmp_path / "r1", tmp_path / "r2"
    fake_kube.grant("viewers", kind="Group", verbs=["get", "list"], resources=["pods"])
    fake_kube.add_pod("web-1")
    async with Harness(tmp_path) as h:
        first = await h.start_registry(data_dir=first_dir, extra=store, name="registry-1")
        second_dir.mkdir(mode=0o700)
        shutil.copy2(first_dir / "etcd.key", second_dir / "etcd.key")
        second = await h.start_registry(data_dir=second_dir, extra=store, name="registry-2")

        for name in ("prod", "later"):
            (tmp_path / f"{name}.yaml").write_text(
                seed_kube_cluster_yaml(name, fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "prod"})
            )
        assert (await kpctl("create", str(tmp_path / "prod.yaml"), "--data-dir", str(first_dir))).code == 0
        (tmp_path / "role.yaml").write_text(KUBE_ACCESS)
        assert (await kpctl("create", "-f", str(tmp_path / "role.yaml"), "--data-dir", str(first_dir))).code == 0
        added = await kpctl("users", "add", "alice", "--roles=kube-access", "--data-dir", str(first_dir))
        assert added.code == 0, added.err

        agent_dir = tmp_path / "agent-data"
        doc = yaml.safe_load(
            agent_config_yaml(
                first, data_dir=agent_dir, token=await new_token(first), resources=[{"labels": {"*": "*"}}]
            )
        )
        doc["kubeport"]["registry"] = [first.address, second.address]
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump(doc))
        agent = await h.start_agent(config, second, data_dir=agent_dir)
        for registry in (first, second):
            door = str((await registry.client.ping())["kube_public_addr"])
            await h.wait_for(
                lambda door=door: _logged(agent.child.stderr(), f"tunnel to the front door at {door} is up"),  # type: ignore[misc]
                timeout=30,
                what=f"the agent's tunnel to {door}",
            )
        await h.wait_for(lambda: _has(served(second, agent.host_id), "prod"), timeout=60, what="prod served")

        kubeconfig = tmp_path / "kubeconfig"
        signed = await kpctl(
            "auth", "sign", "--user=alice", "--format=kubernetes", f"--out={kubeconfig}", "--ttl=1h",
            "--data-dir", str(second_dir),
        )  # fmt: skip
        assert signed.code == 0, signed.err
        args = ["get", "pods", "-n", "default"]
        code, out, err = await kubectl_until_routed(kubectl, args, kubeconfig=kubeconfig, home=tmp_path / "h1")
        assert code == 0 and "web-1" in out, err

        await first.child.stop(signal.SIGKILL)

        code, out, err = await kubectl_until_routed(kubectl, args, kubeconfig=kubeconfig, home=tmp_path / "h2")
        assert code == 0 and "web-1" in out, err
        created = await kpctl("create", str(tmp_path / "later.yaml"), "--data-dir", str(second_dir))
        assert created.code == 0, created.err
        await h.wait_for(lambda: _has(served(second, agent.host_id), "later"), timeout=60, what="later served")
        assert agent.child.returncode is None


async def _has(names: object, name: str) -> bool | None:
    found = await names  # type: ignore[misc]
    return True if name in found else None


async def _logged(text: str, line: str) -> bool | None:
    return True if line in text else None

"""The seed walkthrough end to end (issue 9): a real registry with its front door, a real agent holding a
tunnel, the fake Kubernetes API as the cluster, kpctl for the admin steps and real kubectl for the user.

    kpctl create -f kube-access.yaml          # seed 003's role
    kpctl users add alice --roles=kube-access
    kpctl auth sign --user=alice --format=kubernetes --out=kubeconfig --ttl=25h
    kubectl --kubeconfig kubeconfig get pods

What the cluster receives is checked on the fake's request record: the agent's credential, and
``Impersonate-User: alice`` with ``Impersonate-Group: viewers`` (plus ``system:authenticated``).
"""

from __future__ import annotations

import re
from pathlib import Path

import trio
import yaml

from agent.service import Agent
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import require_kubectl
from tests.helpers import KUBE_ACCESS, cluster_doc, kpctl
from tests.integration.access_setup import AccessRegistry, access_registry, kubectl_until_routed, served  # noqa: F401
from tests.integration.test_agent_inprocess import admin, agent_config, new_token, wait_for

KUBE_DEV_ONLY = """\
kind: role
metadata:
  name: kube-dev
version: v7
spec:
  allow:
    kubernetes_labels:
      env: dev
    kubernetes_resources:
      - kind: '*'
        namespace: '*'
        name: '*'
        verbs: ['*']
    kubernetes_groups:
    - viewers
"""


async def test_seed_walkthrough_kubectl_get_pods_through_kubeport(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    kubectl = require_kubectl()
    registry = access_registry.info
    assert registry.kube_address, "the registry advertises its front door"
    fake_kube.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake_kube.add_pod("web-1")

    config = agent_config(registry, await new_token(registry), tmp_path / "agent", [{"labels": {"*": "*"}}])
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        await client.create(cluster_doc("mycluster", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "prod"}))
    await wait_for(lambda: served(registry, "mycluster"), what="the agent serving mycluster")

    (tmp_path / "kube-access.yaml").write_text(KUBE_ACCESS)
    assert (await kpctl("create", "-f", str(tmp_path / "kube-access.yaml"))).code == 0
    added = await kpctl("users", "add", "alice", "--roles=kube-access")
    assert added.code == 0, added.err
    kubeconfig = tmp_path / "kubeconfig"
    signed = await kpctl("auth", "sign", "--user=alice", "--format=kubernetes", f"--out={kubeconfig}", "--ttl=25h")
    assert signed.code == 0, signed.err
    assert f"The credentials have been written to {kubeconfig}" in signed.out
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    written = yaml.safe_load(kubeconfig.read_text())
    assert written["current-context"] == "test-cluster-mycluster"
    assert "admin-token" not in kubeconfig.read_text(), "kubectl never sees a cluster credential"

    fake_kube.requests.clear()
    code, out, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=tmp_path / "h")
    assert code == 0, err
    assert "web-1" in out

    listed = [r for r in fake_kube.requests if r.path == "/api/v1/namespaces/default/pods" and r.status == 200]
    assert listed, [(r.method, r.path, r.status) for r in fake_kube.requests]
    request = listed[-1]
    assert request.impersonated_user == "alice"
    assert set(request.impersonated_groups) >= {"viewers", "system:authenticated"}
    assert "system:masters" not in request.impersonated_groups
    assert request.user == "kubernetes-admin"  # the kube_cluster's own credential, held by the agent

    # A resource the cluster's RBAC does not grant viewers: the API server's 403 reaches kubectl as is.
    code, _, err = await kubectl_until_routed(kubectl, ["get", "secrets"], kubeconfig=kubeconfig, home=tmp_path / "h")
    assert code != 0 and "Forbidden" in err

    # A group forged on the command line is refused before it reaches the cluster.
    before = len(fake_kube.requests)
    code, _, err = await kubectl_until_routed(
        kubectl, ["get", "pods", "--as=alice", "--as-group=system:masters"], kubeconfig=kubeconfig, home=tmp_path / "h"
    )
    assert code != 0 and "Forbidden" in err
    assert not any("system:masters" in r.impersonated_groups for r in fake_kube.requests[before:]), (
        "a forged group never reaches the cluster"
    )

    # The request is audited with who, where and what.
    async def audited() -> list[dict[str, object]]:
        async with await admin(registry) as client:
            page, _ = await client.events_page(limit=200, event="kube.request")
        return [e for e in page if e.get("user") == "alice" and e.get("verb") == "list" and e.get("resource") == "pods"]

    events = await wait_for(audited, what="the kube.request audit event of kubectl get pods")
    event = events[0]
    assert event["cluster"] == "mycluster" and event["status"] == 200
    assert event["impersonated_user"] == "alice" and "viewers" in event["impersonated_groups"]  # type: ignore[operator]
    assert event["reported_by"] == event["host"]


async def test_a_cluster_the_roles_do_not_select_answers_like_one_that_does_not_exist(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    kubectl = require_kubectl()
    registry = access_registry.info
    config = agent_config(registry, await new_token(registry), tmp_path / "agent", [{"labels": {"*": "*"}}])
    await nursery.start(Agent(config).serve)
    async with await admin(registry) as client:
        await client.create(cluster_doc("prod", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "prod"}))
        await client.create(cluster_doc("dev", fake_kube.kubeconfig_yaml(token="admin-token"), {"env": "dev"}))
    await wait_for(lambda: served(registry, "prod"), what="the agent serving prod")
    await wait_for(lambda: served(registry, "dev"), what="the agent serving dev")
    (tmp_path / "dev.yaml").write_text(KUBE_DEV_ONLY)
    assert (await kpctl("create", "-f", str(tmp_path / "dev.yaml"))).code == 0
    assert (await kpctl("users", "add", "bob", "--roles=kube-dev")).code == 0
    kubeconfig = tmp_path / "kubeconfig"
    signed = await kpctl("auth", "sign", "--user=bob", "--format=kubernetes", f"--out={kubeconfig}", "--ttl=1h")
    assert signed.code == 0, signed.err
    written = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in written["contexts"]] == ["test-cluster-dev"], "only the selected cluster"

    # bob's kubeconfig pointed by hand at prod (not selected) and at a name that does not exist: the front
    # door gives both the same answer, so the existence of prod is not leaked.
    server = written["clusters"][0]["cluster"]["server"]
    base = server.rsplit("/", 1)[0]
    answers = []
    for segment in ("cHJvZA", "bm9uZQ"):  # base64url("prod"), base64url("none")
        edited = yaml.safe_load(kubeconfig.read_text())
        edited["clusters"][0]["cluster"]["server"] = f"{base}/{segment}"
        path = tmp_path / f"kc-{segment}"
        path.write_text(yaml.safe_dump(edited))
        code, _, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=path, home=tmp_path / "h")
        assert code != 0
        # kubectl stamps its log lines with time and pid: compare what the front door said, not when
        said = re.sub(r"^[EWI]\d{4} [\d:.]+\s+\d+ ", "", err, flags=re.MULTILINE)
        answers.append(said.replace('"prod"', '"X"').replace('"none"', '"X"'))
    assert "NotFound" in answers[0] or "not found" in answers[0], answers[0]
    assert answers[0] == answers[1]

"""A user's daily loop with real kubectl (issue 10 §3, §5): login → kube ls (only the allowed clusters, the
Selected marker) → kube login → kubectl get pods through the exec plugin → logout, through a real registry,
its front door, an agent and the fake Kubernetes API.

The login is saved as ``kubeport login`` saves it (user_loop_helpers.save_user_login). kubectl runs with
its own HOME and only PATH and KUBECONFIG in its environment: the exec entry kube login wrote must carry
everything the plugin needs (the interpreter, the source tree, KUBEPORT_HOME).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import yaml

from registry.cli.login_common import first_contact, save_login
from registry.cli.profile import KubeportHome
from registry.core.identity import Identity, generate_private_key, public_key_pem
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import require_kubectl, run_kubectl
from tests.helpers import KUBE_ACCESS, kpctl
from tests.integration.access_setup import (  # noqa: F401 - access_registry is a fixture
    AccessRegistry,
    access_registry,
    add_cluster,
    kubectl_until_routed,
    start_agent,
)
from tests.integration.user_loop_helpers import kubeport, save_user_login

PROD_ONLY = KUBE_ACCESS.replace("name: kube-access", "name: prod-only").replace("'*': '*'", "env: prod")
HINT = "run kubeport login"


@pytest.fixture
def kubectl() -> str:
    return require_kubectl()


async def _setup(
    registry: AccessRegistry, fake: FakeKube, nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Two clusters (prod, dev), a user alice whose role selects env=prod only; returns the kubeconfig path."""
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "kphome"))
    kubeconfig = tmp_path / "kube" / "config"
    monkeypatch.setenv("KUBECONFIG", f"{kubeconfig}{':'}{tmp_path / 'kube' / 'second'}")
    monkeypatch.delenv("KUBEPORT_IDENTITY", raising=False)
    fake.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake.add_pod("web-1")
    await start_agent(registry.info, nursery, tmp_path / "agent")
    await add_cluster(registry.info, fake, "prodcluster", {"env": "prod"})
    await add_cluster(registry.info, fake, "devcluster", {"env": "dev"})
    (tmp_path / "prod-only.yaml").write_text(PROD_ONLY)
    assert (await kpctl("create", "-f", str(tmp_path / "prod-only.yaml"))).code == 0
    added = await kpctl("users", "add", "alice", "--roles=prod-only")
    assert added.code == 0, added.err
    return kubeconfig


async def test_daily_loop_kube_ls_login_kubectl_logout(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kubectl: str,
) -> None:
    kubeconfig = await _setup(access_registry, fake_kube, nursery, tmp_path, monkeypatch)
    # Someone else's entries in the same kubeconfig: they must survive every step.
    kubeconfig.parent.mkdir(parents=True)
    other = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "other", "cluster": {"server": "https://other.example:6443"}}],
        "contexts": [{"name": "other", "context": {"cluster": "other", "user": "bob"}}],
        "users": [{"name": "bob", "user": {"token": "bob-token"}}],
        "current-context": "other",
        "preferences": {"colors": True},
    }
    kubeconfig.write_text(yaml.safe_dump(other))
    await save_user_login(access_registry.info, tmp_path / "kphome", "alice")

    listed = await kubeport("kube", "ls")
    assert listed.code == 0, listed.err
    lines = listed.out.splitlines()
    assert lines[0].split() == ["Kube", "Cluster", "Name", "Labels", "Selected"]
    assert "prodcluster" in listed.out and "devcluster" not in listed.out, "only the clusters the role selects"
    assert not lines[-1].rstrip().endswith("*"), "no context of ours is current yet"

    refused = await kubeport("kube", "login", "devcluster")
    missing = await kubeport("kube", "login", "nosuchcluster")
    assert refused.code == missing.code == 1
    assert refused.err.replace("devcluster", "X") == missing.err.replace("nosuchcluster", "X"), "not allowed = missing"

    logged = await kubeport("kube", "login", "prodcluster")
    assert logged.code == 0, logged.err
    assert logged.out.strip() == (
        "Logged into kubernetes cluster \"prodcluster\". Try 'kubectl version' to test the connection."
    )
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    doc = yaml.safe_load(kubeconfig.read_text())
    assert doc["current-context"] == "test-cluster-prodcluster"
    assert {"other", "test-cluster-prodcluster"} == {c["name"] for c in doc["contexts"]}
    assert doc["preferences"] == {"colors": True} and any(u["name"] == "bob" for u in doc["users"])
    ours = next(u for u in doc["users"] if u["name"] == "kubeport-test-cluster")["user"]["exec"]
    assert ours["apiVersion"] == "client.authentication.k8s.io/v1" and ours["interactiveMode"] == "Never"
    assert ours["provideClusterInfo"] is False
    assert "PRIVATE KEY" not in kubeconfig.read_text(), "the key stays in the login, not the kubeconfig"
    assert not (tmp_path / "kube" / "second").exists(), "kubectl writes the first file of KUBECONFIG"

    listed = await kubeport("kube", "ls", "--format", "json")
    assert json.loads(listed.out) == [
        {
            "kube_cluster_name": "prodcluster",
            "labels": json.loads(listed.out)[0]["labels"],
            "health": json.loads(listed.out)[0]["health"],
            "selected": True,
        }
    ]
    text = await kubeport("kube", "ls")
    assert text.out.splitlines()[-1].rstrip().endswith("*")

    code, out, err = await kubectl_until_routed(
        kubectl, ["get", "pods", "-o", "name"], kubeconfig=kubeconfig, home=tmp_path / "h1"
    )
    assert code == 0, err
    assert "pod/web-1" in out
    impersonated = [r for r in fake_kube.requests if r.impersonated_user == "alice"]
    assert impersonated, "the front door saw alice's certificate from the exec plugin"

    status = await kubeport("status")
    assert status.code == 0, status.err
    assert "alice" in status.out and "prod-only" in status.out and "viewers" in status.out
    assert '"prodcluster"' in status.out

    saved_copy = tmp_path / "kubeconfig-before-logout"
    shutil.copy(kubeconfig, saved_copy)
    out_ = await kubeport("logout")
    assert out_.code == 0, out_.err
    doc = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in doc["contexts"]] == ["other"]
    assert [c["name"] for c in doc["clusters"]] == ["other"]
    assert [u["name"] for u in doc["users"]] == ["bob"]
    assert doc["current-context"] == "", "our current context is gone"
    assert not list((tmp_path / "kphome" / "keys").rglob("*.identity")), "the certificate and key are removed"

    after = await run_kubectl(kubectl, ["get", "pods"], kubeconfig=saved_copy, home=tmp_path / "h2")
    assert after.returncode != 0
    assert HINT in after.stderr.decode()


async def test_expired_login_makes_kubectl_print_the_login_hint(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kubectl: str,
) -> None:
    kubeconfig = await _setup(access_registry, fake_kube, nursery, tmp_path, monkeypatch)
    home = KubeportHome(tmp_path / "kphome")
    await save_user_login(access_registry.info, home.root, "alice")
    assert (await kubeport("kube", "login", "prodcluster")).code == 0

    # Replace the login with one whose certificate expired an hour ago (same CA, same user).
    key = generate_private_key()
    past = datetime.now(tz=UTC) - timedelta(hours=2)
    cert = access_registry.ca.issue(
        public_key_pem(key), Identity(name="alice", kind="user", roles=("prod-only",)), ttl=timedelta(hours=1), now=past
    )
    contact = await first_contact([access_registry.info.address], home=home)
    save_login(home, contact, user="alice", key_pem=key, cert_pem=cert, ca_pems=[access_registry.ca.cert_pem])

    result = await run_kubectl(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=tmp_path / "h1")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert HINT in stderr and "expired" in stderr
    listed = await kubeport("kube", "ls")
    assert listed.code == 1 and HINT in listed.err
    status = await kubeport("status")
    assert status.code == 1 and "EXPIRED" in status.out and HINT in status.err


async def test_kube_logout_one_cluster_keeps_the_rest(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kubeconfig = await _setup(access_registry, fake_kube, nursery, tmp_path, monkeypatch)
    (tmp_path / "all.yaml").write_text(KUBE_ACCESS)
    assert (await kpctl("create", "-f", str(tmp_path / "all.yaml"))).code == 0
    assert (await kpctl("users", "add", "carol", "--roles=prod-only,kube-access")).code == 0
    await save_user_login(access_registry.info, tmp_path / "kphome", "carol")
    logged = await kubeport("kube", "login", "--all")
    assert logged.code == 0, logged.err
    names = {c["name"] for c in yaml.safe_load(kubeconfig.read_text())["contexts"]}
    assert names == {"test-cluster-prodcluster", "test-cluster-devcluster"}

    out = await kubeport("kube", "logout", "prodcluster")
    assert out.code == 0, out.err
    assert 'Logged out of kubernetes cluster "prodcluster".' in out.out
    doc = yaml.safe_load(kubeconfig.read_text())
    assert "test-cluster-prodcluster" not in {c["name"] for c in doc["contexts"]}
    assert {c["name"] for c in doc["contexts"]} == {"test-cluster-devcluster"}
    assert {u["name"] for u in doc["users"]} == {"kubeport-test-cluster"}, "still used by devcluster's context"
    again = await kubeport("kube", "logout", "prodcluster")
    assert again.code == 1 and "not logged into" in again.err

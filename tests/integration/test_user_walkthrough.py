"""Issue 10's whole user walkthrough with nothing simulated but the Kubernetes API: an admin adds alice,
alice signs up (password + TOTP), logs in with her password and a one-time code, lists what she may reach,
logs into a cluster, runs real kubectl through the front door, and logs out; the kubeconfig saved before
logout then fails with the "run kubeport login" hint.

    kpctl users add alice --roles=prod-only     (prints the signup command)
    kubeport signup ... --password-stdin
    kubeport login --registry ... --user alice --password-stdin
    kubeport kube ls / kube login prodcluster / kubectl get pods / kubeport logout
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import yaml

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
from tests.integration.test_local_login import SIGNUP_LINE, code_after, totp_secret
from tests.integration.user_loop_helpers import kubeport

PROD_ONLY = KUBE_ACCESS.replace("name: kube-access", "name: prod-only").replace("'*': '*'", "env: prod")
PASSWORD = "correct horse battery staple"


async def test_signup_login_kube_ls_kube_login_kubectl_logout(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kubectl = require_kubectl()
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "alice"))
    kubeconfig = tmp_path / "kube" / "config"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    fake_kube.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake_kube.add_pod("web-1")
    registry = access_registry.info
    await start_agent(registry, nursery, tmp_path / "agent")
    await add_cluster(registry, fake_kube, "prodcluster", {"env": "prod"})
    await add_cluster(registry, fake_kube, "devcluster", {"env": "dev"})

    # The admin.
    (tmp_path / "role.yaml").write_text(PROD_ONLY)
    assert (await kpctl("create", "-f", str(tmp_path / "role.yaml"))).code == 0
    added = await kpctl("users", "add", "alice", "--roles=prod-only")
    found = SIGNUP_LINE.search(added.out)
    assert added.code == 0 and found, added.out + added.err
    address, token, pin = found.groups()

    # Alice: signup, then login with her password and a fresh code (the signup's code cannot be replayed).
    secret = await totp_secret(address, token, access_registry.ca.cert_pem)
    signup = await kubeport(
        "signup", "--registry", address, "--token", token, "--ca-pin", pin, "--password-stdin",
        stdin=f"{PASSWORD}\n{code_after(secret, 0)}\n",
    )  # fmt: skip
    assert signup.code == 0, signup.err
    login = await kubeport(
        "login", "--registry", address, "--user", "alice", "--ca-pin", pin, "--password-stdin",
        stdin=f"{PASSWORD}\n{code_after(secret, 30)}\n",
    )  # fmt: skip
    assert login.code == 0, login.err
    assert PASSWORD not in login.out + login.err

    listed = await kubeport("kube", "ls")
    assert listed.code == 0, listed.err
    assert "prodcluster" in listed.out and "devcluster" not in listed.out

    logged = await kubeport("kube", "login", "prodcluster")
    assert logged.code == 0, logged.err
    assert 'Logged into kubernetes cluster "prodcluster"' in logged.out
    assert (await kubeport("kube", "ls")).out.splitlines()[-1].rstrip().endswith("*")

    code, out, err = await kubectl_until_routed(
        kubectl, ["get", "pods", "-o", "name"], kubeconfig=kubeconfig, home=tmp_path / "h1"
    )
    assert code == 0 and "pod/web-1" in out, err
    assert any(r.impersonated_user == "alice" for r in fake_kube.requests)

    saved = tmp_path / "kubeconfig-before-logout"
    shutil.copy(kubeconfig, saved)
    logout = await kubeport("logout")
    assert logout.code == 0, logout.err
    assert not yaml.safe_load(kubeconfig.read_text()).get("contexts")
    after = await run_kubectl(kubectl, ["get", "pods"], kubeconfig=saved, home=tmp_path / "h2")
    assert after.returncode != 0 and "run kubeport login" in after.stderr.decode()

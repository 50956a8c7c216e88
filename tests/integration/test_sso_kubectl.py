"""An SSO user reaches a cluster with real kubectl (issue 10 §2 and §5): a real registry with its front door, a
real agent, the fake Kubernetes API, the fake OIDC provider, ``run_sso_login`` with the test playing the
browser, then kubectl with a kubeconfig made from the saved login (what ``kubeport kube login`` writes)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from registry.cli.kpctl.auth import kubeconfig_document
from registry.cli.login_common import first_contact
from registry.cli.profile import KubeportHome
from registry.cli.sso_login import run_sso_login
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import SKIP_REASON, find_kubectl
from tests.helpers import KUBE_ACCESS, kpctl
from tests.integration.access_setup import (  # noqa: F401  (fixture)
    AccessRegistry,
    access_registry,
    add_cluster,
    kubectl_until_routed,
    start_agent,
)
from tests.registry.oidc_helpers import CONNECTOR, connector_doc, started_provider


async def test_an_sso_user_runs_kubectl_get_pods_through_kubeport(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    kubectl = find_kubectl(json_only=True)
    if kubectl is None:
        pytest.skip(SKIP_REASON)
    registry = access_registry.info
    provider = await started_provider(nursery)
    fake_kube.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods"])
    fake_kube.add_pod("web-1")
    await start_agent(registry, nursery, tmp_path / "agent")
    await add_cluster(registry, fake_kube, "mycluster", {"env": "prod"})

    # The admin's side: seed 003's role, and a connector mapping the "devs" group to it.
    (tmp_path / "kube-access.yaml").write_text(KUBE_ACCESS)
    assert (await kpctl("create", str(tmp_path / "kube-access.yaml"))).code == 0
    doc = connector_doc(provider, claims_to_roles=[{"claim": "groups", "value": "devs", "roles": ["kube-access"]}])
    (tmp_path / "oidc.yaml").write_text(yaml.safe_dump(doc))
    created = await kpctl("create", str(tmp_path / "oidc.yaml"))
    assert created.code == 0, created.err

    # The user's side: kubeport login --auth=fake-idp, the browser played by httpx.
    home = KubeportHome(tmp_path / "kubeport-home")
    contact = await first_contact([registry.address], err=io.StringIO())
    urls = trio.open_memory_channel[str](1)

    async def browser() -> None:
        url = await urls[1].receive()
        async with httpx.AsyncClient(follow_redirects=True) as http:
            assert (await http.get(url)).status_code == 200

    nursery.start_soon(browser)
    args = argparse.Namespace(auth=CONNECTOR, browser="none")
    assert await run_sso_login(args, home, contact, on_url=urls[0].send_nowait, out=io.StringIO()) == 0
    login = home.load()

    kubeconfig = tmp_path / "kubeconfig"
    document = kubeconfig_document(
        kubeport_cluster=login.profile.cluster,
        user=login.profile.user,
        clusters=["mycluster"],
        current="mycluster",
        front_door=registry.kube_address,
        cert_pem=login.identity.cert_pem,
        key_pem=login.identity.key_pem,
        ca_pems=login.identity.ca_pems,
    )
    kubeconfig.write_text(yaml.safe_dump(document))
    fake_kube.requests.clear()
    code, out, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=tmp_path / "h")
    assert code == 0, err
    assert "web-1" in out
    listed = [r for r in fake_kube.requests if r.path == "/api/v1/namespaces/default/pods" and r.status == 200]
    assert listed and listed[-1].impersonated_user == "alice@example.com"
    assert "viewers" in listed[-1].impersonated_groups

    # The admin removes the SSO user: its certificate stops working at once.
    assert (await kpctl("rm", "users/alice@example.com")).code == 0
    code, _, err = await kubectl_until_routed(kubectl, ["get", "pods"], kubeconfig=kubeconfig, home=tmp_path / "h")
    assert code != 0

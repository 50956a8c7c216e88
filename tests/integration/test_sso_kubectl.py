"""An SSO user reaches a cluster with real kubectl (issue 10 §2 and §5): a real registry with its front door, a
real agent, the fake Kubernetes API, the fake OIDC provider, ``kubeport login --auth=CONNECTOR`` (the real
command; the test plays the browser it opens), ``kubeport kube login``, then kubectl through the exec plugin."""

from __future__ import annotations

import webbrowser
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import require_kubectl
from tests.helpers import KUBE_ACCESS, kpctl
from tests.integration.access_setup import (  # noqa: F401  (fixture)
    AccessRegistry,
    access_registry,
    add_cluster,
    kubectl_until_routed,
    start_agent,
)
from tests.integration.user_loop_helpers import kubeport
from tests.registry.oidc_helpers import CONNECTOR, connector_doc, started_provider


async def test_an_sso_user_runs_kubectl_get_pods_through_kubeport(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kubectl = require_kubectl()
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

    # The user's side: kubeport login --auth=fake-idp (the real command), the browser played by httpx.
    monkeypatch.setenv("KUBEPORT_HOME", str(tmp_path / "kubeport-home"))
    kubeconfig = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBEPORT_BROWSER", raising=False)
    send, receive = trio.open_memory_channel[str](1)

    def open_browser(url: str, *args: object, **kwargs: object) -> bool:  # runs in a worker thread
        trio.from_thread.run_sync(send.send_nowait, url)
        return True

    monkeypatch.setattr(webbrowser, "open", open_browser)

    async def browser() -> None:
        url = await receive.receive()
        async with httpx.AsyncClient(follow_redirects=True) as http:
            assert (await http.get(url)).status_code == 200

    nursery.start_soon(browser)
    login = await kubeport("login", "--registry", registry.address, "--auth", CONNECTOR)
    assert login.code == 0, login.err
    assert "alice@example.com" in (await kubeport("status")).out
    logged = await kubeport("kube", "login", "mycluster")
    assert logged.code == 0, logged.err
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

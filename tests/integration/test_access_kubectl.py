"""Real kubectl through kubeport (issue 9 §9): a real registry with its front door, a real agent holding an h2
tunnel, the fake Kubernetes API as the cluster, kubeconfigs from ``kpctl auth sign``.

* every command kubectl users run (get, get -w, apply -f, delete, logs -f, exec with stdin and exit codes over
  WebSocket and SPDY, port-forward, cp) for kubectl 1.27 and 1.33; get and exec for all of 1.27-1.33;
* exec is audited with session.start/session.end;
* the role cases decided by kubeport, not the cluster: a resource kubernetes_resources does not allow (the
  request never reaches the fake), deny winning, a deleted user, an expired certificate, another CA's
  certificate, an agent certificate used as a user's, a user certificate used to open a tunnel.

pytest-trio runs each test in its own trio loop, so one test starts one registry/agent/fake and runs many
kubectl calls.
"""

from __future__ import annotations

import json
import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.tls import client_context
from tests.fakes.kube_api import FakeKube, RecordedRequest
from tests.fakes.kube_pods import echo_port
from tests.fakes.kubectl import SKIP_REASON, find_kubectl, read_until, run_kubectl, started_kubectl
from tests.helpers import KUBE_ACCESS, kpctl
from tests.integration.access_setup import (
    Access,
    AccessRegistry,
    access_registry,  # noqa: F401  (fixture)
    kubectl_until_routed,
    start_access,
)
from tests.integration.test_agent_inprocess import admin, wait_for

VERSIONS = [f"1.{minor}" for minor in range(27, 34)]


def kubectl_version(version: str) -> str:
    binary = find_kubectl(version)
    if binary is None:
        pytest.skip(f"{SKIP_REASON} (kubectl {version})")
    return binary


def minor(version: str) -> int:
    return int(version.split(".")[1])


def grant_viewers(fake: FakeKube) -> None:
    """What the impersonated group needs on the cluster for every command below."""
    fake.grant("viewers", kind="Group", verbs=["get", "list", "watch"], resources=["pods", "pods/log"])
    fake.grant("viewers", kind="Group", verbs=["create"], resources=["pods/exec", "pods/portforward"])
    fake.grant(
        "viewers",
        kind="Group",
        verbs=["get", "list", "watch", "create", "update", "patch", "delete"],
        resources=["configmaps"],
    )


async def kubectl(
    access: Access, binary: str, args: list[str], *, stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    result = await run_kubectl(binary, args, kubeconfig=access.kubeconfig, home=access.home(), stdin=stdin)
    return result.returncode, result.stdout, result.stderr


def streaming(fake: FakeKube, subresource: str) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path.endswith("/" + subresource)]


async def routed(access: Access, binary: str) -> None:
    """The first call, retried while the agent's tunnel comes up (the only retry in this file)."""
    code, out, err = await kubectl_until_routed(
        binary, ["get", "pods"], kubeconfig=access.kubeconfig, home=access.home()
    )
    assert code == 0, err


async def events(access: Access, event: str) -> list[dict[str, Any]]:
    async with await admin(access.registry.info) as client:
        page, _ = await client.events_page(limit=500, event=event)
    return page


# -------------------------------------------------------------------------------------- every command


async def exec_checks(access: Access, fake: FakeKube, binary: str, version: str) -> None:
    before = len(streaming(fake, "exec"))
    code, out, err = await kubectl(access, binary, ["exec", "web", "--", "echo", "hello", "world"])
    assert (code, out, err) == (0, b"hello world\n", b""), err
    upgrade = streaming(fake, "exec")[before]
    assert upgrade.status == 101
    assert upgrade.impersonated_user == "alice" and "viewers" in upgrade.impersonated_groups
    if minor(version) >= 30:
        assert upgrade.method == "GET"
        assert upgrade.header_values("sec-websocket-protocol") == ["v5.channel.k8s.io"]
    else:
        assert upgrade.method == "POST"
        assert upgrade.header("upgrade") == "SPDY/3.1"
    code, out, err = await kubectl(access, binary, ["exec", "web", "--", "sh", "-c", "echo out; exit 3"])
    assert (code, out) == (3, b"out\n"), err
    assert b"command terminated with exit code 3" in err


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_every_command_through_kubeport(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    version: str,
) -> None:
    binary = kubectl_version(version)
    grant_viewers(fake_kube)
    fake_kube.add_pod("web", log="first\n")
    fake_kube.pods.serve_port("web", 8080, echo_port)
    access = await start_access(access_registry, fake_kube, nursery, tmp_path)
    await routed(access, binary)

    # get
    code, out, err = await kubectl(access, binary, ["get", "pods"])
    assert code == 0 and b"web" in out, err

    # get -w: the first list, then a pod added later arrives through the open watch
    async with started_kubectl(binary, ["get", "pods", "-w"], kubeconfig=access.kubeconfig, home=access.home()) as w:
        await read_until(w.stdout, b"web ")
        fake_kube.add_pod("late")
        await read_until(w.stdout, b"late ")

    # apply -f (JSON, --validate=false) and delete
    manifest = tmp_path / "cm.json"
    manifest.write_text(
        json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1"}, "data": {"k": "v"}})
    )
    code, out, err = await kubectl(access, binary, ["apply", "-f", str(manifest), "--validate=false"])
    assert (code, out) == (0, b"configmap/cm1 created\n"), err
    code, out, err = await kubectl(access, binary, ["get", "configmap", "cm1", "-o", "jsonpath={.data.k}"])
    assert (code, out) == (0, b"v"), err
    code, out, err = await kubectl(access, binary, ["delete", "configmap", "cm1"])
    assert (code, out) == (0, b'configmap "cm1" deleted\n'), err
    code, _, err = await kubectl(access, binary, ["get", "configmap", "cm1"])
    assert code == 1 and b"NotFound" in err

    # logs -f: appended lines stream through until the log ends
    async with started_kubectl(binary, ["logs", "-f", "web"], kubeconfig=access.kubeconfig, home=access.home()) as p:
        await read_until(p.stdout, b"first\n")
        fake_kube.pods.append_log("web", "second\n")
        await read_until(p.stdout, b"second\n")
        fake_kube.pods.end_log("web")
        with trio.fail_after(20):
            assert await p.wait() == 0

    # exec (WebSocket from 1.30, SPDY before), exit codes, and stdin over several frames
    await exec_checks(access, fake_kube, binary, version)
    data = b"".join(b"line %d\n" % i for i in range(2000))
    code, out, err = await kubectl(access, binary, ["exec", "-i", "web", "--", "cat"], stdin=data)
    assert (code, out == data) == (0, True), err

    # port-forward: two local connections over one session
    args = ["port-forward", "pod/web", ":8080"]
    async with started_kubectl(binary, args, kubeconfig=access.kubeconfig, home=access.home()) as pf:
        banner = await read_until(pf.stdout, b"\n")
        match = re.search(rb"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", banner)
        assert match, banner
        for n in range(2):
            with trio.fail_after(20):
                stream = await trio.open_tcp_stream("127.0.0.1", int(match.group(1)))
                payload = b"ping %d " % n * 1000
                await stream.send_all(payload)
                echoed = b""
                while len(echoed) < len(payload):
                    echoed += await stream.receive_some()
                await stream.aclose()
            assert echoed == payload
    assert [r.status for r in streaming(fake_kube, "portforward")] == [101]

    # cp both ways (exec of tar underneath)
    local = tmp_path / "upload.txt"
    local.write_bytes(b"uploaded\n")
    code, _, err = await kubectl(access, binary, ["cp", str(local), "web:/tmp/in.txt"])
    assert code == 0, err
    assert fake_kube.pods.read_file("web", "/tmp/in.txt") == b"uploaded\n"
    fake_kube.pods.write_file("web", "/data/out.txt", b"downloaded\n")
    target = tmp_path / "download.txt"
    code, _, err = await kubectl(access, binary, ["cp", "web:/data/out.txt", str(target)])
    assert code == 0, err
    assert target.read_bytes() == b"downloaded\n"

    # every request reached the cluster as alice in viewers, with the cluster's own credential
    # (the agent's own health probes aside)
    from_kubectl = [r for r in fake_kube.requests if r.header("user-agent") != "kubeport-agent"]
    assert len(from_kubectl) > 20
    assert all(r.impersonated_user == "alice" and r.user == "kubernetes-admin" for r in from_kubectl)
    assert all("viewers" in r.impersonated_groups for r in from_kubectl)

    # exec is audited: a session.start and a session.end with the exit code
    async def sessions() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        starts = [e for e in await events(access, "session.start") if e.get("user") == "alice"]
        ends = [e for e in await events(access, "session.end") if e.get("user") == "alice"]
        return (starts, ends) if len(ends) >= 4 and len(starts) >= 4 else None

    starts, ends = await wait_for(sessions, what="session.start/end events of exec")
    assert all(e.get("cluster") == access.cluster for e in starts + ends)


@pytest.mark.parametrize("version", VERSIONS)
async def test_get_and_exec_with_every_kubectl(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
    version: str,
) -> None:
    binary = kubectl_version(version)
    grant_viewers(fake_kube)
    fake_kube.add_pod("web")
    access = await start_access(access_registry, fake_kube, nursery, tmp_path)
    await routed(access, binary)
    code, out, err = await kubectl(access, binary, ["get", "pods", "-o", "name"])
    assert (code, out) == (0, b"pod/web\n"), err
    await exec_checks(access, fake_kube, binary, version)

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

import base64
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
from tests.fakes.kubectl import (
    kubectl_version,
    minor,
    read_until,
    run_kubectl,
    started_kubectl,
)
from tests.helpers import kpctl
from tests.integration.access_setup import (
    Access,
    AccessRegistry,
    access_registry,  # noqa: F401  (fixture)
    kubectl_until_routed,
    served,
    start_access,
)
from tests.integration.test_agent_inprocess import admin, wait_for

VERSIONS = [f"1.{minor}" for minor in range(27, 34)]


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
    code, _, err = await kubectl_until_routed(binary, ["get", "pods"], kubeconfig=access.kubeconfig, home=access.home())
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
        # ends first: a session's start is written no later than its end, so every end read has its start
        ends = [e for e in await events(access, "session.end") if e.get("user") == "alice"]
        starts = [e for e in await events(access, "session.start") if e.get("user") == "alice"]
        # exec x3 and cp x2 (exec of tar), port-forward once
        return (starts, ends) if len(ends) >= 6 and len(starts) >= 6 else None

    starts, ends = await wait_for(sessions, what="session.start/end events of exec")
    assert all(e.get("cluster") == access.cluster for e in starts + ends)
    assert {e["session_id"] for e in ends} <= {e["session_id"] for e in starts}
    assert {e["session_kind"] for e in starts} >= {"exec", "portforward"}
    assert all(e.get("pod") == "web" for e in starts)


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


# ------------------------------------------------------------------------------------------ role cases

PODS_ONLY = """\
kind: role
metadata:
  name: pods-only
version: v7
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_resources:
      - kind: pod
        namespace: '*'
        name: '*'
        verbs: ['*']
    kubernetes_groups:
    - viewers
  deny:
    kubernetes_resources:
      - kind: pod
        namespace: '*'
        name: 'secret-*'
        verbs: ['*']
"""


def kubeconfig_with(access: Access, name: str, cert_pem: bytes, key_pem: bytes) -> Path:
    """The user's kubeconfig with another certificate and key in it."""
    doc = yaml.safe_load(access.kubeconfig.read_text())
    user = doc["users"][0]["user"]
    user["client-certificate-data"] = base64.b64encode(cert_pem).decode()
    user["client-key-data"] = base64.b64encode(key_pem).decode()
    path = access.kubeconfig.with_name(f"kubeconfig-{name}")
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def issue(authority: CertAuthority, identity: Identity, *, ttl: timedelta, now: datetime) -> tuple[bytes, bytes]:
    key = generate_private_key()
    return authority.issue(public_key_pem(key), identity, ttl=ttl, now=now), key


async def test_kubeports_own_refusals_never_reach_the_cluster(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    binary = kubectl_version("1.33")
    grant_viewers(fake_kube)
    fake_kube.grant("viewers", kind="Group", verbs=["get", "list"], resources=["secrets"])
    fake_kube.add_pod("web")
    fake_kube.add_pod("secret-pod")
    access = await start_access(access_registry, fake_kube, nursery, tmp_path, roles={"pods-only": PODS_ONLY})
    await routed(access, binary)

    def reached(fragment: str) -> list[RecordedRequest]:
        return [r for r in fake_kube.requests if fragment in r.path]

    # a resource kubernetes_resources does not allow: kubeport's Forbidden, the cluster (which would allow
    # it) never sees the request
    code, _, err = await kubectl(access, binary, ["get", "configmaps"])
    assert code == 1 and b"Error from server (Forbidden): configmaps is forbidden" in err, err
    assert b'"kubernetes_resources"' in err, err  # kubeport's wording (Teleport's), not the API server's
    assert reached("/configmaps") == []
    code, _, err = await kubectl(access, binary, ["get", "secrets"])
    assert code == 1 and b"Forbidden" in err, err
    assert reached("/secrets") == []

    # deny wins over the allow rule that matches every pod; its neighbour is still allowed
    code, out, err = await kubectl(access, binary, ["get", "pod", "web", "-o", "name"])
    assert (code, out) == (0, b"pod/web\n"), err
    code, _, err = await kubectl(access, binary, ["get", "pod", "secret-pod"])
    assert code == 1 and b"Forbidden" in err, err
    code, _, err = await kubectl(access, binary, ["exec", "secret-pod", "--", "true"])
    assert code == 1 and b"Forbidden" in err, err
    assert reached("/pods/secret-pod") == []

    # each refusal is audited as a kube.request by alice
    async def denied() -> list[dict[str, Any]]:
        found = [e for e in await events(access, "kube.request") if e.get("user") == "alice"]
        refusals = [e for e in found if e.get("status") == 403]
        return refusals if len(refusals) >= 4 else []  # configmaps, secrets, secret-pod twice

    resources = {(e["resource"], e.get("name") or "") for e in await wait_for(denied, what="the refusals audited")}
    assert {("configmaps", ""), ("secrets", ""), ("pods", "secret-pod")} <= resources, resources

    # a deleted user: the next call is refused with a clear error (the certificate is still valid)
    removed = await kpctl("users", "rm", "alice")
    assert removed.code == 0, removed.err
    before = len(fake_kube.requests)

    async def refused() -> bytes:
        code, _, err = await kubectl(access, binary, ["get", "pods"])
        return err if code != 0 else b""

    # kubectl's discovery turns every 401 into its own wording (a bad token sent straight to the API server
    # reads the same); the front door's Status says why, and `get --raw` shows it
    err = await wait_for(refused, what="the deleted user refused")
    assert b"error: You must be logged in to the server" in err, err
    raw = await kubectl(access, binary, ["get", "--raw", "/api/v1/namespaces/default/pods"])
    assert raw[0] == 1
    assert b'user \\"alice\\" no longer exists' in raw[2] or b'user "alice" no longer exists' in raw[2], raw[2]
    assert [r for r in fake_kube.requests[before:] if r.header("user-agent") != "kubeport-agent"] == []


async def test_certificates_the_front_door_refuses(
    access_registry: AccessRegistry,  # noqa: F811
    fake_kube: FakeKube,
    nursery: trio.Nursery,
    tmp_path: Path,
) -> None:
    binary = kubectl_version("1.33")
    grant_viewers(fake_kube)
    fake_kube.add_pod("web")
    access = await start_access(access_registry, fake_kube, nursery, tmp_path)
    await routed(access, binary)
    now = datetime.now(tz=UTC)
    authority = access_registry.ca
    alice = Identity(name="alice", kind="user", roles=("kube-access",))
    cases = {
        "expired": issue(authority, alice, ttl=timedelta(minutes=1), now=now - timedelta(hours=1)),
        "other-ca": issue(CertAuthority.generate("elsewhere", now=now), alice, ttl=timedelta(hours=1), now=now),
        "agent": issue(
            authority,
            Identity(name="node-x", kind="agent", roles=("Kube",), host_id="x"),
            ttl=timedelta(hours=1),
            now=now,
        ),
    }
    # expired and foreign certificates fail the handshake, and kubectl says why at once (the front door sends
    # the TLS alert: with a bare EOF client-go retried for ~30 s); an agent's certificate is refused with a
    # 403 Status (kubectl's discovery prints it as "unknown", `get --raw` shows the front door's words)
    expected = {
        "expired": b"Unable to connect to the server: remote error: tls: expired certificate",
        "other-ca": b"Unable to connect to the server: remote error: tls: unknown certificate authority",
        "agent": b"Error from server (Forbidden)",
    }
    before = len(fake_kube.requests)
    for name, (cert, key) in cases.items():
        path = kubeconfig_with(access, name, cert, key)
        with trio.fail_after(10):
            result = await run_kubectl(binary, ["get", "pods"], kubeconfig=path, home=access.home())
        assert result.returncode == 1 and expected[name] in result.stderr, (name, result.stderr)
    raw = await run_kubectl(binary, ["get", "--raw", "/api/v1/pods"], kubeconfig=path, home=access.home())
    assert b"agent certificates cannot be used with kubectl; use a user certificate" in raw.stderr, raw.stderr
    assert [r for r in fake_kube.requests[before:] if r.header("user-agent") != "kubeport-agent"] == []

    # a user certificate on the tunnel's ALPN: the front door closes the connection, no tunnel is opened
    cert, key = issue(authority, alice, ttl=timedelta(hours=1), now=now)
    host, port = access.registry.info.kube_address.rsplit(":", 1)
    context = client_context([authority.cert_pem], cert, key)
    context.set_alpn_protocols(["kubeport-tunnel/1"])
    with trio.fail_after(10):
        stream = trio.SSLStream(await trio.open_tcp_stream(host, int(port)), context, server_hostname=host)
        try:
            await stream.do_handshake()
            assert await stream.receive_some() == b""
        except (trio.BrokenResourceError, ssl.SSLError):
            pass
        finally:
            await stream.aclose()

    async def tunnel_denied() -> list[dict[str, Any]]:
        return [e for e in await events(access, "kube.tunnel.denied") if e.get("user") == "alice"]

    (denied,) = await wait_for(tunnel_denied, what="the refused tunnel audited")
    assert denied["error"] == "not an agent certificate"
    assert await served(access.registry.info, access.cluster), "the real agent's tunnel is untouched"
    code, out, err = await kubectl(access, binary, ["get", "pods", "-o", "name"])
    assert (code, out) == (0, b"pod/web\n"), err

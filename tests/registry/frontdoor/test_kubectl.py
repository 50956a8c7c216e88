"""Real kubectl through the front door: its TLS (client certificate, ALPN h2+http/1.1), its path-prefixed
``server:`` URL and its first request reach the agent's end of the stream, and the answers reach kubectl.

The test plays the agent: an h11 server on each stream the front door opens, answering ``/version`` and
``/api`` under the cluster's prefix (the real agent forwards to the cluster's API server instead). Each
kubectl run gets its own HOME (tests/fakes/kubectl.py).

Found on the way: ``kubectl get --raw /api`` ignores the path of the kubeconfig's ``server:`` (client-go's
``RequestURI``), so it reaches the front door as ``/api`` and is refused with a 400 naming the expected
prefix; ``kubectl get --raw /v1/clusters/<b64>/api`` works. Every typed kubectl command keeps the prefix.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import yaml

from registry.core.kube_route import cluster_prefix
from tests.fakes.kubectl import SKIP_REASON, available_kubectls, find_kubectl, run_kubectl
from tests.registry.frontdoor.frontdoor_helpers import Env, Opened, ca, credentials, frontdoor_env, user

VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}
API = {
    "kind": "APIVersions",
    "versions": ["v1"],
    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
}


def kubeconfig(env: Env, cluster: str, path: Path) -> Path:
    creds = credentials(user())
    b64 = base64.b64encode
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": f"https://127.0.0.1:{env.port}{cluster_prefix(cluster)}",
                    "certificate-authority-data": b64(ca().cert_pem).decode(),
                },
            }
        ],
        "users": [
            {
                "name": "alice",
                "user": {
                    "client-certificate-data": b64(creds.cert_pem).decode(),
                    "client-key-data": b64(creds.key_pem).decode(),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "alice"}}],
        "current-context": cluster,
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


async def play_agent(opened: Opened, seen: list[tuple[str, bytes, bytes]]) -> None:
    """An HTTP/1.1 server on the agent's end of one stream (until kubectl leaves)."""
    stream = opened.stream
    conn = h11.Connection(h11.SERVER)
    prefix = cluster_prefix(opened.info.cluster).encode()
    first_bytes = b""
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not first_bytes:
                    first_bytes = bytes(data)
                conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Request):
                target = bytes(event.target)
                seen.append((opened.host, target, first_bytes))
                path = target.split(b"?", 1)[0]
                body_obj: Any = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
                status = 404
                if path == prefix + b"/version":
                    body_obj, status = VERSION, 200
                elif path == prefix + b"/api":
                    body_obj, status = API, 200
                body = json.dumps(body_obj).encode()
                headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                continue
            if isinstance(event, h11.EndOfMessage):
                conn.start_next_cycle()
                continue
            if isinstance(event, h11.ConnectionClosed):
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await stream.aclose()


async def agents(env: Env, seen: list[tuple[str, bytes, bytes]]) -> None:
    async with trio.open_nursery() as nursery:
        async for opened in env.hub.opened:
            nursery.start_soon(play_agent, opened, seen)


@pytest.mark.skipif(not available_kubectls(), reason=SKIP_REASON)
@pytest.mark.parametrize("version", ["1.27", "newest"])
async def test_kubectl_reaches_the_agent_through_the_front_door(tmp_path: Path, version: str) -> None:
    binary = find_kubectl(None if version == "newest" else version)
    if binary is None:
        pytest.skip(f"kubectl {version} not found")
    async with frontdoor_env() as env:
        await env.add_cluster("dev", {"env": "dev"}, agents={"host-a": "healthy"})
        config = kubeconfig(env, "dev", tmp_path / "kubeconfig")
        seen: list[tuple[str, bytes, bytes]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agents, env, seen)
            # ``get --raw`` sends its argument as the whole request URI (client-go's RequestURI drops the
            # server URL's path), so raw paths through the front door carry the cluster prefix themselves.
            prefixed = cluster_prefix("dev") + "/api"
            raw = await run_kubectl(binary, ["get", "--raw", prefixed], kubeconfig=config, home=tmp_path / "home1")
            assert raw.returncode == 0, raw.stderr.decode()
            assert json.loads(raw.stdout)["kind"] == "APIVersions"
            version_run = await run_kubectl(
                binary, ["version", "-o", "json"], kubeconfig=config, home=tmp_path / "home2"
            )
            assert version_run.returncode == 0, version_run.stderr.decode()
            assert json.loads(version_run.stdout)["serverVersion"]["gitVersion"] == "v1.31.0"
            unprefixed = await run_kubectl(binary, ["get", "--raw", "/api"], kubeconfig=config, home=tmp_path / "h3")
            assert unprefixed.returncode != 0
            assert b"Error from server (BadRequest)" in unprefixed.stderr
            assert b"does not start with /v1/clusters/" in unprefixed.stderr
            nursery.cancel_scope.cancel()
        prefix = cluster_prefix("dev").encode()
        targets = [target for _, target, _ in seen]
        assert any(t.startswith(prefix + b"/api") for t in targets)
        assert any(t.startswith(prefix + b"/version") for t in targets)
        for host, _target, first_bytes in seen:
            assert host == "host-a"
            # the first bytes the agent read are kubectl's own request head, unchanged by the front door
            assert first_bytes.startswith(b"GET " + prefix)
            assert b"User-Agent: kubectl" in first_bytes or b"user-agent: kubectl" in first_bytes.lower()
        start = await env.audit_events("kube.connection.start")
        assert start and all(e["user"] == "alice" and e["cluster"] == "dev" for e in start)

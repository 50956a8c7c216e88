"""Real kubectl through the forwarder to the fake API.

A stand-in front door (this test's harness, not the real one) accepts kubectl's TLS connection with a
user certificate, and hands the decrypted stream to ``handle_stream`` bound to cluster "prod" and user
alice; kubectl's kubeconfig names ``https://127.0.0.1:PORT/v1/clusters/<b64(prod)>``, exactly as the real
front door's kubeconfigs do.
"""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio
import yaml

from agent.forward import ForwardContext, handle_stream
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.tls import server_context
from tests.agent.forward.forward_helpers import PREFIX, stream_info, world_for
from tests.fakes.kube_api import FakeKube
from tests.fakes.kubectl import SKIP_REASON, find_kubectl

KUBECTL = find_kubectl(json_only=True)
OLDEST = find_kubectl("1.27")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason=SKIP_REASON)

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"}, "spec": {}}


async def serve_front_door(ctx: ForwardContext, *, task_status: trio.TaskStatus[tuple[int, dict[str, bytes]]]) -> None:
    now = datetime.now(UTC)
    ca = CertAuthority.generate("front-door-test", now=now)
    server_key = generate_private_key()
    server_cert = ca.issue(
        public_key_pem(server_key),
        Identity(name="front", kind="agent"),
        ttl=timedelta(hours=1),
        now=now,
        ip_addresses=["127.0.0.1"],
    )
    user_key = generate_private_key()
    user_cert = ca.issue(public_key_pem(user_key), Identity(name="alice", kind="user"), ttl=timedelta(hours=1), now=now)
    context = server_context(server_cert, server_key, [ca.cert_pem], client_certs="required")
    context.set_alpn_protocols(["http/1.1"])  # kubectl offers h2 too; the front door never picks it

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, OSError):
            return
        await handle_stream(stream, stream_info(), ctx=ctx)  # type: ignore[arg-type]

    listeners = await trio.open_ssl_over_tcp_listeners(0, context, host="127.0.0.1")
    port = listeners[0].transport_listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        task_status.started((port, {"ca": ca.cert_pem, "cert": user_cert, "key": user_key}))


def kubeconfig(port: int, material: dict[str, bytes]) -> dict[str, object]:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubeport-prod",
                "cluster": {
                    "server": f"https://127.0.0.1:{port}{PREFIX}",
                    "certificate-authority-data": b64(material["ca"]),
                },
            }
        ],
        "users": [
            {
                "name": "alice",
                "user": {"client-certificate-data": b64(material["cert"]), "client-key-data": b64(material["key"])},
            }
        ],
        "contexts": [
            {"name": "prod", "context": {"cluster": "kubeport-prod", "user": "alice", "namespace": "default"}}
        ],
        "current-context": "prod",
    }


async def _setup(nursery: trio.Nursery, fake: FakeKube, tmp_path: Path) -> tuple[Path, object]:
    world = world_for(fake)
    fake.create_object(POD)
    port, material = await nursery.start(partial(serve_front_door, world.context()))
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(port, material)))
    return path, world


async def _kubectl(binary: str, args: list[str], config: Path, home: Path) -> subprocess.CompletedProcess[bytes]:
    from tests.fakes.kubectl import run_kubectl

    return await run_kubectl(binary, args, kubeconfig=config, home=home, timeout=60)


@pytest.mark.parametrize("version", ["newest", "1.27"])
async def test_kubectl_get_pods_through_the_forwarder(
    nursery: trio.Nursery, fake_kube: FakeKube, tmp_path: Path, version: str
) -> None:
    binary = KUBECTL if version == "newest" else OLDEST
    if binary is None:
        pytest.skip(f"kubectl {version} not found")
    config, _ = await _setup(nursery, fake_kube, tmp_path)
    result = await _kubectl(binary, ["get", "pods"], config, tmp_path / "home")
    assert result.returncode == 0, result.stderr.decode()
    assert "web" in result.stdout.decode()
    listed = [r for r in fake_kube.requests if r.path == "/api/v1/namespaces/default/pods"]
    assert listed
    assert {(r.user, r.impersonated_user) for r in listed} == {("kubeport-agent", "alice")}
    assert listed[-1].header_values("impersonate-group") == ["viewers", "system:authenticated"]
    # refused by the roles: kubectl prints the Status natively
    result = await _kubectl(
        binary, ["get", "pods", "--as=alice", "--as-group=system:masters"], config, tmp_path / "home"
    )
    assert result.returncode != 0
    assert "Error from server (Forbidden)" in result.stderr.decode()


async def test_kubectl_get_pods_watch_streams_through_the_forwarder(
    nursery: trio.Nursery, fake_kube: FakeKube, tmp_path: Path
) -> None:
    assert KUBECTL is not None
    config, _ = await _setup(nursery, fake_kube, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    process = await trio.lowlevel.open_process(
        [KUBECTL, "--kubeconfig", str(config), "get", "pods", "-w", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    output = bytearray()
    try:
        with trio.fail_after(60):
            while b'"web"' not in output:  # the initial list
                output += await process.stdout.receive_some(65536)
            await fake_kube.wait_request(lambda r: r.query.get("watch") == ["true"] or r.query.get("watch") == ["1"])
            fake_kube.create_object(dict(POD, metadata={"name": "late", "namespace": "default"}))
            while b'"late"' not in output:  # an event of the open watch, streamed through
                output += await process.stdout.receive_some(65536)
    finally:
        process.kill()
        await process.wait()
    docs = output.decode()
    assert '"name": "late"' in docs
    watch = [r for r in fake_kube.requests if r.query.get("watch")]
    assert watch
    assert watch[-1].impersonated_user == "alice"

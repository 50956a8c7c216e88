"""Real kubectl 1.27-1.33 against the fake's streaming subresources: logs, exec, port-forward, cp.

Which wire protocol each version speaks is asserted from the recorded requests: exec is SPDY ``POST`` up to
1.29 and WebSocket ``GET`` from 1.30; port-forward is SPDY up to 1.30 and SPDY-in-WebSocket from 1.31.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import pytest
import trio

from tests.fakes.fixtures import ADMIN_TOKEN, fake_kube  # noqa: F401  (fixture)
from tests.fakes.kube_api import FakeKube, RecordedRequest
from tests.fakes.kube_pods import echo_port
from tests.fakes.kubectl import (
    kubectl_version,
    minor,
    read_until,
    run_kubectl,
    started_kubectl,
)

VERSIONS = [f"1.{minor}" for minor in range(27, 34)]
_homes = itertools.count()


def config(fake: FakeKube, tmp_path: Path, token: str = ADMIN_TOKEN) -> tuple[Path, Path]:
    n = next(_homes)
    path = tmp_path / f"kubeconfig-{n}"
    path.write_bytes(fake.kubeconfig_yaml(token))
    return path, tmp_path / f"home-{n}"


async def kubectl(
    fake: FakeKube,
    binary: str,
    tmp_path: Path,
    args: list[str],
    *,
    stdin: bytes | None = None,
    token: str = ADMIN_TOKEN,
) -> subprocess.CompletedProcess[bytes]:
    kubeconfig, home = config(fake, tmp_path, token)
    return await run_kubectl(binary, args, kubeconfig=kubeconfig, home=home, stdin=stdin)


def streaming(fake: FakeKube, subresource: str) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.path.endswith("/" + subresource)]


# ------------------------------------------------------------------------------------------------- exec


@pytest.mark.parametrize("version", VERSIONS)
async def test_exec_echo_and_exit_status(fake_kube: FakeKube, tmp_path: Path, version: str) -> None:  # noqa: F811
    binary = kubectl_version(version)
    fake_kube.add_pod("web")
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "web", "--", "echo", "hello", "world"])
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hello world\n", b"")
    (upgrade,) = streaming(fake_kube, "exec")
    assert upgrade.status == 101
    assert upgrade.query["command"] == ["echo", "hello", "world"]
    assert upgrade.query["container"] == ["main"]
    if minor(version) >= 30:
        assert upgrade.method == "GET"
        assert upgrade.header_values("sec-websocket-protocol") == ["v5.channel.k8s.io"]
    else:
        assert upgrade.method == "POST"
        assert upgrade.header("upgrade") == "SPDY/3.1"
        assert "v4.channel.k8s.io" in upgrade.header_values("x-stream-protocol-version")

    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "web", "--", "sh", "-c", "echo out; exit 3"])
    assert result.returncode == 3
    assert result.stdout == b"out\n"
    assert b"command terminated with exit code 3" in result.stderr


@pytest.mark.parametrize("version", VERSIONS)
async def test_exec_stdin_reaches_cat_and_ends_it(fake_kube: FakeKube, tmp_path: Path, version: str) -> None:  # noqa: F811
    binary = kubectl_version(version)
    fake_kube.add_pod("web")
    data = b"".join(b"line %d\n" % i for i in range(2000))  # several frames/messages
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "-i", "web", "--", "cat"], stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    assert streaming(fake_kube, "exec")[0].query["stdin"] == ["true"]


@pytest.mark.parametrize("version", ["1.30", "1.33"])
async def test_exec_falls_back_to_spdy_when_websockets_are_refused(
    fake_kube: FakeKube,  # noqa: F811
    tmp_path: Path,
    version: str,
) -> None:
    binary = kubectl_version(version)
    fake_kube.add_pod("web", env={"GREETING": "hi"})
    fake_kube.pods.websockets = False
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "web", "--", "env"])
    assert result.returncode == 0, result.stderr
    assert b"GREETING=hi\n" in result.stdout
    assert b"HOSTNAME=web\n" in result.stdout
    attempts = [(r.method, r.status) for r in streaming(fake_kube, "exec")]
    assert attempts == [("GET", 400), ("POST", 101)]


async def test_exec_errors_are_statuses(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    binary = kubectl_version("1.33")
    fake_kube.add_pod("two", containers=("a", "b"))
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "two", "-c", "zzz", "--", "true"])
    assert result.returncode == 1
    assert b"Error from server (BadRequest): container zzz is not valid for pod two" in result.stderr
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "two", "-c", "b", "--", "no-such-program"])
    assert result.returncode == 1
    assert b"error: Internal error occurred: error executing command in container: OCI runtime exec failed" in (
        result.stderr
    )
    assert b'exec: "no-such-program": executable file not found in $PATH' in result.stderr
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "ghost", "--", "true"])
    assert result.returncode == 1
    assert b'Error from server (NotFound): pods "ghost" not found' in result.stderr


@pytest.mark.parametrize("version", ["1.29", "1.33"])
async def test_exec_needs_create_on_pods_exec_even_for_the_websocket_get(
    fake_kube: FakeKube,  # noqa: F811
    tmp_path: Path,
    version: str,
) -> None:
    binary = kubectl_version(version)
    fake_kube.add_pod("web")
    fake_kube.add_token("bob-token", "bob")
    fake_kube.grant("bob", verbs=["get"], resources=["pods", "pods/exec"])
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "web", "--", "true"], token="bob-token")
    assert result.returncode == 1
    assert b'User "bob" cannot create resource "pods/exec" in API group "" in the namespace "default"' in (
        result.stderr
    )
    assert all(r.status == 403 for r in streaming(fake_kube, "exec"))
    fake_kube.grant("bob", verbs=["create"], resources=["pods/exec"])
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "web", "--", "echo", "ok"], token="bob-token")
    assert (result.returncode, result.stdout) == (0, b"ok\n"), result.stderr


async def test_exec_as_an_impersonated_user(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    binary = kubectl_version("1.33")
    fake_kube.add_pod("web")
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "web", "--as=carol", "--", "true"])
    assert result.returncode == 1
    assert b'User "carol" cannot get resource "pods"' in result.stderr  # kubectl reads the pod first
    fake_kube.grant("carol", verbs=["get"], resources=["pods"])
    fake_kube.grant("carol", verbs=["create"], resources=["pods/exec"])
    result = await kubectl(fake_kube, binary, tmp_path, ["exec", "web", "--as=carol", "--", "hostname"])
    assert (result.returncode, result.stdout) == (0, b"web\n"), result.stderr
    (upgrade,) = streaming(fake_kube, "exec")
    assert (upgrade.user, upgrade.impersonated_user, upgrade.status) == ("kubernetes-admin", "carol", 101)
    assert upgrade.header_values("impersonate-user") == ["carol"]


# ------------------------------------------------------------------------------------------------- logs


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_logs_and_tail(fake_kube: FakeKube, tmp_path: Path, version: str) -> None:  # noqa: F811
    binary = kubectl_version(version)
    fake_kube.add_pod("web", log="one\ntwo\nthree\n")
    result = await kubectl(fake_kube, binary, tmp_path, ["logs", "web"])
    assert (result.returncode, result.stdout) == (0, b"one\ntwo\nthree\n"), result.stderr
    result = await kubectl(fake_kube, binary, tmp_path, ["logs", "web", "--tail=1"])
    assert result.stdout == b"three\n"
    (first, tail) = streaming(fake_kube, "log")
    assert first.query == {"container": ["main"]}
    assert tail.query["tailLines"] == ["1"]


async def test_logs_of_a_multi_container_pod(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    binary = kubectl_version("1.33")
    fake_kube.add_pod("two", containers=("a", "b"))
    fake_kube.pods.set_log("two", "from a\n", container="a")
    fake_kube.pods.set_log("two", "from b\n", container="b")
    result = await kubectl(fake_kube, binary, tmp_path, ["logs", "two", "-c", "b"])
    assert result.stdout == b"from b\n"
    result = await kubectl(fake_kube, binary, tmp_path, ["get", "--raw", "/api/v1/namespaces/default/pods/two/log"])
    assert result.returncode == 1
    assert b"a container name must be specified for pod two, choose one of: [a b]" in result.stderr


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_logs_follow_streams_appends_until_the_log_ends(
    fake_kube: FakeKube,  # noqa: F811
    tmp_path: Path,
    version: str,
) -> None:
    binary = kubectl_version(version)
    fake_kube.add_pod("web", log="first\n")
    kubeconfig, home = config(fake_kube, tmp_path)
    async with started_kubectl(binary, ["logs", "-f", "web"], kubeconfig=kubeconfig, home=home) as process:
        await read_until(process.stdout, b"first\n")
        fake_kube.pods.append_log("web", "second\n")
        await read_until(process.stdout, b"second\n")
        fake_kube.pods.append_log("web", "third\n")
        fake_kube.pods.end_log("web")
        rest = await read_until(process.stdout, b"third\n")
        with trio.fail_after(20):
            assert await process.wait() == 0
        assert rest == b"third\n"
    (follow,) = streaming(fake_kube, "log")
    assert follow.query["follow"] == ["true"]


# ------------------------------------------------------------------------------------------ port-forward


@pytest.mark.parametrize("version", VERSIONS)
async def test_port_forward_reaches_the_test_handler(fake_kube: FakeKube, tmp_path: Path, version: str) -> None:  # noqa: F811
    binary = kubectl_version(version)
    fake_kube.add_pod("web")
    fake_kube.pods.serve_port("web", 8080, echo_port)
    kubeconfig, home = config(fake_kube, tmp_path)
    args = ["port-forward", "pod/web", ":8080"]
    async with started_kubectl(binary, args, kubeconfig=kubeconfig, home=home) as process:
        banner = await read_until(process.stdout, b"\n")
        match = re.search(rb"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", banner)
        assert match, banner
        for n in range(2):  # each local connection is a new pair of streams on the same session
            with trio.fail_after(20):
                stream = await trio.open_tcp_stream("127.0.0.1", int(match.group(1)))
                payload = b"ping %d " % n * 1000
                await stream.send_all(payload)
                echoed = b""
                while len(echoed) < len(payload):
                    echoed += await stream.receive_some()
                await stream.aclose()
            assert echoed == payload
    (upgrade,) = streaming(fake_kube, "portforward")
    assert upgrade.status == 101
    if minor(version) >= 31:
        assert upgrade.method == "GET"
        assert upgrade.header_values("sec-websocket-protocol") == ["SPDY/3.1+portforward.k8s.io"]
    else:
        assert upgrade.method == "POST"
        assert upgrade.header_values("x-stream-protocol-version") == ["portforward.k8s.io"]


async def test_port_forward_to_a_port_nobody_serves(fake_kube: FakeKube, tmp_path: Path) -> None:  # noqa: F811
    binary = kubectl_version("1.33")
    fake_kube.add_pod("web")
    kubeconfig, home = config(fake_kube, tmp_path)
    async with started_kubectl(binary, ["port-forward", "web", ":9"], kubeconfig=kubeconfig, home=home) as process:
        banner = await read_until(process.stdout, b"\n")
        match = re.search(rb"127\.0\.0\.1:(\d+)", banner)
        assert match, banner
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", int(match.group(1)))
            assert await stream.receive_some() == b""
            await stream.aclose()
        errors = await read_until(process.stderr, b"connection refused")
    assert b"error forwarding port 9 to pod web" in errors


# -------------------------------------------------------------------------------------------------- cp


@pytest.mark.parametrize("version", ["1.27", "1.33"])
async def test_cp_both_ways_through_tar(fake_kube: FakeKube, tmp_path: Path, version: str) -> None:  # noqa: F811
    binary = kubectl_version(version)
    fake_kube.add_pod("web")
    local = tmp_path / "upload.txt"
    local.write_bytes(b"uploaded\n")
    result = await kubectl(fake_kube, binary, tmp_path, ["cp", str(local), "web:/tmp/in.txt"])
    assert result.returncode == 0, result.stderr
    assert fake_kube.pods.read_file("web", "/tmp/in.txt") == b"uploaded\n"
    fake_kube.pods.write_file("web", "/data/out.txt", b"downloaded\n")
    target = tmp_path / "download.txt"
    result = await kubectl(fake_kube, binary, tmp_path, ["cp", "web:/data/out.txt", str(target)])
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == b"downloaded\n"

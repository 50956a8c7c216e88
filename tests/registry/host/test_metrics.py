"""/metrics, /healthz and /readyz (issue 11 §4): the listener itself, and a registry serving them."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import trio

from registry.client import RegistryClient
from registry.core.errors import ConnectionProblem, NotFound
from registry.host.metrics import serve_metrics
from registry.server.serve import RegistryInfo, serve_registry


async def _get(address: str, path: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        return await http.request(method, f"http://{address}{path}")


async def _until(address: str, path: str, status: int) -> httpx.Response:
    with trio.fail_after(10):
        while True:
            response = await _get(address, path)
            if response.status_code == status:
                return response
            await trio.sleep(0.02)


async def test_readiness_follows_the_check_and_health_is_always_ok(nursery: trio.Nursery) -> None:
    reason: list[str | None] = ["store unreachable"]

    async def readiness() -> str | None:
        if reason[0] == "boom":
            raise RuntimeError("check crashed")
        return reason[0]

    address = await nursery.start(
        lambda task_status: serve_metrics("127.0.0.1:0", readiness, interval=0.01, task_status=task_status)
    )
    assert (await _get(address, "/healthz")).status_code == 200
    not_ready = await _until(address, "/readyz", 503)
    assert "store unreachable" in not_ready.text
    reason[0] = None
    assert (await _until(address, "/readyz", 200)).text == "ready\n"
    reason[0] = "boom"
    assert "check crashed" in (await _until(address, "/readyz", 503)).text
    assert (await _get(address, "/healthz")).status_code == 200  # alive even when not ready


async def test_other_paths_and_methods(nursery: trio.Nursery) -> None:
    async def ready() -> None:
        return None

    address = await nursery.start(lambda task_status: serve_metrics("127.0.0.1:0", ready, task_status=task_status))
    assert (await _get(address, "/nope")).status_code == 404
    assert (await _get(address, "/../etc/passwd")).status_code == 404
    assert (await _get(address, "/metrics", method="POST")).status_code == 405
    body = (await _get(address, "/metrics")).text
    assert "# TYPE kubeport_registry_requests_total counter" in body


async def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def ready() -> None:
            return None

        with pytest.raises(ConnectionProblem, match=f"cannot listen for metrics on 127.0.0.1:{port}"):
            await serve_metrics(f"127.0.0.1:{port}", ready)


def _sample(body: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    for line in body.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


async def test_a_registry_serves_its_metrics(nursery: trio.Nursery, tmp_path: Path) -> None:
    info: RegistryInfo = await nursery.start(
        lambda task_status: serve_registry(
            data_dir=tmp_path / "reg", listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", task_status=task_status
        )
    )
    assert info.metrics_address
    await _until(info.metrics_address, "/readyz", 200)
    before = (await _get(info.metrics_address, "/metrics")).text
    async with RegistryClient.from_identity_file(info.admin_identity) as client:
        for _ in range(3):
            await client.ping()
        await client.list("role")
        with pytest.raises(NotFound):
            await client.get("role", "does-not-exist")
    after = (await _get(info.metrics_address, "/metrics")).text
    ping = {"route": "ping", "method": "GET", "code": "200"}
    assert (
        _sample(after, "kubeport_registry_requests_total", **ping)
        - _sample(before, "kubeport_registry_requests_total", **ping)
        == 3
    )
    timed = "kubeport_registry_request_duration_seconds_count"
    assert _sample(after, timed, route="ping") - _sample(before, timed, route="ping") == 3
    missing = {"route": "resources", "method": "GET", "code": "404"}
    assert _sample(after, "kubeport_registry_requests_total", **missing) >= 1
    assert _sample(after, "kubeport_store_operation_duration_seconds_count", backend="SQLite", op="get") > 0
    assert _sample(after, "kubeport_certificate_expiry_timestamp_seconds", certificate="cluster_ca") > 0
    # The raw path never becomes a label: a made-up route is counted as "other".
    async with RegistryClient.from_identity_file(info.admin_identity) as client:
        with pytest.raises(NotFound):
            await client._request("GET", "/v1/made-up-route-xyz")
    assert "made-up-route-xyz" not in (await _get(info.metrics_address, "/metrics")).text

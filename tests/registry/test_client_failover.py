"""A client given several registries (``--registry A,B,C``, issue 11 §2) fails over to the next one when it
cannot reach the current one, and never sends a write twice."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import httpx
import pytest
import trio

from registry.client import RegistryClient, split_addresses
from registry.core.errors import BadParameter, ConnectionProblem
from registry.core.identity import CertAuthority
from registry.server.serve import RegistryInfo
from tests.helpers import cluster_doc, kubeconfig_bytes

CA = CertAuthority.generate("c", now=datetime.now(tz=UTC))


def _client(handler: object, address: str = "a.example:3025,b.example:3025") -> RegistryClient:
    return RegistryClient(address, ca_pems=[CA.cert_pem], transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_registry_that_cannot_be_reached_is_skipped_for_any_request() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}")
        if request.url.host == "a.example":
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"ok": request.url.host})

    async with _client(handler) as client:
        assert await client._request("POST", "/v1/resources/role", body={}) == {"ok": "b.example"}
        assert client.address == "b.example:3025"
        assert await client._request("GET", "/v1/ping") == {"ok": "b.example"}  # sticks to the one that answered
    assert seen == ["POST a.example", "POST b.example", "GET b.example"]


async def test_a_write_that_may_have_arrived_is_never_sent_again() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}")
        if request.url.host == "a.example":
            raise httpx.RemoteProtocolError("server disconnected mid-answer", request=request)
        return httpx.Response(200, json={})

    async with _client(handler) as client:
        with pytest.raises(ConnectionProblem, match=r"a\.example"):
            await client._request("POST", "/v1/resources/role", body={})
        assert seen == ["POST a.example"]
        assert await client._request("GET", "/v1/ping") == {}  # a read changes nothing: it may go elsewhere
    assert seen == ["POST a.example", "GET a.example", "GET b.example"]


async def test_every_registry_down_names_them_all() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with _client(handler, "a.example:1,b.example:2,c.example:3") as client:
        with pytest.raises(ConnectionProblem) as caught:
            await client.ping()
    assert all(host in caught.value.message for host in ("a.example:1", "b.example:2", "c.example:3"))


@pytest.mark.parametrize("address", ["", ",", "a:1,,b:2", "a:1, ", "http://a:1", "a:1,ftp://b:2"])
def test_malformed_address_lists_are_refused(address: str) -> None:
    with pytest.raises(BadParameter):
        split_addresses(address)


def test_address_lists_keep_their_order() -> None:
    assert split_addresses("b:1, a:2") == ("b:1", "a:2")


async def test_a_real_registry_behind_a_dead_one(registry: RegistryInfo) -> None:
    both = f"{_closed_port()},{registry.address}"
    async with RegistryClient.from_identity_file(registry.admin_identity, both) as watcher:
        async with watcher.watch(["kube_cluster"], revision=0) as events:  # the watch itself fails over
            async with RegistryClient.from_identity_file(registry.admin_identity, both) as client:
                assert (await client.ping())["cluster_name"] == "test-cluster"
                await client.create(cluster_doc("c1", kubeconfig_bytes(), {}))
            with trio.fail_after(10):
                kinds = [type(await anext(events)).__name__ for _ in range(2)]
        assert kinds == ["Init", "Put"] and watcher.address == registry.address

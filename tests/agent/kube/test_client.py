"""KubeAPI against the fake Kubernetes API over real TLS, and against hostile plain-http peers.

What a user would notice: the right credentials reach the cluster, TLS trusts exactly the kubeconfig's CA
(or system roots, or nothing with a warning), ``tls-server-name`` is what the certificate is checked
against, every failure is one clear KubeportError, and secrets never show up in messages or reprs.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import importlib.util
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import yaml
from cryptography import x509

from agent.kube import tls
from agent.kube.client import KubeAPI
from agent.kube.tls import context_cache_size, ssl_context_for
from registry.core.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    KubeportError,
    NotFound,
    Timeout,
    Unauthenticated,
)
from registry.core.identity import CertAuthority
from registry.core.kubeconfig import KubeTarget, check_kubeconfig
from tests.fakes.fixtures import ADMIN_TOKEN
from tests.fakes.kube_api import FakeKube

Edit = Callable[[dict[str, Any]], None]


def make_target(fake: FakeKube, token: str | None = ADMIN_TOKEN, *, edit: Edit | None = None, **kw: Any) -> KubeTarget:
    config = fake.kubeconfig(token, **kw)
    if edit is not None:
        edit(config)
    return check_kubeconfig(yaml.safe_dump(config).encode(), cluster_name="c1")


def cluster_of(config: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = config["clusters"][0]["cluster"]
    return section


def other_ca(config: dict[str, Any]) -> None:
    pem = CertAuthority.generate("someone-else", now=datetime.now(UTC)).cert_pem
    cluster_of(config)["certificate-authority-data"] = base64.b64encode(pem).decode()


def no_ca(config: dict[str, Any]) -> None:
    del cluster_of(config)["certificate-authority-data"]


def insecure(config: dict[str, Any]) -> None:
    no_ca(config)
    cluster_of(config)["insecure-skip-tls-verify"] = True


def server_name(name: str) -> Edit:
    def edit(config: dict[str, Any]) -> None:
        cluster_of(config)["tls-server-name"] = name

    return edit


async def closed_port() -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return port


# --------------------------------------------------------------------------------------- auth and TLS


async def test_token_auth_reaches_the_cluster_as_the_token_user(fake_kube: FakeKube) -> None:
    async with KubeAPI(make_target(fake_kube)) as api:
        version = await api.get_json("/version")
    assert version["gitVersion"] == fake_kube.git_version
    seen = fake_kube.requests[-1]
    assert (seen.method, seen.path, seen.user, seen.status) == ("GET", "/version", "kubernetes-admin", 200)
    assert seen.header("authorization") == f"Bearer {ADMIN_TOKEN}"
    assert seen.header("impersonate-user") is None  # the agent's own calls never impersonate
    assert seen.header("user-agent") == "kubeport-agent"
    assert {name for name, _ in seen.headers} <= {
        "host", "accept", "accept-encoding", "user-agent", "authorization", "connection"
    }  # fmt: skip


async def test_client_certificate_auth(fake_kube: FakeKube) -> None:
    pair = fake_kube.issue_client_cert("alice", ["system:masters"])
    async with KubeAPI(make_target(fake_kube, None, client_cert=pair)) as api:
        assert (await api.get_json("/api"))["kind"] == "APIVersions"
    assert fake_kube.requests[-1].user == "alice"
    assert fake_kube.requests[-1].header("authorization") is None


async def test_post_json_sends_json_and_returns_the_answer(fake_kube: FakeKube) -> None:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "impersonate", "resource": "users"}},
    }
    async with KubeAPI(make_target(fake_kube)) as api:
        answer = await api.post_json("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
    assert answer["status"]["allowed"] is True
    assert fake_kube.requests[-1].header("content-type") == "application/json"


async def test_basic_auth_header_is_built_from_the_kubeconfig(fake_kube: FakeKube) -> None:
    def basic(config: dict[str, Any]) -> None:
        config["users"][0]["user"] = {"username": "bob", "password": "hunter2-pw"}

    async with KubeAPI(make_target(fake_kube, None, edit=basic)) as api:
        with pytest.raises(Unauthenticated):  # the fake knows no basic users; the header is what matters
            await api.get_json("/version")
    expected = "Basic " + base64.b64encode(b"bob:hunter2-pw").decode()
    assert fake_kube.requests[-1].header("authorization") == expected


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(other_ca, "does not verify", id="another-CA"),
        pytest.param(no_ca, "does not verify", id="system-roots-do-not-know-the-fake"),
        pytest.param(server_name("wrong.example"), "wrong.example", id="tls-server-name-not-in-cert"),
    ],
)
async def test_untrusted_server_is_a_tls_connection_problem(fake_kube: FakeKube, edit: Edit, expected: str) -> None:
    async with KubeAPI(make_target(fake_kube, edit=edit)) as api:
        with pytest.raises(ConnectionProblem) as caught:
            await api.get_json("/version")
    message = caught.value.message
    assert message.startswith(f"cannot reach {fake_kube.url}: TLS handshake failed")
    assert expected in message
    assert not any(r.path == "/version" for r in fake_kube.requests)


async def test_insecure_target_works_and_says_so(fake_kube: FakeKube) -> None:
    target = make_target(fake_kube, edit=insecure)
    async with KubeAPI(target) as api:
        assert (await api.get_json("/version"))["gitVersion"] == fake_kube.git_version
        assert len(api.warnings) == 1
        assert "insecure-skip-tls-verify" in api.warnings[0]
    async with KubeAPI(make_target(fake_kube)) as verified:
        assert verified.warnings == ()


def _dns_names(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sans.get_values_for_type(x509.DNSName)


async def test_tls_server_name_is_what_the_certificate_is_checked_against(fake_kube: FakeKube) -> None:
    if "kubernetes" not in _dns_names(fake_kube.server_cert_pem):
        pytest.skip("the fake's serving certificate has no DNS name 'kubernetes' to connect by")
    # The URL names 127.0.0.1; only tls-server-name makes "kubernetes" the name to verify.
    assert fake_kube.url.startswith("https://127.0.0.1:")
    async with KubeAPI(make_target(fake_kube, edit=server_name("kubernetes"))) as api:
        assert (await api.get_json("/version"))["gitVersion"] == fake_kube.git_version


# ------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("code", "error", "prefix"),
    [
        (401, Unauthenticated, "credentials rejected by https://"),
        (403, AccessDenied, "https://"),
        (404, NotFound, "GET /version not found on https://"),
        (409, ConnectionProblem, "https://"),
        (500, ConnectionProblem, "https://"),
        (503, ConnectionProblem, "https://"),
    ],
)
async def test_status_errors_map_to_the_error_tree(
    fake_kube: FakeKube, code: int, error: type[KubeportError], prefix: str
) -> None:
    fake_kube.fail_next("/version", code, message="the server says no")
    async with KubeAPI(make_target(fake_kube)) as api:
        with pytest.raises(KubeportError) as caught:
            await api.get_json("/version")
        assert type(caught.value) is error
        assert caught.value.message.startswith(prefix)
        assert "the server says no" in caught.value.message
        # The next call is fine again: no sticky state.
        await api.get_json("/version")
        stats = api.statistics()
    assert (stats.requests, stats.failures) == (2, 1)


async def test_closed_port_is_cannot_reach() -> None:
    port = await closed_port()
    target = KubeTarget(context="c", cluster="c", user="u", server=f"https://127.0.0.1:{port}", auth="none")
    async with KubeAPI(target) as api:
        with pytest.raises(ConnectionProblem) as caught:
            await api.get_json("/version")
    assert caught.value.message == f"cannot reach https://127.0.0.1:{port}: Connection refused"


async def test_silent_server_times_out(nursery: trio.Nursery) -> None:
    async def hold(stream: trio.SocketStream) -> None:
        async with stream:  # accept, never answer
            await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, hold, 0)
    port = listeners[0].socket.getsockname()[1]
    target = KubeTarget(context="c", cluster="c", user="u", server=f"https://127.0.0.1:{port}", auth="none")
    async with KubeAPI(target) as api:
        with pytest.raises(Timeout) as caught:
            await api.get_json("/version", timeout=0.2)
    assert caught.value.message == f"cannot reach https://127.0.0.1:{port}: no answer to GET /version within 0.2s"


@pytest.mark.parametrize("path", ["https://evil.example/version", "//evil.example/version", "version", ""])
async def test_paths_must_stay_on_the_configured_server(fake_kube: FakeKube, path: str) -> None:
    before = len(fake_kube.requests)
    async with KubeAPI(make_target(fake_kube)) as api:
        with pytest.raises(BadParameter, match="must start with a single '/'"):
            await api.get_json(path)
    assert len(fake_kube.requests) == before


# ---------------------------------------------------------------------------------- hostile peers


SECRET = "sekrit-token-0123456789"


async def canned_server(nursery: trio.Nursery, reply: Callable[[trio.SocketStream], Any]) -> str:
    """A plain-http peer that reads a request head and answers whatever ``reply`` writes."""

    async def handle(stream: trio.SocketStream) -> None:
        # The client hanging up mid-answer is the expected end of several of these conversations.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    head += chunk
                await reply(stream)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


def http_answer(status: int, body: bytes, content_type: str = "application/json") -> Callable[..., Any]:
    async def reply(stream: trio.SocketStream) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        await stream.send_all(head.encode() + b"Connection: close\r\n\r\n" + body)

    return reply


def status_body(message: str) -> bytes:
    return json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": 500}).encode()


async def huge(stream: trio.SocketStream) -> None:
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4000000\r\nConnection: close\r\n\r\n")
    for _ in range(100):
        await stream.send_all(b"[" * 40000)


async def garbage(stream: trio.SocketStream) -> None:
    await stream.send_all(b"\x16\x03\x01 this is not http at all\r\n\r\n")


async def gzipped(stream: trio.SocketStream) -> None:
    body = gzip.compress(b'{"gitVersion": "v1.30.0"}')
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n"
    await stream.send_all(head.encode() + body)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(http_answer(200, b"<html>hi</html>", "text/html"), "with invalid JSON", id="not-json"),
        pytest.param(http_answer(200, b"\xff\xfe\x00"), "with invalid JSON", id="not-utf8"),
        pytest.param(huge, "with more than 65536 bytes", id="huge"),
        pytest.param(garbage, "cannot reach http://127.0.0.1:", id="not-http"),
        pytest.param(gzipped, "with invalid JSON", id="gzip-despite-identity"),
        pytest.param(http_answer(500, b"plain text failure"), "HTTP 500: plain text failure", id="plain-text-error"),
        pytest.param(http_answer(502, b""), "HTTP 502: HTTP 502 without a message", id="empty-error"),
    ],
)
async def test_garbage_answers_are_connection_problems(
    nursery: trio.Nursery, reply: Callable[..., Any], expected: str
) -> None:
    server = await canned_server(nursery, reply)
    target = KubeTarget(context="c", cluster="c", user="u", server=server, auth="token", token=SECRET)
    async with KubeAPI(target, max_response_bytes=65536) as api:
        with pytest.raises(ConnectionProblem) as caught:
            await api.get_json("/version")
    assert expected in caught.value.message


async def test_dripping_server_hits_the_whole_call_deadline(nursery: trio.Nursery) -> None:
    async def drip(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # every byte comes well within the read timeout, the whole never does
            await stream.send_all(b" ")
            await trio.sleep(0.02)

    server = await canned_server(nursery, drip)
    target = KubeTarget(context="c", cluster="c", user="u", server=server, auth="none")
    async with KubeAPI(target) as api:
        with pytest.raises(Timeout, match=r"no answer to GET /version within 0\.2s"):
            await api.get_json("/version", timeout=0.2)


@pytest.mark.parametrize(
    ("message", "check"),
    [
        pytest.param(f"your token {SECRET} is bad", lambda m: SECRET not in m and "<redacted>" in m, id="echoed-token"),
        pytest.param("red \x1b[31mALERT\x1b[0m\nnext line", lambda m: "\x1b" not in m and "\n" not in m, id="escapes"),
        pytest.param("x" * 100_000, lambda m: len(m) < 1000, id="huge-message"),
    ],
)
async def test_server_error_text_is_cleaned(nursery: trio.Nursery, message: str, check: Callable[[str], bool]) -> None:
    server = await canned_server(nursery, http_answer(500, status_body(message)))
    target = KubeTarget(context="c", cluster="c", user="u", server=server, auth="token", token=SECRET)
    async with KubeAPI(target) as api:
        assert any("plain http" in w for w in api.warnings)
        with pytest.raises(ConnectionProblem) as caught:
            await api.get_json("/version")
    assert check(caught.value.message), caught.value.message


async def test_secrets_never_appear_in_errors_reprs_or_statistics(fake_kube: FakeKube) -> None:
    target = make_target(fake_kube, SECRET)
    async with KubeAPI(target) as api:
        with pytest.raises(Unauthenticated) as caught:
            await api.get_json("/version")
        texts = [str(caught.value), repr(caught.value), repr(api), repr(api.statistics())]
    assert caught.value.message == f"credentials rejected by {fake_kube.url}: Unauthorized"
    assert all(SECRET not in text for text in texts)


# ------------------------------------------------------------------------------------ context cache


async def test_identical_targets_share_one_ssl_context(fake_kube: FakeKube) -> None:
    first = make_target(fake_kube)
    before = context_cache_size()
    apis = [KubeAPI(make_target(fake_kube)) for _ in range(50)]
    try:
        assert context_cache_size() - before <= 1
        assert ssl_context_for(first) is ssl_context_for(make_target(fake_kube))
        assert ssl_context_for(first) is not ssl_context_for(make_target(fake_kube, edit=other_ca))
        assert ssl_context_for(first) is not ssl_context_for(make_target(fake_kube, edit=insecure))
    finally:
        for api in apis:
            await api.aclose()


def test_context_cache_is_bounded(fake_kube_ca: bytes) -> None:
    # Distinct bytes, same certificate: each is a new cache key but cheap to load.
    for index in range(tls._CONTEXT_CACHE_SIZE + 50):
        target = KubeTarget(
            context="c", cluster="c", user="u", server="https://x", ca_data=fake_kube_ca + b"\n" * index
        )
        ssl_context_for(target)
    assert context_cache_size() == tls._CONTEXT_CACHE_SIZE


@pytest.fixture
def fake_kube_ca() -> bytes:
    return CertAuthority.generate("cache-test", now=datetime.now(UTC)).cert_pem


@pytest.mark.parametrize(
    ("ca_data", "cert", "key", "expected"),
    [
        (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", None, None, "does not load"),
        (b"\xff\xfe", None, None, "does not load"),
        (None, b"-----BEGIN CERTIFICATE-----\n", None, "must be given together"),
        (None, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"junk", "do not load"),
    ],
)
def test_bad_tls_material_is_bad_parameter(
    ca_data: bytes | None, cert: bytes | None, key: bytes | None, expected: str
) -> None:
    target = KubeTarget(
        context="c", cluster="c", user="u", server="https://x", ca_data=ca_data, client_cert=cert, client_key=key
    )
    with pytest.raises(BadParameter, match=expected):
        ssl_context_for(target)


def test_unusable_proxy_is_bad_parameter() -> None:
    if importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed, so a socks5 proxy-url is usable")
    target = KubeTarget(context="c", cluster="c", user="u", server="https://x", proxy_url="socks5://127.0.0.1:1080")
    with pytest.raises(BadParameter, match="cannot build a client for https://x"):
        KubeAPI(target)


def test_tls_server_name_through_a_proxy_is_refused() -> None:
    target = KubeTarget(
        context="c", cluster="c", user="u", server="https://x", tls_server_name="k", proxy_url="http://p:3128"
    )
    with pytest.raises(BadParameter, match="tls-server-name together with proxy-url"):
        KubeAPI(target)

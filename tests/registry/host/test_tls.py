"""Real mutual TLS over 127.0.0.1 with trio: who gets in, what the server sees, which protocol is chosen."""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from registry.core.errors import BadParameter
from registry.core.identity import (
    REGISTRY_SERVER_NAME,
    CertAuthority,
    Identity,
    generate_private_key,
    public_key_pem,
)
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import (
    ClientCertPolicy,
    client_context,
    insecure_fetch_context,
    peer_certificate_der,
    server_context,
)

# OpenSSL checks validity against the real clock, so these certificates are issued around real time.
NOW = datetime.now(UTC)
HOUR = timedelta(hours=1)
TIMEOUT = 10


@dataclass(frozen=True)
class Keypair:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class ServerSaw:
    peer_der: bytes | None = None
    alpn: str | None = None
    error: BaseException | None = None


@pytest.fixture(scope="module")
def ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=NOW)


@pytest.fixture(scope="module")
def other_ca() -> CertAuthority:
    return CertAuthority.generate("prod", now=NOW)


def _issue(
    ca: CertAuthority,
    identity: Identity,
    *,
    now: datetime = NOW,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> Keypair:
    key = generate_private_key()
    cert = ca.issue(public_key_pem(key), identity, ttl=HOUR, now=now, dns_names=dns_names, ip_addresses=ip_addresses)
    return Keypair(cert, key)


@pytest.fixture(scope="module")
def registry_pair(ca: CertAuthority) -> Keypair:
    return _issue(ca, Identity("registry-1", "registry"))


@pytest.fixture(scope="module")
def alice(ca: CertAuthority) -> Keypair:
    return _issue(ca, Identity("alice", "user", roles=("dev",)))


@asynccontextmanager
async def tls_server(
    context: ssl.SSLContext,
) -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[ServerSaw]]]:
    """An echo server; what each connection's handshake produced is sent on the channel."""
    send, receive = trio.open_memory_channel[ServerSaw](16)

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        async with stream:
            try:
                await stream.do_handshake()
                await send.send(ServerSaw(peer_certificate_der(stream), stream.selected_alpn_protocol()))
                data = await stream.receive_some(1024)
                await stream.send_all(data)
            except trio.BrokenResourceError as exc:
                await send.send(ServerSaw(error=exc))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_ssl_over_tcp, handler, 0, context, host="127.0.0.1"))
        port = listeners[0].transport_listener.socket.getsockname()[1]
        yield port, receive
        nursery.cancel_scope.cancel()


async def talk(port: int, context: ssl.SSLContext, hostname: str = REGISTRY_SERVER_NAME) -> tuple[bytes, str | None]:
    """Handshake, send ping, read the echo. Raises trio.BrokenResourceError when TLS refuses."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    async with trio.SSLStream(tcp, context, server_hostname=hostname) as stream:
        await stream.do_handshake()
        await stream.send_all(b"ping")
        echoed = bytes(await stream.receive_some(1024))
        alpn = stream.selected_alpn_protocol()
        assert alpn is None or isinstance(alpn, str)
        return echoed, alpn


def _client(ca: CertAuthority, pair: Keypair | None = None) -> ssl.SSLContext:
    if pair is None:
        return client_context([ca.cert_pem])
    return client_context([ca.cert_pem], pair.cert, pair.key)


def _server(ca: CertAuthority, pair: Keypair, policy: ClientCertPolicy = "optional") -> ssl.SSLContext:
    return server_context(pair.cert, pair.key, [ca.cert_pem], client_certs=policy)


async def _expect_refused(port: int, context: ssl.SSLContext, saw: trio.MemoryReceiveChannel[ServerSaw]) -> None:
    with pytest.raises(trio.BrokenResourceError):
        await talk(port, context)
    result = await saw.receive()
    assert result.error is not None


# -------------------------------------------------------------------------------- client authentication


@pytest.mark.parametrize("policy", ["optional", "required"])
async def test_client_cert_identity_is_visible_to_the_server(
    ca: CertAuthority, registry_pair: Keypair, alice: Keypair, policy: ClientCertPolicy
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair, policy)) as (port, saw):
            assert await talk(port, _client(ca, alice)) == (b"ping", "http/1.1")
            result = await saw.receive()
    assert result.peer_der is not None
    who = ca.verify(result.peer_der, now=datetime.now(UTC))
    assert (who.name, who.kind, who.roles) == ("alice", "user", ("dev",))


async def test_optional_lets_anonymous_clients_in(ca: CertAuthority, registry_pair: Keypair) -> None:
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair, "optional")) as (port, saw):
            assert await talk(port, _client(ca)) == (b"ping", "http/1.1")
            result = await saw.receive()
    assert result.error is None
    assert result.peer_der is None


async def test_required_refuses_anonymous_clients(ca: CertAuthority, registry_pair: Keypair) -> None:
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair, "required")) as (port, saw):
            await _expect_refused(port, _client(ca), saw)


async def test_none_never_asks_for_a_client_cert(ca: CertAuthority, registry_pair: Keypair, alice: Keypair) -> None:
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair, "none")) as (port, saw):
            assert await talk(port, _client(ca, alice)) == (b"ping", "http/1.1")
            result = await saw.receive()
    assert result.peer_der is None


@pytest.mark.parametrize("policy", ["optional", "required"])
async def test_client_cert_of_another_ca_is_refused(
    ca: CertAuthority, other_ca: CertAuthority, registry_pair: Keypair, policy: ClientCertPolicy
) -> None:
    mallory = _issue(other_ca, Identity("root", "admin", roles=("admin",)))
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair, policy)) as (port, saw):
            await _expect_refused(port, _client(ca, mallory), saw)


async def test_expired_client_cert_is_refused(ca: CertAuthority, registry_pair: Keypair) -> None:
    expired = _issue(ca, Identity("alice", "user"), now=NOW - timedelta(days=2))
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair)) as (port, saw):
            await _expect_refused(port, _client(ca, expired), saw)


@pytest.mark.parametrize(
    ("which", "alert"),
    [("other-ca", "TLSV1_ALERT_UNKNOWN_CA"), ("expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED"), ("none", None)],
)
async def test_a_refused_handshake_sends_its_alert(
    ca: CertAuthority, other_ca: CertAuthority, registry_pair: Keypair, which: str, alert: str | None
) -> None:
    """Our servers' TLS (SocketTLSStream) puts OpenSSL's alert of a failed handshake on the wire, so a TLS 1.3
    client (whose side of the handshake is already done) learns why instead of reading a bare EOF, which
    client-go takes for a lost response and retries (kubectl with an expired certificate hung for ~30 s while
    trio's SSLStream, which drops that alert, served it)."""
    clients = {
        "other-ca": _issue(other_ca, Identity("alice", "user")),
        "expired": _issue(ca, Identity("alice", "user"), now=NOW - timedelta(days=2)),
        "none": None,
    }

    async def handler(tcp: trio.SocketStream) -> None:
        stream = SocketTLSStream.wrap(tcp, context, server_side=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            pass  # the alert is on its way already: close at once, as the front door does
        finally:
            await stream.aclose()

    async def refusal(port: int, client: ssl.SSLContext) -> BaseException | None:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        async with trio.SSLStream(tcp, client, server_hostname=REGISTRY_SERVER_NAME) as stream:
            await stream.do_handshake()  # TLS 1.3: the client is done before the server checked it
            try:
                await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
                await stream.receive_some(1024)
            except trio.BrokenResourceError as exc:
                return exc.__cause__
        return None

    pair = clients[which]
    context = _server(ca, registry_pair, "required")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            cause = await refusal(port, _client(ca, pair))
            nursery.cancel_scope.cancel()
    assert isinstance(cause, ssl.SSLError), cause
    if alert is not None:
        assert cause.reason == alert, cause
    else:  # no certificate at all: OpenSSL's own alert for that
        assert "ALERT" in str(cause.reason), cause


# ------------------------------------------------------------------------------------------------- ALPN


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["h2", "http/1.1"], "http/1.1"),  # what kubectl offers
        (["http/1.1"], "http/1.1"),
        (["h2"], None),  # never h2, even when that is all the client wants
    ],
)
async def test_server_selects_http11_only(
    ca: CertAuthority, registry_pair: Keypair, offered: list[str], selected: str | None
) -> None:
    context = _client(ca)
    context.set_alpn_protocols(offered)
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair)) as (port, saw):
            assert await talk(port, context) == (b"ping", selected)
            assert (await saw.receive()).alpn == selected


# ----------------------------------------------------------------------------------- server verification


@pytest.mark.parametrize("address_hostname", [REGISTRY_SERVER_NAME, "localhost", "127.0.0.1"])
async def test_registry_cert_passes_hostname_checks(
    ca: CertAuthority, registry_pair: Keypair, address_hostname: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, registry_pair)) as (port, _):
            assert await talk(port, _client(ca), hostname=address_hostname) == (b"ping", "http/1.1")


@pytest.mark.parametrize(
    "identity",
    [Identity("vm-7", "agent", host_id="h1"), Identity("alice", "user")],
)
async def test_other_kinds_cannot_pose_as_the_registry(ca: CertAuthority, identity: Identity) -> None:
    if identity.kind == "agent":  # a server kind: names of its own, on the very address we dial
        impostor = _issue(ca, identity, dns_names=("vm-7.lan",), ip_addresses=("127.0.0.1",))
    else:
        impostor = _issue(ca, identity)
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, impostor)) as (port, _):
            with pytest.raises(trio.BrokenResourceError) as info:
                await talk(port, _client(ca))
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def test_cn_alone_never_names_the_server(ca: CertAuthority) -> None:
    # Hand-made (our CA refuses to issue it): CN = the registry name, no SANs. With the CN fallback on,
    # a client would accept it as the registry.
    key = generate_private_key()
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, REGISTRY_SERVER_NAME)]))
        .issuer_name(ca_cert.subject)
        .public_key(serialization.load_pem_public_key(public_key_pem(key)))  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - HOUR)
        .not_valid_after(NOW + HOUR)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        .public_bytes(serialization.Encoding.PEM)
    )
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(ca, Keypair(leaf, key))) as (port, _):
            with pytest.raises(trio.BrokenResourceError):
                await talk(port, _client(ca))


async def test_server_of_another_ca_is_refused(ca: CertAuthority, other_ca: CertAuthority) -> None:
    other_registry = _issue(other_ca, Identity("registry-1", "registry"))
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(other_ca, other_registry)) as (port, _):
            with pytest.raises(trio.BrokenResourceError):
                await talk(port, _client(ca))


async def test_insecure_fetch_context_connects_to_any_server(other_ca: CertAuthority) -> None:
    other_registry = _issue(other_ca, Identity("registry-1", "registry"))
    with trio.fail_after(TIMEOUT):
        async with tls_server(_server(other_ca, other_registry)) as (port, _):
            assert await talk(port, insecure_fetch_context(), hostname="anything.example") == (
                b"ping",
                "http/1.1",
            )


# --------------------------------------------------------------------------------------- context inputs


def test_contexts_are_tls12_plus(ca: CertAuthority, registry_pair: Keypair) -> None:
    for context in (_server(ca, registry_pair), _client(ca), insecure_fetch_context()):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    client = _client(ca)
    assert client.check_hostname
    assert not client.hostname_checks_common_name
    assert client.verify_mode == ssl.CERT_REQUIRED


def test_bad_inputs_are_bad_parameters(
    ca: CertAuthority, registry_pair: Keypair, alice: Keypair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: server_context(registry_pair.cert, alice.key, [ca.cert_pem]), "do not pair"),
        (lambda: server_context(b"garbage", registry_pair.key, [ca.cert_pem]), "do not load"),
        (lambda: server_context(registry_pair.cert, registry_pair.key, []), "at least one CA"),
        (
            lambda: server_context(registry_pair.cert, registry_pair.key, [b"junk"]),
            "CA certificates do not load",
        ),
        (
            lambda: server_context(registry_pair.cert, registry_pair.key, [b"\xff"]),
            "CA certificates do not load",
        ),
        (lambda: server_context(registry_pair.cert, registry_pair.key, ca.cert_pem), "at least one CA"),  # type: ignore[arg-type]
        (
            lambda: server_context(
                registry_pair.cert,
                registry_pair.key,
                [ca.cert_pem],
                client_certs="maybe",  # type: ignore[arg-type]
            ),
            "client_certs must be",
        ),
        (lambda: client_context([ca.cert_pem], alice.cert), "needs its key"),
        (lambda: client_context([ca.cert_pem], None, alice.key), "needs its key"),
        (lambda: client_context([ca.cert_pem], alice.cert, registry_pair.key), "do not pair"),
    ]
    for build, match in cases:
        with pytest.raises(BadParameter, match=match):
            build()
    # The staged key files are gone, success or failure.
    _server(ca, registry_pair)
    assert list(tmp_path.iterdir()) == []

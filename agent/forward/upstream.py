"""The forwarder's side towards a cluster's API server: endpoints from kubeconfigs, pooled HTTP/1.1 connections.

:class:`Endpoints` turns a served ``kube_cluster`` into an :class:`Endpoint` (server address, TLS context,
``Host`` and ``Authorization``): the kubeconfig is checked with the same :func:`check_kubeconfig` the agent
registered the cluster with (cached by content, so it is parsed once, not per request; so is the endpoint
of a kubeconfig without an ``exec`` credential), TLS contexts come from :mod:`agent.kube.tls` (cached per
TLS material), and an ``exec`` credential comes from the cluster's existing credential cache
(``ForwardContext.exec_credential``), never from running the plugin per request.

:class:`UpstreamPool` keeps idle keep-alive connections per endpoint: at most ``max_idle`` each, dropped
after ``idle_ttl`` seconds unused, after any error, after a response that did not end cleanly, and after
an upgrade (an upgraded connection belongs to its one session). Connections are HTTP/1.1 clients (requests
written as bytes, answers read by :class:`registry.core.http1.Reader`) over
TLS on the socket itself (:class:`registry.host.socket_tls.SocketTLSStream`), or plain TCP for an ``http://``
server.

Invariants: every failure here is an :class:`UpstreamError` (a 502 ``Status`` naming the cluster and the
server, never a secret, never a traceback); a connection handed out by :meth:`UpstreamPool.acquire` is idle,
its reader waiting for an answer's head; :meth:`UpstreamPool.release` pools only connections whose last
exchange finished completely, whose answer allowed another and left no bytes after it (a body the forwarder
read without the reader counts only once :meth:`UpstreamConnection.end_raw_body` said it ended cleanly; the
connection then gets a fresh reader).
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import trio

from agent.forward.dial import open_api_stream
from agent.kube._text import clean
from agent.kube.exec_plugin import ExecCredential
from agent.kube.tls import H2_ALPN_PROTOCOLS, client_context
from registry.core import http1
from registry.core.errors import KubeportError
from registry.core.kubeconfig import KubeTarget, check_kubeconfig
from registry.core.netaddr import format_hostport
from registry.core.resources import KubeCluster
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import wait_for_input

MAX_RESPONSE_HEAD: Final = 256 * 1024  # an API server's response head; a bigger one is hostile
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
_STATIC_ORIGINS = frozenset({"config-file", "defaults"})


class UpstreamError(KubeportError):
    """The cluster's API server could not be reached, or broke the exchange (502)."""

    code = 502
    reason = "BadGateway"


@dataclass(frozen=True)
class Endpoint:
    """How to reach one cluster's API server. ``key`` names the connections that may be shared."""

    cluster: str
    server: str  # the kubeconfig's server URL, for messages
    host: str
    port: int
    base_path: str  # the server URL's path, without a trailing slash
    host_header: bytes
    server_hostname: str | None  # name checked against the certificate (tls-server-name or the host)
    ssl_context: ssl.SSLContext | None = field(repr=False)
    authorization: bytes | None = field(repr=False)
    key: tuple[Any, ...] = field(repr=False)
    # The same TLS material offering h2 first by ALPN, for watches over shared HTTP/2 (agent.forward.upstream_h2).
    h2_context: ssl.SSLContext | None = field(default=None, repr=False)

    def unreachable(self, why: str) -> UpstreamError:
        return UpstreamError(
            f'cannot reach the API server of Kubernetes cluster "{self.cluster}" ({self.server}): {why}'
        )


def _describe(exc: BaseException) -> str:
    text = clean(str(exc)) or type(exc).__name__
    return text[:300]


class Endpoints:
    """Kubeconfig -> :class:`Endpoint`, checked once per kubeconfig content (bounded cache)."""

    def __init__(self, *, max_entries: int = 1024) -> None:
        self._targets: OrderedDict[tuple[str, bytes, bool], KubeTarget] = OrderedDict()
        # The endpoint of a kubeconfig without an exec credential depends on its target only: built once.
        self._endpoints: dict[int, tuple[KubeTarget, Endpoint]] = {}
        self._last: dict[int, tuple[KubeCluster, KubeTarget]] = {}  # id(cluster object) -> its target
        self._max = max_entries

    def target(self, cluster: KubeCluster) -> KubeTarget:
        # The served cluster object stays the same until the cluster changes (a new object then): its
        # target is found by identity without hashing the kubeconfig on every request. The entry holds
        # the object, so its id is never reused while it is a key.
        last = self._last.get(id(cluster))
        if last is not None and last[0] is cluster:
            return last[1]
        target = self._target(cluster)
        self._last[id(cluster)] = (cluster, target)
        while len(self._last) > self._max:
            self._last.pop(next(iter(self._last)))
        return target

    def _target(self, cluster: KubeCluster) -> KubeTarget:
        allow_exec = cluster.allow_exec_plugins or cluster.origin in _STATIC_ORIGINS
        key = (cluster.name, hashlib.sha256(cluster.kubeconfig).digest(), allow_exec)
        found = self._targets.get(key)
        if found is not None:
            self._targets.move_to_end(key)
            return found
        try:
            target = check_kubeconfig(cluster.kubeconfig, cluster_name=cluster.name, allow_exec=allow_exec)
        except KubeportError as err:
            raise UpstreamError(
                f'Kubernetes cluster "{cluster.name}" has an unusable kubeconfig: {err.message}'
            ) from None
        self._targets[key] = target
        while len(self._targets) > self._max:
            _, gone = self._targets.popitem(last=False)
            self._endpoints.pop(id(gone), None)
        return target

    async def endpoint(
        self, cluster: KubeCluster, exec_credential: Callable[[str], Awaitable[ExecCredential]] | None
    ) -> Endpoint:
        target = self.target(cluster)
        if target.auth != "exec":
            cached = self._endpoints.get(id(target))
            if cached is not None and cached[0] is target:
                return cached[1]
            endpoint = build_endpoint(cluster.name, target)
            self._endpoints[id(target)] = (target, endpoint)
            return endpoint
        return build_endpoint(cluster.name, target, await _credential(cluster.name, target, exec_credential))


async def _credential(
    name: str, target: KubeTarget, source: Callable[[str], Awaitable[ExecCredential]] | None
) -> ExecCredential | None:
    if target.auth != "exec":
        return None
    if source is None:
        raise UpstreamError(f'Kubernetes cluster "{name}" uses an exec credential plugin and none is available here')
    try:
        return await source(name)
    except KubeportError as err:
        raise UpstreamError(f'Kubernetes cluster "{name}": its exec credential plugin failed: {err.message}') from None


def build_endpoint(name: str, target: KubeTarget, credential: ExecCredential | None = None) -> Endpoint:
    """The :class:`Endpoint` of a checked kubeconfig (``credential``: the current exec credential)."""
    server = target.server.rstrip("/")
    if target.proxy_url:
        raise UpstreamError(f'Kubernetes cluster "{name}": proxy-url is not supported by the forwarder yet')
    parts = urlsplit(server)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    cert, key = target.client_cert, target.client_key
    if credential is not None and credential.client_cert is not None:
        cert, key = credential.client_cert, credential.client_key
    context: ssl.SSLContext | None = None
    h2_context: ssl.SSLContext | None = None
    if scheme == "https":
        try:
            context = client_context(target.ca_data, target.insecure, cert, key)
            h2_context = client_context(target.ca_data, target.insecure, cert, key, alpn=H2_ALPN_PROTOCOLS)
        except KubeportError as err:
            raise UpstreamError(f'Kubernetes cluster "{name}": {err.message}') from None
    authorization: bytes | None = None
    if target.auth == "token" and target.token:
        authorization = f"Bearer {target.token}".encode("ascii")
    elif target.auth == "basic" and target.username is not None:
        pair = httpx.BasicAuth(target.username, target.password or "")
        authorization = next(pair.auth_flow(httpx.Request("GET", "http://x"))).headers["Authorization"].encode()
    elif credential is not None and credential.token is not None:
        authorization = f"Bearer {credential.token}".encode()
    default_port = 443 if scheme == "https" else 80
    host_header = format_hostport(host, port) if port != default_port else (f"[{host}]" if ":" in host else host)
    if not host_header.isascii():
        raise UpstreamError(f'Kubernetes cluster "{name}": the server name must be ASCII (use its punycode form)')
    return Endpoint(
        cluster=name,
        server=server,
        host=host,
        port=port,
        base_path=parts.path.rstrip("/"),
        host_header=host_header.encode("ascii"),
        server_hostname=(target.tls_server_name or host) if context is not None else None,
        ssl_context=context,
        authorization=authorization,
        key=(name, server, target.tls_server_name, id(context)),
        h2_context=h2_context,
    )


class UpstreamConnection:
    """One HTTP/1.1 client connection to an API server: requests written as bytes, answers read by a
    :class:`registry.core.http1.Reader`."""

    def __init__(self, endpoint: Endpoint, stream: trio.abc.Stream) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.reader = http1.Reader(response=True, max_head=MAX_RESPONSE_HEAD)
        self.idle_since = 0.0
        self.exchanges = 0
        self.closed = False
        self.request_done = False  # the whole request went out (its body's end too)
        # A body the caller read itself (take_body_start .. end_raw_body): None while the reader reads it;
        # then False, and True once the body ended cleanly and ``reader`` was replaced by a fresh one.
        self.raw_body: bool | None = None

    async def send_raw(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except _STREAM_ERRORS as exc:
            raise self.endpoint.unreachable(f"the connection broke: {_describe(exc)}") from None

    def poll_event(self) -> http1.Event:
        """The next event from what is already received, or ``http1.NEED_DATA`` (never waits)."""
        try:
            return self.reader.next_event()
        except http1.HTTPError as exc:
            raise self.endpoint.unreachable(f"malformed HTTP answer: {exc.message}") from None

    async def next_event(self, max_bytes: int = 64 * 1024) -> http1.Event:
        """The next event of the answer, reading as needed. For the answer's head (what this is used for):
        a read waits inside ``receive_some``, not parked on the socket first (see :meth:`receive`)."""
        while True:
            event = self.poll_event()
            if event is not http1.NEED_DATA:
                return event
            await self.receive(max_bytes, park=False)

    async def receive(self, max_bytes: int = 64 * 1024, *, park: bool = True) -> None:
        """Read once from the connection into the reader (for a caller that already saw ``NEED_DATA``).

        ``park``: wait for input parked on the socket alone first (``wait_for_input``: no TLS call in
        flight, the cheap way for an answer that may idle for hours). An answer's head follows the request
        at once, so it is read without: parking first costs a peek at the socket and, as the read that
        follows finds its bytes already there, one more pass of trio's scheduler per request (the read's
        own checkpoint); a read that waits itself has its checkpoint in the wait."""
        try:
            if park:
                await wait_for_input(self.stream)  # an idle watch waits here for hours: the cheap way (tls.py)
            data = await self.stream.receive_some(max_bytes)
        except _STREAM_ERRORS as exc:
            raise self.endpoint.unreachable(f"the connection broke: {_describe(exc)}") from None
        self.reader.feed(bytes(data))

    def take_body_start(self) -> bytes:
        """Read the answer's body without the reader from here on: the bytes it holds beyond the head.

        The caller then reads with :meth:`receive_raw` and checks the body's framing itself (the
        forwarder's verbatim chunked relay, :mod:`agent.forward.chunked`); the reader sees none of it, so
        :meth:`end_raw_body` must say how the body ended before the connection can be pooled."""
        self.raw_body = False
        self.reader.raw_body()
        return self.reader.take_buffer()

    async def receive_raw(self, max_bytes: int) -> bytes:
        """Read once from the connection (b"" at its end), for a body read without the reader."""
        try:
            await wait_for_input(self.stream)  # an idle watch's body waits here for hours (tls.py)
            return bytes(await self.stream.receive_some(max_bytes))
        except _STREAM_ERRORS as exc:
            raise self.endpoint.unreachable(f"the connection broke: {_describe(exc)}") from None

    def end_raw_body(self, extra: bytes, *, keep_alive: bool = True) -> None:
        """The body read without the reader ended cleanly; ``extra``: bytes that came after it (none from a
        sane server); ``keep_alive``: the answer's head allowed another request. With no extra bytes, and
        the request sent whole, the connection gets a fresh reader and may be pooled; otherwise it is not
        reusable."""
        if extra or not keep_alive or not self.request_done:
            return  # raw_body stays False: not reusable
        self.reader = http1.Reader(response=True, max_head=MAX_RESPONSE_HEAD)
        self.raw_body = True

    def next_cycle(self) -> None:
        """Ready for the next request on this connection (``reusable()`` said so)."""
        self.request_done = False
        if self.raw_body:
            self.raw_body = None  # already a fresh reader
            return
        self.reader.next_cycle()

    def more_arrived(self) -> bool:
        """True when the transport holds received bytes it has not decrypted and handed out yet.

        A bulk answer arrives as TLS records of 16 KiB, several per socket read; the forwarder takes the
        ones already here into the same write to the tunnel instead of writing once per record (each
        write is a tunnel frame, a TLS write towards the front door and one towards kubectl). Reading
        them never waits long: the rest of a partly received record is already on its way. A
        :class:`SocketTLSStream` leaves those bytes in the kernel (or decrypted in OpenSSL) and says so
        without reading (:meth:`SocketTLSStream.more_arrived`); on any other transport (plain TCP) this
        says False and every read is written as it comes (tests/agent/forward/test_streams.py checks it on
        a real TLS stream)."""
        return isinstance(self.stream, SocketTLSStream) and self.stream.more_arrived()

    def reusable(self) -> bool:
        if self.closed or self.raw_body is False:  # a body read without the reader that did not end cleanly
            return False
        if self.raw_body:
            return True
        reader = self.reader
        # An answer that ended, allowed another, and nothing after it (a sane server sends nothing unasked).
        return self.request_done and reader.done and reader.keep_alive and not reader.buffer

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
            await self.stream.aclose()


@dataclass(frozen=True)
class PoolStatistics:
    connects: int
    reuses: int
    idle: int
    discarded: int
    connect_failures: int


class UpstreamPool:
    """Keep-alive connections per endpoint (see the module docstring)."""

    def __init__(self, *, max_idle: int = 32, idle_ttl: float = 30.0, connect_timeout: float = 10.0) -> None:
        self.max_idle = max_idle
        self.idle_ttl = idle_ttl
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[Any, ...], list[UpstreamConnection]] = {}
        self._connects = 0
        self._reuses = 0
        self._discarded = 0
        self._connect_failures = 0

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            connects=self._connects,
            reuses=self._reuses,
            idle=sum(len(v) for v in self._idle.values()),
            discarded=self._discarded,
            connect_failures=self._connect_failures,
        )

    async def acquire(self, endpoint: Endpoint, *, fresh: bool = False) -> tuple[UpstreamConnection, bool]:
        """An idle pooled connection (reused=True) or a new one; ``fresh`` skips the pool."""
        now = trio.current_time()
        idle = self._idle.get(endpoint.key)
        while idle and not fresh:
            conn = idle.pop()
            if now - conn.idle_since <= self.idle_ttl:
                self._reuses += 1
                return conn, True
            await self.discard(conn)
        return await self.connect(endpoint), False

    async def connect(self, endpoint: Endpoint) -> UpstreamConnection:
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await open_api_stream(endpoint.host, endpoint.port)  # never a metadata service
                if endpoint.ssl_context is not None:
                    tcp, stream = stream, None  # wrap() takes the descriptor over (closing it if it fails)
                    try:
                        stream = SocketTLSStream.wrap(
                            tcp, endpoint.ssl_context, server_hostname=endpoint.server_hostname
                        )
                    finally:
                        if stream is None:
                            await _close_quietly(tcp)
                    await stream.do_handshake()
        except trio.TooSlowError:
            self._connect_failures += 1
            await _close_quietly(stream)
            raise endpoint.unreachable(f"no connection within {self.connect_timeout:g}s") from None
        except (*_STREAM_ERRORS, ValueError) as exc:  # ValueError: a server name TLS refuses (UnicodeError is one)
            self._connect_failures += 1
            await _close_quietly(stream)
            raise endpoint.unreachable(_describe(exc)) from None
        self._connects += 1
        return UpstreamConnection(endpoint, stream)

    async def release(self, conn: UpstreamConnection) -> None:
        """Pool ``conn`` if its exchange ended cleanly, else close it."""
        if not conn.reusable():
            await self.discard(conn)
            return
        conn.next_cycle()
        conn.exchanges += 1
        conn.idle_since = trio.current_time()
        idle = self._idle.setdefault(conn.endpoint.key, [])
        idle.append(conn)
        while len(idle) > self.max_idle:
            await self.discard(idle.pop(0))

    async def discard(self, conn: UpstreamConnection) -> None:
        self._discarded += 1
        await conn.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()


async def _close_quietly(stream: trio.abc.Stream | None) -> None:
    if stream is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
            await stream.aclose()

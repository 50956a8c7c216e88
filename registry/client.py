"""RegistryClient: the one way kpctl, kubeport and the agent talk to the registry (httpx over mutual TLS).

``transport`` is httpx's own seam: pass ``httpx.MockTransport`` or :mod:`registry.testing`'s in-process
transport (the real API handlers over a MemoryStore) and no socket is opened; the same error mapping applies.

Answers are typed with the wire shapes of :mod:`registry.core.wire`; where callers want models, a typed
method decodes through the codec (``list_kube_clusters``). The watch stream is decoded by
:mod:`registry.core.watch` into its event classes: nothing here knows the line format.

Every call verifies the registry's certificate against the cluster CA under the fixed name
``registry.kubeport.local`` (sent as SNI), whatever address the registry is reached at. Errors are mapped
at this seam: network and TLS failures become ConnectionProblem / Timeout with the address in the message,
error bodies become the exception class they were raised as on the server (``errors.from_status``).
httpx types never leak to callers.
"""

from __future__ import annotations

import builtins
import json
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlencode

import httpx
import trio

from registry.core import codec
from registry.core.chunked import ChunkedDecoder, ChunkedError
from registry.core.errors import (
    BadParameter,
    ConnectionProblem,
    KubeportError,
    Timeout,
    Unauthenticated,
    from_status,
)
from registry.core.http1 import HTTPError, Reader, check_headers, header_block, request_head
from registry.core.identity import REGISTRY_SERVER_NAME, check_pin
from registry.core.identity_file import IdentityFile
from registry.core.resources import KubeCluster
from registry.core.watch import Bookmark, Delete, Error, Init, Put, WatchDecoder, WatchEvent, WatchProtocolError
from registry.core.wire import (
    AgentRecord,
    AuditEvent,
    Certificate,
    HeartbeatBatch,
    HeartbeatResult,
    JoinResult,
    KubeAccessView,
    Ping,
    ResourceBody,
    Whoami,
)
from registry.host.files import read_limited
from registry.host.http1 import AnswerTooLarge, Broken, ClosedEarly, Http1Pool, NotSent, read_body, read_head
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import client_context, insecure_fetch_context

T = TypeVar("T")

DEFAULT_TIMEOUT = 15.0
_SNI = {"sni_hostname": REGISTRY_SERVER_NAME}

StreamEvent = Init | Put | Delete | Bookmark
"""What ``RegistryClient.watch`` yields (an ERROR event is raised instead)."""


def _base_url(address: str) -> str:
    address = address.strip()
    if address.startswith("https://"):
        address = address[len("https://") :]
    if "://" in address:
        raise BadParameter(f"registry address {address!r}: use host:port (https is implied)")
    if not address:
        raise BadParameter("registry address is empty")
    return f"https://{address.rstrip('/')}"


def _tls_failure(address: str, exc: BaseException) -> KubeportError | None:
    """The TLS failure behind ``exc`` (itself or a cause), as the error users see; None when TLS is not it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return ConnectionProblem(
                f"TLS with the registry at {address} failed: {cause.reason or cause} (is the identity issued by "
                "this registry's CA and still valid?)"
            )
        cause = cause.__cause__ or cause.__context__
    return None


def _map_transport_error(address: str, exc: Exception) -> KubeportError:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"registry at {address} did not answer in time ({text})")
    tls = _tls_failure(address, exc)
    if tls is not None:
        return tls
    if isinstance(exc, httpx.RemoteProtocolError):
        # TLS 1.3 refuses a client certificate after the handshake: the client only sees the close.
        return ConnectionProblem(
            f"the registry at {address} closed the connection ({text}): it may be restarting; if this persists, "
            "check that this identity is valid and issued by that registry"
        )
    return ConnectionProblem(f"cannot reach the registry at {address}: {text}")


def split_addresses(address: str) -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT...]`` as a tuple, each checked (:func:`_base_url`); empty parts are an error."""
    if not isinstance(address, str):
        raise BadParameter(f"registry address must be a string, got {type(address).__name__}")
    parts = tuple(part.strip() for part in address.split(","))
    for part in parts:
        _base_url(part)
    return parts


def _retryable_read(exc: BaseException) -> bool:
    """A GET that failed this way may be sent to another registry: it changed nothing."""
    return isinstance(exc, httpx.TimeoutException | httpx.RemoteProtocolError | httpx.ReadError)


def _seg(value: str) -> str:
    """One URL path segment: names never become path syntax (``..``, ``/``, ``?``)."""
    if value in ("", ".", ".."):
        raise BadParameter(f"invalid name {value!r}")
    return quote(value, safe="")


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    _raise_status(response.status_code, response.content)


def _raise_status(status: int, content: bytes) -> None:
    """An error answer (not 2xx) as the exception class it was raised as on the server."""
    if 200 <= status < 300:
        return
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        body = None
    raise from_status(body, status)


class RegistryClient:
    """The one way to talk to a registry (module docstring).

    ``address`` may name several registries serving the same cluster (``HOST:PORT[,HOST:PORT...]``, as
    ``--registry`` and ``KUBEPORT_REGISTRY`` take it). A request goes to the registry that answered last; when
    it cannot connect there (nothing was sent), it tries the next one, and so on once around the list. A
    GET (nothing changes) is also retried on the next registry after a connection that broke or timed out
    mid-request; a write that may have reached a registry is never sent twice: its error is raised.
    """

    def __init__(
        self,
        address: str,
        *,
        ca_pems: Sequence[bytes],
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.addresses = split_addresses(address)
        self._current = 0
        self._ssl = client_context(ca_pems, cert_pem, key_pem)
        self._timeout = timeout
        self._transport = transport
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._pools: dict[int, Http1Pool] = {}  # the direct path (no test transport): one pool per registry

    @property
    def address(self) -> str:
        """The registry requests go to now (the one that answered last)."""
        return self.addresses[self._current]

    def _client_at(self, index: int) -> httpx.AsyncClient:
        client = self._clients.get(index)
        if client is None:
            client = httpx.AsyncClient(
                base_url=_base_url(self.addresses[index]),
                verify=self._ssl,
                timeout=self._timeout,
                trust_env=False,
                transport=self._transport,
            )
            self._clients[index] = client
        return client

    @property
    def _http(self) -> httpx.AsyncClient:
        return self._client_at(self._current)

    async def _failover(self, method: str, attempt: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """Run ``attempt`` against the current registry, then the next ones as the class docstring says."""
        errors: list[KubeportError] = []
        count = len(self.addresses)
        for step in range(count):
            index = (self._current + step) % count
            try:
                result = await attempt(self._client_at(index))
            except (httpx.HTTPError, ssl.SSLError) as exc:
                mapped = _map_transport_error(self.addresses[index], exc)
                not_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if step + 1 < count and (not_sent or (method == "GET" and _retryable_read(exc))):
                    errors.append(mapped)
                    continue
                if errors:
                    raise type(mapped)("; ".join(e.message for e in [*errors, mapped])) from None
                raise mapped from None
            self._current = index
            return result
        raise AssertionError("unreachable: the loop returns or raises")

    @classmethod
    def from_identity(cls, identity: IdentityFile, address: str | None = None, **kwargs: Any) -> RegistryClient:
        """A client for an identity; an expired identity fails here, with its expiry, not as a TLS mystery."""
        me = identity.identity()
        if me.expires is not None and me.expires <= datetime.now(tz=UTC):
            raise Unauthenticated(
                f'identity of {me.kind} "{me.name}" expired at {me.expires.isoformat()}: get a fresh one '
                "(kpctl auth sign, or restart the registry for the admin identity)"
            )
        target = address or identity.registry
        if not target:
            raise BadParameter("no registry address: pass --registry HOST:PORT or set KUBEPORT_REGISTRY")
        return cls(target, ca_pems=identity.ca_pems, cert_pem=identity.cert_pem, key_pem=identity.key_pem, **kwargs)

    @classmethod
    def from_identity_file(cls, path: str | Path, address: str | None = None, **kwargs: Any) -> RegistryClient:
        data = read_limited(Path(path), limit=1 << 20, what="identity file")
        return cls.from_identity(IdentityFile.parse(data, source=str(path)), address, **kwargs)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()
        for client in clients:
            await client.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        if self._transport is None:
            status, content = await self._request_direct(method, path, params, body)
        else:

            async def send(http: httpx.AsyncClient) -> httpx.Response:
                return await http.request(
                    method, path, params=params, json=body if body is not None else None, extensions=_SNI
                )

            response = await self._failover(method, send)
            status, content = response.status_code, response.content
        _raise_status(status, content)
        try:
            return json.loads(content)
        except (ValueError, RecursionError):
            raise ConnectionProblem(f"registry at {self.address} answered something that is not JSON") from None

    # A unary request over a real connection skips httpx (registry.host.http1 says why): the same request
    # (method, target, JSON body as httpx encodes it), the same failover and the same errors as _failover.

    def _pool_at(self, index: int) -> Http1Pool:
        pool = self._pools.get(index)
        if pool is None:
            url = httpx.URL(_base_url(self.addresses[index]))
            pool = Http1Pool(
                url.host,
                url.port or 443,
                tls=self._ssl,
                server_hostname=REGISTRY_SERVER_NAME,
                authority=url.netloc.decode("ascii"),
                timeout=self._timeout,
                max_connections=100,
                max_idle=20,
                max_body=MAX_ANSWER_BYTES,
            )
            self._pools[index] = pool
        return pool

    async def _request_direct(
        self, method: str, path: str, params: Mapping[str, str] | None, body: Any
    ) -> tuple[int, bytes]:
        target = f"{path}?{urlencode(params)}" if params else path
        headers = _JSON_HEADERS if body is not None else _ACCEPT_JSON
        content = _encode_json(body) if body is not None else b""
        errors: list[KubeportError] = []
        count = len(self.addresses)
        for step in range(count):
            index = (self._current + step) % count
            address = self.addresses[index]
            try:
                answer = await self._pool_at(index).request(method, target, body=content, headers=headers)
            except NotSent as failed:
                mapped = _map_direct_error(address, failed.cause, connecting=True)
                retry = True
            except Broken as failed:
                mapped = _map_direct_error(address, failed.cause, connecting=False)
                retry = method == "GET" and not isinstance(failed.cause, AnswerTooLarge)
            else:
                self._current = index
                return answer.status, answer.body
            if step + 1 < count and retry:
                errors.append(mapped)
                continue
            if errors:
                raise type(mapped)("; ".join(e.message for e in [*errors, mapped])) from None
            raise mapped from None
        raise AssertionError("unreachable: the loop returns or raises")

    # -- meta ----------------------------------------------------------------------------------------

    async def ping(self) -> Ping:
        result: Ping = await self._request("GET", "/v1/ping")
        return result

    async def whoami(self) -> Whoami:
        result: Whoami = await self._request("GET", "/v1/whoami")
        return result

    async def kube_access(self) -> KubeAccessView:
        """A user's view: their current roles, Kubernetes groups/users and the clusters they may reach."""
        result: KubeAccessView = await self._request("GET", "/v1/kube_clusters")
        return result

    # -- resources -----------------------------------------------------------------------------------

    async def list(
        self, kind: str, *, with_secrets: bool = False, labels: Mapping[str, str] | None = None
    ) -> tuple[builtins.list[ResourceBody], int]:
        """All resources of a kind and the store revision the list was read at (to watch from)."""
        params = {"with_secrets": "1"} if with_secrets else {}
        if labels:
            params["labels"] = ",".join(f"{k}={v}" for k, v in labels.items())
        result = await self._request("GET", f"/v1/resources/{_seg(kind)}", params=params)
        return list(result["items"]), int(result["revision"])

    async def list_kube_clusters(
        self, *, with_secrets: bool = False, labels: Mapping[str, str] | None = None
    ) -> tuple[builtins.list[KubeCluster], int]:
        """Every kube_cluster as a model (validated by the codec; an invalid one raises BadParameter) and the
        revision to watch from. Without secrets the models have no kubeconfig."""
        items, revision = await self.list("kube_cluster", with_secrets=with_secrets, labels=labels)
        return [_kube_cluster(item, with_secrets) for item in items], revision

    async def get_kube_cluster(self, name: str, *, with_secrets: bool = False) -> KubeCluster:
        """One kube_cluster as a model (see :meth:`list_kube_clusters`)."""
        return _kube_cluster(await self.get("kube_cluster", name, with_secrets=with_secrets), with_secrets)

    async def get(self, kind: str, name: str, *, with_secrets: bool = False) -> ResourceBody:
        params = {"with_secrets": "1"} if with_secrets else None
        result: ResourceBody = await self._request("GET", f"/v1/resources/{_seg(kind)}/{_seg(name)}", params=params)
        return result

    async def create(self, resource: Mapping[str, Any]) -> ResourceBody:
        result: ResourceBody = await self._request("POST", f"/v1/resources/{_seg(resource['kind'])}", body=resource)
        return result

    async def update(self, resource: Mapping[str, Any]) -> ResourceBody:
        name = resource["metadata"]["name"]
        result: ResourceBody = await self._request(
            "PUT", f"/v1/resources/{_seg(resource['kind'])}/{_seg(name)}", body=resource
        )
        return result

    async def create_or_update(self, resource: Mapping[str, Any]) -> tuple[ResourceBody, bool]:
        """``kpctl create -f``: create, or replace when it exists. Returns (resource, created)."""
        from registry.core.errors import AlreadyExists

        try:
            return await self.create(resource), True
        except AlreadyExists:
            return await self.update(resource), False

    async def delete(self, kind: str, name: str) -> None:
        await self._request("DELETE", f"/v1/resources/{_seg(kind)}/{_seg(name)}")

    # -- heartbeats, tokens, certificates, audit -----------------------------------------------------

    async def heartbeat(self, server: Mapping[str, Any]) -> ResourceBody:
        host_id = server["spec"]["host_id"]
        name = server["metadata"]["name"]
        result: ResourceBody = await self._request("PUT", f"/v1/kube_servers/{_seg(host_id)}/{_seg(name)}", body=server)
        return result

    async def heartbeat_many(
        self, host_id: str, servers: Sequence[Mapping[str, Any]]
    ) -> builtins.list[HeartbeatResult]:
        """Several heartbeats of one host in one request and one registry commit; one result per server, in
        order (``error`` set on those refused)."""
        body = {"servers": list(servers)}
        result: HeartbeatBatch = await self._request("POST", f"/v1/kube_servers/{_seg(host_id)}", body=body)
        return result["results"]

    async def delete_heartbeat(self, host_id: str, name: str) -> None:
        await self._request("DELETE", f"/v1/kube_servers/{_seg(host_id)}/{_seg(name)}")

    async def put_agent(self, record: Mapping[str, Any]) -> AgentRecord:
        result: AgentRecord = await self._request("PUT", f"/v1/kube_agents/{_seg(record['host_id'])}", body=record)
        return result

    async def list_agents(self) -> builtins.list[AgentRecord]:
        result = await self._request("GET", "/v1/kube_agents")
        return list(result["items"])

    async def delete_agent(self, host_id: str) -> None:
        await self._request("DELETE", f"/v1/kube_agents/{_seg(host_id)}")

    async def generate_token(
        self, *, roles: Sequence[str] = ("Kube",), ttl_seconds: float = 1800, value: str | None = None
    ) -> ResourceBody:
        body: dict[str, Any] = {"roles": list(roles), "ttl_seconds": ttl_seconds}
        if value:
            body["value"] = value
        result: ResourceBody = await self._request("POST", "/v1/tokens", body=body)
        return result

    async def renew(self, csr_pem: bytes, *, ttl_seconds: float | None = None) -> Certificate:
        """A fresh certificate for the caller; ``ttl_seconds`` is what a bot asks for (others ignore it)."""
        body: dict[str, Any] = {"csr_pem": csr_pem.decode()}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        result: Certificate = await self._request("POST", "/v1/certs/renew", body=body)
        return result

    # -- bots (machine identity, registry.server.bots) -------------------------------------------------

    async def bots_list(self) -> builtins.list[dict[str, Any]]:
        result = await self._request("GET", "/v1/bots")
        return list(result["items"])

    async def bots_add(self, name: str, roles: Sequence[str], *, token_ttl_seconds: float) -> dict[str, Any]:
        """Create a bot; the answer holds its single-use join ``token`` (shown this once)."""
        body = {"name": name, "roles": list(roles), "token_ttl_seconds": token_ttl_seconds}
        result: dict[str, Any] = await self._request("POST", "/v1/bots", body=body)
        return result

    async def bots_update(
        self, name: str, *, add_roles: Sequence[str] = (), set_roles: Sequence[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"add_roles": list(add_roles)}
        if set_roles is not None:
            body["set_roles"] = list(set_roles)
        result: dict[str, Any] = await self._request("PUT", f"/v1/bots/{_seg(name)}", body=body)
        return result

    async def bots_rm(self, name: str) -> None:
        await self._request("DELETE", f"/v1/bots/{_seg(name)}")

    async def bot_clusters(self) -> dict[str, Any]:
        """The caller's reachable kube clusters (with labels), the cluster name and the front door address."""
        result: dict[str, Any] = await self._request("GET", "/v1/bots/self/clusters")
        return result

    async def sign_user(self, user: str, csr_pem: bytes, ttl_seconds: float) -> Certificate:
        body = {"user": user, "csr_pem": csr_pem.decode(), "ttl_seconds": ttl_seconds}
        result: Certificate = await self._request("POST", "/v1/certs/user", body=body)
        return result

    async def sso_start(
        self, connector: str, *, redirect_port: int, csr_pem: bytes, ttl_seconds: float | None = None
    ) -> dict[str, Any]:
        """Start an OIDC login (public route): the auth URL to open, its state and the redirect URI."""
        body: dict[str, Any] = {"connector": connector, "redirect_port": redirect_port, "csr_pem": csr_pem.decode()}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        result: dict[str, Any] = await self._request("POST", "/v1/sso/oidc/start", body=body)
        return result

    async def sso_finish(self, *, state: str, code: str) -> dict[str, Any]:
        """Finish an OIDC login (public route): the certificate for the CSR given at start."""
        result: dict[str, Any] = await self._request("POST", "/v1/sso/oidc/finish", body={"state": state, "code": code})
        return result

    # -- local users (registry.server.local_auth) ------------------------------------------------------

    async def create_signup_token(self, user: str) -> dict[str, Any]:
        """Admin: a single-use signup token for ``user`` (``kpctl users add`` / ``reset``)."""
        result: dict[str, Any] = await self._request("POST", f"/v1/users/{_seg(user)}/signup", body={})
        return result

    async def signup_info(self, token: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", "/v1/signup/info", body={"token": token})
        return result

    async def signup(self, token: str, password: str, totp_code: str) -> dict[str, Any]:
        body = {"token": token, "password": password, "totp_code": totp_code}
        result: dict[str, Any] = await self._request("POST", "/v1/signup", body=body)
        return result

    async def login(
        self, user: str, password: str, totp_code: str, csr_pem: bytes, ttl_seconds: float | None = None
    ) -> dict[str, Any]:
        """Password + code + CSR -> ``{cert_pem, ca_pems, expires, roles}`` (no client certificate needed)."""
        body: dict[str, Any] = {"user": user, "password": password, "totp_code": totp_code, "csr_pem": csr_pem.decode()}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        result: dict[str, Any] = await self._request("POST", "/v1/login", body=body)
        return result

    async def events(self, *, limit: int = 100, event: str | None = None) -> builtins.list[AuditEvent]:
        """The newest ``limit`` audit events (oldest first)."""
        items, _ = await self.events_page(limit=limit, event=event)
        return items

    async def report_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Agents: audit events about the requests they forwarded (``POST /v1/events``)."""
        await self._request("POST", "/v1/events", body={"events": list(events)})

    async def events_page(
        self, *, limit: int = 100, event: str | None = None, continue_from: str | None = None
    ) -> tuple[builtins.list[AuditEvent], str | None]:
        """One page of audit events (oldest first) and the token of the next, older page (None: no more)."""
        params = {"limit": str(limit)}
        if event:
            params["event"] = event
        if continue_from:
            params["continue"] = continue_from
        result = await self._request("GET", "/v1/events", params=params)
        token = result.get("continue")
        return list(result["items"]), token if isinstance(token, str) and token else None

    # -- watch ---------------------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, kinds: Sequence[str], *, revision: int | None = None, with_secrets: bool = False
    ) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        """Stream events (:mod:`registry.core.watch`: Init, Put, Delete, Bookmark) after ``revision``.

        An in-band ERROR line is raised as its error class: ``Compacted`` means relist and watch again. A
        malformed stream raises ConnectionProblem (reconnect and resume from the last revision seen).
        The stream never times out on its own (the server sends bookmarks); callers put deadlines around it.
        """
        params = {"kinds": ",".join(kinds)}
        if revision is not None:
            params["revision"] = str(revision)
        if with_secrets:
            params["with_secrets"] = "1"
        if self._transport is None:
            # The direct path (module docstring of this section): same requests, answers and errors.
            async with self._watch_direct(f"/v1/watch?{urlencode(params)}") as events:
                yield events
            return
        timeout = httpx.Timeout(DEFAULT_TIMEOUT, read=None)
        count = len(self.addresses)
        for step in range(count):  # connect to the first registry that takes the connection (failover)
            index = (self._current + step) % count
            address = self.addresses[index]
            streaming = False
            try:
                async with self._client_at(index).stream(
                    "GET", "/v1/watch", params=params, timeout=timeout, extensions=_SNI
                ) as response:
                    streaming = True
                    self._current = index
                    if not response.is_success:
                        await response.aread()
                        _raise_for(response)
                    events = _watch_events(response, address)
                    try:
                        yield events
                    finally:
                        # Callers may stop reading at any point; close the generators under us promptly.
                        await events.aclose()
                    return
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if streaming or step + 1 == count:
                    raise _map_transport_error(address, exc) from None
            except httpx.HTTPError as exc:
                raise _map_transport_error(address, exc) from None

    # A watch over a real connection skips httpx for its body. Per event the stream is one chunk, and
    # httpx -> httpcore -> h11 spent more per chunk (each layer's generator, context managers and timeouts)
    # than the event's own TLS read and JSON decode: with 100 watch clients in one process (an agent's
    # cluster watch is one of them) that was most of the client's CPU. Here: one TLS connection per watch
    # (as httpx made for a stream), registry.core.http1's Reader for the response head, then each TLS read
    # goes through ChunkedDecoder and WatchDecoder (sans-IO, both bounded) and nothing else. A test transport
    # (``transport=``) keeps the httpx path, which yields the same events and raises the same errors.

    @asynccontextmanager
    async def _watch_direct(self, target: str) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        count = len(self.addresses)
        errors: list[KubeportError] = []
        for step in range(count):  # connect to the first registry that takes the connection (failover)
            index = (self._current + step) % count
            address = self.addresses[index]
            try:
                stream, leftover = await self._open_watch(address, target)
            except _NotSent as failed:
                errors.append(failed.error)
                if step + 1 == count:
                    if len(errors) > 1:
                        raise type(failed.error)("; ".join(e.message for e in errors)) from None
                    raise failed.error from None
                continue
            self._current = index
            events = _direct_watch_events(stream, leftover, address)
            try:
                yield events
            finally:
                # Callers may stop reading at any point; close the generator and the connection promptly.
                try:
                    await events.aclose()
                finally:
                    await trio.aclose_forcefully(stream)
            return

    async def _open_watch(self, address: str, target: str) -> tuple[SocketTLSStream, bytes]:
        """A TLS connection to ``address`` that has sent the watch request and read a 200 head; the body
        bytes read past the head. Raises _NotSent when nothing reached the registry (try the next one)."""
        url = httpx.URL(_base_url(address))
        host, port = url.host, url.port or 443
        request = _watch_request(target, url.netloc)
        tcp: trio.SocketStream | None = None
        stream: SocketTLSStream | None = None
        sent = False
        try:
            with trio.fail_after(self._timeout):
                tcp = await trio.open_tcp_stream(host, port)
                # OpenSSL on the socket itself: less CPU and memory per watch than trio's SSLStream
                stream = SocketTLSStream.wrap(tcp, self._ssl, server_hostname=REGISTRY_SERVER_NAME)
                await stream.do_handshake()
                reader = Reader(response=True, max_head=_MAX_WATCH_HEAD)
                sent = True
                await stream.send_all(request)
                head = await read_head(reader, stream)
                if head.status != 200:
                    try:
                        error_body = await read_body(reader, stream, head, _MAX_ERROR_BODY)
                    except AnswerTooLarge:
                        error_body = b""
                    raise from_status(_json_or_none(error_body), head.status)
                if not head.chunked:
                    raise ConnectionProblem(f"the registry at {address} answered the watch without chunked framing")
                reader.raw_body()  # the body is read by _direct_watch_events, straight into its decoders
                leftover = reader.take_buffer()
            return stream, leftover
        except BaseException as exc:
            opened = stream if stream is not None else tcp
            if opened is not None:
                await trio.aclose_forcefully(opened)
            if isinstance(exc, KubeportError):
                raise
            mapped = _map_stream_error(address, exc, connecting=not sent)
            if mapped is None:
                raise
            if not sent:
                raise _NotSent(mapped) from None
            raise mapped from None


_MAX_WATCH_HEAD = 64 * 1024  # the registry's answer head (and an error answer's body, at most 1 MiB)
_MAX_ERROR_BODY = 1 << 20
_READ = 64 * 1024


MAX_ANSWER_BYTES = (
    256 * 1024 * 1024
)  # a unary answer (the largest: a list with secrets); a hostile server's more is refused
_JSON_HEADERS = (("accept", "application/json"), ("content-type", "application/json"))
_ACCEPT_JSON = (("accept", "application/json"),)


# Built once: json.dumps with any non-default argument builds a new JSONEncoder on every call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _encode_json(body: Any) -> bytes:
    """A request body exactly as httpx's ``json=`` encodes it (UTF-8, compact, no NaN)."""
    return _JSON_ENCODER.encode(body).encode("utf-8")


_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f-\xff]")  # h11's request-target: visible ASCII only


def _watch_request(target: str, netloc: bytes) -> bytes:
    """The watch's request head (a GET: no body). BadParameter for a target or address that cannot be sent
    as it is (h11 refused the same; targets are built with ``quote`` and ``urlencode``, so never in practice)."""
    path = target.encode("utf-8")  # a non-ASCII byte is then refused below
    lines = [(b"host", netloc), (b"accept", b"application/x-ndjson")]
    try:
        check_headers(lines)
    except HTTPError:
        raise BadParameter("the registry address cannot be sent in a Host header") from None
    if not path or _BAD_TARGET.search(path):
        raise BadParameter("a watch request target with whitespace, a control byte or non-ASCII")
    return request_head(b"GET", path, header_block(lines))


def _map_direct_error(address: str, exc: BaseException, *, connecting: bool) -> KubeportError:
    """A failure of the direct unary path (registry.host.http1) as the error users see."""
    if isinstance(exc, AnswerTooLarge):
        return ConnectionProblem(f"the registry at {address} answered more than {MAX_ANSWER_BYTES} bytes")
    if isinstance(exc, ClosedEarly):
        return ConnectionProblem(
            f"the registry at {address} closed the connection ({exc}): it may be restarting; if this persists, "
            "check that this identity is valid and issued by that registry"
        )
    mapped = _map_stream_error(address, exc, connecting=connecting)
    if mapped is None:
        return ConnectionProblem(f"the registry at {address} failed: {exc or type(exc).__name__}")
    return mapped


class _NotSent(Exception):
    """Connecting to one registry failed before anything was sent: the next one may be tried."""

    def __init__(self, error: KubeportError) -> None:
        self.error = error


def _map_stream_error(address: str, exc: BaseException, *, connecting: bool) -> KubeportError | None:
    """A trio/TLS/socket failure as the kubeport error httpx's would have become (_map_transport_error);
    None for anything else (cancellation, bugs), which is raised as it is."""
    if isinstance(exc, trio.TooSlowError):
        return Timeout(f"registry at {address} did not answer in time")
    if isinstance(exc, HTTPError):  # its message never quotes the answer's bytes
        return ConnectionProblem(f"the registry at {address} sent a malformed answer ({exc.message})")
    if isinstance(exc, ClosedEarly):
        return ConnectionProblem(f"the registry at {address} closed the connection ({exc}): it may be restarting")
    if not isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError | ssl.SSLError | OSError):
        return None
    tls = _tls_failure(address, exc)
    if tls is not None:
        return tls
    if connecting:
        return ConnectionProblem(f"cannot reach the registry at {address}: {exc or type(exc).__name__}")
    return ConnectionProblem(
        f"the registry at {address} closed the connection ({exc or type(exc).__name__}): it may be restarting"
    )


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


async def _direct_watch_events(
    stream: SocketTLSStream, leftover: bytes, address: str
) -> AsyncGenerator[StreamEvent, None]:
    chunks = ChunkedDecoder()
    decoder = WatchDecoder()
    data = leftover
    try:
        while True:
            if data:
                try:
                    body = chunks.feed(data)
                except ChunkedError as err:
                    raise ConnectionProblem(
                        f"registry at {address} sent a malformed watch stream ({err.message})"
                    ) from None
                if body:
                    for event in _decode(decoder, body, address):
                        yield _raise_error(event)
                if chunks.ended:
                    break
            data = bytes(await stream.receive_some(_READ))
            if not data:
                break
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
        mapped = _map_stream_error(address, exc, connecting=False)
        assert mapped is not None
        raise mapped from None
    for event in _decode(decoder, b"", address):
        yield _raise_error(event)
    raise ConnectionProblem(f"registry at {address} closed the watch")


async def _watch_events(response: httpx.Response, address: str) -> AsyncGenerator[StreamEvent, None]:
    decoder = WatchDecoder()
    try:
        # httpx types it as an iterator; it is an async generator, which is what aclosing needs.
        async with aclosing(cast(AsyncGenerator[bytes, None], response.aiter_bytes())) as chunks:
            async for chunk in chunks:
                for event in _decode(decoder, chunk, address):
                    yield _raise_error(event)
        for event in _decode(decoder, b"", address):
            yield _raise_error(event)
    except httpx.HTTPError as exc:
        raise _map_transport_error(address, exc) from None
    raise ConnectionProblem(f"registry at {address} closed the watch")


def _decode(decoder: WatchDecoder, chunk: bytes, address: str) -> list[WatchEvent]:
    """The events a chunk completes (the caller yields them through :func:`_raise_error`)."""
    try:
        return decoder.feed(chunk) if chunk else decoder.feed(b"")
    except WatchProtocolError as err:
        raise ConnectionProblem(f"registry at {address} sent a malformed watch event ({err.message})") from None


def _raise_error(event: WatchEvent) -> StreamEvent:
    """``event``, or its error class raised for an ERROR event: events before it in the same read were
    already handed out (a watcher that fell behind resumes after the last one it got)."""
    if isinstance(event, Error):
        raise from_status(event.status, 500)
    return event


def _kube_cluster(item: ResourceBody, with_secrets: bool) -> KubeCluster:
    model = codec.resource_from_dict(item, source="registry", verify_kubeconfig=with_secrets)
    if not isinstance(model, KubeCluster):
        raise ConnectionProblem(f"the registry answered a {model.KIND} where a kube_cluster was expected")
    return model


# -- joining (no identity yet) -----------------------------------------------------------------------


async def fetch_unverified_ca(
    address: str, *, timeout: float = DEFAULT_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None
) -> list[bytes]:
    """The CA certificates the registry at ``address`` presents, fetched over TLS that verifies nothing.

    Only safe with a check afterwards (:func:`fetch_ca` checks a pin) or as an explicit trust-on-first-use
    (the agent without ``ca_pin``, which says so in its log). Errors are mapped like every other call.
    ``address`` may name several registries (``A,B``): one that cannot be reached is skipped for the next.
    """
    addresses = split_addresses(address)
    errors: list[KubeportError] = []
    for index, one in enumerate(addresses):
        try:
            return await _fetch_unverified_ca_at(one, timeout=timeout, transport=transport)
        except (ConnectionProblem, Timeout) as err:
            if index + 1 == len(addresses):
                if errors:
                    raise type(err)("; ".join(e.message for e in [*errors, err])) from None
                raise
            errors.append(err)
    raise AssertionError("unreachable: the loop returns or raises")


async def _fetch_unverified_ca_at(
    address: str, *, timeout: float, transport: httpx.AsyncBaseTransport | None
) -> list[bytes]:
    async with httpx.AsyncClient(
        base_url=_base_url(address),
        verify=insecure_fetch_context(),
        timeout=timeout,
        trust_env=False,
        transport=transport,
    ) as http:
        try:
            response = await http.get("/v1/ca")
        except httpx.HTTPError as exc:
            raise _map_transport_error(address, exc) from None
        _raise_for(response)
        try:
            return [str(p).encode() for p in response.json()["ca_pems"]]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ConnectionProblem(f"registry at {address} answered /v1/ca with something unexpected") from None


async def fetch_ca(
    address: str,
    *,
    pins: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[bytes]:
    """First contact: fetch the CA over unverified TLS and accept it only if it matches one of ``pins``.

    The pin (a hash of the CA's public key that the admin copied from ``kpctl status``) is the trust
    anchor, so the unverified channel cannot substitute a CA. Without pins callers must already have the CA.
    """
    if not pins:
        raise BadParameter("fetching the registry CA needs at least one --ca-pin")
    ca_pems = await fetch_unverified_ca(address, timeout=timeout, transport=transport)
    errors: list[str] = []
    for pin in pins:
        for ca in ca_pems:
            try:
                check_pin(ca, pin)
                return ca_pems
            except KubeportError as err:
                errors.append(err.message)
    from registry.core.errors import AccessDenied

    raise AccessDenied(f"registry CA at {address} does not match the pin: {errors[0] if errors else 'no CA'}")


async def join(
    address: str,
    *,
    token: str,
    nodename: str,
    csr_pem: bytes,
    ca_pems: Sequence[bytes],
    host_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> JoinResult:
    """Trade a join token and a CSR for a certificate; the registry is verified against ``ca_pems``."""
    async with RegistryClient(address, ca_pems=ca_pems, timeout=timeout, transport=transport) as client:
        body = {"token": token, "nodename": nodename, "csr_pem": csr_pem.decode(), "host_id": host_id or ""}
        result: JoinResult = await client._request("POST", "/v1/join", body=body)
        return result


async def bot_join(
    address: str,
    *,
    token: str,
    csr_pem: bytes,
    ca_pems: Sequence[bytes],
    ttl_seconds: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Trade a bot's single-use join token and a CSR for its first certificate (registry verified against
    ``ca_pems``)."""
    async with RegistryClient(address, ca_pems=ca_pems, timeout=timeout, transport=transport) as client:
        body: dict[str, Any] = {"token": token, "csr_pem": csr_pem.decode()}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        result: dict[str, Any] = await client._request("POST", "/v1/bots/join", body=body)
        return result

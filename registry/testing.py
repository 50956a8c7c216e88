"""A verified fake for tests: the registry's real API handlers over a MemoryStore, as an httpx transport.

``InProcessRegistry`` runs :class:`~registry.server.api.RegistryAPI` and :class:`~registry.server.service.Registry`
unchanged over a :class:`~registry.store.MemoryStore`; its ``client()`` is a real
:class:`~registry.client.RegistryClient` whose transport calls the handler in process. No socket, no TLS:
the identity the client speaks for is a real certificate of the registry's CA, handed to the API as the
verified peer certificate, so authentication, authorization, audit and the watch stream are the
registry's own. Tests write through ``registry`` (the service) or, for what only a newer or broken registry
would store, straight into ``store``.

What a network would add is injectable: ``fail_next`` answers the next matching request with an error
(an httpx transport error, as a dead socket gives, or a KubeportError as its Status answer) and
``break_watches`` ends the open watch streams (cleanly, as a restarting registry does, or with a transport
error); ``requests`` records every request with its (virtual) time. Streamed answers (the watch) run their
producer in the context's nursery and end when the reader closes them.

Use it as ``async with InProcessRegistry.open() as reg: async with reg.client(identity) as client: ...``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import trio

from registry.client import RegistryClient
from registry.core.errors import KubeportError
from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.server.api import RegistryAPI
from registry.server.authz import Caller
from registry.server.http import Request, Response
from registry.server.service import Registry
from registry.store import MemoryStore

ADDRESS = "registry.test:3025"
ADMIN = Identity(name="admin", kind="admin", roles=("admin",))
CERT_TTL = timedelta(days=1)


def agent_identity(host_id: str = "host-1", nodename: str = "node-1") -> Identity:
    """A joined agent's identity (role ``Kube``), as the registry issues it."""
    return Identity(name=nodename, kind="agent", roles=("Kube",), host_id=host_id)


@functools.cache
def _ca(cluster_name: str) -> CertAuthority:
    # One CA per cluster name and process: generating keys per test would only cost time.
    return CertAuthority.generate(cluster_name, now=datetime.now(tz=UTC))


@dataclass(frozen=True)
class RecordedRequest:
    time: float  # trio.current_time() when the transport got it
    method: str
    path: str
    params: dict[str, str]


@dataclass
class _Fault:
    method: str | None
    path: str
    error: Exception


@dataclass
class _OpenStream:
    cancel: trio.CancelScope
    error: Exception | None = None


class _ResponseStream(httpx.AsyncByteStream):
    """The body of a streamed answer: what the producer sends, until it ends, the reader closes, or a test
    breaks it (then the reader gets ``error``, as from a dead connection)."""

    def __init__(self, owner: InProcessRegistry, receive: trio.MemoryReceiveChannel[bytes], state: _OpenStream):
        self._owner = owner
        self._receive = receive
        self._state = state

    # An iterator object, not an async generator: httpx closes the stream, never the generator, and an
    # unclosed async generator is finalized at garbage collection (trio warns about that).
    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self._state.error is not None:
                raise self._state.error from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._state.cancel.cancel()
        await self._receive.aclose()
        if self._state in self._owner._streams:
            self._owner._streams.remove(self._state)


class InProcessTransport(httpx.AsyncBaseTransport):
    """Hands each request to the owner's ``RegistryAPI`` as if it came over mutual TLS with ``peer_cert``."""

    def __init__(self, owner: InProcessRegistry, peer_cert: bytes | None, client: str = "127.0.0.1:50000") -> None:
        self._owner = owner
        self._peer_cert = peer_cert
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        owner = self._owner
        await trio.lowlevel.checkpoint()
        query = parse_qs(request.url.query.decode("ascii"), keep_blank_values=True)
        owner.requests.append(
            RecordedRequest(trio.current_time(), request.method, request.url.path, {k: v[-1] for k, v in query.items()})
        )
        owner._changed()
        fault = owner._take_fault(request.method, request.url.path)
        if isinstance(fault, KubeportError):
            return self._answer(Response.error(fault), request)
        if fault is not None:
            raise fault
        body = await request.aread()
        target = request.url.raw_path.decode("ascii")
        inner = Request(
            method=request.method,
            target=target,
            path=request.url.path,
            query=query,
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers.raw],
            body=body,
            peer_cert=self._peer_cert,
            client=self._client,
        )
        try:
            response = await owner.api(inner)
        except KubeportError as err:  # what the HTTP adapter does with a handler's error
            response = Response.error(err)
        return self._answer(response, request)

    def _answer(self, response: Response, request: httpx.Request) -> httpx.Response:
        if response.producer is None and response.stream is None:
            return httpx.Response(response.status, headers=response.headers, content=response.body, request=request)
        return httpx.Response(
            response.status, headers=response.headers, stream=self._owner._start_stream(response), request=request
        )


class InProcessRegistry:
    """The real registry API over a MemoryStore, reachable through :class:`InProcessTransport` (module doc)."""

    def __init__(
        self, nursery: trio.Nursery, *, cluster_name: str = "test-cluster", bookmark_interval: float = 10.0
    ) -> None:
        self.store = MemoryStore()
        self.ca = _ca(cluster_name)
        self.registry = Registry(self.store, self.ca, cluster_name=cluster_name)
        self.api = RegistryAPI(self.registry, bookmark_interval=bookmark_interval)
        self.requests: list[RecordedRequest] = []
        self._nursery = nursery
        self._faults: list[_Fault] = []
        self._streams: list[_OpenStream] = []
        self._change = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(cls, **kwargs: Any) -> AsyncIterator[InProcessRegistry]:
        async with trio.open_nursery() as nursery:
            reg = cls(nursery, **kwargs)
            try:
                yield reg
            finally:
                nursery.cancel_scope.cancel()
                # Shielded: in the cancelled scope an unshielded await raises Cancelled, which would replace
                # an error raised in the ``async with`` body and be swallowed by this nursery (a failing test
                # would pass).
                with trio.CancelScope(shield=True):
                    await reg.store.aclose()

    # -- clients -------------------------------------------------------------------------------------

    def transport(self, identity: Identity | None = ADMIN) -> InProcessTransport:
        """A transport presenting a fresh certificate of ``identity`` (None: no client certificate)."""
        if identity is None:
            return InProcessTransport(self, None)
        now = datetime.now(tz=UTC)
        cert = self.ca.issue(public_key_pem(generate_private_key()), identity, ttl=CERT_TTL, now=now)
        return InProcessTransport(self, cert)

    def client(self, identity: Identity | None = ADMIN) -> RegistryClient:
        return RegistryClient(ADDRESS, ca_pems=[self.ca.cert_pem], transport=self.transport(identity))

    def caller(self, identity: Identity = ADMIN) -> Caller:
        """A caller for writing through the service directly (``reg.registry.create(reg.caller(), ...)``)."""
        return Caller(identity=identity)

    # -- faults --------------------------------------------------------------------------------------

    def fail_next(self, path: str, error: Exception, *, times: int = 1, method: str | None = None) -> None:
        """Answer the next ``times`` requests for ``path`` with ``error``: an httpx transport error is raised
        (the client maps it as it maps a dead socket), a KubeportError is answered as its Status."""
        self._faults.extend(_Fault(method, path, error) for _ in range(times))

    def _take_fault(self, method: str, path: str) -> Exception | None:
        for index, fault in enumerate(self._faults):
            if fault.path == path and fault.method in (None, method):
                del self._faults[index]
                return fault.error
        return None

    def break_watches(self, error: Exception | None = None) -> int:
        """End every open streamed answer: cleanly (the registry went away between events), or with
        ``error`` (e.g. ``httpx.ReadError``) raised to its reader. Returns how many were open."""
        streams, self._streams = self._streams, []
        for state in streams:
            state.error = error
            state.cancel.cancel()
        return len(streams)

    @property
    def open_watches(self) -> int:
        return len(self._streams)

    # -- waiting -------------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()

    def requests_to(self, path: str) -> Sequence[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_until(self, predicate: Callable[[], object]) -> None:
        """Wait until ``predicate()`` holds, re-checked after every request and every stream's start and
        end (callers put a deadline around it)."""
        while not predicate():
            await self._change.wait()

    async def wait_requests(self, path: str, count: int) -> Sequence[RecordedRequest]:
        """Wait until at least ``count`` requests for ``path`` came; returns them all."""
        await self.wait_until(lambda: len(self.requests_to(path)) >= count)
        return self.requests_to(path)

    # -- streams -------------------------------------------------------------------------------------

    def _start_stream(self, response: Response) -> _ResponseStream:
        send, receive = trio.open_memory_channel[bytes](0)
        state = _OpenStream(cancel=trio.CancelScope())
        self._streams.append(state)

        async def run() -> None:
            with state.cancel:
                async with send:
                    try:
                        if response.producer is not None:
                            await response.producer(send.send)
                        elif response.stream is not None:
                            async for chunk in response.stream:
                                await send.send(chunk)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # the reader went away: the real adapter stops sending the same way
            if state in self._streams:
                self._streams.remove(state)
            self._changed()

        self._nursery.start_soon(run)
        self._changed()
        return _ResponseStream(self, receive, state)

"""The front door: kubectl's TLS endpoint, and where agents' tunnels come in (issue 9 §2).

One TLS listener (cluster CA, client certificates required) serves two kinds of connection, told apart by
ALPN (access-design.md §7.4, Teleport RFD 39): agents offer only ``kubeport-tunnel/1``; kubectl offers
``h2, http/1.1`` and gets ``http/1.1`` (the server never lists ``h2``: kubectl breaks on a server that picks
it and the bytes here are HTTP/1.1). A client that offers no ALPN at all is treated as HTTP/1.1.

Per kubectl connection (:meth:`FrontDoor.handle`):

1. TLS handshake, then the FIRST request head (:class:`~registry.frontdoor.head.FirstHead`), both within
   ``limits.first_head_timeout`` of accept (slowloris costs a slot for seconds, not forever); the head is
   bounded (``limits.max_head_bytes``).
2. Identity: the certificate must be a ``user`` one (agent, admin and registry certificates are refused with
   a 403 Status); the user's current standing is decided as ``registry.caller_for`` does (a deleted user:
   401), from the lookup's watch-fed users and roles (:mod:`registry.frontdoor.lookup`: no store read).
3. ``split_prefix`` on the raw target (400 for anything but ``/v1/clusters/<b64>/...``), then
   ``kube_headers.inspect`` on the head (smuggling through ``Connection`` is refused here already, cheaply).
4. The cluster must exist and the user's roles must select it (:func:`registry.frontdoor.pick.route`), else
   the same 404 Status as an unknown name, byte for byte.
5. Agents: the visible heartbeats whose host holds a live tunnel, healthy, unknown, then unhealthy, shuffled
   within a group (:func:`registry.frontdoor.pick.order_agents`); an agent that fails to open a stream within
   ``limits.open_stream_timeout`` is skipped for the next; none left: a 503 Status naming the cluster.
6. The buffered bytes (head included, unchanged) go to the stream, then bytes are spliced both ways until
   either side ends or the client certificate expires. kubectl's EOF is passed on as the stream's
   half-close; the agent's end of the stream ends the connection (TLS here cannot half-close).

Errors kubectl sees are HTTP/1.1 responses with a Kubernetes ``Status`` body and ``Connection: close``
(:func:`~registry.frontdoor.head.error_response`). After an error the connection is drained briefly, so
the answer is not destroyed by a TCP reset, and closed.

Agent connections (ALPN ``kubeport-tunnel/1``) must present an ``agent`` certificate with a host id; they are
handed to ``hub.serve_agent``. Anything else on that ALPN is closed at once (its peer speaks HTTP/2, so no
HTTP/1.1 answer is possible).

Connection limits reuse the registry's sans-IO :class:`~registry.server.admission.Admission`: before its
handshake a connection is unauthenticated (own budgets, in total and per source; the longest idle is shed
first); a verified certificate makes it authenticated and never shed.

Audit (``Registry.audit``): ``kube.connection.start`` / ``kube.connection.end`` per routed connection (user,
cluster, agent host, client address; the end adds duration and bytes), written by one background task
from a bounded queue so a slow store never delays kubectl (a full queue drops events, counted in
:meth:`FrontDoor.statistics` and logged). What is queued when the task gets to it, after waiting
``limits.audit_linger`` (50 ms) for more, is written as one batch (``Registry.audit_many``: one store
commit for up to :data:`AUDIT_BATCH` events; a commit's CPU is mostly per commit, not per event). Denials go through
``Registry.audit_failure`` (aggregated per source and reason, like failed joins), as
``kube.connection.denied`` or ``kube.tunnel.denied``. Requests themselves are audited by the agent, which
parses them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import trio

from registry.core import kube_headers
from registry.core.errors import AccessDenied, BadParameter, ConnectionProblem, KubeportError, Unauthenticated
from registry.core.identity import (
    REGISTRY_TTL,
    CertAuthority,
    Identity,
)
from registry.core.kube_access import cluster_not_found
from registry.core.kube_route import split_prefix
from registry.core.netaddr import format_hostport, listen_error, parse_hostport
from registry.core.tunnel_info import TUNNEL_ALPN, StreamInfo
from registry.frontdoor.head import FirstHead, Head, RequestTimeout, error_response
from registry.frontdoor.lookup import ClusterLookup
from registry.frontdoor.pick import order_agents, route
from registry.host.h2tunnel import TunnelStream
from registry.host.socket_tls import SocketTLSStream
from registry.host.tls import peer_certificate_der, server_context, wait_for_input
from registry.server.admission import Admission, AdmissionLimits, source_of
from registry.server.authz import Caller, effective_roles, user_gone
from registry.server.http import Slot, accept_retrying
from registry.server.serve import issue_server_certificate
from registry.server.service import Registry

log = logging.getLogger(__name__)

HTTP11_ALPN = "http/1.1"
FRONTDOOR_ALPN = (TUNNEL_ALPN, HTTP11_ALPN)  # server preference: h2 is never listed, so never selected
DEFAULT_KUBE_PORT = 3026
DEFAULT_KUBE_LISTEN = f"127.0.0.1:{DEFAULT_KUBE_PORT}"
CHUNK = 64 * 1024
TO_CLIENT_CHUNK = 256 * 1024  # what the agent sent that waits in the tunnel goes to kubectl in one write, up to this

# What a trio stream raises when the peer vanishes or TLS breaks mid-connection.
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)


class TunnelHubLike(Protocol):
    """What the front door needs from the tunnel hub (``registry.frontdoor.tunnels.TunnelHub``)."""

    def live_hosts(self) -> frozenset[str]: ...

    async def open_stream(self, host_id: str, info: StreamInfo) -> trio.abc.HalfCloseableStream: ...

    async def serve_agent(self, stream: trio.abc.Stream, host_id: str) -> None: ...


@dataclass(frozen=True)
class FrontDoorLimits:
    """Deadlines and budgets of one front door listener."""

    first_head_timeout: float = 5.0  # accept -> TLS handshake -> end of the first request head
    max_head_bytes: int = 64 * 1024
    open_stream_timeout: float = 5.0  # per agent tried
    drain_timeout: float = 0.5  # reading what a refused client still sends, so the answer is not reset
    max_drain_bytes: int = 4 * 1024 * 1024
    max_connections: int = 4096
    max_unauthenticated: int | None = 1024
    max_unauthenticated_per_source: int | None = 64
    heartbeat_max_age: float = 1.0
    audit_queue: int = 10_000
    # Seconds the audit task waits after an event before it writes, so the events of the connections that
    # arrive meanwhile share one store commit (a commit's CPU hardly depends on its size); 0 writes at once.
    audit_linger: float = 0.05

    def __post_init__(self) -> None:
        for name in ("first_head_timeout", "open_stream_timeout", "drain_timeout", "heartbeat_max_age"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise BadParameter(f"FrontDoorLimits.{name} must be a positive number of seconds (got {value!r})")
        linger = self.audit_linger
        if isinstance(linger, bool) or not isinstance(linger, int | float) or not 0 <= linger <= 10:
            raise BadParameter(f"FrontDoorLimits.audit_linger must be between 0 and 10 seconds (got {linger!r})")
        for name in ("max_head_bytes", "max_drain_bytes", "audit_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadParameter(f"FrontDoorLimits.{name} must be a positive integer (got {value!r})")
        self.admission_limits()

    def admission_limits(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_connections=self.max_connections,
            max_unauthenticated=self.max_unauthenticated,
            max_unauthenticated_per_source=self.max_unauthenticated_per_source,
        )


@dataclass(frozen=True)
class FrontDoorInfo:
    host: str
    port: int
    frontdoor: FrontDoor = field(compare=False, repr=False)

    @property
    def address(self) -> str:
        return format_hostport(self.host, self.port)


def frontdoor_server_context(
    ca: CertAuthority,
    *,
    listen_host: str = "127.0.0.1",
    public_addrs: Sequence[str] = (),
    now: datetime,
    ttl: timedelta = REGISTRY_TTL,
) -> ssl.SSLContext:
    """The front door's server TLS context: a fresh key and a certificate from ``ca`` naming the listen
    host and the public addresses' hosts (besides ``localhost``, 127.0.0.1 and ::1, and the registry's fixed
    name, which agents verify), client certificates REQUIRED and verified against ``ca``, ALPN
    ``kubeport-tunnel/1`` then ``http/1.1`` (never ``h2``).

    The certificate is of kind ``registry`` (the front door runs in the registry process and only the
    registry kind may carry :data:`REGISTRY_SERVER_NAME`), so agents verify it as they verify the registry.
    It issues no session tickets (nothing resumes a session with it).
    """
    hosts = [listen_host] + [
        parse_hostport(a, default_port=DEFAULT_KUBE_PORT, what="--kube-public-addr")[0] for a in public_addrs
    ]
    cert, key = issue_server_certificate(ca, hosts, now=now, ttl=ttl)
    context = server_context(cert, key, [ca.cert_pem], client_certs="required")
    context.set_alpn_protocols(list(FRONTDOOR_ALPN))
    # No TLS 1.3 session tickets: neither kubectl (Go keeps no session cache by default) nor agents resume,
    # and issuing OpenSSL's default two tickets was about a third of the server's CPU per handshake.
    context.num_tickets = 0
    return context


class Denial(Exception):
    """A refusal to tell kubectl: ``error`` is what it sees, ``reason`` a short fixed audit category."""

    def __init__(self, error: KubeportError, reason: str, **fields: Any) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason
        self.fields = fields


@dataclass
class _Stats:
    accepted: int = 0
    refused: int = 0
    handshake_failed: int = 0
    kubectl_connections: int = 0
    tunnel_connections: int = 0
    routed: int = 0
    active: int = 0
    failovers: int = 0
    denied: dict[int, int] = field(default_factory=dict)
    bytes_to_agent: int = 0
    bytes_to_client: int = 0


@dataclass(frozen=True)
class _Audit:
    """One ``Registry.audit`` event waiting in the queue (consecutive ones are written as one batch)."""

    event: str
    caller: Caller | None
    fields: dict[str, Any]


_AuditJob = _Audit | Callable[[], Awaitable[None]]
AUDIT_BATCH = 500  # events per store write at most


class _AuditQueue:
    """Audit writes off the connection's path: a bounded queue drained by one task (module docstring). What
    is queued when the task gets to it goes out together: runs of :class:`_Audit` events as one
    ``write_many`` (``Registry.audit_many``: one store commit), other jobs (aggregated failures) one by one."""

    def __init__(
        self,
        capacity: int,
        write_many: Callable[[list[tuple[str, Caller | None, dict[str, Any]]]], Awaitable[None]],
        *,
        linger: float = 0.0,
    ) -> None:
        self._send, self._receive = trio.open_memory_channel[_AuditJob](capacity)
        self._write_many = write_many
        self.linger = linger
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.batches = 0

    def submit(self, job: _AuditJob) -> None:
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("front door audit queue full: %d audit events dropped so far", self.dropped)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        held: list[_AuditJob] = []  # taken from the queue, not written yet (written on shutdown too)
        try:
            async for job in self._receive:
                held.append(job)
                if self.linger > 0 and self._receive.statistics().current_buffer_used < AUDIT_BATCH - 1:
                    # A store commit costs about the same CPU for one event as for fifty: at a steady rate
                    # of new connections, waiting a moment turns many one-event commits into one.
                    await trio.sleep(self.linger)
                held.extend(self._ready(AUDIT_BATCH - len(held)))
                jobs, held = held, []
                await self._write(jobs)
        finally:
            # On shutdown, write what is held and queued (bounded), so a graceful stop loses nothing.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                jobs = held + self._ready(AUDIT_BATCH - len(held))
                while jobs:
                    await self._write(jobs)
                    jobs = self._ready(AUDIT_BATCH)

    def _ready(self, limit: int) -> list[_AuditJob]:
        jobs: list[_AuditJob] = []
        while len(jobs) < limit:
            try:
                jobs.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        return jobs

    async def _write(self, jobs: list[_AuditJob]) -> None:
        run: list[tuple[str, Caller | None, dict[str, Any]]] = []
        for job in [*jobs, None]:
            if isinstance(job, _Audit):
                run.append((job.event, job.caller, job.fields))
                continue
            if run:
                await self._attempt(functools.partial(self._write_many, run), len(run))
                self.batches += 1
                run = []
            if job is not None:
                await self._attempt(job, 1)

    async def _attempt(self, write: Callable[[], Awaitable[None]], count: int) -> None:
        try:
            await write()
            self.written += count
        except KubeportError as exc:
            self.failed += count
            log.warning("writing %d front door audit event(s) failed: %s", count, exc)


class FrontDoor:
    """Serves front door connections for one registry and one tunnel hub (module docstring)."""

    def __init__(
        self,
        registry: Registry,
        hub: TunnelHubLike,
        *,
        limits: FrontDoorLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.hub = hub
        self.limits = limits or FrontDoorLimits()
        self.rng = rng or random.SystemRandom()
        self.lookup = ClusterLookup(registry.store, now=registry.now, max_age=self.limits.heartbeat_max_age)
        self.admission = Admission(self.limits.admission_limits())
        self.audit = _AuditQueue(self.limits.audit_queue, registry.audit_many, linger=self.limits.audit_linger)
        self._stats = _Stats()

    def statistics(self) -> dict[str, Any]:
        stats = self._stats
        return {
            "accepted": stats.accepted,
            "refused": stats.refused,
            "handshake_failed": stats.handshake_failed,
            "kubectl_connections": stats.kubectl_connections,
            "tunnel_connections": stats.tunnel_connections,
            "routed": stats.routed,
            "active": stats.active,
            "failovers": stats.failovers,
            "denied": dict(stats.denied),
            "bytes_to_agent": stats.bytes_to_agent,
            "bytes_to_client": stats.bytes_to_client,
            "audit_written": self.audit.written,
            "audit_dropped": self.audit.dropped,
            "audit_failed": self.audit.failed,
            "audit_batches": self.audit.batches,
            "heartbeat_listings": self.lookup.listings,
            "heartbeat_index_relists": self.lookup.relists,
            "lookup_store_reads": self.lookup.object_reads,
            "admission": self.admission.statistics(),
        }

    # -- one connection ------------------------------------------------------------------------------

    async def handle(self, stream: SocketTLSStream, client: str, slot: Slot | None = None) -> None:
        """Serve one accepted connection until it ends; closes ``stream``; never raises (but Cancelled)."""
        slot = slot or Slot()
        deadline = trio.current_time() + self.limits.first_head_timeout
        try:
            try:
                with trio.fail_at(deadline):
                    await stream.do_handshake()
            except (trio.TooSlowError, *_STREAM_ERRORS) as exc:
                # No certificate, another CA's, an expired one, or no TLS at all: the handshake says no. OpenSSL
                # already wrote its alert to the socket (kubectl prints it at once instead of retrying on EOF).
                self._stats.handshake_failed += 1
                log.debug("front door TLS handshake with %s failed: %s", client, exc)
                return
            der = peer_certificate_der(stream)
            if der is None:  # unreachable with client certificates required; never serve one without
                return
            slot.authenticated()
            identity: Identity | None = None
            problem: KubeportError | None = None
            try:
                identity = self.registry.ca.verify(der, now=self.registry.now())
            except Unauthenticated as err:
                problem = err
            if stream.selected_alpn_protocol() == TUNNEL_ALPN:
                await self._serve_tunnel(stream, identity, problem, client)
            else:
                await self._serve_kubectl(stream, identity, problem, client, deadline)
        except Exception:
            # One broken connection must never take the listener and every other connection down.
            log.exception("front door connection from %s failed", client)
        finally:
            slot.close()
            with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
                await stream.aclose()

    async def _serve_tunnel(
        self, stream: SocketTLSStream, identity: Identity | None, problem: KubeportError | None, client: str
    ) -> None:
        if identity is None or identity.kind != "agent" or not identity.host_id:
            what = "an invalid certificate" if identity is None else f"a {identity.kind} certificate"
            log.info("refused a tunnel from %s: %s is not an agent's", client, what)
            self._count_denial(403)
            self._audit_failure(
                "kube.tunnel.denied",
                client,
                "not an agent certificate",
                identity,
                error=problem.message if problem is not None else None,
            )
            return
        self._stats.tunnel_connections += 1
        log.info("agent %s (host %s) opened a tunnel from %s", identity.name, identity.host_id, client)
        await self.hub.serve_agent(stream, identity.host_id)

    async def _serve_kubectl(
        self,
        stream: SocketTLSStream,
        identity: Identity | None,
        problem: KubeportError | None,
        client: str,
        deadline: float,
    ) -> None:
        self._stats.kubectl_connections += 1
        reader = FirstHead(self.limits.max_head_bytes)
        try:
            head = await self._read_first_head(stream, reader, deadline)
        except Denial as denial:
            await self._refuse(stream, denial, client, identity)
            return
        if head is None:
            return  # the client left (or idled out) before asking anything: nothing to answer
        try:
            caller, info, hosts = await self._decide(head, identity, problem, client)
            agent_host, tunnel = await self._open(info, hosts)
        except Denial as denial:
            await self._refuse(stream, denial, client, identity)
            return
        # The parsed head and its parser (an h11 connection) would otherwise live as long as the connection
        # (hours for a watch); only the bytes still to send are needed.
        forward = self._forward(stream, tunnel, head.raw, caller=caller, info=info, agent_host=agent_host)
        del head, reader, hosts
        await forward

    async def _read_first_head(self, stream: SocketTLSStream, reader: FirstHead, deadline: float) -> Head | None:
        try:
            with trio.fail_at(deadline):
                while True:
                    try:
                        data = await stream.receive_some(CHUNK)
                    except _STREAM_ERRORS:
                        return None
                    if not data and not reader.received_any:
                        return None
                    try:
                        head = reader.feed(data)
                    except KubeportError as err:
                        raise Denial(err, "malformed request") from None
                    if head is not None:
                        return head
        except trio.TooSlowError:
            if not reader.received_any:
                return None
            raise Denial(
                RequestTimeout(f"the request head did not arrive within {self.limits.first_head_timeout:g}s"),
                "request head too slow",
            ) from None

    async def _decide(
        self, head: Head, identity: Identity | None, problem: KubeportError | None, client: str
    ) -> tuple[Caller, StreamInfo, list[str]]:
        """Who is asking, for which cluster, through which agents (in order); a Denial otherwise."""
        if identity is None:
            assert problem is not None
            raise Denial(problem, "invalid certificate")
        if identity.kind != "user":
            raise Denial(
                AccessDenied(
                    f"access denied: {identity.kind} certificates cannot be used with kubectl; use a user "
                    "certificate (kpctl auth sign --user=NAME --format=kubernetes)"
                ),
                "not a user certificate",
            )
        # The user's standing now, decided as ``Registry.caller_for`` does (the certificate's roles the user
        # still holds; a deleted role grants nothing), from the lookup's watch-fed copies (lookup.py).
        user = await self.lookup.user(identity.name)
        if user is None:
            raise Denial(user_gone(identity.name), "unknown user")
        names = effective_roles(identity, user)
        effective = identity if names == identity.roles else replace(identity, roles=names)  # no re-validation
        caller = Caller(identity=effective, roles=await self.lookup.roles(names))
        try:
            cluster_name, _rest = split_prefix(head.target)
        except BadParameter as err:
            raise Denial(err, "malformed path") from None
        try:
            kube_headers.inspect(head.headers)
        except (BadParameter, AccessDenied) as err:
            raise Denial(err, "refused headers", cluster=cluster_name) from None
        cluster = await self.lookup.cluster(cluster_name)
        servers = await self.lookup.heartbeats(cluster_name)
        decided = route(cluster_name, user, caller.roles, cluster, servers)
        if not decided.visible:
            raise Denial(cluster_not_found(cluster_name), "unknown or hidden cluster", cluster=cluster_name)
        hosts = order_agents(decided.servers, self.hub.live_hosts(), self.rng)
        assert identity.expires is not None  # always set on an identity read from a verified certificate
        try:
            info = StreamInfo(
                cluster=cluster_name,
                user=identity.name,
                roles=caller.identity.roles,
                client_addr=client,
                cert_expires=identity.expires,
            )
        except BadParameter as err:
            raise Denial(KubeportError(f"cannot route this connection: {err.message}"), "internal") from None
        return caller, info, hosts

    async def _open(self, info: StreamInfo, hosts: list[str]) -> tuple[str, trio.abc.HalfCloseableStream]:
        """A stream to the first agent in ``hosts`` that opens one in time (the next on failure)."""
        for host in hosts:
            try:
                with trio.fail_after(self.limits.open_stream_timeout):
                    return host, await self.hub.open_stream(host, info)
            except (KubeportError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._stats.failovers += 1
                log.info("agent %s could not open a stream for cluster %r: %s", host, info.cluster, exc)
        tried = f" ({len(hosts)} tried)" if hosts else ""
        raise Denial(
            ConnectionProblem(
                f'Kubernetes cluster "{info.cluster}" is not reachable: no agent serving it has a live tunnel to '
                f"this front door{tried}; try again in a moment"
            ),
            "no live agent",
            cluster=info.cluster,
            agents_tried=len(hosts),
        )

    async def _forward(
        self,
        stream: SocketTLSStream,
        tunnel: trio.abc.HalfCloseableStream,
        first: bytes,
        *,
        caller: Caller,
        info: StreamInfo,
        agent_host: str,
    ) -> None:
        stats = self._stats
        stats.routed += 1
        stats.active += 1
        started = trio.current_time()
        fields = {"cluster": info.cluster, "agent": agent_host, "client": info.client_addr, "roles": list(info.roles)}
        self.audit.submit(_Audit("kube.connection.start", caller, dict(fields)))
        counts = [0, 0]
        # The connection may live no longer than the certificate that opened it (Teleport does the same).
        remaining = (info.cert_expires - self.registry.now()).total_seconds()
        try:
            # The splice's own nursery scope carries the deadline: no cancel scope more per connection.
            job = splice(stream, tunnel, first, counts, deadline=trio.current_time() + max(remaining, 0.0))
            del first  # the head's bytes: sent once, not kept in this frame for the connection's life
            await job
        finally:
            stats.active -= 1
            stats.bytes_to_agent += counts[0]
            stats.bytes_to_client += counts[1]
            with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
                await tunnel.aclose()
            self.audit.submit(
                _Audit(
                    "kube.connection.end",
                    caller,
                    {
                        **fields,
                        "duration_ms": round((trio.current_time() - started) * 1000),
                        "bytes_sent": counts[0],
                        "bytes_received": counts[1],
                    },
                )
            )

    # -- refusals ------------------------------------------------------------------------------------

    async def _refuse(self, stream: SocketTLSStream, denial: Denial, client: str, identity: Identity | None) -> None:
        err = denial.error
        self._count_denial(err.code)
        self._audit_failure("kube.connection.denied", client, denial.reason, identity, code=err.code, **denial.fields)
        with contextlib.suppress(*_STREAM_ERRORS), trio.move_on_after(1):
            await stream.send_all(error_response(err))
        # Closing with unread input makes the kernel send RST, which can destroy the answer before the client
        # reads it: swallow a bounded amount of what the client is still sending first.
        drained = 0
        with trio.move_on_after(self.limits.drain_timeout), contextlib.suppress(*_STREAM_ERRORS):
            while drained < self.limits.max_drain_bytes:
                data = await stream.receive_some(CHUNK)
                if not data:
                    break
                drained += len(data)

    def _count_denial(self, code: int) -> None:
        self._stats.denied[code] = self._stats.denied.get(code, 0) + 1

    def _audit_failure(self, event: str, client: str, reason: str, identity: Identity | None, **fields: Any) -> None:
        if identity is not None:
            fields.setdefault("user", identity.name)
            fields.setdefault("identity_kind", identity.kind)
            if identity.host_id:
                fields.setdefault("host_id", identity.host_id)
        self.audit.submit(functools.partial(self.registry.audit_failure, event, client=client, reason=reason, **fields))


async def splice(
    client: trio.abc.Stream,
    agent: trio.abc.HalfCloseableStream,
    first: bytes,
    counts: list[int] | None = None,
    *,
    deadline: float = math.inf,
) -> None:
    """Send ``first`` to ``agent``, then copy bytes both ways until the connection is over.

    kubectl's EOF becomes ``agent.send_eof()`` (the agent may still answer); the agent's EOF, or an error on
    either side, ends both directions. ``counts`` (if given) gets [bytes to agent, bytes to client]. At
    ``deadline`` (trio time) the splice ends as if either side had (``move_on_after``: no exception).
    """
    counts = counts if counts is not None else [0, 0]
    with trio.move_on_at(deadline) as first_scope:  # left at once: only the first send runs under it
        try:
            await agent.send_all(first)
        except _STREAM_ERRORS:
            return
    if first_scope.cancelled_caught:
        return
    counts[0] += len(first)
    del first  # sent: not kept in this frame for the connection's life

    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = deadline  # an idle watch holds this one scope, not a second one
        nursery.start_soon(_client_to_agent, client, agent, counts, nursery.cancel_scope)
        # The agent's side is copied by this task itself: one task fewer per connection (an idle watch's
        # memory is mostly its tasks and their frames).
        try:
            while True:
                data = await agent.receive_some(TO_CLIENT_CHUNK)  # this loop's schedule point: parks or yields
                if not data:
                    break
                await _send_unyielding(client, data)
                counts[1] += len(data)
        except _STREAM_ERRORS:
            pass
        nursery.cancel_scope.cancel()  # the agent is done (or gone): the whole connection is


async def _send_unyielding(stream: trio.abc.SendStream, data: bytes | bytearray) -> None:
    """``stream.send_all(data)`` without its final schedule point where the stream offers that (the TLS
    socket, a tunnel stream): each splice loop's next call is a schedule point anyway, so the relay saves
    a task switch per request and direction. Cancellation is still checked first."""
    if isinstance(stream, SocketTLSStream | TunnelStream):
        await stream.send_all_unyielding(data)
    else:
        await stream.send_all(data)


async def _client_to_agent(
    client: trio.abc.Stream, agent: trio.abc.HalfCloseableStream, counts: list[int], scope: trio.CancelScope
) -> None:
    """kubectl's side of :func:`splice` (a module function, not a closure: no function object and cells
    per connection); an error cancels ``scope`` (the whole splice)."""
    try:
        while True:
            # An idle watch's kubectl sends nothing for hours: cheap wait. When it parked, that was this
            # loop's schedule point; otherwise receive_some is.
            data: bytes | bytearray
            if await wait_for_input(client) and isinstance(client, SocketTLSStream):
                data = await client.receive_some_unyielding(CHUNK)
            else:
                data = await client.receive_some(CHUNK)
            if not data:
                await agent.send_eof()
                return  # half-closed: keep relaying the agent's answer
            await _send_unyielding(agent, data)
            counts[0] += len(data)
    except _STREAM_ERRORS:
        scope.cancel()


async def serve_frontdoor(
    registry: Registry,
    hub: TunnelHubLike,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_KUBE_PORT,
    ssl_context: ssl.SSLContext,
    limits: FrontDoorLimits | None = None,
    rng: random.Random | None = None,
    listeners: Sequence[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[FrontDoorInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (0 = any free port) and serve the front door until cancelled.

    ``ssl_context`` comes from :func:`frontdoor_server_context`; ``task_status.started`` gets the bound
    address and the :class:`FrontDoor` (its ``statistics()``). ``listeners`` serves on listeners the caller
    opened instead (``host`` and ``port`` are then unused); they are closed on return. Accept errors follow
    :func:`registry.server.http.accept_retrying`: resource shortages are retried, anything else ends the
    front door with that error.
    """
    frontdoor = FrontDoor(registry, hub, limits=limits, rng=rng)
    if listeners is None:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except (OSError, UnicodeError) as exc:
            raise ConnectionProblem(listen_error(host, port, exc)) from None
    else:
        listeners = list(listeners)
    bound = listeners[0].socket.getsockname()
    info = FrontDoorInfo(host=bound[0], port=bound[1], frontdoor=frontdoor)
    admission = frontdoor.admission
    scopes: dict[int, trio.CancelScope] = {}

    async def accept_loop(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            # Out of descriptors or memory: retried; any other accept error ends the front door (as the API).
            sock = await accept_retrying(listener, f"the front door {info.address}")
            try:
                peer = sock.socket.getpeername()
            except OSError:
                await sock.aclose()
                continue
            peer_host = peer[0] if isinstance(peer, tuple) else str(peer)
            client = format_hostport(peer_host, peer[1]) if isinstance(peer, tuple) else str(peer)
            decision = admission.admit(source_of(peer_host))
            for victim in decision.shed:
                scope = scopes.pop(victim, None)
                if scope is not None:
                    scope.cancel()
            if decision.conn_id is None:
                frontdoor._stats.refused += 1
                log.debug("front door refused a connection from %s: %s", client, decision.reason)
                with trio.CancelScope(shield=True), contextlib.suppress(*_STREAM_ERRORS):
                    await sock.aclose()
                continue
            frontdoor._stats.accepted += 1
            # OpenSSL on the socket itself: about half the CPU of trio's SSLStream (registry/host/socket_tls.py)
            try:
                stream = SocketTLSStream.wrap(sock, ssl_context, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("front door could not set up TLS for %s: %s", client, exc)
                admission.on_close(decision.conn_id)
                continue
            scope = trio.CancelScope()
            scopes[decision.conn_id] = scope
            nursery.start_soon(serve_one, stream, client, decision.conn_id, scope)

    async def serve_one(stream: SocketTLSStream, client: str, conn_id: int, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await frontdoor.handle(stream, client, Slot(admission, conn_id))
        finally:
            scopes.pop(conn_id, None)
            admission.on_close(conn_id)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(frontdoor.audit.run)
            await nursery.start(frontdoor.lookup.feed)
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, nursery)
            log.info("front door listening on %s", info.address)
            task_status.started(info)
    finally:
        with trio.CancelScope(shield=True):
            for listener in listeners:
                await listener.aclose()

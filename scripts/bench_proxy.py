"""Benchmark (issue 9 §8): kubectl's traffic direct to an API server vs through kubeport, in one run.

    python scripts/bench_proxy.py [--quick] [--requests N] [--new-conns N] [--bulk-mib N]
                                  [--watches N | --many-watches] [--events N] [--bursts N] [--json]

Everything is a real process on loopback, TLS on every hop:

* the upstream: this script started again as a minimal API server (``--serve-upstream``: the project's h11
  server, ``registry.server.http``, with its own CA; like a real API server it also offers ``h2`` by ALPN,
  served by ``tests/fakes/h2_server.py``, so the agent multiplexes the watches on shared HTTP/2
  connections; ``--upstream-http1`` offers HTTP/1.1 only, as before). ``GET .../configmaps/small`` answers ~200 bytes at
  once, ``.../configmaps/big?mib=N`` streams N MiB (chunked), ``...?watch=true`` is a chunked watch that
  stays idle until ``POST /bench/event`` sends one event line to the watches it names (``watch=ID``, the
  ID a watch gave as ``labelSelector=bench-watch=ID``) or to every open watch, each line stamped with the
  upstream's monotonic clock just before it is written; ``GET /bench/stats`` counts open watches and TLS
  handshakes; ``/version`` and SelfSubjectAccessReviews answer so the agent's health check passes;
* a registry with its front door (``kubeport registry start --kube-listen 127.0.0.1:0``) and one agent
  (``kubeport agent start``) that serves the upstream as a ``kube_cluster``; the agent holds the h2 tunnel;
* the client is this process: a minimal h11 client over ``trio.SSLStream``. Direct, it dials the upstream
  with the upstream's CA; through kubeport, it uses a kubeconfig signed for a user (``kpctl create -f`` a
  role, ``kpctl users add``, ``kpctl auth sign --format=kubernetes``, as the README walkthrough does).

Rows, each measured direct and through kubeport against the same upstream: keep-alive GETs on 1 connection
(p50/p99 and the added p50), keep-alive GETs on 10 connections (throughput), a new TLS connection per GET
at 10 concurrent clients (kubectl's pattern), one big response (MiB/s), and ``--watches`` idle watches
through one front door and one agent (``--many-watches``: 1,000, the issue's count): memory per watch (RSS
growth of the registry and agent processes over the open idle watches, divided by their number) and the
delay of an event: ``--events`` events sent one at a time to one proxied and one direct watch while every
other watch stays idle (delay = the proxied latency minus the direct one; a latency is the arrival time
minus the upstream's stamp), then ``--bursts`` events sent to every watch at once. The CPU table divides
each process's CPU time (utime + stime from ``/proc``) over a row by its requests (by MiB for the big
response), and counts the connections the upstream accepted during the row (direct: the client's; through
kubeport: the agent's, so a pool that does not keep its connections shows as handshakes).

Caveats printed with the table: the client, the upstream, the registry and the agent share this machine's
cores, so through kubeport four processes compete where direct two do; the client wakes its watches one
after another, so the burst delay includes the client's own per-watch cost (measured on direct too).

Invariants: every process is ended before the script exits; loops are bounded by counts and deadlines;
work happens in a fresh temporary directory (``--work-dir`` picks its parent), removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import benchlib  # puts the repository root on sys.path
import h11
import trio
import yaml
from benchlib import PYTHON_M, Registry, banner, percentile, positive, registry, spawn, stop

from registry.core.identity import CertAuthority, Identity, generate_private_key, public_key_pem
from registry.host.tls import client_context, server_context
from registry.server.http import HTTPLimits, Request, Response, serve_http
from tests.fakes.h2_server import ConnectionCounts, serve_http_alpn

SCRIPT = Path(__file__).resolve()
MiB = 1024 * 1024
SMALL_PATH = "/api/v1/namespaces/default/configmaps/small"
BIG_PATH = "/api/v1/namespaces/default/configmaps/big"
WATCH_PATH = "/api/v1/namespaces/default/configmaps?watch=true"
UPSTREAM_TOKEN = "bench-upstream-token-not-a-secret"  # noqa: S105  (a throw-away fake on loopback)
CLUSTER = "bench"
USER = "bench-user"
READY_TIMEOUT = 90.0  # agent joined, cluster served, tunnel up
IO_TIMEOUT = 60.0

TARGETS = {
    "added_p50_ms": 1.0,
    "ratio_10": 0.3,
    "ratio_new": 0.3,
    "bulk_mibs": 50.0,
    "watch_kib": 50.0,
    "watch_delay_ms": 50.0,
}

ROLE = """\
kind: role
metadata:
  name: bench-access
version: v7
spec:
  allow:
    kubernetes_labels:
      '*': '*'
    kubernetes_resources:
      - kind: '*'
        namespace: '*'
        name: '*'
        verbs: ['*']
    kubernetes_groups:
    - viewers
  deny: {}
"""

FULL: dict[str, Any] = {"requests": 3000, "new_conns": 600, "bulk_mib": 64, "watches": 200, "events": 200, "bursts": 10}
QUICK: dict[str, Any] = {"requests": 300, "new_conns": 60, "bulk_mib": 16, "watches": 20, "events": 20, "bursts": 3}


@dataclass(frozen=True)
class Config:
    requests: int
    new_conns: int
    bulk_mib: int
    watches: int
    events: int
    bursts: int
    as_json: bool
    work_dir: Path | None
    keep: bool
    upstream_http1: bool = False


def progress(message: str) -> None:
    print(f"bench_proxy: {message}", file=sys.stderr, flush=True)


# --- the upstream ----------------------------------------------------------------------------------------


class Upstream:
    """The minimal API server (module docstring); one instance per ``--serve-upstream`` process."""

    def __init__(self) -> None:
        self.watches: dict[int, tuple[str, trio.MemorySendChannel[str]]] = {}  # per open watch: its id
        self.tls: ssl.SSLContext | None = None  # its session statistics count the handshakes
        self.small = json.dumps(
            {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"name": "small", "namespace": "default", "resourceVersion": "1"},
                "data": {"key": "v" * 64},
            }
        ).encode()

    async def handle(self, request: Request) -> Response:
        json_type = [("content-type", "application/json")]
        if request.path == "/version":
            return Response(200, json_type, json.dumps({"major": "1", "minor": "30", "gitVersion": "v1.30.0"}).encode())
        if request.path.endswith("/selfsubjectaccessreviews") and request.method == "POST":
            body = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1"}
            return Response(201, json_type, json.dumps({**body, "status": {"allowed": True}}).encode())
        if request.path == SMALL_PATH:
            return Response(200, json_type, self.small)
        if request.path == BIG_PATH:
            mib = int((request.query.get("mib") or ["64"])[0])
            return Response(200, [("content-type", "application/octet-stream")], stream=_big(mib))
        if request.path == "/api/v1/namespaces/default/configmaps" and request.query.get("watch") == ["true"]:
            selector = (request.query.get("labelSelector") or [""])[0]
            return Response(200, json_type, stream=self._watch(selector.removeprefix("bench-watch=")))
        if request.path == "/bench/stats":
            accepted = self.tls.session_stats()["accept_good"] if self.tls is not None else 0
            stats = {"watches": len(self.watches), "connections": accepted}
            return Response(200, json_type, json.dumps(stats).encode())
        if request.path == "/bench/event" and request.method == "POST":
            seq = (request.query.get("seq") or [""])[0]
            wanted = set(request.query.get("watch") or ())
            for watch_id, channel in list(self.watches.values()):
                if wanted and watch_id not in wanted:
                    continue
                with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    channel.send_nowait(seq)
            return Response(200, json_type, b"{}")
        return Response(404, json_type, b'{"kind":"Status","status":"Failure","code":404}')

    async def _watch(self, watch_id: str) -> AsyncIterator[bytes]:
        send, receive = trio.open_memory_channel[str](16)
        self.watches[id(send)] = (watch_id, send)
        try:
            async for seq in receive:
                # Stamped just before the line goes to this watch's connection: the upstream writing to many
                # watches one after another is not counted as delay.
                event = {"type": "MODIFIED", "object": {"kind": "ConfigMap", "seq": seq, "sent": time.monotonic()}}
                yield json.dumps(event).encode() + b"\n"
        finally:
            del self.watches[id(send)]


async def _big(mib: int) -> AsyncIterator[bytes]:
    block = b"x" * MiB
    for _ in range(mib):
        yield block


async def serve_upstream(directory: Path, http2: bool = True) -> None:
    now = datetime.now(UTC)
    ca = CertAuthority.generate("bench-upstream", now=now)
    key = generate_private_key()
    cert = ca.issue(
        public_key_pem(key),
        Identity(name="bench-apiserver", kind="agent"),
        ttl=timedelta(hours=6),
        now=now,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    context = server_context(cert, key, [ca.cert_pem], client_certs="none")
    context.set_alpn_protocols(["http/1.1"])
    limits = HTTPLimits(max_connections=16_384, idle_timeout=3600.0)
    upstream = Upstream()
    upstream.tls = context
    # A real API server offers h2 by ALPN (the agent then multiplexes watches on one connection);
    # --upstream-http1 serves HTTP/1.1 only, as this upstream did before.
    serve = functools.partial(serve_http_alpn, counts=ConnectionCounts()) if http2 else serve_http
    async with trio.open_nursery() as nursery:
        info = await nursery.start(
            functools.partial(serve, upstream.handle, host="127.0.0.1", port=0, ssl_context=context, limits=limits)
        )
        server = f"https://127.0.0.1:{info.port}"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "upstream",
                    "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca.cert_pem).decode()},
                }
            ],
            "users": [{"name": "admin", "user": {"token": UPSTREAM_TOKEN}}],
            "contexts": [{"name": "upstream", "context": {"cluster": "upstream", "user": "admin"}}],
            "current-context": "upstream",
        }
        path = directory / "upstream.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig))
        path.chmod(0o600)
        print(f"serving at {server}", flush=True)


# --- the client ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a client connects: address, TLS context, the path prefix, the headers every request carries."""

    name: str
    host: str
    port: int
    context: ssl.SSLContext
    prefix: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_kubeconfig(cls, name: str, path: Path) -> Target:
        doc = yaml.safe_load(path.read_text())
        current = doc["current-context"]
        ctx = next(c["context"] for c in doc["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in doc["users"] if u["name"] == ctx["user"])
        cert = base64.b64decode(user["client-certificate-data"]) if "client-certificate-data" in user else None
        key = base64.b64decode(user["client-key-data"]) if "client-key-data" in user else None
        context = client_context([base64.b64decode(cluster["certificate-authority-data"])], cert, key)
        context.set_alpn_protocols(["http/1.1"])
        url = urlsplit(cluster["server"])
        headers = (("authorization", f"Bearer {user['token']}"),) if "token" in user else ()
        return cls(name, url.hostname or "127.0.0.1", url.port or 443, context, url.path.rstrip("/"), headers)


class Conn:
    """One keep-alive HTTP/1.1 connection over TLS."""

    def __init__(self, tls: trio.SSLStream[trio.SocketStream], target: Target) -> None:
        self.tls = tls
        self.target = target
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, target: Target) -> Conn:
        tcp = await trio.open_tcp_stream(target.host, target.port)
        tls = trio.SSLStream(tcp, target.context, server_hostname=target.host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return cls(tls, target)

    async def _next(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.tls.receive_some(256 * 1024)
            self.h11.receive_data(bytes(data))

    async def start(self, method: str, path: str, body: bytes = b"") -> int:
        """Send a request and read the response head; the status."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = [("host", self.target.host), *self.target.headers, ("content-length", str(len(body)))]
        data = self.h11.send(h11.Request(method=method, target=self.target.prefix + path, headers=headers))
        data = (data or b"") + (self.h11.send(h11.Data(data=body)) if body else b"") + self.h11.send(h11.EndOfMessage())
        await self.tls.send_all(data)
        event = await self._next()
        if not isinstance(event, h11.Response):
            raise RuntimeError(f"{self.target.name}: unexpected {event!r}")
        return int(event.status_code)

    async def body_chunk(self) -> bytes | None:
        """The next piece of the response body; None at its end."""
        event = await self._next()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise RuntimeError(f"{self.target.name}: unexpected {event!r}")

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, int]:
        """(status, body length) of a whole exchange."""
        status = await self.start(method, path, body)
        size = 0
        while (chunk := await self.body_chunk()) is not None:
            size += len(chunk)
        if status >= 400:
            raise RuntimeError(f"{self.target.name}: {method} {path} answered {status}")
        return status, size

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.tls)


# --- measurements ----------------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"process {pid} has no VmRSS (gone?)")


@dataclass
class Phase:
    """One row's measurement on one path."""

    count: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds over the phase
    upstream_conns: int = 0  # connections the upstream accepted during the phase

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


@dataclass(frozen=True)
class Probe:
    """What a phase reads besides its own clock: the processes' CPU, the upstream's connection count."""

    pids: dict[str, int]
    upstream: Target

    async def upstream_stats(self) -> dict[str, int]:
        """The upstream's counters, asked on a connection of its own (which the count includes)."""
        conn = await Conn.open(self.upstream)
        try:
            status = await conn.start("GET", "/bench/stats")
            body = b""
            while (chunk := await conn.body_chunk()) is not None:
                body += chunk
        finally:
            await conn.aclose()
        if status != 200:
            raise RuntimeError(f"the upstream answered {status} to /bench/stats")
        return {k: int(v) for k, v in json.loads(body).items()}


async def measured(probe: Probe, body: Callable[[Phase], Awaitable[None]]) -> Phase:
    phase = Phase()
    conns_before = (await probe.upstream_stats())["connections"]
    before = {name: cpu_seconds(pid) for name, pid in probe.pids.items()}
    start = time.perf_counter()
    await body(phase)
    phase.seconds = time.perf_counter() - start
    phase.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in probe.pids.items()}
    phase.upstream_conns = (await probe.upstream_stats())["connections"] - conns_before - 1  # less this ask
    return phase


async def keepalive(target: Target, probe: Probe, conns: int, total: int) -> Phase:
    opened = [await Conn.open(target) for _ in range(conns)]
    for conn in opened:  # warm-up: the agent's upstream pool and the user's roles are cached after this
        for _ in range(5):
            await conn.request("GET", SMALL_PATH)

    async def body(phase: Phase) -> None:
        async def client(conn: Conn) -> None:
            for _ in range(total // conns):
                start = time.perf_counter()
                await conn.request("GET", SMALL_PATH)
                phase.latencies.append(time.perf_counter() - start)
                phase.count += 1

        async with trio.open_nursery() as nursery:
            for conn in opened:
                nursery.start_soon(client, conn)

    try:
        with trio.fail_after(IO_TIMEOUT * 5):
            return await measured(probe, body)
    finally:
        for conn in opened:
            await conn.aclose()


async def new_connections(target: Target, probe: Probe, concurrency: int, total: int) -> Phase:
    async def body(phase: Phase) -> None:
        async def client() -> None:
            for _ in range(max(1, total // concurrency)):
                start = time.perf_counter()
                conn = await Conn.open(target)
                try:
                    await conn.request("GET", SMALL_PATH)
                finally:
                    await conn.aclose()
                phase.latencies.append(time.perf_counter() - start)
                phase.count += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client)

    with trio.fail_after(IO_TIMEOUT * 5):
        return await measured(probe, body)


async def bulk(target: Target, probe: Probe, mib: int) -> Phase:
    conn = await Conn.open(target)

    async def body(phase: Phase) -> None:
        _, size = await conn.request("GET", f"{BIG_PATH}?mib={mib}")
        if size != mib * MiB:
            raise RuntimeError(f"{target.name}: the big response had {size} bytes, not {mib * MiB}")
        phase.count = mib

    try:
        with trio.fail_after(IO_TIMEOUT * 3):
            return await measured(probe, body)
    finally:
        await conn.aclose()


@dataclass
class WatchResult:
    watches: int
    rss_kib_before: dict[str, int]
    rss_kib_after: dict[str, int]
    single_ms: list[float] = field(default_factory=list)  # one event at a time: proxied - direct latency
    burst_direct_ms: list[float] = field(default_factory=list)  # every watch at once: latencies
    burst_proxied_ms: list[float] = field(default_factory=list)
    burst_delays_ms: list[float] = field(default_factory=list)  # proxied latency - the round's direct median
    burst_cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds over the bursts
    burst_events: int = 0  # events delivered to proxied watches in the bursts

    def burst_cpu_us(self, name: str) -> float:
        """CPU microseconds of process ``name`` per event per proxied watch over the bursts."""
        return self.burst_cpu.get(name, 0.0) * 1e6 / max(1, self.burst_events)

    def per_watch_kib(self, name: str | None = None) -> float:
        names = [name] if name else list(self.rss_kib_after)
        grown = sum(self.rss_kib_after[n] - self.rss_kib_before[n] for n in names)
        return grown / self.watches


class Arrivals:
    """What every watch received: ``seq`` -> watch id -> latency in ms (arrival - the upstream's stamp)."""

    def __init__(self) -> None:
        self.by_seq: dict[str, dict[str, float]] = {}
        self._changed = trio.Event()

    async def follow(self, watch_id: str, conn: Conn) -> None:
        buffer = b""
        while True:
            chunk = await conn.body_chunk()
            arrived = time.monotonic()  # first thing after the bytes are in: parsing is not counted
            if chunk is None:
                raise RuntimeError(f"{conn.target.name}: watch {watch_id} ended early")
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    obj = json.loads(line)["object"]
                    self.by_seq.setdefault(obj["seq"], {})[watch_id] = (arrived - obj["sent"]) * 1000
                    self._changed.set()
                    self._changed = trio.Event()

    async def wait(self, seq: str, expected: int) -> dict[str, float]:
        """The arrivals of ``seq`` once ``expected`` watches have it (bounded by the caller's deadline)."""
        while len(self.by_seq.get(seq, {})) < expected:
            await self._changed.wait()
        return self.by_seq[seq]


async def open_upstream(conn: Conn) -> int:
    """How many watches the upstream holds open (asked on the caller's connection: no new one counted)."""
    status = await conn.start("GET", "/bench/stats")
    body = b""
    while (chunk := await conn.body_chunk()) is not None:
        body += chunk
    if status != 200:
        raise RuntimeError(f"the upstream answered {status} to /bench/watches")
    return int(json.loads(body)["watches"])


async def watches(
    *, proxied: Target, direct: Target, pids: dict[str, int], count: int, singles: int, bursts: int
) -> WatchResult:
    """``count`` watches through kubeport and a few direct ones; memory, then events (module docstring)."""
    rss_pids = {name: pid for name, pid in pids.items() if name in ("front door", "agent")}
    direct_count = max(2, min(10, count // 10))
    before = {name: rss_kib(pid) for name, pid in rss_pids.items()}
    opened: list[tuple[str, Conn]] = []
    arrivals = Arrivals()
    control: Conn | None = None
    try:
        with trio.fail_after(IO_TIMEOUT * 3):
            limiter = trio.CapacityLimiter(20)

            async def open_one(target: Target, watch_id: str) -> None:
                async with limiter:
                    conn = await Conn.open(target)
                    opened.append((watch_id, conn))
                    status = await conn.start("GET", f"{WATCH_PATH}&labelSelector=bench-watch%3D{watch_id}")
                    if status != 200:
                        raise RuntimeError(f"{target.name}: a watch answered {status}")

            async with trio.open_nursery() as nursery:
                for index in range(count):
                    nursery.start_soon(open_one, proxied, f"p{index}")
                for index in range(direct_count):
                    nursery.start_soon(open_one, direct, f"d{index}")
            # Every watch is open upstream (the upstream counts them) before memory is read; bounded by
            # the deadline above. The control connection is opened only now: a connection's first request
            # must follow its handshake within the server's handshake timeout.
            control = await Conn.open(direct)
            for _ in range(int(IO_TIMEOUT * 3 / 0.05)):
                if await open_upstream(control) >= count + direct_count:
                    break
                await trio.sleep(0.05)
        await trio.sleep(1.0)  # the idle state: let allocations settle before reading RSS
        after = {name: rss_kib(pid) for name, pid in rss_pids.items()}
        result = WatchResult(count, before, after)
        async with trio.open_nursery() as nursery:
            for watch_id, conn in opened:
                nursery.start_soon(arrivals.follow, watch_id, conn)
            with trio.fail_after(IO_TIMEOUT * 3), benchlib.no_gc_pauses():
                # One event at a time to one proxied and one direct watch; every other watch stays idle.
                for k in range(singles):
                    p, d = f"p{k % count}", f"d{k % direct_count}"
                    await control.request("POST", f"/bench/event?seq=s{k}&watch={p}&watch={d}")
                    got = await arrivals.wait(f"s{k}", 2)
                    result.single_ms.append(got[p] - got[d])
                # An event to every watch at once (a burst: the client wakes them one after another).
                cpu_before = {name: cpu_seconds(pid) for name, pid in rss_pids.items()}
                for k in range(bursts):
                    await control.request("POST", f"/bench/event?seq=b{k}")
                    got = await arrivals.wait(f"b{k}", count + direct_count)
                    direct_ms = [v for w, v in got.items() if w.startswith("d")]
                    proxied_ms = [v for w, v in got.items() if w.startswith("p")]
                    reference = statistics.median(direct_ms)
                    result.burst_direct_ms += direct_ms
                    result.burst_proxied_ms += proxied_ms
                    result.burst_delays_ms += [v - reference for v in proxied_ms]
                    result.burst_events += len(proxied_ms)
                    await trio.sleep(0.1)
                result.burst_cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in rss_pids.items()}
            nursery.cancel_scope.cancel()
    finally:
        if control is not None:
            await control.aclose()
        for _, conn in opened:
            await conn.aclose()
    return result


# --- the pieces, as processes ----------------------------------------------------------------------------

_SERVING = re.compile(rb"serving at (\S+)\n")
_AGENT_HOST = re.compile(rb"\(host (\S+)\) joined the registry[^\n]*\n")


@asynccontextmanager
async def upstream_process(work: Path, http1: bool = False) -> AsyncIterator[tuple[int, Path]]:
    argv = [sys.executable, str(SCRIPT), "--serve-upstream", str(work), *(["--upstream-http1"] if http1 else [])]
    log = work / "upstream.log"
    process = await spawn(argv, log)
    try:
        await banner(process, log, (_SERVING,), "the upstream")
        yield process.pid, work / "upstream.kubeconfig"
    finally:
        await stop(process, "kill")


@asynccontextmanager
async def agent_process(reg: Registry, work: Path) -> AsyncIterator[int]:
    async with reg.client() as client:
        token = str((await client.generate_token(roles=["Kube"], ttl_seconds=3600))["metadata"]["name"])
    doc = {
        "version": "v1",
        "kubeport": {
            "registry": reg.address,
            "token": token,
            "ca_pin": reg.ca_pin,
            "data_dir": str(work / "agent"),
            "nodename": "bench-agent",
        },
        "kubernetes_service": {"enabled": True, "listen_addr": "127.0.0.1:0", "resources": [{"labels": {"*": "*"}}]},
    }
    config = work / "agent.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    config.chmod(0o600)  # it holds the join token
    argv = [*PYTHON_M, "registry.cli.kubeport_main", "agent", "start", "-c", str(config)]
    log = work / "agent.log"
    process = await spawn(argv, log)
    try:
        await banner(process, log, (_AGENT_HOST,), "the agent")
        yield process.pid
    finally:
        await stop(process, "kill")


async def kpctl(reg: Registry, *args: str) -> str:
    argv = [*PYTHON_M, "registry.cli.kpctl", "--registry", reg.address, "--identity", str(reg.identity), *args]
    result = await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, check=False, env=benchlib.child_env(), cwd=benchlib.ROOT
    )
    if result.returncode != 0:
        raise RuntimeError(f"kpctl {' '.join(args)}: {result.stderr.decode(errors='replace')[-600:]}")
    return result.stdout.decode(errors="replace")


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` every 0.2 s until it holds, at most READY_TIMEOUT seconds."""
    for _ in range(int(READY_TIMEOUT / 0.2)):
        if await check():
            return
        await trio.sleep(0.2)
    raise RuntimeError(f"{what}: not within {READY_TIMEOUT:.0f} s")


async def set_up(reg: Registry, upstream_kubeconfig: Path, work: Path) -> Path:
    """The kube_cluster, the role, the user and its kubeconfig; returns once a GET goes through."""
    cluster = {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {"name": CLUSTER, "labels": {"env": "bench"}},
        "spec": {"kubeconfig": base64.b64encode(await trio.Path(upstream_kubeconfig).read_bytes()).decode()},
    }
    async with reg.client() as client:
        await client.create(cluster)

        async def served() -> bool:
            servers, _ = await client.list("kube_server")
            return any(s["metadata"]["name"] == CLUSTER for s in servers)

        await until("the agent serving the upstream", served)
    (work / "role.yaml").write_text(ROLE)
    await kpctl(reg, "create", "-f", str(work / "role.yaml"))
    await kpctl(reg, "users", "add", USER, "--roles=bench-access")
    kubeconfig = work / "user.kubeconfig"
    await kpctl(reg, "auth", "sign", f"--user={USER}", "--format=kubernetes", f"--out={kubeconfig}", "--ttl=2h")
    target = Target.from_kubeconfig("kubeport", kubeconfig)

    async def routed() -> bool:  # 503 until the agent's tunnel is up
        conn = await Conn.open(target)
        try:
            return await conn.start("GET", SMALL_PATH) == 200
        finally:
            await conn.aclose()

    await until("a GET through the front door", routed)
    return kubeconfig


# --- the report ------------------------------------------------------------------------------------------


@dataclass
class Results:
    direct: dict[str, Phase] = field(default_factory=dict)
    proxied: dict[str, Phase] = field(default_factory=dict)
    watch: WatchResult | None = None


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def result_rows(config: Config, res: Results) -> list[list[str]]:
    rows: list[list[str]] = []
    d, p = res.direct["ka1"], res.proxied["ka1"]
    added = p.p(0.5) - d.p(0.5)
    rows.append(
        [
            f"keep-alive GET, 1 connection ({p.count} requests)",
            f"p50 {d.p(0.5):.2f} / p99 {d.p(0.99):.2f} ms",
            f"p50 {p.p(0.5):.2f} / p99 {p.p(0.99):.2f} ms",
            f"+{added:.2f} ms p50",
            f"added p50 <= {TARGETS['added_p50_ms']:g} ms",
            verdict(added <= TARGETS["added_p50_ms"]),
        ]
    )
    for key, label, target_key in (
        ("ka10", f"keep-alive GET, 10 connections ({res.proxied['ka10'].count} requests)", "ratio_10"),
        ("new", f"new TLS connection per GET, 10 clients ({res.proxied['new'].count} requests)", "ratio_new"),
    ):
        d, p = res.direct[key], res.proxied[key]
        ratio = p.rate / d.rate
        rows.append(
            [
                label,
                f"{d.rate:,.0f} req/s",
                f"{p.rate:,.0f} req/s",
                f"{ratio:.2f}x",
                f">= {TARGETS[target_key]:g}x direct",
                verdict(ratio >= TARGETS[target_key]),
            ]
        )
    d, p = res.direct["bulk"], res.proxied["bulk"]
    rows.append(
        [
            f"one {config.bulk_mib} MiB response",
            f"{d.rate:,.1f} MiB/s",
            f"{p.rate:,.1f} MiB/s",
            f"{p.rate / d.rate:.2f}x",
            f">= {TARGETS['bulk_mibs']:g} MiB/s",
            verdict(p.rate >= TARGETS["bulk_mibs"]),
        ]
    )
    w = res.watch
    if w is not None:
        per_watch = w.per_watch_kib()
        rows.append(
            [
                f"{w.watches} idle watches: memory per watch",
                "",
                f"{per_watch:.1f} KiB (front door {w.per_watch_kib('front door'):.1f} + agent "
                f"{w.per_watch_kib('agent'):.1f})",
                "",
                f"<= {TARGETS['watch_kib']:g} KiB",
                verdict(per_watch <= TARGETS["watch_kib"]),
            ]
        )
        single = percentile(w.single_ms, 0.99)
        rows.append(
            [
                f"{w.watches} idle watches: one event at a time ({len(w.single_ms)} events)",
                "",
                f"after direct: p50 {percentile(w.single_ms, 0.5):.1f} / p99 {single:.1f} ms",
                f"p99 +{single:.1f} ms",
                f"p99 <= {TARGETS['watch_delay_ms']:g} ms after direct",
                verdict(single <= TARGETS["watch_delay_ms"]),
            ]
        )
        burst = percentile(w.burst_delays_ms, 0.99)
        bursts = len(w.burst_delays_ms) // max(1, w.watches)
        rows.append(
            [
                f"{w.watches} watches: an event to all at once ({bursts} bursts)",
                f"p50 {percentile(w.burst_direct_ms, 0.5):.1f} / p99 {percentile(w.burst_direct_ms, 0.99):.1f} ms",
                f"p50 {percentile(w.burst_proxied_ms, 0.5):.1f} / p99 {percentile(w.burst_proxied_ms, 0.99):.1f} ms",
                f"p99 +{burst:.1f} ms",
                f"p99 <= {TARGETS['watch_delay_ms']:g} ms after direct",
                verdict(burst <= TARGETS["watch_delay_ms"]),
            ]
        )
    return rows


HOPS = ("client", "front door", "agent", "upstream")
TABLE_HEADER = "| measurement | direct | through kubeport | kubeport vs direct | target | result |"
CPU_HEADER = "| CPU ms per request | path | " + " | ".join(HOPS) + " | connections the upstream accepted |"


def cpu_rows(res: Results) -> list[list[str]]:
    rows: list[list[str]] = []
    for key, label in (("ka1", "keep-alive, 1 conn"), ("ka10", "keep-alive, 10 conns"), ("new", "new connection")):
        for path, phases in (("direct", res.direct), ("kubeport", res.proxied)):
            phase = phases[key]
            cells = [f"{phase.cpu[h] * 1000 / phase.count:.2f}" if h in phase.cpu else "-" for h in HOPS]
            rows.append([label, path, *cells, f"{phase.upstream_conns:,} for {phase.count:,} requests"])
    for path, phases in (("direct", res.direct), ("kubeport", res.proxied)):
        phase = phases["bulk"]
        cells = [f"{phase.cpu[h] * 1000 / phase.count:.1f}/MiB" if h in phase.cpu else "-" for h in HOPS]
        rows.append(["big response", path, *cells, f"{phase.upstream_conns:,}"])
    w = res.watch
    if w is not None and w.burst_events:  # per event delivered to one proxied watch, over the bursts
        cells = [f"{w.burst_cpu_us(h) / 1000:.3f}/event" if h in w.burst_cpu else "-" for h in HOPS]
        rows.append([f"{w.watches} watches, bursts", "kubeport", *cells, "-"])
    return rows


def render(config: Config, machine: dict[str, Any], res: Results) -> str:
    lines = [
        f"bench_proxy: {config.requests} keep-alive GETs per row, {config.new_conns} new-connection GETs, "
        f"{config.bulk_mib} MiB response, {config.watches} watches, {config.events} single events, "
        f"{config.bursts} bursts; "
        "TLS on every hop, every piece its own process on loopback",
        benchlib.machine_line(machine) + f" (at end {benchlib.loads(os.getloadavg())})",
        "",
        *benchlib.table_lines(TABLE_HEADER, "|---|---|---|---|---|---|", result_rows(config, res)),
        "",
        *benchlib.table_lines(CPU_HEADER, "|---|---|---|---|---|---|---|", cpu_rows(res)),
        "",
        "front door = the registry process (front door, and the registry API the agent asks for the user's roles);"
        " client = this process. Connections the upstream accepted: direct, the client's own; through kubeport, the "
        "agent's (its keep-alive pool to the API server). Through kubeport four processes share the cores where "
        "direct two do. Watch "
        "latency = arrival - the upstream's write stamp (taken just before it writes to that watch). One event "
        "at a time: an event goes to one proxied and one direct watch, all others idle; the delay is the "
        "difference of the two latencies. All at once: every watch gets the event; delay = a proxied watch's "
        "latency - the direct watches' median in that burst (the client wakes its watches one by one, so "
        "bursts include its own per-watch cost). Memory per watch: RSS growth of the registry and agent "
        "processes over the open idle watches / their number (allocator reuse makes small counts noisy).",
    ]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def measure(config: Config, work: Path) -> Results:
    res = Results()
    async with (
        upstream_process(work, config.upstream_http1) as (upstream_pid, upstream_kubeconfig),
        registry(work / "registry") as reg,
        agent_process(reg, work) as agent_pid,
    ):
        progress("setting up the cluster, the role, the user and its kubeconfig")
        kubeconfig = await set_up(reg, upstream_kubeconfig, work)
        direct = Target.from_kubeconfig("direct", upstream_kubeconfig)
        proxied = Target.from_kubeconfig("kubeport", kubeconfig)
        pids = {"client": os.getpid(), "front door": reg.pid, "agent": agent_pid, "upstream": upstream_pid}
        direct_probe = Probe({"client": os.getpid(), "upstream": upstream_pid}, direct)
        probe = Probe(pids, direct)
        # Each row direct, then through kubeport, one after the other: a change in the machine's load (its
        # cores are shared) hits both sides of a row alike.
        paths = ((direct, res.direct, direct_probe), (proxied, res.proxied, probe))
        for row, label in (("ka1", "keep-alive, 1"), ("ka10", "keep-alive, 10"), ("new", "new connections")):
            progress(f"{label}: direct, then through kubeport")
            for target, out, used in paths:
                if row == "new":
                    out[row] = await new_connections(target, used, 10, config.new_conns)
                else:
                    out[row] = await keepalive(target, used, 1 if row == "ka1" else 10, config.requests)
        progress(f"{config.bulk_mib} MiB: direct, then through kubeport")
        for target, out, used in paths:
            out["bulk"] = await bulk(target, used, config.bulk_mib)
        progress(f"{config.watches} idle watches, {config.events} single events, {config.bursts} bursts")
        res.watch = await watches(
            proxied=proxied, direct=direct, pids=pids, count=config.watches, singles=config.events, bursts=config.bursts
        )
    return res


def as_json(config: Config, machine: dict[str, Any], res: Results) -> str:
    def phase(p: Phase) -> dict[str, Any]:
        out: dict[str, Any] = {"count": p.count, "seconds": p.seconds, "rate": p.rate, "cpu_seconds": p.cpu}
        out["upstream_connections"] = p.upstream_conns
        if p.latencies:
            out |= {"p50_ms": p.p(0.5), "p99_ms": p.p(0.99)}
        return out

    doc: dict[str, Any] = {
        "machine": machine,
        "config": benchlib.config_json(config),
        "direct": {k: phase(v) for k, v in res.direct.items()},
        "kubeport": {k: phase(v) for k, v in res.proxied.items()},
    }
    if res.watch is not None:
        w = res.watch
        doc["watches"] = {
            "count": w.watches,
            "rss_kib_before": w.rss_kib_before,
            "rss_kib_after": w.rss_kib_after,
            "per_watch_kib": w.per_watch_kib(),
            "single_delay_p50_ms": percentile(w.single_ms, 0.5),
            "single_delay_p99_ms": percentile(w.single_ms, 0.99),
            "burst_delay_p99_ms": percentile(w.burst_delays_ms, 0.99),
        }
    return json.dumps(doc)


async def run(config: Config) -> str:
    machine = benchlib.machine_info()
    _raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-", dir=config.work_dir))
    try:
        res = await measure(config, work)
    finally:
        if config.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = render(config, machine, res)
    return report + ("\n" + as_json(config, machine, res) if config.as_json else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_proxy", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run (smaller counts)")
    parser.add_argument("--requests", type=positive(1_000_000), help="keep-alive GETs per row (3000; quick 300)")
    parser.add_argument("--new-conns", type=positive(100_000), help="new-connection GETs (600; quick 60)")
    parser.add_argument("--bulk-mib", type=positive(4096), help="MiB in the big response (64; quick 16)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--watches", type=positive(10_000), help="idle watches through kubeport (200; quick 20)")
    size.add_argument("--many-watches", action="store_true", help="1000 idle watches (the issue's count)")
    parser.add_argument("--events", type=positive(100_000), help="events to one watch at a time (200; quick 20)")
    parser.add_argument("--bursts", type=positive(1000), help="events to every watch at once (10; quick 3)")
    parser.add_argument("--json", action="store_true", dest="as_json", help="add a last line of JSON")
    parser.add_argument("--work-dir", type=Path, help="parent of the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--serve-upstream", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--upstream-http1", action="store_true", help="the upstream offers HTTP/1.1 only (default: h2 and http/1.1)"
    )
    return parser


def parse_config(argv: Sequence[str] | None) -> Config:
    args = benchlib.parse_args(build_parser(), argv, full=FULL, quick=QUICK)
    if args.many_watches:
        args.watches = 1000
    return Config(
        requests=max(10, args.requests),
        new_conns=max(10, args.new_conns),
        bulk_mib=args.bulk_mib,
        watches=args.watches,
        events=args.events,
        bursts=args.bursts,
        as_json=args.as_json,
        work_dir=args.work_dir,
        keep=args.keep,
        upstream_http1=args.upstream_http1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    raw = build_parser().parse_args(argv)
    if raw.serve_upstream is not None:
        trio.run(serve_upstream, raw.serve_upstream, not raw.upstream_http1)
        return 0
    return benchlib.run_main("bench_proxy", run, parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())

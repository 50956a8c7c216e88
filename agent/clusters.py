"""The cluster supervisor: carries out the reconciler's plan and keeps every served cluster alive.

For each kube_cluster the agent knows about it may run, each in its own cancel scope under one nursery:

- a **label runner** (``labels.runner.DynamicLabels``) for clusters with ``spec.dynamic_labels`` that could
  match the ``resources`` selectors at all (``labels.could_match``) — registered or not, because a label
  that starts matching must register the cluster; clusters that can never match run nothing;
- for **served** clusters, a health monitor over a keep-alive connection to the Kubernetes API.

Every change (watch event, label result, health transition) calls ``reconcile()`` again, which is cheap and
synchronous: build candidates, ``agent.reconcile.plan``, apply. Heartbeats are delegated to the
``Announcer``, which is told which clusters to announce and when something about one changed.

Invariants:
- A cluster whose label commands have not produced their first results is *pending*: not registered yet
  (a registered one keeps its registration until the new results are in).
- A failed registration (bad kubeconfig) registers nothing and is retried on every reconcile; a failed
  update keeps the old registration. The last error per cluster is kept in ``failed`` for display.
- Static clusters (from ``kubeconfig_file``) always win a name clash and are never label-matched.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import trio

from agent.health import HealthMonitor, HealthResult
from agent.kubeapi import KubeAPI
from agent.label_commands import LabelCommandPolicy
from agent.reconcile import Candidate, Register, Unregister, Update, plan
from labels import combine, could_match, matches_any
from labels.runner import LABEL_CONCURRENCY, CommandSpec, DynamicLabels
from registry import __version__
from registry.core import codec
from registry.core.errors import KubeportError
from registry.core.kubeconfig import KubeTarget, check_kubeconfig
from registry.core.resources import CommandLabel, Health, KubeCluster, KubeServer, Metadata

log = logging.getLogger(__name__)

# Health checks in flight at once per agent (each is /version plus three access reviews).
HEALTH_CONCURRENCY = 16


def fingerprint(cluster: KubeCluster) -> str:
    """Equality of everything that matters for serving, ignoring the store revision."""
    wire = codec.resource_to_dict(replace(cluster, metadata=replace(cluster.metadata, revision="")), with_secrets=True)
    return hashlib.sha256(json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def command_specs(
    dynamic: Mapping[str, CommandLabel], *, timeout: float, policy: LabelCommandPolicy
) -> tuple[CommandSpec, ...]:
    """Runner specs for a kube_cluster's dynamic labels. A command the agent's allow-list does not allow
    becomes a spec with a ``refusal``: it never runs, and its value says why."""
    specs = []
    for key, label in sorted(dynamic.items()):
        decision = policy.check(label.command[0]) if label.command else None
        specs.append(
            CommandSpec(
                key=key,
                command=tuple(label.command),
                period=label.period_seconds(),
                schedule=label.schedule,
                timeout=timeout,
                executable=decision.executable if decision else None,
                refusal=decision.refusal if decision else None,
            )
        )
    return tuple(specs)


@dataclass
class _LabelRunner:
    specs: tuple[CommandSpec, ...]
    labels: DynamicLabels
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: bool = False


@dataclass
class ServedCluster:
    candidate: Candidate
    cluster: KubeCluster
    target: KubeTarget
    api: KubeAPI
    monitor: HealthMonitor
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass(frozen=True)
class ServiceInfo:
    """What every heartbeat of this agent carries besides the cluster itself."""

    host_id: str
    hostname: str
    labels: Mapping[str, str]
    commands: Mapping[str, CommandLabel]


class Supervisor:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        resources: Sequence[Mapping[str, Any]],
        service: ServiceInfo,
        service_results: Callable[[], Mapping[str, str]],
        announcer: Any,
        wake: Callable[[], None],
        health_interval: float = 60.0,
        label_timeout: float = 30.0,
        now: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
        label_policy: LabelCommandPolicy | None = None,
        label_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        """``label_policy``: the programs kube_cluster dynamic labels may run (None: none at all).
        ``label_limiter``: shared by every label runner of the agent (None: one of LABEL_CONCURRENCY)."""
        self._nursery = nursery
        self.resources = tuple(resources)
        self.service = service
        self._service_results = service_results
        self.announcer = announcer
        self._wake = wake
        self.health_interval = health_interval
        self.label_timeout = label_timeout
        self._now = now
        self.current: dict[str, Candidate] = {}
        self.served: dict[str, ServedCluster] = {}
        self.failed: dict[str, str] = {}
        self._runners: dict[str, _LabelRunner] = {}
        self._fingerprints: dict[str, tuple[str, str]] = {}  # name -> (revision, fingerprint)
        self.changed = trio.Event()  # set after every reconcile pass (tests, benchmarks, kube explain)
        self._pending: set[str] | None = set()
        self._health_slots = trio.CapacityLimiter(HEALTH_CONCURRENCY)
        self.label_policy = label_policy if label_policy is not None else LabelCommandPolicy((), ())
        self.label_limiter = label_limiter if label_limiter is not None else trio.CapacityLimiter(LABEL_CONCURRENCY)

    # -- inputs --------------------------------------------------------------------------------------

    def _fingerprint(self, cluster: KubeCluster) -> str:
        """Cached per name for the revision last seen (one entry per cluster, never more)."""
        revision = cluster.metadata.revision
        cached = self._fingerprints.get(cluster.name)
        if revision and cached is not None and cached[0] == revision:
            return cached[1]
        found = fingerprint(cluster)
        if revision:
            self._fingerprints[cluster.name] = (revision, found)
        return found

    def _matcher(self, labels: Mapping[str, str]) -> bool:
        return matches_any(self.resources, labels)

    def _sync_runners(self, wanted: Mapping[str, tuple[CommandSpec, ...]], scope: Collection[str] | None) -> None:
        """Start wanted runners, stop unwanted ones — among ``scope`` (None: every name)."""
        for name in list(self._runners) if scope is None else [n for n in scope if n in self._runners]:
            runner = self._runners[name]
            if wanted.get(name) != runner.specs:
                runner.scope.cancel()
                del self._runners[name]
        for name, specs in wanted.items():
            if name not in self._runners:
                labels = DynamicLabels(specs, on_change=self._labels_changed(name), limiter=self.label_limiter)
                runner = _LabelRunner(specs=specs, labels=labels)
                self._runners[name] = runner
                self._nursery.start_soon(self._run_labels, name, runner)

    def _labels_changed(self, name: str) -> Callable[[], None]:
        def changed() -> None:
            self.announcer.touch(name)
            self.request_reconcile(name)

        return changed

    async def _run_labels(self, name: str, runner: _LabelRunner) -> None:
        with runner.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.labels.serve)
                runner.ready = True
                self.request_reconcile(name)

    def results_of(self, name: str) -> dict[str, str]:
        runner = self._runners.get(name)
        return runner.labels.results() if runner is not None else {}

    def label_errors(self, limit: int = 1000) -> dict[str, dict[str, str]]:
        """Cluster -> label key -> current error value, for every dynamic label failing now (refused ones
        included), at most ``limit`` clusters: what ``kpctl kube explain`` shows next to this agent."""
        errors: dict[str, dict[str, str]] = {}
        for name in sorted(self._runners):
            states = self._runners[name].labels.states()
            failing = {key: state.value for key, state in sorted(states.items()) if not state.ok}
            if failing:
                errors[name] = failing
                if len(errors) >= limit:
                    break
        return errors

    # -- reconcile -----------------------------------------------------------------------------------

    def request_reconcile(self, name: str | None = None) -> None:
        """Ask for a pass soon over ``name`` (None: everything); coalesced by the agent's loop."""
        if name is None:
            self._pending = None
        elif self._pending is not None:
            self._pending.add(name)
        self._wake()

    def take_pending(self) -> set[str] | None:
        """Names whose labels changed since the last call (None: a full pass is wanted)."""
        pending, self._pending = self._pending, set()
        return pending

    def reconcile(
        self, watched: Mapping[str, KubeCluster], static: Sequence[KubeCluster], only: Collection[str] | None = None
    ) -> None:
        """One pass over ``only`` (names that changed) or, for None, over everything.

        The plan is keyed by name, so a pass over a subset decides exactly what a full pass would for those
        names; a create among 10,000 clusters costs one candidate, not 10,000.
        """
        if only is not None:
            names = set(only)
            watched = {n: watched[n] for n in names if n in watched}
            static = [c for c in static if c.name in names]
            current: Mapping[str, Candidate] = {n: self.current[n] for n in names if n in self.current}
        else:
            current = self.current
        if only is None:
            # A full pass follows a (re)list: revisions may have been reused by a registry that lost its
            # store, so cached fingerprints are not trusted across it.
            self._fingerprints.clear()
        wanted_runners: dict[str, tuple[CommandSpec, ...]] = {}
        dynamic: list[Candidate] = []
        label_errors: set[str] = set()
        for name, cluster in watched.items():
            static_labels = cluster.static_labels()
            labels = static_labels
            if cluster.dynamic_labels and could_match(self.resources, static_labels, cluster.dynamic_labels.keys()):
                try:
                    wanted_runners[name] = command_specs(
                        cluster.dynamic_labels, timeout=self.label_timeout, policy=self.label_policy
                    )
                except ValueError as err:
                    self.failed[name] = f"dynamic labels: {err}"
                    label_errors.add(name)
                    continue
                runner = self._runners.get(name)
                if runner is None or not runner.ready or runner.specs != wanted_runners[name]:
                    if name in self.current:
                        dynamic.append(self.current[name])  # keep serving until the new results are in
                    continue  # pending: first results not in yet
                labels = combine(static_labels, runner.labels.results())
            dynamic.append(Candidate(name, "dynamic", self._fingerprint(cluster), labels, payload=cluster))
        static_candidates = [
            Candidate(c.name, "static", self._fingerprint(c), c.static_labels(), payload=c) for c in static
        ]
        self._sync_runners(wanted_runners, only)
        for action in plan(current, static_candidates, dynamic, self._matcher):
            if isinstance(action, Register):
                self._register(action.candidate)
            elif isinstance(action, Update):
                self._update(action.old, action.new)
            elif isinstance(action, Unregister):
                self._unregister(action.name, action.reason)
        self._forget_failures(only, dynamic, static_candidates, label_errors)
        self.changed.set()
        self.changed = trio.Event()

    def _forget_failures(
        self,
        only: Collection[str] | None,
        dynamic: Sequence[Candidate],
        static: Sequence[Candidate],
        label_errors: Collection[str],
    ) -> None:
        """Drop recorded failures that no longer describe anything: the cluster was deleted, is served
        exactly as desired (a failed update was reverted), or no longer matches (nothing to retry)."""
        desired = {c.name: c for c in dynamic}
        desired.update((c.name, c) for c in static)
        for name in list(self.failed) if only is None else [n for n in only if n in self.failed]:
            if name in label_errors:
                continue
            candidate = desired.get(name)
            unwanted = (
                candidate is not None
                and name not in self.current
                and candidate.origin == "dynamic"
                and not self._matcher(candidate.labels)
            )
            if candidate is None or self.current.get(name) == candidate or unwanted:
                del self.failed[name]

    # -- actions -------------------------------------------------------------------------------------

    def _connect(self, candidate: Candidate) -> tuple[KubeTarget, KubeAPI]:
        cluster: KubeCluster = candidate.payload
        target = check_kubeconfig(
            cluster.kubeconfig,
            cluster_name=cluster.name,
            allow_exec=cluster.allow_exec_plugins or candidate.origin == "static",
        )
        return target, KubeAPI(target)

    def _register(self, candidate: Candidate) -> None:
        try:
            target, api = self._connect(candidate)
        except KubeportError as err:
            if self.failed.get(candidate.name) != err.message:
                log.warning("cannot register kube_cluster %s: %s", candidate.name, err.message)
            self.failed[candidate.name] = err.message
            return
        self.failed.pop(candidate.name, None)
        served = ServedCluster(
            candidate=candidate,
            cluster=candidate.payload,
            target=target,
            api=api,
            monitor=self._monitor(candidate.name, api),
        )
        self.current[candidate.name] = candidate
        self.served[candidate.name] = served
        self._nursery.start_soon(self._run_served, served)
        self.announcer.set(candidate.name, self._builder(candidate.name))
        log.info("registered kube_cluster %s (%s)", candidate.name, candidate.origin)

    def _update(self, old: Candidate, new: Candidate) -> None:
        served = self.served[old.name]
        cluster: KubeCluster = new.payload
        if (
            cluster.kubeconfig == served.cluster.kubeconfig
            and cluster.allow_exec_plugins == served.cluster.allow_exec_plugins
        ):
            served.candidate, served.cluster = new, cluster
            self.current[new.name] = new
            self.announcer.touch(new.name)
            return
        try:
            target, api = self._connect(new)
        except KubeportError as err:
            # Teleport's rule: a failed update keeps the old registration serving.
            log.warning("update of kube_cluster %s failed, keeping the previous one: %s", new.name, err.message)
            self.failed[new.name] = f"update failed (still serving the previous version): {err.message}"
            return
        served.scope.cancel()
        fresh = ServedCluster(
            candidate=new, cluster=cluster, target=target, api=api, monitor=self._monitor(new.name, api)
        )
        self.served[new.name] = fresh
        self.current[new.name] = new
        self.failed.pop(new.name, None)
        self._nursery.start_soon(self._run_served, fresh)
        self.announcer.set(new.name, self._builder(new.name))
        log.info("updated kube_cluster %s", new.name)

    def _unregister(self, name: str, reason: str) -> None:
        served = self.served.pop(name, None)
        self.current.pop(name, None)
        if served is not None:
            served.scope.cancel()
        self.announcer.remove(name)
        log.info("unregistered kube_cluster %s: %s", name, reason)

    def _monitor(self, name: str, api: KubeAPI) -> HealthMonitor:
        def changed(result: HealthResult) -> None:
            self.announcer.touch(name)

        return HealthMonitor(
            api, interval=self.health_interval, on_change=changed, now=self._now, limiter=self._health_slots
        )

    async def _run_served(self, served: ServedCluster) -> None:
        with served.scope:
            try:
                await served.monitor.serve()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await served.api.aclose()

    async def stop_all(self) -> None:
        for name in list(self.served):
            self._unregister(name, "agent stopping")
        for runner in self._runners.values():
            runner.scope.cancel()

    # -- heartbeats ----------------------------------------------------------------------------------

    def _builder(self, name: str) -> Callable[[float], dict[str, Any]]:
        def build(expires: float) -> dict[str, Any]:
            served = self.served[name]
            return codec.resource_to_dict(self.kube_server(served, expires), with_secrets=False)

        return build

    def kube_server(self, served: ServedCluster, expires: float) -> KubeServer:
        """The heartbeat: a secret-free copy of the cluster with dynamic results, service labels (which win)
        and health."""
        cluster = served.cluster
        results = self.results_of(cluster.name)
        dynamic = {key: replace(label, result=results.get(key, "")) for key, label in cluster.dynamic_labels.items()}
        service_results = self._service_results()
        for key, label in self.service.commands.items():
            dynamic[key] = replace(label, result=service_results.get(key, ""))
        labels = {**cluster.static_labels(), **self.service.labels}
        copy = replace(
            cluster.without_secrets(),
            metadata=replace(cluster.metadata, labels=labels, revision="", expires=None),
            dynamic_labels=dynamic,
        )
        latest = served.monitor.latest
        return KubeServer(
            metadata=Metadata(name=cluster.name, expires=datetime.fromtimestamp(expires, tz=UTC)),
            host_id=self.service.host_id,
            hostname=self.service.hostname,
            version=__version__,
            cluster=copy,
            health=Health(status=latest.status, reason=latest.reason, checked_at=latest.checked_at),
        )

"""The cluster supervisor: carries out the cluster table's actions and keeps every served cluster alive.

What to serve, which label commands to run and what failed is decided by :class:`agent.state.ClusterTable`
(pure). This module only executes its actions, each in its own cancel scope under one nursery:

- a **label runner** per :class:`~agent.state.StartLabels` (``labels.runner.DynamicLabels`` by default),
  whose first results and later changes go back to the table as events;
- per :class:`~agent.state.Connect`, a connection to the Kubernetes API (``check_kubeconfig`` + ``KubeAPI``;
  the outcome goes back to the table) and a **health monitor** over it (``agent.health.HealthMonitor``);
- heartbeats through the :class:`~agent.heartbeat.Heartbeats` it is given (the ``Announcer``), told which
  clusters to announce and when something about one changed.

Every change (watch event, label result, retry) asks for ``reconcile()`` again, which is cheap and
synchronous: one :meth:`~agent.state.ClusterTable.desired` event, then its actions.

Seams: the announcer, the label runner factory and the health monitor factory are typed protocols
(:class:`~agent.heartbeat.Heartbeats`, :class:`LabelRunnerFactory`, :class:`MonitorFactory`), so tests
inject fakes instead of patching this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

import trio

from agent.health import HealthMonitor, HealthResult, KubeCalls
from agent.heartbeat import Heartbeats, ServiceInfo, kube_server
from agent.kube.client import KubeAPI
from agent.label_commands import LabelCommandPolicy
from agent.reconcile import Candidate
from agent.state import (
    Action,
    Announce,
    ClusterTable,
    Connect,
    Disconnect,
    ReconcileSoon,
    Refresh,
    Specs,
    StartLabels,
    StopLabels,
    Warn,
)
from labels.runner import LABEL_CONCURRENCY, CommandSpec, DynamicLabels, LabelState
from registry.core import codec
from registry.core.errors import KubeportError
from registry.core.kubeconfig import KubeTarget, check_kubeconfig
from registry.core.resources import KubeCluster, KubeServer
from registry.host.metrics import LABEL_RUNS

log = logging.getLogger(__name__)

# Health checks in flight at once per agent (each is /version plus three access reviews).
HEALTH_CONCURRENCY = 16


# ------------------------------------------------------------------------------------------------- seams


class LabelRunner(Protocol):
    """One cluster's dynamic labels at work; ``labels.runner.DynamicLabels`` is the real one."""

    def results(self) -> dict[str, str]: ...

    def states(self) -> Mapping[str, LabelState]: ...

    async def serve(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


class LabelRunnerFactory(Protocol):
    def __call__(
        self,
        specs: Sequence[CommandSpec],
        *,
        on_change: Callable[[], None] | None = ...,
        limiter: trio.CapacityLimiter | None = ...,
    ) -> LabelRunner: ...


class Monitor(Protocol):
    """One cluster's health checks; ``agent.health.HealthMonitor`` is the real one."""

    @property
    def latest(self) -> HealthResult: ...

    async def serve(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


class MonitorFactory(Protocol):
    def __call__(
        self,
        api: KubeCalls,
        *,
        interval: float,
        on_change: Callable[[HealthResult], None],
        now: Callable[[], datetime],
        limiter: trio.CapacityLimiter | None = ...,
    ) -> Monitor: ...


def counted_labels(
    specs: Sequence[CommandSpec],
    *,
    on_change: Callable[[], None] | None = None,
    limiter: trio.CapacityLimiter | None = None,
) -> DynamicLabels:
    """The default :class:`LabelRunnerFactory`: ``DynamicLabels`` whose every run is counted in
    ``kubeport_agent_dynamic_label_runs_total{result}`` (labels/ stays free of prometheus: it only calls back)."""
    return DynamicLabels(specs, on_change=on_change, limiter=limiter, on_run=_count_label_run)


def _count_label_run(result: str) -> None:
    LABEL_RUNS.labels(result).inc()


# ------------------------------------------------------------------------------------------- task handles


@dataclass
class _LabelRunner:
    specs: Specs
    labels: LabelRunner
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass
class ServedCluster:
    candidate: Candidate
    cluster: KubeCluster
    target: KubeTarget
    api: KubeAPI
    monitor: Monitor
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class Supervisor:
    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        resources: Sequence[Mapping[str, Any]],
        service: ServiceInfo,
        service_results: Callable[[], Mapping[str, str]],
        announcer: Heartbeats,
        wake: Callable[[], None],
        health_interval: float = 60.0,
        label_timeout: float = 30.0,
        now: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
        label_policy: LabelCommandPolicy | None = None,
        label_limiter: trio.CapacityLimiter | None = None,
        label_runners: LabelRunnerFactory = counted_labels,
        health_monitors: MonitorFactory = HealthMonitor,
    ) -> None:
        """``label_policy``: the programs kube_cluster dynamic labels may run (None: none at all).
        ``label_limiter``: shared by every label runner of the agent (None: one of LABEL_CONCURRENCY).
        ``label_runners`` / ``health_monitors``: build a cluster's label runner and health monitor."""
        self._nursery = nursery
        self.table = ClusterTable(resources=resources, label_timeout=label_timeout, label_policy=label_policy)
        self.service = service
        self._service_results = service_results
        self.announcer = announcer
        self._wake = wake
        self.health_interval = health_interval
        self._now = now
        self._label_runners = label_runners
        self._health_monitors = health_monitors
        self.served: dict[str, ServedCluster] = {}
        self._runners: dict[str, _LabelRunner] = {}
        # name -> (cluster, service, label inputs, labels): see announced_labels
        self._labels: dict[str, tuple[KubeCluster, ServiceInfo, tuple[Any, ...], Mapping[str, str]]] = {}
        self.changed = trio.Event()  # set after every reconcile pass (tests, benchmarks, kube explain)
        self._pending: set[str] | None = set()
        self._health_slots = trio.CapacityLimiter(HEALTH_CONCURRENCY)
        self.label_limiter = label_limiter if label_limiter is not None else trio.CapacityLimiter(LABEL_CONCURRENCY)

    @property
    def resources(self) -> tuple[Mapping[str, Any], ...]:
        return self.table.resources

    @property
    def current(self) -> Mapping[str, Candidate]:
        """What is served, as the table's candidates."""
        return self.table.served

    @property
    def failed(self) -> dict[str, str]:
        """Cluster -> the last error about it (for display)."""
        return self.table.failed

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

    # -- events in --------------------------------------------------------------------------------------

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
        """One pass over ``only`` (names that changed) or, for None, over everything."""
        self._execute(self.table.desired(watched, static, only))
        self.changed.set()
        self.changed = trio.Event()

    def retry_delay(self) -> float | None:
        """Seconds until failed clusters should be retried (None: nothing failed)."""
        return self.table.retry_delay()

    def retry_failed(self) -> None:
        """The retry timer fired: ask for a pass over every cluster that failed."""
        self._execute(self.table.retry_due())

    async def stop_all(self) -> None:
        self._execute(self.table.stopping())

    # -- actions out ------------------------------------------------------------------------------------

    def _execute(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, StartLabels):
                self._start_labels(action.name, action.specs)
            elif isinstance(action, StopLabels):
                runner = self._runners.pop(action.name, None)
                if runner is not None:
                    runner.scope.cancel()
            elif isinstance(action, Connect):
                self._connect(action)
            elif isinstance(action, Refresh):
                served = self.served[action.new.name]
                served.candidate, served.cluster = action.new, action.new.payload
                self.announcer.touch(action.new.name)
            elif isinstance(action, Disconnect):
                self._disconnect(action.name, action.reason)
            elif isinstance(action, Announce):
                self.announcer.touch(action.name)
            elif isinstance(action, ReconcileSoon):
                self.request_reconcile(action.name)
            elif isinstance(action, Warn):
                log.warning("%s", action.message)

    def _start_labels(self, name: str, specs: Specs) -> None:
        runner: _LabelRunner | None = None

        def changed() -> None:
            if runner is not None and self._runners.get(name) is runner:  # a stopped runner says nothing
                self._execute(self.table.labels_changed(name, specs, runner.labels.results()))

        labels = self._label_runners(specs, on_change=changed, limiter=self.label_limiter)
        runner = _LabelRunner(specs=specs, labels=labels)
        self._runners[name] = runner
        self._nursery.start_soon(self._run_labels, name, runner)

    async def _run_labels(self, name: str, runner: _LabelRunner) -> None:
        with runner.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.labels.serve)
                if self._runners.get(name) is runner:
                    self._execute(self.table.labels_ready(name, runner.specs, runner.labels.results()))

    def _connect(self, action: Connect) -> None:
        candidate = action.candidate
        cluster: KubeCluster = candidate.payload
        try:
            target = check_kubeconfig(
                cluster.kubeconfig,
                cluster_name=cluster.name,
                allow_exec=cluster.allow_exec_plugins or candidate.origin == "static",
            )
            api = KubeAPI(target)
        except KubeportError as err:
            self._execute(self.table.connect_failed(action, err.message))
            return
        previous = self.served.get(candidate.name) if action.replaces is not None else None
        if previous is not None:
            previous.scope.cancel()
        served = ServedCluster(
            candidate=candidate,
            cluster=cluster,
            target=target,
            api=api,
            monitor=self._monitor(candidate.name, api),
        )
        self.served[candidate.name] = served
        self._execute(self.table.connected(action))
        self._nursery.start_soon(self._run_served, served)
        self.announcer.set(candidate.name, self._builder(candidate.name))
        if action.replaces is None:
            log.info("registered kube_cluster %s (%s)", candidate.name, candidate.origin)
        else:
            log.info("updated kube_cluster %s", candidate.name)

    def _disconnect(self, name: str, reason: str) -> None:
        served = self.served.pop(name, None)
        self._labels.pop(name, None)
        if served is not None:
            served.scope.cancel()
        self.announcer.remove(name)
        log.info("unregistered kube_cluster %s: %s", name, reason)

    def _monitor(self, name: str, api: KubeAPI) -> Monitor:
        def changed(result: HealthResult) -> None:
            self.announcer.touch(name)

        return self._health_monitors(
            api, interval=self.health_interval, on_change=changed, now=self._now, limiter=self._health_slots
        )

    async def _run_served(self, served: ServedCluster) -> None:
        with served.scope:
            try:
                await served.monitor.serve()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await served.api.aclose()

    # -- heartbeats --------------------------------------------------------------------------------------

    def _builder(self, name: str) -> Callable[[float], dict[str, Any]]:
        def build(expires: float) -> dict[str, Any]:
            return codec.resource_to_dict(self.kube_server(self.served[name], expires), with_secrets=False)

        return build

    def announced_labels(self, served: ServedCluster) -> Mapping[str, str]:
        """``kube_server(served, ...).all_labels()``: the labels this agent's heartbeat announces for ``served``
        (what the forwarder authorizes with), read-only. Built once and reused while ``served.cluster`` is the
        same object (an update replaces it, even when ``served`` stays) and its dynamic label results, the
        service and the service's own label results are unchanged, so a request does not build a heartbeat."""
        name = served.cluster.name
        key = (tuple(self.results_of(name).items()), tuple(self._service_results().items()))
        cached = self._labels.get(name)
        if cached is not None and cached[0] is served.cluster and cached[1] is self.service and cached[2] == key:
            return cached[3]
        labels: Mapping[str, str] = MappingProxyType(self.kube_server(served, 0.0).all_labels())
        self._labels[name] = (served.cluster, self.service, key, labels)
        return labels

    def kube_server(self, served: ServedCluster, expires: float) -> KubeServer:
        """The heartbeat of ``served`` (see :func:`agent.heartbeat.kube_server`)."""
        return kube_server(
            served.cluster,
            results=self.results_of(served.cluster.name),
            service=self.service,
            service_results=self._service_results(),
            health=served.monitor.latest,
            expires=expires,
        )

"""The agent's decisions about the clusters it serves: a table that takes events and returns actions.

:class:`ClusterTable` is pure and synchronous (no trio, no httpx, no clock, no logging): the supervisor
(``agent.clusters``) feeds it events and carries out the actions it returns, in order. Events:

* :meth:`ClusterTable.desired` — a reconcile pass: the watched ``kube_cluster`` map and the static
  clusters, over the names that changed (or everything). Builds :class:`~agent.reconcile.Candidate` s
  (label results combined in, fingerprints cached), decides which label runners run, and asks
  :func:`agent.reconcile.plan` what to serve;
* :meth:`ClusterTable.connected` / :meth:`ClusterTable.connect_failed` — the outcome of a :class:`Connect`;
* :meth:`ClusterTable.labels_ready` / :meth:`ClusterTable.labels_changed` — a label runner's first results
  and later changes;
* :meth:`ClusterTable.retry_due` — the retry timer for failed clusters fired (:meth:`retry_delay` says
  when it should);
* :meth:`ClusterTable.stopping` — the agent shuts down.

Actions: :class:`StartLabels`, :class:`StopLabels`, :class:`Connect` (register, or update with a new
connection), :class:`Refresh` (update on the same connection), :class:`Disconnect` (unregister),
:class:`Announce` (the heartbeat changed), :class:`ReconcileSoon` (a pass over one name is wanted) and
:class:`Warn` (a line for the log).

Invariants:

- A cluster whose label commands have not produced their first results is *pending*: not registered yet
  (a registered one keeps its registration until the new results are in).
- Label commands run only for clusters that could match the ``resources`` selectors at all
  (``labels.could_match``) — registered or not, because a label that starts matching must register it.
- A failed registration registers nothing and is retried (:meth:`retry_due`); a failed update keeps the
  old registration. ``failed`` holds the last error per cluster for display, and forgets it once it no
  longer describes anything (deleted, served as desired, or no longer wanted).
- Static clusters always win a name clash and are never label-matched (see ``agent.reconcile``).
- ``served`` is exactly what the agent serves once every :class:`Connect` outcome has been reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.label_commands import LabelCommandPolicy
from agent.reconcile import Candidate, Register, Unregister, Update, plan
from labels import combine, could_match, matches_any
from labels.runner import CommandSpec
from registry.core import codec
from registry.core.resources import CommandLabel, KubeCluster

Specs = tuple[CommandSpec, ...]

REASON_STOPPING = "agent stopping"

# How often registrations that failed (bad kubeconfig, unreachable API) are retried. Teleport waits 2 min;
# a shorter wait makes a fixed kubeconfig show up sooner and costs one cheap attempt per cluster.
RETRY_INTERVAL = 30.0


# ------------------------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class StartLabels:
    """Start a label runner for ``name`` (report :meth:`ClusterTable.labels_ready` when it has results)."""

    name: str
    specs: Specs


@dataclass(frozen=True)
class StopLabels:
    name: str


@dataclass(frozen=True)
class Connect:
    """Build a connection for ``candidate`` and serve it (replacing the one serving ``replaces``, if any);
    report :meth:`ClusterTable.connected` or :meth:`ClusterTable.connect_failed`."""

    candidate: Candidate
    replaces: Candidate | None = None


@dataclass(frozen=True)
class Refresh:
    """The served cluster changed but its connection stays valid (same kubeconfig): serve ``new`` on it."""

    old: Candidate
    new: Candidate


@dataclass(frozen=True)
class Disconnect:
    name: str
    reason: str


@dataclass(frozen=True)
class Announce:
    """Something the heartbeat of ``name`` says changed."""

    name: str


@dataclass(frozen=True)
class ReconcileSoon:
    """A pass over ``name`` is wanted (coalesced by the agent's loop)."""

    name: str


@dataclass(frozen=True)
class Warn:
    message: str


Action = StartLabels | StopLabels | Connect | Refresh | Disconnect | Announce | ReconcileSoon | Warn


# -------------------------------------------------------------------------------------------- helpers


def fingerprint(cluster: KubeCluster) -> str:
    """Equality of everything that matters for serving, ignoring the store revision."""
    wire = codec.resource_to_dict(replace(cluster, metadata=replace(cluster.metadata, revision="")), with_secrets=True)
    return hashlib.sha256(json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def command_specs(dynamic: Mapping[str, CommandLabel], *, timeout: float, policy: LabelCommandPolicy) -> Specs:
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


def same_connection(old: Candidate, new: Candidate) -> bool:
    """Whether ``new`` can be served on ``old``'s connection (nothing the connection is built from changed)."""
    before: KubeCluster = old.payload
    after: KubeCluster = new.payload
    return before.kubeconfig == after.kubeconfig and before.allow_exec_plugins == after.allow_exec_plugins


@dataclass
class LabelsState:
    """One label runner as the table knows it: its specs, and its results once it has reported them."""

    specs: Specs
    ready: bool = False
    results: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- table


class ClusterTable:
    """What the agent serves, which label runners run, and what failed; see the module docstring."""

    def __init__(
        self,
        *,
        resources: Sequence[Mapping[str, Any]],
        label_timeout: float = 30.0,
        label_policy: LabelCommandPolicy | None = None,
    ) -> None:
        """``label_policy``: the programs kube_cluster dynamic labels may run (None: none at all)."""
        self.resources = tuple(resources)
        self.label_timeout = label_timeout
        self.label_policy = label_policy if label_policy is not None else LabelCommandPolicy((), ())
        self.served: dict[str, Candidate] = {}
        self.failed: dict[str, str] = {}
        self.labels: dict[str, LabelsState] = {}
        self._fingerprints: dict[str, tuple[str, str]] = {}  # name -> (revision, fingerprint)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches_any(self.resources, labels)

    def cached_fingerprints(self) -> int:
        """How many fingerprints are cached (one per cluster at most)."""
        return len(self._fingerprints)

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

    # -- a reconcile pass ---------------------------------------------------------------------------------

    def desired(
        self, watched: Mapping[str, KubeCluster], static: Sequence[KubeCluster], only: Collection[str] | None = None
    ) -> list[Action]:
        """One pass over ``only`` (names that changed) or, for None, over everything.

        The plan is keyed by name, so a pass over a subset decides exactly what a full pass would for those
        names; a create among 10,000 clusters costs one candidate, not 10,000. Label runner actions come
        first, then unregisters, updates and registers (``plan``'s order).
        """
        if only is not None:
            names = set(only)
            watched = {n: watched[n] for n in names if n in watched}
            static = [c for c in static if c.name in names]
            current: Mapping[str, Candidate] = {n: self.served[n] for n in names if n in self.served}
        else:
            current = dict(self.served)
            # A full pass follows a (re)list: revisions may have been reused by a registry that lost its
            # store, so cached fingerprints are not trusted across it.
            self._fingerprints.clear()
        wanted_labels: dict[str, Specs] = {}
        dynamic: list[Candidate] = []
        label_errors: set[str] = set()
        for name, cluster in watched.items():
            static_labels = cluster.static_labels()
            labels = static_labels
            if cluster.dynamic_labels and could_match(self.resources, static_labels, cluster.dynamic_labels.keys()):
                try:
                    specs = command_specs(cluster.dynamic_labels, timeout=self.label_timeout, policy=self.label_policy)
                except ValueError as err:
                    self.failed[name] = f"dynamic labels: {err}"
                    label_errors.add(name)
                    continue
                wanted_labels[name] = specs
                runner = self.labels.get(name)
                if runner is None or not runner.ready or runner.specs != specs:
                    if name in self.served:
                        dynamic.append(self.served[name])  # keep serving until the new results are in
                    continue  # pending: first results not in yet
                labels = combine(static_labels, runner.results)
            dynamic.append(Candidate(name, "dynamic", self._fingerprint(cluster), labels, payload=cluster))
        static_candidates = [
            Candidate(c.name, "static", self._fingerprint(c), c.static_labels(), payload=c) for c in static
        ]
        actions = self._sync_labels(wanted_labels, only)
        connecting: set[str] = set()
        for step in plan(current, static_candidates, dynamic, self.matches):
            if isinstance(step, Register):
                connecting.add(step.candidate.name)
                actions.append(Connect(step.candidate))
            elif isinstance(step, Update):
                if same_connection(step.old, step.new):
                    self.served[step.new.name] = step.new
                    actions.append(Refresh(step.old, step.new))
                else:
                    connecting.add(step.new.name)
                    actions.append(Connect(step.new, replaces=step.old))
            elif isinstance(step, Unregister):
                self.served.pop(step.name, None)
                actions.append(Disconnect(step.name, step.reason))
        self._forget_failures(only, dynamic, static_candidates, label_errors | connecting)
        return actions

    def _sync_labels(self, wanted: Mapping[str, Specs], scope: Collection[str] | None) -> list[Action]:
        """Stop unwanted runners (or those whose specs changed), start wanted ones — among ``scope``."""
        actions: list[Action] = []
        for name in list(self.labels) if scope is None else [n for n in scope if n in self.labels]:
            if wanted.get(name) != self.labels[name].specs:
                del self.labels[name]
                actions.append(StopLabels(name))
        for name, specs in wanted.items():
            if name not in self.labels:
                self.labels[name] = LabelsState(specs)
                actions.append(StartLabels(name, specs))
        return actions

    def _forget_failures(
        self,
        only: Collection[str] | None,
        dynamic: Sequence[Candidate],
        static: Sequence[Candidate],
        keep: Collection[str],
    ) -> None:
        """Drop recorded failures that no longer describe anything: the cluster was deleted, is served
        exactly as desired (a failed update was reverted), or no longer matches (nothing to retry).
        ``keep``: names whose failure this pass has just set, or whose connection outcome will say."""
        desired = {c.name: c for c in dynamic}
        desired.update((c.name, c) for c in static)
        for name in list(self.failed) if only is None else [n for n in only if n in self.failed]:
            if name in keep:
                continue
            candidate = desired.get(name)
            unwanted = (
                candidate is not None
                and name not in self.served
                and candidate.origin == "dynamic"
                and not self.matches(candidate.labels)
            )
            if candidate is None or self.served.get(name) == candidate or unwanted:
                del self.failed[name]

    # -- outcomes and other events ------------------------------------------------------------------------

    def connected(self, connect: Connect) -> list[Action]:
        """``connect`` succeeded: its candidate is served."""
        name = connect.candidate.name
        self.served[name] = connect.candidate
        self.failed.pop(name, None)
        return []

    def connect_failed(self, connect: Connect, message: str) -> list[Action]:
        """``connect`` failed with ``message``: nothing new is served (a replaced connection keeps serving)."""
        name = connect.candidate.name
        if connect.replaces is not None:
            # Teleport's rule: a failed update keeps the old registration serving.
            self.failed[name] = f"update failed (still serving the previous version): {message}"
            return [Warn(f"update of kube_cluster {name} failed, keeping the previous one: {message}")]
        repeated = self.failed.get(name) == message
        self.failed[name] = message
        return [] if repeated else [Warn(f"cannot register kube_cluster {name}: {message}")]

    def labels_ready(self, name: str, specs: Specs, results: Mapping[str, str]) -> list[Action]:
        """The runner started for ``specs`` has its first results."""
        runner = self.labels.get(name)
        if runner is None or runner.specs != specs:
            return []  # a runner stopped meanwhile
        runner.ready, runner.results = True, dict(results)
        return [ReconcileSoon(name)]

    def labels_changed(self, name: str, specs: Specs, results: Mapping[str, str]) -> list[Action]:
        """A label value of the runner started for ``specs`` changed (its first value included)."""
        runner = self.labels.get(name)
        if runner is None or runner.specs != specs:
            return []
        runner.results = dict(results)
        return [Announce(name), ReconcileSoon(name)]

    def retry_delay(self) -> float | None:
        """Seconds until failed clusters should be retried (None: nothing failed)."""
        return RETRY_INTERVAL if self.failed else None

    def retry_due(self) -> list[Action]:
        """The retry timer fired: a pass over every cluster that failed."""
        return [ReconcileSoon(name) for name in self.failed]

    def stopping(self) -> list[Action]:
        """The agent shuts down: unregister everything, stop every runner."""
        actions: list[Action] = [Disconnect(name, REASON_STOPPING) for name in self.served]
        actions.extend(StopLabels(name) for name in self.labels)
        self.served.clear()
        self.labels.clear()
        return actions

"""agent.state.ClusterTable, table-driven: each row is an initial table, one event, the actions the table
returns and the table it leaves behind. Pure: no trio, no network (the supervisor's own tests run the same
decisions with tasks, in tests/agent/test_clusters.py)."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import agent.state
from agent.label_commands import LabelCommandPolicy
from agent.reconcile import Candidate, Origin
from agent.state import (
    Action,
    Announce,
    ClusterTable,
    Connect,
    Disconnect,
    LabelsState,
    ReconcileSoon,
    Refresh,
    Specs,
    StartLabels,
    StopLabels,
    Warn,
    command_specs,
    fingerprint,
)
from labels import combine
from registry.core.resources import CommandLabel, KubeCluster, Metadata

PROD = [{"labels": {"env": "prod"}}]
POLICY = LabelCommandPolicy((), ())  # the table's default: every command refused (still a spec)


def kc(
    name: str,
    config: bytes = b"kubeconfig-1",
    revision: str = "",
    dynamic: Mapping[str, Sequence[str]] | None = None,
    **labels: str,
) -> KubeCluster:
    return KubeCluster(
        metadata=Metadata(name=name, labels=labels, revision=revision),
        kubeconfig=config,
        dynamic_labels={k: CommandLabel(command=tuple(v), period="1m") for k, v in (dynamic or {}).items()},
    )


def cand(cluster: KubeCluster, origin: Origin = "dynamic", results: Mapping[str, str] | None = None) -> Candidate:
    """The candidate the table builds for ``cluster`` (label results combined in)."""
    labels = combine(cluster.static_labels(), results or {})
    return Candidate(cluster.name, origin, fingerprint(cluster), labels, payload=cluster)


def specs(cluster: KubeCluster) -> Specs:
    return command_specs(cluster.dynamic_labels, timeout=30.0, policy=POLICY)


A = kc("a", env="prod")
A_GOLD = kc("a", env="prod", tier="gold")  # a label edit: same connection
A_ROTATED = kc("a", config=b"kubeconfig-2", env="prod")  # a new connection
A_DEV = kc("a", env="dev")
A_STATIC = kc("a", config=b"own", team="infra")
B = kc("b", env="prod")
S = kc("s", team="infra")
X = kc("x", dynamic={"env": ["print-env", "x"]})
X_EDITED = kc("x", dynamic={"env": ["print-env", "v2"]})
X_BROKEN = kc("x", dynamic={"env": []})  # no command: the specs cannot be built
X_NEVER = kc("x", dynamic={"region": ["print-region"]}, env="dev")  # env=dev can never match env=prod
SPECS_X = command_specs(X.dynamic_labels, timeout=30.0, policy=POLICY)
SPECS_X_NEVER = command_specs(X_NEVER.dynamic_labels, timeout=30.0, policy=POLICY)


@dataclass
class Given:
    served: list[Candidate] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    labels: dict[str, LabelsState] = field(default_factory=dict)

    def table(self) -> ClusterTable:
        table = ClusterTable(resources=PROD)
        table.served.update((c.name, c) for c in self.served)
        table.failed.update(self.failed)
        table.labels.update(self.labels)
        return table


@dataclass
class Row:
    id: str
    given: Given
    event: Callable[[ClusterTable], list[Action]]
    actions: list[Action]
    served: dict[str, Candidate]
    failed: dict[str, str] = field(default_factory=dict)
    ready: dict[str, bool] = field(default_factory=dict)  # label runners the table knows: name -> has results


def served(*cands: Candidate) -> dict[str, Candidate]:
    return {c.name: c for c in cands}


def ready(results: Mapping[str, str], state_specs: Specs = SPECS_X) -> LabelsState:
    return LabelsState(state_specs, ready=True, results=dict(results))


def pending(state_specs: Specs = SPECS_X) -> LabelsState:
    return LabelsState(state_specs)


ROWS = [
    # ---------------------------------------------------------------- a pass: which clusters are served
    Row("new matching cluster: connect", Given(), lambda t: t.desired({"a": A}, []), [Connect(cand(A))], {}),
    Row("new cluster that does not match: nothing", Given(), lambda t: t.desired({"a": A_DEV}, []), [], {}),
    Row(
        "served and unchanged: nothing",
        Given([cand(A)]),
        lambda t: t.desired({"a": A}, []),
        [],
        served(cand(A)),
    ),
    Row(
        "label edit, same kubeconfig: refresh on the same connection",
        Given([cand(A)]),
        lambda t: t.desired({"a": A_GOLD}, []),
        [Refresh(cand(A), cand(A_GOLD))],
        served(cand(A_GOLD)),
    ),
    Row(
        "rotated kubeconfig: connect anew, the old one serves until connected",
        Given([cand(A)]),
        lambda t: t.desired({"a": A_ROTATED}, []),
        [Connect(cand(A_ROTATED), replaces=cand(A))],
        served(cand(A)),
    ),
    Row(
        "labels stop matching: disconnect",
        Given([cand(A)]),
        lambda t: t.desired({"a": A_DEV}, []),
        [Disconnect("a", "labels no longer match")],
        {},
    ),
    Row(
        "deleted: disconnect",
        Given([cand(A), cand(B)]),
        lambda t: t.desired({"b": B}, []),
        [Disconnect("a", "deleted")],
        served(cand(B)),
    ),
    Row(
        "a pass over some names leaves the others alone",
        Given([cand(A), cand(B)]),
        lambda t: t.desired({}, [], only={"a"}),
        [Disconnect("a", "deleted")],
        served(cand(B)),
    ),
    Row(
        "static cluster: connect whatever the selectors say",
        Given(),
        lambda t: t.desired({}, [S]),
        [Connect(cand(S, "static"))],
        {},
    ),
    Row(
        "static cluster takes over a dynamic one's name",
        Given([cand(A)]),
        lambda t: t.desired({"a": A}, [A_STATIC]),
        [Connect(cand(A_STATIC, "static"), replaces=cand(A))],
        served(cand(A)),
    ),
    Row(
        "a resource never evicts a static cluster",
        Given([cand(A_STATIC, "static")]),
        lambda t: t.desired({"a": A}, [A_STATIC]),
        [],
        served(cand(A_STATIC, "static")),
    ),
    # --------------------------------------------------------------------------------- dynamic labels
    Row(
        "dynamic labels: start the runner, pending until its first results",
        Given(),
        lambda t: t.desired({"x": X}, []),
        [StartLabels("x", SPECS_X)],
        {},
        ready={"x": False},
    ),
    Row(
        "pending runner: nothing yet",
        Given(labels={"x": pending()}),
        lambda t: t.desired({"x": X}, []),
        [],
        {},
        ready={"x": False},
    ),
    Row(
        "first results match: connect",
        Given(labels={"x": ready({"env": "prod"})}),
        lambda t: t.desired({"x": X}, []),
        [Connect(cand(X, results={"env": "prod"}))],
        {},
        ready={"x": True},
    ),
    Row(
        "first results do not match: nothing, the runner keeps going",
        Given(labels={"x": ready({"env": "dev"})}),
        lambda t: t.desired({"x": X}, []),
        [],
        {},
        ready={"x": True},
    ),
    Row(
        "results stop matching: disconnect",
        Given([cand(X, results={"env": "prod"})], labels={"x": ready({"env": "dev"})}),
        lambda t: t.desired({"x": X}, []),
        [Disconnect("x", "labels no longer match")],
        {},
        ready={"x": True},
    ),
    Row(
        "edited command: restart the runner, keep serving until it reports",
        Given([cand(X, results={"env": "prod"})], labels={"x": ready({"env": "prod"})}),
        lambda t: t.desired({"x": X_EDITED}, []),
        [StopLabels("x"), StartLabels("x", specs(X_EDITED))],
        served(cand(X, results={"env": "prod"})),
        ready={"x": False},
    ),
    Row(
        "deleted: stop the runner",
        Given(labels={"x": pending()}),
        lambda t: t.desired({}, [], only={"x"}),
        [StopLabels("x")],
        {},
    ),
    Row(
        "can no longer match: stop the runner",
        Given(labels={"x": pending(SPECS_X_NEVER)}),
        lambda t: t.desired({"x": X_NEVER}, []),
        [StopLabels("x")],
        {},
    ),
    Row(
        "specs that cannot be built: a failure, and a served cluster goes",
        Given([cand(X, results={"env": "prod"})]),
        lambda t: t.desired({"x": X_BROKEN}, []),
        [Disconnect("x", "deleted")],
        {},
        failed={"x": 'dynamic labels: dynamic label "env": command must be a non-empty list of strings'},
    ),
    # ----------------------------------------------------------------------------- failures forgotten
    Row(
        "failed, then deleted: forgotten",
        Given(failed={"a": "boom"}),
        lambda t: t.desired({}, []),
        [],
        {},
    ),
    Row(
        "failed, then no longer matching: forgotten",
        Given(failed={"a": "boom"}),
        lambda t: t.desired({"a": A_DEV}, []),
        [],
        {},
    ),
    Row(
        "failed update reverted: forgotten",
        Given([cand(A)], failed={"a": "update failed (still serving the previous version): boom"}),
        lambda t: t.desired({"a": A}, []),
        [],
        served(cand(A)),
    ),
    Row(
        "failed and retried: kept until the outcome is known",
        Given(failed={"a": "boom"}),
        lambda t: t.desired({"a": A}, [], only={"a"}),
        [Connect(cand(A))],
        {},
        failed={"a": "boom"},
    ),
    Row(
        "failures outside the pass are kept",
        Given(failed={"gone": "boom"}),
        lambda t: t.desired({}, [], only={"other"}),
        [],
        {},
        failed={"gone": "boom"},
    ),
    # ------------------------------------------------------------------------------- connect outcomes
    Row(
        "connected: served, failure cleared",
        Given(failed={"a": "boom"}),
        lambda t: t.connected(Connect(cand(A))),
        [],
        served(cand(A)),
    ),
    Row(
        "reconnected: the new candidate is served",
        Given([cand(A)]),
        lambda t: t.connected(Connect(cand(A_ROTATED), replaces=cand(A))),
        [],
        served(cand(A_ROTATED)),
    ),
    Row(
        "registration failed: recorded and logged",
        Given(),
        lambda t: t.connect_failed(Connect(cand(A)), "boom"),
        [Warn("cannot register kube_cluster a: boom")],
        {},
        failed={"a": "boom"},
    ),
    Row(
        "registration failed again the same way: not logged again",
        Given(failed={"a": "boom"}),
        lambda t: t.connect_failed(Connect(cand(A)), "boom"),
        [],
        {},
        failed={"a": "boom"},
    ),
    Row(
        "update failed: the previous registration keeps serving",
        Given([cand(A)]),
        lambda t: t.connect_failed(Connect(cand(A_ROTATED), replaces=cand(A)), "boom"),
        [Warn("update of kube_cluster a failed, keeping the previous one: boom")],
        served(cand(A)),
        failed={"a": "update failed (still serving the previous version): boom"},
    ),
    # -------------------------------------------------------------------------------- runner events
    Row(
        "first results: a pass over the cluster",
        Given(labels={"x": pending()}),
        lambda t: t.labels_ready("x", SPECS_X, {"env": "prod"}),
        [ReconcileSoon("x")],
        {},
        ready={"x": True},
    ),
    Row(
        "first results of a runner since replaced: ignored",
        Given(labels={"x": pending(specs(X_EDITED))}),
        lambda t: t.labels_ready("x", SPECS_X, {"env": "prod"}),
        [],
        {},
        ready={"x": False},
    ),
    Row(
        "a value changed: heartbeat and a pass",
        Given(labels={"x": ready({"env": "prod"})}),
        lambda t: t.labels_changed("x", SPECS_X, {"env": "dev"}),
        [Announce("x"), ReconcileSoon("x")],
        {},
        ready={"x": True},
    ),
    Row(
        "a value changed on a stopped runner: ignored",
        Given(),
        lambda t: t.labels_changed("x", SPECS_X, {"env": "dev"}),
        [],
        {},
    ),
    # -------------------------------------------------------------------------------- retry and stop
    Row(
        "retry due: a pass over every failure",
        Given(failed={"a": "boom", "b": "bang"}),
        lambda t: t.retry_due(),
        [ReconcileSoon("a"), ReconcileSoon("b")],
        {},
        failed={"a": "boom", "b": "bang"},
    ),
    Row(
        "stopping: disconnect everything, stop every runner",
        Given([cand(A), cand(S, "static")], labels={"x": pending()}),
        lambda t: t.stopping(),
        [Disconnect("a", "agent stopping"), Disconnect("s", "agent stopping"), StopLabels("x")],
        {},
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_cluster_table(row: Row) -> None:
    table = row.given.table()
    assert row.event(table) == row.actions
    assert table.served == row.served
    assert {n: c.origin for n, c in table.served.items()} == {n: c.origin for n, c in row.served.items()}
    assert table.failed == row.failed
    assert {name: state.ready for name, state in table.labels.items()} == row.ready


def test_label_results_decide_the_candidate_labels() -> None:
    table = Given(labels={"x": ready({"env": "prod"})}).table()
    (action,) = table.desired({"x": X}, [])
    assert isinstance(action, Connect)
    assert action.candidate.labels == {"env": "prod"}
    table.labels_changed("x", SPECS_X, {"env": "dev"})
    assert table.labels["x"].results == {"env": "dev"}


@pytest.mark.parametrize(("failed", "delay"), [({}, None), ({"a": "boom"}, 30.0)])
def test_retry_delay(failed: dict[str, str], delay: float | None) -> None:
    assert Given(failed=failed).table().retry_delay() == delay


def test_a_full_pass_drops_cached_fingerprints_a_partial_one_keeps_them() -> None:
    table = ClusterTable(resources=PROD)
    table.desired({"a": kc("a", revision="1", env="prod")}, [])
    assert table.cached_fingerprints() == 1
    table.desired({"b": kc("b", revision="2", env="prod")}, [], only={"b"})
    assert table.cached_fingerprints() == 2
    table.desired({}, [])
    assert table.cached_fingerprints() == 0


def test_the_table_imports_no_io() -> None:
    tree = ast.parse(Path(agent.state.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name.split(".")[0] for name in imported} & {"trio", "httpx", "h11", "logging", "time"}

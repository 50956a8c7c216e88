"""Supervisor: which clusters an agent registers, updates and unregisters, and what it tells the announcer.

Seams: the supervisor's ``health_monitors`` and ``label_runners`` factories are the fakes in
``agentunit_fakes`` (no Kubernetes API is contacted, no label command runs, except in the last test, which
runs real ``echo`` commands on the real clock). ``KubeAPI`` is the real one: building it touches no network,
and it is what refuses some kubeconfigs (tls-server-name together with proxy-url).

What a user would notice if these broke: clusters their selectors do not name showing up in ``kube ls`` (or
named ones missing), clusters registered with labels their commands have not produced yet, a bad edit taking
a working cluster down, a static cluster displaced by a resource, stale failures in ``kube explain``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from agent.clusters import Supervisor
from agent.forward.context import served_clusters
from agent.heartbeat import ServiceInfo
from agent.label_commands import LabelCommandPolicy
from registry.core import codec
from registry.core.resources import KubeCluster, KubeServer
from tests.agent.agent_fakes import FakeAnnouncer, HealthMonitors, LabelBoard, cluster, kubeconfig, refused_kubeconfig

PROD = [{"labels": {"env": "prod"}}]
SERVICE = ServiceInfo(host_id="host-1", hostname="agent.example:3027", labels={"agent": "a1"}, commands={})
WALL = 1_700_000_000.0


@pytest.fixture
def board() -> LabelBoard:
    return LabelBoard()


class Agent:
    """The part of ``agent.service.Agent`` that drives a supervisor, with the watcher's map in the test's hands."""

    def __init__(self, nursery: trio.Nursery, resources: Sequence[Mapping[str, Any]], board: LabelBoard) -> None:
        self.announcer = FakeAnnouncer()
        self.monitors = HealthMonitors()
        self.supervisor = Supervisor(
            nursery,
            resources=resources,
            service=SERVICE,
            service_results=dict,
            announcer=self.announcer,
            wake=self._wake,
            health_interval=3600.0,
            label_runners=board.make,
            health_monitors=self.monitors,
        )
        self.watched: dict[str, KubeCluster] = {}
        self.static: list[KubeCluster] = []

    def _wake(self) -> None:
        """The agent's loop would wake up here; ``settle`` asks ``take_pending`` what for instead."""

    def put(self, *clusters: KubeCluster) -> None:
        for item in clusters:
            self.watched[item.name] = item

    def delete(self, name: str) -> None:
        del self.watched[name]

    async def settle(self, only: Collection[str] | None = None) -> None:
        """Reconcile like the agent's loop: over ``only`` (None: everything) plus the names label runners asked
        for, then again for whatever they ask for meanwhile, until nothing is pending."""
        pending = self.supervisor.take_pending()
        names = None if only is None or pending is None else set(only) | pending
        for _ in range(20):
            self.supervisor.reconcile(self.watched, self.static, names)
            await trio.testing.wait_all_tasks_blocked()
            names = self.supervisor.take_pending()
            if names is not None and not names:
                return
        raise AssertionError("the supervisor kept asking for reconciles")

    async def settle_pending(self) -> None:
        """A pass over only what label runners asked for (no watch event happened)."""
        await self.settle(only=())

    @property
    def served(self) -> set[str]:
        return set(self.supervisor.served)

    def heartbeat(self, name: str) -> KubeServer:
        model = codec.resource_from_dict(self.announcer.entries[name](WALL))
        assert isinstance(model, KubeServer)
        return model


def origin(agent: Agent, name: str) -> str:
    return agent.supervisor.current[name].origin


@asynccontextmanager
async def running(resources: Sequence[Mapping[str, Any]], board: LabelBoard) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        yield Agent(nursery, resources, board)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------- which clusters


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (PROD, {"prod-a", "prod-eu"}),
        ([{"labels": {"env": "prod", "region": "eu"}}], {"prod-eu"}),
        ([{"labels": {"env": "prod", "region": "eu"}}, {"labels": {"env": "dev"}}], {"prod-eu", "dev-b"}),
        ([{"labels": {"*": "*"}}], {"prod-a", "prod-eu", "dev-b", "bare"}),
        ([{"labels": {"env": ["^p.*$"]}}], {"prod-a", "prod-eu"}),
        ([], set()),
        ([{"labels": {}}], set()),
    ],
)
async def test_registers_exactly_the_clusters_the_selectors_name(
    board: LabelBoard, resources: list[dict[str, Any]], expected: set[str]
) -> None:
    async with running(resources, board) as agent:
        agent.put(
            cluster("prod-a", {"env": "prod"}),
            cluster("prod-eu", {"env": "prod", "region": "eu"}),
            cluster("dev-b", {"env": "dev"}),
            cluster("bare"),
        )
        await agent.settle()
        assert agent.served == expected
        assert set(agent.announcer.entries) == expected
        assert agent.monitors.running == len(expected)
        assert agent.supervisor.failed == {}


async def test_the_heartbeat_is_a_secret_free_copy_with_service_labels(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("a", {"env": "prod", "agent": "cluster-says"}))
        await agent.settle()
        server = agent.heartbeat("a")
        assert server.host_id == "host-1"
        assert server.hostname == "agent.example:3027"
        assert server.cluster.kubeconfig == b""
        assert server.cluster.static_labels() == {"env": "prod", "agent": "a1"}  # service labels win
        assert server.health.status == "unknown"
        assert server.metadata.expires is not None
        assert server.metadata.expires.timestamp() == WALL
        assert b"agentunit-token" not in repr(agent.announcer.entries["a"](WALL)).encode()


async def test_a_label_edit_that_stops_matching_unregisters_and_a_delete_too(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("a", {"env": "prod"}, revision=1), cluster("b", {"env": "prod"}, revision=2))
        await agent.settle()
        assert agent.served == {"a", "b"}

        agent.put(cluster("a", {"env": "staging"}, revision=3))
        await agent.settle()
        assert agent.served == {"b"}
        agent.delete("b")
        await agent.settle()
        assert agent.served == set()
        assert agent.announcer.actions("remove") == ["a", "b"]
        assert agent.monitors.running == 0

        agent.put(cluster("a", {"env": "prod"}, revision=4))  # matching again registers again
        await agent.settle()
        assert agent.served == {"a"}


async def test_an_update_with_the_same_kubeconfig_keeps_the_connection(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("a", {"env": "prod"}, revision=1))
        await agent.settle()
        agent.put(cluster("a", {"env": "prod", "tier": "gold"}, revision=2))
        await agent.settle()
        assert agent.heartbeat("a").cluster.static_labels()["tier"] == "gold"
        assert len(agent.monitors.made) == 1, "a label edit must not reconnect to the cluster"
        assert agent.announcer.log[-1] == ("touch", "a")

        agent.put(cluster("a", {"env": "prod"}, config=kubeconfig("rotated"), revision=3))
        await agent.settle()
        assert agent.supervisor.served["a"].cluster.kubeconfig == kubeconfig("rotated")
        assert len(agent.monitors.made) == 2
        assert agent.monitors.running == 1, "the old connection's monitor is stopped"


async def test_nothing_changes_nothing(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(*(cluster(f"c{i}", {"env": "prod" if i % 2 else "dev"}, revision=i) for i in range(40)))
        await agent.settle()
        before = list(agent.announcer.log)
        for _ in range(3):
            await agent.settle()
        await agent.settle(only=["c1", "c2", "not-there"])
        assert agent.announcer.log == before
        assert len(agent.monitors.made) == 20


# ---------------------------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (b"not a kubeconfig", "not a kubeconfig"),
        (b"# " + b"x" * (2 << 20), "the limit is 1048576"),
        (refused_kubeconfig(), "tls-server-name together with proxy-url"),
    ],
    ids=["garbage", "huge", "refused-by-kubeapi"],
)
async def test_failed_registrations_are_recorded_retried_and_cleared(
    board: LabelBoard, config: bytes, reason: str
) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("ok", {"env": "prod"}), cluster("bad", {"env": "prod"}, config=config))
        await agent.settle()
        assert agent.served == {"ok"}
        assert reason in agent.supervisor.failed["bad"].lower()
        assert "bad" not in agent.announcer.entries

        await agent.settle(only=["bad"])  # the agent's periodic retry
        assert agent.served == {"ok"}
        assert "bad" in agent.supervisor.failed

        agent.put(cluster("bad", {"env": "prod"}))  # fixed
        await agent.settle(only=["bad"])
        assert agent.served == {"ok", "bad"}
        assert agent.supervisor.failed == {}

        agent.put(cluster("bad", {"env": "prod"}, config=config, revision=9))
        agent.put(cluster("worse", {"env": "prod"}, config=config))
        await agent.settle()
        assert set(agent.supervisor.failed) == {"bad", "worse"}
        agent.delete("worse")
        await agent.settle(only=["worse"])
        assert set(agent.supervisor.failed) == {"bad"}, "a deleted cluster's failure is forgotten"


async def test_a_failed_update_keeps_the_previous_registration(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("a", {"env": "prod"}, revision=1))
        await agent.settle()

        agent.put(cluster("a", {"env": "prod"}, config=refused_kubeconfig(), revision=2))
        await agent.settle()
        assert agent.served == {"a"}
        assert agent.supervisor.served["a"].cluster.kubeconfig == kubeconfig()
        assert "a" in agent.announcer.entries
        assert agent.announcer.actions("remove") == []
        assert agent.monitors.running == 1
        assert "update failed" in agent.supervisor.failed["a"]
        assert "tls-server-name" in agent.supervisor.failed["a"]

        agent.put(cluster("a", {"env": "prod"}, config=kubeconfig("fixed"), revision=3))
        await agent.settle()
        assert agent.supervisor.served["a"].cluster.kubeconfig == kubeconfig("fixed")
        assert agent.supervisor.failed == {}


# --------------------------------------------------------------------------------------- dynamic labels


ENV = ("print-env",)


async def test_waits_for_the_first_label_results_before_registering(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("x", dynamic={"env": [*ENV, "x"]}))
        await agent.settle()
        assert agent.served == set(), "no labels yet: not registered, whatever the command will say"
        assert len(board.live()) == 1

        board.publish([*ENV, "x"], "prod")
        await agent.settle_pending()
        assert agent.served == {"x"}
        assert agent.heartbeat("x").cluster.dynamic_labels["env"].result == "prod"

        board.publish([*ENV, "x"], "dev")
        await agent.settle_pending()
        assert agent.served == set()
        assert len(board.live()) == 1, "the runner keeps going: the label may match again"
        board.publish([*ENV, "x"], "prod")
        await agent.settle_pending()
        assert agent.served == {"x"}


async def test_a_registered_cluster_stays_until_its_new_commands_report(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        board.publish([*ENV, "v1"], "prod")
        agent.put(cluster("x", dynamic={"env": [*ENV, "v1"]}, revision=1))
        await agent.settle()
        assert agent.served == {"x"}

        agent.put(cluster("x", dynamic={"env": [*ENV, "v2"]}, revision=2))  # the command was edited
        await agent.settle()
        assert agent.served == {"x"}
        assert [runner.specs[0].command for runner in board.live()] == [(*ENV, "v2")]

        board.publish([*ENV, "v2"], "dev")
        await agent.settle_pending()
        assert agent.served == set()


async def test_the_forwarders_labels_follow_label_results_edits_and_deletes(board: LabelBoard) -> None:
    """The forwarder authorizes with the labels the heartbeat announces; they are built once and reused,
    but a new label result, an edit of the cluster or its removal shows on the very next lookup."""
    async with running([{"labels": {"*": "*"}}], board) as agent:
        board.publish([*ENV, "t"], "prod")
        agent.put(cluster("x", {"team": "a"}, dynamic={"env": [*ENV, "t"]}, revision=1))
        await agent.settle()
        lookup, _ = served_clusters(agent.supervisor)
        first = lookup("x")
        assert first is not None
        assert dict(first[1]) == {"team": "a", "agent": "a1", "env": "prod"}
        assert dict(first[1]) == agent.heartbeat("x").all_labels()
        again = lookup("x")
        assert again is not None and again[1] is first[1], "nothing changed: the same labels, not rebuilt"

        board.publish([*ENV, "t"], "dev")
        await agent.settle_pending()
        after_result = lookup("x")
        assert after_result is not None and after_result[1]["env"] == "dev"

        agent.put(cluster("x", {"team": "b"}, dynamic={"env": [*ENV, "t"]}, revision=2))
        await agent.settle()
        after_edit = lookup("x")
        assert after_edit is not None and after_edit[1]["team"] == "b"
        assert dict(after_edit[1]) == agent.heartbeat("x").all_labels()

        agent.delete("x")
        await agent.settle()
        assert lookup("x") is None


async def test_label_commands_run_only_for_clusters_that_could_match(board: LabelBoard) -> None:
    selectors = [{"labels": {"region": "us", "env": "prod"}}]
    async with running(selectors, board) as agent:
        agent.put(
            cluster("eu", {"region": "eu"}, dynamic={"env": [*ENV, "eu"]}),
            cluster("us", {"region": "us"}, dynamic={"env": [*ENV, "us"]}),
            cluster("plain", {"region": "us"}),
        )
        await agent.settle()
        assert [runner.specs[0].command for runner in board.live()] == [(*ENV, "us")]

        agent.put(cluster("us", {"region": "eu"}, dynamic={"env": [*ENV, "us"]}, revision=5))
        await agent.settle()
        assert board.live() == [], "a cluster that can no longer match stops running commands"


async def test_deleting_a_cluster_stops_its_label_commands(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("x", dynamic={"env": [*ENV, "x"]}))
        await agent.settle()
        assert len(board.live()) == 1
        agent.delete("x")
        await agent.settle(only=["x"])
        assert board.live() == []


# ----------------------------------------------------------------------------------------------- static


async def test_a_static_cluster_beats_a_dynamic_one_of_the_same_name(board: LabelBoard) -> None:
    own = kubeconfig("static")
    async with running(PROD, board) as agent:
        agent.put(cluster("shared", {"env": "prod"}), cluster("other", {"env": "prod"}))
        await agent.settle()
        assert origin(agent, "shared") == "dynamic"

        agent.static = [cluster("shared", {"team": "infra"}, config=own)]  # no selector names it: served anyway
        await agent.settle()
        assert origin(agent, "shared") == "static"
        assert agent.supervisor.served["shared"].cluster.kubeconfig == own

        agent.delete("shared")
        agent.put(cluster("shared", {"env": "prod"}, config=kubeconfig("dyn-2"), revision=7))
        await agent.settle()
        assert agent.supervisor.served["shared"].cluster.kubeconfig == own, "a resource never evicts it"
        agent.delete("shared")
        await agent.settle()
        assert agent.served == {"shared", "other"}


async def test_stop_all_unregisters_everything(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(cluster("a", {"env": "prod"}), cluster("x", dynamic={"env": [*ENV, "x"]}))
        board.publish([*ENV, "x"], "prod")
        await agent.settle()
        assert agent.served == {"a", "x"}
        await agent.supervisor.stop_all()
        await trio.testing.wait_all_tasks_blocked()
        assert agent.served == set()
        assert set(agent.announcer.actions("remove")) == {"a", "x"}
        assert agent.monitors.running == 0
        assert board.live() == []


# ------------------------------------------------------------------------------------------------ scale


async def test_a_thousand_clusters_in_one_pass(board: LabelBoard) -> None:
    async with running(PROD, board) as agent:
        agent.put(*(cluster(f"c{i:04}", {"env": "prod" if i % 2 else "dev"}, revision=i) for i in range(1000)))
        started = time.monotonic()
        await agent.settle()
        assert len(agent.served) == 500
        assert time.monotonic() - started < 5.0
        # One change among them is one registration, through a pass over that name only.
        agent.put(cluster("c0000", {"env": "prod"}, revision=2000))
        await agent.settle(only=["c0000"])
        assert len(agent.served) == 501
        assert agent.announcer.log[-1] == ("set", "c0000")


# ------------------------------------------------------------------------------------------ real labels


async def test_real_label_commands_decide_registration() -> None:
    """The real DynamicLabels with tiny commands, on the real clock with a deadline (no MockClock: waits on
    real processes would race an autojumping clock)."""
    woken = trio.Event()

    async with trio.open_nursery() as nursery:
        announcer = FakeAnnouncer()

        def wake() -> None:
            woken.set()

        supervisor = Supervisor(
            nursery,
            resources=PROD,
            service=SERVICE,
            service_results=dict,
            announcer=announcer,
            wake=wake,
            health_interval=3600.0,
            health_monitors=HealthMonitors(),
            label_policy=LabelCommandPolicy.from_entries([sys.executable], path_env=""),
        )
        py = sys.executable
        watched = {
            "yes": cluster("yes", dynamic={"env": [py, "-c", "print('prod')"]}),
            "no": cluster("no", dynamic={"env": [py, "-c", "print('dev')"]}),
        }
        with trio.fail_after(10):
            while True:
                supervisor.reconcile(watched, [])
                if "yes" in supervisor.served and supervisor.results_of("no"):
                    break
                await woken.wait()
                woken = trio.Event()
        assert set(supervisor.served) == {"yes"}
        assert supervisor.results_of("no") == {"env": "dev"}
        nursery.cancel_scope.cancel()

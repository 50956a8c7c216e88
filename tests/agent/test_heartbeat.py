"""Announcer: when kube_server heartbeats reach the registry, under trio's MockClock (autojump).

What a user would notice if these broke: a burst of label results hammering the registry, clusters expiring
from ``kube ls`` because re-announces stopped or came too late, a blip losing a heartbeat for good, removed
clusters lingering, an agent that hangs on shutdown, or a thousand connections from one agent.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio

from agent.heartbeat import Announcer
from registry.client import RegistryClient
from registry.core.errors import ConnectionProblem, KubeportError, NotFound, Timeout
from registry.host.metrics import AGENT_HEARTBEATS
from tests.agent.agent_fakes import FakeRegistryClient

WALL = 1_700_000_000.0  # the injected wall clock: expiry is wall time, scheduling is trio time
HOST = "host-1"


def server(name: str, state: dict[str, str] | None = None) -> Callable[[float], dict[str, Any]]:
    """A builder like the supervisor's: reads the current ``state`` (e.g. health) each time it is called."""

    def build(expires: float) -> dict[str, Any]:
        return {
            "kind": "kube_server",
            "metadata": {"name": name, "expires": expires},
            "spec": {"host_id": HOST, **(state or {})},
        }

    return build


@asynccontextmanager
async def announcing(client: FakeRegistryClient, *, ttl: float = 60.0, **kwargs: Any) -> AsyncIterator[Announcer]:
    announcer = Announcer(lambda: cast(RegistryClient, client), host_id=HOST, ttl=ttl, clock=lambda: WALL, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(announcer.serve)
        yield announcer
        nursery.cancel_scope.cancel()


async def settled(announcer: Announcer) -> None:
    with trio.fail_after(600):
        await announcer.idle.wait()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def times_of(client: FakeRegistryClient, name: str) -> list[float]:
    return [at for at, sent, _ in client.heartbeats if sent == name]


# ----------------------------------------------------------------------------------------- coalescing


async def test_a_burst_of_changes_is_one_put_per_name_within_the_flush_delay(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    async with announcing(client, flush_delay=0.05) as announcer:
        started = trio.current_time()
        announcer.set("a", server("a"))
        announcer.set("b", server("b"))
        for _ in range(3):  # label results trickling in over 30 ms
            for _ in range(20):
                announcer.touch("a")
            announcer.touch()
            announcer.touch("not-announced")  # unknown names are ignored
            await trio.sleep(0.01)
        await settled(announcer)
        assert sorted(client.heartbeat_names()) == ["a", "b"]
        assert all(at - started == pytest.approx(0.05) for at, _, _ in client.heartbeats)
        assert {body["metadata"]["expires"] for _, _, body in client.heartbeats} == {WALL + 60.0}
        assert announcer.statistics()["announces"] == 2


async def test_a_touch_sends_again_only_when_the_heartbeat_changed(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    health = {"health": "unknown"}
    async with announcing(client) as announcer:
        announcer.set("a", server("a", health))
        await settled(announcer)
        await trio.sleep(5)
        announcer.touch("a")  # nothing new to say: the registry is not bothered
        await settled(announcer)
        assert client.heartbeat_names() == ["a"]
        assert announcer.statistics()["unchanged_skipped"] == 1
        health["health"] = "healthy"
        announcer.touch("a")
        await settled(announcer)
        assert [body["spec"]["health"] for _, _, body in client.heartbeats] == ["unknown", "healthy"]


async def test_backlogs_are_sent_in_chunks_newest_first(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(call_delay=1.0)
    names = [f"c{i:03}" for i in range(100)]
    async with announcing(client, chunk=10, concurrency=10) as announcer:
        for name in names:
            announcer.set(name, server(name))
        await client.wait_for(lambda: client.in_flight == 10)
        announcer.set("new", server("new"))  # a cluster created while a start-up backlog is being sent
        await settled(announcer)
    sent = client.heartbeat_names()
    assert sorted(sent) == sorted([*names, "new"])
    rounds = [sorted(sent[i : i + 10]) for i in range(0, 30, 10)]
    assert rounds[0] == names[90:]
    assert "new" in rounds[1], "a fresh change must not wait behind the whole backlog"
    assert sent.index("new") < sent.index(names[0])


# ------------------------------------------------------------------------------------------- periodic


@pytest.mark.parametrize("ttl", [3.0, 30.0, 600.0])
async def test_entries_are_reannounced_before_they_expire(autojump_clock: trio.abc.Clock, ttl: float) -> None:
    client = FakeRegistryClient()
    flush = 0.05
    async with announcing(client, ttl=ttl, flush_delay=flush) as announcer:
        announcer.set("a", server("a"))
        await settled(announcer)
        await trio.sleep(ttl * 1.5)  # b arrives out of step with a
        announcer.set("b", server("b"))
        await trio.sleep(ttl * 10)
    period = ttl * 2 / 3
    for name in ("a", "b"):
        spacing = gaps(times_of(client, name))
        assert len(spacing) >= 14
        # Jittered within [6/7, 1] of 2/3 ttl (plus the flush delay): never late enough to expire.
        assert all(period * 6 / 7 - 1e-6 <= gap <= period + flush + 1e-6 for gap in spacing), spacing
        assert max(spacing) < ttl
    assert len({round(gap, 6) for gap in gaps(times_of(client, "a"))}) > 1, "re-announces must be jittered"


async def test_nothing_to_announce_means_no_traffic(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    async with announcing(client, ttl=30.0):
        await trio.sleep(3600)
    assert client.heartbeats == []
    assert client.deletes == []


# -------------------------------------------------------------------------------------------- failures


async def test_a_failed_announce_is_retried_with_growing_delays(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    client.fail_heartbeats["a"] = deque([ConnectionProblem("down"), Timeout("slow"), ConnectionProblem("down")])
    flush = 0.05
    async with announcing(client, flush_delay=flush) as announcer:
        announcer.set("a", server("a"))
        announcer.set("b", server("b"))
        await settled(announcer)
        assert client.heartbeat_names().count("b") == 1, "only what failed is sent again"
        attempts = times_of(client, "a")
        assert len(attempts) == 4
        for failures, gap in enumerate(gaps(attempts), start=1):
            ceiling = 0.5 * 2**failures
            assert flush + ceiling / 2 - 1e-6 <= gap <= flush + ceiling + 1e-6, (failures, gap)
        stats = announcer.statistics()
        assert stats["errors"] == 3
        assert stats["dirty"] == 0


async def test_a_change_made_while_a_send_is_in_flight_is_not_lost(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(call_delay=1.0)
    health = {"health": "unknown"}
    async with announcing(client) as announcer:
        announcer.set("a", server("a", health))
        await client.wait_for(lambda: client.in_flight == 1)
        health["health"] = "unhealthy"  # the health check finished while the first heartbeat was on the wire
        announcer.touch("a")
        await settled(announcer)
        assert [body["spec"]["health"] for _, _, body in client.heartbeats] == ["unknown", "unhealthy"]


# -------------------------------------------------------------------------------------------- removals


async def test_removed_names_are_deleted_once(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    async with announcing(client) as announcer:
        announcer.set("a", server("a"))
        announcer.set("b", server("b"))
        await settled(announcer)
        announcer.remove("a")
        announcer.remove("never-set")
        await settled(announcer)
        assert [(host, name) for _, host, name in client.deletes] == [(HOST, "a")]
        await trio.sleep(3600)
        assert "a" not in client.heartbeat_names()[2:], "a removed name must not be re-announced"
        assert client.delete_names() == ["a"]
        assert announcer.statistics()["entries"] == 1


@pytest.mark.parametrize(
    ("errors", "attempts"),
    [
        ([NotFound("already expired")], 1),  # gone already: fine, no retry
        ([ConnectionProblem("down")], 2),
        ([ConnectionProblem("down"), Timeout("slow")], 3),
    ],
)
async def test_failed_deletes_are_retried_but_not_found_is_success(
    autojump_clock: trio.abc.Clock, errors: list[KubeportError], attempts: int
) -> None:
    client = FakeRegistryClient()
    async with announcing(client) as announcer:
        announcer.set("a", server("a"))
        await settled(announcer)
        client.fail_deletes["a"] = deque(errors)
        announcer.remove("a")
        await settled(announcer)
        assert client.delete_names() == ["a"] * attempts
        assert announcer.statistics()["pending_deletes"] == 0


async def test_remove_then_set_again_before_the_flush_only_announces(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    async with announcing(client) as announcer:
        announcer.set("a", server("a"))
        await settled(announcer)
        announcer.remove("a")
        announcer.set("a", server("a"))
        await settled(announcer)
        assert client.delete_names() == []
        assert client.heartbeat_names() == ["a", "a"]


# -------------------------------------------------------------------------------------------- shutdown


async def test_shutdown_deletes_every_entry_even_when_the_registry_fails(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    async with announcing(client) as announcer:
        for name in ("a", "b", "c", "gone"):
            announcer.set(name, server(name))
        await settled(announcer)
        client.fail_deletes["gone"] = deque([ConnectionProblem("down")] * 100)
        announcer.remove("gone")  # its delete keeps failing: still pending at shutdown
        await client.wait_for(lambda: "gone" in client.delete_names())
        client.fail_deletes["b"] = deque([ConnectionProblem("down")])
        client.fail_deletes["c"] = deque([NotFound("expired")])
        announcer.set("unsent", server("unsent"))  # never reached the registry: deleted anyway
    # The context manager cancelled serve(): every name got its delete attempt.
    assert {"a", "b", "c", "gone", "unsent"} <= set(client.delete_names())
    shutdown = [name for at, _, name in client.deletes if name != "gone"]
    assert sorted(shutdown) == ["a", "b", "c", "unsent"]


async def test_shutdown_is_bounded_when_the_registry_hangs(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    async with trio.open_nursery() as nursery:
        announcer = Announcer(lambda: cast(RegistryClient, client), host_id=HOST, ttl=60.0, clock=lambda: WALL)
        await nursery.start(announcer.serve)
        announcer.set("a", server("a"))
        announcer.set("b", server("b"))
        await settled(announcer)
        client.hang = {"a"}  # the registry never answers for a
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - cancelled_at == pytest.approx(5.0)
    assert sorted(client.delete_names()) == ["a", "b"]


# ----------------------------------------------------------------------------------------- concurrency


async def test_one_batch_request_per_round_and_a_refused_entry_is_retried_alone(
    autojump_clock: trio.abc.Clock,
) -> None:
    client = FakeRegistryClient()
    client.fail_heartbeats["c007"] = deque([NotFound('kube_cluster "c007" not found')])
    names = [f"c{i:03}" for i in range(300)]
    async with announcing(client) as announcer:
        for name in names:
            announcer.set(name, server(name))
        await settled(announcer)
        sizes = [len(call) for call in client.batch_calls]
        assert sizes[:2] == [256, 44]  # chunk=256 per round, one request each
        assert client.batch_calls[2:] == [["c007"]]  # only the refused entry went again
        assert sorted(set(client.heartbeat_names())) == names
        assert announcer.statistics()["announces"] == 300


async def test_a_failed_batch_request_retries_every_entry_of_it(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    client.batch_errors.append(ConnectionProblem("registry unreachable"))
    async with announcing(client) as announcer:
        announcer.set("a", server("a"))
        announcer.set("b", server("b"))
        await settled(announcer)
        assert client.batch_calls == [["a", "b"], ["a", "b"]]
        assert announcer.statistics()["errors"] == 2
        assert not announcer.failing  # the retry succeeded


async def test_failing_heartbeats_show_in_metrics_and_readiness(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient()
    failed = AGENT_HEARTBEATS.labels("failed")
    sent = AGENT_HEARTBEATS.labels("sent")
    failed_before, sent_before = failed._value.get(), sent._value.get()
    client.batch_errors.extend([ConnectionProblem("down")] * 3)
    async with announcing(client) as announcer:
        announcer.set("a", server("a"))
        await client.wait_for(lambda: len(client.batch_calls) >= 2)
        assert announcer.failing
        await settled(announcer)
        assert not announcer.failing
    assert failed._value.get() - failed_before == 3
    assert sent._value.get() - sent_before == 1


async def test_a_registry_without_the_batch_route_gets_one_request_per_entry(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(batch_route=False)
    async with announcing(client) as announcer:
        announcer.set("a", server("a"))
        await settled(announcer)
        announcer.set("b", server("b"))
        await settled(announcer)
        assert client.batch_calls == [["a"]]  # tried once, then never again
        assert client.heartbeat_names() == ["a", "b"]


async def test_at_most_concurrency_requests_are_in_flight(autojump_clock: trio.abc.Clock) -> None:
    client = FakeRegistryClient(call_delay=0.1, batch_route=False)  # one request per heartbeat
    names = [f"c{i:03}" for i in range(50)]
    async with trio.open_nursery() as nursery:
        announcer = Announcer(
            lambda: cast(RegistryClient, client), host_id=HOST, ttl=60.0, clock=lambda: WALL, concurrency=4
        )
        await nursery.start(announcer.serve)
        for name in names:
            announcer.set(name, server(name))
        await settled(announcer)
        assert sorted(client.heartbeat_names()) == names
        assert client.max_in_flight == 4
        client.max_in_flight = 0
        for name in names[:10]:
            announcer.remove(name)
        await settled(announcer)
        assert client.max_in_flight == 4
        client.max_in_flight = 0
        nursery.cancel_scope.cancel()
    assert client.max_in_flight == 4, "shutdown deletes share the same limit"
    assert sorted(client.delete_names()) == sorted(names[:10] + names[10:])

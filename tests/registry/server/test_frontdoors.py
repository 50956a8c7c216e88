"""registry.server.frontdoors: front doors announce themselves in the shared store; every registry lists the
live ones (what agents read from /v1/ping)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing

from registry.core.errors import ConnectionProblem
from registry.server.frontdoors import FRONTDOOR_KIND, MAX_FRONT_DOORS, FrontDoorDirectory, live_addresses
from registry.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_two_registries_on_one_store_list_each_others_front_doors() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    first, second = FrontDoorDirectory(store, clock=clock), FrontDoorDirectory(store, clock=clock)
    a = await first.announce("kube-a.example.com:3026")
    await second.announce("kube-b.example.com:3026")
    await first.refresh()
    assert first.addresses == second.addresses == ("kube-a.example.com:3026", "kube-b.example.com:3026")
    assert first.known and second.known

    await first.withdraw(a)  # a clean shutdown deletes the record at once
    await second.refresh()
    assert list(second.addresses) == ["kube-b.example.com:3026"]


async def test_a_killed_registrys_front_door_expires_with_its_ttl() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    dead, alive = FrontDoorDirectory(store, clock=clock, ttl=30), FrontDoorDirectory(store, clock=clock, ttl=30)
    await dead.announce("dead:3026")  # never renewed or withdrawn again: killed
    await alive.announce("alive:3026")
    clock.now += 29
    await alive.refresh()
    assert alive.addresses == ("alive:3026", "dead:3026")
    clock.now += 2
    await alive.refresh()
    assert list(alive.addresses) == ["alive:3026"]


async def test_a_failing_store_keeps_the_last_list_and_the_own_front_door() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    other = FrontDoorDirectory(store, clock=clock)
    await other.announce("other:3026")
    mine = FrontDoorDirectory(store, clock=clock)
    await mine.announce("mine:3026")

    async def broken(*_: Any, **__: Any) -> Any:
        raise ConnectionProblem("etcd is down")

    store.list = broken  # type: ignore[method-assign]
    await mine.refresh()
    assert mine.addresses == ("mine:3026", "other:3026")
    assert mine.statistics()["failures_total"] == 1


async def test_until_the_store_was_read_ping_lists_no_front_doors() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)

    async def broken(*_: Any, **__: Any) -> Any:
        raise ConnectionProblem("etcd is down")

    store.list = broken  # type: ignore[method-assign]
    directory = FrontDoorDirectory(store, clock=clock)
    await directory.announce("mine:3026")
    assert not directory.known  # a partial list must not make agents drop tunnels to other front doors


async def test_serve_renews_the_record_and_withdraws_it_on_shutdown(autojump_clock: trio.abc.Clock) -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    directory = FrontDoorDirectory(store, clock=clock, ttl=30)
    async with trio.open_nursery() as nursery:
        await nursery.start(directory.serve)
        door = await directory.announce("mine:3026")
        first = (await store.get(FRONTDOOR_KIND, door)).expires
        clock.now += 10
        await trio.sleep(directory.interval + 0.1)
        assert (await store.get(FRONTDOOR_KIND, door)).expires == pytest.approx((first or 0) + 10)
        nursery.cancel_scope.cancel()
    assert await store.list(FRONTDOOR_KIND) == []


async def test_a_new_front_door_is_listed_by_every_registry_at_once() -> None:
    """No waiting for the next tick (10 s): each directory watches the records."""
    store = MemoryStore()
    first, second = FrontDoorDirectory(store, clock=time.time), FrontDoorDirectory(store, clock=time.time)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        await nursery.start(second.serve)
        door = await second.announce("new:3026")
        await trio.testing.wait_all_tasks_blocked()
        assert first.addresses == ("new:3026",)
        await second.withdraw(door)
        await trio.testing.wait_all_tasks_blocked()
        assert not first.addresses
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "value",
    [
        None,
        "kube:3026",
        [],
        {},
        {"addr": 3026},
        {"addr": ""},
        {"addr": "no-port"},
        {"addr": "kube:0"},
        {"addr": "https://kube:3026"},
        {"addr": "a b:3026"},
        {"addr": "kube:3026\nx"},
        {"addr": "x" * 10_000 + ":3026"},
        {"addr": ["kube:3026"]},
    ],
)
def test_malformed_records_are_never_listed(value: object) -> None:
    assert live_addresses([value, {"addr": "good:3026"}]) == ("good:3026",)


def test_the_list_is_sorted_deduplicated_capped_and_keeps_the_own_front_door() -> None:
    many = [{"addr": f"door-{i:04d}:3026"} for i in range(1000)] + [{"addr": "door-0001:3026"}]
    listed = live_addresses(many, own=["zzz-mine:3026"])
    assert len(listed) == MAX_FRONT_DOORS
    assert "zzz-mine:3026" in listed
    assert list(listed) == sorted(set(listed))

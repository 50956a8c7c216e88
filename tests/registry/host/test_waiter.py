"""registry.host.waiter: one task's parking place (wake, cancellation, a second waiter refused)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from registry.host.waiter import Waiter, park, unpark


async def test_a_parked_task_runs_on_unpark_and_a_wake_with_nobody_waiting_is_not_remembered() -> None:
    waiter = Waiter()
    waiter.unpark_all()  # nobody waits: nothing happens, nothing is remembered
    woken = trio.Event()

    async def wait() -> None:
        await waiter.park()
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert waiter.waiting and not woken.is_set()
        waiter.unpark_all()
        await woken.wait()
    assert not waiter.waiting


async def test_a_cancelled_waiter_frees_its_slot_and_a_second_waiter_is_refused() -> None:
    waiter = Waiter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter.park)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await waiter.park()
        nursery.cancel_scope.cancel()
    assert not waiter.waiting
    with trio.move_on_after(0):  # the slot is free again: parking works (and is cancellable)
        await waiter.park()
    assert not waiter.waiting


async def test_keyed_slots_wake_only_their_key_and_cancellation_frees_the_key() -> None:
    slots: dict[object, trio.lowlevel.Task] = {}
    woken: list[int] = []

    async def wait(key: int) -> None:
        await park(slots, key)
        woken.append(key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, 1)
        nursery.start_soon(wait, 2)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await park(slots, 1)
        unpark(slots, 2)
        unpark(slots, 3)  # nobody waits for 3
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [2] and list(slots) == [1]
        nursery.cancel_scope.cancel()
    assert slots == {} and woken == [2]

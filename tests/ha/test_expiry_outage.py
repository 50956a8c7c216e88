"""Regression (found while reading the expiry path for the fault tests): an etcd outage ended expiry for good.

``serve_expiry`` treated every ConnectionProblem as "the store is closed" and returned. The etcd store raises
ConnectionProblem when etcd stays unreachable past its client's retry window (10 s), so one such outage
during a sweep stopped this registry from ever expiring heartbeats again (stale clusters listed for ever).
Now only StoreClosed ends the loop; any other failure is logged and retried at the next tick.

A MemoryStore whose first sweeps fail as an unreachable etcd would, and trio's MockClock.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from registry.core.errors import ConnectionProblem
from registry.store import MemoryStore, StoreClosed, serve_expiry


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class UnreachableForAWhile(MemoryStore):
    """``expire`` fails ``outages`` times as an etcd nobody can reach, then works."""

    def __init__(self, outages: int, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.outages = outages

    async def expire(self) -> int:
        if self.outages:
            self.outages -= 1
            raise ConnectionProblem("etcd is unreachable (http://127.0.0.1:2379): no leader")
        return await super().expire()


async def test_expiry_goes_on_after_etcd_was_unreachable(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = UnreachableForAWhile(outages=3, clock=clock)
    await store.create("kube_server", "h/stale", {}, expires=clock.now + 5)
    clock.now += 10
    with trio.fail_after(30):  # virtual seconds
        async with trio.open_nursery() as nursery, store.watch(["kube_server"]) as events:
            await nursery.start(serve_expiry, store)
            event = await anext(events)
            assert (event.type, event.record.name) == ("DELETE", "h/stale")
            nursery.cancel_scope.cancel()
    assert store.outages == 0
    assert len([r for r in caplog.records if "expiry sweep failed" in r.getMessage()]) == 3
    await store.aclose()


async def test_a_closed_store_says_so() -> None:
    store = MemoryStore()
    await store.aclose()
    with pytest.raises(StoreClosed):
        await store.expire()
    assert issubclass(StoreClosed, ConnectionProblem)  # callers that catch ConnectionProblem still do

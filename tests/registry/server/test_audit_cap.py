"""The audit cap without a COUNT every few writes (``Registry._audit_written``): each registry keeps an estimate of
the audit rows from its own writes and trims, and counts the table only when the estimate passes the cap, after
a quarter of the room its last count left, or once ``AUDIT_RECOUNT_INTERVAL`` has passed. Deletions are decided
on a fresh count only, so expiry or another replica's trims never make a registry delete rows the cap allows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from registry.core.identity import CertAuthority, Identity
from registry.server.authz import Caller
from registry.server.service import AUDIT_KIND, AUDIT_RECOUNT_INTERVAL, AUDIT_RETENTION, Registry
from registry.store import Record, Store
from registry.store._common import BaseStore
from tests.registry.store.store_helpers import BACKENDS, FakeClock, open_backend

AGENT = Caller(identity=Identity(name="node-h1", kind="agent", roles=("Kube",), host_id="h1"))


class CountingStore:
    """A store (any backend) that counts the COUNT queries of the audit kind and the rows trims delete."""

    def __init__(self, store: BaseStore) -> None:
        self.store = store
        self.counts = 0
        self.trimmed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def count(self, kind: str) -> int:
        self.counts += kind == AUDIT_KIND
        return await self.store.count(kind)

    async def delete_many(self, kind: str, names: Sequence[str]) -> list[Record]:
        if kind == AUDIT_KIND:
            self.trimmed += len(names)
        return await self.store.delete_many(kind, names)


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[CountingStore, FakeClock]]:
    clock = FakeClock()
    store = await open_backend(request.param, tmp_path, clock=clock)
    try:
        yield CountingStore(store), clock
    finally:
        await store.aclose()


def registry(store: CountingStore, clock: FakeClock, cap: int) -> Registry:
    ca = CertAuthority.generate("test", now=datetime.fromtimestamp(clock.now, tz=UTC))
    return Registry(cast(Store, store), ca, cluster_name="test", clock=clock, max_audit_events=cap)


def events(start: int, count: int) -> list[dict[str, Any]]:
    return [{"event": "kube.request", "path": f"/p{n}", "status": 200} for n in range(start, start + count)]


async def paths(store: CountingStore) -> list[str]:
    return [r.value["path"] for r in await store.list(AUDIT_KIND)]


async def test_one_registry_never_leaves_more_than_the_cap_and_deletes_the_oldest(
    backend: tuple[CountingStore, FakeClock],
) -> None:
    store, clock = backend
    reg = registry(store, clock, cap=300)
    written = 0
    for size in [1, 7, 150, 3, 75, 149, 1, 1, 36, 150, 150, 19] * 2:
        await reg.record_agent_events(AGENT, events(written, size))
        written += size
        rows = await store.count(AUDIT_KIND)
        assert rows <= 300, f"{rows} rows after {written} events"
    kept = await paths(store)
    assert kept == [f"/p{n}" for n in range(written - len(kept), written)], "the newest are kept, in order"
    assert len(kept) >= 300 - 300 // 50, "a trim goes to the cap less its headroom, no lower"


async def test_the_count_runs_a_bounded_number_of_times_per_events_written(tmp_path: Path) -> None:
    clock = FakeClock()
    store = CountingStore(await open_backend("memory", tmp_path, clock=clock))  # the registry's logic: any store
    cap = 10_000  # headroom 200
    reg = registry(store, clock, cap=cap)
    written = 0
    while written < cap:  # growing: counts at ever smaller fractions of the room left
        await reg.record_agent_events(AGENT, events(written, 100))
        written += 100
    assert store.counts <= 25, f"{store.counts} counts while growing to the cap"
    growing = store.counts
    while written < 3 * cap:  # at the cap: about one count per headroom of writes
        await reg.record_agent_events(AGENT, events(written, 100))
        written += 100
        if written % 1000 == 0:
            assert await store.count(AUDIT_KIND) <= cap
            store.counts -= 1  # the test's own
    steady = store.counts - growing
    assert steady <= 2 * cap // 200 + 2, f"{steady} counts for {2 * cap} events at the cap"
    assert (await paths(store))[-1] == f"/p{written - 1}"


async def test_the_timer_counts_again_and_sees_rows_written_by_others(backend: tuple[CountingStore, FakeClock]) -> None:
    store, clock = backend
    reg = registry(store, clock, cap=1000)
    await reg.record_agent_events(AGENT, events(0, 10))
    assert store.counts == 1  # the first write counts: nothing is known yet
    other = registry(store, clock, cap=1000)
    for start in range(10, 1300, 10):  # another registry writes behind this one's back (and trims)
        await other.record_agent_events(AGENT, events(start, 10))
    store.counts = 0
    await reg.record_agent_events(AGENT, events(1300, 10))
    assert store.counts == 0, "within the interval the estimate is trusted"
    clock.now += AUDIT_RECOUNT_INTERVAL
    await reg.record_agent_events(AGENT, events(1310, 10))
    assert store.counts == 1
    assert await store.count(AUDIT_KIND) <= 1000


async def test_two_registries_on_one_store_keep_the_documented_bound(backend: tuple[CountingStore, FakeClock]) -> None:
    store, clock = backend
    cap, batch = 300, 15
    first, second = registry(store, clock, cap), registry(store, clock, cap)
    # Each writes at most max(headroom, room / 4) + a batch between its counts; the other's estimate misses that.
    bound = cap + max(cap // 50, cap // 4) + batch
    written = 0
    for turn in range(120):
        reg = first if turn % 3 else second  # uneven shares
        await reg.record_agent_events(AGENT, events(written, batch))
        written += batch
        assert await store.count(AUDIT_KIND) <= bound
        if turn % 30 == 29:
            clock.now += 1.0  # time passes; the recount interval does too, over the run
    clock.now += AUDIT_RECOUNT_INTERVAL
    for reg in (first, second):  # once both have counted again, the cap holds
        await reg.record_agent_events(AGENT, events(written, 1))
        written += 1
    assert await store.count(AUDIT_KIND) <= cap
    kept = await paths(store)
    assert kept == [f"/p{n}" for n in range(written - len(kept), written)], "the oldest went first"


async def test_rows_that_expired_are_not_counted_and_no_live_row_is_trimmed_for_them(
    backend: tuple[CountingStore, FakeClock],
) -> None:
    store, clock = backend
    reg = registry(store, clock, cap=100)
    for start in range(0, 100, 20):
        await reg.record_agent_events(AGENT, events(start, 20))
    assert await store.count(AUDIT_KIND) == 100 and store.trimmed == 0
    clock.now += AUDIT_RETENTION + 1  # every row expires; the estimate still says 100
    assert await store.expire() == 100
    await reg.record_agent_events(AGENT, events(100, 60))  # the estimate passes the cap: counted, not trimmed
    assert store.trimmed == 0
    assert await paths(store) == [f"/p{n}" for n in range(100, 160)]
    await reg.record_agent_events(AGENT, events(160, 60))  # 120 live rows now: trimmed to the cap or below
    kept = await paths(store)
    assert 100 - 100 // 50 <= len(kept) <= 100 and kept[-1] == "/p219"

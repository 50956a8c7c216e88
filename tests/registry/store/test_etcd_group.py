"""etcd group commit: concurrent writes of one registry share one snapshot read and one etcd txn, and each
still gets its own outcome, revision and watch event; a failing op fails alone; a group etcd finds too large
is split; a cancelled write is withdrawn or finished, never half-known; two registries grouping at once
still make one gap-free revision order."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.lowlevel

from registry.core.errors import AlreadyExists, CompareFailed, ConnectionProblem, NotFound, TooLarge
from registry.store.etcd import EtcdStore
from registry.store.etcd_client import TxnResult
from registry.store.etcd_seal import generate_key
from tests.fakes.etcd_server import EtcdServer, shared_etcd, unique_prefix
from tests.registry.store.store_helpers import cluster, revisions, take

K = "kube_cluster"


@pytest.fixture
def etcd() -> EtcdServer:
    return shared_etcd()


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[EtcdStore]:
    s = await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix())
    async with s:
        yield s


def count_writes(store: EtcdStore) -> list[int]:
    """Record the number of success ops of every guarded txn (a write; snapshot reads have no compare)."""
    real = store._client.txn
    writes: list[int] = []

    async def counting(compare: Any, success: Any, failure: Any = (), **kw: Any) -> TxnResult:
        if compare and compare[0]["key"] == real_key:
            writes.append(len(success))
        return await real(compare, success, failure, **kw)

    real_key = base64.b64encode(store._rev_key).decode()
    store._client.txn = counting  # type: ignore[method-assign]
    return writes


async def wait_queued(store: EtcdStore, count: int) -> None:
    with trio.fail_after(5):
        while len(store._queue.pending) < count:
            await trio.lowlevel.checkpoint()


async def test_concurrent_writes_share_one_txn_each_with_its_own_revision(store: EtcdStore) -> None:
    writes = count_writes(store)
    results: dict[str, int] = {}

    async def create(name: str) -> None:
        results[name] = (await store.create(K, name, cluster(n=name))).revision

    async with store.watch([K], since=0) as events:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(create, f"c{i}")
        seen = await take(events, 40)
    assert sorted(results.values()) == list(range(1, 41))  # gapless, one each
    assert revisions(seen) == list(range(1, 41))  # every event once, in revision order
    assert {e.record.name: e.record.revision for e in seen} == results
    assert len(writes) < 40, f"{len(writes)} etcd txns for 40 concurrent writes: no grouping"
    assert len(await store.list(K)) == 40 and await store.revision() == 40


async def test_a_write_queued_one_scheduler_pass_later_joins_the_group(store: EtcdStore) -> None:
    """The lock holder lets the scheduler run once before it takes the group: a request handler that
    becomes runnable as the first write takes the lock (an API create still being read) queues its write
    into the same txn instead of waiting a whole etcd round trip. Without that pass the late write misses
    the group whenever the scheduler runs the holder first (half the time); ten trials in a row share."""
    writes = count_writes(store)
    for trial in range(10):

        async def late(name: str) -> None:
            await trio.lowlevel.checkpoint()  # runnable again in the pass the holder waits for
            await store.create(K, name, cluster(n=name))

        before = len(writes)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.create, K, f"first-{trial}", cluster(n=f"first-{trial}"))
            nursery.start_soon(late, f"late-{trial}")
        assert len(writes) - before == 1, f"trial {trial}: {len(writes) - before} txns for two writes"
    assert len(await store.list(K)) == 20


async def test_every_caller_sees_its_own_write_when_it_returns(store: EtcdStore) -> None:
    async def create_and_read(name: str) -> None:
        record = await store.create(K, name, cluster())
        assert await store.revision() >= record.revision  # published here before the call returned
        assert (await store.get(K, name)).revision == record.revision

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(create_and_read, f"r{i}")


async def test_a_failing_op_fails_alone_and_consumes_no_revision(store: EtcdStore) -> None:
    await store.create(K, "taken", cluster())
    outcomes: dict[str, object] = {}

    async def attempt(label: str, coro_fn: Any) -> None:
        try:
            outcomes[label] = (await coro_fn()).revision
        except (AlreadyExists, NotFound, CompareFailed) as exc:
            outcomes[label] = type(exc)

    # Hold the lock so every op queues and the whole lot is committed as one group.
    async with store.watch([K], since=1) as events:
        async with trio.open_nursery() as nursery, store._lock:
            nursery.start_soon(attempt, "dup", lambda: store.create(K, "taken", cluster()))
            nursery.start_soon(attempt, "a", lambda: store.create(K, "a", cluster()))
            nursery.start_soon(attempt, "missing", lambda: store.update(K, "nope", cluster()))
            nursery.start_soon(attempt, "stale", lambda: store.update(K, "taken", cluster(), expected_revision=99))
            nursery.start_soon(attempt, "a-again", lambda: store.create(K, "a", cluster()))  # sees the first "a"
            nursery.start_soon(attempt, "b", lambda: store.create(K, "b", cluster()))
            nursery.start_soon(attempt, "batch", lambda: store.create_many(K, [("x", cluster()), ("taken", cluster())]))
            await wait_queued(store, 7)
        seen = await take(events, 2)
    assert (outcomes["dup"], outcomes["missing"], outcomes["stale"]) == (AlreadyExists, NotFound, CompareFailed)
    assert outcomes["batch"] is AlreadyExists  # an atomic batch fails whole, and alone
    first_a = [outcomes["a"], outcomes["a-again"]]
    assert first_a.count(AlreadyExists) == 1  # the second create of "a" sees the first one of the same group
    assert sorted(o for o in (*first_a, outcomes["b"]) if isinstance(o, int)) == [2, 3]
    assert revisions(seen) == [2, 3] and await store.revision() == 3
    assert sorted(r.name for r in await store.list(K)) == ["a", "b", "taken"]


async def test_a_write_cancelled_while_queued_is_never_written(store: EtcdStore) -> None:
    async with trio.open_nursery() as nursery, store._lock:
        cancel = trio.CancelScope()

        async def doomed() -> None:
            with cancel:
                await store.create(K, "doomed", cluster())

        nursery.start_soon(doomed)
        nursery.start_soon(store.create, K, "kept", cluster())
        await wait_queued(store, 2)
        cancel.cancel()
        with trio.fail_after(5):
            while len(store._queue.pending) > 1:
                await trio.lowlevel.checkpoint()
    assert [r.name for r in await store.list(K)] == ["kept"]
    assert await store.revision() == 1


async def test_a_write_cancelled_once_its_txn_is_in_flight_still_lands(store: EtcdStore) -> None:
    real = store._client.txn
    entered = trio.Event()
    release = trio.Event()

    async def slow(compare: Any, success: Any, failure: Any = (), **kw: Any) -> TxnResult:
        if compare:
            entered.set()
            await release.wait()
        return await real(compare, success, failure, **kw)

    store._client.txn = slow  # type: ignore[method-assign]

    async def doomed() -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            await store.create(K, "taken-then-cancelled", cluster())

    scope_box: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)
        with trio.fail_after(5):
            await entered.wait()
        scope_box[0].cancel()  # the txn is in flight: the write must finish, not vanish half-known
        release.set()
    assert (await store.get(K, "taken-then-cancelled")).revision == 1


async def test_a_group_failure_fails_every_op_and_writes_none(store: EtcdStore) -> None:
    real = store._client.txn
    broken = True

    async def failing(compare: Any, success: Any, failure: Any = (), **kw: Any) -> TxnResult:
        if compare and broken:
            raise ConnectionProblem("etcd: no leader")
        return await real(compare, success, failure, **kw)

    store._client.txn = failing  # type: ignore[method-assign]
    errors: list[str] = []

    async def attempt(name: str) -> None:
        try:
            await store.create(K, name, cluster())
        except ConnectionProblem as exc:
            errors.append(f"{name}: {exc}")

    async with trio.open_nursery() as nursery, store._lock:
        for name in ("x", "y", "z"):
            nursery.start_soon(attempt, name)
        await wait_queued(store, 3)
    assert len(errors) == 3 and all("no leader" in e for e in errors)
    broken = False
    assert await store.list(K) == [] and await store.revision() == 0
    assert (await store.create(K, "after", cluster())).revision == 1  # the store keeps working


async def test_a_group_etcd_finds_too_large_is_split_and_each_write_lands(store: EtcdStore) -> None:
    writes = count_writes(store)
    counted = store._client.txn

    async def small_requests(compare: Any, success: Any, failure: Any = (), **kw: Any) -> TxnResult:
        if compare and len(success) > 5:  # as etcd's --max-request-bytes would: at most two creates fit
            raise TooLarge("etcd refused the request as too large (its --max-request-bytes)")
        return await counted(compare, success, failure, **kw)

    store._client.txn = small_requests  # type: ignore[method-assign]
    results: dict[str, int] = {}

    async def create(name: str) -> None:
        results[name] = (await store.create(K, name, cluster())).revision

    async with trio.open_nursery() as nursery, store._lock:
        for i in range(6):
            nursery.start_soon(create, f"s{i}")
        await wait_queued(store, 6)
    assert sorted(results.values()) == list(range(1, 7))
    assert all(n <= 5 for n in writes) and len(writes) >= 3


async def test_two_registries_grouping_at_once_keep_one_gapless_order(etcd: EtcdServer) -> None:
    key, prefix = generate_key(), unique_prefix()
    a = await EtcdStore.open(etcd.url, key=key, prefix=prefix)
    b = await EtcdStore.open(etcd.url, key=key, prefix=prefix)
    async with a, b:
        results: dict[str, int] = {}

        async def create(store: EtcdStore, name: str) -> None:
            results[name] = (await store.create(K, name, cluster())).revision

        async with a.watch([K], since=0) as seen_a, b.watch([K], since=0) as seen_b:
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(create, a, f"a{i}")
                    nursery.start_soon(create, b, f"b{i}")
            events_a, events_b = await take(seen_a, 60), await take(seen_b, 60)
        assert sorted(results.values()) == list(range(1, 61))
        assert revisions(events_a) == revisions(events_b) == list(range(1, 61))
        assert [e.record.name for e in events_a] == [e.record.name for e in events_b]
        assert {e.record.name: e.record.revision for e in events_a} == results

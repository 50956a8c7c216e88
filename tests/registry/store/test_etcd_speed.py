"""The etcd store's speed mechanisms keep every store rule (issue 11 §3):

- auto-compaction runs in the background, in small txns, without the write lock: no writer waits for it,
  and a write planned against the old history floor is planned again instead of bringing a compacted
  history entry back.
- a create (every key new) goes out as ONE txn, without reading first: it plans against what this registry's
  last commit left and compares each key's absence; a wrong guess (another registry wrote, the floor moved,
  the key exists, an expired record is still there) is refused and answers the snapshot the write is then
  planned against as usual.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from registry.core.errors import AlreadyExists
from registry.store.etcd import EtcdStore, _due
from registry.store.etcd_client import TxnResult, b64, prefix_end
from registry.store.etcd_seal import generate_key
from tests.fakes.etcd_server import EtcdServer, shared_etcd, unique_prefix
from tests.registry.store.store_helpers import cluster, revisions, take, wait_until

Txn = Callable[..., Awaitable[TxnResult]]


@pytest.fixture
def etcd() -> EtcdServer:
    return shared_etcd()


async def _open(etcd: EtcdServer, **options: Any) -> EtcdStore:
    return await EtcdStore.open(etcd.url, key=generate_key(), prefix=unique_prefix(), **options)


def _is_read(compare: list[Any], ops: list[dict[str, Any]]) -> bool:
    return not compare and all("request_range" in op for op in ops)


# --- compaction off the writers' path ------------------------------------------------------------------------


async def test_auto_compaction_never_holds_up_a_writer(etcd: EtcdServer) -> None:
    store = await _open(etcd, max_history=5)
    async with store:
        real: Txn = store._client.txn
        gate = trio.Event()
        compacting = trio.Event()
        floor_key = b64(store._floor_key)

        async def slow_compaction(compare: list[Any], ops: list[dict[str, Any]], *args: Any, **kw: Any) -> TxnResult:
            if [c.get("key") for c in compare] == [floor_key]:  # only a compaction compares the floor alone
                compacting.set()
                await gate.wait()
            return await real(compare, ops, *args, **kw)

        store._client.txn = slow_compaction  # type: ignore[method-assign,assignment]
        with trio.fail_after(10):
            for n in range(30):  # over max_history + slack many times while the compaction hangs
                await store.put("kube_cluster", f"c{n % 3}", cluster(n=n))
            await compacting.wait()
            assert store.statistics()["history"] > 6  # not compacted yet: writes went on regardless
        gate.set()
        await wait_until(lambda: store.statistics()["history"] <= 6)
        assert [r.value["spec"]["n"] for r in await store.list("kube_cluster")] == [27, 28, 29]


async def test_a_write_planned_before_a_compaction_moved_the_floor_is_planned_again(etcd: EtcdServer) -> None:
    a = await _open(etcd)
    async with a:
        b = await EtcdStore.open(etcd.url, key=a._sealer._key, prefix=a.prefix)  # another registry
        async with b:
            await a.put("kube_cluster", "x", cluster(kubeconfig="secret-1"))  # revision 1
            for n in range(4):
                await a.put("kube_cluster", f"other{n}", cluster())  # revisions 2-5
            real_snapshot = a._snapshot
            compacted = False

            async def compaction_in_between(keys: Any) -> Any:
                nonlocal compacted
                snapshot = await real_snapshot(keys)
                if not compacted:
                    compacted = True
                    await b.compact(keep=0)  # the floor moves to 5: hist/1 (x's first version) is deleted
                return snapshot

            a._snapshot = compaction_in_between  # type: ignore[method-assign]
            # Planned against floor 0, this write would rewrite hist/1 without its secret (redaction).
            await a.put("kube_cluster", "x", cluster(kubeconfig="secret-2"))
            assert compacted
            kvs, *_ = await a._client.range(a._hist, prefix_end(a._hist))
            kept = sorted(int(kv.key[len(a._hist) :]) for kv in kvs)
            assert kept == [6]  # nothing at or below the floor came back
            assert (await a.get("kube_cluster", "x")).revision == 6


# --- the expiry index -------------------------------------------------------------------------------------------


def test_the_due_names_of_a_kind_are_found_without_walking_the_whole_expiry_heap() -> None:
    rng = random.Random(11)
    heap: list[tuple[float, int, str, str]] = []
    for n in range(5000):
        heapq.heappush(heap, (rng.uniform(0, 1000), n, rng.choice(["kube_server", "event"]), f"n{n % 4000}"))
    for now in (-1.0, 0.5, 10.0, 500.0, 2000.0):
        expected = sorted({name for expires, _, kind, name in heap if kind == "event" and expires <= now})
        assert _due(heap, "event", now) == expected
    assert _due([], "event", 5.0) == []


# --- a create goes out without a read first ----------------------------------------------------------------


def _count_txns(store: EtcdStore) -> list[str]:
    """Record each txn the store sends: "read" (no compare) or "write"."""
    real: Txn = store._client.txn
    seen: list[str] = []

    async def counting(compare: list[Any], ops: list[dict[str, Any]], *args: Any, **kw: Any) -> TxnResult:
        seen.append("read" if _is_read(compare, ops) else "write")
        return await real(compare, ops, *args, **kw)

    store._client.txn = counting  # type: ignore[method-assign,assignment]
    return seen


async def test_a_create_after_this_registrys_own_write_is_one_round_trip(etcd: EtcdServer) -> None:
    store = await _open(etcd)
    async with store:
        await store.create("kube_cluster", "first", cluster())  # learns the counter and the floor
        seen = _count_txns(store)
        record = await store.create("kube_cluster", "second", cluster())
        assert seen == ["write"]
        assert record.revision == 2 and record.created_revision == 2
        seen.clear()
        many = await store.create_many("kube_cluster", [(f"m{n:03d}", cluster()) for n in range(100)])
        assert seen == ["read", "write"]  # nested txns (over --max-txn-ops): the compares would not fit
        assert [r.revision for r in many] == list(range(3, 103))
        seen.clear()
        await store.update("kube_cluster", "second", cluster("prod"))  # needs the stored version: read first
        assert seen == ["read", "write"]
        assert (await store.get("kube_cluster", "second")).value == cluster("prod")


async def test_a_create_guessed_wrong_replans_on_the_refusals_snapshot(etcd: EtcdServer) -> None:
    key, prefix = generate_key(), unique_prefix()
    a = await EtcdStore.open(etcd.url, key=key, prefix=prefix)
    b = await EtcdStore.open(etcd.url, key=key, prefix=prefix)
    async with a, b:
        await a.create("kube_cluster", "a0", cluster())
        await b.create("kube_cluster", "b0", cluster())  # a's counter guess is stale now
        await b.create("kube_cluster", "taken", cluster())
        seen = _count_txns(a)
        record = await a.create("kube_cluster", "a1", cluster())
        assert seen == ["write", "write"]  # the refused guess answered the snapshot: no separate read
        assert record.revision == 4
        seen.clear()
        with pytest.raises(AlreadyExists):  # the key exists: the guess "absent" is refused, never written
            await a.create("kube_cluster", "taken", cluster("prod"))
        assert seen == ["write"]
        assert (await a.get("kube_cluster", "taken")).value == cluster()
        async with a.watch(["kube_cluster"], since=0) as events:
            got = await take(events, 4)
        assert revisions(got) == [1, 2, 3, 4]
        assert [e.record.name for e in got] == ["a0", "b0", "taken", "a1"]


async def test_a_create_over_an_expired_record_still_deletes_it_first(etcd: EtcdServer) -> None:
    now = [1000.0]
    store = await _open(etcd, clock=lambda: now[0])
    async with store:
        await store.create("kube_cluster", "old", cluster(), expires=1010.0)
        now[0] = 1020.0  # expired, not swept: the key is still in etcd
        record = await store.create("kube_cluster", "old", cluster("prod"))
        async with store.watch(["kube_cluster"], since=1) as events:
            got = await take(events, 2)
        assert [(e.type, e.record.revision) for e in got] == [("DELETE", 2), ("PUT", 3)]
        assert record.revision == 3 and record.created_revision == 3


async def test_a_create_after_a_compaction_moved_the_floor_keeps_history_whole(etcd: EtcdServer) -> None:
    store = await _open(etcd)
    async with store:
        for n in range(5):
            await store.create("kube_cluster", f"c{n}", cluster())
        await store.update("kube_cluster", "c4", cluster("prod"))  # c4's first entry is redacted history
        assert await store.compact(keep=2) == 4  # the floor moved after this registry's last write
        seen = _count_txns(store)
        record = await store.create("kube_cluster", "c5", cluster())
        assert seen == ["write", "write"] and record.revision == 7
        async with store.watch(["kube_cluster"], since=4) as events:
            got = await take(events, 3)
        assert revisions(got) == [5, 6, 7]


# --- the next lease bucket is granted ahead ------------------------------------------------------------------


async def test_a_write_entering_a_new_lease_bucket_finds_its_lease_granted(etcd: EtcdServer) -> None:
    now = [1_000_000.0]
    store = await _open(etcd, clock=lambda: now[0], lease_bucket=10.0, lease_grace=3600.0)
    async with store:
        real = store._client.lease_grant
        on_path: list[int] = []  # grants made by the writing task itself (a put commits in its caller's task)
        writer = trio.lowlevel.current_task()

        async def counting(ttl: int) -> tuple[int, int]:
            if trio.lowlevel.current_task() is writer:
                on_path.append(ttl)
            return await real(ttl)

        store._client.lease_grant = counting  # type: ignore[method-assign]
        await store.put("kube_server", "a", cluster(), expires=now[0] + 600)  # the first bucket: granted here
        assert len(on_path) == 1
        first = min(store._leases)
        await wait_until(lambda: first + 10 in store._leases)  # the following bucket, in the background
        now[0] += 10  # every expiry moved into that bucket
        await store.put("kube_server", "b", cluster(), expires=now[0] + 600)
        assert len(on_path) == 1  # no grant on this write's path
        assert {r.name for r in await store.list("kube_server")} == {"a", "b"}
        leases = await store._client.call("lease/leases", {})
        assert str(store._leases[first + 10]) in {entry["ID"] for entry in leases.get("leases", [])}

"""The etcd store's speed mechanisms keep every store rule (issue 11 §3):

- auto-compaction runs in the background, in small txns, without the write lock: no writer waits for it,
  and a write planned against the old history floor is planned again instead of bringing a compacted
  history entry back.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from registry.store.etcd import EtcdStore, _due
from registry.store.etcd_client import TxnResult, b64, prefix_end
from registry.store.etcd_seal import generate_key
from tests.fakes.etcd_server import EtcdServer, shared_etcd, unique_prefix
from tests.registry.store.store_helpers import cluster, wait_until

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

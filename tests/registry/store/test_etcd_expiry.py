"""Expiry with several registries on one etcd prefix: every registry sweeps, each expired record is ONE
DELETE in the store's history (one revision), and every registry's watchers see it exactly once. And
records an etcd lease removed while no registry was running get their DELETE when a registry opens the
prefix again, once, however many open it at the same time.

The sweeps race: each plans against a snapshot and commits a txn guarded by the revision counter, so the
loser re-reads, finds the record gone and writes nothing (``EtcdStore._commit``). Registries here are two
``EtcdStore`` instances on one prefix with one key file, as two ``registry start`` processes would be.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from registry.store._common import BaseStore
from registry.store.base import Event
from registry.store.etcd import EtcdStore
from registry.store.etcd_client import EtcdClient, prefix_end
from registry.store.etcd_seal import generate_key
from tests.fakes.etcd_server import shared_etcd, unique_prefix
from tests.registry.store.store_helpers import START, FakeClock, cluster, take

K = "kube_server"
COUNT = 40


async def drain(events: AsyncIterator[Event], *, quiet: float = 0.3) -> list[Event]:
    """Events that arrive until none has for ``quiet`` seconds (to prove there is no extra one)."""
    out: list[Event] = []
    while True:
        with trio.move_on_after(quiet) as idle:
            out.append(await anext(events))
        if idle.cancelled_caught:
            return out


@pytest.mark.parametrize("registries", [2, 3])
async def test_registries_racing_to_expire_record_each_delete_once(registries: int) -> None:
    server = shared_etcd()
    key, prefix, clock = generate_key(), unique_prefix(), FakeClock()
    async with AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(await EtcdStore.open(server.url, key=key, prefix=prefix, clock=clock))
            for _ in range(registries)
        ]
        watches = [await stack.enter_async_context(s.watch([K, "frontdoor"])) for s in stores]
        writer = stores[0]
        for n in range(COUNT):
            await (writer if n % 2 else stores[-1]).put(K, f"c{n:02d}", cluster(), expires=START + 10 + n / 100)
        await writer.put("frontdoor", "fd", {"addr": "a:1"}, expires=START + 10)
        before = await writer.revision()
        for events in watches:  # every registry has seen every heartbeat (its expiry index is fed by the watch)
            assert {e.type for e in await take(events, COUNT + 1, timeout=15)} == {"PUT"}

        clock.advance(60)
        removed: list[int] = []

        async def sweep(store: BaseStore) -> None:
            removed.append(await store.expire())

        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(sweep, store)
        assert sum(removed) == COUNT + 1  # each record removed by exactly one registry

        seen = []
        for events in watches:
            got = await take(events, COUNT + 1, timeout=15)
            got += await drain(events)
            seen.append([(e.type, e.record.kind, e.record.name, e.record.revision) for e in got])
        assert all(s == seen[0] for s in seen)  # every registry agrees on the events and their revisions
        assert len(seen[0]) == COUNT + 1 and {t for t, *_ in seen[0]} == {"DELETE"}
        assert sorted(name for _, _, name, _ in seen[0]) == sorted([f"c{n:02d}" for n in range(COUNT)] + ["fd"])
        assert [rev for *_, rev in seen[0]] == list(range(before + 1, before + COUNT + 2))
        for store in stores:
            assert await store.expire() == 0
            assert await store.list(K) == []
        # A watcher resuming from before the expiry, on any registry, replays the same DELETEs once.
        async with stores[-1].watch([K, "frontdoor"], since=before) as events:
            replay = await take(events, COUNT + 1)
            assert await drain(events) == []
        assert [(e.type, e.record.kind, e.record.name, e.record.revision) for e in replay] == seen[0]


async def lease_removed(client: EtcdClient, prefix: str, names: set[bytes], start_revision: int) -> None:
    """Wait (on etcd's own watch) until etcd has deleted the ``items/`` keys ``names`` (their leases ended)."""
    items = prefix.encode() + b"items/"
    left = set(names)
    async with client.watch(items, prefix_end(items), start_revision=start_revision) as events:
        with trio.fail_after(20):
            while left:
                _, batch = await anext(events)
                left -= {e.kv.key.removeprefix(items) for e in batch if e.type == "DELETE"}


@pytest.mark.parametrize("opening", [1, 3])
async def test_records_a_lease_removed_get_their_delete_when_registries_come_back(opening: int) -> None:
    server = shared_etcd()
    key, prefix = generate_key(), unique_prefix()
    options: dict[str, Any] = {"lease_bucket": 1.0, "lease_grace": 1.0}
    client = EtcdClient([server.url], retry_for=2.0)
    try:
        async with await EtcdStore.open(server.url, key=key, prefix=prefix, **options) as gone_registry:
            await gone_registry.put(K, "kept", cluster())  # no expiry: no lease
            await gone_registry.put(K, "renewed", cluster(), expires=time.time() + 3600)
            before = await gone_registry.revision()
            expired = time.time() + 0.2
            await gone_registry.put(K, "hb", cluster(env="prod"), expires=expired)
            await gone_registry.put("frontdoor", "fd", {"addr": "a:1"}, expires=expired)
            (counter,), *_ = await client.range(prefix.encode() + b"meta/revision")
        # every registry is gone: nobody sweeps, and etcd's leases remove the two keys without a store event
        await lease_removed(client, prefix, {b"kube_server/hb", b"frontdoor/fd"}, counter.mod_revision)

        async with AsyncExitStack() as stack:
            stores: list[BaseStore] = []

            async def come_back() -> None:
                store = await EtcdStore.open(server.url, key=key, prefix=prefix, **options)
                stores.append(await stack.enter_async_context(store))

            async with trio.open_nursery() as nursery:
                for _ in range(opening):
                    nursery.start_soon(come_back)
            for store in stores:
                assert await store.revision() == before + 4  # the two PUTs, then the two recorded DELETEs
                async with store.watch([K, "frontdoor"], since=before) as events:
                    got = await take(events, 4)
                    assert await drain(events) == []
                assert [(e.type, e.record.kind, e.record.name, e.record.revision) for e in got] == [
                    ("PUT", K, "hb", before + 1),
                    ("PUT", "frontdoor", "fd", before + 2),
                    ("DELETE", "frontdoor", "fd", before + 3),
                    ("DELETE", K, "hb", before + 4),
                ]
                assert got[3].record.value == cluster(env="prod")  # the last version
                assert sorted(r.name for r in await store.list(K)) == ["kept", "renewed"]
        # a later start finds nothing more to record
        async with await EtcdStore.open(server.url, key=key, prefix=prefix, **options) as again:
            assert await again.revision() == before + 4
    finally:
        await client.aclose()

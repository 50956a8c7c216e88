"""Expiry with several registries on one etcd prefix: every registry sweeps, each expired record is ONE
DELETE in the store's history (one revision), and every registry's watchers see it exactly once. And
records an etcd lease removed while no registry was running get their DELETE when a registry opens the
prefix again, once, however many open it at the same time; and the same for registries that kept running
while they could not reach etcd for longer than the lease grace: the check runs again once etcd is back,
before any write of theirs, and watchers resumed across the outage see each DELETE once.

The sweeps race: each plans against a snapshot and commits a txn guarded by the revision counter, so the
loser re-reads, finds the record gone and writes nothing (``EtcdStore._commit``). Registries here are two
``EtcdStore`` instances on one prefix with one key file, as two ``registry start`` processes would be.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

from registry.core.errors import ConnectionProblem
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


def cut_off(store: EtcdStore) -> trio.Event:
    """This registry can no longer reach etcd (etcd itself runs on, and its leases keep running out). The
    event is set once the registry's watchdog has noticed."""
    noticed = trio.Event()
    note = store._note_contact

    def noting(ok: bool) -> None:
        note(ok)
        if not ok:
            noticed.set()

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionProblem("etcd is unreachable (test partition)")

    def no_watch(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionProblem("etcd watch: unreachable (test partition)")

    store._note_contact = noting  # type: ignore[method-assign]
    store._client.call = unreachable  # type: ignore[method-assign]
    store._client.watch = no_watch  # type: ignore[method-assign]
    if store._kick_scope is not None:
        store._kick_scope.cancel()  # the feed's open watch breaks as a cut connection would
    return noticed


def reconnect(store: EtcdStore) -> None:
    for name in ("call", "watch"):
        vars(store._client).pop(name)  # the class's methods again


def summary(events: list[Event]) -> list[tuple[str, str, str, int]]:
    return [(e.type, e.record.kind, e.record.name, e.record.revision) for e in events]


@pytest.mark.parametrize(
    ("registries", "writes", "gap"),
    [
        (1, False, False),  # idle: the DELETEs come without any write, once the watchdog reaches etcd again
        (3, False, True),
        (3, True, False),  # every registry writes the moment etcd is back: the DELETEs still come first, once
        (3, True, True),
    ],
)
async def test_registries_cut_off_past_the_lease_grace_record_the_lease_removals_once(
    registries: int, writes: bool, gap: bool
) -> None:
    server = shared_etcd()
    key, prefix, clock = generate_key(), unique_prefix(), FakeClock()
    options: dict[str, Any] = {"lease_bucket": 1.0, "lease_grace": 1.0, "watchdog_interval": 0.05, "clock": clock}
    client = EtcdClient([server.url], retry_for=2.0)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        stores: list[EtcdStore] = []
        for _ in range(registries):
            stores.append(await EtcdStore.open(server.url, key=key, prefix=prefix, **options))
            stack.push_async_callback(stores[-1].aclose)
        live = [await stack.enter_async_context(s.watch([K, "frontdoor"])) for s in stores]
        before = await stores[0].revision()
        await stores[0].put(K, "kept", cluster())  # no expiry: no lease
        await stores[0].put(K, "hb", cluster(env="prod"), expires=START + 0.2)
        await stores[-1].put("frontdoor", "fd", {"addr": "a:1"}, expires=START + 0.2)
        for events in live:
            assert [e.type for e in await take(events, 3, timeout=15)] == ["PUT"] * 3
        (counter,), *_ = await client.range(prefix.encode() + b"meta/revision")
        checks = [s.lease_checks for s in stores]

        noticed = [cut_off(store) for store in stores]
        # Past the records' expiry; with ``gap`` also past half the grace on the store clock (a registry that
        # was suspended looks the same), without it only the watchdog's failed readings make the check due.
        clock.advance(30.0 if gap else 0.3)
        await lease_removed(client, prefix, {b"kube_server/hb", b"frontdoor/fd"}, counter.mod_revision)
        with trio.fail_after(10):
            for event in noticed:
                await event.wait()
        with pytest.raises(ConnectionProblem):
            await stores[0].put(K, "during", cluster())  # nothing is written while etcd is out of reach
        for store in stores:
            reconnect(store)

        if writes:
            async with trio.open_nursery() as nursery:
                for n, store in enumerate(stores):
                    nursery.start_soon(functools.partial(store.put, K, f"after{n}", cluster()))
        expected = [
            ("PUT", K, "kept", before + 1),
            ("PUT", K, "hb", before + 2),
            ("PUT", "frontdoor", "fd", before + 3),
            ("DELETE", "frontdoor", "fd", before + 4),
            ("DELETE", K, "hb", before + 5),
        ]
        more = len(stores) if writes else 0
        for events in live:  # watchers that stayed open across the outage
            got = await take(events, 2 + more, timeout=15)
            got += await drain(events)
            assert summary(got)[:2] == expected[3:]
            assert sorted(e.record.name for e in got[2:]) == [f"after{n}" for n in range(more)]
            assert [e.record.revision for e in got[2:]] == list(range(before + 6, before + 6 + more))
            assert got[1].record.value == cluster(env="prod")  # the last version
        for store in stores:  # watchers resuming from before the outage, on any registry
            assert await store.revision() == before + 5 + more
            async with store.watch([K, "frontdoor"], since=before) as events:
                got = await take(events, 5 + more)
                assert await drain(events) == []
            assert summary(got)[:5] == expected
            assert sorted(r.name for r in await store.list(K)) == sorted(["kept"] + [f"after{n}" for n in range(more)])
        assert all(s.lease_checks > c for s, c in zip(stores, checks, strict=True))  # each one looked


async def test_writes_look_for_lease_removals_only_after_an_outage() -> None:
    """The normal case costs nothing per write: the check runs at open, then only when etcd was out of reach
    (a failed watchdog reading) or nothing was heard from it for half the grace (a suspended process)."""
    server = shared_etcd()
    clock = FakeClock()
    options: dict[str, Any] = {"lease_grace": 100.0, "watchdog_interval": 0.05, "clock": clock}
    key, prefix = generate_key(), unique_prefix()
    async with await EtcdStore.open(server.url, key=key, prefix=prefix, **options) as first:
        await first.put(K, "seed", cluster())
    store = await EtcdStore.open(server.url, key=key, prefix=prefix, **options)
    async with store:
        assert store.lease_checks == 1  # at open: one count read, nothing had vanished
        for n in range(5):
            await store.put(K, f"c{n}", cluster(), expires=START + 1000)
            clock.advance(5.0)  # less than half the grace in all: no gap
        assert store.lease_checks == 1
        revision = await store.revision()
        clock.advance(60.0)  # more than half the grace without a reading (the watchdog may notice it first)
        await store.put(K, "late", cluster())
        assert store.lease_checks == 2  # once, before the write
        assert await store.revision() == revision + 1  # nothing had vanished: only the write
        await store.put(K, "next", cluster())
        assert store.lease_checks == 2


async def test_more_lease_removals_than_one_txn_holds_are_recorded_once() -> None:
    """Many records gone at once (every heartbeat of an agent fleet after a long outage): the DELETEs go in
    several txns, and registries opening together still record each one once, in one gap-free sequence."""
    server = shared_etcd()
    key, prefix = generate_key(), unique_prefix()
    options: dict[str, Any] = {"lease_bucket": 1.0, "lease_grace": 1.0, "max_txn_ops": 8}  # 5 records per txn
    names = [f"hb{n:02d}" for n in range(17)]
    client = EtcdClient([server.url], retry_for=2.0)
    try:
        async with await EtcdStore.open(server.url, key=key, prefix=prefix, **options) as gone_registry:
            expired = time.time() + 0.2
            for name in names:
                await gone_registry.put(K, name, cluster(), expires=expired)
            before = await gone_registry.revision()
            (counter,), *_ = await client.range(prefix.encode() + b"meta/revision")
        await lease_removed(client, prefix, {f"{K}/{name}".encode() for name in names}, counter.mod_revision)

        async with AsyncExitStack() as stack:
            stores: list[EtcdStore] = []

            async def come_back() -> None:
                stores.append(await EtcdStore.open(server.url, key=key, prefix=prefix, **options))
                stack.push_async_callback(stores[-1].aclose)

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(come_back)
            for store in stores:
                assert await store.revision() == before + len(names)
                async with store.watch([K], since=before) as events:
                    got = await take(events, len(names))
                    assert await drain(events) == []
                assert {e.type for e in got} == {"DELETE"}
                assert sorted(e.record.name for e in got) == names  # each once
                assert [e.record.revision for e in got] == list(range(before + 1, before + len(names) + 1))
                assert await store.list(K) == []
    finally:
        await client.aclose()

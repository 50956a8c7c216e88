"""The front door's heartbeat index costs the garbage collector nothing per heartbeat: at 100,000
kube_servers an index of nested dicts was ~1,000,000 tracked objects, and every full collection walked them
(0.4-1.3 s pauses of the whole registry, every few seconds while agents announced; one landing in a watch
made a 500 ms watch latency). The index keeps each value as JSON text, which the collector does not track:
after a collection the whole index (its per-cluster dicts included) is untracked."""

from __future__ import annotations

import gc
from datetime import UTC, datetime

import trio
import trio.lowlevel

from registry.frontdoor.lookup import ClusterLookup
from registry.store import MemoryStore
from tests.helpers import kube_server_doc

NOW = datetime(2030, 1, 1, tzinfo=UTC)


async def test_the_heartbeat_index_holds_nothing_the_garbage_collector_walks(nursery: trio.Nursery) -> None:
    store = MemoryStore(clock=NOW.timestamp)
    for i in range(300):  # some before the listing, some through the watch
        await store.put(
            "kube_server", f"h{i}/c{i % 30}", kube_server_doc(f"h{i}", f"c{i % 30}", expires=NOW.timestamp() + 300)
        )
    lookup = ClusterLookup(store, now=lambda: NOW, max_age=0.01)
    await nursery.start(lookup.feed)
    for i in range(300, 400):
        await store.put(
            "kube_server", f"h{i}/c{i % 30}", kube_server_doc(f"h{i}", f"c{i % 30}", expires=NOW.timestamp() + 300)
        )

    def held() -> list[object]:
        return [value for entries in lookup._index.values() for value in entries.values()]

    with trio.fail_after(5):
        while len(held()) < 400:  # the feed applies the watch events in the background
            await trio.lowlevel.checkpoint()
    gc.collect()  # the collector untracks a dict once it holds nothing it must walk
    walked = [value for value in held() if gc.is_tracked(value)]
    walked += [entries for entries in lookup._index.values() if gc.is_tracked(entries)]
    assert not walked, "the heartbeat index holds objects the garbage collector walks"
    # and a lookup still answers whole, decoded heartbeats
    servers = await lookup.heartbeats("c7")
    assert sorted(s.host_id for s in servers)[:3] == ["h127", "h157", "h187"]
    assert all(s.metadata.name == "c7" for s in servers)

"""Agent audit batches (issue 9 §7): ``Registry.record_agent_events`` writes a reported batch with ONE store
write (``Store.create_many``: one commit, one fsync with SQLite), in order, and keeps the audit cap."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from registry.core.errors import BadParameter
from registry.core.identity import CertAuthority, Identity
from registry.server.authz import Caller
from registry.server.service import AUDIT_KIND, MAX_AGENT_EVENTS, Registry
from registry.store import MemoryStore, Record

AGENT = Caller(identity=Identity(name="node-h1", kind="agent", roles=("Kube",), host_id="h1"))


class CountingStore(MemoryStore):
    """Counts the audit writes: single creates, batches (with their sizes) and deletes."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.creates = 0
        self.batches: list[int] = []
        self.deletes = 0
        self.delete_batches: list[int] = []

    async def create(self, kind: str, name: str, value: dict[str, Any], *, expires: float | None = None) -> Record:
        self.creates += kind == AUDIT_KIND
        return await super().create(kind, name, value, expires=expires)

    async def create_many(self, kind: str, items: Any, *, expires: float | None = None) -> list[Record]:
        if kind == AUDIT_KIND:
            self.batches.append(len(items))
        return await super().create_many(kind, items, expires=expires)

    async def delete_many(self, kind: str, names: Any) -> list[Record]:
        if kind == AUDIT_KIND:
            self.delete_batches.append(len(names))
        return await super().delete_many(kind, names)

    async def delete(self, kind: str, name: str, *, expected_revision: int | None = None) -> Record:
        self.deletes += kind == AUDIT_KIND
        return await super().delete(kind, name, expected_revision=expected_revision)


def registry(store: MemoryStore, **options: Any) -> Registry:
    ca = CertAuthority.generate("test", now=datetime.now(tz=UTC))
    return Registry(store, ca, cluster_name="test", **options)


def request_event(n: int) -> dict[str, Any]:
    return {"event": "kube.request", "user": "alice", "verb": "get", "path": f"/api/v1/pods/p{n}", "status": 200}


async def test_a_batch_of_500_events_is_one_store_write_in_order() -> None:
    store = CountingStore()
    reg = registry(store)
    assert MAX_AGENT_EVENTS == 500
    kept = await reg.record_agent_events(AGENT, [request_event(n) for n in range(500)])
    assert kept == 500
    assert store.batches == [500] and store.creates == 0
    rows = await store.list(AUDIT_KIND)  # names sort by write time: the list is the write order
    assert [r.value["path"] for r in rows] == [f"/api/v1/pods/p{n}" for n in range(500)]
    assert [r.revision for r in rows] == list(range(1, 501))
    assert all(r.value["reported_by"] == "h1" and r.value["event"] == "kube.request" for r in rows)


async def test_a_bad_event_anywhere_in_the_batch_writes_nothing() -> None:
    store = CountingStore()
    reg = registry(store)
    events = [request_event(n) for n in range(10)] + [{"event": "not.allowed"}]
    with pytest.raises(BadParameter, match="event 10"):
        await reg.record_agent_events(AGENT, events)
    assert store.batches == [] and await store.count(AUDIT_KIND) == 0


async def test_batches_keep_the_audit_cap() -> None:
    store = CountingStore()
    reg = registry(store, max_audit_events=300)
    for _ in range(3):
        await reg.record_agent_events(AGENT, [request_event(n) for n in range(200)])
    # Trimmed after each batch that passed a trim interval: never more than one batch over the cap.
    assert await store.count(AUDIT_KIND) <= 300
    newest = [r.value["path"] for r in await store.list(AUDIT_KIND)]
    assert newest[-1] == "/api/v1/pods/p199", "the oldest rows go first"
    assert store.deletes == 0 and sum(store.delete_batches) == 600 - len(newest)  # trimmed in batches too
    assert store.batches == [200, 200, 200]

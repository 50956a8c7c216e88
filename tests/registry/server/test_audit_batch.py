"""Agent audit batches (issue 9 §7): ``Registry.record_agent_events`` writes a reported batch with ONE store
write (``Store.create_many``: one commit, one fsync with SQLite), in order, and keeps the audit cap."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from registry.core.errors import AccessDenied, BadParameter
from registry.core.identity import CertAuthority, Identity
from registry.server.authz import Caller
from registry.server.service import AUDIT_KIND, MAX_AGENT_EVENT_BYTES, MAX_AGENT_EVENTS, Registry
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

    async def append_many(self, kind: str, items: Any, *, expires: float | None = None) -> int:
        if kind == AUDIT_KIND:
            self.batches.append(len(items))
        return await super().append_many(kind, items, expires=expires)

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


# --- the checks hold on the one-encoding path (each event encoded once, that text is what is stored) -------


async def test_reported_by_and_time_come_from_the_registry_not_the_body() -> None:
    store = CountingStore()
    reg = registry(store, clock=lambda: 1_800_000_000.0)
    forged = {**request_event(1), "reported_by": "h-other", "time": "1999-01-01T00:00:00Z", "note": None}
    await reg.record_agent_events(AGENT, [forged, {"event": "audit.dropped", "count": 3}])
    first, second = await store.list(AUDIT_KIND)
    assert first.value["reported_by"] == "h1" and second.value["reported_by"] == "h1"
    assert first.value["time"] == second.value["time"] != "1999-01-01T00:00:00Z"
    assert first.value["time"].startswith("2027-01-15")
    assert "note" not in first.value  # None values are left out, as for every audit row
    assert first.value["success"] is True and second.value == {**second.value, "success": True, "count": 3}
    assert first.name < second.name  # names keep the batch's order


async def test_an_event_over_the_size_bound_fails_the_batch_naming_it() -> None:
    store = CountingStore()
    reg = registry(store)
    events = [request_event(0), {**request_event(1), "path": "/" + "x" * MAX_AGENT_EVENT_BYTES}]
    with pytest.raises(BadParameter, match=f"event 1: more than {MAX_AGENT_EVENT_BYTES} bytes"):
        await reg.record_agent_events(AGENT, events)
    assert store.batches == [] and await store.count(AUDIT_KIND) == 0
    # Escaped characters count as stored: 1,500 control characters are 9,000 bytes of JSON.
    with pytest.raises(BadParameter, match="event 0"):
        await reg.record_agent_events(AGENT, [{**request_event(0), "path": "\x01" * 1500}])
    # Just under the bound is kept whole.
    fits = {**request_event(2), "path": "/" + "y" * (MAX_AGENT_EVENT_BYTES - 400)}
    assert await reg.record_agent_events(AGENT, [fits]) == 1
    assert (await store.list(AUDIT_KIND))[0].value["path"] == fits["path"]


@pytest.mark.parametrize(
    "bad",
    [
        {"event": "kube.request", "duration_ms": float("nan")},
        {"event": "kube.request", "duration_ms": float("inf")},
        {"event": "kube.request", "thing": object()},
        {"event": "session.start", "bytes": b"raw"},
    ],
    ids=["nan", "inf", "object", "bytes"],
)
async def test_values_that_are_not_json_fail_the_batch(bad: dict[str, Any]) -> None:
    store = CountingStore()
    reg = registry(store)
    with pytest.raises(BadParameter, match="event 1"):
        await reg.record_agent_events(AGENT, [request_event(0), bad])
    assert store.batches == [] and await store.count(AUDIT_KIND) == 0


@pytest.mark.parametrize("bad", [None, "kube.request", ["event"], {"event": "user.create"}, {"no": "event"}])
async def test_only_mappings_of_the_agent_event_types_are_taken(bad: Any) -> None:
    store = CountingStore()
    with pytest.raises(BadParameter, match="event 0"):
        await registry(store).record_agent_events(AGENT, [bad])
    assert await store.count(AUDIT_KIND) == 0


async def test_only_agents_report_and_at_most_500_events_at_once() -> None:
    store = CountingStore()
    reg = registry(store)
    user = Caller(identity=Identity(name="alice", kind="user", roles=("Admin",)))
    with pytest.raises(AccessDenied):
        await reg.record_agent_events(user, [request_event(0)])
    with pytest.raises(BadParameter, match="at most 500"):
        await reg.record_agent_events(AGENT, [request_event(n) for n in range(501)])
    assert await store.count(AUDIT_KIND) == 0

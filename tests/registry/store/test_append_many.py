"""``append_many``: ``create_many`` for values the caller already encoded with ``encode_value`` (the audit
path encodes each event once, to bound its size, and the store writes that very text). Same contract for
every backend: one commit, all or nothing, consecutive revisions, one PUT per record; it answers a count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry.core.errors import AlreadyExists, BadParameter, TooLarge
from registry.store import EncodedValue, SQLiteStore, encode_value
from registry.store._common import BaseStore
from tests.registry.store.store_helpers import FakeClock, open_backend, revisions, take

K = "audit"


def batch(count: int, start: int = 0) -> list[tuple[str, EncodedValue]]:
    return [(f"e{n:04d}", encode_value(K, f"e{n:04d}", {"event": "x", "n": n})) for n in range(start, start + count)]


async def test_appended_records_read_back_as_created_ones(store: BaseStore) -> None:
    await store.create("role", "first", {})
    assert await store.append_many(K, batch(3), expires=2e9) == 3
    listed = await store.list(K)
    assert [(r.name, r.value, r.revision, r.expires) for r in listed] == [
        (f"e{n:04d}", {"event": "x", "n": n}, n + 2, 2e9) for n in range(3)
    ]
    assert await store.append_many(K, []) == 0
    assert await store.revision() == 4


async def test_labels_of_an_encoded_value_still_select_it(store: BaseStore) -> None:
    value = {"metadata": {"labels": {"env": "prod"}}, "n": 1}
    await store.append_many(K, [("labelled", encode_value(K, "labelled", value))])
    await store.append_many(K, [("plain", encode_value(K, "plain", {"n": 2}))])
    assert [r.name for r in await store.list(K, labels={"env": "prod"})] == ["labelled"]


async def test_watchers_see_one_put_per_appended_record(store: BaseStore) -> None:
    async with store.watch([K]) as live:
        await store.append_many(K, batch(3))
        events = await take(live, 3)
    assert [e.type for e in events] == ["PUT"] * 3 and revisions(events) == [1, 2, 3]
    assert events[2].record.value == {"event": "x", "n": 2}


@pytest.mark.parametrize(
    "bad",
    [
        [("e0001", encode_value(K, "e0001", {}))],  # exists
        [("x-dup", encode_value(K, "x", {})), ("x-dup", encode_value(K, "x", {}))],
        [("", encode_value(K, "x", {}))],
        [("raw", {"not": "encoded"})],  # a plain dict is not taken: only encode_value's output
        [("raw", '{"hand": "made"}')],
        ["not-a-pair"],
    ],
    ids=["exists", "twice", "bad-name", "dict", "text", "not-a-pair"],
)
async def test_a_failing_append_writes_nothing(store: BaseStore, bad: list[Any]) -> None:
    await store.append_many(K, batch(2))
    before = await store.revision()
    with pytest.raises((AlreadyExists, BadParameter)):
        await store.append_many(K, [*batch(3, start=10), *bad, *batch(3, start=20)])
    assert await store.revision() == before
    assert [r.name for r in await store.list(K)] == ["e0000", "e0001"]


async def test_a_value_encoded_under_a_looser_bound_still_meets_the_stores(tmp_path: Path) -> None:
    store = await open_backend("memory", tmp_path, max_value_bytes=100)
    try:
        big = encode_value(K, "big", {"pad": "x" * 200}, max_bytes=1000)
        with pytest.raises(TooLarge):
            await store.append_many(K, [("big", big)])
        assert await store.count(K) == 0
    finally:
        await store.aclose()


def test_encode_value_rejects_what_a_store_would() -> None:
    with pytest.raises(TooLarge):
        encode_value(K, "n", {"pad": "x" * 50}, max_bytes=40)
    with pytest.raises(BadParameter):
        encode_value(K, "n", {"nan": float("nan")})
    with pytest.raises(BadParameter):
        encode_value(K, "n", {"obj": object()})
    with pytest.raises(BadParameter):
        encode_value(K, "n", ["not", "a", "mapping"])


async def test_an_expired_record_in_the_way_is_removed_first_within_the_batch(tmp_path: Path) -> None:
    for backend in ("memory", "sqlite"):
        clock = FakeClock()
        (tmp_path / backend).mkdir()
        store = await open_backend(backend, tmp_path / backend, clock=clock)
        try:
            await store.create(K, "e0001", {"old": True}, expires=clock() + 1)
            clock.advance(2)
            async with store.watch([K], since=1) as events:
                assert await store.append_many(K, batch(3)) == 3
                seen = await take(events, 4)
            assert [(e.type, e.record.name) for e in seen] == [
                ("PUT", "e0000"),
                ("DELETE", "e0001"),
                ("PUT", "e0001"),
                ("PUT", "e0002"),
            ]
            assert (await store.get(K, "e0001")).value == {"event": "x", "n": 1}
        finally:
            await store.aclose()


async def test_appended_records_and_their_history_survive_a_reopen(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    await store.append_many(K, batch(300))
    await store.aclose()
    again = await SQLiteStore.open(tmp_path / "s.db")
    try:
        assert await again.revision() == 300
        assert [r.value["n"] for r in await again.list(K)] == list(range(300))
        async with again.watch([K], since=299) as replay:
            (last,) = await take(replay, 1)
        assert (last.type, last.record.name, last.record.revision) == ("PUT", "e0299", 300)
    finally:
        await again.aclose()

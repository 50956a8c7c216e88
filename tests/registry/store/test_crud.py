"""Reads, writes, revisions, compare-and-swap, filters and input checks, for every backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from registry.core.errors import AlreadyExists, BadParameter, CompareFailed, NotFound, TooLarge
from registry.store import MemoryStore, SQLiteStore, open_store
from registry.store._common import BaseStore
from tests.registry.store.store_helpers import cluster

K = "kube_cluster"


async def test_new_store_is_empty_at_revision_zero(store: BaseStore) -> None:
    assert await store.revision() == 0
    assert await store.list(K) == []
    with pytest.raises(NotFound, match=r'^kube_cluster "x" not found$'):
        await store.get(K, "x")


async def test_create_get_update_put_delete_lifecycle(store: BaseStore) -> None:
    created = await store.create(K, "a", cluster("prod"))
    assert (created.kind, created.name, created.revision, created.created_revision) == (K, "a", 1, 1)
    assert created.expires is None
    assert await store.get(K, "a") == created

    updated = await store.update(K, "a", cluster("dev"))
    assert (updated.revision, updated.created_revision) == (2, 1)
    assert updated.value == cluster("dev")

    put = await store.put(K, "a", cluster("qa"))
    assert (put.revision, put.created_revision) == (3, 1)
    fresh = await store.put(K, "b", cluster())
    assert (fresh.revision, fresh.created_revision) == (4, 4)

    deleted = await store.delete(K, "a")
    # The deleted record carries the last value and the delete's own revision.
    assert deleted.value == cluster("qa")
    assert (deleted.revision, deleted.created_revision) == (5, 1)
    with pytest.raises(NotFound):
        await store.get(K, "a")
    assert [r.name for r in await store.list(K)] == ["b"]
    assert await store.revision() == 5


async def test_revision_is_global_across_kinds_and_monotonic(store: BaseStore) -> None:
    seen = []
    for i in range(5):
        seen.append((await store.create("kube_cluster", f"c{i}", {})).revision)
        seen.append((await store.create("token", f"t{i}", {})).revision)
    assert seen == list(range(1, 11))
    assert await store.revision() == 10
    # Failed writes consume no revision.
    with pytest.raises(AlreadyExists):
        await store.create("token", "t0", {})
    with pytest.raises(NotFound):
        await store.update("token", "nope", {})
    assert await store.revision() == 10


async def test_same_name_in_different_kinds_is_independent(store: BaseStore) -> None:
    await store.create("role", "admin", {"r": 1})
    await store.create("user", "admin", {"u": 1})
    assert (await store.get("role", "admin")).value == {"r": 1}
    assert (await store.get("user", "admin")).value == {"u": 1}


async def test_error_messages_name_the_record(store: BaseStore) -> None:
    await store.create(K, "x", {})
    with pytest.raises(AlreadyExists, match=r'^kube_cluster "x" already exists$'):
        await store.create(K, "x", {})
    with pytest.raises(NotFound, match=r'^kube_cluster "y" not found$'):
        await store.update(K, "y", {})
    with pytest.raises(NotFound, match=r'^kube_cluster "y" not found$'):
        await store.delete(K, "y")


async def test_compare_and_swap(store: BaseStore) -> None:
    await store.create(K, "x", {"v": 1})  # revision 1
    await store.create(K, "other", {})  # revision 2
    ok = await store.update(K, "x", {"v": 2}, expected_revision=1)
    assert ok.revision == 3
    with pytest.raises(
        CompareFailed,
        match=r'^kube_cluster "x" was modified concurrently \(expected revision 1, current 3\)$',
    ):
        await store.update(K, "x", {"v": 3}, expected_revision=1)
    assert (await store.get(K, "x")).value == {"v": 2}
    with pytest.raises(CompareFailed):
        await store.delete(K, "x", expected_revision=2)
    deleted = await store.delete(K, "x", expected_revision=3)
    assert deleted.revision == 4


async def test_only_one_of_two_racing_cas_updates_wins(store: BaseStore) -> None:
    base = await store.create(K, "x", {"v": 0})
    outcomes: list[str] = []

    async def writer(v: int) -> None:
        try:
            await store.update(K, "x", {"v": v}, expected_revision=base.revision)
            outcomes.append("ok")
        except CompareFailed:
            outcomes.append("conflict")

    async with trio.open_nursery() as nursery:
        for v in (1, 2):
            nursery.start_soon(writer, v)
    assert sorted(outcomes) == ["conflict", "ok"]


async def test_hundred_concurrent_creates_get_distinct_revisions(store: BaseStore) -> None:
    results = []

    async def create(i: int) -> None:
        results.append(await store.create("kube_server", f"host{i}/c", {"i": i}))

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(create, i)
    assert sorted(r.revision for r in results) == list(range(1, 101))
    assert len(await store.list("kube_server")) == 100
    assert await store.revision() == 100


async def test_values_are_copies(store: BaseStore) -> None:
    value: dict[str, Any] = {"spec": {"items": [1, 2]}}
    record = await store.create(K, "x", value)
    value["spec"]["items"].append(3)
    record.value["spec"]["items"].append(4)
    listed = await store.list(K)
    listed[0].value["spec"] = "mutated"
    assert (await store.get(K, "x")).value == {"spec": {"items": [1, 2]}}


async def test_list_is_sorted_by_code_point(store: BaseStore) -> None:
    names = ["b", "a", "é", "Z", "😀", "\uffff", "a/b", "A"]
    for name in names:
        await store.create(K, name, {})
    assert [r.name for r in await store.list(K)] == sorted(names)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, ["dev", "malformed", "nolabels", "prod", "prod2", "weird"]),
        ({"env": "prod"}, ["prod"]),
        ({"env": ["prod", "dev"]}, ["dev", "prod"]),
        ({"env": "prod*"}, ["prod", "prod2"]),
        ({"env": "^p.*2$"}, ["prod2"]),
        ({"env": "*"}, ["dev", "prod", "prod2"]),
        ({"*": "*"}, ["dev", "malformed", "nolabels", "prod", "prod2", "weird"]),
        ({"env": "prod", "tier": "db"}, []),
        ({}, []),  # an empty selector selects nothing (labels.match_labels)
    ],
)
async def test_list_label_filter(store: BaseStore, selector: Any, expected: list[str]) -> None:
    await store.create(K, "prod", cluster("prod"))
    await store.create(K, "prod2", cluster("prod2"))
    await store.create(K, "dev", cluster("dev"))
    await store.create(K, "nolabels", {"spec": {}})
    await store.create(K, "malformed", {"metadata": ["not", "a", "dict"]})
    await store.create(K, "weird", {"metadata": {"labels": {"env": 5}}})  # non-string value: ignored
    await store.create("role", "prod", cluster("prod"))  # another kind never shows up
    assert [r.name for r in await store.list(K, labels=selector)] == expected


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (None, ["a", "a/b", "a/c", "a\U0010ffff", "a\U0010ffffz", "ab", "b"]),
        ("", ["a", "a/b", "a/c", "a\U0010ffff", "a\U0010ffffz", "ab", "b"]),
        ("a/", ["a/b", "a/c"]),
        ("a", ["a", "a/b", "a/c", "a\U0010ffff", "a\U0010ffffz", "ab"]),
        ("a\U0010ffff", ["a\U0010ffff", "a\U0010ffffz"]),
        ("zzz", []),
        ("%", []),  # LIKE/GLOB metacharacters are literal
    ],
)
async def test_list_prefix(store: BaseStore, prefix: str | None, expected: list[str]) -> None:
    for name in ["b", "ab", "a/c", "a", "a/b", "a\U0010ffff", "a\U0010ffffz"]:
        await store.create(K, name, {})
    assert [r.name for r in await store.list(K, prefix=prefix)] == sorted(expected)


async def test_prefix_and_labels_combine(store: BaseStore) -> None:
    await store.create("kube_server", "h1/prod", cluster("prod"))
    await store.create("kube_server", "h1/dev", cluster("dev"))
    await store.create("kube_server", "h2/prod", cluster("prod"))
    got = await store.list("kube_server", prefix="h1/", labels={"env": "prod"})
    assert [r.name for r in got] == ["h1/prod"]


BAD_CALLS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("get", {"kind": "", "name": "x"}, BadParameter, "invalid kind"),
    ("get", {"kind": "Kube", "name": "x"}, BadParameter, "invalid kind"),
    ("get", {"kind": "a b", "name": "x"}, BadParameter, "invalid kind"),
    ("get", {"kind": "k" * 64, "name": "x"}, BadParameter, "invalid kind"),
    ("get", {"kind": 5, "name": "x"}, BadParameter, "invalid kind"),
    ("get", {"kind": K, "name": ""}, BadParameter, "non-empty string"),
    ("get", {"kind": K, "name": None}, BadParameter, "non-empty string"),
    ("get", {"kind": K, "name": "a\x00b"}, BadParameter, "control characters"),
    ("get", {"kind": K, "name": "a\nb"}, BadParameter, "control characters"),
    ("get", {"kind": K, "name": "x" * 1025}, BadParameter, "limit is 1024"),
    ("create", {"kind": K, "name": "\ud800", "value": {}}, BadParameter, "not valid Unicode"),
    ("create", {"kind": K, "name": "x", "value": []}, BadParameter, "must be a JSON object"),
    ("create", {"kind": K, "name": "x", "value": "text"}, BadParameter, "must be a JSON object"),
    ("create", {"kind": K, "name": "x", "value": {"a": object()}}, BadParameter, "not JSON-serialisable"),
    ("create", {"kind": K, "name": "x", "value": {"a": float("nan")}}, BadParameter, "not JSON"),
    ("create", {"kind": K, "name": "x", "value": {(1, 2): 1}}, BadParameter, "not JSON"),
    # the limit is the backend's (1 MiB; etcd 640 KiB, as a write puts the value twice in one request)
    ("create", {"kind": K, "name": "x", "value": {"a": "x" * (1 << 20)}}, TooLarge, r"limit is \d+"),
    ("put", {"kind": K, "name": "x", "value": {}, "expires": "soon"}, BadParameter, "expires"),
    ("put", {"kind": K, "name": "x", "value": {}, "expires": True}, BadParameter, "expires"),
    ("put", {"kind": K, "name": "x", "value": {}, "expires": float("inf")}, BadParameter, "expires"),
    ("put", {"kind": K, "name": "x", "value": {}, "expires": float("nan")}, BadParameter, "expires"),
    ("update", {"kind": K, "name": "x", "value": {}, "expected_revision": True}, BadParameter, "expected"),
    ("update", {"kind": K, "name": "x", "value": {}, "expected_revision": "1"}, BadParameter, "expected"),
    ("delete", {"kind": K, "name": "x", "expected_revision": -1}, BadParameter, "non-negative"),
    ("list", {"kind": K, "prefix": 5}, BadParameter, "prefix"),
    ("list", {"kind": K, "labels": ["env"]}, BadParameter, "mapping"),
    ("list", {"kind": K, "labels": {"env": 5}}, BadParameter, "string or a list"),
    ("list", {"kind": K, "labels": {"env": ["a", 1]}}, BadParameter, "string or a list"),
    ("list", {"kind": K, "labels": {1: "a"}}, BadParameter, "string or a list"),
    ("list", {"kind": K, "labels": {"env": "^(unclosed$"}}, BadParameter, "invalid label selector"),
    ("list", {"kind": K, "labels": {"env": "x" * 5000}}, BadParameter, "invalid label selector"),
    ("compact", {"keep": -1}, BadParameter, "keep"),
]


@pytest.mark.parametrize(("method", "kwargs", "error", "message"), BAD_CALLS)
async def test_bad_input_is_rejected_without_writing(
    store: BaseStore, method: str, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    await store.put(K, "x", {"v": 1})
    with pytest.raises(error, match=message):
        await getattr(store, method)(**kwargs)
    assert await store.revision() == 1
    assert (await store.get(K, "x")).value == {"v": 1}


async def test_deeply_nested_value_is_rejected(store: BaseStore) -> None:
    value: dict[str, Any] = {}
    inner = value
    for _ in range(100_000):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(BadParameter, match="not JSON-serialisable"):
        await store.create(K, "deep", value)
    assert await store.revision() == 0


async def test_value_size_limit_is_configurable(tmp_path: Path) -> None:
    store = MemoryStore(max_value_bytes=100)
    await store.create(K, "ok", {"a": "x" * 80})
    with pytest.raises(TooLarge, match=r'kube_cluster "big": value is \d+ bytes as JSON, the limit is 100'):
        await store.create(K, "big", {"a": "x" * 100})
    await store.aclose()


@pytest.mark.parametrize(
    "options",
    [{"max_history": 0}, {"watch_buffer": 0}, {"max_value_bytes": -1}, {"max_history": True}, {"clock": 5}],
)
async def test_bad_constructor_options(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(BadParameter):
        MemoryStore(**options)
    with pytest.raises(BadParameter):
        await SQLiteStore.open(tmp_path / "s.db", **options)
    assert not (tmp_path / "s.db").exists()


async def test_closed_store_refuses_work(store: BaseStore) -> None:
    await store.create(K, "x", {})
    await store.aclose()
    await store.aclose()  # idempotent
    for call in (store.get(K, "x"), store.list(K), store.create(K, "y", {}), store.revision()):
        with pytest.raises(Exception, match="store is closed"):
            await call


async def test_statistics_track_writes_and_records(store: BaseStore) -> None:
    await store.create(K, "a", {})
    await store.create(K, "b", {})
    await store.update(K, "a", {"x": 1})
    await store.delete(K, "b")
    stats = store.statistics()
    assert stats["revision"] == 4
    assert stats["writes"] == 4
    assert stats["records"] == 1
    assert stats["history"] == 4
    assert stats["compacted_floor"] == 0
    assert stats["watchers"] == 0


@pytest.mark.parametrize("url", ["memory://", "sqlite:///{tmp}/a.db", "{tmp}/b.db"])
async def test_open_store_urls(tmp_path: Path, url: str) -> None:
    store = await open_store(url.format(tmp=tmp_path))
    try:
        await store.create(K, "x", {})
        assert await store.revision() == 1
        assert isinstance(store, MemoryStore if url == "memory://" else SQLiteStore)
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "memory://, sqlite:///path or a file path"),
        ("etcd://127.0.0.1:2379", "unsupported scheme 'etcd'"),
        ("memory://x", "takes nothing"),
        ("sqlite://", "needs a path"),
        ("/nonexistent-dir-kubeport/x.db", "does not exist"),
    ],
)
async def test_open_store_bad_urls(url: str, message: str) -> None:
    with pytest.raises(BadParameter, match=message):
        await open_store(url)

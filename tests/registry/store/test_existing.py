"""``Store.existing``: which of many names have a live record, in one read (a heartbeat batch checks its
clusters with it), on every backend; hostile and huge inputs refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from registry.core.errors import BadParameter, LimitExceeded
from registry.store._common import BaseStore
from registry.store.base import MAX_EXISTING
from registry.store.etcd import EtcdStore
from registry.store.etcd_seal import generate_key
from tests.fakes.etcd_server import shared_etcd, unique_prefix
from tests.registry.store.store_helpers import BACKENDS, START, FakeClock, cluster, open_backend

K = "kube_cluster"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[BaseStore]:
    s = await open_backend(request.param, tmp_path, clock=clock)
    yield s
    await s.aclose()


async def test_only_live_records_of_the_kind_exist(store: BaseStore, clock: FakeClock) -> None:
    await store.create(K, "a", cluster())
    await store.create(K, "b", cluster(), expires=START + 10)
    await store.create(K, "gone", cluster())
    await store.delete(K, "gone")
    await store.create("kube_server", "h/c", {"spec": {}})
    names = ["a", "b", "gone", "never", "a"]
    assert await store.existing(K, names) == {"a", "b"}
    clock.advance(11)  # b expired: not swept yet, but no longer live
    assert await store.existing(K, names) == {"a"}
    assert await store.existing("kube_server", ["h/c", "a"]) == {"h/c"}
    assert await store.existing(K, []) == set()


async def test_many_names_at_once(store: BaseStore) -> None:
    await store.create_many(K, [(f"c{i:04d}", cluster()) for i in range(0, 600, 3)])
    names = [f"c{i:04d}" for i in range(600)]
    assert await store.existing(K, names) == {f"c{i:04d}" for i in range(0, 600, 3)}


@pytest.mark.parametrize(
    ("names", "error"),
    [
        ("abc", BadParameter),  # a string is not a list of names
        (None, BadParameter),
        ([""], BadParameter),
        (["a/../b\x00"], BadParameter),
        ([7], BadParameter),
        (["x" * 100_000], BadParameter),
        (["n"] * (MAX_EXISTING + 1), LimitExceeded),
    ],
)
async def test_hostile_name_lists_are_refused(store: BaseStore, names: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        await store.existing(K, names)


async def test_etcd_reads_more_names_than_one_txn_holds() -> None:
    server = shared_etcd()
    store = await EtcdStore.open(server.url, key=generate_key(), prefix=unique_prefix(), max_txn_ops=8)
    async with store:
        for i in range(0, 40, 2):
            await store.create(K, f"e{i:03d}", cluster())
        names = [f"e{i:03d}" for i in range(40)]  # 40 reads: several txns of at most (8/2)^2 - 1 = 15
        assert await store.existing(K, names) == {f"e{i:03d}" for i in range(0, 40, 2)}

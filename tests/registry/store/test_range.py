"""``list`` ranges (after/before/limit/reverse) and ``count``: what paging the audit log rests on.

Every test runs against both backends, so the memory store stays a verified fake of SQLite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.core.errors import BadParameter
from tests.registry.store.store_helpers import BACKENDS, FakeClock, cluster, open_backend

pytestmark = pytest.mark.parametrize("backend", BACKENDS)

NAMES = [f"{i:04d}" for i in range(50)]


async def filled(backend: str, tmp_path: Path, **options: object):  # type: ignore[no-untyped-def]
    store = await open_backend(backend, tmp_path, **options)
    for i, name in enumerate(NAMES):
        await store.create("audit", name, cluster("even" if i % 2 == 0 else "odd", i=i))
    await store.create("other", "0001", cluster())
    return store


def names(records) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.name for r in records]


async def test_limit_after_before_and_reverse(backend: str, tmp_path: Path) -> None:
    store = await filled(backend, tmp_path)
    async with store:
        assert names(await store.list("audit", limit=3)) == ["0000", "0001", "0002"]
        assert names(await store.list("audit", limit=3, reverse=True)) == ["0049", "0048", "0047"]
        assert names(await store.list("audit", after="0046")) == ["0047", "0048", "0049"]
        assert names(await store.list("audit", before="0003")) == ["0000", "0001", "0002"]
        assert names(await store.list("audit", before="0010", limit=2, reverse=True)) == ["0009", "0008"]
        assert names(await store.list("audit", after="0010", before="0013")) == ["0011", "0012"]
        assert names(await store.list("audit", after="0013", before="0010")) == []
        assert names(await store.list("audit", after="0010", before="0011")) == []
        assert names(await store.list("audit", limit=0)) == []
        # bounds need not be stored names
        assert names(await store.list("audit", after="0010x", before="0012a")) == ["0011", "0012"]
        assert names(await store.list("audit", after="", limit=1)) == ["0000"]
        assert names(await store.list("audit", before="", limit=1)) == []
        assert len(await store.list("audit", limit=10_000)) == 50


async def test_range_combines_with_prefix_and_labels(backend: str, tmp_path: Path) -> None:
    store = await filled(backend, tmp_path)
    async with store:
        assert names(await store.list("audit", prefix="001", after="0013", limit=3)) == ["0014", "0015", "0016"]
        assert names(await store.list("audit", prefix="001", reverse=True, limit=2)) == ["0019", "0018"]
        assert names(await store.list("audit", prefix="001", before="0003")) == []
        # the limit counts matches, not rows read
        odd = await store.list("audit", labels={"env": "odd"}, limit=3, reverse=True)
        assert names(odd) == ["0049", "0047", "0045"]
        assert names(await store.list("audit", labels={"env": "none"}, limit=3)) == []


async def test_paging_walks_everything_once_in_order(backend: str, tmp_path: Path) -> None:
    store = await filled(backend, tmp_path)
    async with store:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = names(await store.list("audit", before=cursor, limit=7, reverse=True))
            if not page:
                break
            seen += page
            cursor = page[-1]
        assert seen == sorted(NAMES, reverse=True)


async def test_expired_records_are_neither_listed_nor_counted(backend: str, tmp_path: Path) -> None:
    clock = FakeClock()
    store = await open_backend(backend, tmp_path, clock=clock)
    async with store:
        for i in range(10):
            await store.create("audit", f"{i:02d}", cluster(), expires=clock.now + (5 if i < 4 else 100))
        assert await store.count("audit") == 10
        clock.advance(10)
        assert await store.count("audit") == 6
        assert names(await store.list("audit", limit=2)) == ["04", "05"]
        assert names(await store.list("audit", limit=2, reverse=True)) == ["09", "08"]
        assert await store.count("nothing_here") == 0


async def test_count(backend: str, tmp_path: Path) -> None:
    store = await filled(backend, tmp_path)
    async with store:
        assert await store.count("audit") == 50
        assert await store.count("other") == 1
        await store.delete("audit", "0000")
        assert await store.count("audit") == 49


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": -1},
        {"limit": True},
        {"limit": 1.5},
        {"limit": "10"},
        {"after": 5},
        {"before": b"x"},
        {"reverse": "yes"},
        {"reverse": 1},
    ],
)
async def test_bad_range_arguments_are_refused(backend: str, tmp_path: Path, kwargs: dict[str, object]) -> None:
    store = await filled(backend, tmp_path)
    async with store:
        with pytest.raises(BadParameter):
            await store.list("audit", **kwargs)  # type: ignore[arg-type]

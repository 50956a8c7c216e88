"""Shared helpers for the store tests (imported as ``store_helpers``: pytest puts this folder on sys.path).

Tests that hold for every backend take a ``backend`` name and open it with :func:`open_backend`, so the
memory store is verified against the same expectations as the durable one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

from registry.store import Event, MemoryStore, SQLiteStore
from registry.store._common import BaseStore
from registry.store.etcd import EtcdStore
from registry.store.etcd_seal import generate_key
from tests.fakes.etcd_server import shared_etcd, unique_prefix

# etcd runs whenever a binary is found (tests/fakes/etcd_server.py); without one its cases skip, saying why.
BACKENDS = ["memory", "sqlite", "etcd"]

START = 1_700_000_000.0  # a plausible wall-clock time for the fake clock


class FakeClock:
    """A wall clock the test moves by hand (the store calls it like ``time.time``)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def open_backend(backend: str, tmp_path: Path, **options: Any) -> BaseStore:
    if backend == "memory":
        return MemoryStore(**options)
    if backend == "etcd":
        server = shared_etcd()
        return await EtcdStore.open(server.url, key=generate_key(), prefix=unique_prefix(), **options)
    return await SQLiteStore.open(tmp_path / "store.db", **options)


async def take(events: AsyncIterator[Event], count: int, *, timeout: float = 5.0) -> list[Event]:
    """The next ``count`` events, failing the test if they do not arrive within ``timeout``."""
    out: list[Event] = []
    with trio.fail_after(timeout):
        while len(out) < count:
            out.append(await anext(events))
    return out


async def wait_until(condition: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (a deadline, not a sleep). For what
    a backend does in the background (etcd's auto-compaction), where no event tells when it is done."""
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.001)


def revisions(events: list[Event]) -> list[int]:
    return [e.record.revision for e in events]


def cluster(env: str | None = None, **extra: Any) -> dict[str, Any]:
    """A value shaped like a resource, with optional ``env`` label."""
    labels = {} if env is None else {"env": env}
    return {"metadata": {"labels": labels}, "spec": dict(extra)}

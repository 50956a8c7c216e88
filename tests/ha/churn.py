"""Load and bookkeeping for the fault tests: churn that knows what was acknowledged, watch recorders that resume,
heartbeaters that behave like agents.

- :class:`Churn` runs workers that create, update and delete ``kube_cluster`` records through a client (which
  may fail over between registries). Each step is retried until it is acknowledged; on a retry after an
  unanswered attempt, AlreadyExists (a create) and NotFound (a delete) count as the earlier attempt having
  landed. :attr:`Churn.expected` is then exactly what the store must hold: the generation of every
  acknowledged record, or None for an acknowledged delete. Any other error fails the test.
- :class:`Recorder` follows a watch of some kinds from a revision and, when its stream breaks (its registry
  was killed), resumes from the last revision it saw through the next registry of its client. It keeps every
  (revision, type, name) and the wall time it arrived, so two recorders can be compared for gaps and
  duplicates and a DELETE can be timed against an expiry.
- :class:`Heartbeater` keeps ``kube_server`` heartbeats alive as an agent does (one batch call every
  ``every`` seconds, ``ttl`` ahead), retrying on errors.

Nothing here sleeps to wait for a condition: waits poll a counter or a list under a deadline; the only
sleeps are the retry backoff and the heartbeat period, which are the behaviour under test.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from registry.client import RegistryClient
from registry.core.errors import AlreadyExists, ConnectionProblem, NotFound, Timeout
from registry.core.watch import Bookmark, Delete, Init, Put
from tests.helpers import cluster_doc, kubeconfig_bytes

RETRYABLE = (ConnectionProblem, Timeout)
RETRY_BACKOFF = 0.05
POLL = 0.02
KUBECONFIG = kubeconfig_bytes()


def cluster(name: str, generation: int) -> dict[str, Any]:
    return cluster_doc(name, KUBECONFIG, {"gen": str(generation), "churn": "yes"})


def heartbeat(name: str, host_id: str, expires_in: float) -> dict[str, Any]:
    expires = datetime.fromtimestamp(time.time() + expires_in, tz=UTC).isoformat()
    return {
        "kind": "kube_server",
        "version": "v3",
        "metadata": {"name": name, "expires": expires},
        "spec": {
            "host_id": host_id,
            "hostname": "agent:3027",
            "version": "1.0",
            "cluster": {"kind": "kube_cluster", "version": "v3", "metadata": {"name": name}, "spec": {}},
        },
    }


async def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(POLL)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Churn:
    client: RegistryClient
    workers: int = 4
    expected: dict[str, int | None] = field(default_factory=dict)
    acked: int = 0
    retries: int = 0
    ack_times: list[float] = field(default_factory=list)  # trio clock of each acknowledgement
    _stop: trio.Event = field(default_factory=trio.Event)
    _done: int = 0

    async def _ack(self, call: Callable[[], Awaitable[object]], tolerate: type[Exception] | None) -> None:
        attempts = 0
        while True:
            try:
                await call()
            except RETRYABLE:
                attempts += 1
                self.retries += 1
                await trio.sleep(RETRY_BACKOFF)
                continue
            except Exception as exc:
                if tolerate is not None and attempts and isinstance(exc, tolerate):
                    break  # the unanswered attempt landed
                raise
            break
        self.acked += 1
        self.ack_times.append(trio.current_time())

    def longest_pause(self, since: float) -> float:
        """The longest time without an acknowledged write after ``since`` (trio clock): the outage a fault
        caused, as writers saw it."""
        times = [since, *(t for t in self.ack_times if t >= since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def _worker(self, wid: int) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                name = f"w{wid}-{i:05d}"
                await self._ack(partial(self.client.create, cluster(name, 0)), AlreadyExists)
                self.expected[name] = 0
                await self._ack(partial(self.client.update, cluster(name, 1)), None)
                self.expected[name] = 1
                if i % 2:
                    await self._ack(partial(self.client.delete, "kube_cluster", name), NotFound)
                    self.expected[name] = None
                i += 1
        finally:
            self._done += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for wid in range(self.workers):
                nursery.start_soon(self._worker, wid)
            task_status.started()

    async def wait_acked(self, more: int, *, timeout: float) -> None:
        target = self.acked + more
        await wait_until(lambda: self.acked >= target, timeout=timeout, what=f"{target} acknowledged writes")

    async def stop(self, *, timeout: float = 15.0) -> None:
        """Let every worker finish its current step (acknowledged), then stop."""
        self._stop.set()
        await wait_until(lambda: self._done == self.workers, timeout=timeout, what="the churn workers to stop")

    async def check(self, client: RegistryClient) -> int:
        """Every acknowledged write is in the store, nothing else is; returns how many records were checked."""
        items, _ = await client.list("kube_cluster", labels={"churn": "yes"})
        stored = {
            str(i["metadata"]["name"]): int(i["metadata"]["labels"]["gen"])
            for i in items
            if str(i["metadata"]["name"]).startswith("w")  # the churn's own names (w<worker>-<n>)
        }
        live = {name: gen for name, gen in self.expected.items() if gen is not None}
        missing = {n: g for n, g in live.items() if stored.get(n) != g}
        extra = sorted(set(stored) - set(live))
        assert not missing and not extra, f"lost or stale: {missing}; deleted but present: {extra}"
        return len(self.expected)


@dataclass
class Seen:
    revision: int
    type: str
    name: str
    at: float  # wall clock when it arrived


@dataclass
class Recorder:
    client: RegistryClient
    kinds: Sequence[str]
    since: int
    events: list[Seen] = field(default_factory=list)
    resumes: int = 0
    last: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last = self.since
        started = False
        while True:
            try:
                async with self.client.watch(self.kinds, revision=self.last) as stream:
                    if not started:
                        started = True
                        task_status.started()
                    async for event in stream:
                        if isinstance(event, Put | Delete):
                            assert event.revision > self.last, f"duplicate or out of order: {event} after {self.last}"
                            self.events.append(Seen(event.revision, type(event).__name__, event.name, time.time()))
                            self.last = event.revision
                        elif isinstance(event, Bookmark | Init):
                            self.last = max(self.last, event.revision)
            except RETRYABLE:
                self.resumes += 1  # the registry went away: resume from self.last on the next one
                await trio.sleep(RETRY_BACKOFF)

    def saw(self, type_: str, name: str) -> Seen | None:
        return next((e for e in self.events if e.type == type_ and e.name == name), None)

    async def wait_for(self, type_: str, name: str, *, timeout: float) -> Seen:
        await wait_until(lambda: self.saw(type_, name) is not None, timeout=timeout, what=f"{type_} of {name}")
        seen = self.saw(type_, name)
        assert seen is not None
        return seen

    def history(self) -> list[tuple[int, str, str]]:
        return [(e.revision, e.type, e.name) for e in self.events]


@dataclass
class Heartbeater:
    client: RegistryClient
    host_id: str
    names: Sequence[str]
    ttl: float = 10.0
    every: float = 1.0
    beats: int = 0
    failures: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.beat_until_acknowledged()
        task_status.started()
        while True:
            await trio.sleep(self.every)  # the agent's heartbeat period
            await self.beat_until_acknowledged()

    async def beat_until_acknowledged(self) -> None:
        while True:
            try:
                results = await self.client.heartbeat_many(
                    self.host_id, [heartbeat(n, self.host_id, self.ttl) for n in self.names]
                )
            except RETRYABLE:
                self.failures += 1
                await trio.sleep(RETRY_BACKOFF)
                continue
            assert not [r for r in results if "error" in r], results
            self.beats += 1
            return

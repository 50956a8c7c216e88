"""Fakes for the agent's runtime unit tests: a registry client, an announcer, health monitors and label runners.

The supervisor's fakes are injected through its typed seams (``announcer``, ``label_runners``,
``health_monitors``): nothing here patches a module.

They are small working implementations, not mocks: each keeps a record of what was asked of it (so a test
asserts behaviour, e.g. "one PUT per name") and lets the test decide what the other side does (an error, a
hang, a result). Nothing here touches the network or starts a process.

Module name is prefixed with ``agentunit_`` because test folders have no ``__init__.py``: pytest puts this
folder on ``sys.path`` and every basename in the suite must be unique.
"""

from __future__ import annotations

import base64
import builtins
import functools
import json
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio
import yaml

from agent.health import HealthResult, KubeCalls
from labels.runner import CommandSpec
from registry.client import StreamEvent
from registry.core import codec
from registry.core.errors import ConnectionProblem, KubeportError, NotFound
from registry.core.identity import CertAuthority
from registry.core.resources import KubeCluster
from registry.core.watch import Error, WatchDecoder, WatchProtocolError
from tests.helpers import kubeconfig_bytes

# --------------------------------------------------------------------------------------- resources


@functools.cache
def _ca_pem() -> bytes:
    # One CA for the whole module: generating a key per cluster would make the tests slow.
    return CertAuthority.generate("agentunit-kube", now=datetime.now(tz=UTC)).cert_pem


@functools.cache
def kubeconfig(token: str = "agentunit-token", server: str = "https://127.0.0.1:1") -> bytes:
    """A kubeconfig that ``check_kubeconfig`` accepts; port 1 on loopback is closed, nothing is contacted."""
    return kubeconfig_bytes(token=token, server=server, ca_pem=_ca_pem())


def refused_kubeconfig() -> bytes:
    """Passes ``check_kubeconfig`` but ``KubeAPI`` refuses it (tls-server-name together with proxy-url)."""
    doc = yaml.safe_load(kubeconfig("refused"))
    doc["clusters"][0]["cluster"]["tls-server-name"] = "kube.example"
    doc["clusters"][0]["cluster"]["proxy-url"] = "http://127.0.0.1:1"
    return yaml.safe_dump(doc).encode()


def cluster_wire(
    name: str,
    labels: Mapping[str, str] | None = None,
    *,
    config: bytes | None = None,
    dynamic: Mapping[str, Sequence[str]] | None = None,
    revision: int | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A kube_cluster wire dict as the registry sends it with secrets; ``dynamic`` maps key -> argv."""
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    if revision is not None:
        metadata["revision"] = str(revision)
    body: dict[str, Any] = {"kubeconfig": base64.b64encode(config or kubeconfig()).decode(), **spec}
    if dynamic:
        body["dynamic_labels"] = {key: {"command": list(argv), "period": "1m"} for key, argv in dynamic.items()}
    return {"kind": "kube_cluster", "version": "v3", "metadata": metadata, "spec": body}


def cluster(name: str, labels: Mapping[str, str] | None = None, **kwargs: Any) -> KubeCluster:
    """The model the watcher hands on: decoded like the agent does, so the kubeconfig is not checked yet."""
    model = codec.resource_from_dict(cluster_wire(name, labels, **kwargs), verify_kubeconfig=False)
    assert isinstance(model, KubeCluster)
    return model


class UpperBoundRng:
    """A ``random.Random`` stand-in for ``Backoff``: every draw is the top of its range, so delays are exact."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return high


# --------------------------------------------------------------------------------- registry client


@dataclass
class WatchSession:
    """One open watch: the test sends events (dicts) or exceptions (raised by the stream) into it."""

    revision: int | None
    opened_at: float
    send: trio.MemorySendChannel[dict[str, Any] | KubeportError]
    closed: bool = False

    async def event(self, event: dict[str, Any]) -> None:
        await self.send.send(event)

    async def fail(self, error: KubeportError) -> None:
        await self.send.send(error)


@dataclass
class FakeRegistryClient:
    """The parts of ``RegistryClient`` the watcher and the announcer use.

    Watcher tests prefer ``registry.testing.InProcessRegistry`` (the real API); this fake remains for the
    announcer's timing tests and for watch streams no registry would send (raw events are still decoded by
    ``registry.core.watch``, as the client does).

    - ``items`` / ``revision`` are what ``list`` returns; ``list_errors`` are raised first, one per call.
    - ``watch_errors`` are raised when a watch is opened, one per call; otherwise a :class:`WatchSession` is
      created (the stream ends with ``ConnectionProblem`` when the test closes it, as the real client does
      when the registry closes the watch). ``watch_times`` / ``watch_revisions`` record every attempt.
    - ``heartbeat`` / ``delete_heartbeat`` record every call; ``fail_heartbeats[name]`` / ``fail_deletes[name]``
      hold errors to raise, one per call; ``hang`` names calls that block until ``release`` is set;
      ``call_delay`` makes every call take that long; ``max_in_flight`` is the most calls seen at once.
    """

    items: list[Any] = field(default_factory=list)
    revision: int = 1
    list_errors: deque[KubeportError] = field(default_factory=deque)
    watch_errors: deque[KubeportError] = field(default_factory=deque)
    list_calls: list[float] = field(default_factory=list)
    watch_calls: list[WatchSession | KubeportError] = field(default_factory=list)
    watch_times: list[float] = field(default_factory=list)
    watch_revisions: list[int | None] = field(default_factory=list)
    heartbeats: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    deletes: list[tuple[float, str, str]] = field(default_factory=list)
    fail_heartbeats: dict[str, deque[KubeportError]] = field(default_factory=dict)
    fail_deletes: dict[str, deque[KubeportError]] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    batch_route: bool = True
    batch_errors: deque[KubeportError] = field(default_factory=deque)
    batch_calls: list[list[str]] = field(default_factory=list)
    release: trio.Event = field(default_factory=trio.Event)
    call_delay: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; re-checked after every call this fake records."""
        while not predicate():
            await self._changed.wait()

    # -- list / watch --------------------------------------------------------------------------------

    async def list(self, kind: str, *, with_secrets: bool = False) -> tuple[list[Any], int]:
        assert kind == "kube_cluster"
        assert with_secrets, "the agent needs kubeconfigs: it must list with secrets"
        await trio.lowlevel.checkpoint()
        self.list_calls.append(trio.current_time())
        self._note()
        if self.list_errors:
            raise self.list_errors.popleft()
        return list(self.items), self.revision

    @asynccontextmanager
    async def watch(
        self, kinds: Sequence[str], *, revision: int | None = None, with_secrets: bool = False
    ) -> AsyncIterator[AsyncIterator[StreamEvent]]:
        assert list(kinds) == ["kube_cluster"]
        assert with_secrets
        await trio.lowlevel.checkpoint()
        self.watch_times.append(trio.current_time())
        self.watch_revisions.append(revision)
        if self.watch_errors:
            error = self.watch_errors.popleft()
            self.watch_calls.append(error)
            self._note()
            raise error
        send, receive = trio.open_memory_channel[dict[str, Any] | KubeportError](100)
        session = WatchSession(revision=revision, opened_at=trio.current_time(), send=send)
        self.watch_calls.append(session)
        self._note()

        async def stream() -> AsyncGenerator[StreamEvent, None]:
            # Raw events go through the real protocol decoder, as the client's do: a malformed one breaks
            # the stream (ConnectionProblem) and an unknown type is skipped.
            decoder = WatchDecoder()
            async for item in receive:
                if isinstance(item, KubeportError):
                    raise item
                try:
                    events = decoder.feed(json.dumps(item).encode() + b"\n")
                except WatchProtocolError as err:
                    raise ConnectionProblem(f"fake registry sent a malformed watch event ({err.message})") from None
                for event in events:
                    assert not isinstance(event, Error), "send ERROR as session.fail(error)"
                    yield event
            raise ConnectionProblem("fake registry closed the watch")

        events = stream()
        try:
            yield events
        finally:
            session.closed = True
            await events.aclose()
            self._note()

    def sessions(self) -> builtins.list[WatchSession]:
        return [call for call in self.watch_calls if isinstance(call, WatchSession)]

    async def next_session(self, index: int) -> WatchSession:
        """The ``index``-th successfully opened watch (0-based), waiting for it to open."""
        await self.wait_for(lambda: len(self.sessions()) > index)
        return self.sessions()[index]

    # -- heartbeats ------------------------------------------------------------------------------------

    async def _call(self, name: str, errors: dict[str, deque[KubeportError]]) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._note()
        try:
            if name in self.hang:
                await self.release.wait()
            await trio.sleep(self.call_delay)
            queued = errors.get(name)
            if queued:
                raise queued.popleft()
        finally:
            self.in_flight -= 1

    async def heartbeat(self, server: Mapping[str, Any]) -> dict[str, Any]:
        name = str(server["metadata"]["name"])
        try:
            await self._call(name, self.fail_heartbeats)
        finally:
            self.heartbeats.append((trio.current_time(), name, dict(server)))
            self._note()
        return dict(server)

    async def heartbeat_many(self, host_id: str, servers: Sequence[Mapping[str, Any]]) -> builtins.list[Any]:
        """The batch route: one request for several heartbeats. Each entry is recorded and may fail alone
        (``fail_heartbeats``) as the registry answers per entry; ``batch_errors`` fail a whole request (the
        network or the registry); ``batch_route=False`` answers like a registry without the route."""
        self.batch_calls.append([str(s["metadata"]["name"]) for s in servers])
        if not self.batch_route:
            raise NotFound(f"no route for POST /v1/kube_servers/{host_id}")
        if self.batch_errors:
            raise self.batch_errors.popleft()
        results: builtins.list[Any] = [None] * len(servers)

        async def one(index: int, server: Mapping[str, Any]) -> None:
            name = str(server["metadata"]["name"])
            try:
                await self._call(name, self.fail_heartbeats)
                results[index] = {"name": name}
            except KubeportError as err:
                results[index] = {"name": name, "error": err.to_status()}
            finally:
                self.heartbeats.append((trio.current_time(), name, dict(server)))
                self._note()

        async with trio.open_nursery() as nursery:
            for index, server in enumerate(servers):
                nursery.start_soon(one, index, server)
        return results

    async def delete_heartbeat(self, host_id: str, name: str) -> None:
        try:
            await self._call(name, self.fail_deletes)
        finally:
            self.deletes.append((trio.current_time(), host_id, name))
            self._note()

    def heartbeat_names(self) -> builtins.list[str]:
        return [name for _, name, _ in self.heartbeats]

    def delete_names(self) -> builtins.list[str]:
        return [name for _, _, name in self.deletes]


# -------------------------------------------------------------------------------- supervisor fakes


@dataclass
class FakeAnnouncer:
    """Records what the supervisor tells the announcer; ``entries`` is what would be heartbeated now."""

    entries: dict[str, Callable[[float], dict[str, Any]]] = field(default_factory=dict)
    log: list[tuple[str, str | None]] = field(default_factory=list)

    def set(self, name: str, build: Callable[[float], dict[str, Any]]) -> None:
        self.entries[name] = build
        self.log.append(("set", name))

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        self.log.append(("remove", name))

    def touch(self, name: str | None = None) -> None:
        self.log.append(("touch", name))

    def actions(self, kind: str) -> list[str | None]:
        return [name for action, name in self.log if action == kind]


class HealthMonitors:
    """A health monitor factory for ``Supervisor(health_monitors=...)``: builds :class:`FakeHealthMonitor` s,
    which never check anything and report ``unknown``, and counts how many are running so a test can see
    served clusters start and stop."""

    def __init__(self) -> None:
        self.made: list[FakeHealthMonitor] = []
        self.running = 0

    def __call__(
        self,
        api: KubeCalls,
        *,
        interval: float,
        on_change: Callable[[HealthResult], None],
        now: Callable[[], datetime],
        limiter: trio.CapacityLimiter | None = None,
    ) -> FakeHealthMonitor:
        monitor = FakeHealthMonitor(self, api, interval=interval, on_change=on_change, now=now)
        self.made.append(monitor)
        return monitor


class FakeHealthMonitor:
    """Stands in for ``agent.health.HealthMonitor`` (built by :class:`HealthMonitors`)."""

    def __init__(
        self,
        factory: HealthMonitors,
        api: KubeCalls,
        *,
        interval: float,
        on_change: Callable[[HealthResult], None],
        now: Callable[[], datetime],
    ) -> None:
        self.factory = factory
        self.api = api
        self.interval = interval
        self.on_change = on_change
        self.latest = HealthResult("unknown", "not checked yet", now())

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.factory.running += 1
        try:
            await trio.sleep_forever()
        finally:
            self.factory.running -= 1


class LabelBoard:
    """What each label command "prints", shared by every fake label runner the supervisor creates: a label
    runner factory for ``Supervisor(label_runners=board.make)``.

    ``publish(argv, value)`` sets the output of a command; runners whose commands all have an output report
    their first results (``serve`` reports started), and later changes call their ``on_change``, as
    ``labels.runner.DynamicLabels`` does. ``runners`` lists every runner made, for assertions.
    """

    def __init__(self) -> None:
        self.outputs: dict[tuple[str, ...], str] = {}
        self.runners: list[FakeDynamicLabels] = []
        self._published = trio.Event()

    def make(
        self,
        specs: Sequence[CommandSpec],
        *,
        on_change: Callable[[], None] | None = None,
        limiter: trio.CapacityLimiter | None = None,
    ) -> FakeDynamicLabels:
        runner = FakeDynamicLabels(self, tuple(specs), on_change)
        self.runners.append(runner)
        return runner

    def publish(self, argv: Sequence[str], value: str) -> None:
        command = tuple(argv)
        changed = self.outputs.get(command) != value
        self.outputs[command] = value
        if changed:
            for runner in self.runners:
                if runner.started and any(spec.command == command for spec in runner.specs):
                    runner.notify()
        self._published.set()
        self._published = trio.Event()

    def live(self) -> list[FakeDynamicLabels]:
        return [runner for runner in self.runners if runner.serving]

    async def wait_published(self) -> None:
        await self._published.wait()


class FakeDynamicLabels:
    def __init__(self, board: LabelBoard, specs: tuple[CommandSpec, ...], on_change: Callable[[], None] | None) -> None:
        self.board = board
        self.specs = specs
        self.on_change = on_change
        self.started = False
        self.serving = False

    def results(self) -> dict[str, str]:
        return {spec.key: self.board.outputs[spec.command] for spec in self.specs if spec.command in self.board.outputs}

    def states(self) -> dict[str, Any]:
        return {}

    def notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.serving = True
        try:
            # First results: every command has run once (here: has an output on the board).
            while not all(spec.command in self.board.outputs for spec in self.specs):
                await self.board.wait_published()
            self.started = True
            self.notify()  # the first value of each label counts as a change, as in DynamicLabels
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.serving = False

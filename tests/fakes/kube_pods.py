"""What "runs" in the fake's pods: container logs, forwarded ports, exec commands and files. No process,
socket or file on the host is ever touched: everything is in memory and driven by the test.

:class:`PodRuntime` is the state behind the streaming subresources (``pods/log``, ``pods/exec``,
``pods/portforward``), keyed by (namespace, pod, container); the pod objects themselves stay in the store.
:func:`pick_container` resolves the ``container`` query parameter the way the real server does (one
container: it; several: the parameter is required; an unknown name: 400).

Test controls: :meth:`PodRuntime.set_log` / :meth:`~PodRuntime.append_log` / :meth:`~PodRuntime.end_log`
(followers see appends at once and stop at ``end_log``), :meth:`~PodRuntime.serve_port` (a
:data:`PortHandler` per pod port, e.g. :func:`echo_port`), :meth:`~PodRuntime.add_command` (extra exec
commands), :meth:`~PodRuntime.write_file` / :meth:`~PodRuntime.read_file` (the exec/cp file system).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from tests.fakes.kube_status import bad_request


class PortStream(Protocol):
    """One forwarded connection as the pod side sees it."""

    async def receive(self) -> bytes:
        """The next bytes from the client; b"" once it has closed its side."""
        ...

    async def send(self, data: bytes) -> None: ...


PortHandler = Callable[[PortStream], Awaitable[None]]


class ExecIO(Protocol):
    """A running command's standard streams."""

    async def read_stdin(self) -> bytes:
        """The next stdin bytes; b"" at end of input (always, without ``stdin=true``)."""
        ...

    async def stdout(self, data: bytes) -> None: ...

    async def stderr(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class ExecContext:
    namespace: str
    pod: str
    container: str
    env: dict[str, str]
    runtime: PodRuntime


Command = Callable[[list[str], ExecIO, ExecContext], Awaitable[int]]  # (argv, io, context) -> exit status


async def echo_port(stream: PortStream) -> None:
    """A port handler that sends back everything it receives until the client closes."""
    while data := await stream.receive():
        await stream.send(data)


@dataclass
class LogBuffer:
    lines: list[tuple[datetime, bytes]] = field(default_factory=list)
    ended: bool = False
    changed: trio.Event = field(default_factory=trio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


Key = tuple[str, str, str]  # (namespace, pod, container)


class PodRuntime:
    def __init__(self) -> None:
        self.logs: dict[Key, LogBuffer] = {}
        self.ports: dict[tuple[str, str, int], PortHandler] = {}
        self.commands: dict[str, Command] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}  # (namespace, pod, path): one file system per pod
        self.websockets = True  # False: answer WebSocket upgrades 400, as a server without them would

    # -------------------------------------------------------------------------------------------- logs

    def log(self, namespace: str, pod: str, container: str, *, first: bool = False) -> LogBuffer:
        """A container's log; a log set with container "" belongs to the pod's first container."""
        if first and (namespace, pod, container) not in self.logs and (namespace, pod, "") in self.logs:
            return self.logs[(namespace, pod, "")]
        return self.logs.setdefault((namespace, pod, container), LogBuffer())

    def set_log(self, pod: str, text: str | bytes, *, container: str = "", namespace: str = "default") -> None:
        """Replace a container's log (``container`` "" = the pod's only container) with ``text``."""
        buffer = self.log(namespace, pod, container)
        buffer.lines.clear()
        buffer.ended = False
        self.append_log(pod, text, container=container, namespace=namespace)

    def append_log(self, pod: str, text: str | bytes, *, container: str = "", namespace: str = "default") -> None:
        data = text.encode() if isinstance(text, str) else text
        buffer = self.log(namespace, pod, container)
        now = datetime.now(UTC)
        buffer.lines.extend((now, line) for line in data.splitlines(keepends=True))
        buffer.notify()

    def end_log(self, pod: str, *, container: str = "", namespace: str = "default") -> None:
        """The container stopped writing: ``follow`` streams end once they have sent everything."""
        buffer = self.log(namespace, pod, container)
        buffer.ended = True
        buffer.notify()

    # ------------------------------------------------------------------------------------------- ports

    def serve_port(self, pod: str, port: int, handler: PortHandler = echo_port, *, namespace: str = "default") -> None:
        self.ports[(namespace, pod, port)] = handler

    # ---------------------------------------------------------------------------------------- commands

    def add_command(self, name: str, command: Command) -> None:
        """Make ``name`` runnable by exec (it overrides a built-in of the same name)."""
        self.commands[name] = command

    def write_file(self, pod: str, path: str, data: bytes, *, namespace: str = "default") -> None:
        self.files[(namespace, pod, "/" + path.lstrip("/"))] = data

    def read_file(self, pod: str, path: str, *, namespace: str = "default") -> bytes | None:
        return self.files.get((namespace, pod, "/" + path.lstrip("/")))


# ------------------------------------------------------------------------------------------- containers


def container_names(pod: dict[str, Any]) -> list[str]:
    containers = (pod.get("spec") or {}).get("containers") or []
    return [str(c.get("name", "")) for c in containers if isinstance(c, dict)]


def pick_container(pod: dict[str, Any], requested: str) -> str:
    """The container a subresource request addresses, or the real server's 400."""
    name = pod["metadata"]["name"]
    names = container_names(pod)
    if requested:
        if requested not in names:
            raise bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    if len(names) == 1:
        return names[0]
    if not names:
        raise bad_request(f"pod {name} does not have a host assigned")
    raise bad_request(f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]")


def container_env(pod: dict[str, Any], container: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": pod["metadata"]["name"]}
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if isinstance(spec, dict) and spec.get("name") == container:
            for item in spec.get("env") or []:
                if isinstance(item, dict) and "name" in item:
                    env[str(item["name"])] = str(item.get("value", ""))
    return env

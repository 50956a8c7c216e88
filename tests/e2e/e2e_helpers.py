"""The end-to-end harness: real ``kubeport`` / ``kpctl`` processes around the test's own trio loop.

A test opens ``async with Harness(tmp_path) as h:`` and starts what it needs:

- ``h.start_registry()``  ``kubeport registry start`` on a fixed free port (so a restart comes back at the
  same address), ready when its admin identity exists and a ping succeeds;
- ``h.start_agent(config)``  ``kubeport agent start -c FILE``, ready when its ``kube_agent`` record (keyed by
  the ``host_uuid`` it wrote) is listed by the registry;
- ``h.spawn(...)`` any other long-running command, ``h.cli(...)`` a one-shot command (exit code + output).

Invariants:
- Every child runs with HOME (and cwd) inside the test's tmp dir, PYTHONPATH at this checkout and no
  inherited ``KUBEPORT_*`` / ``KUBECONFIG``; its stdout and stderr go to files, never to pipes (a chatty
  child can never block on a full pipe).
- Nothing waits blindly: readiness and outcomes are polled every ``POLL`` seconds under a deadline, and a
  timeout fails with the tails of every child's output.
- Every child is stopped when the harness closes, whatever happened: SIGTERM, then SIGKILL after a grace
  period; agents before registries (so they can delete their heartbeats); an ``atexit`` net kills any
  that a crashed test run left behind.
- The fake Kubernetes API (fixture ``fake_kube``) runs in the test's own trio loop, so tests only ever wait
  with trio primitives (``trio.run_process``, ``trio.sleep`` in polls), never with blocking calls.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import trio
import trio.lowlevel
import yaml

from registry.client import RegistryClient
from registry.core.errors import KubeportError
from registry.host.paths import ADMIN_IDENTITY
from tests.helpers import cluster_doc  # noqa: F401  (re-exported: the e2e tests import it from here)

# Every registry a test starts puts its front door on a free port (the default, 3026, may be taken).
KUBE_LISTEN = ("--kube-listen", "127.0.0.1:0")
REPO = Path(__file__).resolve().parents[2]
KUBEPORT = "registry.cli.kubeport_main"
KPCTL = "registry.cli.kpctl"
POLL = 0.05
# Generous: CI machines are shared and a cold Python start with these imports takes about a second.
READY_TIMEOUT = 30.0
STOP_GRACE = 10.0

SEED_SELECTORS: list[dict[str, Any]] = [
    {"labels": {"env": "prod", "region": "us-east-2"}},
    {"labels": {"env": "test", "region": "us-west-1"}},
]

T = TypeVar("T")

# The safety net: children still alive when the interpreter exits are killed (the harness normally does it).
_LIVE: set[trio.Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.returncode is None:
            with contextlib.suppress(OSError):
                process.kill()


def free_port() -> int:
    """A port that was free a moment ago (bind :0, read it, close): children need fixed ports."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output file)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class Child:
    """One long-running process and the files its output goes to."""

    name: str
    argv: list[str]
    process: trio.Process
    out_path: Path
    err_path: Path
    server: bool = False  # stopped after the others, so agents can still delete their heartbeats

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        state = "running" if self.returncode is None else f"exited with {self.returncode}"
        return (
            f"===== {self.name} (pid {self.pid}, {state}): {' '.join(self.argv[2:])}\n"
            f"----- stdout (tail)\n{tail(self.out_path)}\n----- stderr (tail)\n{tail(self.err_path)}\n"
        )

    async def wait_exit(self, timeout: float) -> int:
        """The exit code; fails (with the output tails) if the process is still running after ``timeout``."""
        with trio.move_on_after(timeout) as scope:
            code = await self.process.wait()
        if scope.cancelled_caught:
            raise AssertionError(f"{self.name} did not exit within {timeout}s")
        return code

    async def stop(self, sig: int = signal.SIGTERM, *, grace: float = STOP_GRACE) -> int:
        """Send ``sig``, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(sig)
                with trio.move_on_after(grace):
                    await self.process.wait()
                if self.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        self.process.kill()
                    await self.process.wait()
            _LIVE.discard(self.process)
        code = self.process.returncode
        assert code is not None, "a process that was waited for has an exit code"
        return code


@dataclass
class RegistryProc:
    child: Child
    data_dir: Path
    port: int
    client: RegistryClient  # the admin identity's client (closed by the harness)
    ca_pin: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_identity(self) -> Path:
        return self.data_dir / ADMIN_IDENTITY


@dataclass
class AgentProc:
    child: Child
    config_path: Path
    data_dir: Path
    host_id: str


@dataclass
class Harness:
    """Starts children for one test and always stops them; see the module docstring."""

    tmp: Path
    children: list[Child] = field(default_factory=list)
    clients: list[RegistryClient] = field(default_factory=list)
    _counter: int = 0

    @property
    def home(self) -> Path:
        return self.tmp / "home"

    async def __aenter__(self) -> Harness:
        self.home.mkdir(parents=True, exist_ok=True)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with trio.CancelScope(shield=True):
            for servers in (False, True):
                async with trio.open_nursery() as nursery:
                    for child in self.children:
                        if child.server == servers:
                            nursery.start_soon(child.stop)
            for client in self.clients:
                with contextlib.suppress(Exception):
                    await client.aclose()
        if exc is not None:
            # Captured by pytest and shown only for a failing test.
            print(self.report())

    def report(self) -> str:
        return "\n".join(child.describe() for child in self.children) or "(no child processes)"

    # -- processes -----------------------------------------------------------------------------------

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEPORT_") and k != "KUBECONFIG"}
        python_path = env.get("PYTHONPATH")
        env.update(
            HOME=str(self.home),
            PYTHONPATH=str(REPO) + (os.pathsep + python_path if python_path else ""),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra or {})
        return env

    def _argv(self, module: str, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", module, *args]

    async def spawn(self, name: str, *args: str, module: str = KUBEPORT, env: Mapping[str, str] | None = None) -> Child:
        self._counter += 1
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        out_path = logs / f"{self._counter:02d}-{name}.out"
        err_path = logs / f"{self._counter:02d}-{name}.err"
        argv = self._argv(module, args)
        with out_path.open("wb") as out, err_path.open("wb") as err:
            process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env(env),
                cwd=str(self.home),
                start_new_session=True,  # a Ctrl-C at the terminal reaches pytest only; we stop children
            )
        _LIVE.add(process)
        child = Child(name=name, argv=argv, process=process, out_path=out_path, err_path=err_path)
        self.children.append(child)
        return child

    async def cli(
        self, *args: str, module: str = KUBEPORT, timeout: float = 60.0, env: Mapping[str, str] | None = None
    ) -> CliResult:
        """Run one command to completion (as a real process) and capture what it printed."""
        with trio.fail_after(timeout):
            done = await trio.run_process(
                self._argv(module, args),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env(env),
                cwd=str(self.home),
                stdin=b"",
            )
        return CliResult(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))

    async def kubeport(self, *args: str, timeout: float = 60.0) -> CliResult:
        return await self.cli(*args, module=KUBEPORT, timeout=timeout)

    async def kpctl(self, *args: str, timeout: float = 60.0) -> CliResult:
        return await self.cli(*args, module=KPCTL, timeout=timeout)

    # -- waiting -------------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Awaitable[T | None]], *, timeout: float, what: str) -> T:
        """Poll ``predicate`` until it returns something truthy; fail with every child's output tail."""
        last_error: BaseException | None = None
        with trio.move_on_after(timeout):
            while True:
                try:
                    result = await predicate()
                except KubeportError as err:  # e.g. the registry is still starting
                    last_error = err
                else:
                    if result:
                        return result
                await trio.sleep(POLL)
        note = f" (last error: {last_error})" if last_error else ""
        # The children's output tails are printed by __aexit__ (pytest shows them for the failing test).
        raise AssertionError(f"timed out after {timeout}s waiting for {what}{note}")

    async def wait_output(self, child: Child, pattern: str, *, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears in the child's stdout."""
        regex = re.compile(pattern, re.MULTILINE)

        async def found() -> re.Match[str] | None:
            if child.returncode is not None:
                raise AssertionError(f"{child.name} exited with {child.returncode}")
            return regex.search(child.stdout())

        return await self.wait_for(found, timeout=timeout, what=f"{pattern!r} in the output of {child.name}")

    # -- the registry --------------------------------------------------------------------------------

    async def start_registry(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        name: str = "registry",
        extra: Sequence[str] = (),
    ) -> RegistryProc:
        """``extra``: more ``registry start`` flags (e.g. ``--store etcd://...``)."""
        data_dir = data_dir or self.tmp / "registry-data"
        port = port or free_port()
        child = await self.spawn(
            name,
            "registry",
            "start",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{port}",
            *KUBE_LISTEN,
            *extra,
        )
        child.server = True
        identity = data_dir / ADMIN_IDENTITY
        holder: list[RegistryClient] = []

        async def ready() -> dict[str, Any] | None:
            if child.returncode is not None:
                raise AssertionError(f"{name} exited with {child.returncode} while starting")
            if not identity.exists():
                return None
            if not holder:
                client = RegistryClient.from_identity_file(identity)
                self.clients.append(client)
                holder.append(client)
            return await holder[0].ping()

        ping = await self.wait_for(ready, timeout=READY_TIMEOUT, what=f"{name} to answer ping on port {port}")
        return RegistryProc(child=child, data_dir=data_dir, port=port, client=holder[0], ca_pin=str(ping["ca_pin"]))

    # -- agents --------------------------------------------------------------------------------------

    async def start_agent(
        self,
        config_path: Path,
        registry: RegistryProc,
        *,
        data_dir: Path,
        name: str = "agent",
        health_interval: float | None = None,
        label_timeout: float | None = None,
    ) -> AgentProc:
        child = await self.start_agent_process(
            config_path, name=name, health_interval=health_interval, label_timeout=label_timeout
        )
        host_file = data_dir / "host_uuid"

        async def ready() -> str | None:
            if child.returncode is not None:
                raise AssertionError(f"{name} exited with {child.returncode} while starting")
            if not (data_dir / "agent.identity").exists() or not host_file.exists():
                return None
            host_id = host_file.read_text().strip()
            agents = await registry.client.list_agents()
            return host_id if any(a.get("host_id") == host_id for a in agents) else None

        host_id = await self.wait_for(ready, timeout=READY_TIMEOUT, what=f"{name} to describe itself to the registry")
        return AgentProc(child=child, config_path=config_path, data_dir=data_dir, host_id=host_id)

    async def start_agent_process(
        self,
        config_path: Path,
        *,
        name: str = "agent",
        health_interval: float | None = None,
        label_timeout: float | None = None,
    ) -> Child:
        """``kubeport agent start -c FILE`` without waiting for it (for agents expected to fail)."""
        args = ["agent", "start", "-c", str(config_path)]
        if health_interval is not None:
            args += ["--health-interval", str(health_interval)]
        if label_timeout is not None:
            args += ["--label-timeout", str(label_timeout)]
        return await self.spawn(name, *args)


# -- configuration and resources ------------------------------------------------------------------------


def agent_config_yaml(
    registry: RegistryProc,
    *,
    data_dir: Path,
    token: str | None,
    ca_pin: str | None = None,
    resources: Sequence[Mapping[str, Any]] | None = None,
    kubeconfig_file: Path | None = None,
    labels: Mapping[str, str] | None = None,
    commands: Sequence[Mapping[str, Any]] | None = None,
    heartbeat_ttl: str | None = None,
    allowed_label_commands: Sequence[str] | None = None,
) -> str:
    """An agent config written by hand (the fields Teleport's docs use under ``kubernetes_service``)."""
    kp: dict[str, Any] = {"registry": registry.address, "ca_pin": ca_pin or registry.ca_pin, "data_dir": str(data_dir)}
    if token is not None:
        kp["token"] = token
    if heartbeat_ttl is not None:
        kp["heartbeat_ttl"] = heartbeat_ttl
    kube: dict[str, Any] = {"enabled": True, "listen_addr": "127.0.0.1:0"}
    if resources is not None:
        kube["resources"] = [dict(item) for item in resources]
    if kubeconfig_file is not None:
        kube["kubeconfig_file"] = str(kubeconfig_file)
    if labels:
        kube["labels"] = dict(labels)
    if commands:
        kube["commands"] = [dict(c) for c in commands]
    if allowed_label_commands is not None:
        kube["allowed_label_commands"] = list(allowed_label_commands)
    return yaml.safe_dump({"version": "v1", "kubeport": kp, "kubernetes_service": kube}, sort_keys=False)


async def new_token(registry: RegistryProc, ttl_seconds: float = 600) -> str:
    return str((await registry.client.generate_token(roles=["Kube"], ttl_seconds=ttl_seconds))["metadata"]["name"])


async def write_agent_config(h: Harness, registry: RegistryProc, name: str, **kwargs: Any) -> tuple[Path, Path]:
    """Write ``<name>.yaml`` with a fresh token (unless ``token`` is given); returns (config, data dir)."""
    data_dir = h.tmp / f"{name}-data"
    if "token" not in kwargs:
        kwargs["token"] = await new_token(registry)
    path = h.tmp / f"{name}.yaml"
    path.write_text(agent_config_yaml(registry, data_dir=data_dir, **kwargs))
    return path, data_dir


# -- what the registry says ---------------------------------------------------------------------------


async def kube_servers(registry: RegistryProc) -> list[dict[str, Any]]:
    items, _ = await registry.client.list("kube_server")
    return items


async def served(registry: RegistryProc, host_id: str | None = None) -> set[str]:
    """Names of the clusters with a kube_server (of ``host_id`` only, when given)."""
    return {
        str(s["metadata"]["name"])
        for s in await kube_servers(registry)
        if host_id is None or s["spec"].get("host_id") == host_id
    }


async def server_of(registry: RegistryProc, name: str, host_id: str | None = None) -> dict[str, Any] | None:
    for server in await kube_servers(registry):
        if server["metadata"]["name"] == name and (host_id is None or server["spec"].get("host_id") == host_id):
            return server
    return None


async def gather(*calls: Callable[[], Awaitable[T]]) -> list[T]:
    """Run ``calls`` concurrently (independent CLI processes overlap their start-up time); results in order."""
    results: dict[int, T] = {}

    async def one(index: int, call: Callable[[], Awaitable[T]]) -> None:
        results[index] = await call()

    async with trio.open_nursery() as nursery:
        for index, call in enumerate(calls):
            nursery.start_soon(one, index, call)
    return [results[i] for i in range(len(calls))]


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of a kpctl/kubeport text table as dicts (columns located by the dashes under the header)."""
    lines = text.splitlines()
    if len(lines) < 2 or not lines[1].startswith("-"):
        raise AssertionError(f"not a table:\n{text}")
    spans = [m.start() for m in re.finditer(r"-+", lines[1])]
    bounds = [(start, spans[i + 1] if i + 1 < len(spans) else None) for i, start in enumerate(spans)]
    headers = [lines[0][a:b].strip() for a, b in bounds]
    return [{h: row[a:b].strip() for h, (a, b) in zip(headers, bounds, strict=True)} for row in lines[2:] if row]

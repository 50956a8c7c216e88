"""Finding and running real, versioned kubectl binaries in tests.

The ``kubectl`` on PATH here is a version dispatcher that probes the server first; tests call one of the
versioned binaries next to it (``kubectl.1.27`` ... ``kubectl.1.33``) for deterministic behaviour. Each run
gets its own ``HOME`` (kubectl caches discovery under ``$HOME/.kube/cache``), an explicit ``--kubeconfig``,
no shell, and a timeout (:func:`run_kubectl`; long-running ``logs -f`` / ``port-forward`` through
:func:`started_kubectl` and :func:`read_until`). Tests that need kubectl skip with :data:`SKIP_REASON`
when none is found.

kubectl 1.32 and newer send protobuf bodies for built-in types from their typed clients (``create
namespace``, ``auth can-i``, ``auth whoami``, ...). The fake answers those with 415, as it should for a
protobuf-blind server; ``find_kubectl(json_only=True)`` picks the newest kubectl that still sends JSON.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

SKIP_REASON = "kubectl.1.x binaries not found (see README: Testing)"
LAST_JSON_MINOR = 31  # kubectl 1.32+ sends protobuf from typed clients
_VERSIONED = re.compile(r"^kubectl\.1\.(\d+)$")


def _versioned_dir() -> Path | None:
    found = shutil.which("kubectl")
    if found is None:
        return None
    return Path(found).resolve().parent


def available_kubectls() -> dict[str, str]:
    """``{"1.27": "/path/kubectl.1.27", ...}`` for every versioned binary next to the PATH kubectl."""
    directory = _versioned_dir()
    if directory is None:
        return {}
    binaries: dict[str, str] = {}
    for entry in directory.iterdir():
        match = _VERSIONED.match(entry.name)
        if match and entry.is_file() and os.access(entry, os.X_OK):
            binaries[f"1.{match.group(1)}"] = str(entry)
    return binaries


def find_kubectl(version: str | None = None, *, json_only: bool = False) -> str | None:
    """The versioned kubectl for ``version`` (``"1.30"``), or the newest when None (the newest that sends
    JSON bodies with ``json_only``); None if absent."""
    binaries = available_kubectls()
    if version is not None:
        return binaries.get(version)
    if json_only:
        binaries = {v: path for v, path in binaries.items() if int(v.split(".")[1]) <= LAST_JSON_MINOR}
    if not binaries:
        return None
    newest = max(binaries, key=lambda v: tuple(int(p) for p in v.split(".")))
    return binaries[newest]


async def run_kubectl(
    binary: str,
    args: Sequence[str],
    *,
    kubeconfig: Path,
    home: Path,
    timeout: float = 30,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``binary --kubeconfig <kubeconfig> <args>`` with ``HOME=<home>``; never raises for a non-zero
    exit (check ``returncode``); raises trio.TooSlowError after ``timeout`` seconds."""
    await trio.Path(home).mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": str(kubeconfig)}
    with trio.fail_after(timeout):
        return await trio.run_process(
            [binary, "--kubeconfig", str(kubeconfig), *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


@contextlib.asynccontextmanager
async def started_kubectl(
    binary: str, args: Sequence[str], *, kubeconfig: Path, home: Path
) -> AsyncIterator[trio.Process]:
    """A long-running kubectl (``logs -f``, ``port-forward``) with piped stdout/stderr, killed (and reaped)
    when the block ends unless it has exited by itself."""
    await trio.Path(home).mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KUBECONFIG": str(kubeconfig)}
    process = await trio.lowlevel.open_process(
        [binary, "--kubeconfig", str(kubeconfig), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        yield process
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def read_until(stream: trio.abc.ReceiveStream | None, needle: bytes, *, timeout: float = 20) -> bytes:
    """Everything read from ``stream`` up to and including the first ``needle`` (TooSlowError after
    ``timeout``; EOF before it is an AssertionError with what was read)."""
    assert stream is not None
    seen = b""
    with trio.fail_after(timeout):
        while needle not in seen:
            chunk = await stream.receive_some()
            assert chunk, f"EOF before {needle!r}; read {seen!r}"
            seen += chunk
    return seen


def require_kubectl() -> str:
    """A kubectl whose typed commands send JSON (what the fake API reads), or skip the test with the reason and
    where the README says to get one."""
    binary = find_kubectl(json_only=True)
    if binary is None:
        import pytest  # only tests call this; the helpers above are used by scripts too

        pytest.skip(SKIP_REASON)
    return binary


def kubectl_version(version: str) -> str:
    """The versioned kubectl binary, or skip the test with the README's reason."""
    import pytest

    binary = find_kubectl(version)
    if binary is None:
        pytest.skip(f"{SKIP_REASON} (kubectl {version})")
    return binary


def minor(version: str) -> int:
    """``"1.30"`` -> 30."""
    return int(version.split(".")[1])

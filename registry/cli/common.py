"""What every kubeport command line shares: finding the registry and identity, running async code,
and turning expected errors into one ``ERROR: ...`` line with exit code 1 (tracebacks only with --debug).

Identity resolution (like tctl on the auth host):
1. ``--identity FILE`` or ``$KUBEPORT_IDENTITY``; the registry address from ``--registry`` /
   ``$KUBEPORT_REGISTRY`` or, failing those, the address recorded in the identity file;
2. otherwise the admin identity in the local data dir (``--data-dir`` / ``$KUBEPORT_DATA_DIR`` / default),
   which the registry writes on this host together with its address.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

from registry.client import RegistryClient
from registry.core.errors import BadParameter, KubeportError
from registry.core.identity_file import IdentityFile
from registry.files import read_limited
from registry.paths import ADMIN_IDENTITY, default_data_dir

MAX_IDENTITY_BYTES = 1 << 20


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--registry",
        metavar="HOST:PORT",
        help="registry address (default: $KUBEPORT_REGISTRY, else the address in the identity file)",
    )
    group.add_argument(
        "--identity",
        "-i",
        metavar="FILE",
        help="identity file (default: $KUBEPORT_IDENTITY, else DATA_DIR/admin.identity on the registry host)",
    )
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        help="registry data dir to find the local admin identity in (default: $KUBEPORT_DATA_DIR, "
        "/var/lib/kubeport as root, ~/.kubeport otherwise)",
    )


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", "-d", action="store_true", help="verbose logs and tracebacks on errors")


@dataclass(frozen=True)
class Connection:
    identity: IdentityFile
    identity_path: Path
    address: str

    def client(self) -> RegistryClient:
        return RegistryClient.from_identity(self.identity, self.address)


def resolve_connection(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Connection:
    env = os.environ if env is None else env
    identity_arg = getattr(args, "identity", None) or env.get("KUBEPORT_IDENTITY")
    if identity_arg:
        path = Path(identity_arg).expanduser()
    else:
        data_dir = Path(args.data_dir).expanduser() if getattr(args, "data_dir", None) else default_data_dir(env)
        path = data_dir / ADMIN_IDENTITY
        if not path.exists():
            raise BadParameter(
                f"no identity: pass --identity FILE (or set KUBEPORT_IDENTITY), or run this on the registry host "
                f"(looked for {path}; start one with 'kubeport start')"
            )
    identity = IdentityFile.parse(read_limited(path, limit=MAX_IDENTITY_BYTES, what="identity file"), source=str(path))
    address = getattr(args, "registry", None) or env.get("KUBEPORT_REGISTRY") or identity.registry
    if not address:
        raise BadParameter(
            f"no registry address: pass --registry HOST:PORT or set KUBEPORT_REGISTRY ({path} does not name one)"
        )
    return Connection(identity=identity, identity_path=path, address=address)


async def guarded(
    func: Callable[[argparse.Namespace], Awaitable[int]],
    args: argparse.Namespace,
    *,
    stderr: TextIO | None = None,
) -> int:
    """Run a command; expected errors become ``ERROR: message`` on stderr and exit code 1."""
    stderr = stderr or sys.stderr
    debug = bool(getattr(args, "debug", False))
    try:
        return await func(args)
    except KubeportError as err:
        if debug:
            raise
        print(f"ERROR: {err.message}", file=stderr)
        return 1
    except BaseExceptionGroup as group:
        # A nursery may wrap one expected error; show it like any other.
        leaves = _leaves(group)
        if len(leaves) == 1 and isinstance(leaves[0], KubeportError) and not debug:
            print(f"ERROR: {leaves[0].message}", file=stderr)
            return 1
        raise


def run_command(func: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """The synchronous entry: logging, trio.run, and Ctrl-C as exit code 130."""
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO: noise in an agent's log and before a CLI's one ERROR line.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    try:
        return trio.run(guarded, func, args)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        if all(isinstance(e, KeyboardInterrupt) for e in _leaves(group)):
            return 130
        raise


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


async def until_signalled(cancel: trio.CancelScope) -> None:
    """SIGINT (Ctrl-C) and SIGTERM (systemd stop) end the services cleanly: the store closes, heartbeats go."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"\nreceived {signal.Signals(signum).name}, stopping", file=sys.stderr, flush=True)
            cancel.cancel()
            return


def read_input_file(path: str, *, limit: int, what: str) -> bytes:
    """A file argument, or standard input for ``-``; size-limited with a clear message."""
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
        if len(data) > limit:
            raise BadParameter(f"{what} on standard input is larger than the limit of {limit} bytes")
        return data
    return read_limited(Path(path), limit=limit, what=what)

"""What every kubeport command line shares: finding the registry and identity, running async code,
and turning expected errors into one ``ERROR: ...`` line with exit code 1 (tracebacks only with --debug).

Identity resolution (like tctl on the auth host):
1. ``--identity FILE`` or ``$KUBEPORT_IDENTITY``; the registry address from ``--registry`` /
   ``$KUBEPORT_REGISTRY`` or, failing those, the address recorded in the identity file;
2. otherwise the admin identity in the local data dir (``--data-dir`` / ``$KUBEPORT_DATA_DIR`` / default),
   which the registry writes on this host together with its address.

It lives in ``registry.host`` (not ``registry.cli``) because every command line uses it: kpctl and kubeport
in ``registry.cli``, the agent's in ``agent.cli``, get-kubeconfig's in ``registry.mint.cli``. So it imports no
client: :class:`Connection` is data, and the caller opens ``RegistryClient.from_identity``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

from registry.core.errors import BadParameter, KubeportError
from registry.core.identity_file import IdentityFile
from registry.host.files import read_limited
from registry.host.paths import ADMIN_IDENTITY, default_data_dir

MAX_IDENTITY_BYTES = 1 << 20


# Flags that work before and after the subcommand (``kpctl --registry X status`` and ``kpctl status
# --registry X``), as with tctl and kubectl. Each parser in the tree declares them with the default
# SUPPRESS, so a parser that did not see the flag leaves the namespace alone instead of writing its default
# over a value another parser stored; ``parse_command_line`` fills the real defaults afterwards. Given twice,
# the last one on the command line wins (argparse's rule for one parser, kept across parsers).
GLOBAL_DEFAULTS: dict[str, Any] = {"registry": None, "identity": None, "data_dir": None, "debug": False}
_MAX_FLAG_VALUE = 4096

DATA_DIR_HELP = (
    "registry data dir to find the local admin identity in (default: $KUBEPORT_DATA_DIR, "
    "/var/lib/kubeport as root, ~/.kubeport otherwise)"
)


def flag_value(what: str) -> Callable[[str], str]:
    """An argparse ``type`` refusing empty, huge or control-character values with a message naming the flag."""

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError("must not be empty")
        if len(text) > _MAX_FLAG_VALUE:
            raise argparse.ArgumentTypeError(f"longer than {_MAX_FLAG_VALUE} characters")
        if not text.isprintable():
            raise argparse.ArgumentTypeError("must not contain control characters")
        return text

    return check


def add_connection_flags(parser: argparse.ArgumentParser, *, data_dir_help: str = DATA_DIR_HELP) -> None:
    """``--registry``, ``--identity``/``-i`` and ``--data-dir``; add them to every parser they may follow."""
    group = parser.add_argument_group("connection (before or after the command)")
    group.add_argument(
        "--registry",
        metavar="HOST:PORT",
        type=flag_value("--registry"),
        default=argparse.SUPPRESS,
        help="registry address (default: $KUBEPORT_REGISTRY, else the address in the identity file)",
    )
    group.add_argument(
        "--identity",
        "-i",
        metavar="FILE",
        type=flag_value("--identity"),
        default=argparse.SUPPRESS,
        help="identity file (default: $KUBEPORT_IDENTITY, else DATA_DIR/admin.identity on the registry host)",
    )
    add_data_dir_flag(group, data_dir_help)


def add_data_dir_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR", type=flag_value("--data-dir"), default=argparse.SUPPRESS, help=help_text
    )


def add_metrics_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus /metrics, /healthz and /readyz over plain HTTP on this address (off by default; "
        "bind it to loopback or a private network, e.g. 127.0.0.1:9464)",
    )


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--debug", "-d", action="store_true", default=argparse.SUPPRESS, help="verbose logs and tracebacks on errors"
    )


def set_command(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], Awaitable[int]]) -> None:
    """Make ``parser`` a runnable command: call it last, after its flags are declared. It records which
    global flags the command declares; given before the command, any other is refused."""
    declared = frozenset(action.dest for action in parser._actions if action.dest in GLOBAL_DEFAULTS)
    parser.set_defaults(func=func, global_flags=declared)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; refuse a global flag the chosen command does not use (``kubeport --registry X agent start``
    would otherwise ignore it silently); then fill the defaults the SUPPRESSed flags did not set."""
    args = parser.parse_args(argv)
    accepted: frozenset[str] | None = getattr(args, "global_flags", None)
    if accepted is not None:
        for dest in GLOBAL_DEFAULTS:
            if dest in vars(args) and dest not in accepted:
                flag = "--" + dest.replace("_", "-")
                parser.error(f"{flag} does not apply to '{parser.prog} {_command_name(args)}'")
    for dest, default in GLOBAL_DEFAULTS.items():
        if dest not in vars(args):
            setattr(args, dest, default)
    return args


def _command_name(args: argparse.Namespace) -> str:
    parts = [v for k, v in sorted(vars(args).items()) if k == "command"]
    parts += [v for k, v in sorted(vars(args).items()) if k.endswith("_command") and isinstance(v, str)]
    return " ".join(str(p) for p in parts)


@dataclass(frozen=True)
class Connection:
    """Who this command line is and which registry it talks to; the caller opens the client
    (``RegistryClient.from_identity(conn.identity, conn.address)``): this room sits below the client."""

    identity: IdentityFile
    identity_path: Path
    address: str


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


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (systemd stop) end a daemon cleanly: the store closes, heartbeats go.

    A signal after start-up is the normal way to stop (exit 0). One that arrives while the daemon is still
    starting interrupts it: the command exits with 128 + the signal number (130 for Ctrl-C), as shells
    report an interrupted program, after one line on stderr and no traceback.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.started = False

    async def watch(self, cancel: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self.received = signal.Signals(signum)
                when = "stopping" if self.started else "start-up interrupted"
                print(f"\nreceived {self.received.name}, {when}", file=sys.stderr, flush=True)
                cancel.cancel()
                return

    def exit_code(self) -> int:
        if self.received is not None and not self.started:
            return 128 + int(self.received)
        return 0


def read_input_file(path: str, *, limit: int, what: str) -> bytes:
    """A file argument, or standard input for ``-``; size-limited with a clear message."""
    if path == "-":
        data = sys.stdin.buffer.read(limit + 1)
        if len(data) > limit:
            raise BadParameter(f"{what} on standard input is larger than the limit of {limit} bytes")
        return data
    return read_limited(Path(path), limit=limit, what=what)

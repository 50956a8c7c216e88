"""The harness the benchmark scripts share (``bench_registry.py``, ``bench_agent.py``).

What lives here: flag parsing with presets, the nearest-rank percentile, the machine description and the
markdown table, running kubeport processes (a registry, or any command that prints a banner) and ``main``'s
error reporting. What each benchmark measures stays in its own script.

A script imports this module first (``python scripts/bench_x.py`` puts ``scripts/`` on ``sys.path``);
importing it puts the repository root on ``sys.path`` too, so the ``registry`` imports that follow work
from a checkout without installing anything.

Invariants: every process started through :func:`running` is ended when its block exits, even on
cancellation; a child's output goes to a log file, never a pipe, so it can never block on a full one; a
child runs in the repository root with none of the caller's ``KUBEPORT_*``/``KUBECONFIG`` settings, so a
developer's own registry is never touched.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "registry" / "__init__.py").is_file() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402  (after the path set-up, like everything below)

from registry.client import RegistryClient  # noqa: E402
from registry.core.errors import KubeportError  # noqa: E402

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

STARTUP_TIMEOUT = 60.0  # a process that has not printed its banner by then is broken
CLIENT_TIMEOUT = 60.0
PYTHON_M = [sys.executable, "-m"]

_C = TypeVar("_C")


# --- flags -----------------------------------------------------------------------------------------------


def positive_list(limit: int) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated integers in 1..``limit`` (``_`` may group digits), sorted, unique."""

    def parse(text: str) -> tuple[int, ...]:
        values: set[int] = set()
        for raw in text.split(","):
            part = raw.strip().replace("_", "")
            # ASCII digits only: refuses signs, inner spaces, empty parts and digits int() cannot read ("²").
            if not (part.isascii() and part.isdigit()):
                raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text[:40]!r}")
            if len(part) > 9:  # bounded before int(): no time spent converting a megabyte of digits
                raise argparse.ArgumentTypeError(f"{part[:12]}... is out of range (1..{limit})")
            value = int(part)
            if not 1 <= value <= limit:
                raise argparse.ArgumentTypeError(f"{value} is out of range (1..{limit})")
            values.add(value)
        return tuple(sorted(values))

    return parse


def positive(limit: int) -> Callable[[str], int]:
    """An argparse type: one integer in 1..``limit``."""

    def parse(text: str) -> int:
        if "," in text:
            raise argparse.ArgumentTypeError(f"expected one positive integer, got {text[:40]!r}")
        (value,) = positive_list(limit)(text)
        return value

    return parse


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    full: Mapping[str, Any],
    quick: Mapping[str, Any],
) -> argparse.Namespace:
    """``argv`` parsed; every preset key whose option was not given takes the preset's value (``--quick``
    picks ``quick``, else ``full``; a key with no option of its own is simply set). ``--work-dir`` must be
    an existing directory and comes back absolute: children run in the repository root."""
    args = parser.parse_args(argv)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.work_dir is not None:
        if not args.work_dir.is_dir():
            parser.error(f"--work-dir {args.work_dir}: not a directory")
        args.work_dir = args.work_dir.resolve()
    return args


# --- results ---------------------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1): a value that was actually measured, never an interpolation."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on, taken at the start of a run."""
    return {
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "system": f"{platform.system()} {platform.machine()}",
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def loads(values: Iterable[float]) -> str:
    """Load averages as the table shows them: ``0.52 0.40 0.31``."""
    return " ".join(f"{x:.2f}" for x in values)


def machine_line(info: Mapping[str, Any]) -> str:
    """``machine: ..., load average <at start>``; the caller adds what else it knows (start vs end)."""
    return (
        f"machine: Python {info['python']}, nproc {info['nproc']}, {info['system']}, "
        f"load average {loads(info['loadavg_at_start'])}"
    )


def table_lines(header: str, separator: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table: the header and separator lines as given, then one line per row of cells."""
    return [header, separator, *("| " + " | ".join(cells) + " |" for cells in rows)]


def config_json(config: DataclassInstance) -> dict[str, Any]:
    """A config dataclass as JSON-ready values (paths become strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


# --- processes -------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of a child: the repository on PYTHONPATH, none of the caller's kubeport settings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    for var in ("KUBEPORT_REGISTRY", "KUBEPORT_IDENTITY", "KUBEPORT_DATA_DIR", "KUBECONFIG"):
        env.pop(var, None)
    return env


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-600:].strip()
    except OSError:
        return ""


async def spawn(argv: list[str], log: Path) -> trio.Process:
    """Start ``argv`` with stdout and stderr into ``log`` (no pipes: nothing can block on a full one)."""
    with log.open("wb") as handle:
        return await trio.lowlevel.open_process(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
        )


async def banner(process: trio.Process, log: Path, patterns: Sequence[re.Pattern[bytes]], what: str) -> list[str]:
    """Poll ``log`` until every pattern matched a whole line; their first groups, in order."""
    with trio.move_on_after(STARTUP_TIMEOUT):
        while True:
            text = (await trio.Path(log).read_bytes())[: 1 << 20]
            found = [p.search(text) for p in patterns]
            if all(found):
                return [m[1].decode() for m in found if m is not None]
            if process.returncode is not None or process.poll() is not None:
                raise RuntimeError(f"{what} exited during start-up: {_tail(log)}")
            await trio.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {STARTUP_TIMEOUT:.0f}s: {_tail(log)}")


async def stop(process: trio.Process, how: str) -> None:
    """``term``: SIGTERM (a clean shutdown), SIGKILL after 10 s; ``kill``: SIGKILL at once."""
    with trio.CancelScope(shield=True):
        if process.returncode is None and how == "term":
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def running(
    argv: list[str], log: Path, patterns: Sequence[re.Pattern[bytes]], what: str, *, how: str = "term"
) -> AsyncIterator[tuple[trio.Process, list[str]]]:
    """``argv`` started and its banner read (see :func:`banner`); stopped (see :func:`stop`) at the end."""
    process = await spawn(argv, log)
    try:
        yield process, await banner(process, log, patterns, what)
    finally:
        await stop(process, how)


# The registry's banner lines, each matched only once complete (up to its newline), so a half-written line
# never counts.
_ADDRESS = re.compile(rb"is running on (\S+)\n")
_IDENTITY = re.compile(rb"admin identity:\s+(\S+)[^\n]*\n")
_PIN = re.compile(rb"CA pin:\s+(\S+)\n")


@dataclass(frozen=True)
class Registry:
    """A running registry: where it listens, the admin identity file it wrote, its CA pin and process id."""

    address: str
    identity: Path
    ca_pin: str
    pid: int

    def client(self, timeout: float = CLIENT_TIMEOUT) -> RegistryClient:
        return RegistryClient.from_identity_file(self.identity, self.address, timeout=timeout)


@asynccontextmanager
async def registry(data_dir: Path, extra_args: Sequence[str] = ()) -> AsyncIterator[Registry]:
    """``kubeport registry start`` on ``data_dir`` and 127.0.0.1:0 (plus ``extra_args``, e.g. ``--store``),
    logging to ``<data_dir>.log`` beside it; SIGTERM (the store closes cleanly) when the block ends."""
    argv = [*PYTHON_M, "registry.cli.kubeport_main", "registry", "start", "--data-dir", str(data_dir)]
    argv += ["--listen", "127.0.0.1:0", "--kube-listen", "127.0.0.1:0", *extra_args]
    log = data_dir.parent / f"{data_dir.name}.log"
    async with running(argv, log, (_ADDRESS, _IDENTITY, _PIN), "the registry") as (process, found):
        address, identity, pin = found
        yield Registry(address, Path(identity), pin, process.pid)


# --- main ------------------------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def run_main(prog: str, run: Callable[[_C], Awaitable[str]], config: _C) -> int:
    """Print ``run(config)``'s report; 0, or 1 with the causes on stderr when the run failed the expected
    way (kubeport, OS, timeout or RuntimeError), 130 on Ctrl-C. Anything else is a bug and propagates."""
    try:
        print(trio.run(run, config), flush=True)
    except BaseException as exc:  # nurseries wrap failures in groups: report the real causes
        leaves = _leaves(exc)
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 130
        if not all(isinstance(leaf, KubeportError | RuntimeError | OSError | trio.TooSlowError) for leaf in leaves):
            raise
        for leaf in leaves:
            print(f"{prog}: failed: {leaf}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def no_gc_pauses() -> Iterator[None]:
    """The benchmark process's cyclic garbage collector off while latencies are timed (as ``timeit`` does):
    its watchers stand in for other processes, and a collection here (60-150 ms with a benchmark's objects
    on a loaded machine) would be charged to what is measured. Collected after. What runs in this process
    (bench_registry's store alone) runs without collections too, a stricter baseline; the registry, agent
    and upstream are subprocesses and keep their collectors on."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()

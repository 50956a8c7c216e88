"""Dynamic labels: run label commands (argv, never a shell) once, then periodically or on a cron schedule.

The one async (trio) part of ``labels``; ``labels/__init__`` does not import it.

Running one command (:func:`run_command`), as Teleport does: argv[0] is looked up on ``PATH``, the
environment and working directory are inherited, stdin is ``/dev/null``, stderr is discarded, stdout is
the value. Deliberate differences, all about safety:

* a timeout (Teleport has none, so one hung command froze its label forever);
* stdout is read incrementally and at most ``output_cap`` bytes are kept; more is a failure;
* the command runs in its own session / process group, and on timeout, overflow or cancellation the
  whole group is killed with SIGKILL and the child reaped before returning, so nothing is left behind;
* output is decoded as UTF-8 with replacement characters, ``\\r\\n`` becomes ``\\n``, surrounding
  whitespace is stripped (also on failure, where Teleport keeps it), and every other unsafe character
  (``labels.keys.is_unsafe_char``: NUL, ESC, C1 controls, U+2028, bidirectional overrides such as U+202E)
  except tab and newline becomes U+FFFD, so a value cannot carry terminal escape sequences into ``kube ls``
  output or display in another order than it is matched;
* values are clipped to ``MAX_LABEL_VALUE_LENGTH`` characters, so every result is a valid label value.

A failure is still a value, formatted ``"<error> output: <stdout>"`` as in Teleport, e.g.
``exit status 1 output: `` or ``executable file not found: "foo" output: ``.

Scheduling (:class:`DynamicLabels`): ``serve`` runs every label once, concurrently (Teleport runs them one
after another), reports started, then loops each label on its own: with a period, at a fixed rate measured
from the start of each run (Teleport's ticker; Teleport also runs every command a second time right after
start-up, which is skipped here); with a cron schedule, at each fire time of the injected wall clock.
Timestamps in :class:`LabelState` are ``trio.current_time()`` values (so tests under a MockClock are
deterministic); the wall clock is only used to compute cron fire times.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from labels._text import quote
from labels.duration import MIN_PERIOD, format_go_duration
from labels.keys import MAX_LABEL_VALUE_LENGTH, LabelError, is_unsafe_char, validate_label_key
from labels.schedule import next_cron_time, validate_cron

log = logging.getLogger(__name__)

_READ_CHUNK = 65536
_KEEP_CONTROLS = frozenset("\t\n")


# -------------------------------------------------------------------------------------------- one run


def _clean(raw: bytes) -> str:
    """Decode command output into a safe label value (see the module docstring)."""
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").strip()
    if text.isprintable():  # fast path: no control characters at all (tab and newline are not printable)
        return text
    return "".join("\ufffd" if ch not in _KEEP_CONTROLS and is_unsafe_char(ch) else ch for ch in text)


def _failure(error: str, output: bytes) -> tuple[bool, str]:
    return False, f"{error} output: {_clean(output)}"[:MAX_LABEL_VALUE_LENGTH]


def _exit_error(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit status {returncode}"


def _kill_group(pid: int) -> None:
    # Only called while the child is not yet reaped, so ``pid`` is still ours and names its process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


async def run_command(argv: Sequence[str], *, timeout: float, output_cap: int) -> tuple[bool, str]:
    """Run ``argv`` (no shell) and return ``(ok, value)``; never raises for a failing command.

    ``ok`` is True only for exit status 0, with the cleaned stdout as value. ``timeout`` is in seconds;
    ``output_cap`` (1 .. MAX_LABEL_VALUE_LENGTH bytes) bounds what is read. A bad ``timeout`` or
    ``output_cap`` is a programming error and raises :class:`LabelError`.
    """
    if not (timeout > 0 and math.isfinite(timeout)):
        raise LabelError(f"timeout must be a positive number of seconds (got {timeout!r})")
    if not 1 <= output_cap <= MAX_LABEL_VALUE_LENGTH:
        raise LabelError(f"output_cap must be between 1 and {MAX_LABEL_VALUE_LENGTH} bytes (got {output_cap})")
    if not argv:
        return _failure("command missing", b"")
    name = quote(str(argv[0]))
    try:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so a timeout can kill grandchildren too
        )
    except FileNotFoundError:
        return _failure(f"executable file not found: {name}", b"")
    except PermissionError:
        return _failure(f"permission denied: {name}", b"")
    except (OSError, ValueError, TypeError) as err:  # e.g. exec format error, NUL byte in an argument
        return _failure(f"cannot run {name}: {err}", b"")

    assert process.stdout is not None
    output = bytearray()
    error: str | None = None
    reaped = False
    try:
        with trio.move_on_after(timeout) as deadline:
            while len(output) <= output_cap:
                # Ask for at most one byte more than the cap: enough to notice an overflow, never more.
                chunk = await process.stdout.receive_some(min(_READ_CHUNK, output_cap + 1 - len(output)))
                if not chunk:
                    break
                output += chunk
            if len(output) > output_cap:
                error = f"output exceeds {output_cap} bytes"
            else:
                returncode = await process.wait()
                reaped = True
                if returncode != 0:
                    error = _exit_error(returncode)
        if deadline.cancelled_caught:
            error = f"timed out after {format_go_duration(timeout)}"
    finally:
        with trio.CancelScope(shield=True):
            if not reaped:
                _kill_group(process.pid)
                await process.wait()
            await process.stdout.aclose()
    if error is not None:
        return _failure(error, bytes(output[:output_cap]))
    return True, _clean(bytes(output))


# -------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class CommandSpec:
    """One dynamic label: ``key`` gets the output of ``command`` every ``period`` s or per ``schedule``.

    Exactly one of ``period`` / ``schedule``. A period below ``MIN_PERIOD`` (1 s) is raised to it, as
    Teleport does; a negative or non-finite one is an error. ``command`` may be given as any sequence of
    strings and is stored as a tuple. ``timeout`` in seconds; ``output_cap`` in bytes.
    """

    key: str
    command: tuple[str, ...]
    period: float | None = None
    schedule: str | None = None
    timeout: float = 30.0
    output_cap: int = MAX_LABEL_VALUE_LENGTH

    def __post_init__(self) -> None:
        validate_label_key(self.key)
        where = f"dynamic label {quote(self.key)}"
        command = self.command
        if isinstance(command, str | bytes) or not command or not all(isinstance(a, str) for a in command):
            raise LabelError(f"{where}: command must be a non-empty list of strings")
        if not command[0] or any("\0" in arg for arg in command):
            raise LabelError(f"{where}: command has an empty program name or a NUL character")
        object.__setattr__(self, "command", tuple(command))
        if (self.period is None) == (self.schedule is None):
            raise LabelError(f"{where}: set exactly one of period and schedule")
        if self.period is not None:
            if isinstance(self.period, bool) or not isinstance(self.period, int | float):
                raise LabelError(f"{where}: period must be a number of seconds")
            if not math.isfinite(self.period) or self.period < 0:
                raise LabelError(f"{where}: period must be a non-negative number of seconds")
            if self.period < MIN_PERIOD:
                log.warning("dynamic label %s: period raised to the minimum of 1s", self.key)
            object.__setattr__(self, "period", max(float(self.period), MIN_PERIOD))
        if self.schedule is not None:
            object.__setattr__(self, "schedule", validate_cron(self.schedule))
        if isinstance(self.timeout, bool) or not (
            isinstance(self.timeout, int | float) and self.timeout > 0 and math.isfinite(self.timeout)
        ):
            raise LabelError(f"{where}: timeout must be a positive number of seconds")
        if (
            isinstance(self.output_cap, bool)
            or not isinstance(self.output_cap, int)
            or not 1 <= self.output_cap <= MAX_LABEL_VALUE_LENGTH
        ):
            raise LabelError(f"{where}: output_cap must be between 1 and {MAX_LABEL_VALUE_LENGTH} bytes")


@dataclass(frozen=True)
class LabelState:
    """The latest outcome of one label. Times are ``trio.current_time()`` values; ``runs`` counts runs.

    ``last_error`` / ``last_error_at`` keep the most recent failure even after later successes.
    """

    value: str
    ok: bool
    last_run: float | None
    last_error: str | None
    last_error_at: float | None
    runs: int


@dataclass(frozen=True)
class DynamicLabelsStatistics:
    """Counters for monitoring: labels configured / with a value / failing now / running now, and totals."""

    labels: int
    with_value: int
    failing: int
    running: int
    runs_total: int
    failures_total: int
    changes_total: int


# ------------------------------------------------------------------------------------------ the runner


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Counters:
    runs: int = 0
    failures: int = 0
    changes: int = 0
    running: set[str] = field(default_factory=set)


class DynamicLabels:
    """Runs a set of :class:`CommandSpec` and keeps their latest values (see the module docstring).

    ``on_change`` is called synchronously, from the runner's task, each time a label's value differs from
    its previous one, including its first value; it must not block or raise.
    """

    def __init__(
        self,
        specs: Sequence[CommandSpec],
        *,
        on_change: Callable[[], None] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        keys = [spec.key for spec in specs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise LabelError(f"duplicate dynamic label keys: {', '.join(quote(k) for k in duplicates)}")
        self._specs = tuple(specs)
        self._on_change = on_change
        self._wall_clock = wall_clock or _utc_now
        self._states: dict[str, LabelState] = {}
        self._counters = _Counters()
        self._serving = False
        self._ran: trio.Event | None = None

    @property
    def specs(self) -> tuple[CommandSpec, ...]:
        return self._specs

    def results(self) -> dict[str, str]:
        """Key -> latest value, for labels that have run at least once."""
        return {key: state.value for key, state in self._states.items()}

    def states(self) -> dict[str, LabelState]:
        """Key -> :class:`LabelState`, for labels that have run at least once."""
        return dict(self._states)

    def statistics(self) -> DynamicLabelsStatistics:
        return DynamicLabelsStatistics(
            labels=len(self._specs),
            with_value=len(self._states),
            failing=sum(1 for state in self._states.values() if not state.ok),
            running=len(self._counters.running),
            runs_total=self._counters.runs,
            failures_total=self._counters.failures,
            changes_total=self._counters.changes,
        )

    async def wait_runs(self, key: str, runs: int) -> None:
        """Wait until label ``key`` has completed at least ``runs`` runs (for tests and start-up probes)."""
        while (state := self._states.get(key)) is None or state.runs < runs:
            if self._ran is None:
                self._ran = trio.Event()
            await self._ran.wait()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every label once, report started, then keep them updated until cancelled."""
        if self._serving:
            raise RuntimeError("DynamicLabels.serve is already running")
        self._serving = True
        try:
            wall_start = self._wall_clock()
            started_at = trio.current_time()
            async with trio.open_nursery() as nursery:
                for spec in self._specs:
                    nursery.start_soon(self._run_once, spec)
            task_status.started()
            async with trio.open_nursery() as nursery:
                for spec in self._specs:
                    if spec.period is not None:
                        nursery.start_soon(self._period_loop, spec, spec.period, started_at)
                    else:
                        assert spec.schedule is not None
                        nursery.start_soon(self._cron_loop, spec, spec.schedule, wall_start)
                await trio.sleep_forever()
        finally:
            self._serving = False

    async def _period_loop(self, spec: CommandSpec, period: float, last_start: float) -> None:
        while True:
            # Fixed rate from the previous start; a run that overran its period is followed at once.
            await trio.sleep_until(last_start + period)
            last_start = trio.current_time()
            await self._run_once(spec)

    async def _cron_loop(self, spec: CommandSpec, schedule: str, started: datetime) -> None:
        # The first fire time is the first one after serve() started, even if the initial runs took
        # longer than that; it is due at once then.
        fire = next_cron_time(schedule, started)
        while True:
            now = self._wall_clock()
            await trio.sleep(max(0.0, (fire - now).total_seconds()))
            await self._run_once(spec)
            # From the later of "now" and this fire time: a wake-up a hair early (the wall clock and trio's
            # clock drift apart) cannot fire the same minute twice, and fire times missed while a slow
            # command ran are skipped rather than run back to back.
            fire = next_cron_time(schedule, max(self._wall_clock(), fire))

    async def _run_once(self, spec: CommandSpec) -> None:
        self._counters.running.add(spec.key)
        try:
            ok, value = await run_command(spec.command, timeout=spec.timeout, output_cap=spec.output_cap)
        finally:
            self._counters.running.discard(spec.key)
        self._record(spec.key, ok, value)

    def _record(self, key: str, ok: bool, value: str) -> None:
        now = trio.current_time()
        previous = self._states.get(key)
        last_error = previous.last_error if previous else None
        last_error_at = previous.last_error_at if previous else None
        if not ok:
            last_error, last_error_at = value, now
            self._counters.failures += 1
        self._states[key] = LabelState(
            value=value,
            ok=ok,
            last_run=now,
            last_error=last_error,
            last_error_at=last_error_at,
            runs=(previous.runs if previous else 0) + 1,
        )
        self._counters.runs += 1
        # Log transitions only: a label failing every second must not flood the log.
        if not ok and (previous is None or previous.ok):
            log.warning("dynamic label %s failed: %s", key, value[:200])
        elif ok and previous is not None and not previous.ok:
            log.info("dynamic label %s recovered", key)
        if self._ran is not None:
            self._ran.set()
            self._ran = None
        if previous is None or previous.value != value:
            self._counters.changes += 1
            if self._on_change is not None:
                self._on_change()

"""Dynamic labels: run label commands (argv, never a shell) once, then periodically or on a cron schedule.

The one async (trio) part of ``labels``; ``labels/__init__`` does not import it.

Running one command (:func:`run_command`), as Teleport does: argv[0] is looked up on ``PATH`` (unless the
caller resolved it already and passes ``executable``), the environment and working directory are
inherited, stdin is ``/dev/null``, stdout is the value. Deliberate differences, all about safety:

* a timeout (Teleport has none, so one hung command froze its label forever);
* stdout is read incrementally and at most ``output_cap`` bytes are kept; more is a failure;
* the command runs in its own session; when it ends (normally, or on timeout, overflow or cancellation)
  every process it left behind is found and killed (:mod:`labels._session`: its session and group, its
  descendants, and processes carrying the run's environment marker, which a ``setsid`` grandchild keeps),
  then the child is reaped, so nothing outlives the run (the limits of that hunt are stated there);
* at most ``limiter``'s tokens commands run at once per runner factory (the agent shares one
  :class:`trio.CapacityLimiter` of :data:`LABEL_CONCURRENCY`); the rest queue, and a command's timeout
  starts when it gets its slot;
* output is decoded as UTF-8 with replacement characters, ``\\r\\n`` becomes ``\\n``, surrounding
  whitespace is stripped (also on failure, where Teleport keeps it), and every other unsafe character
  (``labels.keys.is_unsafe_char``: NUL, ESC, C1 controls, U+2028, bidirectional overrides such as U+202E)
  except tab and newline becomes U+FFFD, so a value cannot carry terminal escape sequences into ``kube ls``
  output or display in another order than it is matched;
* values are clipped to ``MAX_LABEL_VALUE_LENGTH`` characters, so every result is a valid label value.

A failure is still a value, formatted ``"<error> output: <stdout>"`` as in Teleport, e.g.
``exit status 1 output: `` or ``executable file not found: "foo" output: ``; kubeport appends
`` stderr: <first non-blank line of stderr>`` (cleaned like stdout, at most :data:`STDERR_LINE_CAP`
characters) when the command wrote any, because that line is usually the reason (Teleport drops stderr).
A :class:`CommandSpec` with a ``refusal`` never runs: its value is ``"<refusal> output: "``.

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
import secrets
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from labels import _session
from labels._text import quote
from labels.duration import MIN_PERIOD, format_go_duration
from labels.keys import MAX_LABEL_VALUE_LENGTH, LabelError, is_unsafe_char, validate_label_key
from labels.schedule import next_cron_time, validate_cron

log = logging.getLogger(__name__)

# Label commands running at once per runner factory (the agent shares one limiter); the rest queue.
LABEL_CONCURRENCY = 32
# The first line of stderr shown in a failure value, and how much stderr is kept to find it.
STDERR_LINE_CAP = 200
STDERR_KEEP = 4096

_READ_CHUNK = 65536
# How long stderr may still deliver after every process of the run is dead (only an escaped holder waits).
_STDERR_GRACE = 1.0
# Unreaped label commands of this process (session leaders); a hunt for one run skips the others' sessions.
_LIVE_LEADERS: set[int] = set()
_KEEP_CONTROLS = frozenset("\t\n")


# -------------------------------------------------------------------------------------------- one run


def _clean(raw: bytes) -> str:
    """Decode command output into a safe label value (see the module docstring)."""
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").strip()
    if text.isprintable():  # fast path: no control characters at all (tab and newline are not printable)
        return text
    return "".join("\ufffd" if ch not in _KEEP_CONTROLS and is_unsafe_char(ch) else ch for ch in text)


def _failure(error: str, output: bytes, stderr: bytes = b"") -> tuple[bool, str]:
    value = f"{error} output: {_clean(output)}"
    line = _first_line(stderr)
    if line:
        # Appended after Teleport's shape; stdout gives way first so the reason survives the length cap.
        suffix = f" stderr: {line}"
        value = value[: max(0, MAX_LABEL_VALUE_LENGTH - len(suffix))] + suffix
    return False, value[:MAX_LABEL_VALUE_LENGTH]


def _first_line(stderr: bytes) -> str:
    """The first non-blank line of ``stderr``, cleaned like stdout and shortened to STDERR_LINE_CAP."""
    for raw_line in stderr.splitlines():
        line = _clean(raw_line)
        if line:
            return line if len(line) <= STDERR_LINE_CAP else line[: STDERR_LINE_CAP - 3] + "..."
    return ""


def _exit_error(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit status {returncode}"


def _signal_child(pid: int, sig: signal.Signals) -> None:
    # Only called while the child is not yet reaped, so ``pid`` is still ours (and names its group).
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:  # Linux < 5.3: the exit is then observed by reaping (see _wait_exited)
        return None


async def _wait_exited(process: trio.Process, pidfd: int | None) -> None:
    """Wait until the child has exited *without reaping it* when a pidfd is available, so its pid (its
    session id) stays reserved while :func:`labels._session.hunt` looks for what it left behind."""
    if pidfd is None:
        await process.wait()
    else:
        await trio.lowlevel.wait_readable(pidfd)


async def _drain(stream: trio.abc.ReceiveStream, head: bytearray, done: trio.Event) -> None:
    """Read ``stream`` to EOF, keeping only its first STDERR_KEEP bytes (a child writing more than a pipe
    holds must not block on a reader that stopped)."""
    try:
        while chunk := await stream.receive_some(_READ_CHUNK):
            if len(head) < STDERR_KEEP:
                head += chunk[: STDERR_KEEP - len(head)]
    except trio.ClosedResourceError:  # pragma: no cover - closed under us only during teardown
        pass
    finally:
        done.set()


async def _clean_up(
    process: trio.Process, pidfd: int | None, marker: str, since: int | None, *, full: bool, exited: bool
) -> None:
    """Kill the child (unless it exited), everything it left behind, then reap it. Shielded by the caller."""
    if not exited:
        _signal_child(process.pid, signal.SIGSTOP)  # it cannot fork while we look for its descendants
    try:
        others = frozenset(_LIVE_LEADERS)
        if full:  # every process on the host: off the event loop
            await trio.to_thread.run_sync(lambda: _session.hunt(process.pid, marker, since=None, others=others))
        else:  # a handful of young processes: cheaper than a thread hop
            _session.hunt(process.pid, marker, since=since, others=others)
    finally:
        if process.returncode is None:
            _signal_child(process.pid, signal.SIGKILL)
            await process.wait()
        _LIVE_LEADERS.discard(process.pid)
        if pidfd is not None:
            os.close(pidfd)


async def run_command(
    argv: Sequence[str], *, timeout: float, output_cap: int, executable: str | None = None
) -> tuple[bool, str]:
    """Run ``argv`` (no shell) and return ``(ok, value)``; never raises for a failing command.

    ``ok`` is True only for exit status 0, with the cleaned stdout as value. ``timeout`` is in seconds;
    ``output_cap`` (1 .. MAX_LABEL_VALUE_LENGTH bytes) bounds what is read. ``executable``: the program to
    run instead of looking ``argv[0]`` up on PATH (argv[0] is still passed as given). A bad ``timeout``
    or ``output_cap`` is a programming error and raises :class:`LabelError`.
    """
    if not (timeout > 0 and math.isfinite(timeout)):
        raise LabelError(f"timeout must be a positive number of seconds (got {timeout!r})")
    if not 1 <= output_cap <= MAX_LABEL_VALUE_LENGTH:
        raise LabelError(f"output_cap must be between 1 and {MAX_LABEL_VALUE_LENGTH} bytes (got {output_cap})")
    if not argv:
        return _failure("command missing", b"")
    name = quote(str(argv[0]))
    marker = secrets.token_hex(16)
    since = _session.last_pid()
    try:
        process = await trio.lowlevel.open_process(
            list(argv),
            executable=executable,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own session and group: the first thing the clean-up looks for
            env={**os.environ, _session.MARKER_ENV: marker},  # inherited by setsid'ed grandchildren too
        )
    except FileNotFoundError:
        return _failure(f"executable file not found: {name}", b"")
    except PermissionError:
        return _failure(f"permission denied: {name}", b"")
    except (OSError, ValueError, TypeError) as err:  # e.g. exec format error, NUL byte in an argument
        return _failure(f"cannot run {name}: {err}", b"")

    assert process.stdout is not None
    assert process.stderr is not None
    _LIVE_LEADERS.add(process.pid)
    pidfd = _open_pidfd(process.pid)
    output = bytearray()
    stderr = bytearray()
    stderr_done = trio.Event()
    error: str | None = None
    exited = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stderr, stderr, stderr_done)
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
                        await _wait_exited(process, pidfd)
                        exited = True
                if deadline.cancelled_caught:
                    error = f"timed out after {format_go_duration(timeout)}"
            finally:
                with trio.CancelScope(shield=True):
                    # After a clean exit only younger processes are scanned (cheap); otherwise all of them.
                    await _clean_up(process, pidfd, marker, since, full=not exited, exited=exited)
            # Everything that held stderr is dead now; whatever is still unread arrives at once.
            with trio.move_on_after(_STDERR_GRACE):
                await stderr_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await process.stdout.aclose()
            await process.stderr.aclose()
    if error is None and process.returncode != 0:
        assert process.returncode is not None
        error = _exit_error(process.returncode)
    if error is not None:
        return _failure(error, bytes(output[:output_cap]), bytes(stderr))
    return True, _clean(bytes(output))


# -------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class CommandSpec:
    """One dynamic label: ``key`` gets the output of ``command`` every ``period`` s or per ``schedule``.

    Exactly one of ``period`` / ``schedule``. A period below ``MIN_PERIOD`` (1 s) is raised to it, as
    Teleport does; a negative or non-finite one is an error. ``command`` may be given as any sequence of
    strings and is stored as a tuple. ``timeout`` in seconds; ``output_cap`` in bytes. ``executable``: the
    program to run (an absolute path the caller resolved and checked) instead of a PATH lookup of
    ``command[0]``. ``refusal``: the reason this command must never run (the agent's allow-list said no);
    the label's value is then that reason, and nothing is started, ever.
    """

    key: str
    command: tuple[str, ...]
    period: float | None = None
    schedule: str | None = None
    timeout: float = 30.0
    output_cap: int = MAX_LABEL_VALUE_LENGTH
    executable: str | None = None
    refusal: str | None = None

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
        if self.executable is not None and not (
            isinstance(self.executable, str) and os.path.isabs(self.executable) and "\0" not in self.executable
        ):
            raise LabelError(f"{where}: executable must be an absolute path")
        if self.refusal is not None and not (isinstance(self.refusal, str) and self.refusal):
            raise LabelError(f"{where}: refusal must be a non-empty reason")


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
    its previous one, including its first value; it must not block or raise. ``on_run`` is called the same
    way after every run with its result, ``"ok"``, ``"failed"`` or ``"refused"`` (the command was never
    started: see :attr:`CommandSpec.refusal`), so a caller can count runs (the agent's metrics) without this
    package knowing about them. ``limiter`` bounds the
    commands running at once; share one between runners to bound a whole agent (default: a limiter of
    :data:`LABEL_CONCURRENCY` for this runner alone).
    """

    def __init__(
        self,
        specs: Sequence[CommandSpec],
        *,
        on_change: Callable[[], None] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
        limiter: trio.CapacityLimiter | None = None,
        on_run: Callable[[str], None] | None = None,
    ) -> None:
        keys = [spec.key for spec in specs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise LabelError(f"duplicate dynamic label keys: {', '.join(quote(k) for k in duplicates)}")
        self._specs = tuple(specs)
        self._on_change = on_change
        self._on_run = on_run
        self._wall_clock = wall_clock or _utc_now
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(LABEL_CONCURRENCY)
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
                    if spec.refusal is not None:
                        continue  # its value never changes: nothing to repeat
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
        if spec.refusal is not None:
            self._record(spec.key, *_failure(spec.refusal, b""), result="refused")
            return
        async with self._limiter:
            self._counters.running.add(spec.key)
            try:
                ok, value = await run_command(
                    spec.command, timeout=spec.timeout, output_cap=spec.output_cap, executable=spec.executable
                )
            finally:
                self._counters.running.discard(spec.key)
        self._record(spec.key, ok, value)

    def _record(self, key: str, ok: bool, value: str, *, result: str | None = None) -> None:
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
        if self._on_run is not None:
            self._on_run(result or ("ok" if ok else "failed"))
        if self._ran is not None:
            self._ran.set()
            self._ran = None
        if previous is None or previous.value != value:
            self._counters.changes += 1
            if self._on_change is not None:
                self._on_change()

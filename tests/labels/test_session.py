"""Issue 7 §2/§9: what a label command leaves behind is killed, label processes are capped per agent, a
refused command never runs, and a failure shows the first line of stderr.

Real processes on the real clock (a MockClock would fire a timeout the moment the test waits on a
process); every wait polls with a deadline or blocks on a file lock the test holds, never on a sleep.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from labels import MAX_LABEL_VALUE_LENGTH, LabelError
from labels._session import ProcStat, members, parse_stat
from labels.runner import LABEL_CONCURRENCY, STDERR_LINE_CAP, CommandSpec, DynamicLabels, run_command

PY = sys.executable


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie left for init to reap does not run)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] not in (b"Z", b"X")


async def _poll(condition: Callable[[], bool], within: float = 10.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``within`` seconds pass (False)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await trio.sleep(0.01)
    return True


async def _wait_not_running(pid: int, within: float = 10.0) -> bool:
    return await _poll(lambda: not _running(pid), within)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _text(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


async def _wait_file(path: Path, within: float = 10.0) -> str:
    assert await _poll(lambda: bool(_text(path)), within), f"{path} was never written"
    return _text(path)


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids a test expects to be killed; any still running at teardown are killed so no test leaks one."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _running(pid):
            os.kill(pid, 9)


def _daemon(pid_file: Path, *, parent: str, clear_fds: bool = True, double_fork: bool = False) -> list[str]:
    """A command whose grandchild calls setsid() (leaving the session and group), writes its pid, and
    sleeps forever. ``parent`` is what the command does afterwards: "exit", "hang" or "print"."""
    code = f"""
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if {double_fork!r} and os.fork() != 0:
        os._exit(0)
    if {clear_fds!r}:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
    with open({str(pid_file)!r} + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
    os.close(w)
    while True:
        time.sleep(3600)
os.close(w)
os.read(r, 1)  # returns once the daemon has written its pid (it closed its end)
while not os.path.exists({str(pid_file)!r}):
    pass
if {parent!r} == "hang":
    while True:
        time.sleep(3600)
print("parent done")
"""
    return [PY, "-c", code]


# ------------------------------------------------------------------------------- nothing outlives a run


@pytest.mark.parametrize(
    ("parent", "clear_fds", "double_fork", "ok"),
    [
        ("hang", True, False, False),  # timeout while the parent still runs
        ("exit", True, False, True),  # a clean exit that leaves an orphaned daemon behind
        ("exit", True, True, True),  # double fork: the daemon's parent is gone before anyone looks
        ("exit", False, False, False),  # the orphan keeps stdout open: the run times out, parent long dead
        ("hang", True, True, False),
    ],
)
async def test_a_setsid_grandchild_never_outlives_its_label_command(
    tmp_path: Path, leftovers: list[int], parent: str, clear_fds: bool, double_fork: bool, ok: bool
) -> None:
    pid_file = tmp_path / "daemon.pid"
    argv = _daemon(pid_file, parent=parent, clear_fds=clear_fds, double_fork=double_fork)
    with trio.fail_after(30):
        result_ok, value = await run_command(argv, timeout=2.0, output_cap=100)
    daemon = int(pid_file.read_text())
    leftovers.append(daemon)
    assert result_ok is ok, value
    if not ok:
        assert value.startswith("timed out after 2s"), value
    assert await _wait_not_running(daemon), f"the setsid grandchild {daemon} survived the label run"


async def test_removing_a_label_kills_its_setsid_grandchild(tmp_path: Path, leftovers: list[int]) -> None:
    """Cancellation (the cluster was deleted or its labels changed) kills the whole run, like a timeout."""
    pid_file = tmp_path / "daemon.pid"
    argv = _daemon(pid_file, parent="hang")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_command(argv, timeout=600.0, output_cap=100))
            daemon = int(await _wait_file(pid_file))
            leftovers.append(daemon)
            assert _running(daemon)
            nursery.cancel_scope.cancel()
    assert await _wait_not_running(daemon)


async def test_a_label_whose_children_fork_quickly_is_still_cleaned_up(tmp_path: Path, leftovers: list[int]) -> None:
    """A small fork chain (each process forks, the parent setsid()s away) — every link is found."""
    pids = tmp_path / "pids"
    code = f"""
import os, time
for _ in range(5):
    if os.fork() != 0:
        break
    os.setsid()
with open({str(pids)!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")
while True:
    time.sleep(3600)
"""
    with trio.fail_after(30):
        ok, _ = await run_command([PY, "-c", code], timeout=1.5, output_cap=100)
    assert not ok
    chain = [int(line) for line in _text(pids).split()]
    leftovers.extend(chain)
    assert len(chain) == 6
    for pid in chain:
        assert await _wait_not_running(pid), f"process {pid} of the fork chain survived"


async def test_the_label_command_itself_is_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os; open({str(pid_file)!r}, 'w').write(str(os.getpid())); print('x')"
    assert await run_command([PY, "-c", code], timeout=10, output_cap=100) == (True, "x")
    assert not _exists(f"/proc/{_text(pid_file)}"), "the child was left a zombie"


# ------------------------------------------------------------------------------------ the /proc helpers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"42 (sleep) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0", ProcStat(42, "S", 1, 42, 42, 777)),
        # A command name with spaces and parentheses cannot shift the fields.
        (b"7 (a) S 9 9 9 (b) ) R 3 4 5 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0", ProcStat(7, "R", 3, 4, 5, 99)),
        (b"", None),
        (b"garbage", None),
        (b"1 (x) S 1 2", None),
        (b"x (y) S a b c d", None),
    ],
)
def test_proc_stat_parsing_survives_hostile_command_names(raw: bytes, expected: ProcStat | None) -> None:
    assert parse_stat(raw) == expected


def test_members_follow_sessions_groups_children_and_the_marker() -> None:
    def stat(pid: int, ppid: int, pgrp: int, session: int) -> ProcStat:
        return ProcStat(pid, "S", ppid, pgrp, session, 0)

    snapshot = {
        100: stat(100, 50, 100, 100),  # the leader
        101: stat(101, 100, 100, 100),  # its child
        102: stat(102, 101, 102, 102),  # setsid'ed grandchild, parent alive
        103: stat(103, 102, 102, 102),  # in the grandchild's session
        104: stat(104, 1, 104, 104),  # orphaned setsid'ed daemon: only the marker tells
        105: stat(105, 1, 104, 104),  # its session (orphaned too)
        200: stat(200, 1, 200, 200),  # somebody else's process
        201: stat(201, 200, 200, 200),
    }
    assert members(snapshot, 100, lambda pid: pid == 104) == {100, 101, 102, 103, 104, 105}
    assert members(snapshot, 100, lambda pid: False) == {100, 101, 102, 103}
    # Another run's session (200 is its leader) is never asked about: it cannot hold this run's processes.
    asked: list[int] = []
    members(snapshot, 100, lambda pid: asked.append(pid) or False, others={200})
    assert sorted(asked) == [104, 105]


# ------------------------------------------------------------------------------------------ concurrency


async def test_label_processes_are_capped_per_agent_and_the_rest_queue(tmp_path: Path) -> None:
    """40 labels over two runners sharing one limiter: never more than 32 processes at once; all 40 run."""
    running = tmp_path / "running"
    running.mkdir()
    log = tmp_path / "log"
    gate = tmp_path / "gate"
    gate.write_text("")
    code = f"""
import fcntl, os, sys
mine = os.path.join({str(running)!r}, sys.argv[1])
open(mine, "w").close()
with open({str(log)!r}, "a") as f:
    f.write(f"{{len(os.listdir({str(running)!r}))}}\\n")
with open({str(gate)!r}) as g:
    fcntl.flock(g, fcntl.LOCK_SH)  # blocks while the test holds the gate
os.unlink(mine)
print("done")
"""
    limiter = trio.CapacityLimiter(LABEL_CONCURRENCY)
    runners = [
        DynamicLabels(
            [
                CommandSpec(key=f"k{r}-{i}", command=(PY, "-c", code, f"{r}-{i}"), period=3600, timeout=60)
                for i in range(20)
            ],
            limiter=limiter,
        )
        for r in range(2)
    ]
    held = os.open(gate, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        await _run_gated(runners, limiter, running, held)
    finally:
        os.close(held)
    counts = [int(line) for line in _text(log).split()]
    assert len(counts) == 40
    assert max(counts) <= LABEL_CONCURRENCY
    assert all(set(r.results().values()) == {"done"} for r in runners)


async def _run_gated(runners: list[DynamicLabels], limiter: trio.CapacityLimiter, running: Path, held: int) -> None:
    def all_placed() -> bool:
        return len(os.listdir(running)) == 32 and limiter.statistics().tasks_waiting == 8

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for runner in runners:
                nursery.start_soon(runner.serve)
            assert await _poll(all_placed, 30), (os.listdir(running), limiter.statistics())
            # Every one of the 40 runs is now either holding a slot or queued for one.
            assert limiter.statistics().borrowed_tokens == 32
            assert sum(r.statistics().running for r in runners) == 32
            fcntl.flock(held, fcntl.LOCK_UN)
            for r, runner in enumerate(runners):
                for i in range(20):
                    await runner.wait_runs(f"k{r}-{i}", 1)
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- refusal and executable


async def test_a_refused_label_never_runs_and_reports_why(tmp_path: Path) -> None:
    proof = tmp_path / "ran"
    spec = CommandSpec(
        key="region",
        command=("touch", str(proof)),
        period=1.0,
        refusal='command not allowed on this agent: "touch"',
    )
    labels = DynamicLabels([spec])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(labels.serve)
            assert labels.results() == {"region": 'command not allowed on this agent: "touch" output: '}
            assert labels.states()["region"].ok is False
            assert labels.statistics().failing == 1
            nursery.cancel_scope.cancel()
    assert not proof.exists()


async def test_executable_is_what_runs_and_argv0_is_passed_as_given() -> None:
    argv = ("no-such-program-anywhere", "-c", "import sys; print(sys.argv[0] if False else 'ran')")
    assert await run_command(argv, timeout=10, output_cap=100, executable=PY) == (True, "ran")
    assert (await run_command(argv, timeout=10, output_cap=100))[0] is False


@pytest.mark.parametrize("executable", ["python3", "./x", "", "/bin/\0sh"])
def test_a_spec_refuses_a_relative_or_malformed_executable(executable: str) -> None:
    with pytest.raises(LabelError):
        CommandSpec(key="k", command=("x",), period=1.0, executable=executable)


def test_a_spec_refuses_an_empty_refusal() -> None:
    with pytest.raises(LabelError):
        CommandSpec(key="k", command=("x",), period=1.0, refusal="")


# ------------------------------------------------------------------------------------ stderr (§9)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("echo out; echo 'bad region' >&2; echo more >&2; exit 2", "exit status 2 output: out stderr: bad region"),
        ("printf '\\n  \\n  first real line  \\n' >&2; exit 1", "exit status 1 output:  stderr: first real line"),
        ("exit 4", "exit status 4 output: "),  # no stderr, no suffix: Teleport's shape exactly
        ("printf 'esc \\033[31mred\\n' >&2; exit 1", "exit status 1 output:  stderr: esc \ufffd[31mred"),
        ("printf 'a\\000b\\n' >&2; exit 1", "exit status 1 output:  stderr: a\ufffdb"),
    ],
)
async def test_a_failing_label_shows_the_first_line_of_stderr(script: str, expected: str) -> None:
    assert await run_command(["/bin/sh", "-c", script], timeout=10, output_cap=100) == (False, expected)


async def test_stderr_line_is_capped_and_survives_a_full_stdout() -> None:
    script = "head -c 9000 /dev/zero | tr '\\0' e >&2; head -c 5000 /dev/zero | tr '\\0' o; exit 1"
    ok, value = await run_command(["/bin/sh", "-c", script], timeout=10, output_cap=MAX_LABEL_VALUE_LENGTH)
    assert not ok
    assert len(value) <= MAX_LABEL_VALUE_LENGTH
    assert value.startswith("output exceeds")
    assert value.endswith(" stderr: " + "e" * (STDERR_LINE_CAP - 3) + "...")


async def test_a_command_flooding_stderr_does_not_block() -> None:
    """Megabytes on stderr (more than a pipe holds) and a success: the value is stdout alone."""
    script = "head -c 3000000 /dev/zero >&2; echo fine"
    with trio.fail_after(20):
        assert await run_command(["/bin/sh", "-c", script], timeout=15, output_cap=100) == (True, "fine")

"""The dynamic-label runner: real tiny commands, and the periodic/cron loops under a MockClock.

Commands are real processes. Tests that time a command out use the real clock (under an autojump
MockClock the timeout would fire the moment the test waits on the process). Loop tests use the manual
``mock_clock`` and move it themselves; its autojump threshold is raised to a few real seconds only as a
watchdog, so a bug ends in a failure instead of a hung test run.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from labels import MAX_LABEL_VALUE_LENGTH, LabelError
from labels.runner import CommandSpec, DynamicLabels, LabelState, run_command

PY = sys.executable
MISSING = "kubeport-test-no-such-binary"
WATCHDOG_SECONDS = 5.0


def _py(code: str) -> list[str]:
    return [PY, "-c", code]


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (it does not exist, or only a zombie is left for init to reap)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


def _reaped(pid: int) -> bool:
    """True when no process (not even a zombie) has ``pid``: its parent has waited for it."""
    return not Path(f"/proc/{pid}").exists()


def _read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        await trio.sleep(0.01)
    return True


# ------------------------------------------------------------------------------------------ one command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/bin/echo", "hello"], (True, "hello")),  # trailing newline stripped
        (["printf", "  a\\nb\\n\\n"], (True, "a\nb")),  # inner newlines kept, ends trimmed
        (["printf", "a\\r\\nb\\r\\n"], (True, "a\nb")),
        (["printf", "a\\tb"], (True, "a\tb")),
        (["printf", ""], (True, "")),
        (["/bin/echo", "$HOME; echo pwned"], (True, "$HOME; echo pwned")),  # argv, no shell
        (["/bin/sh", "-c", "echo oops >&2; echo out"], (True, "out")),  # stderr discarded
        (["cat"], (True, "")),  # stdin is /dev/null, so this cannot hang
        (["/bin/sh", "-c", "exit 3"], (False, "exit status 3 output: ")),
        (["/bin/sh", "-c", "echo partial; exit 1"], (False, "exit status 1 output: partial")),
        (["/bin/sh", "-c", "kill -9 $$"], (False, "killed by signal SIGKILL output: ")),
        ([MISSING], (False, f'executable file not found: "{MISSING}" output: ')),
        (["/nonexistent/dir/tool"], (False, 'executable file not found: "/nonexistent/dir/tool" output: ')),
        ([], (False, "command missing output: ")),
        # binary output: invalid UTF-8 and control characters (NUL, ESC) become U+FFFD
        (
            _py("import sys; sys.stdout.buffer.write(b'\\x00ab\\xffc\\x1b[31mred\\x7f\\n')"),
            (True, "\ufffdab\ufffdc\ufffd[31mred\ufffd"),
        ),
        (_py("import sys; sys.stdout.buffer.write('caf\\u00e9 \\u2713'.encode())"), (True, "café ✓")),
    ],
)
async def test_run_command(argv: list[str], expected: tuple[bool, str]) -> None:
    with trio.fail_after(10):
        assert await run_command(argv, timeout=10, output_cap=4096) == expected


async def test_nul_in_an_argument_is_a_failure_not_a_crash() -> None:
    ok, value = await run_command(["/bin/echo", "a\0b"], timeout=5, output_cap=100)
    assert not ok
    assert value.startswith('cannot run "/bin/echo": ')


async def test_permission_denied(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR)
    if os.access(script, os.X_OK):  # root may execute anything
        pytest.skip("running as a user that can execute non-executable files")
    assert await run_command([str(script)], timeout=5, output_cap=100) == (
        False,
        f'permission denied: "{script}" output: ',
    )


@pytest.mark.parametrize(
    ("size", "cap", "ok"),
    [(5, 5, True), (6, 5, False), (1_000_000, 4096, False), (70_000, 4096, False)],
)
async def test_output_cap(size: int, cap: int, ok: bool) -> None:
    argv = _py(f"import sys; sys.stdout.write('x' * {size})")
    with trio.fail_after(10):
        result_ok, value = await run_command(argv, timeout=10, output_cap=cap)
    assert result_ok is ok
    if ok:
        assert value == "x" * size
    else:
        assert value.startswith(f"output exceeds {cap} bytes output: xxx")
        assert len(value) <= MAX_LABEL_VALUE_LENGTH


async def test_timeout_kills_and_reaps_the_command() -> None:
    # exec keeps the pid: the pid printed is the very process that must be gone afterwards.
    started = time.monotonic()
    ok, value = await run_command(["/bin/sh", "-c", "echo $$; exec sleep 100"], timeout=0.5, output_cap=100)
    assert time.monotonic() - started < 5
    assert not ok
    prefix = "timed out after 500ms output: "
    assert value.startswith(prefix)
    pid = int(value.removeprefix(prefix))
    assert _reaped(pid)  # killed and reaped by run_command, not left a zombie


async def test_timeout_kills_grandchildren_holding_stdout() -> None:
    # The shell exits at once, but its background child keeps stdout open; it must not outlive the label.
    ok, value = await run_command(["/bin/sh", "-c", "sleep 100 & echo $!"], timeout=0.5, output_cap=100)
    assert not ok
    prefix = "timed out after 500ms output: "
    assert value.startswith(prefix)
    assert await _wait_gone(int(value.removeprefix(prefix)))


async def test_cancellation_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    argv = ["/bin/sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 100']
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_command(argv, timeout=60, output_cap=100))
        deadline = time.monotonic() + 10
        while (pid := _read_pid(pid_file)) is None:
            assert time.monotonic() < deadline, "the command never started"
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert _reaped(pid)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0, "output_cap": 10}, "timeout must be a positive number"),
        ({"timeout": float("inf"), "output_cap": 10}, "timeout must be a positive number"),
        ({"timeout": 1, "output_cap": 0}, "output_cap must be between 1 and 4096"),
        ({"timeout": 1, "output_cap": 10_000}, "output_cap must be between 1 and 4096"),
    ],
)
async def test_run_command_rejects_bad_limits(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LabelError, match=message):
        await run_command(["/bin/echo"], **kwargs)


# ------------------------------------------------------------------------------------------ CommandSpec


def test_command_spec_defaults_and_normalisation() -> None:
    spec = CommandSpec(key="arch", command=["uname", "-m"], period=0.0)  # type: ignore[arg-type]
    assert spec.command == ("uname", "-m")
    assert spec.period == 1.0  # raised to MIN_PERIOD, as Teleport does
    assert (spec.timeout, spec.output_cap, spec.schedule) == (30.0, 4096, None)
    assert CommandSpec(key="a", command=("x",), period=0.5).period == 1.0
    assert CommandSpec(key="a", command=("x",), period=3600).period == 3600.0
    assert CommandSpec(key="a", command=("x",), schedule=" @Hourly ").schedule == "@hourly"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": "a b", "command": ("x",), "period": 5}, "invalid label key"),
        ({"key": "a", "command": (), "period": 5}, "command must be a non-empty list of strings"),
        ({"key": "a", "command": "uname -m", "period": 5}, "command must be a non-empty list of strings"),
        ({"key": "a", "command": ("x", 5), "period": 5}, "command must be a non-empty list of strings"),
        ({"key": "a", "command": ("",), "period": 5}, "empty program name"),
        ({"key": "a", "command": ("x", "a\0b"), "period": 5}, "NUL"),
        ({"key": "a", "command": ("x",)}, "exactly one of period and schedule"),
        ({"key": "a", "command": ("x",), "period": 5, "schedule": "@hourly"}, "exactly one"),
        ({"key": "a", "command": ("x",), "period": -1}, "non-negative"),
        ({"key": "a", "command": ("x",), "period": float("nan")}, "non-negative"),
        ({"key": "a", "command": ("x",), "period": "1h"}, "period must be a number"),
        ({"key": "a", "command": ("x",), "schedule": "* * * * * *"}, "expected 5 fields"),
        ({"key": "a", "command": ("x",), "period": 5, "timeout": 0}, "timeout must be a positive"),
        ({"key": "a", "command": ("x",), "period": 5, "output_cap": 0}, "output_cap must be between"),
        ({"key": "a", "command": ("x",), "period": 5, "output_cap": 5000}, "output_cap must be between"),
    ],
)
def test_command_spec_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LabelError, match=message):
        CommandSpec(**kwargs)


def test_duplicate_keys_are_rejected() -> None:
    spec = CommandSpec(key="a", command=("x",), period=5)
    with pytest.raises(LabelError, match='duplicate dynamic label keys: "a"'):
        DynamicLabels([spec, spec])


# ------------------------------------------------------------------------------------------ DynamicLabels


async def test_serve_runs_all_labels_once_concurrently_before_started() -> None:
    specs = [
        CommandSpec(key=f"slow{i}", command=("/bin/sh", "-c", f"sleep 0.4; echo {i}"), period=3600) for i in range(3)
    ]
    hung = CommandSpec(key="hung", command=("sleep", "100"), period=3600, timeout=0.5)
    labels = DynamicLabels([*specs, hung])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            await nursery.start(labels.serve)
            elapsed = time.monotonic() - started
            assert labels.results() == {
                "slow0": "0",
                "slow1": "1",
                "slow2": "2",
                "hung": "timed out after 500ms output: ",
            }
            nursery.cancel_scope.cancel()
    # One after another this would take over 1.7 s; concurrently about 0.5 s (the hung label's timeout).
    assert elapsed < 1.5


async def test_serve_with_no_labels_starts_at_once() -> None:
    labels = DynamicLabels([])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(labels.serve)
            assert labels.results() == {}
            assert labels.statistics().labels == 0
            nursery.cancel_scope.cancel()


async def test_serve_twice_is_an_error() -> None:
    labels = DynamicLabels([])
    async with trio.open_nursery() as nursery:
        await nursery.start(labels.serve)
        with pytest.raises(RuntimeError, match="already running"):
            await labels.serve()
        nursery.cancel_scope.cancel()


async def test_periodic_label_follows_the_command_output(mock_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    mock_clock.autojump_threshold = WATCHDOG_SECONDS
    value_file = tmp_path / "value"
    value_file.write_text("one\n")
    seen: list[str] = []
    spec = CommandSpec(key="v", command=("cat", str(value_file)), period=60.0)
    labels = DynamicLabels([spec], on_change=lambda: seen.append(labels.results()["v"]))
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(labels.serve)
            assert labels.results() == {"v": "one"}
            assert seen == ["one"]  # the first value counts as a change
            assert labels.states()["v"] == LabelState("one", True, t0, None, None, 1)

            mock_clock.jump(59)  # not due yet
            await trio.testing.wait_all_tasks_blocked()
            assert labels.states()["v"].runs == 1

            mock_clock.jump(1)  # due: runs again, same output, so no change reported
            await labels.wait_runs("v", 2)
            assert seen == ["one"]

            value_file.write_text("two\n")
            mock_clock.jump(60)
            await labels.wait_runs("v", 3)
            assert seen == ["one", "two"]
            assert labels.states()["v"] == LabelState("two", True, t0 + 120, None, None, 3)

            stats = labels.statistics()
            assert (stats.labels, stats.with_value, stats.failing, stats.running) == (1, 1, 0, 0)
            assert (stats.runs_total, stats.failures_total, stats.changes_total) == (3, 0, 2)
            nursery.cancel_scope.cancel()


async def test_failing_label_recovers_and_keeps_its_last_error(
    mock_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    mock_clock.autojump_threshold = WATCHDOG_SECONDS
    value_file = tmp_path / "value"  # missing at first: cat fails
    spec = CommandSpec(key="v", command=("cat", str(value_file)), period=10.0)
    changes: list[int] = []
    labels = DynamicLabels([spec], on_change=lambda: changes.append(1))
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            t0 = trio.current_time()
            await nursery.start(labels.serve)
            failed = labels.states()["v"]
            assert failed == LabelState(failed.value, False, t0, failed.value, t0, 1)
            # Teleport's shape, then the first line of stderr: cat names the file it could not open.
            assert failed.value.startswith("exit status 1 output: ")
            assert f"stderr: cat: {value_file}" in failed.value
            assert labels.statistics().failing == 1

            value_file.write_text("ok\n")
            mock_clock.jump(10)
            await labels.wait_runs("v", 2)
            assert labels.states()["v"] == LabelState("ok", True, t0 + 10, failed.value, t0, 2)
            assert labels.statistics().failing == 0
            assert labels.statistics().failures_total == 1
            assert len(changes) == 2
            nursery.cancel_scope.cancel()


async def test_cron_label_runs_at_each_fire_time(mock_clock: trio.testing.MockClock, tmp_path: Path) -> None:
    mock_clock.autojump_threshold = WATCHDOG_SECONDS
    base = datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC)
    t0 = trio.current_time()

    def wall_clock() -> datetime:
        return base + timedelta(seconds=trio.current_time() - t0)

    value_file = tmp_path / "value"
    value_file.write_text("a")
    spec = CommandSpec(key="v", command=("cat", str(value_file)), schedule="* * * * *")
    seen: list[str] = []
    labels = DynamicLabels([spec], on_change=lambda: seen.append(labels.results()["v"]), wall_clock=wall_clock)
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            await nursery.start(labels.serve)  # runs once at start, like a period label
            assert seen == ["a"]

            mock_clock.jump(29)  # 12:00:59
            await trio.testing.wait_all_tasks_blocked()
            assert labels.states()["v"].runs == 1

            value_file.write_text("b")
            mock_clock.jump(1)  # 12:01:00
            await labels.wait_runs("v", 2)
            assert seen == ["a", "b"]
            assert labels.states()["v"].last_run == t0 + 30

            mock_clock.jump(60)  # 12:02:00
            await labels.wait_runs("v", 3)
            assert labels.states()["v"].last_run == t0 + 90
            nursery.cancel_scope.cancel()


async def test_results_and_states_are_copies() -> None:
    labels = DynamicLabels([CommandSpec(key="v", command=("/bin/echo", "x"), period=3600)])
    async with trio.open_nursery() as nursery:
        await nursery.start(labels.serve)
        labels.results()["v"] = "changed"
        labels.states().clear()
        assert labels.results() == {"v": "x"}
        nursery.cancel_scope.cancel()

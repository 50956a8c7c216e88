"""scripts/benchlib.py, the benchmarks' shared harness: the parts whose mistakes a table would hide."""

from __future__ import annotations

import argparse
import gc
import math
from pathlib import Path

import pytest

from tests.scripts.scripts_helpers import load_script, usage_error

benchlib = load_script("benchlib")


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [
        ([float(i) for i in range(1, 101)], 0.5, 50.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(100, 0, -1)], 0.99, 99.0),  # order of arrival does not matter
        ([3.0], 0.99, 3.0),
        ([1.0, 2.0], 0.5, 1.0),  # nearest rank: a measured value, not 1.5
        ([1.0, math.inf], 0.99, math.inf),  # a timed-out sample dominates the tail
    ],
)
def test_percentile_is_nearest_rank(samples: list[float], q: float, expected: float) -> None:
    assert benchlib.percentile(samples, q) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        benchlib.percentile([], 0.5)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_test.py")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=benchlib.positive(100))
    parser.add_argument("--sizes", type=benchlib.positive_list(1_000))
    parser.add_argument("--work-dir", type=Path)
    return parser


FULL = {"count": 50, "sizes": (10, 100), "quiet": 2.0}
QUICK = {"count": 5, "sizes": (10,), "quiet": 0.5}


@pytest.mark.parametrize(
    ("argv", "count", "sizes", "quiet"),
    [
        ([], 50, (10, 100), 2.0),
        (["--quick"], 5, (10,), 0.5),
        (["--quick", "--count", "7"], 7, (10,), 0.5),  # an explicit flag wins over the preset
        (["--sizes", "1_000, 3,3"], 50, (3, 1_000), 2.0),  # grouped digits, spaces, repeats: sorted and unique
    ],
)
def test_presets_fill_what_was_not_given(argv: list[str], count: int, sizes: tuple[int, ...], quiet: float) -> None:
    args = benchlib.parse_args(_parser(), argv, full=FULL, quick=QUICK)
    assert (args.count, args.sizes, args.quiet, args.work_dir) == (count, sizes, quiet, None)


def test_work_dir_comes_back_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Children run in the repository root: a relative --work-dir would name another directory there.
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    args = benchlib.parse_args(_parser(), ["--work-dir", "rel"], full=FULL, quick=QUICK)
    assert args.work_dir == tmp_path.resolve() / "rel"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "1,2"], "expected one positive integer"),
        (["--count", "0"], "0 is out of range (1..100)"),
        (["--sizes", "abc"], "expected comma-separated positive integers, got 'abc'"),
        (["--sizes", "1,,2"], "positive integers"),
        (["--sizes", "1 0"], "positive integers"),
        (["--sizes", "²"], "positive integers"),  # a digit to str.isdigit, not to int()
        (["--sizes", "+5"], "positive integers"),
        (["--count", "x" * 10_000], "expected comma-separated positive integers, got 'xxxxxxxx"),
        (["--count", "101"], "101 is out of range (1..100)"),
        (["--sizes", "9" * 100_000], "999999999999... is out of range (1..1000)"),
        (["--sizes", "-1"], "positive integers"),
        (["--work-dir", "/nonexistent/kubeport-bench"], "not a directory"),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(lambda a: benchlib.parse_args(_parser(), a, full=FULL, quick=QUICK), argv, capsys)
    assert message in err
    assert len(err) < 1_000  # a hostile value is cut, not echoed whole


def test_no_gc_pauses_turns_the_collector_off_while_timing_and_back_on_even_after_an_error() -> None:
    assert gc.isenabled()
    with benchlib.no_gc_pauses():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), benchlib.no_gc_pauses():
        raise RuntimeError("a failed measurement")
    assert gc.isenabled()

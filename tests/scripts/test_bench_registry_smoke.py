"""scripts/bench_registry.py: a tiny real run prints the whole table, and bad flags fail before any work."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_registry.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_registry_under_test", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load_script()


def test_quick_run_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
    argv = ["--quick", "--clusters", "20", "--watchers", "1,2", "--creates", "16", "--watch-events", "5"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--json", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "| operation | store (baseline) | API over mTLS | ratio (API cost ÷ store cost) |" in out
    assert "machine: Python 3." in out
    assert "registry: subprocess" in out
    expected_rows = [
        "create, sequential (1 client)",
        "create, 8 concurrent clients",
        "list 20 kube_clusters (median)",
        "watch put → event p50, 1 watcher",
        "watch put → event p99, 1 watcher",
        "watch put → event p50, 2 watchers",
        "watch put → event p99, 2 watchers",
    ]
    table_rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in table_rows] == expected_rows
    for row in table_rows:  # every cell measured: a number and a ratio, never n/a
        assert "n/a" not in row
        assert row.rstrip(" |").endswith("x")

    document = json.loads(out.strip().splitlines()[-1])
    assert [r["operation"] for r in document["results"]] == expected_rows
    assert all(r["store"] > 0 and r["api"] > 0 and r["ratio"] > 0 for r in document["results"])
    assert document["config"]["clusters"] == [20]
    assert list(tmp_path.iterdir()) == []  # temporary data dirs (with a CA key) are gone


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clusters", "abc"], "positive integers"),
        (["--clusters", "-5"], "positive integers"),
        (["--clusters", "0"], "out of range"),
        (["--clusters", "1,,2"], "positive integers"),
        (["--clusters", "200000"], "out of range"),
        (["--clusters", "9" * 5000], "out of range"),
        (["--clusters", "1 0"], "positive integers"),
        (["--watchers", "1001"], "out of range"),
        (["--watchers", "²"], "positive integers"),
        (["--creates", "1,2"], "one positive integer"),
        (["--concurrency", "0"], "out of range"),
        (["--work-dir", "/nonexistent/kubeport-bench"], "not a directory"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2_with_a_reason(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "clusters", "watchers", "creates"),
    [
        ([], (1_000, 10_000), (1, 10, 100), 500),
        (["--quick"], (100, 1_000), (1, 10), 100),
        (["--quick", "--clusters", "10,1,10", "--creates", "3"], (1, 10), (1, 10), 3),
        (["--watchers", "1_000"], (1_000, 10_000), (1_000,), 500),
    ],
)
def test_presets_and_explicit_flags(
    argv: list[str], clusters: tuple[int, ...], watchers: tuple[int, ...], creates: int
) -> None:
    config = bench.parse_config(argv)
    assert (config.clusters, config.watchers, config.creates) == (clusters, watchers, creates)


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [
        ([float(i) for i in range(1, 101)], 0.5, 50.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(100, 0, -1)], 0.99, 99.0),  # order of arrival does not matter
        ([3.0], 0.99, 3.0),
        ([1.0, 2.0], 0.5, 1.0),  # nearest rank: a measured value, not 1.5
    ],
)
def test_percentile_is_nearest_rank(samples: list[float], q: float, expected: float) -> None:
    assert bench.percentile(samples, q) == expected


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        bench.percentile([], 0.5)


@pytest.mark.parametrize(
    ("unit", "store", "api", "ratio", "cells"),
    [
        ("creates/s", 1000.0, 250.0, 4.0, ["1,000 /s", "250 /s", "4.0x"]),  # slower API: fewer per second
        ("s", 0.002, 0.010, 5.0, ["2.00 ms", "10.00 ms", "5.0x"]),
        ("s", 0.0, 0.010, None, ["0.00 ms", "10.00 ms", "n/a"]),
        ("creates/s", 1000.0, 0.0, None, ["1,000 /s", "0 /s", "n/a"]),
    ],
)
def test_ratio_is_api_cost_over_store_cost(
    unit: str, store: float, api: float, ratio: float | None, cells: list[str]
) -> None:
    row = bench.Row("op", unit, store, api)
    if ratio is None:
        assert row.ratio is None
    else:
        assert row.ratio == pytest.approx(ratio)
    assert row.cells() == ["op", *cells]

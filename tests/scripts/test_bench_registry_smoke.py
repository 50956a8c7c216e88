"""scripts/bench_registry.py: a tiny real run prints the whole table, and bad flags fail before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.etcd_server import SKIP_REASON, find_etcd
from tests.scripts.scripts_helpers import SCRIPTS, load_script, table_rows, usage_error

SCRIPT = SCRIPTS / "bench_registry.py"
bench = load_script("bench_registry")


TINY = ["--quick", "--clusters", "20", "--watchers", "1,2", "--creates", "16", "--watch-events", "5"]
TINY += ["--agents", "2", "--servers-per-agent", "30", "--keepalive-seconds", "1"]


def _rows_for(backend: str) -> list[str]:
    return [
        "create, sequential (1 client)",
        "create, 8 concurrent clients",
        "announce 60 kube_servers (2 agents, batch route)",
        "keep 60 kube_servers alive (0/s): registry CPU",
        "list 20 kube_clusters (median)",
        "watch put → event p50, 1 watcher",
        "watch put → event p99, 1 watcher",
        "watch put → event p50, 2 watchers",
        "watch put → event p99, 2 watchers",
    ]


@pytest.mark.parametrize("store", ["sqlite", "both"])
def test_quick_run_prints_every_row_and_cleans_up(store: str, tmp_path: Path) -> None:
    if store == "both" and find_etcd() is None:
        pytest.skip(SKIP_REASON)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--store", store, "--json", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert bench.TABLE_HEADER in out
    assert "machine: Python 3." in out
    assert "registry: subprocess" in out
    backends = ["SQLite"] if store == "sqlite" else ["SQLite", "etcd"]
    rows = table_rows(out)
    assert [(row[0], row[1]) for row in rows] == [(b, op) for b in backends for op in _rows_for(b)]
    for row in rows:  # every cell measured: a number and a ratio (the CPU row has no store side)
        if "registry CPU" in row[1]:
            assert row[3].endswith("% of a core") and row[4] == "n/a" and row[5] == "< 50% of a core"
        else:
            assert "n/a" not in row
            assert row[4].endswith("x")

    document = json.loads(out.strip().splitlines()[-1])
    results = document["results"]
    assert [r["backend"] for r in results] == [b for b in backends for _ in _rows_for(b)]
    assert all(r["api"] > 0 for r in results if r["unit"] != "% core")
    assert all(r["store"] > 0 and r["ratio"] > 0 for r in results if r["unit"] != "% core")
    assert document["config"]["clusters"] == [20]
    # The concurrent creates ran in alternating rounds (16 creates, 8 clients: two rounds of 8); each round's
    # API ÷ store rate is in the JSON and after the table, and no other row has rounds.
    for r in results:
        if r["operation"] == "create, 8 concurrent clients":
            assert len(r["rounds"]) == 2 and all(x > 0 for x in r["rounds"])
            assert f"{r['backend']} " + " ".join(f"{x:.2f}" for x in r["rounds"]) in out
            # and the store alone writing what an API create writes (cluster + audit event), for reading it
            assert r["with_audit"] > 0
            assert f"{r['backend']} {r['with_audit']:,.0f} /s (the API {r['api'] / r['with_audit']:.2f}x that)" in out
        else:
            assert r["rounds"] == [] and r["with_audit"] == 0
    assert list(tmp_path.iterdir()) == []  # temporary data dirs (with a CA key) are gone


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # How a number is read is benchlib's (tests/scripts/test_scripts_benchlib.py); here: each flag's bounds.
        (["--clusters", "abc"], "positive integers"),
        (["--clusters", "200000"], "out of range"),
        (["--watchers", "1001"], "out of range"),
        (["--creates", "1,2"], "one positive integer"),
        (["--concurrency", "0"], "out of range"),
        (["--work-dir", "/nonexistent/kubeport-bench"], "not a directory"),
        (["--bogus"], "unrecognized arguments"),
        (["--store", "mysql"], "invalid choice"),
        (["--etcd-binary", "/nonexistent/etcd"], "not a file"),
        (["--agents", "0"], "out of range"),
        (["--servers-per-agent", "1e3"], "positive integers"),
        (["--keepalive-seconds", "99999"], "out of range"),
        (["--rounds", "0"], "out of range"),
    ],
)
def test_bad_flags_exit_2_with_a_reason(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in usage_error(bench.main, argv, capsys)


@pytest.mark.parametrize(
    ("argv", "clusters", "watchers", "creates"),
    [
        ([], (1_000, 10_000), (1, 10, 100), 500),
        (["--quick"], (1_000,), (100,), 200),
        (["--quick", "--clusters", "10,1,10", "--creates", "3"], (1, 10), (100,), 3),
        (["--watchers", "1_000"], (1_000, 10_000), (1_000,), 500),
    ],
)
def test_presets_and_explicit_flags(
    argv: list[str], clusters: tuple[int, ...], watchers: tuple[int, ...], creates: int
) -> None:
    config = bench.parse_config(argv)
    assert (config.clusters, config.watchers, config.creates) == (clusters, watchers, creates)


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
    row = bench.Row("SQLite", "op", unit, store, api)
    if ratio is None:
        assert row.ratio is None
    else:
        assert row.ratio == pytest.approx(ratio)
    assert row.cells() == ["SQLite", "op", *cells, ""]


def test_only_creates_prints_just_the_two_create_rows(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--store", "sqlite", "--only", "creates", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert [row[1] for row in rows] == ["create, sequential (1 client)", "create, 8 concurrent clients"]
    assert "CPU per create: registry" in result.stderr and "(system " in result.stderr
    assert list(tmp_path.iterdir()) == []  # the run's directory is gone


@pytest.mark.parametrize(
    ("creates", "concurrency", "rounds", "sizes"),
    [
        (500, 8, 4, [125, 125, 125, 125]),
        (502, 8, 4, [125, 125, 125, 127]),  # the remainder goes in the last round
        (16, 8, 4, [8, 8]),  # no round smaller than one create per client
        (5, 8, 4, [5]),  # fewer creates than clients: one round
        (2000, 8, 1, [2000]),
    ],
)
def test_concurrent_creates_are_split_into_alternating_rounds(
    creates: int, concurrency: int, rounds: int, sizes: list[int]
) -> None:
    argv = ["--creates", str(creates), "--concurrency", str(concurrency), "--rounds", str(rounds)]
    assert bench.round_sizes(bench.parse_config(argv)) == sizes

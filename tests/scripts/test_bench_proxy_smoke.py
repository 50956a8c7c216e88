"""scripts/bench_proxy.py: a tiny real run (upstream, registry with its front door, agent: real processes, TLS
on every hop) prints both tables with every row measured and judged; bad flags fail before any work; the
pieces that judge and render behave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts.scripts_helpers import SCRIPTS, load_script, table_rows, usage_error

SCRIPT = SCRIPTS / "bench_proxy.py"
bench = load_script("bench_proxy")

ROWS = [
    "keep-alive GET, 1 connection (40 requests)",
    "keep-alive GET, 10 connections (40 requests)",
    "new TLS connection per GET, 10 clients (20 requests)",
    "one 2 MiB response",
    "6 idle watches: memory per watch",
    "6 idle watches: one event at a time (5 events)",
    "6 watches: an event to all at once (2 bursts)",
]
CPU_ROWS = [
    (label, path)
    for label in ("keep-alive, 1 conn", "keep-alive, 10 conns", "new connection", "big response")
    for path in ("direct", "kubeport")
]


def tables(out: str) -> tuple[list[list[str]], list[list[str]]]:
    """The result table and the CPU table of the report (separated by a blank line)."""
    main, cpu = out.split(bench.CPU_HEADER, 1)
    return table_rows(main), table_rows(bench.CPU_HEADER + cpu)


@pytest.mark.slow
def test_tiny_run_prints_every_row_measured_and_judged_and_cleans_up(tmp_path: Path) -> None:
    argv = ["--quick", "--requests", "40", "--new-conns", "20", "--bulk-mib", "2", "--watches", "6"]
    argv += ["--events", "5", "--bursts", "2", "--json", "--work-dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert bench.TABLE_HEADER in out
    assert "machine: Python 3." in out
    rows, cpu = tables(out)
    assert [r[0] for r in rows] == ROWS
    for row in rows:
        assert len(row) == 6, row
        assert row[5] in ("met", "NOT met"), row
        assert row[2], row  # measured through kubeport
    assert rows[0][4] == "added p50 <= 1 ms"
    assert rows[1][3].endswith("x") and rows[2][3].endswith("x")
    assert rows[3][2].endswith("MiB/s")
    assert "front door" in rows[4][2] and "agent" in rows[4][2]
    assert [(r[0], r[1]) for r in cpu] == [*CPU_ROWS, ("6 watches, bursts", "kubeport")]
    *cpu, burst = cpu  # CPU per event per proxied watch over the bursts: the front door's and the agent's
    assert burst[3].endswith("/event") and burst[4].endswith("/event"), burst
    for row in cpu:  # the hops a path has are measured; direct has no front door or agent
        assert len(row) == 7, row
        assert (row[3], row[4]) == ("-", "-") if row[1] == "direct" else "-" not in row[2:6], row
    # Direct, the client's connections are the upstream's: none new on kept-alive ones, one per new-connection GET.
    assert [r[6] for r in cpu if r[1] == "direct"] == [
        "0 for 40 requests",
        "0 for 40 requests",
        "20 for 20 requests",
        "0",  # the big response's connection is opened before the row's clock starts
    ]

    document = json.loads(out.strip().splitlines()[-1])
    assert set(document["direct"]) == set(document["kubeport"]) == {"ka1", "ka10", "new", "bulk"}
    assert document["kubeport"]["ka1"]["count"] == 40
    assert document["kubeport"]["ka1"]["upstream_connections"] <= 1  # the agent keeps its upstream connection
    assert document["kubeport"]["bulk"]["count"] == 2
    assert set(document["kubeport"]["ka1"]["cpu_seconds"]) == {"client", "front door", "agent", "upstream"}
    assert document["watches"]["count"] == 6
    assert list(tmp_path.iterdir()) == []  # the temporary directory (CA keys, the user's kubeconfig) is gone


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--requests", "abc"], "positive integers"),
        (["--requests", "0"], "out of range"),
        (["--watches", "10001"], "out of range"),
        (["--watches", "5", "--many-watches"], "not allowed with"),
        (["--bulk-mib", "1,2"], "one positive integer"),
        (["--work-dir", "/nonexistent/kubeport-bench"], "not a directory"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_flags_exit_2_with_a_reason(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert message in usage_error(bench.main, argv, capsys)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (3000, 600, 64, 200, 200, 10)),
        (["--quick"], (300, 60, 16, 20, 20, 3)),
        (["--many-watches"], (3000, 600, 64, 1000, 200, 10)),
        (["--quick", "--requests", "1_000", "--watches", "7"], (1000, 60, 16, 7, 20, 3)),
        (["--requests", "3"], (10, 600, 64, 200, 200, 10)),  # at least 10: one per connection of the 10-row
    ],
)
def test_presets_and_explicit_flags(argv: list[str], expected: tuple[int, ...]) -> None:
    c = bench.parse_config(argv)
    assert (c.requests, c.new_conns, c.bulk_mib, c.watches, c.events, c.bursts) == expected


def _phase(count: int, seconds: float, latency_ms: float, cpu: dict[str, float]) -> object:
    return bench.Phase(count=count, seconds=seconds, latencies=[latency_ms / 1000] * count, cpu=cpu)


def test_rows_judge_each_target() -> None:
    config = bench.parse_config(["--quick"])
    both = {"client": 0.1, "upstream": 0.1}
    hops = {**both, "front door": 0.2, "agent": 0.3}
    res = bench.Results(
        direct={
            "ka1": _phase(100, 1.0, 0.5, both),
            "ka10": _phase(100, 0.1, 1.0, both),
            "new": _phase(10, 1.0, 5.0, both),
            "bulk": bench.Phase(count=16, seconds=0.1, cpu=both),
        },
        proxied={
            "ka1": _phase(100, 1.0, 1.4, hops),  # +0.9 ms: met
            "ka10": _phase(100, 0.5, 1.0, hops),  # 0.2x: not met
            "new": _phase(10, 2.0, 5.0, hops),  # 0.5x: met
            "bulk": bench.Phase(count=16, seconds=0.4, cpu=hops),  # 40 MiB/s: not met
        },
        watch=bench.WatchResult(
            watches=100,
            rss_kib_before={"front door": 1000, "agent": 1000},
            rss_kib_after={"front door": 3000, "agent": 5000},  # 60 KiB per watch: not met
            single_ms=[1.0] * 99 + [49.0],
            burst_direct_ms=[1.0] * 100,
            burst_proxied_ms=[60.0] * 100,
            burst_delays_ms=[59.0] * 100,
        ),
    )
    rows = bench.result_rows(config, res)
    assert [r[5] for r in rows] == ["met", "NOT met", "met", "NOT met", "NOT met", "met", "NOT met"]
    assert rows[0][3] == "+0.90 ms p50"
    assert rows[4][2] == "60.0 KiB (front door 20.0 + agent 40.0)"
    cpu = bench.cpu_rows(res)
    assert cpu[1] == ["keep-alive, 1 conn", "kubeport", "1.00", "2.00", "3.00", "1.00", "0 for 100 requests"]
    assert cpu[0] == ["keep-alive, 1 conn", "direct", "1.00", "-", "-", "1.00", "0 for 100 requests"]

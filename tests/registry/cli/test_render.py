"""The one text renderer escapes every non-printable character (issue 7 §8), and ``kube ls`` / ``kube explain``
build their text from data through it; health is summarised per cluster (issue 7 §9). Pure: no registry."""

from __future__ import annotations

from typing import Any

import pytest

from registry.cli import render
from registry.cli.kube_cmd import cluster_health, explain_cluster

# (raw, how the table must show it)
ESCAPES: list[tuple[str, str]] = [
    ("plain text", "plain text"),
    ("café 日本 😀", "café 日本 😀"),
    ("a\nb", "a\\nb"),
    ("a\r\nb", "a\\r\\nb"),
    ("a\tb", "a\\tb"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("nul\x00", "nul\\x00"),
    ("del\x7f", "del\\x7f"),
    ("c1\x9b2J", "c1\\x9b2J"),
    ("\u202eevil", "\\u202eevil"),
    ("\u2066x\u2069", "\\u2066x\\u2069"),
    ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
    ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("nb\u00a0sp", "nb\\xa0sp"),
    ("\ud800", "\\ud800"),
    ("\U000e0001tag", "\\U000e0001tag"),
    ("\U0010fffd", "\\U0010fffd"),  # private use
]


@pytest.mark.parametrize(("raw", "shown"), ESCAPES)
def test_escape(raw: str, shown: str) -> None:
    assert render.escape(raw) == shown
    assert render.escape(raw).isprintable()


def test_table_with_hostile_cells_keeps_one_line_per_row() -> None:
    hostile = [raw for raw, _ in ESCAPES]
    rows = [[f"row{i}", value, f"{value}\n{value}"] for i, value in enumerate(hostile)]
    text = render.table(["Name", "Value", "Twice"], rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert text.count("\n") == 2 + len(rows)  # no line break but the row ends
    assert all(line.isprintable() for line in lines)
    for line, (i, (_, shown)) in zip(lines[2:], enumerate(ESCAPES), strict=True):
        assert line.startswith(f"row{i} ")
        assert shown in line
    # columns still line up: every row's third column starts where the header's does
    column = lines[0].index("Twice")
    assert all(line[column - 2 : column] == "  " for line in lines[2:])


def test_table_escapes_headers_and_non_string_cells() -> None:
    text = render.table(["A\x1b", "B"], [[5, None]])
    assert text.splitlines() == ["A\\x1b  B", "-----  ----", "5      None"]


def test_table_of_huge_hostile_value_stays_bounded_in_lines() -> None:
    value = "\n" * 100_000
    text = render.table(["X"], [[value]])
    assert len(text.splitlines()) == 3


def test_labels_cell_output_is_escaped_by_the_table() -> None:
    cell = render.labels_cell({"env": "a\nb", "k": "\u202e"}, verbose=True)
    assert render.table(["Labels"], [[cell]]).splitlines()[2] == "env=a\\nb,k=\\u202e"


@pytest.mark.parametrize(
    ("status", "reason", "verbose", "shown"),
    [
        ("healthy", "", False, "healthy"),
        ("healthy", "TLS verification is disabled", False, "healthy"),  # warnings are for admins (kpctl get)
        ("unknown", "", False, "unknown"),
        (None, None, False, "unknown"),
        ("bogus\x1b", "x", False, "unknown: x"),  # a corrupted status is not echoed
        ("unhealthy", "", False, "unhealthy"),
        ("unhealthy", "connection refused", False, "unhealthy: connection refused"),
        ("unhealthy", "x" * 200, False, "unhealthy: " + "x" * 46 + "..."),
        ("unhealthy", "x" * 200, True, "unhealthy: " + "x" * 200),
    ],
)
def test_health_text(status: object, reason: object, verbose: bool, shown: str) -> None:
    assert render.health_text(status, reason, verbose=verbose) == shown


def server(name: str, host: str, status: str | None, reason: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"host_id": host, "hostname": f"{host}.example", "cluster": {"metadata": {"name": name}}}
    if status is not None:
        spec["health"] = {"status": status, **({"reason": reason} if reason else {})}
    return {"kind": "kube_server", "metadata": {"name": name}, "spec": spec}


def test_cluster_health_summarises_every_agent_serving_a_cluster() -> None:
    servers = [
        server("one-healthy", "h1", "unhealthy", "cannot reach"),
        server("one-healthy", "h2", "healthy"),
        server("all-down", "h2", "unhealthy", "second"),
        server("all-down", "h1", "unhealthy", "first by host id"),
        server("mixed-unknown", "h1", "unknown"),
        server("mixed-unknown", "h2", "unhealthy", "denied"),
        server("never-checked", "h1", None),
        server("garbage", "h1", "on fire"),
    ]
    servers.append({"kind": "kube_server", "metadata": {"name": "no-spec"}})
    servers.append({"kind": "kube_server", "metadata": {"name": "bad-health"}, "spec": {"health": ["x"]}})
    assert cluster_health(servers) == {
        "one-healthy": {"status": "healthy"},
        "all-down": {"status": "unhealthy", "reason": "first by host id"},
        "mixed-unknown": {"status": "unhealthy", "reason": "denied"},
        "never-checked": {"status": "unknown"},
        "garbage": {"status": "unknown"},
        "no-spec": {"status": "unknown"},
        "bad-health": {"status": "unknown"},
    }


def test_explain_escapes_everything_from_data() -> None:
    cluster = {"metadata": {"name": "c\x1b[2J", "labels": {"env": "a\nforged line"}}, "spec": {}}
    servers = [server("c\x1b[2J", "h1", "unhealthy", "bad\nreason\u202e")]
    agents = [
        {"host_id": "h1", "nodename": "n1"},
        {"host_id": "h2", "nodename": "evil\x1b]0;x\x07", "failed": {"c\x1b[2J": "nope\nsecond line"}},
        {"host_id": "h3", "nodename": "n3", "resources": [{"labels": {"env": "^(a|a)*$"}}]},
    ]
    text = explain_cluster(cluster, servers, agents)
    lines = text.splitlines()
    assert all(line.isprintable() for line in lines), text
    assert lines[0] == 'kubernetes cluster "c\\x1b[2J"'
    assert "env=a\\nforged line" in lines[1]
    assert any(line.endswith("unhealthy: bad\\nreason\\u202e") for line in lines)
    assert any("evil\\x1b]0;x\\x07" in line and "nope\\nsecond line" in line for line in lines)
    assert text.count("\n") == len(lines)

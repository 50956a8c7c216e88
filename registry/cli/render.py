"""One renderer for every command's ``--format text|json|yaml``.

Text output is a plain aligned table (header, dashes, rows), the way tctl and tsh print theirs; YAML is
documents separated by ``---`` (what ``kpctl create -f`` reads back); JSON is one list.

Invariant: text output never carries a non-printable character from data. Every table cell (and every
line of other text views, through :func:`escape`) shows control characters, line breaks, bidirectional
overrides and other invisible characters as escapes (``\x1b``, ``\n``, ``\u202e``), so a stored value,
whoever wrote it and whenever (legacy data, a dynamic label result, an agent's health reason), can
neither add or forge rows nor send escape sequences to the terminal. Backslashes themselves are shown as
they are: an escape in a table is for reading, not for parsing back. JSON escapes by its own rules; YAML
quotes non-printable text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from labels import format_labels
from registry.core import codec
from registry.core.timefmt import format_human, parse_rfc3339

FORMATS = ("text", "json", "yaml")
# Labels longer than this are cut in non-verbose tables (tsh does the same); -v shows them whole.
LABELS_WIDTH = 70
# A health reason longer than this is cut in non-verbose tables; -v shows it whole.
HEALTH_WIDTH = 60

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch.isprintable():
        return ch
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character (``str.isprintable``) written as an escape sequence.

    Printable text, the usual case, is returned as is; space is printable, every other kind of space,
    control, format (bidirectional overrides), separator, surrogate, private-use or unassigned character is
    escaped.
    """
    if text.isprintable():
        return text
    return "".join(_escape_char(ch) for ch in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table; every cell is escaped (module docstring), so one row stays one line."""
    head = [escape(str(h)) for h in headers]
    body = [[escape(str(cell)) for cell in row] for row in rows]
    widths = [len(h) for h in head]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip(),
        "  ".join("-" * widths[i] for i in range(len(head))).rstrip(),
    ]
    lines.extend("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in body)
    return "\n".join(lines) + "\n"


def labels_cell(labels: Mapping[str, str], *, verbose: bool, sep: str = ",") -> str:
    text = format_labels(labels, sep)
    if not verbose and len(text) > LABELS_WIDTH:
        return text[: LABELS_WIDTH - 3] + "..."
    return text


def health_text(status: object, reason: object, *, verbose: bool) -> str:
    """A health cell: ``healthy``, ``unknown`` or ``unhealthy: <reason>`` (cut unless ``verbose``).

    A healthy agent's reason (a warning such as disabled TLS verification) is not shown; status values
    other than the three known ones (corrupted or future data) show as ``unknown``.
    """
    shown = status if status in ("healthy", "unhealthy", "unknown") else "unknown"
    text = str(shown)
    if reason and shown != "healthy":
        text = f"{text}: {reason}"
        if not verbose and len(text) > HEALTH_WIDTH:
            text = text[: HEALTH_WIDTH - 3] + "..."
    return text


def documents(items: Sequence[Mapping[str, Any]], fmt: str) -> str:
    text = codec.dump_json(items) if fmt == "json" else codec.dump_yaml(items)
    return text if text.endswith("\n") else text + "\n"


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def fields(rows: Sequence[tuple[str, str]]) -> str:
    """``key  value`` lines, keys padded to one width (``kpctl status``)."""
    width = max(len(k) for k, _ in rows)
    return "".join(f"{key.ljust(width)}  {value}\n" for key, value in rows)


# -- resource tables: the text view of ``kpctl get KIND`` and ``kpctl tokens ls`` ------------------------


def resource_table(kind: str, items: Sequence[Mapping[str, Any]], *, verbose: bool) -> str:
    """The text table of ``items`` of one kind (``kube_cluster``, ``kube_server``, ``role``, ``user``,
    ``token`` or ``event``), rows in a stable order; ``verbose`` shows long cells whole."""
    return _TABLES[kind](items, verbose)


def _kube_cluster_rows(items: Sequence[Mapping[str, Any]], verbose: bool) -> str:
    rows = [
        [i["metadata"]["name"], labels_cell(_all_labels(i), verbose=verbose)]
        for i in sorted(items, key=lambda i: str(i["metadata"]["name"]))
    ]
    return table(["Name", "Labels"], rows)


def _all_labels(item: Mapping[str, Any]) -> dict[str, str]:
    labels = dict(item.get("metadata", {}).get("labels") or {})
    for key, spec in (item.get("spec", {}).get("dynamic_labels") or {}).items():
        if isinstance(spec, dict) and spec.get("result"):
            labels[key] = str(spec["result"])
    return labels


def _kube_server_rows(items: Sequence[Mapping[str, Any]], verbose: bool) -> str:
    rows = []
    for item in sorted(items, key=lambda i: (str(i["metadata"]["name"]), str(i["spec"].get("host_id")))):
        spec = item["spec"]
        cluster = spec.get("cluster") or {}
        labels = _all_labels(cluster)
        health = spec.get("health") or {}
        status = health_text(health.get("status"), health.get("reason"), verbose=verbose)
        rows.append(
            [
                item["metadata"]["name"],
                str(spec.get("host_id", "")),
                str(spec.get("hostname", "")),
                status,
                _expiry_cell(item["metadata"].get("expires")),
                labels_cell(labels, verbose=verbose),
            ]
        )
    return table(["Cluster", "Host ID", "Address", "Health", "Expires", "Labels"], rows)


def _expiry_cell(expires: str | None) -> str:
    if not expires:
        return "never"
    try:
        when = parse_rfc3339(expires)
    except (ValueError, OverflowError):
        return expires
    left = when - datetime.now(tz=UTC)
    seconds = max(int(left.total_seconds()), 0)
    return f"{format_human(when)} ({_short(seconds)} left)"


def _short(seconds: int) -> str:
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


def _role_rows(items: Sequence[Mapping[str, Any]], verbose: bool) -> str:
    rows = []
    for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
        allow = item.get("spec", {}).get("allow", {}) or {}
        rules = [
            f"{','.join(r.get('resources', []))}:{','.join(r.get('verbs', []))}" for r in allow.get("rules", []) or []
        ]
        groups = ",".join(allow.get("kubernetes_groups", []) or [])
        rows.append([item["metadata"]["name"], "; ".join(rules), groups])
    return table(["Role", "Rules", "Kubernetes Groups"], rows)


def _user_rows(items: Sequence[Mapping[str, Any]], verbose: bool) -> str:
    """tctl's ``User  Roles``, plus the Kubernetes traits (``kpctl users add --k8s-groups/--k8s-users``)."""
    rows = []
    for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
        spec = item.get("spec") or {}
        traits = spec.get("traits") or {}
        rows.append(
            [
                item["metadata"]["name"],
                ",".join(spec.get("roles", []) or []),
                ",".join(traits.get("kubernetes_groups", []) or []),
                ",".join(traits.get("kubernetes_users", []) or []),
            ]
        )
    return table(["User", "Roles", "Kubernetes Groups", "Kubernetes Users"], rows)


def _token_rows(items: Sequence[Mapping[str, Any]], verbose: bool) -> str:
    ordered = sorted(items, key=lambda i: str(i["metadata"].get("expires", "")))
    rows = [
        [
            i["metadata"]["name"],
            ",".join(i.get("spec", {}).get("roles", [])),
            _expiry_cell(i["metadata"].get("expires")),
        ]
        for i in ordered
    ]
    return table(["Token", "Type", "Expiry Time (UTC)"], rows)


def _event_rows(items: Sequence[Mapping[str, Any]], verbose: bool) -> str:
    rows = []
    for e in items:
        target = f"{e.get('kind', '')}/{e.get('name', '')}" if e.get("kind") else str(e.get("host_id", ""))
        result = "success" if e.get("success", True) else f"failure: {e.get('error', '')}"
        count = e.get("count")
        if isinstance(count, int) and count > 1:  # aggregated failures: one row stands for ``count``
            result += f" (x{count} from {e.get('client', '?')} since {e.get('first_time', '?')})"
        rows.append([str(e.get("time", "")), str(e.get("event", "")), str(e.get("user", "")), target, result])
    return table(["Time", "Event", "User", "Resource", "Result"], rows)


def _oidc_rows(items: Sequence[Mapping[str, Any]], verbose: bool) -> str:
    rows = []
    for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
        spec = item.get("spec") or {}
        mapped = sorted({role for m in spec.get("claims_to_roles") or [] for role in m.get("roles") or []})
        rows.append([item["metadata"]["name"], str(spec.get("issuer_url", "")), ",".join(mapped)])
    return table(["Name", "Issuer", "Roles"], rows)


_TABLES: dict[str, Callable[[Sequence[Mapping[str, Any]], bool], str]] = {
    "kube_cluster": _kube_cluster_rows,
    "kube_server": _kube_server_rows,
    "role": _role_rows,
    "user": _user_rows,
    "token": _token_rows,
    "oidc": _oidc_rows,
    "event": _event_rows,
}

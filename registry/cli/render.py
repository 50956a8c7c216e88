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
from collections.abc import Mapping, Sequence
from typing import Any

from labels import format_labels
from registry.core import codec

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

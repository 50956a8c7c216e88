"""One renderer for every command's ``--format text|json|yaml``.

Text output is a plain aligned table (header, dashes, rows), the way tctl and tsh print theirs; YAML is
documents separated by ``---`` (what ``kpctl create -f`` reads back); JSON is one list.
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


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [
        "  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip(),
        "  ".join("-" * widths[i] for i in range(len(headers))).rstrip(),
    ]
    lines.extend("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)
    return "\n".join(lines) + "\n"


def labels_cell(labels: Mapping[str, str], *, verbose: bool, sep: str = ",") -> str:
    text = format_labels(labels, sep)
    if not verbose and len(text) > LABELS_WIDTH:
        return text[: LABELS_WIDTH - 3] + "..."
    return text


def documents(items: Sequence[Mapping[str, Any]], fmt: str) -> str:
    text = codec.dump_json(items) if fmt == "json" else codec.dump_yaml(items)
    return text if text.endswith("\n") else text + "\n"


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"

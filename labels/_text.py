"""Small text helpers for error messages shared by the ``labels`` modules.

Internal to kubeport, not to ``labels``: ``registry.core.validation`` builds its ``quote`` and ``describe`` on
these (``labels`` is the leaf, so that dependency points the allowed way), and a change of wording here shows
in resource messages too.

Invariant: everything a user supplied is shown through :func:`quote`, which escapes control and
non-ASCII characters (so a Cyrillic look-alike key or an ANSI escape sequence is visible as such, and
cannot repaint a terminal) and shortens long values so one hostile label cannot flood a log line.
"""

from __future__ import annotations

import json

# Long enough for any sensible key or value, short enough to keep an error message on one screen line.
QUOTE_LIMIT = 120


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """Return ``text`` as a double-quoted, escaped literal, shortened to about ``limit`` characters."""
    if len(text) > limit:
        return json.dumps(text[:limit]) + f"... ({len(text)} characters)"
    return json.dumps(text)


def describe(value: object) -> str:
    """Describe a wrongly typed value for a message, in YAML-ish words: ``int 5``, ``null``, ``list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {str(value).lower()}"
    if isinstance(value, int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        return f"string {quote(value)}"
    if isinstance(value, bytes):
        return f"bytes ({len(value)} bytes)"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__

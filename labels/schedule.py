"""Cron schedules for dynamic labels (a kubeport extension; Teleport only has periods).

Accepted: the classic five fields ``minute hour day-of-month month day-of-week`` (ranges, lists, steps,
month and weekday names, as croniter parses them) or one of the macros in :data:`CRON_MACROS`. Rejected,
because they surprise: croniter's 6- and 7-field forms (a trailing seconds / year field that no other cron
has), hashed ``H`` and random ``R`` fields (the time would depend on a hash id or change per process), and
expressions that never fire (``0 0 30 2 *``). Times are computed in the time zone of the ``datetime``
given (the runner passes UTC by default). ``labels/__init__`` does not import this module, and croniter is
imported lazily, so ``import labels`` stays stdlib-only.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from labels._text import describe, quote
from labels.keys import LabelError

CRON_MACROS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
MAX_CRON_LENGTH = 256
_FIELD_NAMES = "minute hour day-of-month month day-of-week"
# A lone H or R (optionally followed by "(" or "/"), not a letter inside a name such as "mar" or "thu".
_HASHED_OR_RANDOM = re.compile(r"(?<![a-z])[hr](?![a-z])", re.IGNORECASE)


def _croniter(expr: str, start: datetime) -> Any:
    from croniter import croniter  # lazy: keeps croniter out of the stdlib-only import path

    return croniter(expr, start)


def validate_cron(expr: object) -> str:
    """Return ``expr`` with whitespace normalised if it is an accepted schedule, else raise LabelError."""
    if not isinstance(expr, str):
        raise LabelError(f'schedule must be a cron expression string such as "0 * * * *" (got {describe(expr)})')
    if len(expr) > MAX_CRON_LENGTH:
        raise LabelError(f"schedule {quote(expr)} is too long (at most {MAX_CRON_LENGTH} characters)")
    fields = expr.split()
    normalised = " ".join(fields)
    if normalised.startswith("@"):
        if normalised.lower() not in CRON_MACROS:
            macros = ", ".join(sorted(CRON_MACROS))
            raise LabelError(f"schedule {quote(expr)}: unknown macro (supported: {macros})")
        normalised = normalised.lower()
    elif len(fields) != 5:
        raise LabelError(
            f"schedule {quote(expr)}: expected 5 fields ({_FIELD_NAMES}) or a macro such as @hourly, got {len(fields)}"
        )
    elif _HASHED_OR_RANDOM.search(normalised):
        raise LabelError(f"schedule {quote(expr)}: hashed (H) and random (R) fields are not supported")
    try:
        # Computing one fire time also catches expressions that parse but never fire (30 February).
        _croniter(normalised, datetime(2000, 1, 1)).get_next(datetime)
    except (ValueError, KeyError, TypeError, OverflowError) as err:  # croniter's errors are ValueErrors
        raise LabelError(f"schedule {quote(expr)}: invalid cron expression: {err}") from None
    return normalised


def next_cron_time(expr: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` at which the (valid) schedule ``expr`` fires."""
    result = _croniter(expr, after).get_next(datetime)
    assert isinstance(result, datetime)
    return result


def next_cron_delay(expr: str, now: datetime) -> float:
    """Seconds from ``now`` until the next time the (valid) schedule ``expr`` fires (always > 0)."""
    return (next_cron_time(expr, now) - now).total_seconds()

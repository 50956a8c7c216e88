"""Go duration strings (``time.ParseDuration`` / ``Duration.String``) for dynamic-label periods.

Accepted syntax, as Go: an optional ``+``, then one or more ``<decimal number><unit>`` terms with units
``ns us µs μs ms s m h`` (``"24h"``, ``"1m30s"``, ``"1.5h"``, ``".5s"``, ``"300ms"``), or the bare
string ``"0"``. Differences from Go, all rejections with a helpful message: a leading ``-`` (a negative
period makes no sense), inputs longer than :data:`MAX_DURATION_TEXT` characters, and values above Go's
limit (about 292 years). ``"1d"`` fails with a hint (``use 24h``), as does ``"never"`` (Teleport maps it
to 0, which then means "every second"; an explicit long period says what the user means).

Arithmetic is done in integer nanoseconds, as Go does, so ``"1.1s"`` is exactly 1_100_000_000 ns; the
public functions speak float seconds.
"""

from __future__ import annotations

import math
import re

from labels._text import describe, quote
from labels.keys import LabelError

MIN_PERIOD = 1.0
MAX_DURATION_TEXT = 64

_NS_PER = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN, as Go prints it
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU, also accepted by Go
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_HOURS_PER = {"d": 24, "w": 168}
_MAX_NS = 2**63 - 1
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_UNIT = re.compile(r"[^0-9.]*")
_UNITS_TEXT = "valid units are ns, us, ms, s, m, h"


def _unknown_unit(text: str, number: str, unit: str) -> LabelError:
    if unit in _HOURS_PER:
        hours = float(number) * _HOURS_PER[unit]
        hint = f"use {hours:g}h"
    elif unit.lower() in _NS_PER:
        hint = f"units are case-sensitive: use {quote(unit.lower())}"
    else:
        hint = _UNITS_TEXT
    return LabelError(f"{quote(text)}: unknown unit {quote(unit)} ({hint})")


def parse_go_duration(text: object, *, what: str = "period") -> float:
    """Parse a Go duration string into seconds; raise :class:`LabelError` naming the value otherwise.

    ``what`` names the setting in the message for non-strings (``period must be a Go duration string ...``).
    """
    if not isinstance(text, str):
        raise LabelError(f'{what} must be a Go duration string such as "1h" (got {describe(text)})')
    if not text:
        raise LabelError('"": empty duration (write a Go duration such as "1h")')
    if len(text) > MAX_DURATION_TEXT:
        raise LabelError(f"{quote(text)}: too long for a duration (at most {MAX_DURATION_TEXT} characters)")
    if text == "never":
        raise LabelError('"never": not supported; a dynamic label always runs, use a long period such as "24h"')
    rest = text
    if rest[0] == "-":
        raise LabelError(f"{quote(text)}: negative durations are not allowed")
    if rest[0] == "+":
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise LabelError(f"{quote(text)}: expected a number")
    total = 0
    pos = 0
    while pos < len(rest):
        number = _NUMBER.match(rest, pos)
        assert number is not None  # the pattern can match the empty string, so it always matches
        whole, fraction = number.group(1), number.group(2) or ""
        if not whole and not fraction:
            raise LabelError(f"{quote(text)}: expected a number at {quote(rest[pos:])}")
        pos = number.end()
        unit_match = _UNIT.match(rest, pos)
        assert unit_match is not None
        unit = unit_match.group(0)
        pos = unit_match.end()
        if not unit:
            example = f'; e.g. "{text}s"' if text.isdigit() else ""
            raise LabelError(f"{quote(text)}: missing unit ({_UNITS_TEXT}{example})")
        scale = _NS_PER.get(unit)
        if scale is None:
            raise _unknown_unit(text, number.group(0), unit)
        nanoseconds = int(whole or "0") * scale
        if fraction:
            # Go truncates sub-nanosecond digits; integer division does the same.
            nanoseconds += int(fraction) * scale // 10 ** len(fraction)
        total += nanoseconds
        if total > _MAX_NS:
            raise LabelError(f"{quote(text)}: duration too large (at most about 292 years)")
    return total / 1e9


def _fraction(value: int, digits: int) -> str:
    """``value`` / 10**digits printed without trailing zeros: (1500, 3) -> ``"1.5"``, (2000, 3) -> ``"2"``."""
    whole, frac = divmod(value, 10**digits)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def format_go_duration(seconds: float) -> str:
    """Format seconds the way Go's ``Duration.String`` does: ``"24h0m0s"``, ``"1m30s"``, ``"500ms"``."""
    if not math.isfinite(seconds):
        raise LabelError(f"cannot format {seconds!r} seconds as a duration")
    nanoseconds = round(seconds * 1e9)
    sign = "-" if nanoseconds < 0 else ""
    ns = abs(nanoseconds)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 6)}ms"
    hours, ns = divmod(ns, _NS_PER["h"])
    minutes, ns = divmod(ns, _NS_PER["m"])
    secs = _fraction(ns, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return f"{sign}{secs}"

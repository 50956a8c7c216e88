"""Timestamps as kubeport writes and reads them: RFC 3339 in UTC with a ``Z``, and one human form.

Pure, stdlib only. Every timestamp kubeport puts on the wire, in a resource or in a message is written here;
every RFC 3339 string it reads from a resource or a table is parsed here.

Invariants:

* Output is always UTC with a ``Z`` suffix and a zero-padded four-digit year (not ``strftime``: glibc's
  ``%Y`` does not pad years below 1000). A naive datetime means UTC (as in YAML).
* Three fraction styles, each kept byte for byte where it was already on the wire:
  ``"trim"`` (the default) writes the microseconds with trailing zeros dropped, as Go's ``RFC3339Nano`` and
  Kubernetes do (resource fields through the codec); ``"micro"`` writes six digits when there are any
  (``datetime.isoformat``'s rule: the registry's audit times, issue and expiry stamps, ``server_time``);
  ``"none"`` truncates to whole seconds (certificate
  times, token and health stamps, where a fraction is noise).
* ``parse_rfc3339(format_rfc3339(t)) == t`` for every aware ``t`` in the "trim" and "micro" styles.
* ``parse_rfc3339`` takes what RFC 3339 allows (``t``/``z`` in any case, a space for ``T``, an offset, up to
  nine fractional digits: nanoseconds are truncated to microseconds) and nothing else: no date alone, no
  missing offset. It raises ``ValueError`` for anything it refuses and ``OverflowError`` when the instant
  is outside ``datetime``'s range once moved to UTC (``0001-01-01T00:00:00+01:00``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

Fraction = Literal["trim", "micro", "none"]

RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; a naive one is taken as UTC. May raise ``OverflowError``."""
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def format_rfc3339(value: datetime, *, fraction: Fraction = "trim") -> str:
    """``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` for ``value`` in UTC; ``fraction`` picks the style (see above)."""
    value = as_utc(value)
    # Integer fields, not strftime: the same text at a fraction of the cost (every audit event has one).
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond and fraction == "trim":
        text += f".{value.microsecond:06d}".rstrip("0")
    elif value.microsecond and fraction == "micro":
        text += f".{value.microsecond:06d}"
    return text + "Z"


def format_epoch(seconds: float, *, fraction: Fraction = "micro") -> str:
    """:func:`format_rfc3339` of a Unix time (the registry's clock), six fraction digits by default."""
    return format_rfc3339(datetime.fromtimestamp(seconds, tz=UTC), fraction=fraction)


def format_human(value: datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS UTC``: the form kpctl prints in tables and messages."""
    value = as_utc(value)
    return f"{value.year:04d}-{value:%m-%d %H:%M:%S} UTC"


def parse_rfc3339(text: str) -> datetime:
    """An aware UTC datetime from an RFC 3339 string (see the module invariants for what is refused)."""
    if not RFC3339_RE.fullmatch(text):
        raise ValueError(f"not an RFC 3339 timestamp: {text[:64]!r}")
    # fromisoformat takes at most 6 fractional digits: drop nanoseconds as Go's JSON would round them.
    normal = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("z", "Z").replace("t", "T")
    return as_utc(datetime.fromisoformat(normal))  # ValueError: not a real date or time

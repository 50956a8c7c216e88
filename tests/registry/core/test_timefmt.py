"""RFC 3339 formatting and parsing (pure): the three fraction styles, the human form, and what is refused.

The "same as before" tables pin each style to the expression it replaced, byte for byte, so moving a call
site onto :mod:`registry.core.timefmt` cannot change what goes on the wire or to the terminal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from registry.core.timefmt import format_epoch, format_human, format_rfc3339, parse_rfc3339

PLUS2 = timezone(timedelta(hours=2))

SAMPLES = [
    datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC),
    datetime(2030, 1, 1, 12, 0, 0, 500000, tzinfo=UTC),
    datetime(2030, 1, 1, 12, 0, 0, 120000, tzinfo=UTC),
    datetime(2030, 1, 1, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2030, 1, 1, 12, 0, 0, 999999, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 123456, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


@pytest.mark.parametrize(
    ("value", "fraction", "text"),
    [
        (datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC), "trim", "2030-01-01T12:00:00Z"),
        (datetime(2030, 1, 1, 12, 0, 0, 120000, tzinfo=UTC), "trim", "2030-01-01T12:00:00.12Z"),
        (datetime(2030, 1, 1, 12, 0, 0, 120000, tzinfo=UTC), "micro", "2030-01-01T12:00:00.120000Z"),
        (datetime(2030, 1, 1, 12, 0, 0, 120000, tzinfo=UTC), "none", "2030-01-01T12:00:00Z"),
        (datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC), "micro", "2030-01-01T12:00:00Z"),  # no zero fraction
        (datetime(2030, 1, 1, 14, 0, 0, 999999, tzinfo=PLUS2), "none", "2030-01-01T12:00:00Z"),  # truncated
        (datetime(2030, 1, 1, 12, 0, 0), "trim", "2030-01-01T12:00:00Z"),  # naive means UTC
        (datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC), "none", "0999-01-02T03:04:05Z"),  # the year is padded
        (datetime(2030, 1, 1, 0, 30, tzinfo=PLUS2), "trim", "2029-12-31T22:30:00Z"),
    ],
)
def test_format_rfc3339(value: datetime, fraction: str, text: str) -> None:
    assert format_rfc3339(value, fraction=fraction) == text  # type: ignore[arg-type]


@pytest.mark.parametrize("value", SAMPLES)
def test_styles_match_what_they_replaced(value: datetime) -> None:
    assert format_rfc3339(value, fraction="micro") == value.isoformat().replace("+00:00", "Z")
    assert format_rfc3339(value, fraction="none") == value.strftime("%Y-%m-%dT%H:%M:%SZ")
    trimmed = f"{value:%Y-%m-%dT%H:%M:%S}" + (f".{value.microsecond:06d}".rstrip("0") if value.microsecond else "")
    assert format_rfc3339(value) == trimmed + "Z"
    assert format_human(value) == value.strftime("%Y-%m-%d %H:%M:%S UTC")


@pytest.mark.parametrize("seconds", [0.0, 1.5, 1_900_000_000.25, 1_900_000_000.0, 1_900_000_000.000001])
def test_format_epoch_is_the_registry_clock_in_micro_style(seconds: float) -> None:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    assert format_epoch(seconds) == moment.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("value", SAMPLES)
@pytest.mark.parametrize("fraction", ["trim", "micro"])
def test_round_trip(value: datetime, fraction: str) -> None:
    assert parse_rfc3339(format_rfc3339(value, fraction=fraction)) == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T12:00:00Z", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01t12:00:00z", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01 12:00:00Z", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01T14:00:00+02:00", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01T12:00:00.123456789Z", datetime(2030, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)),  # Go's nanoseconds
        ("2030-01-01T12:00:00.5-01:00", datetime(2030, 1, 1, 13, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2030-01-01",  # a date alone
        "2030-01-01T12:00:00",  # no offset
        "2030-01-01T12:00Z",
        "2030-01-01T12:00:00.Z",
        "2030-01-01T12:00:00.1234567890Z",
        "2030-01-01T12:00:00+0200",
        "2030-13-01T12:00:00Z",  # the shape is right, the date is not
        "2030-02-30T12:00:00Z",
        " 2030-01-01T12:00:00Z",
        "tomorrow",
    ],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every refusal is a plain ValueError
        parse_rfc3339(text)


def test_parse_out_of_range_in_utc_is_an_overflow() -> None:
    with pytest.raises(OverflowError):
        parse_rfc3339("0001-01-01T00:00:00+01:00")

"""Go duration strings for dynamic-label periods, and cron schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from labels import MIN_PERIOD, LabelError, format_go_duration, parse_go_duration
from labels.schedule import next_cron_delay, next_cron_time, validate_cron


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("0", 0.0),
        ("0s", 0.0),
        ("+5s", 5.0),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("1h1m1s", 3661.0),
        ("2h45m", 9900.0),
        ("1500us", 0.0015),
        ("1500µs", 0.0015),
        ("1500μs", 0.0015),
        ("10ns", 1e-8),
        ("1.1s", 1.1),
        ("2562047h", 2562047 * 3600.0),  # about Go's maximum
    ],
)
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1d", '"1d": unknown unit "d" (use 24h)'),
        ("2d", '"2d": unknown unit "d" (use 48h)'),
        ("1w", '"1w": unknown unit "w" (use 168h)'),
        ("1H", '"1H": unknown unit "H" (units are case-sensitive: use "h")'),
        ("5 m", 'unknown unit " m"'),
        ("1x", 'unknown unit "x" (valid units are ns, us, ms, s, m, h)'),
        ("", '"": empty duration'),
        ("10", '"10": missing unit (valid units are ns, us, ms, s, m, h; e.g. "10s")'),
        ("1h30", '"1h30": missing unit'),
        ("00", "missing unit"),
        ("-1s", '"-1s": negative durations are not allowed'),
        ("-0", "negative durations are not allowed"),
        ("+", '"+": expected a number'),
        ("s", 'expected a number at "s"'),
        (".s", "expected a number"),
        ("1..5s", '"1..5s": missing unit (valid units are ns, us, ms, s, m, h)'),
        ("never", '"never": not supported'),
        (" 1h", "expected a number"),
        ("99999999999h", "duration too large"),
        ("1" * 65 + "s", "too long for a duration"),
        ("1e3s", 'unknown unit "e"'),
    ],
)
def test_parse_go_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(LabelError) as caught:
        parse_go_duration(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "described"),
    [(10, "int 10"), (1.5, "float 1.5"), (None, "null"), (True, "bool true"), (["1h"], "list")],
)
def test_parse_go_duration_requires_a_string(value: object, described: str) -> None:
    with pytest.raises(LabelError) as caught:
        parse_go_duration(value)
    assert str(caught.value) == f'period must be a Go duration string such as "1h" (got {described})'
    with pytest.raises(LabelError, match=r"^heartbeat_ttl must be"):
        parse_go_duration(value, what="heartbeat_ttl")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86400, "24h0m0s"),
        (90, "1m30s"),
        (0.5, "500ms"),
        (0, "0s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (3661, "1h1m1s"),
        (3600.25, "1h0m0.25s"),
        (0.0015, "1.5ms"),
        (1.5e-6, "1.5µs"),
        (1e-9, "1ns"),
        (-2, "-2s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


@pytest.mark.parametrize("text", ["24h", "1m30s", "1.5h", "300ms", "1h0m0.25s", "7ns"])
def test_format_parse_round_trip(text: str) -> None:
    assert parse_go_duration(format_go_duration(parse_go_duration(text))) == parse_go_duration(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_format_go_duration_rejects_non_finite(value: float) -> None:
    with pytest.raises(LabelError):
        format_go_duration(value)


def test_min_period() -> None:
    assert MIN_PERIOD == 1.0


# --------------------------------------------------------------------------------------------- cron


@pytest.mark.parametrize(
    ("expr", "normalised"),
    [
        ("*/5 * * * *", "*/5 * * * *"),
        ("  0   *  * * *  ", "0 * * * *"),
        ("0 9 * * mon-fri", "0 9 * * mon-fri"),
        ("0 0 1 jan,jul *", "0 0 1 jan,jul *"),
        ("0 0 * * thu", "0 0 * * thu"),
        ("@hourly", "@hourly"),
        ("@Daily", "@daily"),
        ("0 0 29 2 *", "0 0 29 2 *"),
    ],
)
def test_validate_cron(expr: str, normalised: str) -> None:
    assert validate_cron(expr) == normalised


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "got 6"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "invalid cron expression"),
        ("*/0 * * * *", "invalid cron expression"),
        ("0 0 30 2 *", "invalid cron expression"),  # never fires
        ("H * * * *", "hashed (H) and random (R)"),
        ("R * * * *", "hashed (H) and random (R)"),
        ("h/5 * * * *", "hashed (H) and random (R)"),
        ("@reboot", "unknown macro"),
        ("@every 5m", "unknown macro"),
        ("a b c d e", "invalid cron expression"),
        ("1," * 200 + "1 * * * *", "too long"),
    ],
)
def test_validate_cron_rejects(expr: str, message: str) -> None:
    with pytest.raises(LabelError) as caught:
        validate_cron(expr)
    assert message in str(caught.value)


@pytest.mark.parametrize("value", [None, 5, ["* * * * *"]])
def test_validate_cron_requires_a_string(value: object) -> None:
    with pytest.raises(LabelError, match="schedule must be a cron expression string"):
        validate_cron(value)


@pytest.mark.parametrize(
    ("expr", "now", "delay"),
    [
        ("*/5 * * * *", datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC), 300.0),  # strictly after now
        ("*/5 * * * *", datetime(2024, 1, 1, 12, 3, 30, tzinfo=UTC), 90.0),
        ("@hourly", datetime(2024, 1, 1, 12, 59, 59, 500000, tzinfo=UTC), 0.5),
        ("0 0 * * *", datetime(2024, 1, 1, 23, 0, tzinfo=UTC), 3600.0),
        # the schedule follows the time zone of the datetime given
        ("0 0 * * *", datetime(2024, 1, 1, 23, 0, tzinfo=timezone(timedelta(hours=2))), 3600.0),
    ],
)
def test_next_cron_delay(expr: str, now: datetime, delay: float) -> None:
    assert next_cron_delay(expr, now) == pytest.approx(delay)
    assert next_cron_time(expr, now) == now + timedelta(seconds=delay)

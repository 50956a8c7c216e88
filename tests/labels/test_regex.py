"""Label regular expressions run on RE2: linear time on hostile patterns, RE2 (Go) syntax, clean refusals.

Issue 7 §3: a caller's ``^...$`` pattern was a Python ``re`` pattern, so ``^(.?){33}Z$`` in a list filter
froze the registry. Every case below that says "quickly" runs for minutes or more with a backtracking
engine; the bound asserted is a generous wall-clock second, never a sleep.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from labels import LabelError, explain, explain_all, match_labels, matches_any, validate_selector_items
from labels._text import quote
from labels.regex import MAX_PATTERN_LENGTH, compile_regex
from labels.selectors import MAX_MATCH_VALUE_LENGTH
from labels.selectors import MAX_PATTERN_LENGTH as SELECTORS_MAX_PATTERN_LENGTH

# (pattern, a value it is tried on). Backtracking engines explore exponentially many paths on each.
PATHOLOGICAL: list[tuple[str, str]] = [
    ("^(.?){33}Z$", "dynamic"),  # the filter against kubeport.dev/origin
    ("^(.?){33}Z$", "a" * 33),
    ("^(a+)+$", "a" * 64 + "!"),
    ("^(a|a)*$", "a" * 64 + "!"),
    ("^(a|aa)+$", "a" * 200 + "!"),
    ("^(a*)*b$", "a" * 4000),
    ("^(.*a){30}$", "a" * 40 + "!"),
    ("^(\\w+\\s?)+$", "word " * 40 + "!"),
    ("^(x+x+)+y$", "x" * 4096),
    ("^" + "(a?)" * 150 + "a" * 150 + "$", "a" * 150),
]


@pytest.mark.parametrize(("pattern", "value"), PATHOLOGICAL, ids=[p[0][:30] for p in PATHOLOGICAL])
def test_pathological_patterns_match_quickly(pattern: str, value: str) -> None:
    started = time.monotonic()
    result = match_labels({"k": pattern}, {"k": value})
    assert matches_any([{"labels": {"k": pattern}}], {"k": value}) is result
    assert time.monotonic() - started < 1.0, f"{pattern!r} took {time.monotonic() - started:.2f}s"


def test_many_pathological_matches_stay_fast() -> None:
    # What a list filter does: one pattern against every cluster's label. 500 clusters, longest values.
    pattern = "^(.?){33}Z$"
    value = "x" * MAX_MATCH_VALUE_LENGTH
    started = time.monotonic()
    for _ in range(500):
        assert not match_labels({"kubeport.dev/origin": pattern}, {"kubeport.dev/origin": value})
    assert time.monotonic() - started < 2.0


def test_explain_of_a_pathological_selector_is_quick() -> None:
    # kpctl kube explain runs an agent's published selector against a cluster's labels.
    items = [{"labels": {"env": "^(a|a)*$"}}, {"labels": {"env": "^(.*a){25}$"}}]
    started = time.monotonic()
    mismatches = explain_all(items, {"env": "a" * 100 + "!"})
    assert [m.item_index for m in mismatches] == [0, 1]
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        # Teleport's documented forms keep working
        ("^us-.*$", "us-west-1", True),
        ("^us-(east|west)-[0-9]$", "us-east-2", True),
        ("^(prod|staging)$", "prod", True),
        ("^(prod|staging)$", "production", False),  # the whole value must match
        ("^prod$", "prod\n", False),  # $ is the end, not "before a trailing newline"
        ("^$", "", True),
        ("^.{3}$", "é€😀", True),  # . is one character (code point), not one byte
        ("^[^a]+$", "日本", True),
        ("^\\p{Greek}+$", "αβγ", True),  # Unicode classes, as in Go
        ("^(?i)PROD$", "prod", True),  # inline flags, as in Go
        ("^(?P<env>prod)$", "prod", True),  # named groups: Python and Go spelling
        ("^(?<env>prod)$", "prod", True),
        ("^a{2,3}$", "aaa", True),
        ("^a{1000}$", "a" * 1000, True),  # RE2's largest repetition count
        ("^\\d+$", "123", True),
        ("^\\d+$", "١٢٣", False),  # Go's \d is ASCII only (Python's re would say True)
        ("^\\bprod\\b$", "prod", True),
        ("^\\x{1F600}$", "😀", True),  # Go's \x{...} escape
        ("^\\Qa.b\\E$", "a.b", True),  # Go's literal-text escape
        ("^\\Qa.b\\E$", "aXb", False),
    ],
)
def test_re2_semantics(pattern: str, value: str, expected: bool) -> None:
    assert match_labels({"k": pattern}, {"k": value}) is expected
    validate_selector_items([{"labels": {"k": pattern}}])  # and it is a valid selector value


# Patterns RE2 cannot compile; each with a word the message must contain to say why.
REFUSED: list[tuple[str, str]] = [
    ("^(?=a)a$", "lookaround"),
    ("^(?!a).*$", "lookaround"),
    ("^.*(?<=a)$", "lookaround"),
    ("^.*(?<!a)$", "lookaround"),
    ("^(a)\\1$", "backreference"),
    ("^(?P<x>a)(?P=x)$", "backreference"),
    ("^(?<x>a)\\k<x>$", "backreference"),
    ("^a{1001}$", "1000"),
    ("^a{1000}{1000}$", "repetition"),
    ("^(a{1000}){1000}$", "1000"),
    ("^((a{100}){100}){100}$", "1000"),
    ("^(((a{10}){10}){10}){10}$", "1000"),
    ("^a**$", "repetition"),
    ("^\\pL{1000}$", "too large"),  # a legal count whose program would exceed the memory cap
    ("^([\\pL\\pN]{300}){3}$", "too large"),
    ("^\\Z$", "RE2"),  # Python-only escape
    ("^($", "RE2"),
    ("^[z-a]$", "RE2"),
    ("^(?P<x$", "RE2"),
    ("^\\p{NoSuchClass}$", "RE2"),
    ("^(?#comment)a$", "RE2"),
    ("^a++$", "RE2"),  # possessive quantifiers are Python 3.11 / PCRE only
    ("^(?>a)$", "RE2"),  # atomic groups too
]


@pytest.mark.parametrize(("pattern", "why"), REFUSED, ids=[r[0][:30] for r in REFUSED])
def test_patterns_re2_cannot_run_are_refused_with_a_reason(pattern: str, why: str) -> None:
    started = time.monotonic()
    with pytest.raises(LabelError) as caught:
        validate_selector_items([{"labels": {"env": pattern}}], what="resources")
    message = str(caught.value)
    assert message.startswith("resources[0].labels.env: invalid regular expression ")
    assert quote(pattern) in message  # the pattern, escaped as every user-supplied value in a message
    assert why in message
    assert "\n" not in message
    # match_labels refuses too (a deny rule must not fail open); matches_any selects nothing
    with pytest.raises(LabelError, match="invalid regular expression"):
        match_labels({"env": pattern}, {"env": "a"})
    assert not matches_any([{"labels": {"env": pattern}}, {"labels": {"*": "*"}}], {"env": "a"})
    assert time.monotonic() - started < 1.0


def test_refusal_writes_nothing_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    # RE2 logs parse errors to stderr by default; a caller sending bad filters must not fill the log.
    for pattern, _ in REFUSED:
        with pytest.raises(LabelError):
            compile_regex(pattern)
    # nor when a match outgrows RE2's DFA cache and falls back to its NFA (RE2 logs that by default)
    value = "aéb€" * 1024
    for pattern in ("^.*a.{999}$", "^(.*a.{10}){1,90}$", "^.*(a|é).{30}(b|€).{30}a.{30}$"):
        started = time.monotonic()
        match_labels({"k": pattern}, {"k": value})
        assert time.monotonic() - started < 1.0
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


@pytest.mark.parametrize(
    "pattern",
    [
        "^\ud800$",  # a lone surrogate (JSON "\ud800" decodes to it): not text RE2 can take
        "^a\udfff+$",
    ],
)
def test_pattern_that_is_not_unicode_text_is_refused(pattern: str) -> None:
    with pytest.raises(LabelError, match=r"U\+D[89A-F]"):  # the selector check names the character
        match_labels({"k": pattern}, {"k": "a"})
    with pytest.raises(LabelError, match="invalid regular expression"):  # and the engine refuses it too
        compile_regex(pattern)


@pytest.mark.parametrize("value", ["\ud800", "a\udfff", "\udc80\udc81"])
def test_value_that_is_not_unicode_text_matches_no_regex(value: str) -> None:
    # Legacy or hand-written stored data; matching must say "no", not crash the registry's list.
    assert not match_labels({"k": "^.*$"}, {"k": value})
    assert explain([{"labels": {"k": "^.*$"}}], {"k": value}) is not None


def test_pattern_length_cap_is_one_constant_and_applies_to_regexes_and_globs() -> None:
    assert SELECTORS_MAX_PATTERN_LENGTH == MAX_PATTERN_LENGTH
    longest = "^" + "a" * (MAX_PATTERN_LENGTH - 2) + "$"
    assert match_labels({"k": longest}, {"k": "a" * (MAX_PATTERN_LENGTH - 2)})
    for pattern in ("^" + "a" * (MAX_PATTERN_LENGTH - 1) + "$", "*" + "a" * MAX_PATTERN_LENGTH, "^" + "(" * 5000):
        with pytest.raises(LabelError, match="too long"):
            match_labels({"k": pattern}, {"k": "a"})
        with pytest.raises(LabelError, match="too long"):
            validate_selector_items([{"labels": {"k": pattern}}])
    with pytest.raises(LabelError, match="too long"):
        compile_regex("^" + "a" * MAX_PATTERN_LENGTH + "$")  # the engine's own entry point checks it too


def test_huge_pattern_is_refused_before_any_work() -> None:
    pattern = "^" + "(a|b)" * 1_000_000 + "$"
    started = time.monotonic()
    with pytest.raises(LabelError, match="too long"):
        match_labels({"k": pattern}, {"k": "a"})
    assert time.monotonic() - started < 1.0


def test_many_distinct_patterns_do_not_accumulate_without_bound() -> None:
    # A caller varying the filter on every request: the compiled-pattern cache stays bounded.
    for i in range(1000):
        assert match_labels({"k": f"^(a|b)+x{i}$"}, {"k": f"abx{i}"})
    info = compile_regex.cache_info()
    assert info.maxsize is not None
    assert info.currsize <= info.maxsize


def test_regex_metacharacters_in_an_error_message_are_escaped() -> None:
    pattern = "^\u202e(?=x)$"
    with pytest.raises(LabelError) as caught:
        compile_regex(pattern)
    assert "\u202e" not in str(caught.value)
    assert "\\u202e" in str(caught.value)


def selector_items(pattern: str) -> list[dict[str, Any]]:
    return [{"labels": {"env": [pattern, "prod"]}}]


def test_refused_pattern_in_a_value_list_names_its_position() -> None:
    with pytest.raises(LabelError) as caught:
        validate_selector_items(selector_items("^(?=a)$"), what="resources")
    assert str(caught.value).startswith("resources[0].labels.env[0]: invalid regular expression")

"""Selector matching (Teleport semantics), explanations, could_match and selector validation."""

from __future__ import annotations

import time
from typing import Any

import pytest

from labels import (
    LabelError,
    Mismatch,
    could_match,
    explain,
    explain_all,
    match_labels,
    matches_any,
    validate_selector,
    validate_selector_items,
)
from labels.selectors import MAX_MATCH_VALUE_LENGTH, MAX_PATTERN_LENGTH

PROD_WEST = {"env": "prod", "region": "us-west-1"}
TEST_WEST = {"env": "test", "region": "us-west-1"}
# Seed 003 (Teleport docs): any item must match, and all labels within one item.
SEED_ITEMS: list[dict[str, Any]] = [
    {"labels": {"env": "prod", "region": "us-east-2"}},
    {"labels": {"env": "test", "region": "us-west-1"}},
]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        # empty selector matches nothing; "*": "*" matches everything, even no labels
        ({}, PROD_WEST, False),
        ({}, {}, False),
        ({"*": "*"}, {}, True),
        ({"*": ["*"]}, PROD_WEST, True),
        ({"*": "*", "env": "nope"}, PROD_WEST, True),  # Teleport: other keys are then ignored
        ({"*": ["*", "x"]}, PROD_WEST, False),  # not select-all: "*" is looked up as a literal key
        ({"*": "x"}, {"*": "x"}, True),
        # exact values, AND across keys
        ({"env": "prod"}, PROD_WEST, True),
        ({"env": "prod", "region": "us-west-1"}, PROD_WEST, True),
        ({"env": "prod", "region": "us-east-2"}, PROD_WEST, False),
        ({"team": "a"}, PROD_WEST, False),
        # key present with "*": presence suffices, even with an empty value
        ({"env": "*"}, PROD_WEST, True),
        ({"env": "*"}, {"env": ""}, True),
        ({"env": "*"}, {}, False),
        ({"env": ["x", "*"]}, {"env": "anything"}, True),
        ({"env": ""}, {"env": ""}, True),
        ({"env": ""}, {"env": "x"}, False),
        # a label value that is literally "*" is matched by the glob "*" and the literal "*"
        ({"env": "*"}, {"env": "*"}, True),
        # globs: only * is special, full-string anchored
        ({"region": "us-*"}, PROD_WEST, True),
        ({"region": "*-1"}, PROD_WEST, True),
        ({"region": "*west*"}, PROD_WEST, True),
        ({"region": "u*-*-1"}, PROD_WEST, True),
        ({"region": "eu-*"}, PROD_WEST, False),
        ({"region": "us-"}, PROD_WEST, False),
        ({"region": "west"}, PROD_WEST, False),
        ({"region": "us-west-1*"}, PROD_WEST, True),
        ({"region": "us-west-1-*"}, PROD_WEST, False),
        ({"region": "*a*b*"}, {"region": "ab"}, True),
        ({"region": "a*a"}, {"region": "a"}, False),  # head and tail must not overlap
        ({"region": "a**b"}, {"region": "ab"}, True),
        ({"host": "a.b"}, {"host": "a.b"}, True),
        ({"host": "a.b"}, {"host": "aXb"}, False),  # dot is literal
        ({"host": "a?b"}, {"host": "aXb"}, False),  # ? is literal
        ({"host": "[ab]"}, {"host": "a"}, False),  # no character classes
        ({"host": "a+"}, {"host": "aa"}, False),
        ({"host": "^us"}, {"host": "^us"}, True),  # ^ without a closing $ is a literal glob
        # regular expressions: ^...$ used as-is, full match
        ({"region": "^us-.*$"}, PROD_WEST, True),
        ({"region": "^us-(east|west)-[0-9]$"}, PROD_WEST, True),
        ({"region": "^west$"}, PROD_WEST, False),
        ({"region": "^us$"}, PROD_WEST, False),
        ({"region": "^us-west-1$"}, {"region": "us-west-1\n"}, False),
        ({"region": "^$"}, {"region": ""}, True),
        # value lists: any value
        ({"env": ["staging", "prod"]}, PROD_WEST, True),
        ({"env": ["staging", "test"]}, PROD_WEST, False),
        ({"env": []}, PROD_WEST, False),
        # case-sensitive keys and values
        ({"env": "Prod"}, PROD_WEST, False),
        ({"ENV": "prod"}, PROD_WEST, False),
        ({"region": "US-*"}, PROD_WEST, False),
        # unicode look-alikes are different keys and values
        ({"\u0435nv": "prod"}, PROD_WEST, False),
        ({"env": "pr\u043ed"}, PROD_WEST, False),
    ],
)
def test_match_labels(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert match_labels(selector, labels) is expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (PROD_WEST, False),  # matches env of item 1 and region of item 2, but no whole item
        (TEST_WEST, True),
        ({"env": "prod", "region": "us-east-2", "extra": "x"}, True),
        ({}, False),
    ],
)
def test_seed_003_any_item_all_labels(labels: dict[str, str], expected: bool) -> None:
    assert matches_any(SEED_ITEMS, labels) is expected
    assert (explain(SEED_ITEMS, labels) is None) is expected


@pytest.mark.parametrize(
    ("items", "labels", "expected"),
    [
        ([], PROD_WEST, False),
        ([{"labels": {"*": "*"}}], {}, True),
        ([{"labels": {"env": "test"}}, {"labels": {"env": "prod"}}], PROD_WEST, True),
        # Teleport quirk: an item without labels stops the scan, even before a matching item
        ([{"labels": {}}, {"labels": {"*": "*"}}], PROD_WEST, False),
        ([{}, {"labels": {"*": "*"}}], PROD_WEST, False),
        ([{"labels": None}, {"labels": {"*": "*"}}], PROD_WEST, False),
        # ... but a matching item before it still wins
        ([{"labels": {"env": "prod"}}, {"labels": {}}], PROD_WEST, True),
        # an invalid pattern selects nothing (and stops, as Teleport's resource matcher does)
        ([{"labels": {"env": "^($"}}, {"labels": {"*": "*"}}], PROD_WEST, False),
    ],
)
def test_matches_any(items: list[dict[str, Any]], labels: dict[str, str], expected: bool) -> None:
    assert matches_any(items, labels) is expected


@pytest.mark.parametrize("pattern", ["^($", "^[a-$", "^(?P<x$"])
def test_match_labels_raises_on_invalid_regex(pattern: str) -> None:
    with pytest.raises(LabelError, match="invalid regular expression"):
        match_labels({"env": pattern}, PROD_WEST)


def test_match_labels_rejects_malformed_selector_values() -> None:
    with pytest.raises(LabelError, match="string or a list of strings"):
        match_labels({"env": 5}, PROD_WEST)  # type: ignore[dict-item]


def test_over_long_pattern_is_refused_not_run() -> None:
    pattern = "^" + "(a|aa)*" * 200 + "$"
    assert len(pattern) > MAX_PATTERN_LENGTH
    with pytest.raises(LabelError, match="too long"):
        match_labels({"k": pattern}, {"k": "a" * 50 + "b"})
    assert not matches_any([{"labels": {"k": pattern}}], {"k": "a" * 50 + "b"})
    with pytest.raises(LabelError, match="too long"):
        validate_selector_items([{"labels": {"k": pattern}}])


def test_regex_is_not_run_on_over_long_values() -> None:
    # A classic catastrophic pattern; on a 4 KiB+ value it would run for ages. Bounded: it is not tried.
    selector = {"k": "^(a+)+$"}
    value = "a" * (MAX_MATCH_VALUE_LENGTH + 1) + "b"
    started = time.monotonic()
    assert not match_labels(selector, {"k": value})
    assert time.monotonic() - started < 1.0
    message = explain([{"labels": selector}], {"k": value})
    assert message is not None
    assert "never match a regular expression" in message


def test_glob_matching_is_linear_on_hostile_input() -> None:
    # A glob with many stars against a long near-miss: regex translation would backtrack badly.
    pattern = "*a" * 100 + "*b"
    value = "a" * 100_000
    started = time.monotonic()
    assert not match_labels({"k": pattern}, {"k": value})
    assert match_labels({"k": pattern}, {"k": value + "b"})
    assert time.monotonic() - started < 1.0


def test_non_string_label_value_matches_nothing() -> None:
    assert not match_labels({"k": "*x"}, {"k": 5})  # type: ignore[dict-item]


# -------------------------------------------------------------------------------------------- explain


def test_explain_seed_counter_example() -> None:
    assert explain(SEED_ITEMS, PROD_WEST) == (
        'item 1 {env=prod, region=us-east-2}: label "region" is "us-west-1", wanted "us-east-2"; '
        'item 2 {env=test, region=us-west-1}: label "env" is "prod", wanted "test"'
    )
    first, second = explain_all(SEED_ITEMS, PROD_WEST)
    assert first == Mismatch(0, "region", ("us-east-2",), "us-west-1", first.reason, "{env=prod, region=us-east-2}")
    assert (second.item_index, second.key, second.wanted, second.actual) == (1, "env", ("test",), "prod")


@pytest.mark.parametrize(
    ("items", "labels", "expected"),
    [
        ([], PROD_WEST, ["no selector items (an empty resources list selects nothing)"]),
        (
            [{"labels": {"env": "prod", "team": "a"}}],
            PROD_WEST,
            ['item 1 {env=prod, team=a}: label "team" is missing'],
        ),
        (
            [{"labels": {"env": ["staging", "test"]}}],
            PROD_WEST,
            ['item 1 {env=[staging, test]}: label "env" is "prod", wanted one of "staging", "test"'],
        ),
        (
            [{"labels": {"env": "test"}}, {"labels": {}}, {"labels": {"*": "*"}}],
            PROD_WEST,
            [
                'item 1 {env=test}: label "env" is "prod", wanted "test"',
                "item 2 {}: has no labels, and an item without labels selects nothing and stops the scan "
                "(Teleport behaviour; later items are not considered)",
            ],
        ),
    ],
)
def test_explain_messages(items: list[dict[str, Any]], labels: dict[str, str], expected: list[str]) -> None:
    assert [str(m) for m in explain_all(items, labels)] == expected
    assert explain(items, labels) == "; ".join(expected)


def test_explain_invalid_regex_names_item_pattern_and_consequence() -> None:
    # The regex engine's own wording is not promised; the item, the pattern and the consequence are.
    items = [{"labels": {"env": "^($"}}, {"labels": {"*": "*"}}]
    (mismatch,) = explain_all(items, PROD_WEST)
    text = str(mismatch)
    assert text.startswith('item 1 {env=^($}: invalid regular expression "^($": ')
    assert text.endswith("(this item and later ones select nothing)")


@pytest.mark.parametrize(
    ("items", "labels"),
    [
        (SEED_ITEMS, TEST_WEST),
        ([{"labels": {"*": "*"}}], {}),
        ([{"labels": {"env": "prod"}}, {"labels": {}}], PROD_WEST),
    ],
)
def test_explain_is_empty_when_matching(items: list[dict[str, Any]], labels: dict[str, str]) -> None:
    assert explain_all(items, labels) == []
    assert explain(items, labels) is None


def test_explain_escapes_hostile_values() -> None:
    message = explain([{"labels": {"env": "prod"}}], {"env": "\x1b[2J" + "x" * 10_000})
    assert message is not None
    assert "\x1b" not in message
    assert len(message) < 400


# ---------------------------------------------------------------------------------------- could_match


@pytest.mark.parametrize(
    ("items", "static", "dynamic", "expected"),
    [
        ([], {}, {"arch"}, False),
        ([{"labels": {"*": "*"}}], {}, set(), True),
        ([{"labels": {"arch": "arm64"}}], {}, {"arch"}, True),  # unknown yet: could match
        ([{"labels": {"arch": "arm64"}}], {}, set(), False),
        ([{"labels": {"arch": "arm64"}}], {"arch": "x86"}, {"arch"}, True),  # dynamic overrides static
        ([{"labels": {"arch": []}}], {}, {"arch"}, False),  # an empty value list matches nothing
        ([{"labels": {"env": "prod", "arch": "arm64"}}], {"env": "prod"}, {"arch"}, True),
        ([{"labels": {"env": "prod", "arch": "arm64"}}], {"env": "test"}, {"arch"}, False),
        ([{"labels": {"env": "prod", "arch": "arm64"}}], {"env": "test"}, {"arch", "env"}, True),
        (SEED_ITEMS, PROD_WEST, set(), False),
        (SEED_ITEMS, {"env": "prod"}, {"region"}, True),
        (SEED_ITEMS, {"region": "us-west-1"}, {"env"}, True),
        (SEED_ITEMS, {"region": "eu-1"}, {"env"}, False),
        ([{"labels": {}}, {"labels": {"*": "*"}}], {}, {"arch"}, False),  # the empty-item quirk
        ([{"labels": {"env": "^($"}}], {"env": "x"}, set(), False),
    ],
)
def test_could_match(items: list[dict[str, Any]], static: dict[str, str], dynamic: set[str], expected: bool) -> None:
    assert could_match(items, static, dynamic) is expected


def test_could_match_agrees_with_matches_any_when_no_dynamic_keys() -> None:
    for labels in (PROD_WEST, TEST_WEST, {}):
        assert could_match(SEED_ITEMS, labels, ()) == matches_any(SEED_ITEMS, labels)


# ------------------------------------------------------------------------------------------ validation


def test_validate_selector_items_normalises() -> None:
    items = [
        {"labels": {"env": "prod", "region": ["us-*", "^eu-.*$"]}, "aws": {"assume_role_arn": "x"}},
        {"labels": {"*": "*"}},
    ]
    assert validate_selector_items(items) == [
        {"labels": {"env": "prod", "region": ["us-*", "^eu-.*$"]}},
        {"labels": {"*": "*"}},
    ]
    assert validate_selector_items(()) == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (None, "resources must be a list of {labels: {...}} items (got null)"),
        ({"labels": {"env": "prod"}}, "resources must be a list"),
        ("env=prod", "resources must be a list"),
        (["env"], 'resources[0] must be a mapping with a "labels" key (got string "env")'),
        ([{"label": {"env": "prod"}}], 'resources[0]: unknown key(s) "label"'),
        ([{"labels": {"env": "prod"}, "x": 1, "y": 2}], 'unknown key(s) "x", "y"'),
        ([{}], 'resources[0]: missing "labels"'),
        ([{"labels": {}}], "resources[0].labels is empty"),
        ([{"labels": None}], "resources[0].labels is empty"),
        ([{"labels": ["env"]}], "resources[0].labels must be a mapping"),
        ([{"labels": {"a b": "x"}}], 'resources[0].labels: invalid label key "a b"'),
        ([{"labels": {"\u0435nv": "x"}}], 'invalid label key "\\u0435nv"'),
        ([{"labels": {1: "x"}}], "invalid label key int 1"),
        ([{"labels": {"env": 5}}], "resources[0].labels.env must be a string or a list of strings (got int 5)"),
        ([{"labels": {"env": True}}], "(got bool true)"),
        ([{"labels": {"env": None}}], "(got null)"),
        ([{"labels": {"env": {"a": "b"}}}], "(got mapping)"),
        ([{"labels": {"env": []}}], "resources[0].labels.env is an empty list"),
        ([{"labels": {"env": ["a", 5]}}], "resources[0].labels.env[1] must be a string (got int 5)"),
        ([{"labels": {"env": "^($"}}], 'resources[0].labels.env: invalid regular expression "^($"'),
        ([{"labels": {"env": ["x", "^[$"]}}], "resources[0].labels.env[1]: invalid regular expression"),
        ([{"labels": {"env": "x" * 2000}}], "resources[0].labels.env: selector value"),
        ([{"labels": {"*": "prod"}}], 'the key "*" only supports the value "*"'),
        ([{"labels": {"*": "*", "env": "prod"}}], "the other keys would be ignored"),
        ([{"labels": {"env": "x"}}] * 2000, "resources has 2000 items"),
        ([{"labels": {f"k{i}": "v" for i in range(300)}}], "has 300 keys"),
        ([{"labels": {"env": ["v"] * 300}}], "has 300 values"),
        ([{"labels": {"env": "prod"}}, {"labels": {"a b": "x"}}], "resources[1].labels"),
    ],
)
def test_validate_selector_items_rejects(items: Any, message: str) -> None:
    with pytest.raises(LabelError) as caught:
        validate_selector_items(items)
    assert message in str(caught.value)


def test_validate_selector_items_names_the_list() -> None:
    with pytest.raises(LabelError) as caught:
        validate_selector_items([{"labels": {"a b": "x"}}], what="kubernetes_service.resources")
    assert str(caught.value).startswith('kubernetes_service.resources[0].labels: invalid label key "a b"')


def test_validated_items_match_like_the_input() -> None:
    validated = validate_selector_items(SEED_ITEMS)
    assert matches_any(validated, TEST_WEST)
    assert not matches_any(validated, PROD_WEST)


@pytest.mark.parametrize(
    "selector",
    [{"env": "prod"}, {"env": ["a", "b"]}, {"*": "*"}, {"a b": "x"}, {"env": []}, {"*": "x"}, "text", {}, None],
)
def test_validate_selector_is_one_item_of_validate_selector_items(selector: object) -> None:
    """``validate_selector(s, what=p)`` says what ``validate_selector_items([{labels: s}], what=...)`` says
    about the same mapping, under the path it was given."""

    def outcome(check: Any) -> object:
        try:
            return check()
        except LabelError as err:
            return f"LabelError: {err}"

    items = outcome(lambda: validate_selector_items([{"labels": selector}], what="w")[0]["labels"])
    assert outcome(lambda: validate_selector(selector, what="w[0].labels")) == items

"""``load_json`` (the one reader of untrusted JSON, the API's request bodies included) keeps refusing
duplicate keys, deep nesting and non-finite numbers with its fast paths (a dict built in C per object, a
depth walk over containers only)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.core.errors import BadParameter
from registry.core.validation import MAX_NESTING, load_json


def refusal(text: str) -> str:
    with pytest.raises(BadParameter) as caught:
        load_json(text, source="request body")
    return caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "a": 2}',
        '{"events": [{"event": "x", "user": "a", "user": "b"}]}',
        '{"a": {"b": 1, "c": 2, "b": 3}, "d": 4}',
    ],
)
def test_a_key_given_twice_anywhere_is_refused_naming_it(text: str) -> None:
    message = refusal(text)
    assert "duplicate key" in message
    assert '"a"' in message or '"user"' in message or '"b"' in message


def test_distinct_keys_and_equal_values_are_fine() -> None:
    assert load_json('{"a": 1, "b": 1, "c": {"a": 1}}', source="x") == {"a": 1, "b": 1, "c": {"a": 1}}


@pytest.mark.parametrize("opener", ["[", '{"k":'])
def test_nesting_up_to_the_limit_is_read_and_one_more_is_refused(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    assert load_json(opener * MAX_NESTING + "1" + closer * MAX_NESTING, source="x") is not None
    deeper = opener * (MAX_NESTING + 1) + "1" + closer * (MAX_NESTING + 1)
    assert f"nested more than {MAX_NESTING} levels deep" in refusal(deeper)


def test_depth_counts_the_deepest_branch_not_the_first_or_the_widest() -> None:
    deep: Any = {"k": 1}
    for _ in range(MAX_NESTING):
        deep = {"k": [deep]} if len(json.dumps(deep)) % 2 else {"k": deep}
    wide = {"items": [{"x": n} for n in range(2000)], "deep": deep}
    assert "nested more than" in refusal(json.dumps(wide))
    assert load_json(json.dumps({"items": [{"x": n} for n in range(2000)]}), source="x")["items"][1999] == {"x": 1999}


@pytest.mark.parametrize("text", ["1", '"s"', "null", "[]", "{}"])
def test_scalars_and_empty_containers(text: str) -> None:
    assert load_json(text, source="x") == json.loads(text)


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}'])
def test_non_finite_numbers_are_refused(text: str) -> None:
    assert "not valid JSON" in refusal(text)

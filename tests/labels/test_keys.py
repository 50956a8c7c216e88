"""Label key and label map validation, and combining/formatting label maps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labels import (
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    LabelError,
    combine,
    format_labels,
    is_valid_label_key,
    validate_label_key,
    validate_labels,
)

VALID_KEYS = [
    "env",
    "kubeport.dev/origin",
    "teleport.dev/origin",
    "a:b",
    "under_score",
    "dash-ed",
    "*",
    "A9",
    "x" * MAX_LABEL_KEY_LENGTH,
]

INVALID_KEYS = [
    ("", "must not be empty"),
    ("a b", "allowed characters are A-Z a-z 0-9 / . _ : * -"),
    ("env=prod", "allowed characters"),
    ("env,x", "allowed characters"),
    ("\u0435nv", "allowed characters"),  # Cyrillic "е": a look-alike of "env"
    ("env\u200b", "allowed characters"),  # zero-width space
    ("ｅnv", "allowed characters"),  # fullwidth "e"
    ("key\n", "allowed characters"),
    ("key\x00", "allowed characters"),
    ("١٢٣", "allowed characters"),  # Arabic-Indic digits are digits to str.isdigit, not to us
    ("x" * (MAX_LABEL_KEY_LENGTH + 1), "at most 253 characters"),
]


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_label_keys(key: str) -> None:
    assert is_valid_label_key(key)
    assert validate_label_key(key) == key


@pytest.mark.parametrize(("key", "message"), INVALID_KEYS)
def test_invalid_label_keys(key: str, message: str) -> None:
    assert not is_valid_label_key(key)
    with pytest.raises(LabelError, match="invalid label key") as caught:
        validate_label_key(key)
    assert message in str(caught.value)


def test_invalid_key_message_names_the_key() -> None:
    with pytest.raises(LabelError) as caught:
        validate_label_key("a b")
    assert str(caught.value) == 'invalid label key "a b": allowed characters are A-Z a-z 0-9 / . _ : * -'


def test_look_alike_key_is_shown_escaped() -> None:
    with pytest.raises(LabelError) as caught:
        validate_label_key("\u0435nv")
    assert "\\u0435nv" in str(caught.value)


@pytest.mark.parametrize("key", [5, None, b"env", ["env"], 1.5, True])
def test_non_string_keys(key: object) -> None:
    assert not is_valid_label_key(key)  # type: ignore[arg-type]
    with pytest.raises(LabelError, match="label keys must be strings"):
        validate_label_key(key)


def test_huge_key_message_is_short() -> None:
    with pytest.raises(LabelError) as caught:
        validate_label_key("k" * 1_000_000)
    assert len(str(caught.value)) < 300


def test_validate_labels_returns_a_plain_copy() -> None:
    source = {"env": "prod", "region": "", "kubeport.dev/origin": "dynamic"}
    result = validate_labels(source)
    assert result == source
    assert result is not source


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"env": 5}, "metadata.labels.env must be a string (got int 5)"),
        ({"env": True}, "metadata.labels.env must be a string (got bool true)"),
        ({"env": None}, "metadata.labels.env must be a string (got null)"),
        ({"env": ["a"]}, "metadata.labels.env must be a string (got list)"),
        ({"env": {"a": "b"}}, "metadata.labels.env must be a string (got mapping)"),
        ({"a b": "x"}, 'metadata.labels: invalid label key "a b"'),
        ({5: "x"}, "metadata.labels: invalid label key int 5"),
        (["env", "prod"], "metadata.labels must be a mapping of label keys to strings (got list)"),
        (None, "metadata.labels must be a mapping of label keys to strings (got null)"),
        ("env=prod", "metadata.labels must be a mapping"),
        ({"env": "x" * (MAX_LABEL_VALUE_LENGTH + 1)}, "metadata.labels.env is 4097 characters long"),
        ({f"k{i}": "v" for i in range(2000)}, "has 2000 labels, at most 1024"),
    ],
)
def test_validate_labels_rejects(labels: Any, message: str) -> None:
    with pytest.raises(LabelError) as caught:
        validate_labels(labels, what="metadata.labels")
    assert message in str(caught.value)


def test_validate_labels_default_name() -> None:
    with pytest.raises(LabelError, match=r"^labels\.env must be a string"):
        validate_labels({"env": 1})


def test_longest_value_is_accepted() -> None:
    assert validate_labels({"env": "x" * MAX_LABEL_VALUE_LENGTH})["env"] == "x" * MAX_LABEL_VALUE_LENGTH


@pytest.mark.parametrize(
    ("static", "dynamic", "expected"),
    [
        ({}, {}, {}),
        ({"env": "prod"}, {}, {"env": "prod"}),
        ({}, {"arch": "x86_64"}, {"arch": "x86_64"}),
        ({"env": "prod", "arch": "old"}, {"arch": "arm64"}, {"env": "prod", "arch": "arm64"}),
    ],
)
def test_combine_dynamic_wins(static: dict[str, str], dynamic: dict[str, str], expected: dict[str, str]) -> None:
    result = combine(static, dynamic)
    assert result == expected
    result["new"] = "x"  # callers may mutate the result without touching the inputs
    assert "new" not in static
    assert "new" not in dynamic


@pytest.mark.parametrize(
    ("labels", "sep", "expected"),
    [
        ({}, ",", ""),
        ({"region": "eu", "env": "prod"}, ",", "env=prod,region=eu"),
        ({"region": "eu", "env": "prod"}, " ", "env=prod region=eu"),
    ],
)
def test_format_labels(labels: dict[str, str], sep: str, expected: str) -> None:
    assert format_labels(labels, sep) == expected


def test_importing_labels_stays_stdlib_only() -> None:
    code = (
        "import sys, labels\n"
        "bad = sorted(m for m in ('trio', 'croniter', 'registry', 'labels.runner', 'labels.schedule')"
        " if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])

"""Label text hygiene (issue 7 §8): no control, line-break or bidirectional formatting character in a label
value or selector value; dynamic label output has them replaced instead (the runner), bidi overrides
included."""

from __future__ import annotations

import sys

import pytest
import trio

from labels import LabelError, match_labels, validate_labels, validate_selector_items
from labels.keys import BIDI_CONTROLS, check_label_text, is_unsafe_char
from labels.runner import run_command

# Each is refused anywhere in a label value: (character, what it is)
UNSAFE: list[tuple[str, str]] = [
    ("\x00", "NUL"),
    ("\x07", "BEL"),
    ("\x08", "backspace"),
    ("\t", "tab"),
    ("\n", "newline"),
    ("\r", "carriage return"),
    ("\x1b", "ESC"),
    ("\x7f", "DEL"),
    ("\x85", "C1 NEL"),
    ("\x9b", "C1 CSI"),
    ("\u2028", "line separator"),
    ("\u2029", "paragraph separator"),
    ("\u202a", "LRE"),
    ("\u202b", "RLE"),
    ("\u202c", "PDF"),
    ("\u202d", "LRO"),
    ("\u202e", "RLO"),
    ("\u2066", "LRI"),
    ("\u2067", "RLI"),
    ("\u2068", "FSI"),
    ("\u2069", "PDI"),
    ("\u200e", "LRM"),
    ("\u200f", "RLM"),
    ("\u061c", "ALM"),
    ("\ud800", "lone surrogate"),
]
UNSAFE_IDS = [u[1] for u in UNSAFE]

# Text that stays allowed: non-ASCII letters, symbols, emoji (with joiners), spaces.
SAFE = ["café", "日本語", "😀", "👩\u200d💻", "a b", "a\u00a0b", "x=y,z", "^weird$", "*", "", "\\x1b (just text)"]


@pytest.mark.parametrize(("ch", "name"), UNSAFE, ids=UNSAFE_IDS)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_label_values_refuse_unsafe_characters(ch: str, name: str, where: str) -> None:
    value = {"start": ch + "prod", "middle": "pr" + ch + "od", "end": "prod" + ch}[where]
    with pytest.raises(LabelError) as caught:
        validate_labels({"env": value}, what="metadata.labels")
    message = str(caught.value)
    assert message.startswith("metadata.labels.env ")
    assert f"U+{ord(ch):04X}" in message  # names the character
    assert message.isprintable(), "the message itself must not carry the character"


@pytest.mark.parametrize("value", SAFE)
def test_printable_label_values_are_accepted(value: str) -> None:
    assert validate_labels({"env": value}) == {"env": value}


@pytest.mark.parametrize(("ch", "name"), UNSAFE, ids=UNSAFE_IDS)
def test_label_keys_refuse_unsafe_characters(ch: str, name: str) -> None:
    with pytest.raises(LabelError, match="invalid label key"):
        validate_labels({f"env{ch}": "prod"})


@pytest.mark.parametrize(("ch", "name"), UNSAFE, ids=UNSAFE_IDS)
def test_selector_values_refuse_unsafe_characters(ch: str, name: str) -> None:
    for pattern in (f"pr{ch}od", f"^pr{ch}od$", f"*{ch}"):
        with pytest.raises(LabelError, match=r"U\+"):
            validate_selector_items([{"labels": {"env": pattern}}])
        with pytest.raises(LabelError, match=r"U\+"):
            validate_selector_items([{"labels": {"env": ["ok", pattern]}}])
        with pytest.raises(LabelError, match=r"U\+"):
            match_labels({"env": pattern}, {"env": "prod"})


def test_a_regex_can_still_match_a_control_character_by_escape() -> None:
    # Dynamic label results may hold tabs and newlines; RE2's escapes reach them without raw characters.
    assert match_labels({"k": "^a\\tb\\nc$"}, {"k": "a\tb\nc"})
    assert match_labels({"k": "^a\\x{202E}b$"}, {"k": "a\u202eb"})


def test_bidi_set_is_unicode_bidi_control_property() -> None:
    expected = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    assert {ord(c) for c in BIDI_CONTROLS} == expected
    assert all(is_unsafe_char(c) for c in BIDI_CONTROLS)


def test_check_label_text_is_linear_on_huge_input() -> None:
    with pytest.raises(LabelError, match="position 1000000"):
        check_label_text("a" * 1_000_000 + "\x1b", what="value")
    with pytest.raises(LabelError) as caught:
        check_label_text("\x1b" * 1_000_000, what="value")
    assert len(str(caught.value)) < 1000  # the message quotes a shortened value


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("safe\u202eevil", "safe\ufffdevil"),
        ("\u2066x\u2069", "\ufffdx\ufffd"),
        ("a\u200eb\u200fc\u061cd", "a\ufffdb\ufffdc\ufffdd"),
        ("a\u2028b\u2029c", "a\ufffdb\ufffdc"),
        ("a\x85b\x9b31m", "a\ufffdb\ufffd31m"),
        ("a\tb\nc", "a\tb\nc"),  # tab and newline are kept in dynamic results, as before
        ("café 😀 👩\u200d💻", "café 😀 👩\u200d💻"),
    ],
)
async def test_dynamic_label_output_replaces_bidi_and_other_unsafe_characters(output: str, expected: str) -> None:
    code = f"import sys; sys.stdout.buffer.write({output.encode()!r})"
    with trio.fail_after(10):
        assert await run_command(_py(code), timeout=10, output_cap=4096) == (True, expected)

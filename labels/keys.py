"""Label keys and label maps: the validation every side (registry, agent, CLI) applies the same way.

Rules (Teleport's ``IsValidLabelKey``, plus limits of our own):

* A label key is a non-empty ``str`` of at most :data:`MAX_LABEL_KEY_LENGTH` characters, each one of
  ``A-Z a-z 0-9 / . _ : * -``. ASCII only: a Cyrillic ``е`` in ``еnv`` is rejected, so look-alike keys
  cannot shadow real ones. The 253 cap is ours (Teleport has none); it matches the longest DNS name, which
  is the longest sensible key prefix, and bounds what a selector has to compare.
* A label value is a ``str`` of at most :data:`MAX_LABEL_VALUE_LENGTH` characters (Teleport has no cap).
  4096 keeps a resource with many labels small while leaving room for a dynamic label's whole output.
* A value may not contain an *unsafe character* (:func:`is_unsafe_char`): a control character (C0 such as NUL,
  ESC, newline and tab; DEL; C1), a line or paragraph separator, a lone surrogate, or a bidirectional
  formatting character (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069). Such characters let a
  value forge table rows, repaint a terminal or show text in another order than it is stored and
  compared. :func:`check_label_text` is the one check; values and selector values use it (a key's ASCII
  character set already excludes every unsafe character).
  Dynamic label *results* are not validated here: the runner replaces unsafe characters in a command's
  output with U+FFFD (keeping tab and newline) so a result is always storable.
* A label map has at most :data:`MAX_LABELS` entries.

Every failure raises :class:`LabelError` (a ``ValueError``) whose message names the offending key or value.
This module is a stdlib-only leaf: it must not import ``registry`` or anything outside the standard library.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from labels._text import describe, quote

MAX_LABEL_KEY_LENGTH = 253
MAX_LABEL_VALUE_LENGTH = 4096
MAX_LABELS = 1024

_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._:*-")
_ALLOWED_TEXT = "allowed characters are A-Z a-z 0-9 / . _ : * -"

# Unicode's Bidi_Control property: the characters that reorder how the text around them is displayed.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: C0, DEL and C1 controls; Cs: lone surrogates (not text); Zl/Zp: U+2028/U+2029, which some terminals
# and editors treat as line breaks.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


class LabelError(ValueError):
    """An invalid label key, label map, selector, duration or schedule; the message names the bad value."""


def is_unsafe_char(ch: str) -> bool:
    """True for a character no label key, value or selector value may contain (see the module docstring)."""
    return ch in BIDI_CONTROLS or unicodedata.category(ch) in _UNSAFE_CATEGORIES


def _char_name(ch: str) -> str:
    code = f"U+{ord(ch):04X}"
    if unicodedata.category(ch) == "Cc":
        return f"the control character {code}"  # controls have no Unicode name
    name = unicodedata.name(ch, "")
    return f"{code} {name}" if name else code


def check_label_text(text: str, *, what: str) -> str:
    """Return ``text`` unchanged, or raise :class:`LabelError` naming the first unsafe character in it.

    ``what`` names the text in the message (``metadata.labels.env``). Linear, with a fast path: printable
    text (the usual case) has no unsafe character, since every unsafe character is non-printable.
    """
    if text.isprintable():
        return text
    for position, ch in enumerate(text):
        if is_unsafe_char(ch):
            raise LabelError(
                f"{what} {quote(text)} contains {_char_name(ch)} at position {position}; "
                "labels must be printable text (no control, line-break or bidirectional formatting characters)"
            )
    return text


def is_valid_label_key(key: str) -> bool:
    """True when ``key`` is a valid label key (see the module docstring for the rule)."""
    return (
        isinstance(key, str)
        and 0 < len(key) <= MAX_LABEL_KEY_LENGTH
        # all() over a frozenset is linear and, unlike a regex, has no surprises with unicode digits.
        and all(ch in _KEY_CHARS for ch in key)
    )


def validate_label_key(key: object) -> str:
    """Return ``key`` unchanged if it is a valid label key, else raise :class:`LabelError` saying why."""
    if not isinstance(key, str):
        raise LabelError(f"invalid label key {describe(key)}: label keys must be strings")
    if not key:
        raise LabelError('invalid label key "": label keys must not be empty')
    if len(key) > MAX_LABEL_KEY_LENGTH:
        raise LabelError(f"invalid label key {quote(key)}: at most {MAX_LABEL_KEY_LENGTH} characters")
    if not is_valid_label_key(key):
        raise LabelError(f"invalid label key {quote(key)}: {_ALLOWED_TEXT}")
    return key


def validate_labels(labels: object, *, what: str = "labels") -> dict[str, str]:
    """Validate a mapping of label keys to string values and return a new plain ``dict`` of it.

    ``what`` names the map in messages, e.g. ``what="metadata.labels"`` gives
    ``metadata.labels.env must be a string (got int 5)``. Values must already be strings: YAML turns
    ``port: 5`` or ``enabled: yes`` into an int or a bool, and silently stringifying those would store
    something other than what the user meant to write, so they are rejected.
    """
    if not isinstance(labels, Mapping):
        raise LabelError(f"{what} must be a mapping of label keys to strings (got {describe(labels)})")
    if len(labels) > MAX_LABELS:
        raise LabelError(f"{what} has {len(labels)} labels, at most {MAX_LABELS} are allowed")
    result: dict[str, str] = {}
    for key, value in labels.items():
        try:
            validate_label_key(key)
        except LabelError as err:
            raise LabelError(f"{what}: {err}") from None
        if not isinstance(value, str):
            raise LabelError(f"{what}.{key} must be a string (got {describe(value)})")
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            raise LabelError(
                f"{what}.{key} is {len(value)} characters long, at most {MAX_LABEL_VALUE_LENGTH} are allowed"
            )
        check_label_text(value, what=f"{what}.{key}")
        result[key] = value
    return result

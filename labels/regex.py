"""Label regular expressions: RE2 syntax, linear-time matching, in one small typed place.

Selector values of the form ``^...$`` are regular expressions. Teleport evaluates them with Go's
``regexp`` package, which is RE2; kubeport uses RE2 too (the ``google-re2`` binding), so a pattern means
the same thing on both and every match runs in time linear in the value's length, whoever wrote the
pattern. Python's ``re`` backtracks: ``^(.?){33}Z$`` against a label value froze a registry for seconds
per character, which is why ``re`` must never see a caller's pattern.

Invariants:

* This is the only module that imports ``re2`` (it ships no type stubs); everything else gets
  :class:`LabelRegex` and :class:`labels.keys.LabelError`.
* A pattern longer than :data:`MAX_PATTERN_LENGTH` characters, one RE2 cannot parse (lookarounds,
  backreferences, ``\\Z``, repetition counts above 1000 — nested ones multiply), one whose compiled program
  would exceed :data:`MAX_PROGRAM_MEMORY`, or one that is not valid Unicode text (a lone surrogate) is
  refused with a :class:`LabelError` naming the pattern and the reason. Nothing is logged: RE2's own
  error logging is switched off, so a hostile caller cannot fill the service's stderr.
* Memory is bounded: each compiled program is capped at :data:`MAX_PROGRAM_MEMORY` (RE2 falls back from
  its DFA to its NFA, still linear, when the DFA cache is full) and at most :data:`_CACHE_SIZE` programs are
  cached here (plus the binding's own cache of at most 128).
* Matching a value that is not valid Unicode text (a lone surrogate from legacy JSON) returns False.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

from labels._text import quote
from labels.keys import LabelError

MAX_PATTERN_LENGTH = 1024
# RE2's default is 8 MiB per program. 1 MiB still compiles every sensible label pattern (a 1000-fold
# repetition of `.`), and bounds both the cache (below) and the NFA's per-character cost, so the worst
# case (a big program on a 4 KiB value) stays in the tens of milliseconds.
MAX_PROGRAM_MEMORY = 1 << 20
# Selectors are few and reused on every reconcile; 256 programs of at most 1 MiB each bound the memory.
_CACHE_SIZE = 256

# What follows the backslash of an escape RE2 refused when it was meant as a backreference (\1, \k<name>).
_BACKREF = frozenset("123456789k")

SYNTAX_HINT = "label regular expressions use RE2 syntax, as Teleport's Go regexps do"


def _options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_PROGRAM_MEMORY
    options.log_errors = False
    return options


_OPTIONS = _options()


def _reason(error: BaseException) -> str:
    """RE2's error text (bytes in this binding) plus what it means for a user, without control characters."""
    raw = error.args[0] if error.args else ""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    shown = quote(text)[1:-1] if text else "rejected"  # escaped: RE2 echoes pieces of the pattern
    if any(f"invalid perl operator: (?{c}" in text for c in ("=", "!", "<")):
        why = "lookaround assertions are not supported"
    elif "invalid perl operator: (?P" in text or text.partition("invalid escape sequence: \\")[2][:1] in _BACKREF:
        why = "backreferences are not supported"
    elif "invalid repetition size" in text:
        why = "repetition counts are limited to 1000, nested repetitions multiplied"
    elif "bad repetition operator" in text:
        why = "a repetition operator cannot follow another one (such as a** or a{2}{3})"
    elif "too large" in text:
        why = "the pattern compiles to a program that is too large"
    else:
        return f"{shown} ({SYNTAX_HINT})"
    return f"{why} ({SYNTAX_HINT}; RE2 says: {shown})"


class LabelRegex:
    """A compiled label regular expression; :meth:`fullmatch` runs in linear time."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str, compiled: Any) -> None:
        self.pattern = pattern
        self._compiled = compiled

    def fullmatch(self, value: str) -> bool:
        """True when the whole of ``value`` matches."""
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            return False  # not text (a lone surrogate): matches no pattern rather than crashing the caller
        return self._compiled.fullmatch(data) is not None

    def __repr__(self) -> str:
        return f"LabelRegex({self.pattern!r})"


def check_pattern_length(pattern: str) -> None:
    """Raise :class:`LabelError` when a selector value (regex or glob) is over :data:`MAX_PATTERN_LENGTH`."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise LabelError(f"selector value {quote(pattern)} is too long: at most {MAX_PATTERN_LENGTH} characters")


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_regex(pattern: str) -> LabelRegex:
    """Compile ``pattern`` (the whole ``^...$`` text) or raise :class:`LabelError` saying why not.

    Failures are not cached (``lru_cache`` does not keep exceptions), but they are cheap: the length cap
    runs first and RE2 rejects a bad pattern while parsing.
    """
    check_pattern_length(pattern)
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise LabelError(
            f"invalid regular expression {quote(pattern)}: it is not valid Unicode text (a lone surrogate)"
        ) from None
    try:
        compiled = re2.compile(encoded, _OPTIONS)
    except re2.error as err:
        raise LabelError(f"invalid regular expression {quote(pattern)}: {_reason(err)}") from None
    return LabelRegex(pattern, compiled)

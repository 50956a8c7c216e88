"""Guards for untrusted input shared by the resource codec and the kubeconfig checker.

What lives here:

* the size limit (:data:`MAX_DOCUMENT_BYTES`), checked on the raw bytes *before* anything is parsed;
* :func:`load_yaml` / :func:`load_json`: parsers that turn hostile input into :class:`BadParameter`
  (never a yaml/json exception, a ``RecursionError`` or a crash);
* :class:`Fields`: a strict reader for one mapping of a document that knows its path
  (``spec.dynamic_labels.region``), rejects unknown keys, and phrases every error the same way;
* :func:`quote` / :func:`describe`: how user values appear in messages (escaped, shortened, typed);
* :func:`label_errors`: the one seam where the labels library's :class:`~labels.LabelError` becomes a
  kubeport :class:`BadParameter` (see below).

Invariants:

* YAML anchors and aliases are rejected before any node is built, so an alias bomb ("billion laughs")
  costs nothing. Merge keys (``<<``), duplicate keys, and nesting deeper than :data:`MAX_NESTING` are
  rejected too: each of them either hides what a document really says or is a resource-exhaustion trick.
* The event pre-pass stops at the first violation, so deeply nested input fails in microseconds. That
  matters because libyaml's composer recurses in C and crashes the process on very deep input; the
  pre-pass is what makes handing the text to the fast C loader safe.
* Plain documents (untagged mappings, sequences and str/null/bool/int/float scalars, no anchors) are built
  straight from libyaml's events by :mod:`registry.core.yaml_events`, which only ever declines: every
  refusal, and every document using anything else, goes through the strict loader as before.
* Parser messages carry only the problem and the line/column, never a snippet of the input: the input
  may be a kubeconfig full of credentials.

Labels-library errors. ``labels`` is a leaf: it raises its own ``LabelError`` (a ``ValueError``) and knows
nothing of kubeport's error tree. Every caller in registry/ and agent/ that validates labels, selectors,
durations or schedules wraps the call in ``with label_errors(...)``, and nothing else catches
``LabelError`` to re-raise it: the phrasing (:func:`label_message`) and the conversion live here, once. The
caller says where the value sits (``path``), and either how its own errors are raised (``fail``: a
:class:`Fields`' or the agent config's, which add the resource subject or the file name) or a plain
``subject`` prefix. The library's message is kept word for word; only the path in front of it is added.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from types import TracebackType
from typing import Any, NoReturn

import yaml

from labels import LabelError, _text
from registry.core.errors import BadParameter, TooLarge
from registry.core.nesting import depth_bound, nesting_error
from registry.core.yaml_events import construct_int, load_plain

MAX_DOCUMENT_BYTES = 1 << 20
# Real resources nest about six levels deep (role -> spec -> allow -> kubernetes_resources -> item -> verbs).
MAX_NESTING = 32
QUOTE_LIMIT = 80

_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


# -- showing values ----------------------------------------------------------------------------------------


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as an escaped double-quoted literal, cut to ``limit`` characters (control characters and
    look-alike unicode stay visible and cannot repaint a terminal). The labels' rule, with a shorter limit."""
    return _text.quote(text, limit)


def describe(value: object) -> str:
    """A wrongly typed value in YAML-ish words: ``"a/b"``, ``int 5``, ``bool true``, ``null``, ``list``."""
    if isinstance(value, str):
        return quote(value)  # bare, unlike label messages' ``string "..."``: "(got "a/b")" reads better
    if value is None or isinstance(value, int | float):  # bool is an int
        return _text.describe(value)  # scalars read the same in label and resource messages
    if isinstance(value, bytes):
        return f"binary data ({len(value)} bytes)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    # datetime / date from YAML timestamps, and anything else a loader may produce.
    return f"{type(value).__name__} {value}"


def describe_type(value: object) -> str:
    """Like :func:`describe` but never shows the value itself (for documents that hold credentials)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, int | float):
        return f"a number ({type(value).__name__})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    return type(value).__name__


# -- labels-library errors ------------------------------------------------------------------------------------


def label_message(err: LabelError, path: str = "", *, value: object = None) -> str:
    """A labels-library error phrased under ``path``: ``<path>: <message>``, or the message alone when it
    names ``path`` already (the library was given it as ``what``), or ``<parent>.<message>`` when it names
    the last key of ``path`` (``schedule "x": ...`` under ``spec.dynamic_labels.a.schedule``). With a string
    ``value`` the library quoted first (``"1d": unknown unit``), the quote follows the path without a colon:
    ``period "1d": unknown unit "d" (use 24h)``."""
    message = str(err)
    if message.startswith(path):  # also every message when there is no path
        return message
    parent, _, key = path.rpartition(".")
    if parent and message.startswith(key):
        return f"{parent}.{message}"
    if isinstance(value, str) and message.startswith('"'):
        return f"{path} {message}"
    return f"{path}: {message}"


class label_errors:  # a context manager used like a function: ``with label_errors(...):``
    """Turn a :class:`LabelError` raised in the ``with`` block into a kubeport error (see the module docstring).

    The message is :func:`label_message` of ``path`` and ``value``; it is raised through ``fail`` when given
    (which adds its own prefix), else as ``BadParameter("<subject>: <message>")`` (or the bare message).
    Other exceptions pass through untouched.
    """

    def __init__(
        self,
        path: str = "",
        *,
        value: object = None,
        fail: Callable[[str], NoReturn] | None = None,
        subject: str = "",
    ) -> None:
        self._path = path
        self._value = value
        self._fail = fail
        self._subject = subject

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not isinstance(exc, LabelError):
            return
        message = label_message(exc, self._path, value=self._value)
        if self._fail is not None:
            try:
                self._fail(message)
            except BadParameter as converted:
                raise converted from None
        raise BadParameter(f"{self._subject}: {message}" if self._subject else message) from None


# -- size ----------------------------------------------------------------------------------------------------


def check_size(data: bytes | str, *, source: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """Return ``data`` as bytes, or raise :class:`TooLarge` if it exceeds ``limit`` bytes."""
    if isinstance(data, str):
        # A str has at least one byte per character: refuse obviously huge text before encoding it.
        if len(data) > limit:
            raise TooLarge(f"{source} is more than {limit} bytes; the limit is {limit}")
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > limit:
        raise TooLarge(f"{source} is {len(data)} bytes; the limit is {limit}")
    return data


def decode_utf8(data: bytes, *, source: str) -> str:
    """UTF-8 text (a leading byte-order mark is dropped) or a BadParameter naming the first bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise BadParameter(
            f"{source} is not UTF-8 text: invalid byte 0x{data[err.start]:02x} at offset {err.start} (line {line})"
        ) from None
    return text.removeprefix("\ufeff")


# -- YAML ----------------------------------------------------------------------------------------------------


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


class _StrictConstructorMixin:
    """Builds mappings without merge keys or duplicate keys (YAML silently keeps the last duplicate)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # BaseConstructor.construct_mapping plus the two refusals; SafeConstructor's merge-key flattening
        # is deliberately skipped.
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _YAML_MERGE_TAG:
                raise yaml.constructor.ConstructorError(
                    None, None, "YAML merge keys (<<) are not allowed", key_node.start_mark
                )
            key = self.construct_object(key_node, deep=deep)  # type: ignore[attr-defined]
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark
                )
            if key in mapping:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {describe(key)}", key_node.start_mark
                )
            mapping[key] = self.construct_object(value_node, deep=deep)  # type: ignore[attr-defined]
        return mapping


# CSafeLoader when PyYAML was built with libyaml (about 50x faster on a 1 MiB kubeconfig), else the pure one.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_StrictConstructorMixin, _Base):  # type: ignore[misc,valid-type]
    pass


def _refuse_unknown_tag(loader: Any, node: yaml.Node) -> NoReturn:
    # Our words, not PyYAML's: a tag such as !!python/object asks for code the safe loader will never run.
    raise yaml.constructor.ConstructorError(
        None, None, f"the YAML tag {quote(node.tag)} is not allowed (only plain YAML types are)", node.start_mark
    )


_StrictLoader.add_constructor(None, _refuse_unknown_tag)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", construct_int)  # bounded length (yaml_events)


def _precheck_events(text: str) -> None:
    """Reject anchors, aliases and deep nesting while streaming parse events, before composing any node."""
    depth = 0
    for event in yaml.parse(text, Loader=_Base):
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError(
                f"{_where(event.start_mark)}YAML aliases (*{event.anchor}) are not allowed "
                "(they can expand a small file into billions of nodes)"
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise yaml.YAMLError(f"{_where(event.start_mark)}YAML anchors (&{anchor}) are not allowed")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise yaml.YAMLError(f"{_where(event.start_mark)}nested more than {MAX_NESTING} levels deep")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _plainly_safe(text: str) -> bool:
    """Whether the event pass can be skipped: no ``&`` or ``*`` at all (so no anchor and no alias: YAML has
    no other way to write them), and a character-count bound on the depth already within the limit (see
    ``nesting.depth_bound``). Most documents (every kubeconfig kubectl writes) are; a second full parse of
    them was a fifth of an API create's CPU."""
    return "&" not in text and "*" not in text and depth_bound(text) <= MAX_NESTING


def _yaml_message(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError):
        problem = err.problem or err.context or "invalid YAML"
        return f"{_where(err.problem_mark or err.context_mark)}{problem}"
    return str(err).splitlines()[0] if str(err) else "invalid YAML"  # e.g. a control character: one line


def load_yaml(text: str, *, source: str) -> list[Any]:
    """Every document of a YAML stream (empty ones as ``None``), or BadParameter ``<source>: ...``."""
    # kubeport's own depth limit runs on the text first: the parser never sees input deeper than it can
    # take, and the refusal is in kubeport's words whatever the installed PyYAML/libyaml would say.
    too_deep = nesting_error(text, MAX_NESTING)
    if too_deep is not None:
        raise BadParameter(f"{source} is not valid YAML: {too_deep}")
    # Plain documents (every kubeconfig kubectl writes) are built from libyaml's events; anything else,
    # refusals included, is left to the strict loader below (see registry.core.yaml_events).
    plain = load_plain(text, loader=_StrictLoader, max_depth=MAX_NESTING)
    if plain is not None:
        return plain
    try:
        if not _plainly_safe(text):
            _precheck_events(text)
        return list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise BadParameter(f"{source} is not valid YAML: {_yaml_message(err)}") from None
    except RecursionError:  # belt and braces: the pre-pass already bounds nesting
        raise BadParameter(f"{source} is nested too deeply") from None
    except (ValueError, TypeError, OverflowError):
        # SafeConstructor raises these for values that match a type's syntax but not its range (a timestamp
        # of 30 February); their text may quote the value, so it is not repeated.
        raise BadParameter(f"{source} is not valid YAML: a value cannot be converted (an impossible date?)") from None


def load_yaml_document(data: str | bytes, *, source: str, limit: int) -> object:
    """One YAML document of a configuration file (the agent's, the registry's ``--config``, a kubeconfig):
    size checked before parsing (at most ``limit`` bytes), UTF-8 only, then :func:`load_yaml` (no tags but
    YAML's own types, whose values the callers' field checks refuse where they do not belong; no anchors,
    aliases, merge keys or duplicate keys; bounded nesting; syntax errors by position without the
    source line, which could hold a secret). Every failure is a BadParameter naming ``source``; an empty
    file is ``None``."""
    try:
        raw = check_size(data, source=source, limit=limit)
    except TooLarge as err:
        raise BadParameter(err.message) from None
    text = data if isinstance(data, str) else decode_utf8(raw, source=source)
    documents = load_yaml(text, source=source)
    if len(documents) > 1:
        raise BadParameter(f"{source}: expected one YAML document, found {len(documents)} (remove the ---)")
    return documents[0] if documents else None


# -- JSON ----------------------------------------------------------------------------------------------------


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # built in C; a key given twice makes it shorter (then find which, for the message)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {quote(key)}")
            seen.add(key)
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, iteratively (no recursion to exhaust)."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]  # containers only: scalars add no depth
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > MAX_NESTING:
                return deepest
        below = level + 1
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, below))
    return deepest


def _finite_float(text: str) -> float:
    # json.loads turns 1e999 into inf: a number no duration, count or timestamp can be.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def load_json(text: str | bytes, *, source: str, walk_depth: bool = True) -> Any:
    """One JSON value, rejecting duplicate keys, NaN/Infinity (spelled out or overflowing), invalid UTF-8
    and deep nesting, or BadParameter naming ``source``. The one JSON reader for untrusted input.

    ``walk_depth=False`` skips the walk that bounds nesting to MAX_NESTING, for a caller that bounds it
    itself while it goes through the value anyway (the agents' audit batches: events of flat fields) and
    calls :func:`check_nesting` on whatever else it keeps. The decoder's own recursion limit still ends a
    pathological nesting with this BadParameter."""
    if isinstance(text, bytes):
        text = decode_utf8(text, source=source)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as err:
        raise BadParameter(f"{source} is not valid JSON: line {err.lineno}, column {err.colno}: {err.msg}") from None
    except ValueError as err:
        raise BadParameter(f"{source} is not valid JSON: {err}") from None
    except RecursionError:
        raise BadParameter(f"{source} is not valid JSON: nested more than {MAX_NESTING} levels deep") from None
    if walk_depth:
        check_nesting(value, source=source)
    return value


def check_nesting(value: Any, *, source: str) -> None:
    """BadParameter naming ``source`` when ``value`` (decoded JSON) nests more than MAX_NESTING levels."""
    if _depth(value) > MAX_NESTING:
        raise BadParameter(f"{source} is not valid JSON: nested more than {MAX_NESTING} levels deep")


# -- strict field reading -----------------------------------------------------------------------------------


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Fields:
    """A strict view of one mapping of a document: typed getters that name ``<path>.<key>`` in errors.

    ``subject`` prefixes every message (``kube_cluster "x"``); ``path`` is where this mapping sits
    (``spec``); ``joiner`` goes between the two. Call :meth:`reject_unknown` once with the keys the schema
    knows.
    """

    def __init__(
        self,
        value: object,
        *,
        subject: str,
        path: str,
        what: str = "a mapping",
        joiner: str = ": ",
        reveal: bool = True,
    ) -> None:
        self.subject = subject
        self.path = path
        self.joiner = joiner
        self.reveal = reveal
        self.show: Callable[[object], str] = describe if reveal else describe_type
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            self.fail(f"{path or 'the document'} must be {what} (got {self.show(value)})")
        for key in value:
            if not isinstance(key, str):
                self.fail(f"{path or 'the document'} has a non-string key {self.show(key)}")
        self.data: Mapping[str, Any] = value

    def fail(self, message: str) -> NoReturn:
        raise BadParameter(f"{self.subject}{self.joiner}{message}" if self.subject else message)

    def at(self, key: str) -> str:
        return join_path(self.path, key)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def reject_unknown(self, known: Collection[str], *, hint: str = "") -> None:
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                # A typo gets the likely intended name; anything else gets the caller's hint.
                suggestion = f" (did you mean {close[0]}?)" if close else hint
                self.fail(f"unknown field {self.at(key)}{suggestion}")

    def string(self, key: str, *, default: str = "", required: bool = False, limit: int = 4096) -> str:
        if key not in self.data or self.data[key] is None:
            if required:
                self.fail(f"{self.at(key)} is required")
            return default
        value = self.data[key]
        if not isinstance(value, str):
            self.fail(f"{self.at(key)} must be a string (got {self.show(value)})")
        if len(value) > limit:
            self.fail(f"{self.at(key)} is {len(value)} characters long; at most {limit} are allowed")
        return value

    def boolean(self, key: str, *, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(f"{self.at(key)} must be true or false (got {self.show(value)})")
        return value

    def strings(self, key: str, *, required: bool = False, limit: int = 256) -> tuple[str, ...]:
        """A list of non-empty strings (``null`` or absent is an empty list unless ``required``)."""
        value = self.data.get(key)
        if value is None:
            value = []
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            self.fail(f"{self.at(key)} must be a list of non-empty strings (got {self.show(value)})")
        if required and not value:
            self.fail(f"{self.at(key)} must be a non-empty list of strings")
        if len(value) > limit:
            self.fail(f"{self.at(key)} has {len(value)} items; at most {limit} are allowed")
        return tuple(value)

    def mapping(self, key: str) -> Fields:
        return Fields(
            self.data.get(key), subject=self.subject, path=self.at(key), joiner=self.joiner, reveal=self.reveal
        )


def check_name(
    value: object, *, subject: str, path: str = "metadata.name", pattern: re.Pattern[str], show: bool = True
) -> str:
    """A resource name: a non-empty string of at most 253 characters matching ``pattern``, not ``.``/``..``.

    ``show=False`` keeps the value out of the message (token names are secrets).
    """

    def fail(rule: str) -> NoReturn:
        got = f" (got {describe(value)})" if show else " (value not shown: it is a secret)"
        raise BadParameter(f"{subject}: {path} {rule}{got}")

    if value is None or value == "":
        raise BadParameter(f"{subject}: {path} is required")
    if not isinstance(value, str):
        fail("must be a string")
    if len(value) > 253:
        fail("must be at most 253 characters long")
    if value in (".", ".."):
        fail('must not be "." or ".."')
    if not pattern.fullmatch(value):
        fail(f"must match {pattern.pattern}")
    return value

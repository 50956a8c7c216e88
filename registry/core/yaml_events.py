"""A fast path for :func:`registry.core.validation.load_yaml`: plain YAML built straight from libyaml's events.

PyYAML's C loader parses and composes in C but resolves and constructs every node in Python (a node
object, a resolver call and a constructor call per scalar): for a kubeconfig that was about a third of the
registry's CPU for an API create. :func:`load_plain` reads the C parser's event stream instead and builds
the dicts, lists and scalars itself, for the documents it is sure about, and answers ``None`` for
everything else, which then goes through the strict loader unchanged.

Invariant (what makes the fast path safe): it never accepts or refuses anything on its own. It returns the
documents only when the input uses nothing but untagged mappings, sequences and scalars whose implicit type
is str, null, bool, int or float, with unique scalar keys and no merge key, within ``max_depth``; those
documents are exactly what the strict loader builds (the same resolver table, the same scalar constructors;
the differential tests in tests/registry/core/test_yaml_events.py compare both). Any tag, anchor, alias,
merge key, duplicate key, complex key, timestamp or other typed scalar, nesting deeper than ``max_depth``,
or any parser error makes it return ``None``, and the strict loader then refuses (or accepts) the input in
its own words. A hostile input therefore costs at most one extra event pass, which stops at the first thing
it does not take. The builder is iterative (no recursion, whatever the depth).

Without libyaml (a pure-Python PyYAML) the fast path is off: :func:`load_plain` always answers ``None``.
"""

from __future__ import annotations

from typing import Any

import yaml

# The C parser, when PyYAML was built with libyaml (tests switch it off to compare both paths).
_CParser: Any
try:
    from yaml import cyaml

    _CParser = getattr(cyaml, "CParser")  # noqa: B009 (not in the stubs' exports)
except ImportError:  # PyYAML built without libyaml
    _CParser = None

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_TYPED_TAGS = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")

_Scalar = yaml.ScalarEvent
_MapStart = yaml.MappingStartEvent
_MapEnd = yaml.MappingEndEvent
_SeqStart = yaml.SequenceStartEvent
_SeqEnd = yaml.SequenceEndEvent
_SKIPPED = (yaml.StreamStartEvent, yaml.DocumentStartEvent, yaml.DocumentEndEvent)
_StreamEnd = yaml.StreamEndEvent

# Stand-ins: "no key read yet" for a mapping being filled, and "not a plain scalar this path builds".
_NO_KEY: Any = object()
_DEFER: Any = object()


# SafeConstructor builds a YAML 1.1 sexagesimal int ("1:2:3:...") with a bigint multiply per part, in time
# quadratic in its length (a 1 MiB one: over a minute of CPU), and a hex or octal one of any size (which
# str() then refuses). :func:`construct_int` (the strict loader's int constructor) bounds an int scalar's
# length first, at Python's own bound on decimal digits; the fast path builds ints with it too.
MAX_INT_CHARS = 4300


def construct_int(constructor: Any, node: yaml.ScalarNode) -> int:
    """SafeConstructor's int, refusing a scalar longer than :data:`MAX_INT_CHARS` before converting it."""
    if len(node.value) > MAX_INT_CHARS:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of more than {MAX_INT_CHARS} characters", node.start_mark
        )
    value: int = yaml.constructor.SafeConstructor.construct_yaml_int(constructor, node)
    return value


class _ScalarConstructor(yaml.constructor.SafeConstructor):
    """Only its bool/int/float constructors are used, each of which reads nothing but ``node.value``."""


_SCALARS = _ScalarConstructor()


def load_plain(text: str, *, loader: type[Any], max_depth: int) -> list[Any] | None:
    """Every document of ``text`` as ``loader`` (a SafeLoader subclass) would build it, or ``None`` when the
    input needs the loader itself (module docstring). ``loader`` gives the resolver and constructor tables."""
    if _CParser is None:
        return None
    try:
        parser = _CParser(text)  # a str that is not UTF-8 encodable (a lone surrogate) raises here
    except Exception:
        return None
    try:
        return _build(parser, loader, max_depth)
    except Exception:  # a parser error, a value the constructors refuse, ...: the loader says what it is
        return None
    finally:
        parser.dispose()


def _resolve_plain(value: str, loader: type[Any]) -> Any:
    """A plain (unquoted, untagged) scalar as the loader's implicit resolvers and constructors make it."""
    # BaseResolver.resolve for a plain scalar: the resolvers for its first character, then the wildcard ones.
    table = loader.yaml_implicit_resolvers
    resolvers = table.get(value[0] if value else "", ())
    wildcard = table.get(None, ())
    tag = _STR_TAG
    for candidate, regexp in (*resolvers, *wildcard) if wildcard else resolvers:
        if regexp.match(value):
            tag = candidate
            break
    if tag == _STR_TAG:
        return value
    if tag == _NULL_TAG:
        return None
    if tag in _TYPED_TAGS:
        construct: Any = loader.yaml_constructors.get(tag)
        base: Any = yaml.constructor.SafeConstructor.yaml_constructors.get(tag)
        if construct is None or (construct is not base and construct is not construct_int):
            # a loader with its own constructor: let it run
            return _DEFER
        return construct(_SCALARS, yaml.ScalarNode(tag, value))
    return _DEFER  # timestamps, merge keys ("<<"), "=" and anything added later


def _build(parser: Any, loader: type[Any], max_depth: int) -> list[Any] | None:
    documents: list[Any] = []
    stack: list[Any] = []  # the open mappings and sequences, innermost last
    keys: list[Any] = []  # per open container: the key read and waiting for its value (mappings only)
    get_event = parser.get_event
    while True:
        event = get_event()
        kind = type(event)
        value: Any
        if kind is _Scalar:
            if event.anchor is not None or event.tag is not None:
                return None
            value = event.value
            if event.implicit[0]:
                value = _resolve_plain(value, loader)
                if value is _DEFER:
                    return None
            # Otherwise quoted or a block scalar without a tag: the default scalar tag, a str.
        elif kind is _MapStart or kind is _SeqStart:
            if event.anchor is not None or event.tag is not None or len(stack) >= max_depth:
                return None
            stack.append({} if kind is _MapStart else [])
            keys.append(_NO_KEY)
            continue
        elif kind is _MapEnd or kind is _SeqEnd:
            value = stack.pop()
            keys.pop()
        elif kind in _SKIPPED:
            continue
        elif kind is _StreamEnd:
            return documents
        else:  # an alias, or an event this path does not know
            return None
        if not stack:
            documents.append(value)
            continue
        top = stack[-1]
        if type(top) is list:
            top.append(value)
            continue
        key = keys[-1]
        if key is _NO_KEY:
            if kind is not _Scalar:  # a mapping or sequence as a key
                return None
            keys[-1] = value
        else:
            if key in top:  # the loader refuses duplicate keys, with its own message
                return None
            top[key] = value
            keys[-1] = _NO_KEY

"""Label selectors: Teleport's ``MatchLabels`` / ``MatchResourceLabels`` semantics, explanations, validation.

A *selector* maps label keys to one value or a list of values; a *selector item* is the YAML shape
``{"labels": selector}`` used by an agent's ``resources`` list. Semantics (teleport-behaviour.md §3):

* ``match_labels``: an empty selector matches nothing. ``{"*": "*"}`` (or ``{"*": ["*"]}``) matches
  everything, even a target without labels, whatever other keys the selector has. Otherwise every selector
  key must be present in the target (AND); a value list containing ``*`` only needs the key to be present;
  else any listed value must match (OR). A value that starts with ``^`` and ends with ``$`` is an RE2
  regular expression that must match the whole label value; any other value is a glob in which only ``*``
  is special (``a.b`` matches only ``a.b``). Matching is case-sensitive.
* ``matches_any``: any item matching is enough. Teleport quirk kept on purpose: an item with no labels
  stops the scan and selects nothing, even if a later item would match. Empty ``items`` select nothing.

Regular expressions are RE2 (:mod:`labels.regex`), as Teleport's Go regexps are: matching is linear in
the value's length whoever wrote the pattern, and patterns RE2 cannot compile (lookarounds,
backreferences) are refused with a reason. Globs never use a regex engine (plain substring search,
O(len(pattern) * len(value))). Every selector value is at most :data:`MAX_PATTERN_LENGTH` characters and
contains no control or bidirectional-formatting character (:func:`labels.keys.check_label_text`); a
regular expression is only tried on label values of at most :data:`MAX_MATCH_VALUE_LENGTH` characters (the
longest valid label value; longer legacy values never match a regex, and ``explain`` says so).

Invalid patterns: :func:`match_labels` raises :class:`LabelError` (like Teleport's ``MatchLabels`` returns
an error), because a deny rule silently not matching would fail open. :func:`matches_any` and
:func:`could_match` treat an error as "selects nothing", as Teleport's resource matcher does.
:func:`validate_selector_items` rejects such patterns up front so this never happens for a valid config.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labels import regex
from labels._text import describe, quote
from labels.keys import MAX_LABEL_VALUE_LENGTH, LabelError, check_label_text, validate_label_key

SelectorValue = str | list[str]
Selector = Mapping[str, SelectorValue]
SelectorItem = Mapping[str, Any]

WILDCARD = "*"
MAX_PATTERN_LENGTH = regex.MAX_PATTERN_LENGTH  # the one cap (globs too), defined beside the regex engine
MAX_MATCH_VALUE_LENGTH = MAX_LABEL_VALUE_LENGTH
MAX_SELECTOR_ITEMS = 1024
MAX_SELECTOR_KEYS = 256
MAX_SELECTOR_VALUES = 256

# Keys an item may carry besides "labels": Teleport's resource matcher has an "aws" block (assume-role
# settings) that means nothing for Kubernetes clusters; accepting and dropping it lets Teleport configs load.
_IGNORED_ITEM_KEYS = frozenset({"aws"})

_EMPTY_ITEM_REASON = (
    "has no labels, and an item without labels selects nothing and stops the scan "
    "(Teleport behaviour; later items are not considered)"
)


# --------------------------------------------------------------------------------------------- matching


def _is_regex(pattern: str) -> bool:
    return len(pattern) >= 2 and pattern.startswith("^") and pattern.endswith("$")


def _glob_match(pattern: str, value: str) -> bool:
    """Full-string match where only ``*`` is special (any run of characters, possibly empty).

    Leftmost placement of each literal segment between stars is always optimal for star-only globs, so
    a greedy scan is exact and needs no backtracking.
    """
    if WILDCARD not in pattern:
        return pattern == value
    parts = pattern.split(WILDCARD)
    head, tail = parts[0], parts[-1]
    if len(head) + len(tail) > len(value) or not value.startswith(head) or not value.endswith(tail):
        return False
    pos, end = len(head), len(value) - len(tail)
    for part in parts[1:-1]:
        if part:
            found = value.find(part, pos, end)
            if found < 0:
                return False
            pos = found + len(part)
    return True


def _check_pattern(pattern: str) -> None:
    regex.check_pattern_length(pattern)
    check_label_text(pattern, what="selector value")


def _value_matches(pattern: str, value: str) -> bool:
    _check_pattern(pattern)
    if _is_regex(pattern):
        compiled = regex.compile_regex(pattern)
        if len(value) > MAX_MATCH_VALUE_LENGTH:
            return False
        return compiled.fullmatch(value)
    return _glob_match(pattern, value)


def _values(wanted: object) -> list[str]:
    """The selector value as a list (a scalar string is a one-element list, as in Teleport's YAML)."""
    if isinstance(wanted, str):
        return [wanted]
    if isinstance(wanted, list | tuple) and all(isinstance(v, str) for v in wanted):
        return list(wanted)
    raise LabelError(f"selector value must be a string or a list of strings (got {describe(wanted)})")


def _is_select_all(selector: Mapping[str, object]) -> bool:
    return WILDCARD in selector and _values(selector[WILDCARD]) == [WILDCARD]


def _key_matches(key: str, wanted: object, labels: Mapping[str, str]) -> bool:
    values = _values(wanted)
    if key not in labels:
        return False
    if WILDCARD in values:
        return True
    actual = labels[key]
    # A non-string value can only come from corrupted data; it matches nothing rather than crashing.
    if not isinstance(actual, str):
        return False
    return any(_value_matches(pattern, actual) for pattern in values)


def match_labels(selector: Selector, labels: Mapping[str, str]) -> bool:
    """Teleport's ``MatchLabels``: does ``selector`` select a target with ``labels``? (module docstring)

    Raises :class:`LabelError` for a malformed selector value or an invalid / over-long pattern.
    """
    if not selector:
        return False
    if _is_select_all(selector):
        return True
    return all(_key_matches(key, wanted, labels) for key, wanted in selector.items())


def _item_selector(item: SelectorItem) -> Mapping[str, Any]:
    selector = item.get("labels") if isinstance(item, Mapping) else None
    return selector if isinstance(selector, Mapping) else {}


def matches_any(items: Sequence[SelectorItem], labels: Mapping[str, str]) -> bool:
    """True when any item's ``labels`` selector matches ``labels``.

    Empty ``items`` select nothing. An item without labels (missing, null or ``{}``) ends the scan with
    False even if a later item would match: Teleport's ``MatchResourceLabels`` does this, and kubeport
    keeps it so the same config selects the same clusters. An invalid pattern also ends it with False.
    """
    for item in items:
        selector = _item_selector(item)
        if not selector:
            return False
        try:
            if match_labels(selector, labels):
                return True
        except LabelError:
            return False
    return False


def could_match(items: Sequence[SelectorItem], static: Mapping[str, str], dynamic_keys: Collection[str]) -> bool:
    """Could ``matches_any`` become true once the dynamic labels ``dynamic_keys`` have values?

    Dynamic labels override static labels of the same key, so a selector key that is a dynamic key is
    assumed to match whatever its command will print (unless its value list is empty, which matches
    nothing); every other selector key must match ``static`` now. ``{"*": "*"}``, empty items and items
    without labels behave exactly as in :func:`matches_any`. Lets an agent skip running label commands of
    clusters it can never serve.
    """
    dynamic = frozenset(dynamic_keys)
    for item in items:
        selector = _item_selector(item)
        if not selector:
            return False
        try:
            if _is_select_all(selector):
                return True
            if all(
                bool(_values(wanted)) if key in dynamic else _key_matches(key, wanted, static)
                for key, wanted in selector.items()
            ):
                return True
        except LabelError:
            return False
    return False


# ------------------------------------------------------------------------------------------ explaining


@dataclass(frozen=True)
class Mismatch:
    """Why one selector item (or the whole list) does not select a set of labels.

    ``item_index`` is the 0-based index in the items list (messages count from 1, as people do), or
    None when the list itself is the problem. ``key`` is the first selector key (in selector order) that
    failed, ``wanted`` its selector values, ``actual`` the target's value (None if missing). ``selector``
    is the item rendered for people, e.g. ``{env=prod, region=us-east-2}``.
    """

    item_index: int | None
    key: str | None
    wanted: tuple[str, ...]
    actual: str | None
    reason: str
    selector: str = ""

    def __str__(self) -> str:
        if self.item_index is None:
            return self.reason
        return f"item {self.item_index + 1} {self.selector}: {self.reason}"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def render_selector(selector: Mapping[str, Any]) -> str:
    """Render a selector for people: ``{env=prod, region=[us-east-2, us-west-1]}`` (selector order)."""
    parts = []
    for key, wanted in selector.items():
        if isinstance(wanted, str):
            shown = _short(wanted)
        elif isinstance(wanted, list | tuple):
            shown = "[" + ", ".join(_short(str(v)) for v in wanted) + "]"
        else:
            shown = f"<{describe(wanted)}>"
        parts.append(f"{_short(str(key))}={shown}")
    return "{" + ", ".join(parts) + "}"


def _wanted_text(values: Sequence[str]) -> str:
    if not values:
        return "nothing (an empty value list matches no value)"
    if len(values) == 1:
        return quote(values[0])
    return "one of " + ", ".join(quote(v) for v in values)


def _explain_item(index: int, selector: Mapping[str, Any], labels: Mapping[str, str]) -> Mismatch | None:
    """The first failing key of one non-empty item, or None if the item matches."""
    shown = render_selector(selector)
    try:
        if _is_select_all(selector):
            return None
        for key, wanted in selector.items():
            if _key_matches(key, wanted, labels):
                continue
            values = tuple(_values(wanted))
            actual: str | None = None
            if key not in labels:
                reason = f"label {quote(key)} is missing"
            else:
                actual = str(labels[key])
                reason = f"label {quote(key)} is {quote(actual)}, wanted {_wanted_text(values)}"
                if len(actual) > MAX_MATCH_VALUE_LENGTH and any(_is_regex(v) for v in values):
                    reason += (
                        f" (values longer than {MAX_MATCH_VALUE_LENGTH} characters never match a regular expression)"
                    )
            return Mismatch(index, key, values, actual, reason, shown)
    except LabelError as err:
        return Mismatch(index, None, (), None, f"{err} (this item and later ones select nothing)", shown)
    return None


def explain_all(items: Sequence[SelectorItem], labels: Mapping[str, str]) -> list[Mismatch]:
    """One :class:`Mismatch` per item that was tried and failed; an empty list when ``matches_any`` is true.

    Items are reported in order and the report stops where :func:`matches_any` stops (an item without
    labels or with an invalid pattern), so the list explains exactly the decision that was made.
    """
    if not items:
        return [Mismatch(None, None, (), None, "no selector items (an empty resources list selects nothing)")]
    mismatches: list[Mismatch] = []
    for index, item in enumerate(items):
        selector = _item_selector(item)
        if not selector:
            mismatches.append(Mismatch(index, None, (), None, _EMPTY_ITEM_REASON, "{}"))
            return mismatches
        mismatch = _explain_item(index, selector, labels)
        if mismatch is None:
            return []
        mismatches.append(mismatch)
        if mismatch.key is None:  # an invalid pattern: matches_any gives up here too
            return mismatches
    return mismatches


def explain(items: Sequence[SelectorItem], labels: Mapping[str, str]) -> str | None:
    """None when ``matches_any(items, labels)``; else every :class:`Mismatch` joined with ``"; "``."""
    mismatches = explain_all(items, labels)
    if not mismatches:
        return None
    return "; ".join(str(m) for m in mismatches)


# ------------------------------------------------------------------------------------------ validation


def _validate_pattern(pattern: str, where: str) -> None:
    try:
        _check_pattern(pattern)
        if _is_regex(pattern):
            regex.compile_regex(pattern)
    except LabelError as err:
        raise LabelError(f"{where}: {err}") from None


def _validate_selector(selector: object, where: str) -> dict[str, SelectorValue]:
    if selector is None or (isinstance(selector, Mapping) and not selector):
        raise LabelError(
            f"{where} is empty: an item without labels selects nothing and disables the items after it; "
            'use {"*": "*"} to select every cluster'
        )
    if not isinstance(selector, Mapping):
        raise LabelError(f"{where} must be a mapping of label keys to values (got {describe(selector)})")
    if len(selector) > MAX_SELECTOR_KEYS:
        raise LabelError(f"{where} has {len(selector)} keys, at most {MAX_SELECTOR_KEYS} are allowed")
    result: dict[str, SelectorValue] = {}
    for key, wanted in selector.items():
        try:
            validate_label_key(key)
        except LabelError as err:
            raise LabelError(f"{where}: {err}") from None
        path = f"{where}.{key}"
        if isinstance(wanted, str):
            _validate_pattern(wanted, path)
            result[key] = wanted
            continue
        if not isinstance(wanted, list | tuple):
            raise LabelError(f"{path} must be a string or a list of strings (got {describe(wanted)})")
        if not wanted:
            raise LabelError(f"{path} is an empty list, which matches nothing; list at least one value")
        if len(wanted) > MAX_SELECTOR_VALUES:
            raise LabelError(f"{path} has {len(wanted)} values, at most {MAX_SELECTOR_VALUES} are allowed")
        for position, value in enumerate(wanted):
            if not isinstance(value, str):
                raise LabelError(f"{path}[{position}] must be a string (got {describe(value)})")
            _validate_pattern(value, f"{path}[{position}]")
        result[key] = list(wanted)
    if WILDCARD in result:
        # Teleport looks a "*" key with another value up literally, and "*": "*" ignores every other key;
        # both are almost certainly mistakes, so say so instead of selecting something surprising.
        if _values(result[WILDCARD]) != [WILDCARD]:
            raise LabelError(f'{where}: the key "*" only supports the value "*" (select everything)')
        if len(result) > 1:
            raise LabelError(f'{where}: "*": "*" selects everything, so the other keys would be ignored')
    return result


def validate_selector(selector: object, *, what: str = "labels") -> dict[str, SelectorValue]:
    """Validate one selector mapping (``{key: value | [values]}``), the ``labels`` of one item below.

    ``what`` names the mapping in messages (``kubernetes_labels.env: ...``); the rules are those of
    :func:`validate_selector_items`. Values are returned as given, lists as lists.
    """
    return _validate_selector(selector, what)


def validate_selector_items(items: object, *, what: str = "resources") -> list[dict[str, Any]]:
    """Validate the YAML shape ``[{labels: {key: value | [values]}}, ...]`` and return normalised items.

    ``what`` names the list in messages (``resources[0].labels: invalid label key "a b": ...``). Each item
    must be a mapping whose only key is ``labels`` (an ``aws`` key is accepted and dropped for Teleport
    compatibility). Stricter than Teleport, because each of these silently selects something other than
    intended: an empty or missing ``labels``, an empty value list, a ``"*"`` key with another value or
    with other keys. Regular expressions must compile and every pattern is length-capped. Values are
    returned as given (scalar strings stay strings, lists become lists). An empty list is valid (it
    selects nothing).
    """
    if isinstance(items, str | bytes) or not isinstance(items, list | tuple):
        raise LabelError(f"{what} must be a list of {{labels: {{...}}}} items (got {describe(items)})")
    if len(items) > MAX_SELECTOR_ITEMS:
        raise LabelError(f"{what} has {len(items)} items, at most {MAX_SELECTOR_ITEMS} are allowed")
    result: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        where = f"{what}[{index}]"
        if not isinstance(item, Mapping):
            raise LabelError(f'{where} must be a mapping with a "labels" key (got {describe(item)})')
        unknown = sorted(str(k) for k in item if k != "labels" and k not in _IGNORED_ITEM_KEYS)
        if unknown:
            names = ", ".join(quote(k) for k in unknown)
            raise LabelError(f'{where}: unknown key(s) {names} (an item supports only "labels")')
        if "labels" not in item:
            raise LabelError(f'{where}: missing "labels"')
        result.append({"labels": _validate_selector(item["labels"], f"{where}.labels")})
    return result

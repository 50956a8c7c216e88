"""Label and field selectors of list and watch requests (``labelSelector=``, ``fieldSelector=``).

Pure. Label selectors follow Kubernetes' string syntax: comma-separated requirements ``k=v``, ``k==v``,
``k!=v``, ``k`` (exists), ``!k`` (does not exist), ``k in (a,b)``, ``k notin (a,b)``; ``!=`` and ``notin``
also match objects without the label, as in Kubernetes. Field selectors support ``=``, ``==`` and ``!=`` on
``metadata.name`` and ``metadata.namespace`` (every resource) and ``type`` (secrets).

Simplified: no ``>``/``<`` requirements; label keys and values are not validated beyond the grammar.
Errors are 400 Status errors with the real server's leading words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.fakes.kube_status import KubeStatusError, bad_request

MAX_SELECTOR_CHARS = 4096
_KEY_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")
_SET_RE = re.compile(r"^(\S+)\s+(in|notin)\s+\((.*)\)$")

Labels = Mapping[str, str]


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists", "in", "notin"
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=" and "notin"


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( ... )``."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise bad_request(f"unable to parse requirement: unexpected ')' in {text[:100]!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise bad_request(f"unable to parse requirement: unbalanced '(' in {text[:100]!r}")
    parts.append("".join(current))
    return parts


def _key(key: str, whole: str) -> str:
    key = key.strip()
    if not key or len(key) > 317 or _KEY_RE.match(key) is None:
        raise bad_request(f"unable to parse requirement: invalid label key {key[:80]!r} in {whole[:100]!r}")
    return key


def parse_label_selector(text: str) -> tuple[LabelRequirement, ...]:
    if len(text) > MAX_SELECTOR_CHARS:
        raise bad_request(f"unable to parse requirement: selector is longer than {MAX_SELECTOR_CHARS} characters")
    if not text.strip():
        return ()
    requirements: list[LabelRequirement] = []
    for raw in _split_top_level(text):
        term = raw.strip()
        set_match = _SET_RE.match(term)
        if set_match:
            values = tuple(v.strip() for v in set_match.group(3).split(","))
            requirements.append(LabelRequirement(_key(set_match.group(1), text), set_match.group(2), values))
        elif "!=" in term:
            key, _, value = term.partition("!=")
            requirements.append(LabelRequirement(_key(key, text), "!=", (value.strip(),)))
        elif "=" in term:
            key, _, value = term.partition("==") if "==" in term else term.partition("=")
            requirements.append(LabelRequirement(_key(key, text), "=", (value.strip(),)))
        elif term.startswith("!"):
            requirements.append(LabelRequirement(_key(term[1:], text), "!exists"))
        else:
            requirements.append(LabelRequirement(_key(term, text), "exists"))
    return tuple(requirements)


def labels_match(requirements: tuple[LabelRequirement, ...], obj: Mapping[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


FieldGetter = Callable[[Mapping[str, Any]], str]

_COMMON_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
}
_EXTRA_FIELDS: dict[str, dict[str, FieldGetter]] = {
    "secrets": {"type": lambda o: str(o.get("type", ""))},
}


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str


def parse_field_selector(text: str, resource: str) -> tuple[FieldRequirement, ...]:
    if len(text) > MAX_SELECTOR_CHARS:
        raise bad_request(f"invalid field selector: longer than {MAX_SELECTOR_CHARS} characters")
    if not text.strip():
        return ()
    known = {**_COMMON_FIELDS, **_EXTRA_FIELDS.get(resource, {})}
    requirements: list[FieldRequirement] = []
    for raw in text.split(","):
        term = raw.strip()
        if "!=" in term:
            field, _, value = term.partition("!=")
            negate = True
        elif "=" in term:
            field, _, value = term.partition("==") if "==" in term else term.partition("=")
            negate = False
        else:
            raise bad_request(f"invalid selector: '{text[:100]}'; can't understand '{term[:100]}'")
        field = field.strip()
        if field not in known:
            supported = ", ".join(f'"{name}"' for name in known)
            raise KubeStatusError(400, "BadRequest", f'"{field[:80]}" is not a known field selector: only {supported}')
        requirements.append(FieldRequirement(field, negate, value.strip()))
    return tuple(requirements)


def fields_match(requirements: tuple[FieldRequirement, ...], resource: str, obj: Mapping[str, Any]) -> bool:
    known = {**_COMMON_FIELDS, **_EXTRA_FIELDS.get(resource, {})}
    return all((known[req.field](obj) == req.value) != req.negate for req in requirements)


@dataclass(frozen=True)
class Selector:
    """What a list or watch is restricted to."""

    resource: str
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return labels_match(self.labels, obj) and fields_match(self.fields, self.resource, obj)


def selector_from_query(resource: str, query: Mapping[str, list[str]]) -> Selector:
    label_text = (query.get("labelSelector") or [""])[-1]
    field_text = (query.get("fieldSelector") or [""])[-1]
    return Selector(resource, parse_label_selector(label_text), parse_field_selector(field_text, resource))

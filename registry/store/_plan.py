"""Sans-IO core shared by every store backend: input checks, encoding, and the plan of each write.

Backends do I/O only: they fetch the current :class:`Item`, ask :func:`plan_write` / :func:`plan_expiry`
what changes to make, apply those :class:`Change` objects atomically, and publish them. Every semantic rule
(expiry visibility, compare-and-swap, created_revision, error messages) therefore lives here once, and the
memory and SQLite backends cannot drift apart.

Invariants:

* Each :class:`Change` has its own revision; a plan's revisions are ``revision + 1, revision + 2, ...``,
  so history is contiguous (history size = current revision - compaction floor).
* Values travel as canonical JSON text (:func:`encode_value`): one encoding step validates them, both
  backends store the same bytes, and every read decodes a fresh copy.
* Each item also carries its labels (``value["metadata"]["labels"]``) as small JSON text, extracted once
  at write time, so a label-filtered list decodes only the values it returns.
* Secrets leave history as soon as their version stops being current (``_secrets``): a change that
  replaces or removes a version carries the redacted copy of it (``supersedes``) for the backend to write
  over that version's history entry, and a DELETE records and publishes a redacted item (``history``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from labels import match_labels
from registry.core.errors import AlreadyExists, BadParameter, Compacted, CompareFailed, NotFound, TooLarge
from registry.core.validation import label_errors
from registry.store import _secrets
from registry.store.base import EncodedValue, Event, Record

WriteKind = Literal["create", "update", "put", "delete"]

# Kinds are internal identifiers ("kube_cluster"); keeping them tame keeps SQL, logs and keys simple.
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")
MAX_NAME_CHARS = 1024
# Control characters in names only ever serve log or terminal injection; reject them outright.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_WATCH_KINDS = 64
MAX_SELECTOR_KEYS = 256
# etcd's default request limit is 1.5 MiB; 1 MiB per value leaves room for the key and the envelope.
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Item:
    """A stored version: the value as canonical JSON text, plus its labels as JSON text."""

    kind: str
    name: str
    data: str
    revision: int
    created_revision: int
    expires: float | None
    labels: str = "{}"

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now

    def to_record(self) -> Record:
        value: dict[str, Any] = json.loads(self.data)
        return Record(self.kind, self.name, value, self.revision, self.created_revision, self.expires)


@dataclass(frozen=True, slots=True)
class Change:
    """One history entry. DELETE carries the last version with ``revision`` = the delete's revision.

    ``item`` is what the live table gets (a DELETE removes ``item.kind``/``item.name``). ``history``, when
    set, is what history records and watchers see instead (the item without secrets). ``supersedes``, when
    set, is the redacted copy of the version this change replaced or removed: backends write it over the
    history entry at ``supersedes.revision`` in the same transaction.
    """

    type: Literal["PUT", "DELETE"]
    item: Item
    history: Item | None = None
    supersedes: Item | None = None

    @property
    def revision(self) -> int:
        return self.item.revision

    @property
    def recorded(self) -> Item:
        """The item as history keeps it and watchers see it."""
        return self.history if self.history is not None else self.item

    def to_event(self, published: float | None = None) -> Event:
        return Event(self.type, self.recorded.to_record(), published)


def _removal(last: Item, revision: int) -> Change:
    """The DELETE of ``last`` at ``revision``: recorded without secrets, and its PUT entry redacted too."""
    deleted = replace(last, revision=revision)
    return Change("DELETE", deleted, history=_secrets.redact(deleted), supersedes=_secrets.redact(last))


@dataclass(frozen=True, slots=True)
class WriteOp:
    """A validated write request."""

    op: WriteKind
    kind: str
    name: str
    data: str | None = None  # None only for delete
    labels: str = "{}"
    expires: float | None = None
    expected_revision: int | None = None


@dataclass(frozen=True, slots=True)
class ListRange:
    """A validated ``list`` range: ``lower <= name`` and ``name < upper`` (None: unbounded), in name order
    (``reverse``: highest name first), at most ``limit`` records (None: all). ``prefix`` is kept for the
    exact ``startswith`` check after the index range."""

    prefix: str | None = None
    lower: str = ""
    upper: str | None = None
    limit: int | None = None
    reverse: bool = False

    def contains(self, name: str) -> bool:
        return self.lower <= name and (self.upper is None or name < self.upper) and has_prefix(name, self.prefix)


# --- messages --------------------------------------------------------------------------------------------


def not_found(kind: str, name: str) -> NotFound:
    return NotFound(f"{kind} {json.dumps(name)} not found")


def already_exists(kind: str, name: str) -> AlreadyExists:
    return AlreadyExists(f"{kind} {json.dumps(name)} already exists")


def compare_failed(kind: str, name: str, expected: int, current: int) -> CompareFailed:
    return CompareFailed(
        f"{kind} {json.dumps(name)} was modified concurrently (expected revision {expected}, current {current})"
    )


def too_old(since: int, floor: int) -> Compacted:
    return Compacted(
        f"watch from revision {since} is too old (history starts after revision {floor}): relist and watch again"
    )


def too_new(since: int, revision: int) -> Compacted:
    # A client resuming past the store's revision talks to a restored or replaced store; only a relist
    # gives it a consistent view again, which is exactly what Compacted asks for.
    return Compacted(
        f"watch from revision {since} is ahead of the store (current revision {revision}): relist and watch again"
    )


def fell_behind(last: int, buffer: int) -> Compacted:
    return Compacted(
        f"watcher fell behind (more than {buffer} events not read in time): watch again from revision {last}"
    )


# --- input checks ----------------------------------------------------------------------------------------


def check_kind(kind: object) -> str:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise BadParameter(f"invalid kind {_show(kind)}: must match {_KIND_RE.pattern}")
    return kind


def check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise BadParameter(f"{kind} name must be a non-empty string, got {_show(name)}")
    if len(name) > MAX_NAME_CHARS:
        raise BadParameter(f"{kind} name is {len(name)} characters long, the limit is {MAX_NAME_CHARS}")
    if _CONTROL_RE.search(name):
        raise BadParameter(f"{kind} name {_show(name)} contains control characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadParameter(f"{kind} name {_show(name)} is not valid Unicode") from None
    return name


def check_kinds(kinds: object) -> frozenset[str]:
    # A bare string is a Collection of characters: almost certainly a forgotten pair of brackets.
    if isinstance(kinds, str) or not isinstance(kinds, Collection):
        raise BadParameter(f"watch kinds must be a collection of kinds such as ['kube_cluster'], got {_show(kinds)}")
    if not kinds:
        raise BadParameter("watch needs at least one kind")
    if len(kinds) > MAX_WATCH_KINDS:
        raise BadParameter(f"watch names {len(kinds)} kinds, the limit is {MAX_WATCH_KINDS}")
    return frozenset(check_kind(k) for k in kinds)


def check_revision(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadParameter(f"{what} must be a non-negative integer, got {_show(value)}")
    return value


def check_optional_revision(what: str, value: object) -> int | None:
    return None if value is None else check_revision(what, value)


def check_expires(kind: str, name: str, expires: object) -> float | None:
    if expires is None:
        return None
    if isinstance(expires, bool) or not isinstance(expires, int | float) or not math.isfinite(expires):
        raise BadParameter(f"{kind} {json.dumps(name)}: expires must be unix seconds or None, got {_show(expires)}")
    return float(expires)


def check_prefix(prefix: object) -> str | None:
    if prefix is None:
        return None
    if not isinstance(prefix, str):
        raise BadParameter(f"name prefix must be a string, got {_show(prefix)}")
    return prefix


def check_range(prefix: str | None, after: object, before: object, limit: object, reverse: object) -> ListRange:
    """``list``'s name range from its arguments: a prefix, names strictly after / before, a row limit."""
    for what, bound in (("after", after), ("before", before)):
        if bound is not None and not isinstance(bound, str):
            raise BadParameter(f"list {what} must be a name (a string), got {_show(bound)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise BadParameter(f"list limit must be a non-negative integer, got {_show(limit)}")
    if not isinstance(reverse, bool):
        raise BadParameter(f"list reverse must be true or false, got {_show(reverse)}")
    lower = prefix or ""
    if isinstance(after, str):
        # The least string greater than ``after``: '\0' sorts below every other character.
        lower = max(lower, after + "\x00")
    upper = prefix_upper_bound(prefix) if prefix else None
    if isinstance(before, str):
        upper = before if upper is None else min(upper, before)
    return ListRange(prefix=prefix, lower=lower, upper=upper, limit=limit, reverse=reverse)


def check_selector(selector: object) -> Mapping[str, str | list[str]] | None:
    """A label selector for ``list``: None, or a mapping of str to str / list of str with valid patterns.

    Each pattern is tried once against an empty value through ``match_labels`` itself, so an invalid one
    (bad regular expression, too long) fails here whatever the stored data, with the library's message.
    """
    if selector is None:
        return None
    if not isinstance(selector, Mapping):
        raise BadParameter(f"label selector must be a mapping, got {type(selector).__name__}")
    if len(selector) > MAX_SELECTOR_KEYS:
        raise BadParameter(f"label selector has {len(selector)} keys, the limit is {MAX_SELECTOR_KEYS}")
    checked: dict[str, str | list[str]] = {}
    for key, wanted in selector.items():
        values = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(key, str) or not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadParameter(
                f"label selector entry {_show(key)}: {_show(wanted)} must map a string to a string or a list of strings"
            )
        with label_errors(subject="invalid label selector"):
            for value in values:
                match_labels({key: value}, {key: ""})
        checked[key] = wanted
    return checked


def check_positive(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadParameter(f"{what} must be a positive integer, got {_show(value)}")
    return value


# json.dumps with these options builds a JSONEncoder per call: one, built once, does the same (compact,
# sorted keys, ASCII, NaN/Infinity refused). No circular check: a cycle ends in RecursionError, as deep
# nesting does, and both are a BadParameter.
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, allow_nan=False, check_circular=False)


def encode_value(kind: str, name: str, value: object, max_bytes: int) -> str:
    """Canonical JSON text of ``value`` (a dict), or BadParameter / TooLarge naming the record."""
    if not isinstance(value, dict):
        raise BadParameter(f"{_where(kind, name)}: value must be a JSON object, got {type(value).__name__}")
    try:
        # allow_nan=False: NaN/Infinity are not JSON and other readers (etcd clients, kubectl) reject them.
        data = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadParameter(f"{_where(kind, name)}: value is not JSON-serialisable: {exc}") from None
    if len(data) > max_bytes:  # length in characters; ensure_ascii makes that the byte count
        raise TooLarge(f"{_where(kind, name)}: value is {len(data)} bytes as JSON, the limit is {max_bytes}")
    return data


def _where(kind: str, name: str) -> str:
    """The record named in an error message (built only on the error path: one json.dumps per write saved)."""
    return f"{kind} {json.dumps(name)}"


def encoded(kind: str, name: str, value: object, max_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> EncodedValue:
    """``value`` checked and encoded as a store writes it (:func:`encode_value`, :func:`encode_labels`), for
    :meth:`Store.append_many`; BadParameter / TooLarge (over ``max_bytes``) name the record."""
    data = encode_value(kind, name, value, max_bytes)
    assert isinstance(value, dict)  # encode_value raised otherwise
    return EncodedValue(data, encode_labels(value))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- planning --------------------------------------------------------------------------------------------


def plan_write(op: WriteOp, current: Item | None, *, now: float, revision: int) -> list[Change]:
    """The changes ``op`` makes given the stored ``current`` item and the store ``revision``.

    Raises NotFound / AlreadyExists / CompareFailed without changing anything.
    """
    live = current if current is not None and not current.expired(now) else None
    changes: list[Change] = []
    rev = revision

    def next_revision() -> int:
        nonlocal rev
        rev += 1
        return rev

    if op.op in ("update", "delete"):
        if live is None:
            raise not_found(op.kind, op.name)
        if op.expected_revision is not None and op.expected_revision != live.revision:
            raise compare_failed(op.kind, op.name, op.expected_revision, live.revision)
    if op.op == "create" and live is not None:
        raise already_exists(op.kind, op.name)

    if op.op == "delete":
        assert live is not None
        return [_removal(live, next_revision())]

    if current is not None and live is None:
        # An expired record stands in the way of create/put: remove it first, as a lease expiry would.
        changes.append(_removal(current, next_revision()))
    assert op.data is not None
    new_revision = next_revision()
    created = live.created_revision if live is not None else new_revision
    item = Item(op.kind, op.name, op.data, new_revision, created, op.expires, op.labels)
    changes.append(Change("PUT", item, supersedes=_secrets.redact(live) if live is not None else None))
    return changes


def plan_batch(
    ops: Sequence[WriteOp], read: Callable[[str, str], Item | None], *, now: float, revision: int
) -> list[Change]:
    """The changes of ``ops`` applied one after the other (each sees the ones before it: a name written twice
    meets its own first write), reading stored items through ``read``. Raises like :func:`plan_write`, for
    the whole batch, before anything is applied."""
    overlay: dict[tuple[str, str], Item | None] = {}
    changes: list[Change] = []
    for op in ops:
        key = (op.kind, op.name)
        current = overlay[key] if key in overlay else read(op.kind, op.name)
        if current is None and op.data is not None and op.op in ("create", "put"):
            # A new record (an audit append, a first heartbeat): plan_write's outcome without its checks,
            # none of which applies when nothing is stored under the name.
            revision += 1
            item = Item(op.kind, op.name, op.data, revision, revision, op.expires, op.labels)
            changes.append(Change("PUT", item))
            overlay[key] = item
            continue
        planned = plan_write(op, current, now=now, revision=revision)
        changes += planned
        revision = planned[-1].revision
        overlay[key] = None if planned[-1].type == "DELETE" else planned[-1].item
    return changes


def plan_expiry(items: Iterable[Item], *, now: float, revision: int) -> list[Change]:
    """DELETE changes for every expired item, oldest expiry first (ties by kind, name)."""
    expired = sorted(
        (i for i in items if i.expired(now)),
        key=lambda i: (i.expires, i.kind, i.name),
    )
    return [_removal(item, revision + n) for n, item in enumerate(expired, 1)]


def to_records(items: Iterable[Item], labels: Mapping[str, str | list[str]] | None) -> list[Record]:
    """Decode items (already sorted and live) into records, keeping those whose labels match."""
    if labels is not None:
        items = [item for item in items if labels_match(labels, item)]
    return [item.to_record() for item in items]


def labels_match(labels: Mapping[str, str | list[str]], item: Item) -> bool:
    return bool(match_labels(labels, json.loads(item.labels)))


def encode_labels(value: Mapping[str, Any]) -> str:
    """The labels of ``value`` as canonical JSON text (see :func:`labels_of`)."""
    labels = labels_of(value)
    if not labels:  # most records (every audit event): skip the encoder
        return "{}"
    return json.dumps(labels, separators=(",", ":"), sort_keys=True)


def labels_of(value: Mapping[str, Any]) -> dict[str, str]:
    """``value["metadata"]["labels"]`` as str -> str; anything malformed counts as no labels."""
    metadata = value.get("metadata")
    if not isinstance(metadata, dict):
        return {}
    labels = metadata.get("labels")
    if not isinstance(labels, dict):
        return {}
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: no bound exists).

    Python compares code points, which for valid (surrogate-free) strings is the same order as SQLite's
    BINARY collation over UTF-8, so ``prefix <= name < bound`` is an index-friendly prefix test.
    """
    chars = list(prefix)
    while chars and chars[-1] == "\U0010ffff":
        chars.pop()
    if not chars:
        return None
    last = ord(chars[-1]) + 1
    if 0xD800 <= last <= 0xDFFF:  # surrogates cannot appear in stored names: skip the whole block
        last = 0xE000
    chars[-1] = chr(last)
    return "".join(chars)


def has_prefix(name: str, prefix: str | None) -> bool:
    return prefix is None or name.startswith(prefix)

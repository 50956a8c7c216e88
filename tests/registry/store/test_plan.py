"""The pure planner shared by the backends: write plans, expiry plans, prefix bounds, value encoding."""

from __future__ import annotations

import itertools
import json

import pytest

from registry.core.errors import AlreadyExists, BadParameter, CompareFailed, NotFound
from registry.store._plan import Item, WriteOp, encode_value, plan_batch, plan_expiry, plan_write, prefix_upper_bound

NOW = 1000.0


def item(name: str = "x", revision: int = 5, created: int = 3, expires: float | None = None) -> Item:
    return Item("kube_cluster", name, '{"old":true}', revision, created, expires)


LIVE = item()
EXPIRED = item(expires=NOW)  # expires <= now counts as expired


@pytest.mark.parametrize(
    ("op", "current", "expected"),
    [
        # (type, revision, created_revision) of each planned change, store revision 10
        (WriteOp("create", "kube_cluster", "x", "{}"), None, [("PUT", 11, 11)]),
        (WriteOp("create", "kube_cluster", "x", "{}"), EXPIRED, [("DELETE", 11, 3), ("PUT", 12, 12)]),
        (WriteOp("put", "kube_cluster", "x", "{}"), None, [("PUT", 11, 11)]),
        (WriteOp("put", "kube_cluster", "x", "{}"), LIVE, [("PUT", 11, 3)]),
        (WriteOp("put", "kube_cluster", "x", "{}"), EXPIRED, [("DELETE", 11, 3), ("PUT", 12, 12)]),
        (WriteOp("update", "kube_cluster", "x", "{}"), LIVE, [("PUT", 11, 3)]),
        (WriteOp("update", "kube_cluster", "x", "{}", expected_revision=5), LIVE, [("PUT", 11, 3)]),
        (WriteOp("delete", "kube_cluster", "x"), LIVE, [("DELETE", 11, 3)]),
        (WriteOp("delete", "kube_cluster", "x", expected_revision=5), LIVE, [("DELETE", 11, 3)]),
    ],
)
def test_plan_write(op: WriteOp, current: Item | None, expected: list[tuple[str, int, int]]) -> None:
    changes = plan_write(op, current, now=NOW, revision=10)
    assert [(c.type, c.revision, c.item.created_revision) for c in changes] == expected
    if changes[-1].type == "PUT":
        assert changes[-1].item.data == "{}"
    else:
        assert changes[-1].item.data == '{"old":true}'  # a DELETE carries the last value


@pytest.mark.parametrize(
    ("op", "current", "error"),
    [
        (WriteOp("create", "kube_cluster", "x", "{}"), LIVE, AlreadyExists),
        (WriteOp("update", "kube_cluster", "x", "{}"), None, NotFound),
        (WriteOp("update", "kube_cluster", "x", "{}"), EXPIRED, NotFound),
        (WriteOp("update", "kube_cluster", "x", "{}", expected_revision=4), LIVE, CompareFailed),
        (WriteOp("delete", "kube_cluster", "x"), None, NotFound),
        (WriteOp("delete", "kube_cluster", "x"), EXPIRED, NotFound),
        (WriteOp("delete", "kube_cluster", "x", expected_revision=6), LIVE, CompareFailed),
    ],
)
def test_plan_write_refusals(op: WriteOp, current: Item | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        plan_write(op, current, now=NOW, revision=10)


def test_plan_expiry_orders_by_expiry_and_numbers_from_the_revision() -> None:
    items = [item("b", expires=NOW - 1), item("a", expires=NOW - 1), item("c", expires=NOW - 5), item("d")]
    items.append(item("e", expires=NOW + 1))
    changes = plan_expiry(items, now=NOW, revision=20)
    assert [(c.item.name, c.revision, c.type) for c in changes] == [
        ("c", 21, "DELETE"),
        ("a", 22, "DELETE"),
        ("b", 23, "DELETE"),
    ]


EDGE_CHARS = ["", "a", "b", "z", "/", "\x7f", "é", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff"]


@pytest.mark.parametrize("prefix", ["a", "a/", "z", "\ud7ff", "\uffff", "a\U0010ffff", "\U0010ffff" * 2, "é"])
def test_prefix_upper_bound_selects_exactly_the_prefixed_names(prefix: str) -> None:
    bound = prefix_upper_bound(prefix)
    names = {prefix + a + b for a, b in itertools.product(EDGE_CHARS, repeat=2)}
    names |= {a + b for a, b in itertools.product(EDGE_CHARS, repeat=2)}
    names |= {prefix[:-1] + c for c in EDGE_CHARS}
    for name in names:
        in_range = prefix <= name and (bound is None or name < bound)
        assert in_range == name.startswith(prefix), (prefix, name, bound)


def test_prefix_upper_bound_skips_surrogates_and_reports_unbounded() -> None:
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("ab\U0010ffff") == "ac"


def test_encoding_is_canonical_and_round_trips() -> None:
    a = encode_value("k", "n", {"b": 1, "a": [1, {"z": None, "y": "é"}]}, 1000)
    b = encode_value("k", "n", {"a": [1, {"y": "é", "z": None}], "b": 1}, 1000)
    assert a == b
    assert a.isascii()
    assert json.loads(a) == {"a": [1, {"y": "é", "z": None}], "b": 1}


def test_encoding_rejects_hostile_values() -> None:
    circular: dict[str, object] = {}
    circular["self"] = circular
    with pytest.raises(BadParameter, match='k "n": value is not JSON-serialisable'):
        encode_value("k", "n", circular, 1000)
    with pytest.raises(BadParameter):
        encode_value("k", "n", {"x": b"bytes"}, 1000)


def test_plan_batch_of_new_records_is_what_plan_write_plans_one_by_one() -> None:
    expired = Item("k", "old", '{"v":0}', 3, 2, 5.0)
    live = Item("k", "live", '{"v":0}', 4, 4, None)
    stored = {("k", "old"): expired, ("k", "live"): live}
    ops = [
        WriteOp("create", "k", "a", '{"v":1}', expires=99.0),
        WriteOp("put", "k", "b", '{"v":2}', '{"x":"y"}'),
        WriteOp("put", "k", "a", '{"v":3}'),  # meets its own first write
        WriteOp("create", "k", "old", '{"v":4}'),  # over an expired record: removed first
        WriteOp("put", "k", "live", '{"v":5}'),
    ]
    batch = plan_batch(ops, lambda kind, name: stored.get((kind, name)), now=10.0, revision=7)
    one_by_one = []
    seen: dict[tuple[str, str], Item | None] = dict(stored)
    revision = 7
    for op in ops:
        planned = plan_write(op, seen.get((op.kind, op.name)), now=10.0, revision=revision)
        one_by_one += planned
        revision = planned[-1].revision
        seen[(op.kind, op.name)] = planned[-1].item
    assert batch == one_by_one
    assert [c.revision for c in batch] == list(range(8, 8 + len(batch)))
    with pytest.raises(AlreadyExists):  # a name created twice in one batch
        plan_batch([ops[0], ops[0]], lambda kind, name: None, now=10.0, revision=7)

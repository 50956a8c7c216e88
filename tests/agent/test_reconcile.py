"""Behaviour of agent.reconcile.plan: what an agent serves after each watcher update."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import yaml

from agent.reconcile import (
    REASON_DELETED,
    REASON_NO_MATCH,
    Action,
    Candidate,
    Register,
    Unregister,
    Update,
    plan,
)
from labels import matches_any, validate_selector_items


def dyn(name: str, content: str = "v1", **labels: str) -> Candidate:
    return Candidate(name=name, origin="dynamic", content=content, labels=labels)


def sta(name: str, content: str = "v1", **labels: str) -> Candidate:
    return Candidate(name=name, origin="static", content=content, labels=labels)


def only_prod(labels: Mapping[str, str]) -> bool:
    return labels.get("env") == "prod"


def everything(labels: Mapping[str, str]) -> bool:
    return True


def nothing(labels: Mapping[str, str]) -> bool:
    return False


def served(*cands: Candidate) -> dict[str, Candidate]:
    return {c.name: c for c in cands}


CASES: list[tuple[str, dict[str, Candidate], list[Candidate], list[Candidate], object, list[Action]]] = [
    ("empty agent, nothing desired", {}, [], [], everything, []),
    (
        "new matching dynamic cluster is registered",
        {},
        [],
        [dyn("a", env="prod")],
        only_prod,
        [Register(dyn("a", env="prod"))],
    ),
    ("new non-matching dynamic cluster is ignored", {}, [], [dyn("a", env="dev")], only_prod, []),
    (
        "static cluster registered even when the matcher rejects everything",
        {},
        [sta("s")],
        [],
        nothing,
        [Register(sta("s"))],
    ),
    (
        "dynamic cluster deleted from the registry is unregistered",
        served(dyn("a", env="prod")),
        [],
        [],
        only_prod,
        [Unregister("a", REASON_DELETED)],
    ),
    (
        "static cluster gone from the config is unregistered",
        served(sta("s")),
        [],
        [],
        everything,
        [Unregister("s", REASON_DELETED)],
    ),
    (
        "label change to non-matching unregisters",
        served(dyn("a", env="prod")),
        [],
        [dyn("a", env="dev")],
        only_prod,
        [Unregister("a", REASON_NO_MATCH)],
    ),
    (
        "label change that still matches updates",
        served(dyn("a", env="prod")),
        [],
        [dyn("a", env="prod", team="x")],
        only_prod,
        [Update(dyn("a", env="prod"), dyn("a", env="prod", team="x"))],
    ),
    (
        "content change (new kubeconfig) updates",
        served(dyn("a", "v1", env="prod")),
        [],
        [dyn("a", "v2", env="prod")],
        only_prod,
        [Update(dyn("a", "v1", env="prod"), dyn("a", "v2", env="prod"))],
    ),
    (
        "content change of a no-longer-matching cluster unregisters",
        served(dyn("a", "v1", env="prod")),
        [],
        [dyn("a", "v2", env="dev")],
        only_prod,
        [Unregister("a", REASON_NO_MATCH)],
    ),
    (
        "static content change updates without consulting the matcher",
        served(sta("s", "v1")),
        [sta("s", "v2")],
        [],
        nothing,
        [Update(sta("s", "v1"), sta("s", "v2"))],
    ),
    ("unchanged dynamic cluster: no-op", served(dyn("a", env="prod")), [], [dyn("a", env="prod")], only_prod, []),
    ("unchanged static cluster: no-op even if matcher rejects", served(sta("s")), [sta("s")], [], nothing, []),
    (
        "served cluster that now fails the matcher but is unchanged stays",
        served(dyn("a", env="dev")),
        [],
        [dyn("a", env="dev")],
        only_prod,
        [],
    ),
    (
        "static shadows a same-named dynamic resource at start-up",
        {},
        [sta("k", "static")],
        [dyn("k", "dynamic", env="prod")],
        everything,
        [Register(sta("k", "static"))],
    ),
    (
        "static shadows dynamic while both are desired and static is served",
        served(sta("k", "static")),
        [sta("k", "static")],
        [dyn("k", "dynamic", env="prod")],
        everything,
        [],
    ),
    (
        "static replaces a served dynamic cluster of the same name",
        served(dyn("k", "dynamic", env="prod")),
        [sta("k", "static")],
        [dyn("k", "dynamic", env="prod")],
        everything,
        [Update(dyn("k", "dynamic", env="prod"), sta("k", "static"))],
    ),
    (
        "a dynamic resource never evicts a served static cluster",
        served(sta("k", "static")),
        [],
        [dyn("k", "dynamic", env="prod")],
        everything,
        [],
    ),
    (
        "payload is carried but never compared",
        served(Candidate("a", "dynamic", "v1", {}, payload=1)),
        [],
        [Candidate("a", "dynamic", "v1", {}, payload=2)],
        everything,
        [],
    ),
]


@pytest.mark.parametrize(
    ("current", "static", "dynamic", "matcher", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_plan_rules(
    current: dict[str, Candidate],
    static: list[Candidate],
    dynamic: list[Candidate],
    matcher: object,
    expected: list[Action],
) -> None:
    assert plan(current, static, dynamic, matcher) == expected  # type: ignore[arg-type]


def test_plan_orders_unregisters_then_updates_then_registers_each_by_name() -> None:
    current = served(dyn("z-gone"), dyn("a-gone"), dyn("m-upd", "v1"), dyn("b-upd", "v1"), dyn("same"))
    dynamic = [dyn("y-new"), dyn("m-upd", "v2"), dyn("c-new"), dyn("b-upd", "v2"), dyn("same")]
    actions = plan(current, [], dynamic, everything)
    assert actions == [
        Unregister("a-gone", REASON_DELETED),
        Unregister("z-gone", REASON_DELETED),
        Update(dyn("b-upd", "v1"), dyn("b-upd", "v2")),
        Update(dyn("m-upd", "v1"), dyn("m-upd", "v2")),
        Register(dyn("c-new")),
        Register(dyn("y-new")),
    ]


def test_plan_is_independent_of_input_order() -> None:
    current = served(dyn("a"), dyn("b", "v1"), dyn("c"))
    dynamic = [dyn("b", "v2"), dyn("d"), dyn("e"), dyn("f")]
    first = plan(current, [], dynamic, everything)
    second = plan(dict(reversed(current.items())), [], list(reversed(dynamic)), everything)
    assert first == second


def test_plan_carries_the_payload_of_the_new_candidate() -> None:
    marker = object()
    new = Candidate("a", "dynamic", "v2", {}, payload=marker)
    (action,) = plan(served(dyn("a", "v1")), [], [new], everything)
    assert isinstance(action, Update)
    assert action.new.payload is marker


def test_plan_does_not_call_the_matcher_for_static_clusters() -> None:
    def exploding(labels: Mapping[str, str]) -> bool:
        raise AssertionError("static clusters must not be matched")

    assert plan(served(sta("s", "v1")), [sta("s", "v2"), sta("t")], [], exploding) == [
        Update(sta("s", "v1"), sta("s", "v2")),
        Register(sta("t")),
    ]


def test_plan_does_not_mutate_its_inputs() -> None:
    current = served(dyn("a"), dyn("b"))
    snapshot = dict(current)
    plan(current, [sta("a")], [dyn("c")], everything)
    assert current == snapshot


def test_plan_with_many_clusters_applies_to_the_desired_set() -> None:
    current = {f"c{i}": dyn(f"c{i}", env="prod") for i in range(0, 3000)}
    dynamic = [dyn(f"c{i}", env="prod" if i % 2 else "dev") for i in range(1500, 4500)]
    actions = plan(current, [], dynamic, only_prod)
    state = dict(current)
    for action in actions:
        if isinstance(action, Unregister):
            del state[action.name]
        elif isinstance(action, Update):
            state[action.new.name] = action.new
        else:
            assert action.candidate.name not in state
            state[action.candidate.name] = action.candidate
    # Old names below 1500 are deleted, "dev" ones stop matching, new "prod" ones arrive.
    assert set(state) == {f"c{i}" for i in range(1500, 4500) if i % 2 == 1}


SEED_003_RESOURCES = yaml.safe_load(
    """\
resources:
- labels:
    "env": "prod"
    "region": "us-east-2"
- labels:
    "env": "test"
    "region": "us-west-1"
"""
)["resources"]


def seed_matcher(labels: Mapping[str, str]) -> bool:
    return matches_any(validate_selector_items(SEED_003_RESOURCES), labels)


@pytest.mark.parametrize(
    ("labels", "served_after"),
    [
        ({"env": "prod", "region": "us-east-2"}, True),
        ({"env": "test", "region": "us-west-1"}, True),
        # The documented counter-example: one label from each item is not a match.
        ({"env": "prod", "region": "us-west-1"}, False),
        ({"env": "prod"}, False),
        ({}, False),
    ],
)
def test_seed_003_two_item_example_through_matches_any(labels: dict[str, str], served_after: bool) -> None:
    cluster = dyn("mycluster", **labels)
    actions = plan({}, [], [cluster], seed_matcher)
    assert actions == ([Register(cluster)] if served_after else [])


def test_seed_003_label_edit_moves_a_cluster_out_and_back_in() -> None:
    """The guide's update step: editing labels so they no longer match unregisters; matching again registers."""
    matching = dyn("mycluster", "kc", env="test", region="us-west-1")
    edited = dyn("mycluster", "kc", env="prod", region="us-west-1")
    assert plan({}, [], [matching], seed_matcher) == [Register(matching)]
    assert plan(served(matching), [], [edited], seed_matcher) == [Unregister("mycluster", REASON_NO_MATCH)]
    assert plan({}, [], [edited], seed_matcher) == []
    assert plan({}, [], [matching], seed_matcher) == [Register(matching)]
    assert plan(served(matching), [], [], seed_matcher) == [Unregister("mycluster", REASON_DELETED)]

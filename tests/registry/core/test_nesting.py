"""kubeport's own YAML depth limit: it runs on the text before any parser, says the same thing whatever
PyYAML/libyaml version is installed, and never refuses a document that is not really too deep."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
import yaml

from registry.core import validation
from registry.core.errors import BadParameter
from registry.core.nesting import depth_bound, nesting_error
from registry.core.validation import MAX_NESTING, load_yaml

LIMIT = MAX_NESTING


def refusal(text: str) -> str:
    with pytest.raises(BadParameter) as caught:
        load_yaml(text, source="in.yaml")
    return caught.value.message


def _real_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_real_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_real_depth(v) for v in value), default=0)
    return 0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a: " + "[" * 500_000, "line 1, column 35"),
        ("a: " + "{a: " * 100_000 + "}" * 100_000, "line 1, column "),
        ("".join(" " * i + "a:\n" for i in range(100)), f"line {LIMIT + 1}, column {LIMIT + 2}"),
        ("- " * 1000 + "x\n", "line 1, column "),
        ("a:\n  b: [\n" + "[\n" * 200, "line "),
        ("--- " + "[" * 2000, "line 1, column "),
    ],
    ids=["flow-seqs", "flow-maps", "block-maps", "compact-seqs", "flow-over-lines", "after-doc-start"],
)
def test_deep_documents_are_refused_in_kubeports_words(text: str, where: str) -> None:
    message = refusal(text)
    assert message.startswith(f"in.yaml is not valid YAML: {where}")
    assert message.endswith(f"nested more than {LIMIT} levels deep")


def test_the_parser_never_sees_a_too_deep_document(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever a PyYAML release does with deep input (crash, its own limit, its own words), it is not asked.
    def parser_called(*args: object, **kwargs: object) -> None:
        raise AssertionError("the YAML parser was handed a document kubeport's own limit refuses")

    monkeypatch.setattr(validation.yaml, "parse", parser_called)
    monkeypatch.setattr(validation.yaml, "load_all", parser_called)
    assert "nested more than" in refusal("a: " + "[" * 2000)
    assert "nested more than" in refusal("".join(" " * i + "k:\n" for i in range(40)))


def test_exactly_the_limit_is_accepted() -> None:
    flow = "a: " + "[" * (LIMIT - 1) + "]" * (LIMIT - 1) + "\n"
    assert _real_depth(load_yaml(flow, source="x")[0]) == LIMIT
    block = "".join(" " * i + "k:\n" for i in range(LIMIT - 1)) + " " * (LIMIT - 1) + "k: v\n"
    assert _real_depth(load_yaml(block, source="x")[0]) == LIMIT
    assert "nested more than" in refusal("a: " + "[" * LIMIT + "]" * LIMIT + "\n")


@pytest.mark.parametrize(
    "text",
    [
        "name: ^foo" + "[" * 100 + "\n",  # brackets inside a plain scalar are text
        'name: "' + "[" * 100 + '"\n',
        "name: '" + "{" * 100 + "''" + "[" * 10 + "'\n",
        'name: "\\"' + "[" * 100 + '"\n',
        "# " + "[" * 100 + "\nname: x\n",
        "name: x # " + "{" * 100 + "\n",
        "script: |\n  "
        + "[" * 100
        + "\n  "
        + "{" * 40
        + "\n"
        + "".join(" " * i + "x\n" for i in range(2, 80))
        + "z: 1\n",
        "folded: >-\n" + "".join("  " + "[" * 40 + "\n" for _ in range(5)) + "b: [a, [b]]\n",
        'quoted: "line one\n  ' + "[" * 100 + ' line two"\nnext: [x]\n',
        "key" + "[" * 50 + ": value\n",
        "a: b\r\n" + "c: [d]\r\n",
    ],
    ids=[
        "plain",
        "double-quoted",
        "single-quoted",
        "escaped-quote",
        "comment-line",
        "trailing-comment",
        "literal-block",
        "folded-block",
        "multi-line-quoted",
        "plain-key",
        "crlf",
    ],
)
def test_brackets_that_are_text_do_not_count(text: str) -> None:
    assert nesting_error(text, LIMIT) is None
    load_yaml(text, source="x")  # and the document really is fine


_LEAVES = ["x", "[not a list]", "{no}", 'q"uote', "a: b", "- c", "#", "|", "- [x", 7, None]


def _random_value(rng: random.Random, depth: int) -> Any:
    """A value ``depth`` levels deep along one spine, with leaves and shallow siblings beside it."""
    if depth == 0:
        return rng.choice(_LEAVES)
    children = [rng.choice([*_LEAVES, [], {}, ["y"], {"k": "v"}]) for _ in range(rng.randint(0, 2))]
    children.insert(rng.randint(0, len(children)), _random_value(rng, depth - 1))
    if rng.random() < 0.5:
        return children
    return {f"k{i}[": child for i, child in enumerate(children)}


@pytest.mark.parametrize("flow_style", [False, True, None])
def test_never_refuses_what_is_within_the_limit(flow_style: bool | None) -> None:
    # The scan may under-count (the event pass then counts exactly) but must never over-count.
    rng = random.Random(7)
    for _ in range(300):
        value = {"root": _random_value(rng, rng.randint(1, 45))}
        text = yaml.safe_dump(value, default_flow_style=flow_style, width=rng.choice([20, 80, 10_000]))
        depth = _real_depth(value)
        scanned = nesting_error(text, LIMIT)
        if depth <= LIMIT:
            assert scanned is None, (depth, text[:300])
            assert load_yaml(text, source="x")[0] == value
        else:
            assert "nested more than" in refusal(text)


def test_scan_is_linear_on_a_megabyte() -> None:
    inputs = ["[" * LIMIT + "x, " * 350_000, "a: '" + "x" * 1_000_000, " " * 1_000_000 + "a", "a:\n" * 350_000]
    started = time.perf_counter()
    for text in inputs:
        nesting_error(text, LIMIT)
    assert time.perf_counter() - started < 5.0


def test_unknown_tags_are_refused_in_kubeports_words() -> None:
    assert 'python/object:os.system" is not allowed' in refusal("!!python/object:os.system {}\n")
    assert 'the YAML tag "!custom" is not allowed' in refusal("a: !custom 1\n")


# --- the character-count bound that lets most documents skip the scan ---------------------------------------


def _event_depth(text: str) -> int:
    """The exact nesting depth, from the parser's events (what the event pass counts)."""
    depth = deepest = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            deepest = max(deepest, depth)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return deepest


@pytest.mark.parametrize(
    "text",
    [
        "a: 1",
        "- - - - - x",  # compact sequences: many levels on one line
        "- a:\n  - b: c",
        "? - - a\n: - - b: c",  # explicit key and value, each compact
        "? a\n: b: c",  # a compact mapping after an explicit key's ':'
        "a: [[[{b: [c]}]]]",
        "a:\r b:\r  c:\r   d: e",  # CR line breaks
        "a:\x85 b:\x85  c: d",  # NEL
        "a:\u2028 b:\u2028  c: d",  # LS
        "".join(" " * i + "k:\n" for i in range(20)) + " " * 20 + "v",
        "- " * 15 + "x",
        "--- \n- a\n--- \n- - b",  # several documents
    ],
)
def test_the_depth_bound_never_underestimates(text: str) -> None:
    assert depth_bound(text) >= _event_depth(text)


def test_a_kubeconfig_sized_document_skips_the_character_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    from registry.core import nesting

    def no_scan(*_args: object) -> None:
        raise AssertionError("the character scan ran for a document the bound clears")

    monkeypatch.setattr(nesting, "_Scanner", no_scan)
    kubeconfig = (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://k:6443\n"
        "    certificate-authority-data: " + "QUJD" * 400 + "\nusers:\n- name: u\n  user:\n    token: t\n"
        "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n"
    )
    assert nesting_error(kubeconfig, LIMIT) is None
    assert load_yaml(kubeconfig, source="k")[0]["kind"] == "Config"


def test_documents_past_the_bound_still_get_the_exact_scan_and_its_refusal() -> None:
    deep = "".join(" " * i + "a:\n" for i in range(LIMIT + 5))
    assert "nested more than" in refusal(deep)
    shallow_but_long = "a:\n" + "- x\n" * 200  # over the bound, well within the limit: accepted
    assert load_yaml(shallow_but_long, source="in.yaml")[0]["a"] == ["x"] * 200


def test_a_plain_shallow_document_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_event_pass(_text: str) -> None:
        raise AssertionError("the event pass ran for a document without & or * within the depth bound")

    monkeypatch.setattr(validation, "_precheck_events", no_event_pass)
    assert load_yaml("a:\n  b: [1, 2]\n", source="in.yaml") == [{"a": {"b": [1, 2]}}]


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("a: &x 1\nb: *x\n", "anchors"),  # anchors and aliases still meet the event pass
        ("a: *x\n", "aliases"),
        ("a: 'five * six & seven'\n", None),  # the characters in a scalar: checked, and accepted
    ],
)
def test_documents_with_anchor_or_alias_characters_still_get_the_event_pass(text: str, refused: str | None) -> None:
    if refused is None:
        assert load_yaml(text, source="in.yaml") == [{"a": "five * six & seven"}]
    else:
        assert refused in refusal(text)

"""The event-built fast path of load_yaml (registry.core.yaml_events) gives exactly the strict loader's answer.

Differential: for every input, either the fast path declines (None) or its documents equal what the strict
loader builds, value for value and type for type; whatever the strict loader refuses, the fast path declines,
so load_yaml's refusals (and their wording) are the strict loader's. Hand-picked YAML corner cases, hostile
inputs, random documents in every dump style and random mutations of a kubeconfig.
"""

from __future__ import annotations

import base64
import math
import random
from typing import Any

import pytest
import yaml

from registry.core import validation, yaml_events
from registry.core.errors import BadParameter
from registry.core.kubeconfig import check_kubeconfig
from registry.core.validation import MAX_NESTING, load_yaml
from registry.core.yaml_events import load_plain

pytestmark = pytest.mark.skipif(yaml_events._CParser is None, reason="PyYAML without libyaml: no fast path")


def fast(text: str) -> list[Any] | None:
    return load_plain(text, loader=validation._StrictLoader, max_depth=MAX_NESTING)


def strict(text: str) -> list[Any] | BaseException:
    """What load_yaml built before the fast path: the event pre-pass, then the strict loader."""
    try:
        validation._precheck_events(text)
        return list(yaml.load_all(text, Loader=validation._StrictLoader))
    except Exception as exc:
        return exc


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types (True is not 1 here, 1.0 is not 1, NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k, kb) and same(a[k], b[kb]) for k, kb in zip(a, b, strict=True))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def check(text: str) -> bool:
    """Assert the fast path agrees with the strict one; True when it took the input itself."""
    got = fast(text)
    want = strict(text)
    if got is None:
        return False
    assert not isinstance(want, BaseException), f"fast path accepted what the strict loader refuses: {want!r}"
    assert same(got, want), (got, want)
    return True


TAKEN = [
    "",
    "a: 1",
    "a: 0x1F\nb: 0o17\nc: 1_000\nd: 1:30\ne: -0b101\nf: 012\ng: 08\nh: +12\n",
    "x: .inf\ny: -.Inf\nz: .nan\nw: 1.5e3\nv: 6.8523015e+5\nu: 190:20:30.15\nt: 0.\ns: .5\nr: ._\n",
    "y: yes\nn: No\no: on\nf: OFF\nt: True\nq: 'true'\n",
    "n: ~\nm: null\ne:\nq: ''\nr: 'null'\n",
    "---\na: 1\n---\n---\nb: 2\n",
    "'quoted': \"x\\ty\"\nblock: |\n  line1\n  line2\nfolded: >-\n  a\n  b\n",
    "{a: [1, 2, {b: c}], 'd': null, e: []}",
    "- - - [x]\n- {}\n",
    "2: int key\n2.5: float key\nnull: null key\ntrue: bool key\n",
    "key: 'it''s'\nunicode: \"\\u00e9\\U0001F600\"\nplain: é😀\n",
    "%YAML 1.1\n---\na: b\n",
    "a: b # a comment\n# another\n",
]

DECLINED = [
    "t: 2001-12-14",  # a timestamp: left to the loader
    "t: 2001-12-14T21:59:43.10-05:00",
    "<<: {a: 1}",  # merge key
    "a: {<<: {b: 1}}",
    "a: 1\na: 2",  # duplicate keys
    "1: a\n1.0: b",
    "True: 1\n1: 2",
    "a: &x 1",  # anchors and aliases
    "a: &x 1\nb: *x",
    "a: &x [1]",
    "a: !!str 1",  # tags of every kind
    "a: !!python/object:os.system x",
    "!!map {a: 1}",
    "a: !custom x",
    "a: ! x",
    "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
    "? [a]\n: 1",  # complex keys
    "? {a: 1}\n: 1",
    "a: =",  # the "value" tag
    "[a, b",  # syntax errors
    "a: b: c",
    "\t",
    "k: -",
    "a: 'unterminated",
    "\x00",
    "a: [" * (MAX_NESTING + 1),
]


@pytest.mark.parametrize("text", TAKEN)
def test_plain_documents_are_built_as_the_loader_builds_them(text: str) -> None:
    assert check(text), "the fast path should take this document"


@pytest.mark.parametrize("text", DECLINED)
def test_what_the_fast_path_does_not_know_goes_to_the_loader(text: str) -> None:
    assert fast(text) is None
    # ... and load_yaml's answer is the strict loader's: the same documents, or a refusal.
    want = strict(text)
    if isinstance(want, BaseException):
        with pytest.raises(BadParameter):
            load_yaml(text, source="in.yaml")
    else:
        assert same(load_yaml(text, source="in.yaml"), want)


def test_nesting_at_the_limit_is_taken_and_one_more_level_is_declined() -> None:
    assert check("[" * MAX_NESTING + "]" * MAX_NESTING)
    assert fast("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)) is None


def test_hostile_documents_are_still_refused_in_the_loaders_words() -> None:
    for text, words in [
        ("a: &a [1]\nb: *a\n", "YAML anchors (&a) are not allowed"),
        ("a: 1\na: 2\n", 'duplicate key "a"'),
        ("<<: {a: 1}\n", "merge keys"),
        ("a: !!python/object/apply:os.system [x]\n", "is not allowed"),
        ("a: " + "[" * 100 + "]" * 100, "nested more than"),
    ]:
        with pytest.raises(BadParameter) as caught:
            load_yaml(text, source="in.yaml")
        assert words in caught.value.message
        assert "in.yaml is not valid YAML" in caught.value.message


def test_a_billion_laughs_costs_one_declined_event_pass() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    assert fast(bomb) is None
    with pytest.raises(BadParameter, match="anchors"):
        load_yaml(bomb, source="in.yaml")


def test_the_fast_path_is_off_without_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml_events, "_CParser", None)
    assert fast("a: 1") is None
    assert load_yaml("a: 1", source="in.yaml") == [{"a": 1}]


def _random_scalar(rng: random.Random) -> Any:
    pick = rng.randrange(8)
    if pick == 0:
        return rng.randint(-(10**20), 10**20)
    if pick == 1:
        return rng.choice([0.0, -1.5, 1e300, float("inf"), float("-inf"), rng.random()])
    if pick == 2:
        return rng.choice([True, False, None])
    # Strings that look like other types, or hold YAML's indicator characters.
    pool = ["yes", "No", "~", "null", "0x1F", "012", "1:30", "1_0", ".inf", "<<", "=", "2001-12-14", "&a", "*a"]
    pool += ["!tag", "a: b", "- x", "# c", "'q'", '"q"', "{", "[", "|", ">", "%", "@", "`", "", " ", "é", "\t", "\n"]
    if pick < 6:
        return rng.choice(pool)
    return "".join(rng.choice(pool + list("abc:-?,#&*!|>'\"%@` \n")) for _ in range(rng.randrange(1, 6)))


def _random_value(rng: random.Random, depth: int) -> Any:
    if depth > 4 or rng.random() < 0.4:
        return _random_scalar(rng)
    if rng.random() < 0.5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = {_random_scalar(rng) for _ in range(rng.randrange(4))}
    return {k: _random_value(rng, depth + 1) for k in keys if k is not None or rng.random() < 0.5}


def test_random_documents_in_every_dump_style_agree() -> None:
    rng = random.Random(11)
    taken = 0
    for _ in range(600):
        value = _random_value(rng, 0)
        text = yaml.safe_dump(
            value,
            default_flow_style=rng.choice([False, True, None]),
            default_style=rng.choice([None, None, '"', "'"]),
            allow_unicode=rng.random() < 0.5,
            width=rng.choice([20, 80, 10_000]),
        )
        taken += check(text)
    assert taken > 300  # most random documents are plain ones


KUBECONFIG = yaml.safe_dump(
    {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n").decode(),
                    "insecure-skip-tls-verify": False,
                },
            }
        ],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
        "current-context": "x",
        "preferences": {},
    }
)


def test_random_mutations_of_a_kubeconfig_agree() -> None:
    rng = random.Random(5)
    alphabet = list(":-?,[]{}#&*!|>'\"%@` \n\t<=~.0123456789abcxyz")
    for _ in range(1500):
        chars = list(KUBECONFIG)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(chars) + 1)
            action = rng.randrange(3)
            if action == 0:
                chars.insert(at, rng.choice(alphabet))
            elif action == 1 and at < len(chars):
                del chars[at]
            elif at < len(chars):
                chars[at] = rng.choice(alphabet)
        check("".join(chars))


def test_a_kubeconfig_checks_the_same_through_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check(KUBECONFIG)
    data = KUBECONFIG.replace("t0ken", "a-token").encode()
    with pytest.raises(BadParameter) as fast_error:
        check_kubeconfig(data, cluster_name="c")  # the CA data is not a certificate
    monkeypatch.setattr(yaml_events, "_CParser", None)
    with pytest.raises(BadParameter) as slow_error:
        check_kubeconfig(data, cluster_name="c")
    assert fast_error.value.message == slow_error.value.message


def test_text_that_is_not_utf8_encodable_is_declined_and_refused_as_before() -> None:
    # A str from a JSON body can hold a lone surrogate ("\ud800" escaped): libyaml's parser cannot take it.
    # The fast path declines and load_yaml gives the strict loader's BadParameter, never an exception of its own.
    for text in ["a: \ud800\n", "\udfff", "k: [x, '\ud83d']\n"]:
        assert fast(text) is None
        assert isinstance(strict(text), ValueError)
        with pytest.raises(BadParameter, match=r"in\.yaml"):
            load_yaml(text, source="in.yaml")


_SOUP = [
    *[
        "1",
        "0x1",
        "0o7",
        "017",
        "0b1",
        "1_0",
        "+1",
        "-0",
        "1:30",
        "190:20:30",
        "1.5",
        "1e3",
        ".5",
        ".nan",
        ".NaN",
        ".inf",
        "-.inf",
        "true",
        "True",
        "TRUE",
        "yes",
        "Yes",
        "no",
    ],
    *[
        "on",
        "off",
        "y",
        "n",
        "~",
        "null",
        "Null",
        "NULL",
        "2001-12-14",
        "<<",
        "=",
        "'a'",
        '"a"',
        "'1'",
        '"1"',
        "!!str",
        "!!int",
        "!x",
        "&a",
        "*a",
        "-",
        "?",
        "0x_",
        "0b",
        "1__",
    ],
    *[
        "._",
        "1.",
        "-.",
        "0.",
        "+",
        "1e",
        "0o",
        "0xG",
        "12:60",
        "1:1:1:1",
        "@",
        "`",
        "%",
        "[]",
        "{}",
        "[1,2]",
        "{a:1}",
        "#c",
        "---",
        "...",
    ],
    *["{1: a, 0x1: b}", "{true: 1, True: 2}", "{~: 1, null: 2}", "{1: a, 1.0: b}", "{0: a, false: b}"],
    *["{.nan: 1, .nan: 2}", "{'a': 1, a: 2}", "{? a: 1}", "{? [a]: 1}", "|\n  x\n", ">-\n  y\n", "a b", "a:b"],
    *["", "\ufeff", "\x00", "\x85", "\u2028", "\t", '"\\x41"', "%YAML 1.1", "9" * 30, "0x" + "f" * 30],
]


def _soup_node(rng: random.Random, depth: int) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.6:
        return rng.choice(_SOUP)
    if roll < 0.8:
        return "[" + ", ".join(_soup_node(rng, depth + 1) for _ in range(rng.randint(0, 3))) + "]"
    pairs = (f"{rng.choice(_SOUP)}: {_soup_node(rng, depth + 1)}" for _ in range(rng.randint(0, 3)))
    return "{" + ", ".join(pairs) + "}"


def _soup_block(rng: random.Random, indent: int, depth: int) -> str:
    mapping = rng.random() < 0.5
    lines = []
    for _ in range(rng.randint(1, 4)):
        lead = " " * indent + (f"{rng.choice(_SOUP)}:" if mapping else "-")
        if depth < 3 and rng.random() < 0.3:
            lines.append(lead + "\n" + _soup_block(rng, indent + 2, depth + 1))
        else:
            lines.append(f"{lead} {_soup_node(rng, depth) or 'x'}\n")
    return "".join(lines)


def test_random_token_soup_agrees() -> None:
    """Documents built from YAML's corner-case scalars (every resolver's edge, keys equal only once resolved,
    tags, anchors, merge keys, control characters), in block and flow style, then mutated: whatever the fast
    path takes, the strict loader builds the same; it takes a fair share."""
    rng = random.Random(1203)
    taken = 0
    for _ in range(600):
        text = _soup_block(rng, 0, 0)
        if rng.random() < 0.2:
            text += rng.choice(["---\n", "...\n---\n"]) + _soup_block(rng, 0, 0)
        for _ in range(rng.choice([0, 0, 1, 2])):
            at, piece = rng.randint(0, len(text)), rng.choice([*_SOUP, " ", "\n", ":", "- ", "  "])
            text = text[:at] + piece + text[at + rng.choice([0, 1]) :]
        taken += check(text)
    assert taken > 50


def test_an_overlong_int_is_refused_on_both_paths_before_it_is_converted() -> None:
    # A YAML 1.1 sexagesimal int costs a bigint multiply per ":" part (quadratic: a 1 MiB one was over a
    # minute of CPU); a hex one of any length became an int that str() refuses. Both are refused by length.
    for text in ["a: 1" + ":1" * 40_000 + "\n", "a: 0x" + "f" * 5000, "- 0" + "7" * 5000, "a: " + "1_" * 2200 + "1"]:
        assert fast(text) is None
        with pytest.raises(BadParameter, match="an integer of more than 4300 characters"):
            load_yaml(text, source="in.yaml")
    # ints up to the bound are still built (by the fast path too)
    assert check("a: " + "9" * 4300 + "\nb: 1:30\nc: 0x" + "f" * 4298 + "\n")

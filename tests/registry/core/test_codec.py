"""parse_documents and decode_resources on well-formed, malformed and hostile input."""

from __future__ import annotations

import json
import time

import pytest

from registry.core import codec
from registry.core.errors import BadParameter, TooLarge
from registry.core.resources import KubeCluster, Role

ROLE = "kind: role\nversion: v7\nmetadata:\n  name: r{n}\nspec:\n  allow: {{}}\n"


def test_yaml_multi_document_in_order_skipping_empty_documents() -> None:
    text = "---\n" + ROLE.format(n=1) + "---\n---\n" + ROLE.format(n=2) + "...\n"
    docs = codec.parse_documents(text, source="roles.yaml")
    assert [d["metadata"]["name"] for d in docs] == ["r1", "r2"]


@pytest.mark.parametrize(
    "text",
    [
        '{"kind": "role", "version": "v7", "metadata": {"name": "r1"}}',
        '[{"kind": "role", "version": "v7", "metadata": {"name": "r1"}}]',
        '  \n[{"kind": "role", "metadata": {"name": "r1"}}, {"kind": "role", "metadata": {"name": "r2"}}]',
        "{kind: role, metadata: {name: r1}}",  # YAML flow style also starts with a brace
    ],
)
def test_json_object_list_and_yaml_flow(text: str) -> None:
    docs = codec.parse_documents(text.encode(), source="in.json")
    assert docs[0]["metadata"]["name"] == "r1"
    assert all(isinstance(d, dict) for d in docs)


def test_utf8_bom_is_accepted() -> None:
    (doc,) = codec.parse_documents("\ufeff".encode() + ROLE.format(n=1).encode(), source="bom.yaml")
    assert doc["kind"] == "role"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "in.yaml: no resources found (the input is empty)"),
        (b"---\n---\n# only comments\n", "no resources found"),
        (b"[]", "no resources found"),
        (b"- a\n- b\n", "expected a mapping with kind, version, metadata and spec (got a list of 2 items)"),
        (b"just a string\n", 'got "just a string"'),
        (b"kind: role\n---\n5\n", "in.yaml document 2: expected a mapping"),
        (b'[{"kind": "role"}, 3]', "in.yaml document 2: expected a mapping"),
        (b"kind: role\nmetadata:\n  name: [unclosed\n", "in.yaml is not valid YAML: line 4, column 1"),
        (b"kind: role\n  bad: indent\n", "in.yaml is not valid YAML: line 2, column 6: "),
        (b"kind: role\tx: 1\n", "is not valid YAML"),
        (b'{"kind": "role" "v": 1}', "in.yaml is not valid JSON: line 1, column 17"),
        (b'{"kind": "role", "kind": "user"}', 'duplicate key "kind"'),
        (b"kind: role\nkind: user\n", 'line 2, column 1: duplicate key "kind"'),
        (b"base: {a: 1}\nother:\n  <<: {a: 2}\n", "merge keys (<<) are not allowed"),
        (b"a: !!python/object:os.system x\n", "is not valid YAML"),
        (b"kind: \xff\xfe role\n", "in.yaml is not UTF-8 text: invalid byte 0xff at offset 6 (line 1)"),
    ],
)
def test_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(BadParameter) as info:
        codec.parse_documents(data, source="in.yaml")
    assert message in info.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x 1\nb: *x\n", "YAML anchors (&x) are not allowed"),
        ("a: *x\n", "is not valid YAML"),  # an alias to nothing: libyaml refuses it first
        # billion laughs: each level refers to the previous one ten times
        (
            'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
            + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)),
            "YAML anchors (&a) are not allowed",
        ),
    ],
)
def test_anchors_and_aliases_are_refused_before_expansion(text: str, message: str) -> None:
    started = time.perf_counter()
    with pytest.raises(BadParameter) as info:
        codec.parse_documents(text, source="bomb.yaml")
    assert message in info.value.message
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # libyaml's composer would recurse in C and crash the interpreter
        "a: " + "{b: " * 50_000,
        "".join(" " * i + "- \n" for i in range(1_000)),
        "[" * 40 + "]" * 40,
        "[" * 100_000 + "]" * 100_000,  # looks like JSON: the JSON parser recurses too
        '{"a":' * 40 + "1" + "}" * 40,
    ],
    ids=["flow-100k", "flow-mappings", "block-1000", "flow-40", "json-100k", "json-40"],
)
def test_deep_nesting_is_refused_quickly(text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(BadParameter, match="nested"):
        codec.parse_documents(text, source="deep.yaml")
    assert time.perf_counter() - started < 1.0


def test_size_is_checked_before_parsing() -> None:
    huge = b"kind: kube_cluster\n" + b"#" * (10 * 1024 * 1024 - 19)
    assert len(huge) == 10485760
    with pytest.raises(TooLarge) as info:
        codec.decode_resources(huge, source="kube_cluster.yaml")
    assert info.value.message == "kube_cluster.yaml is 10485760 bytes; the limit is 1048576"


def test_size_limit_applies_to_str_input_too() -> None:
    with pytest.raises(TooLarge, match="the limit is 1048576"):
        codec.parse_documents("a" * (codec.MAX_DOCUMENT_BYTES + 1), source="x")
    # multi-byte characters count as bytes, not characters
    with pytest.raises(TooLarge, match="is 1572864 bytes"):
        codec.parse_documents("é" * (786432), source="x")


def test_exactly_the_limit_is_accepted() -> None:
    text = ROLE.format(n=1).encode()
    padded = text + b"#" * (codec.MAX_DOCUMENT_BYTES - len(text))
    assert len(codec.parse_documents(padded, source="x")) == 1


def test_decode_resources_validates_every_document_before_returning() -> None:
    bad = ROLE.format(n=1) + "---\n" + "kind: kube_cluster\nversion: v3\nmetadata:\n  name: a/b\n"
    with pytest.raises(BadParameter) as info:
        codec.decode_resources(bad, source="all.yaml")
    assert info.value.message == (
        'all.yaml document 2: kube_cluster "a/b": metadata.name must match ^[a-zA-Z0-9._-]+$ (got "a/b")'
    )


def test_single_document_errors_name_the_source_only() -> None:
    with pytest.raises(BadParameter) as info:
        codec.decode_resources("kind: kube_cluster\nversion: v2\nmetadata: {name: x}\n", source="one.yaml")
    assert info.value.message == 'one.yaml: kube_cluster "x": unsupported version "v2" (only v3)'


def test_duplicate_resources_in_one_file_are_refused() -> None:
    text = ROLE.format(n=1) + "---\n" + ROLE.format(n=1)
    with pytest.raises(BadParameter, match=r'dup.yaml document 2: role "r1" is already defined by document 1'):
        codec.decode_resources(text, source="dup.yaml")


def test_decode_resources_mixed_kinds_from_json() -> None:
    docs = [
        {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": {}},
        {"kind": "kube_cluster", "version": "v3", "metadata": {"name": "c"}, "spec": {}},
    ]
    resources = codec.decode_resources(json.dumps(docs), source="x.json")
    assert [type(r) for r in resources] == [Role, KubeCluster]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": "v3", "metadata": {"name": "x"}}, "missing kind; supported kinds: kube_cluster, kube_server"),
        ({"kind": "database", "metadata": {"name": "x"}}, 'unknown kind "database"; supported kinds:'),
        ({"kind": "kube_clusters", "metadata": {"name": "x"}}, "(did you mean kube_cluster?)"),
        ({"kind": 5}, "unknown kind int 5"),
        ([], "expected a mapping"),
    ],
)
def test_kind_dispatch_errors(doc: object, message: str) -> None:
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict(doc)  # type: ignore[arg-type]
    assert message in info.value.message


def test_resource_from_dict_prefixes_source() -> None:
    with pytest.raises(BadParameter) as info:
        codec.resource_from_dict({"kind": "nope"}, source="request body")
    assert info.value.message.startswith('request body: unknown kind "nope"')

"""The one seam where a labels-library ``LabelError`` becomes a kubeport ``BadParameter`` (pure).

Each row is one kind of call site: the message the library raised, where the value sits, and the message
kubeport shows, word for word as the sites phrased it before the seam existed."""

from __future__ import annotations

from typing import NoReturn

import pytest

from labels import LabelError, parse_go_duration, validate_labels
from registry.core.errors import BadParameter, NotFound
from registry.core.validation import Fields, label_errors, label_message


@pytest.mark.parametrize(
    ("message", "path", "value", "expected"),
    [
        # the library was given the path (what=): the message is kept as is
        ("metadata.labels.env must be a string", "metadata.labels", None, "metadata.labels.env must be a string"),
        ("anything at all", "", None, "anything at all"),
        # the message names the last key of the path: the parent path goes in front
        ('schedule "x": bad', "spec.dynamic_labels.a.schedule", "x", 'spec.dynamic_labels.a.schedule "x": bad'),
        ('schedule "x": bad', "commands[0].schedule", None, 'commands[0].schedule "x": bad'),
        # the library quoted a string value first: the quote follows the path without a colon
        ('"1d": unknown unit "d"', "spec.options.ttl", "1d", 'spec.options.ttl "1d": unknown unit "d"'),
        # ... but only when the caller says the value was a string (the agent config keeps the colon)
        ('"1d": unknown unit "d"', "kubeport.heartbeat_ttl", None, 'kubeport.heartbeat_ttl: "1d": unknown unit "d"'),
        # anything else: "<path>: <message>"
        ('invalid label key "a b"', "spec.dynamic_labels", None, 'spec.dynamic_labels: invalid label key "a b"'),
        ('invalid label key "a b": ...', "commands[0].name", None, 'commands[0].name: invalid label key "a b": ...'),
    ],
)
def test_label_message(message: str, path: str, value: object, expected: str) -> None:
    assert label_message(LabelError(message), path, value=value) == expected


def test_subject_prefixes_the_message() -> None:
    with pytest.raises(BadParameter) as err, label_errors(subject="--ttl"):
        parse_go_duration("1d")
    assert err.value.message == '--ttl: "1d": unknown unit "d" (use 24h)'
    assert err.value.__suppress_context__  # one kubeport error, not a chain through the library's


def test_fail_adds_its_own_prefix() -> None:
    fields = Fields({}, subject='kube_cluster "c"', path="metadata")
    with pytest.raises(BadParameter) as err, label_errors(fail=fields.fail):
        validate_labels({"a b": "x"}, what="metadata.labels")
    assert err.value.message.startswith('kube_cluster "c": metadata.labels: invalid label key "a b"')


def test_bare_message_without_subject_or_fail() -> None:
    with pytest.raises(BadParameter) as err, label_errors("spec.period", value="1d"):
        parse_go_duration("1d", what="spec.period")
    assert err.value.message == 'spec.period "1d": unknown unit "d" (use 24h)'


def test_other_errors_pass_through_and_no_error_is_quiet() -> None:
    def fail(message: str) -> NoReturn:
        raise AssertionError(message)

    with pytest.raises(NotFound), label_errors(subject="x", fail=fail):
        raise NotFound("gone")
    with label_errors(subject="x", fail=fail):
        assert parse_go_duration("1h") == 3600

"""registry.core.kube_route: every valid cluster name is one path segment, and only its canonical encoding
routes; hostile paths are refused with an escaped, bounded message."""

from __future__ import annotations

import random
import string

import pytest

from registry.core.errors import BadParameter
from registry.core.kube_route import PREFIX, cluster_prefix, encode_name, split_prefix

NAME_CHARS = string.ascii_letters + string.digits + "._-"


@pytest.mark.parametrize("name", ["mycluster", "a", "my.cluster-1_x", "-", "..", "Z" * 253, "__"])
def test_round_trip(name: str) -> None:
    prefix = cluster_prefix(name)
    assert prefix.startswith(PREFIX) and "/" not in prefix[len(PREFIX) :] and "=" not in prefix
    assert split_prefix(prefix) == (name, "/")
    assert split_prefix(prefix + "/api/v1/pods?watch=true") == (name, "/api/v1/pods?watch=true")
    assert split_prefix((prefix + "?timeout=32s").encode()) == (name, "/?timeout=32s")


def test_random_names_round_trip() -> None:
    rng = random.Random(9)
    for _ in range(500):
        name = "".join(rng.choice(NAME_CHARS) for _ in range(rng.randrange(1, 60)))
        assert split_prefix(cluster_prefix(name) + "/version") == (name, "/version")


@pytest.mark.parametrize("name", ["", "a/b", "a b", "é", "x" * 254, "a\nb"])
def test_invalid_names_have_no_prefix(name: str) -> None:
    with pytest.raises(BadParameter, match="invalid kube cluster name"):
        cluster_prefix(name)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/v1/pods", "does not name a kube cluster"),
        ("", "does not name a kube cluster"),
        ("/v1/cluster/bXk", "does not name a kube cluster"),
        ("/v1/clusters/", "malformed cluster segment"),
        ("/v1/clusters//api", "malformed cluster segment"),
        ("/v1/clusters/bXk=/api", "malformed cluster segment"),  # padding: not canonical
        ("/v1/clusters/bXl/api", "malformed cluster segment"),  # non-canonical trailing bits
        ("/v1/clusters/%62Xk/api", "malformed cluster segment"),  # percent escapes are not decoded
        ("/v1/clusters/bXk+/api", "malformed cluster segment"),  # standard base64 alphabet
        ("/v1/clusters/" + encode_name("a/b"), "malformed cluster segment"),  # decodes to an invalid name
        ("/v1/clusters/" + encode_name("x" * 254), "malformed cluster segment"),
        ("/v1/clusters/" + "A" * 100_000, "malformed cluster segment"),
        ("/v1/clusters/wA", "malformed cluster segment"),  # not UTF-8
        (b"/v1/clusters/\xff\xfe", "is not ASCII"),
        ("/v1/clusters/bXk\x1b[2J", "malformed cluster segment"),
    ],
)
def test_malformed_paths(path: str | bytes, message: str) -> None:
    with pytest.raises(BadParameter) as info:
        split_prefix(path)
    assert message in info.value.message
    assert "\x1b" not in info.value.message and len(info.value.message) < 400

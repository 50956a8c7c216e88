"""Request mapping (registry.core.kube_request): method + path + query -> what the API server will do."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.core.errors import BadParameter
from registry.core.kube_access import role_verb
from registry.core.kube_request import STREAM_SUBRESOURCES, parse_request

# (method, path, query) -> (verb, api_group, resource, subresource, namespace, name)
RESOURCE_CASES = [
    ("GET", "/api/v1/namespaces/default/pods", "", ("list", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", "watch=true", ("watch", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", "watch=1&resourceVersion=5", ("watch", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", "watch=false", ("list", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods/nginx", "", ("get", "", "pods", "", "default", "nginx")),
    ("HEAD", "/api/v1/namespaces/default/pods/nginx", "", ("get", "", "pods", "", "default", "nginx")),
    ("GET", "/api/v1/namespaces/default/pods/nginx", "watch=true", ("watch", "", "pods", "", "default", "nginx")),
    ("GET", "/api/v1/namespaces/d/pods", "fieldSelector=metadata.name%3Dweb", ("list", "", "pods", "", "d", "web")),
    ("GET", "/api/v1/watch/namespaces/d/pods", "", ("watch", "", "pods", "", "d", "")),
    ("GET", "/api/v1/watch/namespaces/d/pods/web", "", ("watch", "", "pods", "", "d", "web")),
    ("POST", "/api/v1/namespaces/d/pods", "", ("create", "", "pods", "", "d", "")),
    ("PUT", "/api/v1/namespaces/d/pods/web", "", ("update", "", "pods", "", "d", "web")),
    ("PATCH", "/apis/apps/v1/namespaces/d/deployments/web", "", ("patch", "apps", "deployments", "", "d", "web")),
    ("DELETE", "/api/v1/namespaces/d/pods/web", "", ("delete", "", "pods", "", "d", "web")),
    ("DELETE", "/api/v1/namespaces/d/pods", "", ("deletecollection", "", "pods", "", "d", "")),
    ("POST", "/api/v1/namespaces/d/pods/web/exec", "command=ls", ("create", "", "pods", "exec", "d", "web")),
    ("GET", "/api/v1/namespaces/d/pods/web/exec", "command=ls", ("create", "", "pods", "exec", "d", "web")),
    ("GET", "/api/v1/namespaces/d/pods/web/attach", "", ("create", "", "pods", "attach", "d", "web")),
    ("POST", "/api/v1/namespaces/d/pods/web/portforward", "", ("create", "", "pods", "portforward", "d", "web")),
    ("GET", "/api/v1/namespaces/d/pods/web/portforward", "ports=80", ("create", "", "pods", "portforward", "d", "web")),
    ("GET", "/api/v1/namespaces/d/pods/web/log", "follow=true", ("get", "", "pods", "log", "d", "web")),
    ("GET", "/api/v1/namespaces/d/pods/web/proxy/metrics", "", ("get", "", "pods", "proxy", "d", "web")),
    ("GET", "/api/v1/nodes/n1/proxy/stats", "", ("get", "", "nodes", "proxy", "", "n1")),
    (
        "PATCH",
        "/api/v1/namespaces/d/pods/web/ephemeralcontainers",
        "",
        ("patch", "", "pods", "ephemeralcontainers", "d", "web"),
    ),
    ("GET", "/api/v1/proxy/namespaces/d/pods/web", "", ("proxy", "", "pods", "", "d", "web")),
    ("GET", "/api/v1/nodes", "", ("list", "", "nodes", "", "", "")),
    ("GET", "/api/v1/pods", "", ("list", "", "pods", "", "", "")),
    ("GET", "/api/v1/namespaces", "", ("list", "", "namespaces", "", "", "")),
    ("GET", "/api/v1/namespaces/default", "", ("get", "", "namespaces", "", "", "default")),
    ("PUT", "/api/v1/namespaces/default/finalize", "", ("update", "", "namespaces", "finalize", "", "default")),
    (
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        "",
        ("get", "rbac.authorization.k8s.io", "clusterroles", "", "", "admin"),
    ),
    (
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        "",
        ("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", ""),
    ),
    ("GET", "/apis/example.com/v1/namespaces/d/widgets/w", "", ("get", "example.com", "widgets", "", "d", "w")),
    ("GET", "/api/v1/namespaces/default/pods/", "", ("list", "", "pods", "", "default", "")),  # trailing slash
    ("OPTIONS", "/api/v1/namespaces/d/pods", "", ("", "", "pods", "", "d", "")),  # unknown method: no verb
    ("GET", "/api/v1/namespaces/d/pods/%6Eginx", "", ("get", "", "pods", "", "d", "nginx")),  # decoded like the API
]


@pytest.mark.parametrize(("method", "path", "query", "expected"), RESOURCE_CASES)
def test_resource_requests(method: str, path: str, query: str, expected: tuple[str, ...]) -> None:
    request = parse_request(method, path, query)
    assert request.is_resource
    got = (request.verb, request.api_group, request.resource, request.subresource, request.namespace, request.name)
    assert got == expected


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps",
        "/apis/apps/v1",
        "/version",
        "/openapi/v2",
        "/healthz",
        "/openapi/v3/apis/apps/v1",
    ],
)
def test_discovery_paths_are_not_resources(path: str) -> None:
    request = parse_request("GET", path)
    assert not request.is_resource
    assert request.verb == "get"


@pytest.mark.parametrize(
    "path",
    [
        "//api/v1/pods",
        "/api//v1/pods",
        "/api/v1/namespaces/a%2Fb/pods",
        "/api/v1/namespaces/a%2fb/pods",
        "/api/v1/namespaces/a%5Cb/pods",
        "/api/v1/namespaces/d/pods/x%00",
        "/api/v1/namespaces/d/pods/%zz",
        "/api/v1/namespaces/../pods",
        "/api/v1/namespaces/%2E%2E/pods",
        "/api/v1/namespaces/./pods",
        "/api/v1/namespaces/d/pods/a\nb",
        "/api/v1/namespaces/d/nodes/n1",  # cluster-scoped kind under a namespace (CVE-2019-11247)
        "/apis/rbac.authorization.k8s.io/v1/namespaces/d/clusterroles/admin",
        "/api/v1/namespaces/d/namespaces/x",
        "/api/v1/watch",
        "api/v1/pods",
        "/api/v1/namespaces/d/pods/%ff",
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(BadParameter):
        parse_request("GET", path)


def test_first_query_value_wins_and_describe() -> None:
    request = parse_request("GET", "/api/v1/namespaces/d/pods", "watch=false&watch=true")
    assert request.verb == "list"
    assert parse_request("GET", "/apis/apps/v1/namespaces/d/deployments/web/scale").describe() == (
        'deployments.apps/scale "web"'
    )
    assert parse_request("GET", "/api/v1/nodes").cluster_scoped
    assert not parse_request("GET", "/api/v1/pods").cluster_scoped


@pytest.mark.parametrize(
    "seed",
    [
        "",
        "/api/v1/",
        "/watch/",
        "/api/v1/namespaces/x/pods/name/exec",
        "/api/v1/nodes/name/proxy/path",
        "/%",
        "/%%",
        "/a/%2",
        "/\u00e9",
        "/api/v1/\udcff",
    ],
)
def test_parser_never_raises_anything_else(seed: str) -> None:
    """In the spirit of Teleport's FuzzParseResourcePath seeds: a result or BadParameter, nothing else."""
    for method in ("GET", "POST", "BREW"):
        with contextlib.suppress(BadParameter):
            parse_request(method, seed, "watch=%zz&&=")


@pytest.mark.parametrize(
    ("query", "verb"),
    [
        ("watch=", "watch"),  # the API server's bool: anything present but 0/false is true
        ("watch=yes", "watch"),
        ("watch=TRUE", "watch"),
        ("watch", "watch"),
        ("watch=FALSE", "list"),
        ("watch=0", "list"),
        ("watch=+false", "watch"),  # '+' is a blank: " false" is not "false" for the API server either
        ("wat%63h=1", "watch"),  # keys are unescaped as Go does
        ("", "list"),
    ],
)
def test_watch_is_read_as_the_api_server_reads_it(query: str, verb: str) -> None:
    """A list-only role must not get a stream: ``?watch=yes`` makes the API server watch (its parameter
    codec), so it is a watch here too."""
    assert parse_request("GET", "/api/v1/namespaces/d/pods", query).verb == verb


@pytest.mark.parametrize(
    "query",
    [
        # Go's url.ParseQuery skips this pair: the API server would list every pod while we authorized "web-%ZZ"
        "fieldSelector=metadata.name%3Dweb-%ZZ",
        "fieldSelector=metadata.name%3Dweb-1%&fieldSelector=",
        "watch=%zz&watch=true",  # Go skips the first pair and watches; we would have said list
        "watch;x=0&watch=true",
        "a%G1=1",
    ],
)
def test_query_pairs_go_would_skip_are_refused(query: str) -> None:
    with pytest.raises(BadParameter):
        parse_request("GET", "/api/v1/namespaces/d/pods", query)


def test_a_well_formed_field_selector_still_narrows_to_one_name() -> None:
    request = parse_request("GET", "/api/v1/namespaces/d/pods", "fieldSelector=metadata.name%3Dweb-1&limit=500")
    assert (request.verb, request.name) == ("list", "web-1")
    assert parse_request("GET", "/api/v1/namespaces/d/pods", "labelSelector=app+in+%28a%2Cb%29").verb == "list"


# Segments a hostile client would try (FuzzParseResourcePath's seeds, encodings, dot segments, subresources).
_SEGMENTS = st.sampled_from(
    [
        "api",
        "apis",
        "v1",
        "apps",
        "namespaces",
        "default",
        "kube-system",
        "pods",
        "nodes",
        "services",
        "secrets",
        "clusterroles",
        "rbac.authorization.k8s.io",
        "watch",
        "proxy",
        "exec",
        "attach",
        "portforward",
        "log",
        "status",
        "finalize",
        "ephemeralcontainers",
        "web",
        "",
        ".",
        "..",
        "%2F",
        "%2e%2e",
        "%2e",
        "%5C",
        "%00",
        "%",
        "%zz",
        "%C0%AE",
        "a%2Fb",
        "pods;x",
        "%70ods",
        "\\",
        "*",
        "~",
    ]
)
_QUERY = st.lists(
    st.sampled_from(
        [
            "watch=true",
            "watch=false",
            "watch=",
            "watch=%zz",
            "watch;=1",
            "fieldSelector=metadata.name%3Dweb",
            "fieldSelector=metadata.name%3D%ZZ",
            "command=sh",
            "x=%",
            "",
            "watch",
            "a+b=c+d",
        ]
    ),
    max_size=4,
).map("&".join)
_KNOWN_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "proxy", ""}


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW", "get"]),
    segments=st.lists(_SEGMENTS, min_size=0, max_size=9),
    trailing=st.booleans(),
    query=_QUERY,
)
def test_fuzz_parse_request(method: str, segments: list[str], trailing: bool, query: str) -> None:
    """FuzzParseResourcePath's spirit, with invariants: BadParameter or a mapping in which no part could
    name something else once the API server decodes it, a stream subresource is never read-only, a
    proxy is never ``get``, and nothing cluster-scoped carries a namespace."""
    path = "/" + "/".join(segments) + ("/" if trailing else "")
    try:
        request = parse_request(method, path, query)
    except BadParameter:
        return
    assert request.verb in _KNOWN_VERBS
    for part in (request.resource, request.subresource, request.namespace, request.name, request.api_group):
        assert part not in (".", "..")
        assert "/" not in part and "\\" not in part and "\x00" not in part
    if not request.is_resource:
        return
    if request.subresource in STREAM_SUBRESOURCES and request.method in ("GET", "POST"):
        assert request.verb == "create"
        assert role_verb(request) in ("exec", "portforward")
    if request.subresource == "proxy" or "proxy" in (request.verb,):
        assert role_verb(request) == "proxy"
    if request.namespace:
        assert not request.cluster_scoped

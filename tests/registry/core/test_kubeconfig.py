"""The stored-kubeconfig check: what an agent may be told to do, and what it must refuse."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from registry.core.errors import BadParameter, TooLarge
from registry.core.kubeconfig import KubeTarget, check_kubeconfig, decode_base64_kubeconfig
from tests.registry.core.core_helpers import (
    CERT_NOT_AFTER,
    SECRET_TOKEN,
    b64,
    jwt,
    kubeconfig,
    kubeconfig_bytes,
    pki,
    printf_recipe,
)

PREFIX = 'kube_cluster "prod": spec.kubeconfig '


def check(doc: dict[str, Any] | bytes, **kwargs: Any) -> KubeTarget:
    data = doc if isinstance(doc, bytes) else yaml.safe_dump(doc).encode()
    return check_kubeconfig(data, cluster_name="prod", **kwargs)


def rejected(doc: dict[str, Any] | bytes, **kwargs: Any) -> str:
    with pytest.raises(BadParameter) as info:
        check(doc, **kwargs)
    return info.value.message


# -- base64 -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b64(b"hello kubeconfig"),
        base64.encodebytes(b"x" * 200).decode(),  # 76-column lines
        printf_recipe(b"y" * 300),  # Teleport's printf recipe: space-separated chunks, leading spaces
        "\t" + " ".join(b64(b"abc")) + "\r\n",
    ],
)
def test_base64_ignores_whitespace(text: str) -> None:
    decoded = decode_base64_kubeconfig(text)
    assert decoded == base64.b64decode("".join(text.split()))
    assert decode_base64_kubeconfig(text.encode()) == decoded


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("YWJj!", "invalid base64: unexpected character '!' at offset 4"),
        ("YW Jj\n-_", "unexpected character '-' at offset 6"),  # offsets count in the text as written
        ("apiVersion: v1\nkind: Config\n", "this looks like a plain kubeconfig: encode it with base64 first"),
        ("YWJjé", "invalid base64: non-ASCII character at offset 4"),
        (b"YWJj\x00", "unexpected character byte 0x00 at offset 4"),
        ("YWJjZA=", "7 characters is not a multiple of 4"),
        ("YQ", "2 characters is not a multiple of 4 (truncated, or '=' padding missing?)"),
        ("YQ==YQ==", "invalid base64: Excess data after padding"),
        ("=YWJ", "invalid base64"),
    ],
)
def test_base64_errors(text: str | bytes, message: str) -> None:
    with pytest.raises(BadParameter) as info:
        decode_base64_kubeconfig(text)
    assert message in info.value.message


def test_base64_every_byte_value() -> None:
    """Each of the 256 byte values, placed inside valid base64: the alphabet and '=' are data, the six ASCII
    whitespace bytes are dropped, every other byte is refused naming its offset (the C fast check and the
    regex that names the offset must agree on every byte)."""
    alphabet = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    for value in range(256):
        data = b"YWJj" + bytes([value]) + b"ZGVm"
        if value in b" \t\n\r\f\v":
            assert decode_base64_kubeconfig(data) == b"abcdef"
        elif value in alphabet:
            with pytest.raises(BadParameter, match="invalid base64"):
                decode_base64_kubeconfig(data)  # 9 characters, or '=' inside the data
        else:
            with pytest.raises(BadParameter, match="at offset 4"):
                decode_base64_kubeconfig(data)


# -- accepted kubeconfigs ---------------------------------------------------------------------------------


def test_token_kubeconfig() -> None:
    target = check(kubeconfig())
    assert (target.context, target.cluster, target.user) == ("prod-ctx", "prod", "agent")
    assert target.server == "https://10.0.0.1:6443"
    assert target.ca_data == pki()["ca"]
    assert (target.auth, target.token, target.insecure) == ("token", SECRET_TOKEN, False)
    assert target.warnings == () and target.credential_expires is None


def test_get_kubeconfig_shape_with_tls_server_name() -> None:
    doc = kubeconfig(
        cluster={
            "certificate-authority-data": b64(pki()["ca"]),
            "server": "https://127.0.0.1:6443",
            "tls-server-name": "kubernetes.default",
        }
    )
    assert check(doc).tls_server_name == "kubernetes.default"


def test_client_certificate_kubeconfig() -> None:
    user = {"client-certificate-data": b64(pki()["client_cert"]), "client-key-data": b64(pki()["client_key"])}
    target = check(kubeconfig(user=user))
    assert target.auth == "client-cert"
    assert target.client_cert == pki()["client_cert"] and target.client_key == pki()["client_key"]
    assert target.credential_expires == CERT_NOT_AFTER
    assert any("client certificate expires at 2030-01-02T03:04:05Z" in w for w in target.warnings)


def test_jwt_token_expiry_is_read_without_verification() -> None:
    exp = datetime(2026, 6, 1, tzinfo=UTC)
    token = jwt({"exp": int(exp.timestamp()), "sub": "system:serviceaccount:kubeport:agent"})
    target = check(kubeconfig(user={"token": token}))
    assert target.credential_expires == exp
    assert target.warnings == (
        "users[0].user.token: the token expires at 2026-06-01T00:00:00Z; the agent cannot renew it, replace it before",
    )
    later = check(kubeconfig(user={"token": token}), now=exp + timedelta(seconds=1))
    assert later.warnings == ("users[0].user.token: the token expired at 2026-06-01T00:00:00Z",)


@pytest.mark.parametrize(
    "token",
    ["opaque-token", "a.b.c", jwt({"exp": "soon"}), jwt({"exp": True}), jwt({"exp": 10**20}), jwt({"sub": "x"})],
)
def test_tokens_without_a_usable_expiry(token: str) -> None:
    assert check(kubeconfig(user={"token": token})).credential_expires is None


def test_basic_auth() -> None:
    target = check(kubeconfig(user={"username": "admin", "password": "pa ss"}))
    assert (target.auth, target.username, target.password) == ("basic", "admin", "pa ss")


def test_exec_plugin_when_allowed() -> None:
    spec = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": "aws",
        "args": ["eks", "get-token", "--cluster-name", "prod"],
        "env": [{"name": "AWS_PROFILE", "value": "prod"}],
        "interactiveMode": "Never",
        "provideClusterInfo": False,
    }
    target = check(kubeconfig(user={"exec": spec}), allow_exec=True)
    assert target.auth == "exec"
    assert target.exec_spec == spec


def test_anonymous_insecure_proxy_and_http_produce_warnings() -> None:
    doc = kubeconfig(
        cluster={
            "server": "http://10.0.0.1:8080",
            "insecure-skip-tls-verify": True,
            "proxy-url": "socks5://u:p@gw:1080",
        },
        contexts=[{"name": "only", "context": {"cluster": "prod"}}],
        users=[],
        current_context=None,
    )
    target = check(doc)
    assert (target.context, target.user, target.auth, target.insecure) == ("only", "", "none", True)
    assert target.proxy_url == "socks5://u:p@gw:1080"
    text = " | ".join(target.warnings)
    for needle in ("insecure-skip-tls-verify", "proxy-url is set", "plain http", "anonymously"):
        assert needle in text
    assert "u:p" not in text


def test_current_context_selects_among_several() -> None:
    doc = kubeconfig()
    doc["clusters"].append({"name": "dev", "cluster": {"server": "https://dev:6443"}})
    doc["contexts"].append({"name": "dev-ctx", "context": {"cluster": "dev", "user": "agent", "namespace": "x"}})
    doc["current-context"] = "dev-ctx"
    assert check(doc).server == "https://dev:6443"


def test_missing_kind_is_fine_when_the_file_has_kubeconfig_sections() -> None:
    assert check(kubeconfig(kind=None, apiVersion=None)).auth == "token"


# -- refused kubeconfigs ----------------------------------------------------------------------------------

CA = b64(pki()["ca"])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"clusters: [unclosed\n", "spec.kubeconfig is not valid YAML: line 2, column 1"),
        (b"", "spec.kubeconfig is empty"),
        (b"- a\n", "is not a kubeconfig: expected a mapping (got a list of 1 items)"),
        (b"kind: Config\n---\nkind: Config\n", "has 2 YAML documents; a kubeconfig is one"),
        (b"kind: Pod\n", 'is not a kubeconfig: kind must be Config (got "Pod")'),
        (b"hello: world\n", "is not a kubeconfig: no kind: Config, clusters or contexts"),
        (b"\xff\xfe", "is not UTF-8 text"),
        (b"kind: Config\nclusters: &c []\ncontexts: *c\n", "YAML anchors (&c) are not allowed"),
        (kubeconfig(apiVersion="v2"), 'apiVersion must be v1 (got "v2")'),
        (kubeconfig(contexts=[]), PREFIX + "has no contexts"),
        (kubeconfig(contexts={"a": 1}), "contexts must be a list"),
        (
            kubeconfig(
                contexts=[{"name": f"c{i}", "context": {"cluster": "prod"}} for i in range(3)],
                current_context=None,
            ),
            PREFIX + "has 3 contexts and no current-context: ambiguous; set current-context",
        ),
        (kubeconfig(current_context="nope"), PREFIX + 'current-context "nope" is not in contexts'),
        (
            kubeconfig(contexts=[{"name": "x", "context": {"cluster": "gone"}}]),
            'contexts[0].context.cluster names "gone", which is not in clusters',
        ),
        (
            kubeconfig(contexts=[{"name": "x", "context": {"cluster": "prod", "user": "who"}}]),
            'contexts[0].context.user names "who", which is not in users',
        ),
        (kubeconfig(contexts=[{"name": "x", "context": {}}]), "contexts[0].context.cluster is required"),
        (
            kubeconfig(contexts=[{"name": "x", "context": {"cluster": "prod", "as": "me"}}]),
            "unknown field contexts[0].context.as",
        ),
        (
            kubeconfig(
                clusters=[
                    {"name": "prod", "cluster": {"server": "https://a"}},
                    {"name": "prod", "cluster": {"server": "https://b"}},
                ]
            ),
            'clusters[1].name "prod" appears more than once in clusters',
        ),
        (kubeconfig(clusters=[{"cluster": {"server": "https://a"}}]), "clusters[0].name is required"),
        (kubeconfig(cluster={"certificate-authority-data": CA}), PREFIX + "clusters[0].cluster.server is required"),
        (
            kubeconfig(cluster={"server": "ftp://x"}),
            'clusters[0].cluster.server must start with https:// or http:// (got "ftp://x")',
        ),
        (kubeconfig(cluster={"server": "https://"}), "clusters[0].cluster.server has no host"),
        (
            kubeconfig(cluster={"server": "https://ex\nample"}),
            "server must not contain whitespace or control characters",
        ),
        (kubeconfig(cluster={"server": "https://x", "tls-server-name": "a b"}), "tls-server-name must be a DNS name"),
        (kubeconfig(cluster={"server": "https://x:99999"}), "clusters[0].cluster.server is not a valid URL"),
        (kubeconfig(cluster={"server": "https://x/?a=1"}), "must not have a query or fragment"),
        (kubeconfig(cluster={"server": "https://admin:hunter2@x"}), "clusters[0].cluster.server embeds credentials"),
        (
            kubeconfig(cluster={"server": "https://x", "certificate-authority": "/etc/ca.crt"}),
            PREFIX + 'clusters[0].cluster.certificate-authority reads a local file on the agent host ("/etc/ca.crt");'
            " embed it as certificate-authority-data",
        ),
        (
            kubeconfig(cluster={"server": "https://x", "certificate-authority-data": "bm90IHBlbQ=="}),
            "must be base64 of a PEM certificate",
        ),
        (
            kubeconfig(cluster={"server": "https://x", "certificate-authority-data": "%%%"}),
            "certificate-authority-data is not valid base64 PEM",
        ),
        (
            kubeconfig(
                cluster={
                    "server": "https://x",
                    "certificate-authority-data": b64(b"-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"),
                }
            ),
            "does not contain a valid PEM certificate",
        ),
        (
            kubeconfig(
                cluster={"server": "https://x", "certificate-authority-data": CA, "insecure-skip-tls-verify": True}
            ),
            "sets both insecure-skip-tls-verify and certificate-authority-data",
        ),
        (
            kubeconfig(cluster={"server": "https://x", "insecure-skip-tls-verify": "yes"}),
            "insecure-skip-tls-verify must be true or false",
        ),
        (
            kubeconfig(cluster={"server": "https://x", "proxy-url": "ftp://p"}),
            "clusters[0].cluster.proxy-url must start with http:// or https:// or socks5://",
        ),
        (
            kubeconfig(cluster={"server": "https://x", "sever": "y"}),
            "unknown field clusters[0].cluster.sever (did you mean server?)",
        ),
        (
            kubeconfig(user={"exec": {"apiVersion": "v1", "command": "aws"}}),
            PREFIX + 'users[0].user.exec runs a credential plugin ("aws") on the agent host;'
            " set spec.allow_exec_plugins: true on the kube_cluster",
        ),
        (
            kubeconfig(user={"auth-provider": {"name": "oidc"}}),
            PREFIX + "users[0].user.auth-provider is not supported: auth-provider plugins are deprecated",
        ),
        (
            kubeconfig(user={"client-key": "/etc/x", "client-certificate-data": "x"}),
            PREFIX
            + 'users[0].user.client-key reads a local file on the agent host ("/etc/x"); embed it as client-key-data',
        ),
        (kubeconfig(user={"client-certificate": "/etc/c.crt"}), "users[0].user.client-certificate reads a local file"),
        (
            kubeconfig(user={"tokenFile": "/var/run/token"}),
            'users[0].user.tokenFile reads a local file on the agent host ("/var/run/token"); embed it as token',
        ),
        (
            kubeconfig(user={"token": "t", "as": "system:admin"}),
            "users[0].user.as is not supported: kubeport impersonates each user itself",
        ),
        (kubeconfig(user={"token": "t", "as-groups": ["system:masters"]}), "users[0].user.as-groups is not supported"),
        (
            kubeconfig(user={"token": "t", "username": "u", "password": "p"}),
            "sets more than one authentication method (token, basic)",
        ),
        (kubeconfig(user={"token": ""}), "users[0].user.token is empty"),
        (
            kubeconfig(user={"token": "abc\r\nX-Injected: 1"}),
            "users[0].user.token contains whitespace or non-printable characters",
        ),
        (kubeconfig(user={"username": "a:b", "password": "p"}), "users[0].user.username must not contain ':'"),
        (kubeconfig(user={"password": "p"}), "users[0].user.username is required with password"),
        (
            kubeconfig(user={"client-certificate-data": b64(pki()["client_cert"])}),
            "needs both client-certificate-data and client-key-data",
        ),
        (
            kubeconfig(
                user={"client-certificate-data": b64(pki()["client_cert"]), "client-key-data": b64(pki()["other_key"])}
            ),
            "users[0].user.client-key-data does not match the key of client-certificate-data",
        ),
        (
            kubeconfig(
                user={
                    "client-certificate-data": b64(pki()["client_cert"]),
                    "client-key-data": b64(pki()["client_key_encrypted"]),
                }
            ),
            "users[0].user.client-key-data is encrypted",
        ),
        (
            kubeconfig(
                user={
                    "client-certificate-data": b64(pki()["client_cert"]),
                    "client-key-data": b64(b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"),
                }
            ),
            "users[0].user.client-key-data does not contain a valid PEM private key",
        ),
        (kubeconfig(user={"frobnicate": 1}), "unknown field users[0].user.frobnicate"),
    ],
)
def test_refused(doc: dict[str, Any] | bytes, message: str) -> None:
    assert message in rejected(doc)


def test_auth_provider_is_refused_even_with_exec_allowed() -> None:
    assert "auth-provider is not supported" in rejected(
        kubeconfig(user={"auth-provider": {"name": "gcp"}}), allow_exec=True
    )


@pytest.mark.parametrize(
    ("exec_spec", "message"),
    [
        ({"command": "aws"}, "users[0].user.exec.apiVersion is required"),
        ({"apiVersion": "v1"}, "users[0].user.exec.command is required"),
        ({"apiVersion": "v1", "command": "aws", "args": "eks"}, "exec.args must be a list of non-empty strings"),
        ({"apiVersion": "v1", "command": "aws", "env": {"A": "b"}}, "exec.env must be a list of {name, value}"),
        ({"apiVersion": "v1", "command": "aws", "env": [{"value": "b"}]}, "exec.env[0].name is required"),
        ({"apiVersion": "v1", "command": "aws", "interactiveMode": "Sometimes"}, "exec.interactiveMode must be Never"),
        ({"apiVersion": "v1", "command": "aws", "shell": True}, "unknown field users[0].user.exec.shell"),
    ],
)
def test_bad_exec_specs_when_allowed(exec_spec: dict[str, Any], message: str) -> None:
    assert message in rejected(kubeconfig(user={"exec": exec_spec}), allow_exec=True)


def test_dangerous_fields_in_unused_entries_are_refused_too() -> None:
    doc = kubeconfig()
    doc["users"].append({"name": "unused", "user": {"tokenFile": "/etc/shadow"}})
    assert "users[1].user.tokenFile reads a local file" in rejected(doc)


def test_size_limit() -> None:
    huge = kubeconfig_bytes() + b"#" * (1 << 20)
    with pytest.raises(TooLarge, match=r'kube_cluster "prod": spec.kubeconfig is \d+ bytes; the limit is 1048576'):
        check(huge)


# -- secrets never leak -------------------------------------------------------------------------------------

SECRET = "Zq9-very-secret-value-7Hx"


@pytest.mark.parametrize(
    "doc",
    [
        kubeconfig(user={"token": SECRET + "\n"}),
        kubeconfig(user={"token": SECRET, "password": SECRET}),
        kubeconfig(user={"username": "u", "password": 123456789}),  # YAML turned it into an int
        kubeconfig(user={"token": 987654321}),
        kubeconfig(user={"username": "u", "password": SECRET + "\x07"}),
        kubeconfig(user={"client-certificate-data": SECRET, "client-key-data": SECRET}),
        kubeconfig(cluster={"server": f"https://admin:{SECRET}@x:99999"}),
        kubeconfig(cluster={"server": f"ftp://admin:{SECRET}@x"}),
        kubeconfig(user={"token": SECRET}, contexts=SECRET),
        kubeconfig(user={"token": [SECRET]}),
        yaml.safe_dump(SECRET).encode(),
        yaml.safe_dump({"kind": "Config", "clusters": [{"name": "c", "cluster": SECRET}]}).encode(),
        f"kind: Config\ntoken: {SECRET}: x\n".encode(),  # malformed YAML around a secret
        f"kind: Config\ndate: 2001-02-30\ntoken: {SECRET}\n".encode(),
    ],
)
def test_errors_never_contain_secret_values(doc: dict[str, Any] | bytes) -> None:
    message = rejected(doc)
    for secret in (SECRET, "123456789", "987654321", "Zq9"):
        assert secret not in message


def test_repr_of_target_hides_credentials() -> None:
    user = {"client-certificate-data": b64(pki()["client_cert"]), "client-key-data": b64(pki()["client_key"])}
    shown = (
        repr(check(kubeconfig(user=user)))
        + repr(check(kubeconfig()))
        + repr(check(kubeconfig(user={"username": "admin", "password": SECRET})))
    )
    for secret in (SECRET_TOKEN, SECRET, "BEGIN", "PRIVATE"):
        assert secret not in shown
    assert "server='https://10.0.0.1:6443'" in shown and "auth='token'" in shown


@pytest.mark.parametrize(
    "server",
    [
        "http://169.254.169.254",
        "http://169.254.169.254:80/latest",
        "https://169.254.170.2",  # ECS task credentials
        "http://2852039166",  # 169.254.169.254 as glibc's inet_aton reads it
        "http://0xa9fea9fe",
        "http://0251.0376.0251.0376",
        "http://169.254.43518",
        "http://[::ffff:169.254.169.254]",
        "http://[::ffff:a9fe:a9fe]",
        "http://[fe80::1]:6443",
        "http://[fd00:ec2::254]",
        "http://100.100.100.200",
        "http://metadata.google.internal",
        "http://METADATA.GOOGLE.INTERNAL.",
        "http://metadata",
    ],
)
def test_a_cloud_metadata_service_is_never_a_server(server: str) -> None:
    """A kube_cluster writer must not turn every kubectl user of the cluster into a reader of the agent host's
    cloud credentials (``kubectl get --raw /latest/meta-data/iam/...`` through the agent)."""
    doc = kubeconfig(cluster={"server": server, "insecure-skip-tls-verify": True})
    assert "names a cloud metadata service" in rejected(doc)
    proxied = kubeconfig(cluster={"server": "https://10.0.0.1:6443", "proxy-url": server.replace("https", "http")})
    assert "names a cloud metadata service" in rejected(proxied)


@pytest.mark.parametrize(
    "server", ["https://10.0.0.1:6443", "https://127.0.0.1:6443", "https://[fd00::1]:6443", "https://k8s.example.com"]
)
def test_ordinary_api_server_addresses_are_still_accepted(server: str) -> None:
    assert check(kubeconfig(cluster={"server": server, "insecure-skip-tls-verify": True})).server == server

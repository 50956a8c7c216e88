"""Stored kubeconfigs: base64 decoding, and the safety check that turns one into a :class:`KubeTarget`.

A ``kube_cluster`` carries a whole kubeconfig file (base64 in ``spec.kubeconfig``). Whoever may create a
kube_cluster therefore decides what every agent serving it will do with that file. Teleport only parses it
on the agent; kubeport checks it at create time (and again on the agent) and refuses anything that would
make an agent run code or read its own files:

* ``exec`` credential plugins run a command on the agent: refused unless the resource opts in with
  ``spec.allow_exec_plugins: true`` (``allow_exec=True`` here);
* ``auth-provider`` plugins are deprecated and run code / read files: always refused;
* path fields (``certificate-authority``, ``client-certificate``, ``client-key``, ``tokenFile``) read files on
  the agent host: always refused, the ``*-data`` / ``token`` forms must be embedded instead;
* impersonation fields (``as``, ``as-groups``, ...) would collide with the agent's own per-user impersonation;
* a ``server`` or ``proxy-url`` naming a cloud metadata service (a link-local address such as
  169.254.169.254 in any spelling the agent's resolver accepts: ``2852039166``, ``0xa9fea9fe``,
  ``::ffff:169.254.169.254``; ``fe80::/10``; AWS's ``fd00:ec2::254``; Alibaba's ``100.100.100.200``; the
  ``metadata.google.internal``-style names) is refused: every kubectl user of the cluster could then read the
  agent host's cloud credentials through ``kubectl get --raw``. A DNS name that *resolves* there is
  not caught here (pure: no resolver); the agent's connect-time check is the complete rule.

Every cluster, context and user entry is checked, not only the selected one, so nothing dangerous hides in
an unused entry. The context is picked deterministically: ``current-context``, or the only context; several
contexts without ``current-context`` are an error (Teleport would pick one at random).

Invariants: no secret value (token, password, key, certificate data, the kubeconfig text itself) ever
appears in an error message, a warning or a ``repr``; the check is pure (no disk, no network, no clock:
pass ``now`` to get expiry-relative warnings).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from registry.core.errors import BadParameter
from registry.core.timefmt import format_rfc3339
from registry.core.validation import Fields, check_size, decode_utf8, describe, describe_type, load_yaml, quote

AuthKind = Literal["token", "client-cert", "basic", "exec", "none"]

_WHITESPACE_BYTES = b" \t\n\r\f\v"
_BASE64_OR_WHITESPACE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=" + _WHITESPACE_BYTES
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/= \t\n\r\f\v]")
# Bearer tokens go into an HTTP header: visible ASCII only, so a stray newline cannot inject a header.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
MIN_RSA_BITS = 2048
_MAX_JWT_BYTES = 64 * 1024
_LATEST_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z

_TOP_FIELDS = ("apiVersion", "kind", "clusters", "contexts", "users", "current-context", "preferences", "extensions")
_CLUSTER_FIELDS = (
    "server",
    "tls-server-name",
    "insecure-skip-tls-verify",
    "certificate-authority",
    "certificate-authority-data",
    "proxy-url",
    "disable-compression",
    "extensions",
)
_CONTEXT_FIELDS = ("cluster", "user", "namespace", "extensions")
_USER_FIELDS = (
    "token",
    "tokenFile",
    "client-certificate",
    "client-certificate-data",
    "client-key",
    "client-key-data",
    "username",
    "password",
    "exec",
    "auth-provider",
    "as",
    "as-uid",
    "as-groups",
    "as-user-extra",
    "extensions",
)
_EXEC_FIELDS = ("apiVersion", "command", "args", "env", "installHint", "provideClusterInfo", "interactiveMode")
# Path field -> the embedded field that replaces it (``*-data`` fields hold base64, ``token`` the text itself).
# One table: the checker refuses these paths; the agent's own kubeconfig_file loader embeds them.
FILE_FIELDS = {
    "certificate-authority": "certificate-authority-data",
    "client-certificate": "client-certificate-data",
    "client-key": "client-key-data",
    "tokenFile": "token",
}


# Cloud metadata services (instance credentials): the hosts an agent must never be pointed at.
_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")  # AWS, GCP, Azure, OCI, OpenStack, ECS: 169.254.169.254/.170.2


def _as_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a literal host names for the agent's resolver (glibc ``inet_aton`` also reads
    ``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376`` and ``169.254.43518``), or None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if not re.fullmatch(r"[0-9a-fA-FxX.]+", host) or not host[:1].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # a pure parse (no lookup)
    except OSError:
        return None


def is_metadata_host(host: str) -> bool:
    """Whether ``host`` (a URL's hostname) is a cloud metadata service address or name (module docstring)."""
    name = host.strip("[]").rstrip(".").lower()
    if name in _METADATA_NAMES:
        return True
    address = _as_address(name)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return address in _LINK_LOCAL_V4 or address in _METADATA_ADDRESSES
    return address.is_link_local or address in _METADATA_ADDRESSES


@dataclass(frozen=True)
class KubeTarget:
    """Everything an agent needs to reach one Kubernetes API server, taken from a checked kubeconfig.

    Secret fields are excluded from ``repr`` (and so from logs of this object).
    """

    context: str
    cluster: str
    user: str
    server: str
    ca_data: bytes | None = field(default=None, repr=False)
    insecure: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = field(default=None, repr=False)  # may embed proxy credentials
    auth: AuthKind = "none"
    token: str | None = field(default=None, repr=False)
    client_cert: bytes | None = field(default=None, repr=False)
    client_key: bytes | None = field(default=None, repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    exec_spec: Mapping[str, Any] | None = field(default=None, repr=False)
    warnings: tuple[str, ...] = ()
    credential_expires: datetime | None = None


# -- base64 ----------------------------------------------------------------------------------------------


def decode_base64_kubeconfig(text: str | bytes) -> bytes:
    """Decode standard base64, ignoring whitespace anywhere (Teleport's ``printf "    %s" $(base64 ...)``
    recipe leaves space-separated 76-character chunks). Strict alphabet and padding; BadParameter
    ``invalid base64: ...`` otherwise. The message names positions, never the data."""
    if isinstance(text, str):
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError as err:
            raise BadParameter(
                f"invalid base64: non-ASCII character at offset {err.start} (base64 uses A-Z a-z 0-9 + / =)"
            ) from None
    else:
        raw = bytes(text)
    # bytes.translate deletes in C: nothing left means every byte is base64 or whitespace (the regex, which
    # finds the offending offset, only runs on a refusal).
    bad = _NOT_BASE64.search(raw) if raw.translate(None, _BASE64_OR_WHITESPACE) else None
    if bad is not None:
        char = bad.group(0)
        looks_plain = b"apiVersion" in raw or b"clusters:" in raw
        hint = " (this looks like a plain kubeconfig: encode it with base64 first)" if looks_plain else ""
        shown = repr(chr(char[0])) if 0x21 <= char[0] <= 0x7E else f"byte 0x{char[0]:02x}"
        raise BadParameter(
            f"invalid base64: unexpected character {shown} at offset {bad.start()} "
            f"(base64 uses A-Z a-z 0-9 + / =){hint}"
        )
    compact = raw.translate(None, _WHITESPACE_BYTES)
    if len(compact) % 4:
        raise BadParameter(
            f"invalid base64: {len(compact)} characters is not a multiple of 4 (truncated, or '=' padding missing?)"
        )
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except binascii.Error as err:
        # The remaining failures are about '=' placement; binascii's wording names no data.
        raise BadParameter(f"invalid base64: {str(err).rstrip('.')}") from None


# -- the check -------------------------------------------------------------------------------------------


class _Checker:
    """One kubeconfig check; holds the error prefix and the collected warnings."""

    def __init__(self, cluster_name: str, allow_exec: bool, now: datetime | None) -> None:
        self.subject = f"kube_cluster {quote(cluster_name)}"
        self.prefix = "spec.kubeconfig"
        self.allow_exec = allow_exec
        self.now = now
        self.warnings: list[str] = []

    def fail(self, message: str) -> NoReturn:
        raise BadParameter(f"{self.subject}: {self.prefix} {message}")

    def fields(self, value: object, path: str) -> Fields:
        # Same shape as fail(): "kube_cluster "x": spec.kubeconfig users[0].user.token must be ...".
        return Fields(value, subject=f"{self.subject}: {self.prefix}", path=path, joiner=" ", reveal=False)

    def entries(self, top: Fields, key: str, inner: str) -> list[tuple[str, str, Fields]]:
        """``clusters``/``contexts``/``users``: a list of ``{name, <inner>: {...}}`` with unique names."""
        value = top.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(f"{key} must be a list (got {describe_type(value)})")
        result: list[tuple[str, str, Fields]] = []
        seen: set[str] = set()
        for index, item in enumerate(value):
            path = f"{key}[{index}]"
            entry = self.fields(item, path)
            entry.reject_unknown(("name", inner))
            name = entry.string("name", required=True, limit=253)
            if name in seen:
                self.fail(f"{path}.name {quote(name)} appears more than once in {key}")
            seen.add(name)
            result.append((name, f"{path}.{inner}", self.fields(entry.raw(inner), f"{path}.{inner}")))
        return result

    def pem(self, user_or_cluster: Fields, key: str, kind: str) -> bytes:
        """A ``*-data`` field: base64 of PEM text. Returns the PEM bytes."""
        value = user_or_cluster.string(key, limit=512 * 1024)
        try:
            data = decode_base64_kubeconfig(value)
        except BadParameter as err:
            # The decoder names one offending character: harmless for a certificate, not said for a key.
            detail = "" if key == "client-key-data" else f": {err.message}"
            self.fail(f"{user_or_cluster.at(key)} is not valid base64 PEM{detail}")
        if b"-----BEGIN" not in data:
            self.fail(f"{user_or_cluster.at(key)} must be base64 of a PEM {kind} (no '-----BEGIN' line found)")
        return data

    def certificates(self, fields: Fields, key: str) -> tuple[bytes, list[x509.Certificate]]:
        data = self.pem(fields, key, "certificate")
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            self.fail(f"{fields.at(key)} does not contain a valid PEM certificate")
        return data, certs

    # -- clusters ------------------------------------------------------------------------------------

    def cluster(self, path: str, entry: Fields) -> dict[str, Any]:
        entry.reject_unknown(_CLUSTER_FIELDS)
        if "certificate-authority" in entry:
            self.file_field(entry, "certificate-authority")
        server = entry.string("server", limit=2048)
        if not server:
            self.fail(f"{entry.at('server')} is required (the https:// URL of the API server)")
        self.check_url(entry.at("server"), server, ("https", "http"))
        insecure = entry.boolean("insecure-skip-tls-verify")
        ca_data = None
        if entry.raw("certificate-authority-data") is not None:
            ca_data, _ = self.certificates(entry, "certificate-authority-data")
        if insecure and ca_data is not None:
            # client-go refuses this combination too: the CA would silently be ignored.
            self.fail(f"{path} sets both insecure-skip-tls-verify and certificate-authority-data; pick one")
        tls_server_name = entry.string("tls-server-name", limit=253) or None
        if tls_server_name is not None and not _HOSTNAME.fullmatch(tls_server_name):
            self.fail(f"{entry.at('tls-server-name')} must be a DNS name (got {quote(tls_server_name)})")
        proxy_url = entry.string("proxy-url", limit=2048) or None
        if proxy_url is not None:
            # client-go accepts proxy credentials in the URL; they are kept but never shown.
            self.check_url(entry.at("proxy-url"), proxy_url, ("http", "https", "socks5"), credentials_ok=True)
        entry.boolean("disable-compression")
        return {
            "server": server,
            "insecure": insecure,
            "ca_data": ca_data,
            "tls_server_name": tls_server_name,
            "proxy_url": proxy_url,
        }

    def check_url(self, path: str, url: str, schemes: tuple[str, ...], *, credentials_ok: bool = False) -> None:
        # A URL with user:password@ is never echoed, whatever else is wrong with it.
        shown = f" (got {quote(url)})" if "@" not in url and not credentials_ok else ""
        if not url.isprintable() or any(ch.isspace() for ch in url):
            # urlsplit silently drops tabs and newlines; the raw text would still reach HTTP headers.
            self.fail(f"{path} must not contain whitespace or control characters{shown}")
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError when out of range or not a number
        except ValueError:
            self.fail(f"{path} is not a valid URL{shown}")
        if (parts.username is not None or parts.password is not None) and not credentials_ok:
            self.fail(f"{path} embeds credentials (user:password@); put them in users[].user instead")
        if parts.scheme not in schemes:
            wanted = " or ".join(f"{s}://" for s in schemes)
            self.fail(f"{path} must start with {wanted}{shown}")
        if not parts.hostname:
            self.fail(f"{path} has no host{shown}")
        if parts.query or parts.fragment:
            self.fail(f"{path} must not have a query or fragment{shown}")
        if is_metadata_host(parts.hostname):
            self.fail(
                f"{path} names a cloud metadata service{shown}: every user of the cluster could read the agent "
                "host's cloud credentials through it"
            )

    # -- users ---------------------------------------------------------------------------------------

    def file_field(self, entry: Fields, key: str) -> NoReturn:
        value = entry.raw(key)
        shown = quote(value) if isinstance(value, str) else describe_type(value)
        self.fail(f"{entry.at(key)} reads a local file on the agent host ({shown}); embed it as {FILE_FIELDS[key]}")

    def user(self, path: str, entry: Fields) -> dict[str, Any]:
        entry.reject_unknown(_USER_FIELDS)
        for key in FILE_FIELDS:
            if key in entry and key != "certificate-authority":
                self.file_field(entry, key)
        if "auth-provider" in entry:
            self.fail(
                f"{entry.at('auth-provider')} is not supported: auth-provider plugins are deprecated and run code "
                "or read files on the agent host; use a token or a client certificate"
            )
        for key in ("as", "as-uid", "as-groups", "as-user-extra"):
            if key in entry:
                self.fail(
                    f"{entry.at(key)} is not supported: kubeport impersonates each user itself, "
                    "a kubeconfig that impersonates too would override it"
                )
        methods = [
            name
            for name, present in (
                ("token", "token" in entry),
                ("client-cert", "client-certificate-data" in entry or "client-key-data" in entry),
                ("basic", "username" in entry or "password" in entry),
                ("exec", "exec" in entry),
            )
            if present
        ]
        if len(methods) > 1:
            self.fail(f"{path} sets more than one authentication method ({', '.join(methods)}); keep one")
        result: dict[str, Any] = {"auth": methods[0] if methods else "none"}
        if "token" in entry:
            result.update(self.token(entry))
        elif "client-certificate-data" in entry or "client-key-data" in entry:
            result.update(self.client_cert(path, entry))
        elif "username" in entry or "password" in entry:
            result.update(self.basic(entry))
        elif "exec" in entry:
            result["exec_spec"] = self.exec(entry)
        return result

    def token(self, entry: Fields) -> dict[str, Any]:
        token = entry.string("token", limit=_MAX_JWT_BYTES)
        if not token:
            self.fail(f"{entry.at('token')} is empty")
        if not _HEADER_SAFE.fullmatch(token):
            self.fail(
                f"{entry.at('token')} contains whitespace or non-printable characters "
                "(a trailing newline from a file?); it must be one line of visible ASCII"
            )
        return {"token": token, "expires": jwt_expiry(token), "expiry": (entry.at("token"), "the token")}

    def client_cert(self, path: str, entry: Fields) -> dict[str, Any]:
        if "client-certificate-data" not in entry or "client-key-data" not in entry:
            self.fail(f"{path} needs both client-certificate-data and client-key-data")
        cert_pem, certs = self.certificates(entry, "client-certificate-data")
        key_pem = self.pem(entry, "client-key-data", "private key")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            self.fail(f"{entry.at('client-key-data')} is encrypted; the kubeconfig key must be unencrypted")
        except (ValueError, binascii.Error):
            # cryptography's messages may describe the key; say only that it is unusable.
            self.fail(f"{entry.at('client-key-data')} does not contain a valid PEM private key")
        except UnsupportedAlgorithm:
            self.fail(f"{entry.at('client-key-data')} contains an unsupported private key type")
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
            # OpenSSL's default security level refuses such keys on the agent: say so now, not there.
            self.fail(
                f"{entry.at('client-key-data')} is a {key.key_size}-bit RSA key; agents refuse RSA keys under "
                f"{MIN_RSA_BITS} bits (use 2048+ or an EC key)"
            )
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        try:
            same = certs[0].public_key().public_bytes(der, public) == key.public_key().public_bytes(der, public)
        except (ValueError, TypeError, AttributeError):
            same = False
        if not same:
            self.fail(f"{entry.at('client-key-data')} does not match the key of client-certificate-data")
        return {
            "client_cert": cert_pem,
            "client_key": key_pem,
            "expires": certs[0].not_valid_after_utc,
            "expiry": (entry.at("client-certificate-data"), "the client certificate"),
        }

    def basic(self, entry: Fields) -> dict[str, Any]:
        username = entry.string("username", limit=1024)
        password = entry.string("password", limit=1024)
        if not username:
            self.fail(f"{entry.at('username')} is required with password")
        if ":" in username or not username.isprintable():
            self.fail(f"{entry.at('username')} must not contain ':' or control characters")
        if not password.isprintable():
            self.fail(f"{entry.at('password')} must not contain control characters")
        return {"username": username, "password": password}

    def exec(self, entry: Fields) -> dict[str, Any]:
        spec = self.fields(entry.raw("exec"), entry.at("exec"))
        command = spec.string("command", limit=4096)
        if not self.allow_exec:
            shown = f" ({quote(command)})" if command else ""
            self.fail(
                f"{entry.at('exec')} runs a credential plugin{shown} on the agent host; "
                "set spec.allow_exec_plugins: true on the kube_cluster to allow it"
            )
        spec.reject_unknown(_EXEC_FIELDS)
        if not command:
            self.fail(f"{spec.at('command')} is required")
        spec.string("apiVersion", required=True)
        spec.strings("args", limit=1024)
        spec.string("installHint", limit=8192)
        spec.boolean("provideClusterInfo")
        mode = spec.string("interactiveMode", default="Never")
        if mode not in ("Never", "IfAvailable", "Always"):
            self.fail(f"{spec.at('interactiveMode')} must be Never, IfAvailable or Always (got {quote(mode)})")
        env = spec.raw("env")
        if env is not None:
            if not isinstance(env, list):
                self.fail(f"{spec.at('env')} must be a list of {{name, value}} (got {describe_type(env)})")
            for index, item in enumerate(env):
                variable = self.fields(item, f"{spec.at('env')}[{index}]")
                variable.reject_unknown(("name", "value"))
                variable.string("name", required=True, limit=1024)
                variable.string("value", limit=64 * 1024)
        return dict(spec.data)

    def expiry_warning(self, user: Mapping[str, Any]) -> None:
        expires: datetime | None = user.get("expires")
        if expires is None:
            return
        path, what = user["expiry"]
        stamp = format_rfc3339(expires, fraction="none")
        if self.now is not None and expires <= self.now:
            self.warnings.append(f"{path}: {what} expired at {stamp}")
        else:
            self.warnings.append(f"{path}: {what} expires at {stamp}; the agent cannot renew it, replace it before")


def jwt_expiry(token: str) -> datetime | None:
    """The ``exp`` claim of a JWT bearer token, read WITHOUT verifying anything (it only drives warnings).

    Returns None for opaque tokens and anything malformed.
    """
    parts = token.split(".")
    if len(parts) != 3 or len(token) > _MAX_JWT_BYTES:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not 0 < exp <= _LATEST_TIMESTAMP:
        return None
    return datetime.fromtimestamp(exp, tz=UTC)


def check_kubeconfig(
    data: bytes, *, cluster_name: str, allow_exec: bool = False, now: datetime | None = None
) -> KubeTarget:
    """Check a kubeconfig file and return how to reach the cluster of its chosen context.

    Raises BadParameter ``kube_cluster "<name>": spec.kubeconfig ...`` (TooLarge above 1 MiB). See the
    module docstring for the rules. ``now`` (aware) only refines credential-expiry warnings.
    """
    checker = _Checker(cluster_name, allow_exec, now)
    data = check_size(data, source=f"{checker.subject}: {checker.prefix}")
    text = decode_utf8(data, source=f"{checker.subject}: {checker.prefix}")
    documents = [d for d in load_yaml(text, source=f"{checker.subject}: {checker.prefix}") if d is not None]
    if not documents:
        checker.fail("is empty")
    if len(documents) > 1:
        checker.fail(f"has {len(documents)} YAML documents; a kubeconfig is one")
    if not isinstance(documents[0], Mapping):
        checker.fail(f"is not a kubeconfig: expected a mapping (got {describe_type(documents[0])})")
    top = checker.fields(documents[0], "")
    kind = top.raw("kind")
    if kind is not None and kind != "Config":
        checker.fail(f"is not a kubeconfig: kind must be Config (got {describe(kind)})")
    if kind is None and "clusters" not in top and "contexts" not in top:
        checker.fail("is not a kubeconfig: no kind: Config, clusters or contexts")
    api_version = top.raw("apiVersion")
    if api_version is not None and api_version != "v1":
        checker.fail(f"apiVersion must be v1 (got {describe(api_version)})")
    # Unknown top-level keys are tolerated (tools add their own); only entries can carry credentials.
    clusters = {name: checker.cluster(path, entry) for name, path, entry in checker.entries(top, "clusters", "cluster")}
    users = {name: checker.user(path, entry) for name, path, entry in checker.entries(top, "users", "user")}
    contexts: dict[str, tuple[str, str | None]] = {}
    for name, _, entry in checker.entries(top, "contexts", "context"):
        entry.reject_unknown(_CONTEXT_FIELDS)
        cluster_ref = entry.string("cluster", limit=253)
        if not cluster_ref:
            checker.fail(f"{entry.at('cluster')} is required")
        if cluster_ref not in clusters:
            checker.fail(f"{entry.at('cluster')} names {quote(cluster_ref)}, which is not in clusters")
        user_ref = entry.string("user", limit=253) or None
        if user_ref is not None and user_ref not in users:
            checker.fail(f"{entry.at('user')} names {quote(user_ref)}, which is not in users")
        entry.string("namespace", limit=253)
        contexts[name] = (cluster_ref, user_ref)

    current = top.string("current-context", limit=253)
    if not contexts:
        checker.fail("has no contexts")
    if current:
        if current not in contexts:
            checker.fail(f"current-context {quote(current)} is not in contexts")
        chosen = current
    elif len(contexts) == 1:
        (chosen,) = contexts
    else:
        checker.fail(f"has {len(contexts)} contexts and no current-context: ambiguous; set current-context")

    cluster_name_in_file, user_name = contexts[chosen]
    cluster = clusters[cluster_name_in_file]
    user: dict[str, Any] = users[user_name] if user_name is not None else {"auth": "none"}
    checker.expiry_warning(user)
    warnings = checker.warnings
    if cluster["insecure"]:
        warnings.append("insecure-skip-tls-verify is set: the agent will not verify the API server's certificate")
    if cluster["proxy_url"]:
        warnings.append("proxy-url is set: the agent reaches the API server through a proxy")
    if cluster["server"].startswith("http://"):
        warnings.append(f"server {quote(cluster['server'])} uses plain http: credentials and traffic are not encrypted")
    if user["auth"] == "none":
        warnings.append("the selected context has no credentials: requests reach the API server anonymously")
    return KubeTarget(
        context=chosen,
        cluster=cluster_name_in_file,
        user=user_name or "",
        server=cluster["server"],
        ca_data=cluster["ca_data"],
        insecure=cluster["insecure"],
        tls_server_name=cluster["tls_server_name"],
        proxy_url=cluster["proxy_url"],
        auth=user["auth"],
        token=user.get("token"),
        client_cert=user.get("client_cert"),
        client_key=user.get("client_key"),
        username=user.get("username"),
        password=user.get("password"),
        exec_spec=user.get("exec_spec"),
        warnings=tuple(warnings),
        credential_expires=user.get("expires"),
    )

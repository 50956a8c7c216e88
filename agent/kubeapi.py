"""The agent's own client for one Kubernetes API server: TLS from the kubeconfig, credentials, JSON calls.

One :class:`KubeAPI` per served cluster, built from the :class:`KubeTarget` that ``check_kubeconfig``
produced. It is for the agent's own control-plane calls (``/version``, SelfSubjectAccessReview, ...), never
for proxying: it sends only the headers it builds itself and never forwards a caller's.

Invariants:

* TLS trusts exactly what the kubeconfig says: its CA data when present, the system roots when absent, or
  nothing at all when ``insecure-skip-tls-verify`` is set (then :attr:`KubeAPI.warnings` says so, and health
  reports it). Names are checked against SANs only (as Go's crypto/tls does), against ``tls-server-name``
  when the kubeconfig sets one. ALPN offers ``http/1.1`` only.
* Identical TLS material yields the same ``SSLContext`` object: contexts are cached by a digest of their
  inputs (bounded, least recently used first out), so a thousand clusters behind one CA load it once.
* Secrets (bearer token, basic password, exec-plugin credentials) never appear in a message, a repr or the
  statistics; error text coming back from a server is truncated, stripped of control characters and
  scrubbed of our own secrets before it is put into an exception.
* Foreign errors stop here: every failure is a ``KubeportError`` — 401 ``Unauthenticated``, 403
  ``AccessDenied``, 404 ``NotFound``, other statuses, transport and TLS failures and garbage answers
  ``ConnectionProblem``, deadlines ``Timeout``.
* Paths are relative to the kubeconfig's server URL (which may carry a path prefix); an absolute URL is
  refused so credentials cannot be sent to another host by mistake.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

import httpx
import trio

from registry.core.errors import (
    AccessDenied,
    BadParameter,
    ConnectionProblem,
    KubeportError,
    NotFound,
    Timeout,
    Unauthenticated,
)
from registry.core.kubeconfig import KubeTarget
from registry.host.tls import load_cert_chain_from_memory

ALPN_PROTOCOLS: Final = ("http/1.1",)
USER_AGENT: Final = "kubeport-agent"  # what the cluster's audit log shows for the agent's own calls
DEFAULT_TIMEOUT: Final = 10.0
EXEC_TIMEOUT: Final = 30.0
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024  # the agent's own answers are tiny; a bigger one is hostile
MAX_EXEC_OUTPUT: Final = 1024 * 1024
_CONTEXT_CACHE_SIZE: Final = 256
_MESSAGE_LIMIT: Final = 500
# An exec credential is refreshed this long before it expires, so a request never carries one that dies in
# flight.
_EXPIRY_SKEW: Final = timedelta(seconds=10)

_CONTEXT_CACHE: OrderedDict[bytes, ssl.SSLContext] = OrderedDict()
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


# --------------------------------------------------------------------------------------------- TLS contexts


def ssl_context_for(target: KubeTarget) -> ssl.SSLContext:
    """The client TLS context for ``target`` (shared with every target that has the same TLS material)."""
    return _cached_context(target.ca_data, target.insecure, target.client_cert, target.client_key)


def context_cache_size() -> int:
    """How many distinct contexts are cached (for statistics and tests)."""
    return len(_CONTEXT_CACHE)


def _cached_context(
    ca_data: bytes | None, insecure: bool, client_cert: bytes | None, client_key: bytes | None
) -> ssl.SSLContext:
    key = _context_key(ca_data, insecure, client_cert, client_key)
    context = _CONTEXT_CACHE.get(key)
    if context is not None:
        _CONTEXT_CACHE.move_to_end(key)
        return context
    context = _build_context(ca_data, insecure, client_cert, client_key)
    _CONTEXT_CACHE[key] = context
    while len(_CONTEXT_CACHE) > _CONTEXT_CACHE_SIZE:
        _CONTEXT_CACHE.popitem(last=False)
    return context


def _context_key(ca_data: bytes | None, insecure: bool, client_cert: bytes | None, client_key: bytes | None) -> bytes:
    # Length-prefixed fields so that no two different inputs can concatenate to the same bytes; the digest
    # (not the key material itself) is what the cache holds on to.
    digest = hashlib.sha256(b"kubeport-kube-tls-v1")
    for part in (ca_data, b"insecure" if insecure else b"verify", client_cert, client_key):
        if part is None:
            digest.update(b"\xff")
        else:
            digest.update(len(part).to_bytes(8, "big") + part)
    return digest.digest()


def _build_context(
    ca_data: bytes | None, insecure: bool, client_cert: bytes | None, client_key: bytes | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    context.options |= ssl.OP_NO_RENEGOTIATION
    if insecure:
        context.check_hostname = False  # must go first: CERT_NONE is refused while names are checked
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = True
        # Go (and so kubectl and client-go) ignores the common name; a server cert without SANs must fail
        # here too rather than work with kubeport and nowhere else.
        context.hostname_checks_common_name = False
        if ca_data is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            try:
                context.load_verify_locations(cadata=ca_data.decode("ascii"))
            except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
                raise BadParameter(f"certificate-authority-data does not load as PEM certificates: {exc}") from exc
    if (client_cert is None) != (client_key is None):
        raise BadParameter("client-certificate-data and client-key-data must be given together")
    if client_cert is not None and client_key is not None:
        load_cert_chain_from_memory(context, client_cert, client_key, "client")
    return context


# ------------------------------------------------------------------------------------ exec credential plugin


@dataclass(frozen=True, repr=False)
class ExecCredential:
    """What an exec plugin returned. ``repr`` hides the secrets."""

    token: str | None
    client_cert: bytes | None
    client_key: bytes | None
    expires: datetime | None

    def __repr__(self) -> str:
        kind = "token" if self.token is not None else "client-cert"
        return f"ExecCredential({kind}, expires={self.expires!r})"


def parse_exec_credential(output: bytes, *, command: str, api_version: str | None) -> ExecCredential:
    """Parse a plugin's stdout (an ``ExecCredential`` JSON document) the way client-go does."""
    where = f"exec credential plugin {command!r}"
    try:
        document = json.loads(output)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unauthenticated(f"{where} printed something that is not JSON ({_clean(str(exc))})") from exc
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise Unauthenticated(f"{where} did not print an ExecCredential object")
    returned_version = document.get("apiVersion")
    if api_version and returned_version != api_version:
        raise Unauthenticated(
            f"{where} is configured for apiVersion {api_version!r} but returned {_clean(str(returned_version))!r}"
        )
    status = document.get("status")
    if not isinstance(status, dict):
        raise Unauthenticated(f"{where} returned an ExecCredential without status")
    token = status.get("token")
    cert = status.get("clientCertificateData")
    key = status.get("clientKeyData")
    if token is not None and (not isinstance(token, str) or not token):
        raise Unauthenticated(f"{where} returned a status.token that is not a non-empty string")
    if (cert is None) != (key is None) or any(v is not None and not isinstance(v, str) for v in (cert, key)):
        raise Unauthenticated(f"{where} must return clientCertificateData and clientKeyData together, as strings")
    if token is None and cert is None:
        raise Unauthenticated(f"{where} returned neither status.token nor a client certificate and key")
    return ExecCredential(
        token=token,
        client_cert=cert.encode() if isinstance(cert, str) else None,
        client_key=key.encode() if isinstance(key, str) else None,
        expires=_parse_expiry(status.get("expirationTimestamp"), where),
    )


def _parse_expiry(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise Unauthenticated(f"{where} returned an expirationTimestamp that is not an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Unauthenticated(f"{where} returned an invalid expirationTimestamp {_clean(value)!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def run_exec_plugin(spec: Mapping[str, Any], *, server: str, timeout: float = EXEC_TIMEOUT) -> ExecCredential:
    """Run the kubeconfig's ``exec`` plugin once and return its credential.

    argv is ``command`` + ``args``; the environment is ours plus the spec's ``env`` plus
    ``KUBERNETES_EXEC_INFO`` (non-interactive), as client-go does. stdin is closed: the agent can never
    answer a prompt. Output is capped; a plugin still running after ``timeout`` seconds is killed.
    """
    command = spec.get("command")
    if not isinstance(command, str) or not command:
        raise BadParameter("exec credential plugin: command must be a non-empty string")
    args = spec.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BadParameter(f"exec credential plugin {command!r}: args must be a list of strings")
    api_version = spec.get("apiVersion")
    api_version = api_version if isinstance(api_version, str) else None
    env = dict(os.environ)
    for item in spec.get("env") or []:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise BadParameter(f"exec credential plugin {command!r}: env entries need a name and a value")
        env[item["name"]] = str(item.get("value", ""))
    info: dict[str, Any] = {"kind": "ExecCredential", "spec": {"interactive": False}}
    if api_version:
        info["apiVersion"] = api_version
    if spec.get("provideClusterInfo"):
        info["spec"]["cluster"] = {"server": server}
    env["KUBERNETES_EXEC_INFO"] = json.dumps(info)

    where = f"exec credential plugin {command!r}"
    stdout = bytearray()
    stderr = bytearray()
    overflow: list[str] = []
    start_error: OSError | None = None
    process: trio.Process | None = None
    try:
        with trio.fail_after(timeout):
            # Nothing may raise out of this nursery (trio would wrap it in an ExceptionGroup): failures are
            # recorded and turned into errors after it closes.
            async with trio.open_nursery() as nursery:
                try:
                    process = await nursery.start(
                        partial(
                            trio.run_process,
                            [command, *args],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env=env,
                            check=False,
                            deliver_cancel=_kill,
                        )
                    )
                except OSError as exc:
                    start_error = exc
                else:
                    assert process.stdout is not None
                    assert process.stderr is not None
                    nursery.start_soon(_read_capped, process.stdout, stdout, process, overflow)
                    nursery.start_soon(_read_capped, process.stderr, stderr, process, overflow)
    except trio.TooSlowError:
        raise Timeout(f"{where} did not finish within {timeout:g}s") from None
    if start_error is not None or process is None:
        detail = start_error.strerror if start_error is not None and start_error.strerror else start_error
        raise Unauthenticated(f"{where} cannot be started: {detail}")
    if overflow:
        raise Unauthenticated(f"{where} printed more than {MAX_EXEC_OUTPUT} bytes")
    if process.returncode != 0:
        detail = _clean(bytes(stderr[-_MESSAGE_LIMIT:]).decode("utf-8", "replace")) or "no output on stderr"
        raise Unauthenticated(f"{where} failed with exit status {process.returncode}: {detail}")
    return parse_exec_credential(bytes(stdout), command=command, api_version=api_version)


async def _kill(process: trio.Process) -> None:
    # A credential helper has nothing to clean up that is worth waiting for on a deadline.
    process.kill()


async def _read_capped(
    stream: trio.abc.ReceiveStream, sink: bytearray, process: trio.Process, overflow: list[str]
) -> None:
    while chunk := await stream.receive_some(65536):
        sink.extend(chunk)
        if len(sink) > MAX_EXEC_OUTPUT:
            overflow.append("output")
            process.kill()  # its pipes close with it, which ends the other reader too
            return


# ---------------------------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class KubeAPIStatistics:
    server: str
    auth: str
    requests: int
    failures: int
    exec_runs: int
    credential_expires: datetime | None


class KubeAPI:
    """A JSON client for one Kubernetes API server, with the kubeconfig's TLS and credentials.

    ``now`` tells the time for exec-credential expiry; ``exec_timeout`` bounds one exec-plugin run.
    Use as ``async with KubeAPI(target) as api`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        target: KubeTarget,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        exec_timeout: float = EXEC_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._target = target
        self._server = target.server.rstrip("/")
        self._now = now
        self._exec_timeout = exec_timeout
        self._max_response_bytes = max_response_bytes
        self._exec_lock = trio.Lock()
        self._exec_credential: ExecCredential | None = None
        self._requests = 0
        self._failures = 0
        self._exec_runs = 0
        self._retired: list[httpx.AsyncClient] = []
        self._extensions: dict[str, Any] = {}
        if target.tls_server_name and target.proxy_url:
            # httpcore's proxy tunnel verifies against the URL's host and drops sni_hostname; refuse rather than
            # fail every handshake with a confusing name mismatch.
            raise BadParameter(f"{self._server}: tls-server-name together with proxy-url is not supported")
        if target.tls_server_name:
            self._extensions["sni_hostname"] = target.tls_server_name
        warnings: list[str] = []
        if target.insecure:
            warnings.append(
                f"TLS verification is off for {self._server} (insecure-skip-tls-verify): "
                "the API server's identity is not checked"
            )
        if self._server.startswith("http://"):
            warnings.append(f"{self._server} is plain http: credentials and traffic are not encrypted")
        self.warnings: tuple[str, ...] = tuple(warnings)
        # Exec plugins may hand out a client certificate later; until then the kubeconfig's own TLS applies.
        self._client = self._new_client(target.client_cert, target.client_key)
        self._client_pair: tuple[bytes | None, bytes | None] = (target.client_cert, target.client_key)

    @property
    def server(self) -> str:
        return self._server

    def __repr__(self) -> str:
        return f"KubeAPI(server={self._server!r}, auth={self._target.auth!r})"

    async def __aenter__(self) -> KubeAPI:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for client in (*self._retired, self._client):
            await client.aclose()
        self._retired.clear()

    def statistics(self) -> KubeAPIStatistics:
        credential = self._exec_credential
        return KubeAPIStatistics(
            server=self._server,
            auth=self._target.auth,
            requests=self._requests,
            failures=self._failures,
            exec_runs=self._exec_runs,
            credential_expires=credential.expires if credential else self._target.credential_expires,
        )

    async def get_json(self, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """GET ``path`` and return the decoded JSON answer (raises a ``KubeportError`` on any failure)."""
        return await self._call("GET", path, None, timeout)

    async def post_json(self, path: str, body: Any, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """POST ``body`` as JSON to ``path`` and return the decoded JSON answer."""
        return await self._call("POST", path, json.dumps(body).encode(), timeout)

    # -- internals

    def _new_client(self, cert: bytes | None, key: bytes | None) -> httpx.AsyncClient:
        target = self._target
        verify = _cached_context(target.ca_data, target.insecure, cert, key)
        try:
            return httpx.AsyncClient(
                base_url=self._server,
                verify=verify,
                http1=True,
                http2=False,
                trust_env=False,  # proxies and CA come from the kubeconfig only, never from our environment
                proxy=target.proxy_url or None,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
            )
        except (ValueError, ImportError, httpx.HTTPError) as exc:
            raise BadParameter(f"cannot build a client for {self._server}: {self._scrub(str(exc))}") from exc

    async def _call(self, method: str, path: str, content: bytes | None, timeout: float) -> Any:
        if not path.startswith("/") or path.startswith("//"):
            raise BadParameter(f"a Kubernetes API path must start with a single '/', got {_clean(path)[:100]!r}")
        try:
            for attempt in range(2):
                # identity: the answers are small, and reading raw bytes under a cap is then exactly the
                # size of the JSON (no decompression bombs, no gzip bytes handed to the JSON parser).
                headers = {
                    "Accept": "application/json",
                    "Accept-Encoding": "identity",
                    "User-Agent": USER_AGENT,
                    **await self._auth_headers(),
                }
                if content is not None:
                    headers["Content-Type"] = "application/json"
                status, data = await self._send(method, path, headers, content, timeout)
                # An exec credential can be revoked before it says it expires: fetch a fresh one once.
                if status == 401 and self._target.auth == "exec" and attempt == 0:
                    self._exec_credential = None
                    continue
                return self._decode(method, path, status, data)
            raise AssertionError("unreachable")  # pragma: no cover
        except KubeportError:
            self._failures += 1
            raise

    async def _send(
        self, method: str, path: str, headers: dict[str, str], content: bytes | None, timeout: float
    ) -> tuple[int, bytes]:
        self._requests += 1
        try:
            # httpx's timeout applies per phase (connect, TLS, each read), so a peer that drips bytes could stretch
            # a call far beyond it; fail_after is the backstop for the whole call. It is deliberately later than
            # the phase timeouts: httpcore 1.0 leaks the socket when cancelled in the middle of a TLS handshake,
            # but closes it when its own timeout fires there.
            with trio.fail_after(2 * timeout):
                async with self._client.stream(
                    method, path, headers=headers, content=content, timeout=timeout, extensions=self._extensions
                ) as response:
                    data = bytearray()
                    # Stopping early by cancelling, not by leaving the loop: the cancellation surfaces inside
                    # httpx's nested body generators, so they finish instead of being left half-consumed.
                    with trio.CancelScope() as reading:
                        async for chunk in response.aiter_raw():
                            data.extend(chunk)
                            if len(data) > self._max_response_bytes:
                                reading.cancel()
                    if len(data) > self._max_response_bytes:
                        raise ConnectionProblem(
                            f"{self._server} answered {method} {path} with more than {self._max_response_bytes} bytes"
                        )
                    return response.status_code, bytes(data)
        except (trio.TooSlowError, httpx.TimeoutException):
            raise Timeout(f"cannot reach {self._server}: no answer to {method} {path} within {timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise ConnectionProblem(f"cannot reach {self._server}: {self._describe(exc)}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionProblem(f"cannot reach {self._server}: {self._describe(exc)}") from exc

    def _decode(self, method: str, path: str, status: int, data: bytes) -> Any:
        if 200 <= status < 300:
            if not data:
                return None
            try:
                return json.loads(data)
            except (UnicodeDecodeError, ValueError):
                raise ConnectionProblem(f"{self._server} answered {method} {path} with invalid JSON") from None
        message = self._status_message(data, status)
        if status == 401:
            raise Unauthenticated(f"credentials rejected by {self._server}: {message}")
        if status == 403:
            raise AccessDenied(f"{self._server} forbids {method} {path}: {message}")
        if status == 404:
            raise NotFound(f"{method} {path} not found on {self._server}: {message}")
        raise ConnectionProblem(f"{self._server} answered {method} {path} with HTTP {status}: {message}")

    def _status_message(self, data: bytes, status: int) -> str:
        text = data[: 4 * _MESSAGE_LIMIT].decode("utf-8", "replace")
        try:
            document = json.loads(data) if len(data) <= 64 * 1024 else None
        except (UnicodeDecodeError, ValueError):
            document = None
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            text = document["message"]
        text = self._scrub(_clean(text))[:_MESSAGE_LIMIT]
        return text or f"HTTP {status} without a message"

    async def _auth_headers(self) -> dict[str, str]:
        target = self._target
        if target.auth == "token" and target.token:
            return {"Authorization": f"Bearer {target.token}"}
        if target.auth == "basic" and target.username is not None:
            pair = httpx.BasicAuth(target.username, target.password or "")
            request = next(pair.auth_flow(httpx.Request("GET", self._server)))
            return {"Authorization": request.headers["Authorization"]}
        if target.auth == "exec":
            credential = await self._current_exec_credential()
            if credential.token is not None:
                return {"Authorization": f"Bearer {credential.token}"}
        return {}

    async def _current_exec_credential(self) -> ExecCredential:
        # One lock so that concurrent calls (health runs three at once) start the plugin only once.
        async with self._exec_lock:
            credential = self._exec_credential
            if credential is not None and (
                credential.expires is None or self._now() + _EXPIRY_SKEW < credential.expires
            ):
                return credential
            if self._target.exec_spec is None:
                raise BadParameter(f"{self._server}: auth is exec but the kubeconfig has no exec section")
            self._exec_runs += 1
            credential = await run_exec_plugin(self._target.exec_spec, server=self._server, timeout=self._exec_timeout)
            pair = (credential.client_cert, credential.client_key)
            if credential.client_cert is not None and pair != self._client_pair:
                # New client certificate → new TLS context → new connection pool. The old client may still
                # carry requests in flight; it is closed with this object.
                self._retired.append(self._client)
                self._client = self._new_client(*pair)
                self._client_pair = pair
                if len(self._retired) > 2:
                    await self._retired.pop(0).aclose()
            self._exec_credential = credential
            return credential

    def _secrets(self) -> list[str]:
        target = self._target
        found = [target.token, target.password]
        if self._exec_credential is not None:
            found.append(self._exec_credential.token)
        # Very short strings would blank out ordinary words; real secrets are never that short.
        return [s for s in found if isinstance(s, str) and len(s) >= 6]

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "<redacted>")
        return text

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(_clean(_root_cause(exc)))[:_MESSAGE_LIMIT]


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes/contexts and the members of any exception group among them, outermost first."""
    found: list[BaseException] = []
    pending = [exc]
    while pending and len(found) < 50:
        current = pending.pop(0)
        if current in found:
            continue
        found.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        following = current.__cause__ or current.__context__
        if following is not None:
            pending.append(following)
    return found


def _root_cause(exc: BaseException) -> str:
    """The most telling text in an httpx error chain: httpx and httpcore wrap TLS and socket errors in
    exceptions whose own text is empty or generic ("all attempts to connect ... failed")."""
    chain = _chain(exc)
    for item in chain:
        if isinstance(item, ssl.SSLCertVerificationError) and item.verify_message:
            return f"TLS handshake failed: the server's certificate does not verify: {item.verify_message}"
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed: {re.sub(r' [(]_ssl[.]c:[0-9]+[)]$', '', str(item))}"
    for item in chain:
        if isinstance(item, OSError) and isinstance(item.errno, int):
            return os.strerror(item.errno)  # trio's own strerror repeats the address we already name
    for item in reversed(chain):
        if str(item):
            return str(item)
    return type(exc).__name__


def _clean(text: str) -> str:
    """Collapse control characters (terminal escapes, newlines) that a hostile peer could put into logs."""
    return _CONTROL_CHARS.sub(" ", text).strip()

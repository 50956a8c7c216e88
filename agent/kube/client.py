"""The agent's own HTTP client for one Kubernetes API server: the kubeconfig's TLS and credentials, JSON calls.

One :class:`KubeAPI` per served cluster, built from the :class:`KubeTarget` that ``check_kubeconfig``
produced. It is for the agent's own control-plane calls (``/version``, SelfSubjectAccessReview, ...), never
for proxying: it sends only the headers it builds itself and never forwards a caller's.

Invariants:

* TLS contexts come from :mod:`agent.kube.tls` (what the kubeconfig trusts, cached per material); a
  disabled verification is reported in :attr:`KubeAPI.warnings` (and so by health). Names are checked
  against ``tls-server-name`` when the kubeconfig sets one. Exec credentials come from
  :mod:`agent.kube.exec_plugin`, refreshed before they expire and once after a 401.
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

import json
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import trio

from agent.kube._text import MESSAGE_LIMIT, clean
from agent.kube.exec_plugin import EXEC_TIMEOUT, ExecCredential, run_exec_plugin
from agent.kube.tls import client_context
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

USER_AGENT: Final = "kubeport-agent"  # what the cluster's audit log shows for the agent's own calls
DEFAULT_TIMEOUT: Final = 10.0
MAX_RESPONSE_BYTES: Final = 8 * 1024 * 1024  # the agent's own answers are tiny; a bigger one is hostile
# An exec credential is refreshed this long before it expires, so a request never carries one that dies in
# flight.
_EXPIRY_SKEW: Final = timedelta(seconds=10)


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
        verify = client_context(target.ca_data, target.insecure, cert, key)
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
            raise BadParameter(f"a Kubernetes API path must start with a single '/', got {clean(path)[:100]!r}")
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
        text = data[: 4 * MESSAGE_LIMIT].decode("utf-8", "replace")
        try:
            document = json.loads(data) if len(data) <= 64 * 1024 else None
        except (UnicodeDecodeError, ValueError):
            document = None
        if isinstance(document, dict) and isinstance(document.get("message"), str):
            text = document["message"]
        text = self._scrub(clean(text))[:MESSAGE_LIMIT]
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

    async def exec_credential(self) -> ExecCredential:
        """The cluster's current exec-plugin credential from this client's cache (the plugin runs only when
        the cached one is missing or about to expire). The agent's forwarder uses it for proxied requests."""
        return await self._current_exec_credential()

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
        return self._scrub(clean(_root_cause(exc)))[:MESSAGE_LIMIT]


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

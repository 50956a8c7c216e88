"""Kubeconfig ``exec`` credential plugins: run one the way client-go does and parse what it prints.

Invariants:

* A plugin runs only when the kubeconfig was accepted with exec allowed (``spec.allow_exec_plugins`` or the
  agent's own kubeconfig_file); this module does not decide that, :mod:`agent.kube.client` calls it.
* argv is ``command`` + ``args``, never a shell; stdin is closed (the agent can never answer a prompt);
  stdout and stderr are capped at ``MAX_EXEC_OUTPUT``; a plugin still running after its timeout is killed.
* Every failure is a ``KubeportError`` (``Unauthenticated``, ``BadParameter`` for a bad spec, ``Timeout``);
  :class:`ExecCredential` hides its secrets from ``repr``, and text from the plugin is cleaned of control
  characters before it goes into a message.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

import trio

from agent.kube._text import MESSAGE_LIMIT, clean
from registry.core.errors import BadParameter, Timeout, Unauthenticated

EXEC_TIMEOUT: Final = 30.0
MAX_EXEC_OUTPUT: Final = 1024 * 1024


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
        raise Unauthenticated(f"{where} printed something that is not JSON ({clean(str(exc))})") from exc
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise Unauthenticated(f"{where} did not print an ExecCredential object")
    returned_version = document.get("apiVersion")
    if api_version and returned_version != api_version:
        raise Unauthenticated(
            f"{where} is configured for apiVersion {api_version!r} but returned {clean(str(returned_version))!r}"
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
        raise Unauthenticated(f"{where} returned an invalid expirationTimestamp {clean(value)!r}") from exc
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
        detail = clean(bytes(stderr[-MESSAGE_LIMIT:]).decode("utf-8", "replace")) or "no output on stderr"
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

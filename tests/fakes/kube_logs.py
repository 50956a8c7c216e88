"""``GET .../pods/<name>/log``: a container's log from :class:`~tests.fakes.kube_pods.PodRuntime`.

Faithful: ``text/plain`` body of the log lines; ``container`` resolution and its 400s; ``tailLines``,
``limitBytes``, ``timestamps`` (RFC 3339 with nanoseconds, then a space, as the kubelet writes them);
``previous=true`` is the real server's 400 (no container here ever restarted); ``follow=true`` streams
what is there, then each appended line as it is appended, until the test ends the log
(``PodRuntime.end_log``), the pod is deleted, or the client goes away.

Simplified: ``sinceSeconds``/``sinceTime`` are accepted and ignored; the log is kept, not rotated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime

import trio

from registry.server.http import Response
from tests.fakes import kube_discovery as disc
from tests.fakes.kube_paths import parse_bool
from tests.fakes.kube_pods import LogBuffer, PodRuntime, container_names, pick_container
from tests.fakes.kube_status import bad_request
from tests.fakes.kube_store import KubeStore, Obj

Render = Callable[[list[tuple[datetime, bytes]]], bytes]
_HEADERS = [("content-type", "text/plain"), ("cache-control", "no-cache, private")]


def _int_param(query: dict[str, list[str]], name: str) -> int | None:
    raw = (query.get(name) or [""])[-1]
    if raw == "":
        return None
    if not raw.lstrip("-").isdigit() or len(raw) > 18:
        raise bad_request(f'{name}: Invalid value: "{raw[:40]}": must be an integer')
    value = int(raw)
    if value < 0 or (name == "limitBytes" and value == 0):
        raise bad_request(f"{name}: Invalid value: {value}: must be greater than {0 if name == 'limitBytes' else -1}")
    return value


def _stamp(when: datetime) -> bytes:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f000Z ").encode()


def serve_log(store: KubeStore, runtime: PodRuntime, pod: Obj, query: dict[str, list[str]]) -> Response:
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    container = pick_container(pod, (query.get("container") or [""])[-1])
    if parse_bool((query.get("previous") or [""])[-1]):
        raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
    tail = _int_param(query, "tailLines")
    limit = _int_param(query, "limitBytes")
    timestamps = bool(parse_bool((query.get("timestamps") or [""])[-1]))
    first = container == (container_names(pod) or [""])[0]
    buffer = runtime.log(namespace, name, container, first=first)
    lines = buffer.lines if tail is None else buffer.lines[len(buffer.lines) - min(tail, len(buffer.lines)) :]
    start = len(buffer.lines) - len(lines)

    def render(entries: list[tuple[datetime, bytes]]) -> bytes:
        return b"".join((_stamp(when) if timestamps else b"") + line for when, line in entries)

    if not parse_bool((query.get("follow") or [""])[-1]):
        body = render(lines)
        return Response(200, list(_HEADERS), body if limit is None else body[:limit])
    uid = pod["metadata"].get("uid")
    return Response(200, list(_HEADERS), stream=_follow(store, buffer, start, render, limit, (namespace, name, uid)))


async def _follow(
    store: KubeStore,
    buffer: LogBuffer,
    start: int,
    render: Render,
    limit: int | None,
    pod: tuple[str, str, object],
) -> AsyncIterator[bytes]:
    position, sent = start, 0
    namespace, name, uid = pod
    while True:
        changed = buffer.changed
        if position < len(buffer.lines):
            chunk = render(buffer.lines[position:])
            position = len(buffer.lines)
            if limit is not None:
                chunk = chunk[: limit - sent]
            sent += len(chunk)
            yield chunk
            if limit is not None and sent >= limit:
                return
            continue
        current = store.peek(disc.PODS, namespace, name)
        if buffer.ended or current is None or current["metadata"].get("uid") != uid:
            return
        # Wake for appends and end_log; a deleted pod is noticed within a second.
        with trio.move_on_after(1.0):
            await changed.wait()

"""Calling a FakeKube in-process, without sockets or TLS.

For tests that need trio's MockClock (a watch's ``timeoutSeconds``, the token controller's delay): real
network I/O and an autojumping clock do not mix, but ``FakeKube.handle`` is an ordinary async function.
The request goes through the whole pipeline (authentication, impersonation, RBAC, the request log).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from registry.server.http import Request, Response
from tests.fakes.kube_api import FakeKube


def make_request(
    method: str,
    target: str,
    *,
    token: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    json_body: Any = None,
    peer_cert: bytes | None = None,
) -> Request:
    all_headers = [(k.lower(), v) for k, v in headers]
    if token is not None:
        all_headers.append(("authorization", f"Bearer {token}"))
    if json_body is not None:
        body = json.dumps(json_body).encode()
        if not any(k == "content-type" for k, _ in all_headers):
            all_headers.append(("content-type", "application/json"))
    split = urlsplit(target)
    return Request(
        method=method,
        target=target,
        path=split.path,
        query=parse_qs(split.query, keep_blank_values=True),
        headers=all_headers,
        body=body,
        peer_cert=peer_cert,
        client="in-process",
    )


async def call(fake: FakeKube, method: str, target: str, **kwargs: Any) -> Response:
    return await fake.handle(make_request(method, target, **kwargs))


def body_json(response: Response) -> Any:
    return json.loads(response.body)


async def read_events(response: Response, limit: int | None = None) -> list[dict[str, Any]]:
    """The watch events of a streaming response, until the stream ends (or ``limit`` events)."""
    assert response.stream is not None, "not a watch response"
    events: list[dict[str, Any]] = []
    try:
        async for chunk in response.stream:
            events.extend(json.loads(line) for line in chunk.splitlines() if line.strip())
            if limit is not None and len(events) >= limit:
                break
    finally:
        aclose = getattr(response.stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return events

"""Errors of the fake Kubernetes API, shaped and worded like the real kube-apiserver's ``Status`` bodies.

Every failure the fake answers with is a :class:`KubeStatusError`; the HTTP adapter turns it into a
``Status`` JSON body (``kind: Status, apiVersion: v1, status: Failure, message, reason, details, code``) that
kubectl prints as ``Error from server (<reason>): <message>`` and the ``kubernetes`` client raises as
``ApiException``. The messages copy the real server's wording (``namespaces "x" not found``,
``serviceaccounts "sa" already exists``, ``clusterroles.rbac.authorization.k8s.io is forbidden: ...``),
because callers and tests match on them.

:class:`PlainTextError` covers the few places where the real server answers with ``http.Error`` plain text
instead of a Status (for example impersonating groups without a user, which is a 500 there).
"""

from __future__ import annotations

from typing import Any

# The reasons the real server uses for each code when no specific constructor applies.
REASON_BY_CODE: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class KubeStatusError(Exception):
    """A failure the fake reports as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            status["details"] = self.details
        status["code"] = self.code
        return status


class PlainTextError(Exception):
    """A failure the real server writes as ``text/plain`` (Go's ``http.Error``), not as a Status."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def qualified_resource(resource: str, group: str) -> str:
    """``pods`` or ``clusterroles.rbac.authorization.k8s.io`` (Go's GroupResource.String())."""
    return f"{resource}.{group}" if group else resource


def qualified_kind(kind: str, group: str) -> str:
    """``Namespace`` or ``ClusterRole.rbac.authorization.k8s.io`` (Go's GroupKind.String())."""
    return f"{kind}.{group}" if group else kind


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = kind
    return details


def not_found(resource: str, group: str, name: str) -> KubeStatusError:
    return KubeStatusError(
        404,
        "NotFound",
        f'{qualified_resource(resource, group)} "{name}" not found',
        _details(name, group, resource),
    )


def already_exists(resource: str, group: str, name: str) -> KubeStatusError:
    return KubeStatusError(
        409,
        "AlreadyExists",
        f'{qualified_resource(resource, group)} "{name}" already exists',
        _details(name, group, resource),
    )


def conflict(resource: str, group: str, name: str, why: str) -> KubeStatusError:
    return KubeStatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified_resource(resource, group)} "{name}": {why}',
        _details(name, group, resource),
    )


STALE_OBJECT = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> KubeStatusError:
    """422 Invalid. ``causes`` are (field, cause reason, text) triples, e.g. ("metadata.name",
    "FieldValueInvalid", 'Invalid value: "A": a lowercase RFC 1123 ...')."""
    parts = [f"{field}: {text}" for field, _, text in causes]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = _details(name, group, kind)
    details["causes"] = [{"reason": reason, "message": text, "field": field} for field, reason, text in causes]
    return KubeStatusError(422, "Invalid", f'{qualified_kind(kind, group)} "{name}" is invalid: {joined}', details)


def forbidden(resource: str, group: str, name: str, message: str) -> KubeStatusError:
    """403 as ``responsewriters.Forbidden`` + ``NewForbidden`` build it."""
    if not resource:
        text = f"forbidden: {message}"
    elif name:
        text = f'{qualified_resource(resource, group)} "{name}" is forbidden: {message}'
    else:
        text = f"{qualified_resource(resource, group)} is forbidden: {message}"
    return KubeStatusError(403, "Forbidden", text, _details(name, group, resource))


def unauthorized() -> KubeStatusError:
    return KubeStatusError(401, "Unauthorized", "Unauthorized")


def bad_request(message: str) -> KubeStatusError:
    return KubeStatusError(400, "BadRequest", message)


def unknown_resource() -> KubeStatusError:
    return KubeStatusError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed() -> KubeStatusError:
    return KubeStatusError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {}
    )


def unsupported_media_type(accepted: str) -> KubeStatusError:
    return KubeStatusError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: {accepted}",
    )


def expired(requested: int, oldest: int) -> KubeStatusError:
    return KubeStatusError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def injected(code: int, message: str | None = None) -> KubeStatusError:
    """An error a test asked for with ``FakeKube.fail_next``."""
    reason = REASON_BY_CODE.get(code, "Unknown")
    return KubeStatusError(code, reason, message or f"injected failure ({code} {reason})")

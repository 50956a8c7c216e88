"""One error tree for kubeport, shaped like Kubernetes ``Status`` objects.

Every expected failure inside kubeport is a :class:`KubeportError` subclass. Each carries the HTTP code and
the Kubernetes ``reason`` it maps to, so one seam (the HTTP server) can turn any of them into a ``Status``
JSON body, and one seam (the registry client) can turn such a body back into the same exception class.
Foreign errors (OSError, yaml, httpx, ssl, trio) are mapped to this tree at the adapter that meets them and
never leak further.

Invariant: ``from_status(err.to_status())`` yields an error of the same class with the same message.
"""

from __future__ import annotations

from typing import ClassVar

from registry.core.wire import StatusBody


class KubeportError(Exception):
    """Base of every expected error. ``message`` is what a user sees after ``ERROR: ``."""

    code: ClassVar[int] = 500
    reason: ClassVar[str] = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_status(self) -> StatusBody:
        """The Kubernetes ``Status`` object for this error (what kubectl prints natively)."""
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


class BadParameter(KubeportError):
    """The input is malformed or breaks a validation rule."""

    code = 400
    reason = "BadRequest"


class Unauthenticated(KubeportError):
    """No (valid) credentials were presented."""

    code = 401
    reason = "Unauthorized"


class AccessDenied(KubeportError):
    """The caller is known but not allowed to do this."""

    code = 403
    reason = "Forbidden"


class NotFound(KubeportError):
    code = 404
    reason = "NotFound"


class AlreadyExists(KubeportError):
    code = 409
    reason = "AlreadyExists"


class CompareFailed(KubeportError):
    """An update named a revision that is no longer current (optimistic concurrency)."""

    code = 409
    reason = "Conflict"


class Compacted(KubeportError):
    """A watch asked to resume from a revision whose history was compacted: relist, then watch."""

    code = 410
    reason = "Expired"


class TooLarge(KubeportError):
    code = 413
    reason = "RequestEntityTooLarge"


class LimitExceeded(KubeportError):
    code = 429
    reason = "TooManyRequests"


class ConnectionProblem(KubeportError):
    """A peer (registry, Kubernetes API, etcd) could not be reached or answered garbage."""

    code = 503
    reason = "ServiceUnavailable"


class Timeout(KubeportError):
    code = 504
    reason = "Timeout"


_BY_REASON: dict[str, type[KubeportError]] = {
    cls.reason: cls
    for cls in (
        BadParameter,
        Unauthenticated,
        AccessDenied,
        NotFound,
        AlreadyExists,
        CompareFailed,
        Compacted,
        TooLarge,
        LimitExceeded,
        ConnectionProblem,
        Timeout,
    )
}


def from_status(status: object, http_code: int = 500) -> KubeportError:
    """Rebuild an error from a ``Status`` body; unknown shapes become a generic error naming the code."""
    if isinstance(status, dict):
        message = status.get("message")
        reason = status.get("reason")
        if isinstance(message, str):
            cls = _BY_REASON.get(reason, KubeportError) if isinstance(reason, str) else KubeportError
            return cls(message)
    return KubeportError(f"unexpected response (HTTP {http_code})")

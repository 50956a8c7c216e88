"""A Store that times every operation for ``/metrics`` (``kubeport_store_operation_duration_seconds``).

Wraps any backend without knowing it: the timed methods are the Store protocol's async calls; everything
else (``watch``, attributes) passes through unchanged. Errors that are answers (NotFound, AlreadyExists,
CompareFailed, BadParameter, Compacted) are not failures of the store; anything else is counted in
``kubeport_store_errors_total``. The registry wraps its store this way only when metrics are served.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from registry.core.errors import AlreadyExists, BadParameter, Compacted, CompareFailed, NotFound, TooLarge
from registry.host.metrics import STORE_ERRORS, STORE_SECONDS
from registry.store import Store

_TIMED = frozenset(
    {
        "get",
        "list",
        "count",
        "create",
        "create_many",
        "append_many",
        "write_many",
        "delete_many",
        "update",
        "put",
        "delete",
        "expire",
        "compact",
    }
)
_ANSWERS = (NotFound, AlreadyExists, CompareFailed, BadParameter, Compacted, TooLarge)


class InstrumentedStore:
    """``inner`` with its operations timed; use :func:`instrumented`."""

    def __init__(self, inner: Store, backend: str) -> None:
        self._inner = inner
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in _TIMED:
            return attr
        seconds = STORE_SECONDS.labels(self._backend, name)
        errors = STORE_ERRORS.labels(self._backend, name)
        call = cast(Callable[..., Awaitable[Any]], attr)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            except _ANSWERS:
                raise
            except Exception:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - start)

        self.__dict__[name] = timed  # later lookups skip __getattr__
        return timed


def instrumented(store: Store) -> Store:
    backend = str(getattr(store, "backend", type(store).__name__))
    return cast(Store, InstrumentedStore(store, backend))

"""Per-source rate limits for the routes anyone can call (sans-IO: the clock is injected).

The registry answers ``/v1/ping``, ``/v1/ca`` and ``/v1/join`` (and a 401 on everything else) to callers
without a certificate. Each of those costs something (a join signs a CSR and writes an audit event), so each
source gets a token bucket per route class; over the limit the API answers 429 with ``Retry-After``
(``registry.server.api``). Callers with a verified client certificate are not limited here.

Invariants:
- A bucket holds at most ``burst`` tokens and refills ``per_second`` tokens per second of the injected
  clock; a request takes one token or is refused with the seconds until one is available (> 0).
- Memory is bounded: at most ``max_keys`` buckets; beyond that the least recently used is forgotten.
  A forgotten bucket comes back full, which is what the least recently used one almost always is anyway
  (it had the longest to refill), so forgetting costs at most one burst per evicted source.
- The clock may stand still or jump; a clock running backwards never adds tokens.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from registry.core.errors import BadParameter

Clock = Callable[[], float]


@dataclass(frozen=True)
class Rate:
    """``burst`` requests at once, then ``per_second`` on average."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if (
            isinstance(self.per_second, bool)
            or not isinstance(self.per_second, int | float)
            or not math.isfinite(self.per_second)
            or self.per_second <= 0
        ):
            raise BadParameter(f"rate per_second must be a positive number (got {self.per_second!r})")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise BadParameter(f"rate burst must be a positive integer (got {self.burst!r})")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets keyed by (route class, source)."""

    def __init__(self, rates: Mapping[str, Rate], *, clock: Clock, max_keys: int = 10_000) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise BadParameter(f"max_keys must be a positive integer (got {max_keys!r})")
        self.rates = dict(rates)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._allowed = 0
        self._limited = 0
        self._evicted = 0

    def check(self, route_class: str, source: str) -> float:
        """Take a token: 0.0 when the request may proceed, else the seconds until it could (> 0).

        A route class without a configured rate is not limited.
        """
        rate = self.rates.get(route_class)
        if rate is None:
            return 0.0
        now = self._clock()
        key = (route_class, source)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=float(rate.burst), stamp=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
                self._evicted += 1
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(float(rate.burst), bucket.tokens + elapsed * rate.per_second)
            bucket.stamp = max(bucket.stamp, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            self._allowed += 1
            return 0.0
        self._limited += 1
        return (1.0 - bucket.tokens) / rate.per_second

    def statistics(self) -> dict[str, int]:
        return {
            "buckets": len(self._buckets),
            "allowed_total": self._allowed,
            "limited_total": self._limited,
            "evicted_total": self._evicted,
        }

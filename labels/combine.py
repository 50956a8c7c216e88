"""Combining a resource's static labels with its dynamic-label results, and printing label maps.

Invariant: both functions are pure and never mutate their inputs (Teleport's newer ``CombineLabels`` may
hand back the static map itself; here callers always get a fresh ``dict`` they may change).
"""

from __future__ import annotations

from collections.abc import Mapping


def combine(static: Mapping[str, str], dynamic: Mapping[str, str]) -> dict[str, str]:
    """All labels of a resource: ``static`` overlaid with ``dynamic``; a dynamic value wins a key conflict."""
    combined = dict(static)
    combined.update(dynamic)
    return combined


def format_labels(labels: Mapping[str, str], sep: str = ",") -> str:
    """``k=v`` pairs sorted by key and joined with ``sep``: ``env=prod,region=eu`` (``""`` when empty)."""
    return sep.join(f"{key}={value}" for key, value in sorted(labels.items()))

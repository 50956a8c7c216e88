"""Defensive readers for objects read back from a Kubernetes cluster.

Invariant: objects a cluster returns are not trusted to be well-formed (an admin may have edited them, a
proxy may have mangled them), so every nested read goes through these helpers, which return an empty value
of the expected type instead of raising on a missing key or a value of the wrong type. Pure, stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def list_at(obj: Mapping[str, Any], key: str) -> list[Any]:
    """``obj[key]`` when it is a list, else ``[]``."""
    value = obj.get(key)
    return value if isinstance(value, list) else []


def mapping_at(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``obj[key]`` when it is a mapping, else ``{}``."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def strings_at(obj: Mapping[str, Any], key: str) -> list[str]:
    """The items of the list ``obj[key]`` as strings (``[]`` when it is not a list)."""
    return [str(v) for v in list_at(obj, key)]

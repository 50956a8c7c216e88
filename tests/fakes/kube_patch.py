"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

Pure; inputs are never modified (results are fresh values). The fake applies
``application/strategic-merge-patch+json`` as a merge patch that honours the ``$patch`` directive and drops
the other ``$...`` directives: real strategic merge differs only for lists with merge keys (containers by
name, ...), which the fake replaces whole. Failures raise
:class:`PatchError`, which the server reports as 422 (a patch that does not apply) or 400 (a malformed
patch document).
"""

from __future__ import annotations

import copy
from typing import Any

MAX_JSON_PATCH_OPS = 10_000


class PatchError(ValueError):
    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A merge patch that understands strategic-merge directives enough not to store them: ``$patch:
    replace`` replaces the map, ``$patch: delete`` deletes it, ``$setElementOrder/...``, ``$retainKeys`` and
    ``$deleteFromPrimitiveList/...`` are dropped. Lists are replaced whole (no merge keys)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    clean = {k: v for k, v in patch.items() if not k.startswith("$")}
    if directive == "replace":
        return {k: strategic_merge_patch(None, v) for k, v in clean.items() if v is not None}
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in clean.items():
        if value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchError(f"path must be a string, got {type(path).__name__}", malformed=True)
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path[:100]!r} must start with '/'", malformed=True)
    return [_unescape(token) for token in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"array index {token[:40]!r} is not a number")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise PatchError(f"array index {index} is out of bounds")
    return index


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"doc is missing path: {path[:200]}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"doc is missing path: {path[:200]}")
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"doc is missing path: {path[:200]}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, for_add=False)]
    raise PatchError(f"doc is missing path: {path[:200]}")


def _add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError(f"doc is missing path: {path[:200]}")
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"doc is missing path: {path[:200]}")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, for_add=False))
    raise PatchError(f"doc is missing path: {path[:200]}")


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 ``add``, ``remove``, ``replace``, ``move``, ``copy`` and ``test``."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be an array of operations", malformed=True)
    if len(operations) > MAX_JSON_PATCH_OPS:
        raise PatchError(f"a JSON patch may hold at most {MAX_JSON_PATCH_OPS} operations", malformed=True)
    doc = copy.deepcopy(document)
    for number, op in enumerate(operations):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchError(f"operation {number} is not an object with an 'op'", malformed=True)
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise PatchError(f"operation {number} ({kind[:40]}) has no string 'path'", malformed=True)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {number} ({kind}) has no 'value'", malformed=True)
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            doc, _ = _remove(doc, path) if _pointer(path) else (doc, None)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise PatchError(f"operation {number} ({kind}) has no 'from'", malformed=True)
            if kind == "move":
                if isinstance(path, str) and path.startswith(source + "/"):
                    raise PatchError(f"cannot move {source[:100]!r} into its own child")
                doc, value = _remove(doc, source)
            else:
                value = copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path[:200]} failed")
        else:
            raise PatchError(f"unexpected kind of operation: {kind[:40]!r}", malformed=True)
    return doc

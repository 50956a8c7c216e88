"""What history may keep of a secret: nothing, once the version holding it is no longer current.

The store knows no resource schema, with two exceptions: the label filter (``metadata.labels``) and this
table of secrets. These kinds hold secrets: a ``kube_cluster``'s ``spec.kubeconfig`` (a cluster credential),
an ``oidc`` connector's ``spec.client_secret``, a ``token`` and a ``signup_token``, whose *name* is the secret
value (Teleport's provision tokens; the signup token also holds the TOTP secret to enroll), and
``local_credentials`` (a local user's password hash, TOTP secret and failure counters: history keeps none of
them once superseded).

Invariants (kept by the planner, ``_plan``, for every backend):

* The current version of a record keeps its secrets, in the live table and in its own history entry (a
  watcher replaying history gets the current kubeconfig from it; the live table has it anyway).
* When a version stops being current (update, put, delete, expiry), its history entry is rewritten without
  secrets (:func:`redact`), and a DELETE entry never carries them: after a rotation or a delete, neither a
  watch from revision 0 nor the database file shows the old kubeconfig or the deleted token's value. A
  replayed PUT of a superseded version therefore has no kubeconfig; the same replay always goes on to the
  newer version of that record (a later PUT with the secret, or a DELETE).
* Revisions, types, kinds, expiry and labels are never changed by redaction, so watch resume (no gap, no
  duplicate) is untouched; only a token's name is replaced (by its mask, as the audit log shows it).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from registry.core.resources import mask_token

if TYPE_CHECKING:
    from registry.store._plan import Item

# kind -> paths (within the value) of secret fields
SECRET_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "kube_cluster": (("spec", "kubeconfig"),),
    "oidc": (("spec", "client_secret"),),  # an OIDC connector's client secret
    # a local user's password hash, TOTP secret and failure counters (registry.server.local_auth)
    "local_credentials": (("password_hash",), ("totp_secret",), ("failures",), ("locked_until",), ("last_totp_step",)),
    "signup_token": (("totp_secret",),),
}
# kinds whose record name is itself a secret
SECRET_NAMES: frozenset[str] = frozenset({"token", "signup_token"})


def has_secrets(kind: str) -> bool:
    return kind in SECRET_FIELDS or kind in SECRET_NAMES


def redact(item: Item) -> Item | None:
    """``item`` without its secrets, or None when it holds none (the common case costs no decoding)."""
    if not has_secrets(item.kind):
        return None
    value: dict[str, Any] = json.loads(item.data)
    changed = False
    for path in SECRET_FIELDS.get(item.kind, ()):
        changed |= _drop(value, path)
    name = item.name
    if item.kind in SECRET_NAMES:
        name = mask_token(item.name)
        metadata = value.get("metadata")
        if isinstance(metadata, dict) and "name" in metadata:
            metadata["name"] = name
        changed = True
    if not changed:
        return None
    data = json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    return replace(item, name=name, data=data)


def without_secret_fields(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored wire dict without its secret fields (the API's answer without ``with_secrets``);
    the dicts on the way to a secret field are copied, never the caller's changed."""
    paths = SECRET_FIELDS.get(kind, ())
    if not paths:
        return value
    out = dict(value)
    for path in paths:
        node = out
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                break
            node[key] = node = dict(child)
        else:
            node.pop(path[-1], None)
    return out


def _drop(value: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = value
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False

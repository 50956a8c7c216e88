"""What the mint writes: the service-account kubeconfig and the ``kube_cluster`` resource that embeds it.

Invariants: the kubeconfig has the original script's structure key for key and holds only a static token
(which the registry accepts); the ``kube_cluster`` document is validated by the registry's own codec, exactly
as ``kpctl create`` validates it, and ``check_written`` runs the registry's own kubeconfig check, so what is
written is what the registry will accept. Pure apart from the lazily imported registry modules; no file I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import yaml

from registry.core.errors import KubeportError


def render_kubeconfig(
    *,
    context: str,
    cluster: str,
    server: str,
    ca_data_b64: str,
    user: str,
    token: str,
    tls_server_name: str | None = None,
) -> bytes:
    """The original's kubeconfig (§6 step 10), key for key; ``tls-server-name`` is kept when the admin's
    kubeconfig needed one, since the API server would otherwise fail certificate verification."""
    cluster_entry: dict[str, Any] = {"certificate-authority-data": ca_data_b64, "server": server}
    if tls_server_name:
        cluster_entry["tls-server-name"] = tls_server_name
    doc = {
        "apiVersion": "v1",
        "clusters": [{"cluster": cluster_entry, "name": cluster}],
        "contexts": [{"context": {"cluster": cluster, "user": user}, "name": context}],
        "current-context": context,
        "kind": "Config",
        "preferences": {},
        "users": [{"name": user, "user": {"token": token}}],
    }
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).encode()


def kube_cluster_document(name: str, labels: Mapping[str, str], kubeconfig: bytes) -> dict[str, Any]:
    """The kube_cluster resource, validated exactly as ``kpctl create`` validates it."""
    from registry.core import codec

    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    doc: dict[str, Any] = {"kind": "kube_cluster", "version": "v3", "metadata": metadata, "spec": {}}
    if kubeconfig:
        doc["spec"]["kubeconfig"] = base64.b64encode(kubeconfig).decode()
    resource = codec.resource_from_dict(doc)  # its messages name the kube_cluster already
    wire: dict[str, Any] = codec.resource_to_dict(resource, with_secrets=True)
    return wire


def check_written(kubeconfig: bytes, kube_cluster: str | None, warn: Callable[[str], None]) -> datetime | None:
    """Run the registry's own kubeconfig check: an error when a kube_cluster (``kube_cluster``, its name) was
    asked for (it would be rejected), a warning otherwise. Returns the token's expiry (UTC) when it has one."""
    from registry.core.kubeconfig import check_kubeconfig

    name = kube_cluster or "kubeconfig"
    try:
        target = check_kubeconfig(kubeconfig, cluster_name=name)
    except KubeportError as exc:
        if kube_cluster is not None:
            raise
        warn(f"kpctl create would reject this kubeconfig: {exc.message}")
        return None
    expires = target.credential_expires
    for note in target.warnings:
        # The token's expiry is reported on its own line with what to do about it; do not say it twice.
        if expires is None or "expire" not in note:
            warn(note)
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires.astimezone(UTC) if expires is not None else None

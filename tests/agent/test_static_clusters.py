"""The agent's own kubeconfig_file may name local files (as in Teleport): they are embedded before the
kubeconfig is checked, so static clusters work while kube_cluster resources still may not read files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.static_clusters import load_static_clusters
from registry.core.errors import BadParameter
from registry.core.kubeconfig import check_kubeconfig
from tests.helpers import sample_ca_pem


def write_kubeconfig(tmp_path: Path, *, token_file: str, ca_file: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": ca_file}}],
        "users": [{"name": "u", "user": {"tokenFile": token_file}}],
        "contexts": [{"name": "prod-ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "prod-ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_relative_and_absolute_file_references_are_embedded(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-token-value\n")
    ca = tmp_path / "ca.pem"
    ca_pem = sample_ca_pem()
    ca.write_bytes(ca_pem)
    path = write_kubeconfig(tmp_path, token_file="token", ca_file=str(ca))
    (cluster,) = load_static_clusters(path)
    assert cluster.name == "prod-ctx"
    assert cluster.metadata.labels["kubeport.dev/origin"] == "config-file"
    target = check_kubeconfig(cluster.kubeconfig, cluster_name=cluster.name)
    assert target.token == "file-token-value"
    assert target.ca_data == ca_pem


def test_missing_referenced_file_is_a_clear_error(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path, token_file="missing-token", ca_file="missing-ca.pem")
    with pytest.raises(BadParameter, match="missing"):
        load_static_clusters(path)

"""Where kubeport keeps state on a host; shared by the daemons and the command lines (no heavy imports)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ADMIN_IDENTITY = "admin.identity"
STORE_FILE = "registry.db"
CA_PIN_FILE = "ca.pin"  # the cluster CA's pin, written beside the store: proof this data dir already had a CA


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$KUBEPORT_DATA_DIR``, else /var/lib/kubeport for root, else ~/.kubeport."""
    env = os.environ if env is None else env
    if env.get("KUBEPORT_DATA_DIR"):
        return Path(env["KUBEPORT_DATA_DIR"]).expanduser()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/kubeport")
    return Path.home() / ".kubeport"

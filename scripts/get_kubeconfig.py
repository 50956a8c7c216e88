"""Mint a service-account kubeconfig for kubeport (a port of Teleport's get-kubeconfig.sh).

    python scripts/get_kubeconfig.py [--kube-cluster NAME [--labels k=v,...] [--register]] [--help]

A launcher only: the code is ``registry.mint.cli`` (also installed as the
``kubeport-get-kubeconfig`` command). Run from a checkout, it puts the repository root on ``sys.path`` so
the package need not be installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if (_ROOT / "registry" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from registry.mint.cli import main  # noqa: E402  (needs the path set up above)

if __name__ == "__main__":
    sys.exit(main())

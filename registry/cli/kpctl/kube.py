"""kpctl kube explain: which agents serve a kube_cluster and why the others do not (the code is
:mod:`registry.cli.kube_cmd`, shared with ``kubeport kube ls``)."""

from __future__ import annotations

from registry.cli import kube_cmd
from registry.cli.kpctl.flags import SubParsers, command, group


def add_commands(sub: SubParsers) -> None:
    ksub = group(sub, "kube", "Kubernetes cluster diagnostics")
    p = command(
        ksub,
        "explain",
        "show which agents serve a kube_cluster and, for each that does not, the selector item and label that "
        "failed (or the registration error it reported)",
        kube_cmd.cmd_kube_explain,
    )
    p.add_argument("name", metavar="NAME")

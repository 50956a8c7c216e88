"""The console scripts' entry points (``kubeport``, ``kpctl``, ``kubeport-get-kubeconfig``).

They exist for one reason: Ctrl-C while the command is still importing its modules (half a second or more
on a busy host) would otherwise end in a ``KeyboardInterrupt`` traceback. Here it exits 130, quietly, as
an interrupted program does. Once ``main`` runs, ``registry.host.cmdline.run_command`` handles Ctrl-C. This
module imports nothing heavy, so the window it cannot cover is Python's own start-up.
"""

from __future__ import annotations

import importlib
import sys

INTERRUPTED = 130


def _run(module: str) -> int:
    try:
        main = importlib.import_module(module).main
        return int(main())
    except KeyboardInterrupt:
        return INTERRUPTED


def kubeport() -> int:
    if sys.argv[1:3] == ["kube", "credentials"]:
        # kubectl's exec plugin runs on every kubectl call: answer before importing trio, the agent and the
        # server (registry.cli.kube_credentials reads one file and prints).
        try:
            from registry.cli import kube_credentials

            return kube_credentials.run(sys.argv[3:])
        except KeyboardInterrupt:
            return INTERRUPTED
    return _run("registry.cli.kubeport_main")


def kpctl() -> int:
    return _run("registry.cli.kpctl")


def get_kubeconfig() -> int:
    return _run("registry.mint.cli")


_PROGRAMS = {"kubeport": kubeport, "kpctl": kpctl, "kubeport-get-kubeconfig": get_kubeconfig}


def _dispatch() -> int:
    """``python -m registry.cli.entry PROGRAM ARGS...``: exactly what the console script PROGRAM runs."""
    if len(sys.argv) < 2 or sys.argv[1] not in _PROGRAMS:
        print(f"usage: python -m registry.cli.entry {{{','.join(_PROGRAMS)}}} ARGS...", file=sys.stderr)
        return 2
    program = _PROGRAMS[sys.argv[1]]
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    return program()


if __name__ == "__main__":
    sys.exit(_dispatch())

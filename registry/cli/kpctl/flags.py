"""What every kpctl command group shares: the global flags on every parser, how a group and a subcommand
are declared, and Go-duration flags (``--ttl``)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any, TypeAlias

from labels import parse_go_duration
from registry.core.errors import BadParameter
from registry.core.validation import label_errors
from registry.host.cmdline import add_connection_flags, add_debug_flag, set_command

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

FLAGS_EPILOG = (
    "Connection flags (--registry, --identity, --data-dir) and --debug may come before or after the command; "
    "given twice, the last one wins."
)


def duration(text: str, what: str) -> timedelta:
    with label_errors(subject=what):
        seconds = parse_go_duration(text)
    if seconds <= 0:
        raise BadParameter(f"{what} must be positive (got {text!r})")
    return timedelta(seconds=seconds)


def global_flags(parser: argparse.ArgumentParser) -> None:
    """Every parser in kpctl's tree takes the connection and debug flags, so they work in any position."""
    add_connection_flags(parser)
    add_debug_flag(parser)


def group(subparsers: SubParsers, name: str, help_text: str) -> SubParsers:
    """A command group (``tokens``, ``auth``, ``kube``) and its subcommands."""
    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=FLAGS_EPILOG)
    global_flags(p)
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def command(subparsers: SubParsers, name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
    """A subcommand that talks to the registry: connection and debug flags, and the function to run."""
    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=FLAGS_EPILOG)
    global_flags(p)
    set_command(p, func)
    return p

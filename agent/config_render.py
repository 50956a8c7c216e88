"""``render_config``: the annotated agent configuration file that ``kubeport configure`` writes.

Invariants:

* Every string the caller passes is emitted as one YAML double-quoted scalar by the YAML emitter itself, so
  no argument (a token with a newline, a path with a quote) can add keys or sections to the file.
* With ``resources_all`` (the default) the rendered text is run through :func:`agent.config.parse_config`
  before it is returned: a file this module returns is one the agent accepts.
* No file is read or written; the caller decides where the text goes (and with which permissions, as
  it may hold the join token).
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from agent.config import parse_config


def _yaml_str(value: str) -> str:
    """``value`` as one YAML double-quoted scalar: every line break and quote is escaped by the emitter
    itself, so no argument can add keys to the rendered file."""
    return yaml.safe_dump(value, default_style='"', width=1 << 30, allow_unicode=False).rstrip("\n")


_HEADER = """\
# kubeport agent configuration (written by `kubeport configure`).
#
# kubeport:            how this agent reaches and trusts the registry.
#   registry           host:port of the registry (port 3025 if omitted); several registries sharing one
#                      store as "a:3025,b:3025" or a YAML list: the agent fails over along them.
#   token / token_file the join token, needed only for the first start; afterwards the agent's
#                      identity lives in data_dir and the token may be removed.
#   ca_pin             sha256 pin(s) of the registry CA; the agent refuses a registry whose CA differs.
#   data_dir           where the agent keeps its identity (default /var/lib/kubeport or $KUBEPORT_DATA_DIR).
#   nodename, heartbeat_ttl, log_level are optional (defaults: host name, 10m, info).
#
# kubernetes_service:  what this agent serves; the field names are Teleport's.
#   listen_addr        where kubectl traffic arrives (default 0.0.0.0:3027); public_addr is what clients dial.
#   kubeconfig_file    optional: every context in it becomes a static cluster.
#   labels, commands   labels added to every cluster this agent serves (commands: name, command, period).
#   resources          which registered kube_clusters to serve: any item may match; within an item every
#                      label must match. {"*": "*"} serves them all.
#   allowed_label_commands
#                      the programs a kube_cluster's dynamic labels (written in the registry, not here)
#                      may run on this host, e.g. [python3, /usr/bin/uname]. Default: none, so such a label
#                      shows "command not allowed on this agent" and runs nothing. Bare names are looked
#                      up on PATH when the agent starts. Allowing an interpreter (python3, sh) lets anyone
#                      granted kube_cluster_dynamic_labels in the registry run any code with it here.
"""


def render_config(
    *,
    registry: str,
    token: str | None,
    token_file: str | None,
    ca_pins: Sequence[str],
    data_dir: str,
    resources_all: bool = True,
    allowed_label_commands: Sequence[str] = (),
) -> str:
    """The annotated YAML that ``kubeport configure`` writes.

    With ``resources_all`` the agent serves every registered cluster (``resources: [{labels: {"*": "*"}}]``)
    and the result is checked with :func:`parse_config` before it is returned, so a bad argument fails here
    and not at the agent's first start. Without it, the selector is left as a commented example: the
    administrator must choose labels (or a kubeconfig_file) before the agent will start.
    ``allowed_label_commands`` is written as given; without any, a commented example is written instead.
    """
    lines = [_HEADER, "version: v1", "kubeport:", f"  registry: {_yaml_str(registry)}"]
    if token is not None:
        lines.append(f"  token: {_yaml_str(token)}")
    if token_file is not None:
        lines.append(f"  token_file: {_yaml_str(token_file)}")
    if ca_pins:
        lines.append("  ca_pin:")
        lines.extend(f"  - {_yaml_str(pin)}" for pin in ca_pins)
    lines += [f"  data_dir: {_yaml_str(data_dir)}", "kubernetes_service:", '  enabled: "yes"']
    if resources_all:
        lines.append('  resources: [{labels: {"*": "*"}}]')
    else:
        lines += [
            "  # Choose the clusters to serve, then remove the # signs, e.g.:",
            "  # resources:",
            "  # - labels:",
            '  #     env: "prod"',
        ]
    if allowed_label_commands:
        lines.append("  allowed_label_commands:")
        lines.extend(f"  - {_yaml_str(program)}" for program in allowed_label_commands)
    else:
        lines += [
            "  # Programs kube_cluster dynamic labels may run here (default: none), e.g.:",
            "  # allowed_label_commands: [python3, /usr/bin/uname]",
        ]
    text = "\n".join(lines) + "\n"
    if resources_all:
        parse_config(text, source="generated config", env={})
    return text

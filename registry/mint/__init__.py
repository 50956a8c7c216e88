"""Mint a service-account kubeconfig: the logic behind ``kubeport-get-kubeconfig`` (a port of Teleport's
``examples/k8s-auth/get-kubeconfig.sh``); the command-line front end is ``registry.mint.cli``.

Modules, leaves first:

* ``shapes``: defensive readers for objects that come back from a cluster (``list_at``, ``mapping_at``);
* ``names``: validation of namespace / service-account / RBAC names and parsing of ``--labels``;
* ``rbac``: the original's ClusterRole rules and how stored rules and binding subjects compare to them;
* ``source``: the admin's kubeconfig, found and merged kubectl's way, reduced to the chosen context;
* ``kubeconfig_out``: what is written: the minted kubeconfig and the ``kube_cluster`` resource;
* ``kube``: the one adapter over the ``kubernetes`` client, and the mapping of its errors;
* ``steps``: the idempotent create-or-update steps in the cluster and the wait for the token.

Invariants shared by the package:

* every expected failure is a ``registry.core.errors.KubeportError`` whose message is one readable line;
  client, urllib3 and ssl exceptions are translated in ``kube`` and nowhere else;
* the steps read before they write and write only what differs, so a second run changes nothing;
* nothing an admin added to the ClusterRole or ClusterRoleBinding is removed without ``force``;
* nothing here writes files or prints: callers pass ``say``/``warn`` and decide what to write.
"""

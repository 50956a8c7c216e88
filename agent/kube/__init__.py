"""The agent's own connection to a Kubernetes API server (control-plane calls: version, access reviews).

``client`` (:class:`~agent.kube.client.KubeAPI`, the HTTP client) builds on ``tls`` (client TLS contexts
from a kubeconfig's material) and ``exec_plugin`` (kubeconfig exec credential plugins).
"""

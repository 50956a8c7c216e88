"""kubeport's agent: joins the registry, watches kube_clusters, serves the ones its selectors match."""

"""Dev/test tooling: a real local Kubernetes control plane with fake GKE GPU nodes (kwok).

Imports nothing else of `llmforge`; the operator never imports this package.
  assets      where the Go-built binaries are (scripts/build-k8s.sh builds them)
  nodes       pure: fake GKE GPU Node manifests
  cluster     LocalCluster: etcd, kube-apiserver, controller-manager, scheduler, kwok
  persistent  up/down/status of a dev cluster that outlives the command, and main(argv)
"""

from .cluster import ClusterStartError, LocalCluster
from .persistent import down, main, status, up

__all__ = ["ClusterStartError", "LocalCluster", "down", "main", "status", "up"]

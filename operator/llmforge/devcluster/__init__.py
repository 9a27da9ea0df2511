"""Dev/test tooling: a real local Kubernetes control plane with fake GKE GPU nodes (kwok).

Imports nothing else of `llmforge`; the operator never imports this package.
  assets      where the Go-built binaries are (scripts/build-k8s.sh builds them)
  nodes       pure: fake GKE GPU Node manifests
  cluster     LocalCluster: etcd, kube-apiserver, controller-manager, scheduler, kwok
  persistent  up/down/status of a dev cluster that outlives the command, and main(argv)
  realnode    RealNode: a real node (containerd, runc, kubelet, kube-proxy) joined to a LocalCluster (root only;
              realnode_config renders its configs, realnode_host records and undoes what it changes on the host)
  oci         a stdlib writer of one-layer OCI image archives (the pause and test images)
  images      the trainer, server and operator images built here with buildah (`make images`)
  demo        `make demo`; nodedemo: `make demo-node`, the same flow in the real images on a real node
"""

from .cluster import ClusterStartError, LocalCluster
from .persistent import down, main, status, up

__all__ = ["ClusterStartError", "LocalCluster", "down", "main", "status", "up"]

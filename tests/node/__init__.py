"""Node tier: a real kubelet, containerd and kube-proxy on this host (root only; see docs/real-node.md)."""

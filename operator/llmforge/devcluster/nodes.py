"""Fake GKE GPU nodes for kwok: pure functions from a machine shape to a Node manifest (a dict).

The labels, taint and extended resource match what GKE puts on GPU node pools, so the operator's
placement (nodeSelector on `cloud.google.com/gke-accelerator`, the `nvidia.com/gpu` toleration,
spot preference) is exercised by the real kube-scheduler. kwok manages only nodes annotated
`kwok.x-k8s.io/node: fake`, so a real node sharing the API server is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GPU_LABEL = "cloud.google.com/gke-gpu"
SPOT_LABEL = "cloud.google.com/gke-spot"
NODEPOOL_LABEL = "cloud.google.com/gke-nodepool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
ZONE = "us-central1-a"


@dataclass(frozen=True)
class NodeShape:
    """One machine: capacity is the machine, allocatable is what GKE leaves after system reservations."""

    name: str
    machine_type: str
    cpu: int  # vCPUs
    memory_gib: int
    accelerator: str | None = None  # GKE accelerator label value; None for a CPU-only node
    gpus: int = 0
    spot: bool = False
    pods: int = 110


# Real GKE machine shapes (cores, memory, GPUs per machine type).
DEFAULT_SHAPES: tuple[NodeShape, ...] = (
    NodeShape("gke-l4-0", "g2-standard-8", 8, 32, "nvidia-l4", 1),
    NodeShape("gke-l4-spot-0", "g2-standard-24", 24, 96, "nvidia-l4", 2, spot=True),
    NodeShape("gke-a100-spot-0", "a2-highgpu-2g", 24, 170, "nvidia-tesla-a100", 2, spot=True),
    NodeShape("gke-a100-80gb-0", "a2-ultragpu-1g", 12, 170, "nvidia-a100-80gb", 1),
    NodeShape("gke-h100-0", "a3-highgpu-8g", 208, 1872, "nvidia-h100-80gb", 8),
    NodeShape("gke-cpu-0", "e2-standard-8", 8, 32),
)


def allocatable(shape: NodeShape) -> dict[str, str]:
    """GKE reserves some CPU and memory for the kubelet and system daemons; approximate it."""
    reserved_milli = 100 if shape.cpu <= 8 else 200
    reserved_mib = max(1024, shape.memory_gib * 1024 // 20)  # ~5%, at least 1 GiB
    res = {
        "cpu": f"{shape.cpu * 1000 - reserved_milli}m",
        "memory": f"{shape.memory_gib * 1024 - reserved_mib}Mi",
        "pods": str(shape.pods),
        "ephemeral-storage": "90Gi",
    }
    if shape.gpus:
        res[GPU_RESOURCE] = str(shape.gpus)
    return res


def capacity(shape: NodeShape) -> dict[str, str]:
    res = {
        "cpu": str(shape.cpu),
        "memory": f"{shape.memory_gib}Gi",
        "pods": str(shape.pods),
        "ephemeral-storage": "100Gi",
    }
    if shape.gpus:
        res[GPU_RESOURCE] = str(shape.gpus)
    return res


def node_pool(shape: NodeShape) -> str:
    kind = shape.accelerator or "cpu"
    return f"{kind}-{'spot' if shape.spot else 'ondemand'}-pool"


def node_manifest(shape: NodeShape, internal_ip: str | None = None) -> dict:
    """A v1 Node for kwok, shaped like a GKE node of this machine type."""
    if bool(shape.accelerator) != bool(shape.gpus):
        raise ValueError(f"{shape.name}: accelerator and gpus must be set together")
    labels = {
        "type": "kwok",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": shape.name,
        "node.kubernetes.io/instance-type": shape.machine_type,
        "topology.kubernetes.io/region": ZONE.rsplit("-", 1)[0],
        "topology.kubernetes.io/zone": ZONE,
        NODEPOOL_LABEL: node_pool(shape),
    }
    taints = []
    if shape.accelerator:
        labels[ACCELERATOR_LABEL] = shape.accelerator
        labels[GPU_LABEL] = "true"
        taints.append(dict(GPU_TAINT))
    if shape.spot:
        labels[SPOT_LABEL] = "true"
    status: dict = {"allocatable": allocatable(shape), "capacity": capacity(shape)}
    if internal_ip:
        # kwok keeps addresses it finds; without them `kubectl get nodes -o wide` shows <none>.
        status["addresses"] = [{"type": "InternalIP", "address": internal_ip},
                               {"type": "Hostname", "address": shape.name}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": shape.name,
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE, "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints} if taints else {},
        "status": status,
    }


def default_nodes(shapes: tuple[NodeShape, ...] = DEFAULT_SHAPES) -> list[dict]:
    """The fake fleet LocalCluster creates: L4 (on-demand and spot), A100 40/80 GB, H100, one CPU node."""
    names = [s.name for s in shapes]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate node names in {names}")
    # GKE's default VPC subnet in us-central1 is 10.128.0.0/20.
    return [node_manifest(s, f"10.128.0.{10 + i}") for i, s in enumerate(shapes)]

"""The fake GKE fleet: labels, taints and resources the operator's placement relies on."""

import pytest

from llmforge.devcluster import nodes
from llmforge.devcluster.nodes import NodeShape, default_nodes, node_manifest

ACCELERATORS = {"nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb"}


def by_name():
    return {n["metadata"]["name"]: n for n in default_nodes()}


def labels(n):
    return n["metadata"]["labels"]


def test_fleet_covers_every_accelerator_a_spot_node_and_a_cpu_node():
    fleet = default_nodes()
    accels = {labels(n).get(nodes.ACCELERATOR_LABEL) for n in fleet} - {None}
    assert accels == ACCELERATORS
    assert sum(labels(n).get(nodes.SPOT_LABEL) == "true" for n in fleet) >= 1
    cpu_only = [n for n in fleet if nodes.ACCELERATOR_LABEL not in labels(n)]
    assert len(cpu_only) == 1


def test_every_node_is_kwok_managed():
    fleet = default_nodes()
    assert len(fleet) >= 5
    for n in fleet:
        assert n["apiVersion"] == "v1" and n["kind"] == "Node"
        assert n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        assert labels(n)["type"] == "kwok"
        assert labels(n)["kubernetes.io/hostname"] == n["metadata"]["name"]


def test_gpu_nodes_have_gke_labels_taint_and_gpu_resources():
    gpu_nodes = [n for n in default_nodes() if nodes.ACCELERATOR_LABEL in labels(n)]
    assert len(gpu_nodes) >= 4
    for n in gpu_nodes:
        assert labels(n)["cloud.google.com/gke-gpu"] == "true"
        assert n["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
        gpus = int(n["status"]["allocatable"]["nvidia.com/gpu"])
        assert gpus >= 1
        assert n["status"]["capacity"]["nvidia.com/gpu"] == str(gpus)


def test_gpu_counts_match_machine_shapes():
    fleet = by_name()
    gpus = {name: n["status"]["capacity"].get("nvidia.com/gpu") for name, n in fleet.items()}
    assert gpus == {
        "gke-l4-0": "1",
        "gke-l4-spot-0": "2",
        "gke-a100-spot-0": "2",
        "gke-a100-80gb-0": "1",
        "gke-h100-0": "8",
        "gke-cpu-0": None,
    }
    assert labels(fleet["gke-h100-0"])["node.kubernetes.io/instance-type"] == "a3-highgpu-8g"


def test_cpu_node_has_no_gpu_label_taint_or_resource():
    n = by_name()["gke-cpu-0"]
    assert nodes.GPU_LABEL not in labels(n)
    assert nodes.SPOT_LABEL not in labels(n)
    assert "taints" not in n["spec"]
    assert "nvidia.com/gpu" not in n["status"]["allocatable"]
    assert n["status"]["capacity"]["cpu"] == "8"


def test_spot_label_only_on_spot_nodes():
    fleet = by_name()
    assert labels(fleet["gke-l4-spot-0"])[nodes.SPOT_LABEL] == "true"
    assert nodes.SPOT_LABEL not in labels(fleet["gke-l4-0"])
    assert labels(fleet["gke-l4-spot-0"])[nodes.NODEPOOL_LABEL] == "nvidia-l4-spot-pool"


def test_allocatable_is_below_capacity():
    shape = NodeShape("n", "a2-ultragpu-1g", 12, 170, "nvidia-a100-80gb", 1)
    alloc, cap = nodes.allocatable(shape), nodes.capacity(shape)
    assert alloc["cpu"] == "11800m" and cap["cpu"] == "12"
    assert int(alloc["memory"].removesuffix("Mi")) < 170 * 1024
    assert alloc["pods"] == cap["pods"] == "110"


def test_accelerator_without_gpus_is_rejected():
    with pytest.raises(ValueError, match="together"):
        node_manifest(NodeShape("bad", "g2-standard-8", 8, 32, "nvidia-l4", 0))


def test_duplicate_names_rejected():
    shape = NodeShape("dup", "e2-standard-8", 8, 32)
    with pytest.raises(ValueError, match="duplicate"):
        default_nodes((shape, shape))


def test_manifests_are_fresh_objects():
    a, b = default_nodes(), default_nodes()
    a[0]["spec"]["taints"].append({"key": "x", "effect": "NoSchedule"})
    assert len(b[0]["spec"]["taints"]) == 1


def test_default_nodes_have_distinct_internal_ips():
    fleet = default_nodes()
    ips = [a["address"] for n in fleet for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
    assert len(ips) == len(fleet) == len(set(ips))
    assert all(ip.startswith("10.128.0.") for ip in ips)

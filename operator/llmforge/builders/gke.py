"""GKE placement for GPU pods: accelerator choice, nodeSelector, tolerations and resources sized to the node.

Pure. Shared by every builder that schedules onto GPU nodes (serving today; the FineTuneJob builder is
expected to bring its own equivalent — when it lands, keep one of the two and point the other at it).
The label and taint names are GKE's (FINDINGS §8); `llmforge.devcluster.nodes` builds fake nodes with
the same names, so the real kube-scheduler checks this placement in the k8s tests.
"""

from __future__ import annotations

import re
from typing import Any

from ..api.common import Resources

ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
SPOT_LABEL = "cloud.google.com/gke-spot"
GPU_RESOURCE = "nvidia.com/gpu"

#: CPU and memory requested per GPU, leaving room for system daemons on the GKE machine that carries
#: that GPU (g2-standard-8: 8 vCPU/32 GiB per L4; a2-highgpu: 12/85 per A100; a2-ultragpu: 12/170;
#: a3-highgpu-8g: 26/234 per H100; n1-standard-8 + T4). `cpu`: a pod on an e2-standard-8.
PER_GPU_REQUESTS: dict[str, tuple[str, int]] = {  # accelerator: (cpu, memory GiB)
    "nvidia-tesla-t4": ("6", 24),
    "nvidia-l4": ("6", 24),
    "nvidia-tesla-a100": ("10", 70),
    "nvidia-a100-80gb": ("10", 140),
    "nvidia-h100-80gb": ("24", 200),
    "cpu": ("4", 16),
}

_PARAMS = re.compile(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])")


def model_billions(name: str | None) -> float | None:
    """Parameter count in billions read from a model id like meta-llama/Llama-3.1-8B-Instruct."""
    if not name:
        return None
    found = _PARAMS.findall(name.rsplit("/", 1)[-1])
    return float(found[-1]) if found else None


def serving_accelerator(resources: Resources, model_name: str | None) -> str:
    """The accelerator to serve on: the one asked for, or for `auto` the cheapest whose memory holds bf16
    weights (2 bytes/param) plus ~30% KV cache across `count` GPUs."""
    if resources.accelerator != "auto":
        return resources.accelerator
    billions = model_billions(model_name) or 8.0
    need_gb = billions * 2 * 1.3 / resources.count
    for accelerator, memory_gb in (("nvidia-l4", 24), ("nvidia-tesla-a100", 40), ("nvidia-a100-80gb", 80),
                                   ("nvidia-h100-80gb", 80)):
        if need_gb <= memory_gb:
            return accelerator
    return "nvidia-h100-80gb"


def node_placement(accelerator: str, spot: bool) -> dict[str, Any]:
    """nodeSelector and tolerations for a pod spec (merge into it)."""
    if accelerator == "cpu":
        selector: dict[str, str] = {}
        tolerations: list[dict[str, str]] = []
    else:
        selector = {ACCELERATOR_LABEL: accelerator}
        tolerations = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if spot:
        selector[SPOT_LABEL] = "true"
        # GKE may taint spot pools (not confirmed for Standard clusters): tolerate it either way.
        tolerations.append({"key": SPOT_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"})
    out: dict[str, Any] = {}
    if selector:
        out["nodeSelector"] = selector
    if tolerations:
        out["tolerations"] = tolerations
    return out


def container_resources(resources: Resources, accelerator: str) -> dict[str, Any]:
    """requests/limits: CPU and memory sized to the node shape (or the spec's overrides), GPUs as limits."""
    cpu, mem_gib = PER_GPU_REQUESTS.get(accelerator, PER_GPU_REQUESTS["nvidia-l4"])
    gpus = 1 if accelerator == "cpu" else resources.count
    cpu_req = resources.cpu or str(int(cpu) * gpus)
    mem_req = resources.memory or f"{mem_gib * gpus}Gi"
    requests = {"cpu": cpu_req, "memory": mem_req}
    limits: dict[str, str] = {"memory": mem_req}
    if accelerator != "cpu":
        requests[GPU_RESOURCE] = str(resources.count)
        limits[GPU_RESOURCE] = str(resources.count)
    return {"requests": requests, "limits": limits}


def gpu_count(accelerator: str, resources: Resources) -> int:
    """GPUs per replica (0 on cpu)."""
    return 0 if accelerator == "cpu" else resources.count


#: Used only until the shared price table (`llmforge.pricing`, FineTuneJob branch) is merged: the same
#: us-central1 list prices, USD per GPU-hour with the machine's share (FINDINGS §8), (on-demand, spot).
_FALLBACK_RATES: dict[str, tuple[float, float]] = {
    "nvidia-l4": (0.854, 0.341), "nvidia-tesla-a100": (3.673, 1.443), "nvidia-h100-80gb": (10.979, 6.571),
    "nvidia-a100-80gb": (5.069, 2.000), "nvidia-tesla-t4": (0.730, 0.220), "cpu": (0.268, 0.107),
}
_FALLBACK_SOURCE = "GKE us-central1 list prices (built-in snapshot), 2026-11-26"


def gpu_hour_rate(accelerator: str, spot: bool, prices: Any = None) -> tuple[float, str]:
    """(USD per GPU-hour — per pod-hour on cpu —, pricing source). `prices`: a `llmforge.pricing.PriceTable`
    (e.g. with the cluster's ConfigMap overlaid); default: the built-in table."""
    if prices is None:
        try:
            from ..pricing import DEFAULT_PRICES as prices  # noqa: N811
        except ImportError:
            prices = None
    if prices is not None:
        try:
            return prices.rate(accelerator, spot), prices.label
        except KeyError:
            return 0.0, f"no price for {accelerator}"
    on_demand, spot_rate = _FALLBACK_RATES.get(accelerator, (0.0, 0.0))
    return (spot_rate if spot else on_demand), _FALLBACK_SOURCE

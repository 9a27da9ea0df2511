"""GKE placement and the pieces every child shares: labels, owner references, security, pod requests sized to
the accelerator catalogue's machine shapes (``api/accelerators.py``).

Pure functions of the spec; the trainer Job, the eval Job and the serving Deployment all use them.
"""

from __future__ import annotations

from typing import Any

from ..api import accelerators

ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
SPOT_LABEL = "cloud.google.com/gke-spot"
GPU_RESOURCE = "nvidia.com/gpu"
RUNTIME_LABEL = "llmforge.dev/runtime"
MANAGED_BY = "llmforge"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: UID and GID of every pod we create: the `llmforge` user (10001) that all three images declare with USER,
#: and the chart's operator pod uses; tests/unit/test_image_uid.py fails if any of them drifts.
RUN_AS_USER = 10001

#: Share of the machine requested: GKE keeps the rest for the kubelet, system pods and DaemonSets.
REQUEST_SHARE = 0.75
#: Requests for accelerator cpu (a demo/tiny-model pod).
CPU_REQUESTS = ("2", "8Gi")


def machine_shape(accelerator: str, count: int) -> tuple[str, int, int] | None:
    """(machine type, vCPUs, GiB) of the GKE machine with `count` of these GPUs (the accelerator catalogue's);
    None when no machine carries exactly that many, which validation rejects before a builder runs."""
    m = accelerators.machine(accelerator, count)
    return (m.type, m.vcpus, m.memory_gib) if m else None


def pod_requests(accelerator: str, count: int, cpu: str | None = None, memory: str | None = None) -> dict[str, str]:
    """CPU and memory requests sized to the machine shape (75 %), unless the spec overrides them."""
    if accelerator == "cpu":
        default_cpu, default_mem = CPU_REQUESTS
    else:
        shape = machine_shape(accelerator, count)
        if shape is None:
            raise ValueError(f"no GKE machine carries {count} x {accelerator}")
        _, vcpus, gib = shape
        default_cpu, default_mem = str(max(1, int(vcpus * REQUEST_SHARE))), f"{max(1, int(gib * REQUEST_SHARE))}Gi"
    return {"cpu": cpu or default_cpu, "memory": memory or default_mem}


def placement(accelerator: str, count: int, spot: bool, runtime: str = "kubernetes") -> dict[str, Any]:
    """nodeSelector and tolerations for a pod (empty for cpu, except spot). The `local` runtime pins pods to
    the node whose kubelet runs them as local processes (llmforge.devcluster.kubelet) instead."""
    if runtime == "local":
        return {"nodeSelector": {RUNTIME_LABEL: "local"},
                "tolerations": [{"key": RUNTIME_LABEL, "operator": "Equal", "value": "local", "effect": "NoSchedule"}]}
    selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    if accelerator != "cpu":
        selector[ACCELERATOR_LABEL] = accelerator
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if spot:
        selector[SPOT_LABEL] = "true"
        tolerations.append({"key": SPOT_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"})
    out: dict[str, Any] = {}
    if not spot and accelerator != "cpu":
        # On-demand means on-demand: keep off spot nodes, or the job is preempted and billed at the wrong rate.
        out["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": SPOT_LABEL, "operator": "NotIn", "values": ["true"]}]}]}}}
    if selector:
        out["nodeSelector"] = selector
    if tolerations:
        out["tolerations"] = tolerations
    return out


def workload_placement(settings: Any, accelerator: str, count: int, spot: bool) -> dict[str, Any]:
    """placement() plus the operator's own dedicated-pool selector and tolerations (settings.workload_*)."""
    out = placement(accelerator, count, spot, settings.runtime)
    if settings.runtime == "local":
        return out
    if selector := settings.node_selector():
        out["nodeSelector"] = {**out.get("nodeSelector", {}), **selector}
    if tolerations := settings.tolerations():
        out["tolerations"] = [*out.get("tolerations", []), *tolerations]
    return out


def resources(accelerator: str, count: int, cpu: str | None = None, memory: str | None = None) -> dict[str, Any]:
    """Container resources: requests sized to the machine; GPUs and memory as limits."""
    requests = pod_requests(accelerator, count, cpu, memory)
    limits: dict[str, Any] = {"memory": requests["memory"]}
    if accelerator != "cpu":
        limits[GPU_RESOURCE] = count
    return {"requests": requests, "limits": limits}


def labels(name: str, instance: str, component: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Recommended app.kubernetes.io labels plus kind-specific ones."""
    out = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        MANAGED_BY_LABEL: MANAGED_BY,
    }
    out.update(extra or {})
    return out


def owner_reference(resource: dict[str, Any]) -> dict[str, Any]:
    """Controller owner reference to the custom resource, so GC deletes children with it."""
    meta = resource.get("metadata", {})
    return {
        "apiVersion": resource.get("apiVersion"), "kind": resource.get("kind"), "name": meta.get("name"),
        "uid": meta.get("uid", ""), "controller": True, "blockOwnerDeletion": True,
    }


def metadata(resource: dict[str, Any], name: str, labels_: dict[str, str]) -> dict[str, Any]:
    meta = resource.get("metadata", {})
    out: dict[str, Any] = {"name": name, "namespace": meta.get("namespace", "default"), "labels": labels_}
    if meta.get("uid"):
        out["ownerReferences"] = [owner_reference(resource)]
    return out


def workload_env(settings: Any) -> list[dict[str, str]]:
    """The operator-wide extra env (Settings.workload_env, NAME=VALUE) as EnvVars, appended after ours."""
    return [{"name": n, "value": v} for n, _, v in (item.partition("=") for item in settings.workload_env)]


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """Restricted Pod Security, and a read-only root filesystem: every pod writes only to its emptyDirs
    (/tmp, caches), which the real-node tests check in the images themselves."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "allowPrivilegeEscalation": False,
            "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def gpu_summary(accelerator: str, count: int, spot: bool) -> str:
    """For kubectl's GPU column, e.g. ``nvidia-l4x1 spot``."""
    text = "cpu" if accelerator == "cpu" else f"{accelerator}x{count}"
    return f"{text} spot" if spot else text

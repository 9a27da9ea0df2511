"""The one-pod batch/v1 Job the trainer and the evaluator share: a command that reads its spec from the
owner's ConfigMap, non-root, on the GPU placement, with a podFailurePolicy. Pure.

Preemption, eviction and node loss (`DisruptionTarget`) never count to backoffLimit; invalid input fails the
Job at once, since retrying cannot help. Callers add their own rules and volumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.contract import EXIT_INVALID_INPUT, TERMINATION_LOG
from ..settings import Settings
from . import common

SPEC_DIR = "/etc/llmforge"
SPEC_KEY = "spec.yaml"


@dataclass(frozen=True)
class Workload:
    """What differs between the Jobs: the container's command and env, and what the pod runs on."""

    container: str
    entrypoint: str
    env: list[dict[str, Any]]
    image: str
    accelerator: str
    count: int
    spot: bool
    cpu: str | None = None
    memory: str | None = None
    service_account_name: str | None = None
    container_extra: dict[str, Any] = field(default_factory=dict)
    pod_extra: dict[str, Any] = field(default_factory=dict)
    volumes: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    """(volume, mount) pairs beyond the spec and /tmp."""
    failure_rules: list[dict[str, Any]] = field(default_factory=list)
    """podFailurePolicy rules after the shared two."""


def spec_job(resource: dict[str, Any], settings: Settings, w: Workload, *, job_name: str, configmap_name: str,
             labels: dict[str, str], backoff_limit: int, suspend: bool) -> dict[str, Any]:
    volumes = [({"name": "spec", "configMap": {"name": configmap_name}},
                {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}),
               *w.volumes,
               ({"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"})]
    container: dict[str, Any] = {
        "name": w.container,
        "image": w.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [w.entrypoint, "--spec", f"{SPEC_DIR}/{SPEC_KEY}"],
        "env": w.env,
        **w.container_extra,
        "resources": common.resources(w.accelerator, w.count, w.cpu, w.memory),
        "securityContext": common.container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [mount for _, mount in volumes],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": common.pod_security_context(),
        **w.pod_extra,
        "containers": [container],
        "volumes": [volume for volume, _ in volumes],
        **common.workload_placement(settings, w.accelerator, w.count, w.spot),
    }
    if w.service_account_name:
        pod_spec["serviceAccountName"] = w.service_account_name
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": common.metadata(resource, job_name, labels),
        "spec": {
            "suspend": suspend,
            "backoffLimit": backoff_limit,
            "completions": 1,
            "parallelism": 1,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": w.container, "operator": "In",
                                                      "values": [EXIT_INVALID_INPUT]}},
                *w.failure_rules,
            ]},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }

"""FineTuneJob -> its ConfigMap (the spec the trainer reads) and its batch/v1 Job. Pure and deterministic.

The same resource always yields the same manifests, so applying them again after a retry or an operator
restart changes nothing; the Job's name is ``<name>-train`` so there is never a second one.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..api.contract import EXIT_INVALID_INPUT, EXIT_PREEMPTED, TERMINATION_LOG
from ..api.finetunejob import FineTuneJob
from ..estimate import check_fit
from ..settings import Settings
from . import common

COMPONENT = "trainer"
CONTAINER = "trainer"
SPEC_DIR = "/etc/llmforge"
SPEC_KEY = "spec.yaml"
FTJ_LABEL = "llmforge.dev/finetunejob"
BACKOFF_LIMIT = 3
TERMINATION_GRACE_SECONDS = 120  # time to write a checkpoint after SIGTERM
SHM_LIMIT = "16Gi"


def job_name(name: str) -> str:
    return f"{name}-train"


def configmap_name(name: str) -> str:
    return f"{name}-spec"


def resolved_accelerator(ftj: FineTuneJob) -> str:
    """The accelerator the pod asks for: spec's, or the cheapest that fits when `auto`."""
    acc = ftj.spec.resources.accelerator
    if acc != "auto":
        return acc
    fit = check_fit(ftj.spec)
    if fit.accelerator == "auto":
        raise ValueError(fit.message or "accelerator auto could not be resolved")
    return fit.accelerator


def child_labels(ftj: FineTuneJob) -> dict[str, str]:
    name = ftj.metadata.get("name", "")
    return common.labels("llmforge-finetunejob", name, COMPONENT, {FTJ_LABEL: name})


def spec_document(resource: dict[str, Any]) -> str:
    """The FineTuneJob as the trainer reads it: apiVersion, kind, name/namespace/uid and spec (no status)."""
    meta = resource.get("metadata", {})
    doc = {
        "apiVersion": resource.get("apiVersion"), "kind": resource.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if meta.get(k)},
        "spec": resource.get("spec", {}),
    }
    return yaml.safe_dump(doc, sort_keys=True)


def build_configmap(resource: dict[str, Any]) -> dict[str, Any]:
    ftj = FineTuneJob.model_validate({k: v for k, v in resource.items() if k not in ("status", "apiVersion")})
    name = ftj.metadata["name"]
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": common.metadata(resource, configmap_name(name), child_labels(ftj)),
        "data": {SPEC_KEY: spec_document(resource)},
    }


def build_job(resource: dict[str, Any], settings: Settings, suspend: bool | None = None) -> dict[str, Any]:
    """The trainer Job. `suspend` overrides spec.suspend (the operator suspends on budget exhaustion)."""
    ftj = FineTuneJob.model_validate({k: v for k, v in resource.items() if k not in ("status", "apiVersion")})
    spec, meta = ftj.spec, ftj.metadata
    name = meta["name"]
    res = spec.resources
    accelerator = resolved_accelerator(ftj)
    count = 1 if accelerator == "cpu" else res.count
    labels = child_labels(ftj)
    env: list[dict[str, Any]] = [
        {"name": "LLMFORGE_NAMESPACE", "value": meta.get("namespace", "default")},
        {"name": "LLMFORGE_NAME", "value": name},
        {"name": "LLMFORGE_UID", "value": meta.get("uid", "")},
        {"name": "LLMFORGE_METRICS_PORT", "value": str(settings.trainer_metrics_port)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    token = spec.base_model.token_secret_ref
    if token is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    env += common.workload_env(settings)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["llmforge-train", "--spec", f"{SPEC_DIR}/{SPEC_KEY}"],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": settings.trainer_metrics_port, "protocol": "TCP"}],
        "resources": common.resources(accelerator, count, res.cpu, res.memory),
        "securityContext": common.container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": common.pod_security_context(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": configmap_name(name)}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_LIMIT}},
            {"name": "tmp", "emptyDir": {}},
        ],
        **common.placement(accelerator, count, res.spot, settings.runtime),
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": common.metadata(resource, job_name(name), labels),
        "spec": {
            "suspend": spec.suspend if suspend is None else suspend,
            "backoffLimit": BACKOFF_LIMIT,
            "completions": 1,
            "parallelism": 1,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                # Preemption, eviction, node loss: not the trainer's fault; does not count to backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # Invalid input: retrying cannot help.
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [EXIT_INVALID_INPUT]}},
                # SIGTERM handled with a checkpoint saved: reschedule without counting.
                {"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                     "values": [EXIT_PREEMPTED]}},
            ]},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def build_children(resource: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """What `llmforge render` prints and the operator applies: ConfigMap then Job."""
    return [build_configmap(resource), build_job(resource, settings)]

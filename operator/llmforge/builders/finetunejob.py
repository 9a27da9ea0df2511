"""FineTuneJob -> its ConfigMap (the spec the trainer reads) and its batch/v1 Job. Pure and deterministic.

The same resource always yields the same manifests, so applying them again after a retry or an operator
restart changes nothing; the Job's name is ``<name>-train`` so there is never a second one.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..api.contract import EXIT_PREEMPTED
from ..api.finetunejob import FineTuneJob
from ..estimate import check_fit
from ..settings import Settings
from . import batchjob, common
from .batchjob import SPEC_KEY

COMPONENT = "trainer"
CONTAINER = "trainer"
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
    workload = batchjob.Workload(
        container=CONTAINER, entrypoint="llmforge-train", env=env, image=spec.image or settings.trainer_image,
        accelerator=accelerator, count=count, spot=res.spot, cpu=res.cpu, memory=res.memory,
        service_account_name=spec.service_account_name,
        container_extra={"ports": [{"name": "metrics", "containerPort": settings.trainer_metrics_port,
                                    "protocol": "TCP"}]},
        pod_extra={"terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS},
        volumes=[({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_LIMIT}},
                  {"name": "dshm", "mountPath": "/dev/shm"})],
        # SIGTERM handled with a checkpoint saved: reschedule without counting.
        failure_rules=[{"action": "Ignore", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                            "values": [EXIT_PREEMPTED]}}],
    )
    return batchjob.spec_job(resource, settings, workload, job_name=job_name(name),
                             configmap_name=configmap_name(name), labels=labels, backoff_limit=BACKOFF_LIMIT,
                             suspend=spec.suspend if suspend is None else suspend)


def build_children(resource: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """What `llmforge render` prints and the operator applies: ConfigMap then Job."""
    return [build_configmap(resource), build_job(resource, settings)]

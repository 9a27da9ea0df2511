"""Evaluation -> its ConfigMap (the resolved spec llmforge-eval reads) and its batch/v1 Job. Pure.

The pod never reads the FineTuneJob: the operator resolves ``fineTuneJobRef`` into ``adapterUri`` (the
FineTuneJob's ``status.output.adapterUri``, else ``<output.uri>/adapter``), ``baseModel`` (its spec's) and the
default ``output.uri`` (``<FineTuneJob output>/eval/<name>/``), and mounts that resolved spec. GKE placement and
pod hardening come from ``builders.common``, as for the trainer Job; ``accelerator: auto`` takes the
FineTuneJob's accelerator (the adapter was trained there, so the base fits), or for a bare adapter the
cheapest GPU whose memory holds the bf16 base. Deterministic names (``<name>-eval``): one Job per Evaluation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

from ..api.evaluation import Evaluation
from ..api.finetunejob import FineTuneJob
from ..estimate import serving_accelerator
from ..settings import Settings
from . import batchjob, common
from .batchjob import SPEC_KEY

COMPONENT = "evaluator"
CONTAINER = "eval"
EVAL_LABEL = "llmforge.dev/evaluation"
BACKOFF_LIMIT = 2


def job_name(name: str) -> str:
    return f"{name}-eval"


def configmap_name(name: str) -> str:
    return f"{name}-eval-spec"


@dataclass(frozen=True)
class ResolvedModel:
    """What the eval pod evaluates, after fineTuneJobRef is resolved."""

    adapter_uri: str
    base_model: dict[str, Any]
    output_uri: str
    accelerator: str


def _join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def _model(resource: dict[str, Any]) -> Evaluation:
    return Evaluation.model_validate({k: v for k, v in resource.items() if k in ("kind", "metadata", "spec")})


def resolve(resource: dict[str, Any], finetunejob: dict[str, Any] | None = None,
            placeholders: bool = False) -> ResolvedModel:
    """Adapter, base, output and accelerator for the eval pod. With ``fineTuneJobRef`` the FineTuneJob is
    needed (``placeholders=True`` renders readable stand-ins instead, for ``llmforge render``)."""
    ev = _model(resource)
    spec, name = ev.spec, ev.metadata.get("name", "")
    ref = spec.model.fine_tune_job_ref
    if ref is None:
        base = spec.model.base_model.dump() if spec.model.base_model else {}
        if not spec.output.uri:
            raise ValueError("output.uri is required when the model is given by adapterUri")
        acc = serving_accelerator(spec.resources, spec.model.base_model.name if spec.model.base_model else None)
        return ResolvedModel(spec.model.adapter_uri or "", base, spec.output.uri, acc)
    if finetunejob is None:
        if not placeholders:
            raise ValueError(f"FineTuneJob {ref.name} is needed to resolve the model")
        # Stand-in for the FineTuneJob's accelerator: serving's pick for an 8B base (nvidia-l4 up to 8 GPUs),
        # so the placeholder names a machine that exists for this count.
        acc = serving_accelerator(spec.resources, None)
        return ResolvedModel(f"<adapter of FineTuneJob {ref.name}>", {"uri": f"<baseModel of FineTuneJob {ref.name}>"},
                             spec.output.uri or f"<output of FineTuneJob {ref.name}>/eval/{name}/", acc)
    ftj = FineTuneJob.model_validate({k: v for k, v in finetunejob.items() if k in ("kind", "metadata", "spec")})
    output = ((finetunejob.get("status") or {}).get("output") or {})
    adapter = output.get("adapterUri") or _join(ftj.spec.output.uri, "adapter")
    base = spec.model.base_model.dump() if spec.model.base_model else ftj.spec.base_model.dump()
    out_uri = spec.output.uri or _join(ftj.spec.output.uri, "eval", name) + "/"
    if spec.resources.accelerator != "auto":
        acc = spec.resources.accelerator
    else:
        from .finetunejob import resolved_accelerator

        acc = resolved_accelerator(ftj)
    return ResolvedModel(adapter, base, out_uri, acc)


def child_labels(name: str) -> dict[str, str]:
    return common.labels("llmforge-evaluation", name, COMPONENT, {EVAL_LABEL: name})


def spec_document(resource: dict[str, Any], model: ResolvedModel) -> str:
    """The Evaluation as llmforge-eval reads it: model resolved to adapterUri + baseModel, output set."""
    meta = resource.get("metadata", {})
    spec = copy.deepcopy(resource.get("spec", {}))
    spec["model"] = {"adapterUri": model.adapter_uri, "baseModel": model.base_model}
    spec["output"] = {**(spec.get("output") or {}), "uri": model.output_uri}
    doc = {"apiVersion": resource.get("apiVersion"), "kind": resource.get("kind", "Evaluation"),
           "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if meta.get(k)}, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=True)


def build_configmap(resource: dict[str, Any], model: ResolvedModel) -> dict[str, Any]:
    name = resource["metadata"]["name"]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": common.metadata(resource, configmap_name(name), child_labels(name)),
            "data": {SPEC_KEY: spec_document(resource, model)}}


def build_job(resource: dict[str, Any], settings: Settings, model: ResolvedModel) -> dict[str, Any]:
    ev = _model(resource)
    spec, meta = ev.spec, ev.metadata
    name = meta["name"]
    res = spec.resources
    count = 1 if model.accelerator == "cpu" else res.count
    labels = child_labels(name)
    env: list[dict[str, Any]] = [
        {"name": "LLMFORGE_NAMESPACE", "value": meta.get("namespace", "default")},
        {"name": "LLMFORGE_NAME", "value": name},
        {"name": "HF_HUB_OFFLINE", "value": "0" if model.base_model.get("name") and not model.base_model.get("uri")
         else "1"},
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    ]
    token = (model.base_model.get("tokenSecretRef") or {})
    if token.get("name"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token["name"],
                                                                       "key": token.get("key", "token")}}})
    env += common.workload_env(settings)
    workload = batchjob.Workload(
        container=CONTAINER, entrypoint="llmforge-eval", env=env, image=spec.image or settings.trainer_image,
        accelerator=model.accelerator, count=count, spot=res.spot, cpu=res.cpu, memory=res.memory,
        service_account_name=spec.service_account_name)
    return batchjob.spec_job(resource, settings, workload, job_name=job_name(name),
                             configmap_name=configmap_name(name), labels=labels, backoff_limit=BACKOFF_LIMIT,
                             suspend=spec.suspend)


def build_children(resource: dict[str, Any], settings: Settings, finetunejob: dict[str, Any] | None = None,
                   placeholders: bool = False) -> list[dict[str, Any]]:
    """ConfigMap then Job, for the resolved model."""
    model = resolve(resource, finetunejob, placeholders=placeholders)
    return [build_configmap(resource, model), build_job(resource, settings, model)]


def render(resource: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """``llmforge render``: a fineTuneJobRef is shown as placeholders (the FineTuneJob is not at hand)."""
    return build_children(resource, settings, None, placeholders=True)

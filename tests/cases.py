"""Invalid custom resources shared by the offline validator tests and the real-apiserver tests.

Each case: a minimal valid object of a kind, one mutation, and the field path both must name. `server`
is a fragment of the apiserver's message; `ours` of `llmforge validate`'s (the same text for CEL rules,
which are one expression run by both).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

API = "llmforge.dev/v1alpha1"


def ftj(**spec: Any) -> dict[str, Any]:
    base = {"baseModel": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
            "dataset": {"train": "gs://b/train.jsonl"}, "output": {"uri": "gs://b/out/"}}
    base.update(spec)
    return {"apiVersion": API, "kind": "FineTuneJob", "metadata": {"name": "bad"}, "spec": base}


def lfe(**spec: Any) -> dict[str, Any]:
    base = {"model": {"fineTuneJobRef": {"name": "x"}}, "dataset": {"uri": "gs://b/test.jsonl"}}
    base.update(spec)
    return {"apiVersion": API, "kind": "Evaluation", "metadata": {"name": "bad"}, "spec": base}


def mdep(**spec: Any) -> dict[str, Any]:
    base = {"model": {"baseModel": {"name": "meta-llama/Llama-3.1-8B-Instruct"}}}
    base.update(spec)
    return {"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": "bad"}, "spec": base}


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    node = obj
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return obj


_DELETE = object()


@dataclass
class Case:
    id: str
    obj: dict[str, Any]
    path: str
    server: str
    ours: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ours = self.ours or self.server


CASES = [
    # --- FineTuneJob: schema
    Case("ftj-missing-output", _set(ftj(), "spec.output", _DELETE), "spec.output", "Required value"),
    Case("ftj-missing-train", _set(ftj(), "spec.dataset.train", _DELETE), "spec.dataset.train", "Required value"),
    Case("ftj-lora-r-zero", ftj(lora={"r": 0}), "spec.lora.r", "greater than or equal to 1"),
    Case("ftj-bad-method", ftj(method="dpo"), "spec.method", "Unsupported value", "Unsupported value"),
    Case("ftj-bad-format", ftj(dataset={"train": "a", "format": "csv"}), "spec.dataset.format", "Unsupported value"),
    Case("ftj-lr-zero", ftj(training={"learningRate": 0}), "spec.training.learningRate", "greater than"),
    Case("ftj-batch-zero", ftj(training={"batchSize": 0}), "spec.training.batchSize", "greater than or equal to 1"),
    Case("ftj-bits-3", ftj(quantization={"bits": 3}), "spec.quantization.bits", "Unsupported value"),
    Case("ftj-accelerator-unknown", ftj(resources={"accelerator": "nvidia-b200"}), "spec.resources.accelerator",
         "Unsupported value"),
    Case("ftj-count-17", ftj(resources={"count": 17}), "spec.resources.count", "less than or equal to 16"),
    Case("ftj-dropout-1", ftj(lora={"dropout": 1.0}), "spec.lora.dropout", "less than"),
    Case("ftj-epochs-negative", ftj(training={"epochs": -1}), "spec.training.epochs", "greater than"),
    Case("ftj-budget-zero", ftj(budget={"maxCostUSD": 0}), "spec.budget.maxCostUSD", "greater than"),
    Case("ftj-target-modules-empty", ftj(lora={"targetModules": []}), "spec.lora.targetModules",
         "at least 1", "at least 1 item"),
    Case("ftj-seq-too-short", ftj(training={"maxSeqLength": 8}), "spec.training.maxSeqLength",
         "greater than or equal to 16"),
    # --- FineTuneJob: CEL
    Case("ftj-split-zero", ftj(dataset={"train": "a", "validationSplit": 0.0}), "spec.dataset.validationSplit",
         "validationSplit must be in (0, 0.5)"),
    Case("ftj-split-half", ftj(dataset={"train": "a", "validationSplit": 0.5}), "spec.dataset.validationSplit",
         "validationSplit must be in (0, 0.5)"),
    Case("ftj-alpha-zero", ftj(lora={"alpha": 0}), "spec.lora.alpha", "lora.alpha must be > 0"),
    Case("ftj-alpha-negative", ftj(lora={"alpha": -8}), "spec.lora.alpha", "lora.alpha must be > 0"),
    Case("ftj-base-empty", ftj(baseModel={}), "spec.baseModel", "set name (hub id) or uri"),
    Case("ftj-cpu-count", ftj(resources={"accelerator": "cpu", "count": 2}), "spec.resources.count",
         "count must be 1 when accelerator is cpu"),
    # --- Evaluation
    Case("lfe-both-refs", lfe(model={"fineTuneJobRef": {"name": "x"}, "adapterUri": "gs://b/a",
                                     "baseModel": {"name": "m"}}), "spec.model",
         "exactly one of fineTuneJobRef or adapterUri"),
    Case("lfe-no-ref", lfe(model={}), "spec.model", "exactly one of fineTuneJobRef or adapterUri"),
    Case("lfe-adapter-without-base", lfe(model={"adapterUri": "gs://b/a"}), "spec.model.baseModel",
         "adapterUri needs baseModel"),
    Case("lfe-unknown-metric", lfe(metrics=["accuracy"]), "spec.metrics[0]", "Unsupported value"),
    Case("lfe-threshold-empty", lfe(thresholds={"rougeL": {}}), "spec.thresholds[rougeL]",
         "a threshold needs at least one bound", extra={"server_path": "spec.thresholds[rougeL]"}),
    Case("lfe-relative-without-base", lfe(compareToBase=False, thresholds={"perplexity": {"maxRatioToBase": 0.8}}),
         "spec.thresholds", "thresholds relative to base need compareToBase: true"),
    Case("lfe-regex-no-value", lfe(checks=[{"name": "c", "type": "regex"}]), "spec.checks[0].value",
         "contains and regex checks need a value"),
    Case("lfe-temperature-high", lfe(generation={"temperature": 3}), "spec.generation.temperature",
         "less than or equal to 2"),
    # --- ModelDeployment
    Case("mdep-weight-101", mdep(canary={"model": {"baseModel": {"name": "m"}}, "weight": 101}),
         "spec.canary.weight", "canary.weight must be in 0..100"),
    Case("mdep-weight-negative", mdep(canary={"model": {"baseModel": {"name": "m"}}, "weight": -1}),
         "spec.canary.weight", "canary.weight must be in 0..100"),
    Case("mdep-min-gt-max", mdep(autoscaling={"minReplicas": 4, "maxReplicas": 2}),
         "spec.autoscaling.minReplicas", "minReplicas must be <= maxReplicas"),
    Case("mdep-adapter-both", mdep(model={"baseModel": {"name": "m"}, "adapters": [
        {"name": "a", "uri": "gs://b/a", "fineTuneJobRef": {"name": "x"}}]}), "spec.model.adapters[0]",
         "exactly one of fineTuneJobRef or uri"),
    Case("mdep-steps-unsorted", mdep(canary={"model": {"baseModel": {"name": "m"}}, "promotion": {
        "evaluationRef": {"name": "e"}, "steps": [50, 10, 100]}}), "spec.canary.promotion.steps",
         "steps must be in increasing order"),
    Case("mdep-steps-over-100", mdep(canary={"model": {"baseModel": {"name": "m"}}, "promotion": {
        "evaluationRef": {"name": "e"}, "steps": [10, 150]}}), "spec.canary.promotion.steps",
         "steps must be in 1..100"),
    Case("mdep-promotion-no-eval", mdep(canary={"model": {"baseModel": {"name": "m"}}, "promotion": {}}),
         "spec.canary.promotion.evaluationRef", "Required value"),
    Case("mdep-gpu-util-zero", mdep(vllm={"gpuMemoryUtilization": 0}), "spec.vllm.gpuMemoryUtilization",
         "greater than"),
    Case("mdep-interval-bad", mdep(canary={"model": {"baseModel": {"name": "m"}}, "promotion": {
        "evaluationRef": {"name": "e"}, "interval": "ten minutes"}}), "spec.canary.promotion.interval",
         "should match"),
]

#: Accepted by the apiserver, rejected by the operator's semantic checks (same as `llmforge validate`).
SEMANTIC_CASES = [
    Case("ftj-http-uri", ftj(output={"uri": "http://example/out"}), "spec.output.uri", "", "unsupported scheme"),
    Case("ftj-l4-count-3", ftj(resources={"accelerator": "nvidia-l4", "count": 3}), "spec.resources.count", "",
         "come with 1, 2, 4, 8 GPUs"),
    # The schema admits 16 and so did validation once, but A2 Ultra machines stop at 8 A100 80GB.
    Case("ftj-a100-80gb-count-16", ftj(resources={"accelerator": "nvidia-a100-80gb", "count": 16}),
         "spec.resources.count", "", "nvidia-a100-80gb VMs on GKE come with 1, 2, 4, 8 GPUs, not 16"),
    Case("mdep-auto-count-3", mdep(resources={"accelerator": "auto", "count": 3}), "spec.resources.count", "",
         "no GKE GPU VM comes with 3 GPUs; accelerator auto needs 1, 2, 4, 8, 16"),
    Case("lfe-threshold-unknown-metric", lfe(thresholds={"bertScore": {"min": 0.5}}), "spec.thresholds.bertScore",
         "", "not a metric or check"),
]

SEMANTIC_CASES.append(Case(
    "mdep-adapter-named-like-base",
    mdep(model={"baseModel": {"uri": "gs://b/m"}, "adapters": [{"name": "bad-base", "uri": "gs://b/a"}]}),
    "spec.model.adapters[0].name", "", "is the base model's served name"))

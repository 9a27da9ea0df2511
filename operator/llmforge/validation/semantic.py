"""Semantic checks the schema can't express: URI shapes, GKE GPU counts, references that must agree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..api.accelerators import AUTO, AUTO_COUNTS, GPU_COUNTS
from ..api.evaluation import EvaluationSpec
from ..api.finetunejob import FineTuneJobSpec
from ..api.modeldeployment import ModelDeploymentSpec, ServedModel


def check_uri(uri: str | None) -> str | None:
    """Why a storage URI is unusable, or None."""
    if uri is None:
        return None
    if uri.startswith("gs://"):
        return None if uri[5:].split("/", 1)[0] else "gs:// URI needs a bucket (gs://bucket/path)"
    if uri.startswith("file://"):
        return None if uri[7:].startswith("/") else "file:// URI needs an absolute path (file:///path)"
    if "://" in uri:
        return f"unsupported scheme {uri.split('://', 1)[0]!r}; use gs://, file:// or a path"
    return None


def _resources(path: str, accelerator: str, count: int) -> Iterator[tuple[str, str]]:
    """Only counts a GKE machine carries (the accelerator catalogue's machine shapes): anything else would pass
    here and fail in the builder, or pay for GPUs the pod cannot use. cpu's count is the schema's CEL rule."""
    allowed = GPU_COUNTS.get(accelerator)
    if allowed and count not in allowed:
        yield f"{path}.count", f"{accelerator} VMs on GKE come with {', '.join(map(str, allowed))} GPUs, not {count}"
    if accelerator == AUTO and count not in AUTO_COUNTS:
        yield f"{path}.count", (f"no GKE GPU VM comes with {count} GPUs; accelerator auto needs "
                                f"{', '.join(map(str, AUTO_COUNTS))}")


def _uris(pairs: list[tuple[str, str | None]]) -> Iterator[tuple[str, str]]:
    for path, uri in pairs:
        why = check_uri(uri)
        if why:
            yield path, why


def finetune_semantics(spec: FineTuneJobSpec, name: str = "") -> Iterator[tuple[Any, ...]]:
    """(path, message) pairs, or (path, message, reason) when the reason is more specific than Invalid."""
    yield from _uris([
        ("spec.baseModel.uri", spec.base_model.uri), ("spec.dataset.train", spec.dataset.train),
        ("spec.dataset.validation", spec.dataset.validation), ("spec.output.uri", spec.output.uri),
    ])
    counts = list(_resources("spec.resources", spec.resources.accelerator, spec.resources.count))
    yield from counts
    if not counts:
        from ..estimate import check_fit

        fit = check_fit(spec)
        if fit.fits is False:
            yield "spec.resources", fit.message, "InsufficientGPUMemory"


def evaluation_semantics(spec: EvaluationSpec, name: str = "") -> Iterator[tuple[str, str]]:
    yield from _uris([
        ("spec.model.adapterUri", spec.model.adapter_uri), ("spec.dataset.uri", spec.dataset.uri),
        ("spec.output.uri", spec.output.uri),
        ("spec.model.baseModel.uri", spec.model.base_model.uri if spec.model.base_model else None),
    ])
    yield from _resources("spec.resources", spec.resources.accelerator, spec.resources.count)
    known = set(spec.metrics) | {c.name for c in spec.checks}
    for key in (spec.thresholds or {}):
        if key not in known:
            yield f"spec.thresholds.{key}", f"not a metric or check of this Evaluation ({', '.join(sorted(known))})"
    names = [c.name for c in spec.checks]
    for i, name in enumerate(names):
        if name in names[:i] or name in spec.metrics:
            yield f"spec.checks[{i}].name", f"duplicate metric name {name!r}"


def _served(path: str, model: ServedModel, resource_name: str) -> Iterator[tuple[str, str]]:
    yield from _uris([(f"{path}.baseModel.uri", model.base_model.uri)])
    names = [a.name for a in model.adapters]
    base = model.served_name(resource_name)
    for i, adapter in enumerate(model.adapters):
        yield from _uris([(f"{path}.adapters[{i}].uri", adapter.uri)])
        if adapter.name in names[:i]:
            yield f"{path}.adapters[{i}].name", f"duplicate adapter name {adapter.name!r}"
        if adapter.name == base:
            yield f"{path}.adapters[{i}].name", f"{adapter.name!r} is the base model's served name; rename the adapter"


def deployment_semantics(spec: ModelDeploymentSpec, name: str = "") -> Iterator[tuple[str, str]]:
    yield from _served("spec.model", spec.model, name)
    if spec.canary:
        yield from _served("spec.canary.model", spec.canary.model, name)
    yield from _resources("spec.resources", spec.resources.accelerator, spec.resources.count)
    if spec.resources.accelerator == "cpu" and spec.resources.count != 1:
        yield "spec.resources.count", "tensor parallelism needs GPUs"

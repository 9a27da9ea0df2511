"""Building blocks shared by the three kinds: the camelCase base model, conditions, cost, GPU resources.

Field docstrings become CRD descriptions (``use_attribute_docstrings``), so write them for the person
running ``kubectl explain``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .accelerators import COUNTS_TEXT, MAX_COUNT

# The schema's enum: auto, cpu and the catalogue's labels (accelerators.CATALOGUE), spelled out so type checkers
# see the literals; tests/unit/test_accelerator_catalogue.py fails if the two lists part.
Accelerator = Literal[
    "auto", "cpu", "nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb"
]


class Rule:
    """A cross-field rule: one CEL expression for the apiserver, evaluated offline by `llmforge validate`."""

    def __init__(self, rule: str, message: str, field_path: str | None = None, reason: str | None = None):
        self.rule, self.message, self.field_path, self.reason = rule, message, field_path, reason

    def as_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out

    @property
    def is_transition(self) -> bool:
        return "oldSelf" in self.rule


class ApiModel(BaseModel):
    """Spec-side base: camelCase on the wire, unknown fields rejected (kubectl's strict field validation)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_attribute_docstrings=True,
        validate_default=True,
    )
    #: CEL rules attached to this object's schema (x-kubernetes-validations).
    rules: ClassVar[tuple[Rule, ...]] = ()

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status-side base: tolerant of fields written by newer operators."""

    model_config = ConfigDict(extra="ignore")


class SecretKeyRef(ApiModel):
    """A key in a Secret in the resource's namespace. Only the reference is stored; the value never is."""

    name: str = Field(min_length=1, max_length=253)
    """Secret name."""
    key: str = Field(default="token", min_length=1, max_length=253)
    """Key inside the Secret."""


class LocalRef(ApiModel):
    """A reference to another llmforge resource in the same namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the referenced resource."""


class BaseModelSource(ApiModel):
    """Where the base model's weights come from: a Hugging Face id, pre-staged weights, or both."""

    rules = (Rule("has(self.name) || has(self.uri)", "set name (hub id) or uri (staged weights)"),)

    name: str | None = Field(default=None, max_length=256)
    """Hugging Face model id, e.g. meta-llama/Llama-3.1-8B-Instruct. Also picks the memory preset."""
    uri: str | None = Field(default=None, max_length=1024)
    """Pre-staged weights: gs://bucket/path, file:///path or /path. Preferred over name when both are set."""
    revision: str | None = Field(default=None, max_length=128)
    """Hub revision (branch, tag or commit) when loading by name."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding a Hugging Face token for gated models. Passed to the pod as HF_TOKEN only."""


class Resources(ApiModel):
    """GPU placement on GKE: accelerator type, count per pod and spot capacity."""

    rules = (
        Rule("self.accelerator != 'cpu' || self.count == 1", "count must be 1 when accelerator is cpu",
             field_path=".count"),
    )

    accelerator: Accelerator = "auto"
    """GKE accelerator label value (cloud.google.com/gke-accelerator), `auto` for the cheapest that fits,
    or `cpu` for no GPU (tiny models, demos)."""
    # Described from the catalogue (not a docstring), so `kubectl explain` lists the counts validation admits.
    count: int = Field(default=1, ge=1, le=MAX_COUNT, description=(
        f"GPUs per pod: a count that a GKE machine of the accelerator carries ({COUNTS_TEXT}); auto takes any "
        "of these, cpu only 1. Other counts are rejected."))
    spot: bool = False
    """Run on spot VMs (cheaper, preemptible). Training resumes from the last checkpoint after preemption."""
    cpu: str | None = Field(default=None, max_length=32)
    """CPU request override. Default: sized to the GKE machine shape of the accelerator."""
    memory: str | None = Field(default=None, max_length=32)
    """Memory request override. Default: sized to the GKE machine shape of the accelerator."""


class MlflowTracking(ApiModel):
    """An MLflow tracking server."""

    tracking_uri: str = Field(max_length=1024)
    """Tracking server URL, e.g. http://mlflow.mlflow:5000."""
    experiment: str = Field(default="llmforge", max_length=256)
    """Experiment name; created if missing."""


class Tracking(ApiModel):
    """Experiment tracking. If the server is unreachable, work continues and the outage is reported."""

    mlflow: MlflowTracking | None = None
    """MLflow settings."""


Status3 = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """A Kubernetes-style condition."""

    type: str
    """Condition type, e.g. Ready, Complete, Passed."""
    status: Status3
    """True, False or Unknown."""
    reason: str | None = None
    """CamelCase machine-readable reason."""
    message: str | None = None
    """Human-readable detail."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """metadata.generation this condition was computed from."""


class Cost(StatusModel):
    """Money spent, from GPU time and a dated price table."""

    usd: float | None = None
    """Accrued cost in US dollars."""
    gpu_hours: float | None = None
    """GPU-hours consumed (GPUs x hours), summed over every pod attempt."""
    rate_per_gpu_hour: float | None = None
    """USD per GPU-hour, including the GPU VM's share of host cost."""
    usd_per_hour: float | None = None
    """Current burn rate in USD per hour."""
    accelerator: str | None = None
    """Accelerator the rate applies to."""
    spot: bool | None = None
    """Whether the spot rate applies."""
    pricing_source: str | None = None
    """Where the rate came from (table name and date, or ConfigMap)."""
    updated_at: str | None = None
    """When the cost was last computed (RFC 3339)."""


class PodAttempt(StatusModel):
    """One pod of the work Job (trainer or eval), kept after the pod is gone so cost and restarts survive
    preemption."""

    pod: str
    """Pod name."""
    uid: str
    """Pod UID."""
    node: str | None = None
    """Node it ran on."""
    start_time: str | None = None
    """When its container started (RFC 3339); unset while it waits for a node."""
    end_time: str | None = None
    """When it ended (RFC 3339); unset while it runs."""
    exit_code: int | None = None
    """Exit code of the trainer or eval container."""
    reason: str | None = None
    """Why it ended, e.g. Completed, Error, DisruptionTarget."""


class MlflowStatus(StatusModel):
    """The MLflow run that tracks this work."""

    run_id: str | None = None
    """MLflow run id."""
    experiment_id: str | None = None
    """MLflow experiment id."""
    url: str | None = None
    """Link to the run in the MLflow UI."""


class Failure(StatusModel):
    """Why the work failed, taken from the pod's termination message when it has one."""

    reason: str | None = None
    """CamelCase reason, e.g. LossDiverged, OutOfMemory, BudgetExceeded."""
    message: str | None = None
    """What happened and what to try."""


class CommonStatus(StatusModel):
    """Fields every kind's status has."""

    phase: str | None = None
    """Lifecycle phase."""
    observed_generation: int | None = None
    """metadata.generation this status reflects."""
    conditions: list[Condition] = Field(default_factory=list)
    """Current conditions."""
    cost: Cost | None = None
    """Cost so far."""

"""Evaluation: score a fine-tuned adapter against its base on held-out data, with a pass/fail gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    ApiModel,
    BaseModelSource,
    CommonStatus,
    Failure,
    LocalRef,
    MlflowStatus,
    PodAttempt,
    Resources,
    Rule,
    StatusModel,
    Tracking,
)
from .finetunejob import DatasetFormat
from .phases import Phase

MetricName = Literal["rouge1", "rouge2", "rougeL", "bleu", "perplexity", "exactMatch"]
#: Metrics where lower is better; thresholds and deltas read the other way round.
LOWER_IS_BETTER = frozenset({"perplexity"})


class EvalModel(ApiModel):
    """The adapter to evaluate: a FineTuneJob's output, or an adapter URI plus its base."""

    rules = (
        Rule("has(self.fineTuneJobRef) != has(self.adapterUri)",
             "exactly one of fineTuneJobRef or adapterUri must be set"),
        Rule("!has(self.adapterUri) || has(self.baseModel)", "adapterUri needs baseModel",
             field_path=".baseModel"),
    )

    fine_tune_job_ref: LocalRef | None = None
    """A FineTuneJob in this namespace; waits until it Succeeded and uses its adapter and base."""
    adapter_uri: str | None = Field(default=None, max_length=1024)
    """LoRA adapter directory (gs://, file://, /path)."""
    base_model: BaseModelSource | None = None
    """Base model of adapterUri (defaults to the FineTuneJob's base with fineTuneJobRef)."""


class EvalDataset(ApiModel):
    """Held-out data, in any trainer format; the reference is the completion/assistant turn."""

    uri: str = Field(min_length=1, max_length=1024)
    """gs://, file:// or local path to JSONL/JSON."""
    max_samples: int = Field(default=200, ge=1, le=100000)
    """Samples evaluated, chosen deterministically by seed."""
    format: DatasetFormat = "auto"
    """Record format."""
    seed: int = Field(default=42, ge=0)
    """Sampling seed."""


class CustomCheck(ApiModel):
    """A rate metric: the fraction of predictions that pass a check."""

    rules = (
        Rule("self.type == 'jsonValid' || (has(self.value) && size(self.value) > 0)",
             "contains and regex checks need a value", field_path=".value"),
    )

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    """Metric name in results; usable in thresholds."""
    type: Literal["contains", "regex", "jsonValid"]
    """contains: substring; regex: re.search; jsonValid: the prediction parses as JSON."""
    value: str | None = Field(default=None, max_length=1024)
    """Substring or regular expression."""


class Threshold(ApiModel):
    """Bounds a metric must meet for the Evaluation to pass: absolute, or relative to the base."""

    rules = (
        Rule("has(self.min) || has(self.max) || has(self.minDeltaToBase) || has(self.maxDeltaToBase) || "
             "has(self.minRatioToBase) || has(self.maxRatioToBase)", "a threshold needs at least one bound"),
    )

    min: float | None = None
    """Fine-tuned value must be >= min."""
    max: float | None = None
    """Fine-tuned value must be <= max."""
    min_delta_to_base: float | None = None
    """finetuned - base must be >= this."""
    max_delta_to_base: float | None = None
    """finetuned - base must be <= this."""
    min_ratio_to_base: float | None = None
    """finetuned / base must be >= this."""
    max_ratio_to_base: float | None = None
    """finetuned / base must be <= this (e.g. perplexity 0.8)."""


class Generation(ApiModel):
    """Decoding settings for predictions."""

    max_new_tokens: int = Field(default=256, ge=1, le=32768)
    """Tokens generated per sample."""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """0 = greedy (deterministic)."""
    stop: list[str] = Field(default_factory=list, max_length=16)
    """Stop strings."""
    batch_size: int = Field(default=32, ge=1, le=1024)
    """Samples per generation and perplexity batch. 32 meets the >= 5x batched speed-up goal (docs/benchmarks.md)
    and fits an 8B 4-bit model on a 24 GB L4; lower it for long prompts or references (docs/evaluation.md)."""


class EvalOutput(ApiModel):
    """Where the per-sample report goes."""

    uri: str | None = Field(default=None, max_length=1024)
    """Directory for report.jsonl and results.json; default: <FineTuneJob output>/eval/<name>/."""


class EvaluationSpec(ApiModel):
    """What to evaluate, on which data, with which metrics and gate."""

    rules = (
        Rule("self.compareToBase || !has(self.thresholds) || self.thresholds.all(k, "
             "!has(self.thresholds[k].minDeltaToBase) && !has(self.thresholds[k].maxDeltaToBase) && "
             "!has(self.thresholds[k].minRatioToBase) && !has(self.thresholds[k].maxRatioToBase))",
             "thresholds relative to base need compareToBase: true", field_path=".thresholds"),
    )

    model: EvalModel
    """The adapter under test."""
    dataset: EvalDataset
    """Evaluation data."""
    metrics: list[MetricName] = Field(
        default_factory=lambda: ["rougeL", "bleu", "perplexity", "exactMatch"], min_length=1, max_length=6)
    """rouge1, rouge2, rougeL (rouge-score), bleu (sacrebleu corpus), perplexity (completion tokens),
    exactMatch (after lower-casing, trimming, collapsing whitespace and dropping trailing punctuation)."""
    checks: list[CustomCheck] = Field(default_factory=list, max_length=32)
    """Custom rate checks."""
    compare_to_base: bool = True
    """Also evaluate the base model on identical inputs and report the delta."""
    generation: Generation = Field(default_factory=Generation)
    """Decoding."""
    thresholds: dict[str, Threshold] | None = Field(default=None, max_length=32)
    """Pass/fail gate, keyed by metric or check name."""
    resources: Resources = Field(default_factory=Resources)
    """GPUs."""
    output: EvalOutput = Field(default_factory=EvalOutput)
    """Report location."""
    tracking: Tracking | None = None
    """Experiment tracking."""
    suspend: bool = False
    """Hold the eval Job."""
    service_account_name: str | None = Field(default=None, max_length=253)
    """Pod service account (Workload Identity)."""
    image: str | None = Field(default=None, max_length=512)
    """Eval image override (default: the trainer image)."""


class EvalResults(StatusModel):
    """Scores per model and their difference."""

    finetuned: dict[str, float] | None = None
    """Fine-tuned scores by metric."""
    base: dict[str, float] | None = None
    """Base scores by metric."""
    delta: dict[str, float] | None = None
    """finetuned - base by metric."""
    errors: dict[str, str] | None = None
    """Metrics that failed to compute, with why."""


class Sample(StatusModel):
    """One evaluated example, truncated."""

    prompt: str | None = None
    """Prompt."""
    reference: str | None = None
    """Expected completion."""
    prediction: str | None = None
    """Fine-tuned output."""
    base_prediction: str | None = None
    """Base output."""


class EvaluationStatus(CommonStatus):
    """Observed state of the evaluation."""

    phase: Literal[Phase.PENDING, Phase.WAITING_FOR_MODEL, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED,
                   Phase.SUSPENDED] | None = None
    """Pending, WaitingForModel, Running, Succeeded, Failed or Suspended."""
    model: str | None = None
    """What is evaluated, for kubectl."""
    passed: bool | None = None
    """Gate verdict (mirrors the Passed condition)."""
    failed_thresholds: list[str] | None = None
    """Every threshold that failed, with numbers."""
    results: EvalResults | None = None
    """Scores."""
    samples_evaluated: int | None = None
    """Samples scored (every sample is counted)."""
    samples: list[Sample] | None = None
    """A few examples."""
    report_uri: str | None = None
    """Per-sample JSONL."""
    job_name: str | None = None
    """The eval Job."""
    adapter_uri: str | None = None
    """Adapter evaluated."""
    start_time: str | None = None
    """Start."""
    completion_time: str | None = None
    """End."""
    attempts: list[PodAttempt] | None = None
    """Every eval pod so far, with its billed span (status.cost sums these; kept when the pods are gone)."""
    mlflow: MlflowStatus | None = None
    """Tracking run."""
    failure: Failure | None = None
    """Why it failed."""


class Evaluation(ApiModel):
    """A base-vs-fine-tuned quality report with a pass/fail gate."""

    api_version: Literal["llmforge.dev/v1alpha1"] = "llmforge.dev/v1alpha1"
    kind: Literal["Evaluation"] = "Evaluation"
    metadata: dict = Field(default_factory=dict)
    spec: EvaluationSpec
    status: EvaluationStatus | None = None

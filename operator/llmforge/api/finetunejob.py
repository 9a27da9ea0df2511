"""FineTuneJob: a QLoRA/LoRA fine-tuning run. Spec is what the user asks; status is what happened.

Names follow trl/transformers where one exists, so the trainer maps fields one to one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    ApiModel,
    BaseModelSource,
    CommonStatus,
    Failure,
    MlflowStatus,
    PodAttempt,
    Resources,
    Rule,
    StatusModel,
    Tracking,
)
from .phases import Phase

DatasetFormat = Literal["auto", "alpaca", "chat", "prompt-completion", "text"]


class DatasetSpec(ApiModel):
    """Training data: JSONL or JSON files, local or gs://."""

    rules = (
        Rule("self.validationSplit > 0.0 && self.validationSplit < 0.5",
             "validationSplit must be in (0, 0.5)", field_path=".validationSplit"),
    )

    train: str = Field(min_length=1, max_length=1024)
    """Training file: gs://bucket/train.jsonl, file:///path or /path."""
    validation: str | None = Field(default=None, max_length=1024)
    """Held-out file. When set, validationSplit is ignored."""
    validation_split: float = 0.1
    """Fraction of train held out for validation when no validation file is given. Deterministic by seed."""
    format: DatasetFormat = "auto"
    """Record format; auto detects it from the first valid record and reports the choice."""
    on_invalid_record: Literal["fail", "skip"] = "fail"
    """fail: stop and list the first 20 bad records as file:line. skip: drop and count them."""


class LoraSpec(ApiModel):
    """LoRA adapter shape (peft LoraConfig)."""

    rules = (Rule("self.alpha > 0.0", "lora.alpha must be > 0", field_path=".alpha"),)

    r: int = Field(default=16, ge=1, le=1024)
    """Rank."""
    alpha: float = 32.0
    """Scaling numerator (lora_alpha). Advice warns when far from r/4..2r."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA path."""
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"], min_length=1, max_length=64)
    """Modules to adapt; all-linear adapts every linear layer but the head (QLoRA paper's choice)."""


class QuantizationSpec(ApiModel):
    """bitsandbytes quantisation of the frozen base (QLoRA). Ignored when method is lora."""

    bits: Literal[4, 8] = 4
    """Weight bits."""
    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type; nf4 is the QLoRA paper's NormalFloat."""
    double_quant: bool = True
    """Quantise the quantisation constants too (~0.37 bit/param saved)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """dtype of matmuls on dequantised weights."""


class TrainingSpec(ApiModel):
    """Hyperparameters, mapped one to one onto trl's SFTConfig."""

    epochs: float = Field(default=3.0, gt=0, le=100)
    """num_train_epochs."""
    learning_rate: float = Field(default=2.0e-4, gt=0, le=1.0)
    """Peak learning rate."""
    batch_size: int = Field(default=4, ge=1, le=1024)
    """per_device_train_batch_size."""
    gradient_accumulation_steps: int = Field(default=4, ge=1, le=1024)
    """Steps accumulated per optimizer step; effective batch = batchSize x this x GPUs."""
    max_seq_length: int = Field(default=2048, ge=16, le=131072)
    """Tokens per example (SFTConfig.max_length). Longer examples are counted and reported."""
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    """Fraction of steps spent warming up."""
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule."""
    optimizer: Literal["paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit", "adamw_torch"] = "paged_adamw_8bit"
    """Optimizer. On a machine without CUDA the trainer falls back to adamw_torch and says so."""
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """Weight decay."""
    max_grad_norm: float = Field(default=0.3, gt=0.0)
    """Gradient clipping (QLoRA paper: 0.3)."""
    packing: bool = True
    """Pack examples (padding-free) where trl supports it."""
    gradient_checkpointing: bool = True
    """Trade compute for activation memory."""
    completion_only_loss: bool = True
    """Compute loss on the completion/assistant tokens only."""
    seed: int = Field(default=42, ge=0)
    """Seed for data split, shuffling and init."""
    max_steps: int = Field(default=0, ge=0)
    """Cap on optimizer steps (0 = none), for smoke runs and demos."""
    logging_steps: int = Field(default=10, ge=1)
    """Log metrics every N steps."""
    eval_steps: int = Field(default=0, ge=0)
    """Evaluate every N steps (0 = once per epoch)."""


class OutputSpec(ApiModel):
    """Where the adapter, checkpoints and report go."""

    uri: str = Field(min_length=1, max_length=1024)
    """gs://bucket/runs/name/, file:///path or /path."""
    merge: bool = False
    """Also write merged/ (merge_and_unload into bf16), ready for serving without LoRA."""


class CheckpointSpec(ApiModel):
    """Checkpointing, for resume after preemption."""

    every_steps: int = Field(default=100, ge=1)
    """Save every N optimizer steps (and on SIGTERM)."""
    keep: int = Field(default=2, ge=1, le=100)
    """Complete checkpoints kept."""


class BudgetSpec(ApiModel):
    """Spending cap."""

    max_cost_usd: float | None = Field(default=None, gt=0, alias="maxCostUSD")
    """Stop the Job when accrued or projected cost would pass this many USD. Checkpoint and partial
    adapter are kept."""


class FineTuneJobSpec(ApiModel):
    """What to fine-tune, on what data, with which hyperparameters and GPUs."""

    base_model: BaseModelSource
    """The model to adapt."""
    dataset: DatasetSpec
    """Training (and validation) data."""
    method: Literal["qlora", "lora"] = "qlora"
    """qlora: 4-bit NF4 frozen base + LoRA. lora: bf16 base + LoRA."""
    lora: LoraSpec = Field(default_factory=LoraSpec)
    """LoRA shape."""
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    """Quantisation of the base (qlora only)."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Hyperparameters."""
    resources: Resources = Field(default_factory=Resources)
    """GPUs."""
    output: OutputSpec
    """Output location."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpointing."""
    tracking: Tracking | None = None
    """Experiment tracking."""
    budget: BudgetSpec | None = None
    """Spending cap."""
    suspend: bool = False
    """Suspend the Job (pods stop); set back to false to resume from the checkpoint. The only field that may
    change after creation."""
    service_account_name: str | None = Field(default=None, max_length=253)
    """Pod service account; bind it to a Google service account (Workload Identity) for gs:// access."""
    image: str | None = Field(default=None, max_length=512)
    """Trainer image override (default: the operator's configured trainer image)."""


class Progress(StatusModel):
    """Live training progress, read from the trainer's metrics endpoint."""

    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Planned optimizer steps."""
    epoch: float | None = None
    """Fractional epoch."""
    percent: float | None = None
    """step / totalSteps x 100."""
    eta_seconds: float | None = None
    """Estimated seconds left."""
    loss: float | None = None
    """Latest training loss."""
    tokens_per_second: float | None = None
    """Recent training throughput."""
    summary: str | None = None
    """Human summary for kubectl, e.g. 42% 120/285."""
    updated_at: str | None = None
    """When progress was last read (RFC 3339)."""


class FineTuneMetrics(StatusModel):
    """Final metrics from the trainer's result."""

    train_loss: float | None = None
    """Mean training loss."""
    eval_loss: float | None = None
    """Final validation loss."""
    eval_perplexity: float | None = None
    """exp(evalLoss)."""
    tokens_per_second: float | None = None
    """Mean training throughput."""
    train_runtime_seconds: float | None = None
    """Training wall time."""


class Estimate(StatusModel):
    """GPU memory estimate used to admit the job and pick the accelerator."""

    gpu_memory_gib: float | None = Field(default=None, alias="gpuMemoryGiB")
    """Estimated peak memory per GPU, GiB."""
    fits: bool | None = None
    """Whether it fits the chosen accelerator x count."""
    accelerator: str | None = None
    """Accelerator chosen (resolves auto)."""
    count: int | None = None
    """GPUs per pod."""
    parameters_billions: float | None = None
    """Base model parameters, billions."""
    breakdown: dict[str, float] | None = None
    """GiB by component: weights, lora, optimizer, activations, overhead."""


class CheckpointStatus(StatusModel):
    """Latest complete checkpoint."""

    step: int | None = None
    """Step of the checkpoint."""
    uri: str | None = None
    """Where it is."""


class OutputStatus(StatusModel):
    """Artifacts produced."""

    adapter_uri: str | None = None
    """LoRA adapter (adapter_model.safetensors, adapter_config.json, tokenizer)."""
    merged_uri: str | None = None
    """Merged bf16 model, when spec.output.merge."""
    report_uri: str | None = None
    """training_report.json."""


class DataStats(StatusModel):
    """What the trainer made of the data."""

    format: str | None = None
    """Detected or declared format."""
    train_examples: int | None = None
    """Examples trained on."""
    validation_examples: int | None = None
    """Examples held out."""
    invalid_records: int | None = None
    """Records rejected (skip mode)."""
    duplicates_removed: int | None = None
    """Exact duplicates dropped."""
    over_length: int | None = None
    """Examples longer than maxSeqLength."""


class FineTuneJobStatus(CommonStatus):
    """Observed state, recomputed from the Job and its pods."""

    phase: Literal[Phase.PENDING, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED, Phase.SUSPENDED] | None = None
    """Pending, Running, Succeeded, Failed or Suspended."""
    job_name: str | None = None
    """The batch/v1 Job running the trainer."""
    gpu: str | None = None
    """Accelerator summary for kubectl, e.g. nvidia-l4x1 spot."""
    start_time: str | None = None
    """When the first pod started."""
    completion_time: str | None = None
    """When the Job finished."""
    duration_seconds: float | None = None
    """Wall time from start to completion (or now)."""
    progress: Progress | None = None
    """Live progress."""
    metrics: FineTuneMetrics | None = None
    """Final metrics."""
    estimate: Estimate | None = None
    """GPU memory estimate."""
    checkpoint: CheckpointStatus | None = None
    """Latest checkpoint."""
    restarts: int | None = None
    """Pod attempts beyond the first (preemptions and failures survived)."""
    attempts: list[PodAttempt] | None = None
    """Every trainer pod so far, with its billed span (status.cost sums these)."""
    output: OutputStatus | None = None
    """Artifacts."""
    data: DataStats | None = None
    """Data statistics."""
    mlflow: MlflowStatus | None = None
    """Tracking run."""
    failure: Failure | None = None
    """Why it failed."""


class FineTuneJob(ApiModel):
    """A QLoRA/LoRA fine-tuning run on GKE GPUs, with live progress, metrics and cost in status."""

    api_version: Literal["llmforge.dev/v1alpha1"] = "llmforge.dev/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: dict = Field(default_factory=dict)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

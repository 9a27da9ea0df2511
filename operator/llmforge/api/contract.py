"""The reporting contract between the pods we launch (trainer, eval) and the operator.

Final result: compact JSON (<= 4 KiB) written to the termination-message path, parsed with these models.
Live progress: Prometheus gauges on the pod's metrics port, named here. See docs/reporting-contract.md.
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

from pydantic import ValidationError

from .common import MlflowStatus, StatusModel
from .evaluation import EvalResults, Sample
from .finetunejob import CheckpointStatus, DataStats, FineTuneMetrics, OutputStatus

R = TypeVar("R", bound=StatusModel)

TERMINATION_LOG = "/dev/termination-log"
MAX_RESULT_BYTES = 4096
METRICS_PORT = 9090

#: Exit codes of llmforge-train / llmforge-eval.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_PREEMPTED = 143  # SIGTERM handled: checkpoint saved, safe to reschedule

#: Progress gauges the trainer exports (all unlabelled).
PROGRESS_METRICS = {
    "step": "llmforge_train_step",
    "total_steps": "llmforge_train_total_steps",
    "epoch": "llmforge_train_epoch",
    "loss": "llmforge_train_loss",
    "tokens_per_second": "llmforge_train_tokens_per_second",
    "learning_rate": "llmforge_train_learning_rate",
    "checkpoint_step": "llmforge_train_checkpoint_step",
}

FailureReason = Literal[
    "LossDiverged", "OutOfMemory", "DatasetNotFound", "InvalidData", "BadBaseModel", "InvalidSpec",
    "Preempted", "StorageError", "MetricError", "Error",
]


class TrainResult(StatusModel):
    """What llmforge-train reports when it ends."""

    phase: Literal["Succeeded", "Failed", "Preempted"]
    """Outcome."""
    reason: str | None = None
    """A FailureReason when not Succeeded."""
    message: str | None = None
    """What happened and what to try."""
    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Planned steps."""
    resumed_from_step: int | None = None
    """Checkpoint step this attempt resumed from."""
    metrics: FineTuneMetrics | None = None
    """Final metrics."""
    checkpoint: CheckpointStatus | None = None
    """Latest complete checkpoint."""
    output: OutputStatus | None = None
    """Artifacts."""
    data: DataStats | None = None
    """Data statistics."""
    mlflow: MlflowStatus | None = None
    """MLflow run."""


class EvalResult(StatusModel):
    """What llmforge-eval reports when it ends."""

    phase: Literal["Succeeded", "Failed"]
    """Outcome."""
    reason: str | None = None
    """A FailureReason when Failed."""
    message: str | None = None
    """Detail."""
    results: EvalResults | None = None
    """Scores (finetuned, base, delta, errors)."""
    samples_evaluated: int | None = None
    """Samples scored."""
    samples: list[Sample] | None = None
    """A few truncated examples."""
    report_uri: str | None = None
    """Per-sample JSONL."""
    mlflow: MlflowStatus | None = None
    """MLflow run."""


def encode_result(result: StatusModel) -> str:
    """Compact JSON within MAX_RESULT_BYTES: drop samples, then truncate the message, if needed."""
    data = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    text = _compact(data)
    if len(text.encode()) > MAX_RESULT_BYTES and "samples" in data:
        data["samples"] = data["samples"][:1]
        text = _compact(data)
    if len(text.encode()) > MAX_RESULT_BYTES and "samples" in data:
        del data["samples"]
        text = _compact(data)
    while len(text.encode()) > MAX_RESULT_BYTES and data.get("message"):
        data["message"] = data["message"][: len(data["message"]) // 2] + "…"
        text = _compact(data)
    return text


def decode_result(message: str | None, model: type[R]) -> R | None:
    """`encode_result`'s inverse for a pod's termination message: None when the message is absent, a log tail
    (FallbackToLogsOnError: the process died before writing one) or malformed."""
    if not message or not message.strip().startswith("{"):
        return None
    try:
        return model.model_validate(json.loads(message))
    except (ValueError, ValidationError, TypeError):
        return None


def _compact(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

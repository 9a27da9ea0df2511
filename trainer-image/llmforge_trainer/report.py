"""The run's two write-ups: ``training_report.json`` (everything, for people and MLflow) and the contract's
``TrainResult`` (compact, for the operator, via the termination message). Plus exception classification.

Pure functions: they shape data that the training loop collected; nothing here touches torch state.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from pathlib import Path
from typing import Any

from llmforge.api import contract

from .errors import TrainError

OOM_ADVICE = ("reduce training.batchSize (raise gradientAccumulationSteps to keep the effective batch), lower "
              "training.maxSeqLength, keep training.gradientCheckpointing on, or use a GPU with more memory / more "
              "GPUs (resources.count)")


def perplexity(mean_nll: float | None) -> float | None:
    """exp(mean negative log-likelihood per token). inf when it overflows; None when unknown."""
    if mean_nll is None:
        return None
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def classify(exc: BaseException, spec: Any | None = None) -> TrainError:
    """Map any exception to a TrainError with a reason from the contract and advice."""
    if isinstance(exc, TrainError):
        return exc
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfMemoryError" or isinstance(exc, MemoryError) or "CUDA out of memory" in text:
        where = ""
        if spec is not None:
            t = spec.training
            where = (f" (batchSize {t.batch_size}, maxSeqLength {t.max_seq_length}, gradientCheckpointing "
                     f"{str(t.gradient_checkpointing).lower()})")
        return TrainError("OutOfMemory", f"ran out of memory{where}: {OOM_ADVICE}. {text.splitlines()[0][:300]}"
                          if text else f"ran out of memory{where}: {OOM_ADVICE}.")
    tb = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {Path(tb[0].filename).name}:{tb[0].lineno}" if tb else ""
    return TrainError("Error", f"{name}{where}: {text}".strip()[:1500])


def loss_diverged(step: int, value: float, spec: Any) -> TrainError:
    t = spec.training
    return TrainError(
        "LossDiverged",
        f"training loss became {value} at step {step}. Try a lower training.learningRate (now {t.learning_rate:g}, "
        f"e.g. {t.learning_rate / 4:g}), a longer warmup (warmupRatio now {t.warmup_ratio:g}), a smaller maxGradNorm "
        f"(now {t.max_grad_norm:g}), and check the data for empty or garbage records.")


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf as strings (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return _finite(obj)


def build_report(**parts: Any) -> dict[str, Any]:
    """The training report: whatever parts the run has, with a schema version and strict-JSON numbers."""
    return clean({"schema": "llmforge.dev/training-report/v1", **parts})


def dumps_report(report: dict[str, Any]) -> bytes:
    return (json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def make_result(phase: str, **fields: Any) -> contract.TrainResult:
    """A TrainResult from snake_case fields, dropping Nones."""
    return contract.TrainResult.model_validate({"phase": phase, **{k: v for k, v in fields.items() if v is not None}})


def exit_code(result: contract.TrainResult, error: TrainError | None = None) -> int:
    if result.phase == "Succeeded":
        return contract.EXIT_OK
    if result.phase == "Preempted":
        return contract.EXIT_PREEMPTED
    return error.exit_code if error is not None else contract.EXIT_FAILED


def write_termination_message(result: contract.TrainResult, path: str | None) -> str:
    """Encode (<= 4 KiB) and write the result where Kubernetes reads the termination message. Returns the text."""
    text = contract.encode_result(result)
    if path:
        try:
            p = Path(path)
            if str(p) != contract.TERMINATION_LOG:
                p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            print(f"llmforge: cannot write termination message to {path}: {exc}", flush=True)
    return text


def termination_log_path(flag: str | None) -> str:
    return flag or os.environ.get("LLMFORGE_TERMINATION_LOG") or contract.TERMINATION_LOG

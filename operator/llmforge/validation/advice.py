"""Hyperparameter advice: legal but likely mistakes. Warnings only; never blocks a run.

Thresholds follow the QLoRA paper and common practice (Unsloth/HF docs): lr 1e-4..2e-4 for LoRA,
effective batch >= 8 for stable gradients, 1-3 epochs before overfitting, alpha between r/4 and 2r.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..api.evaluation import EvaluationSpec
from ..api.finetunejob import FineTuneJobSpec

MAX_LEARNING_RATE = 5e-4
MIN_EFFECTIVE_BATCH = 8
MAX_EPOCHS = 5


def finetune_advice(spec: FineTuneJobSpec) -> Iterator[tuple[str, str]]:
    """(field path, advice) pairs."""
    t, lora = spec.training, spec.lora
    if t.learning_rate > MAX_LEARNING_RATE:
        yield "spec.training.learningRate", (
            f"{t.learning_rate:g} is above {MAX_LEARNING_RATE:g}; LoRA usually diverges or forgets above it "
            "(try 1e-4 to 2e-4)")
    gpus = spec.resources.count
    effective = t.batch_size * t.gradient_accumulation_steps * gpus
    if effective < MIN_EFFECTIVE_BATCH:
        yield "spec.training.gradientAccumulationSteps", (
            f"effective batch size {effective} (batchSize {t.batch_size} x gradientAccumulationSteps "
            f"{t.gradient_accumulation_steps} x {gpus} GPU) is below {MIN_EFFECTIVE_BATCH}; gradients will be "
            "noisy (raise gradientAccumulationSteps)")
    if t.epochs > MAX_EPOCHS:
        yield "spec.training.epochs", f"{t.epochs:g} epochs is above {MAX_EPOCHS}; fine-tunes usually overfit by then"
    if not (lora.r / 4 <= lora.alpha <= 2 * lora.r):
        yield "spec.lora.alpha", (
            f"alpha {lora.alpha:g} is far from r/4..2r ({lora.r / 4:g}..{2 * lora.r:g}); the effective LoRA "
            "scale alpha/r is unusual")
    if t.warmup_ratio == 0 and t.scheduler != "constant":
        yield "spec.training.warmupRatio", "no warm-up; a few percent of steps usually stabilises LoRA"


def evaluation_advice(spec: EvaluationSpec) -> Iterator[tuple[str, str]]:
    if spec.dataset.max_samples < 20:
        yield "spec.dataset.maxSamples", (
            f"{spec.dataset.max_samples} samples give noisy metrics; thresholds may flip between runs")
    if spec.generation.temperature > 0:
        yield "spec.generation.temperature", "sampling makes results non-deterministic; 0 (greedy) is repeatable"
    if spec.thresholds is None:
        yield "spec.thresholds", "no thresholds: the Evaluation always passes"

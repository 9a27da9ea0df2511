"""The API: pydantic models of the three kinds. The single source of truth for CRDs, validation and
the trainer/server contract. Imports nothing else of llmforge."""

from .common import Condition, Cost, Rule
from .evaluation import Evaluation, EvaluationSpec, EvaluationStatus
from .finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus

KINDS = {"FineTuneJob": FineTuneJob, "Evaluation": Evaluation, "ModelDeployment": ModelDeployment}

__all__ = [
    "KINDS", "Condition", "Cost", "Evaluation", "EvaluationSpec", "EvaluationStatus", "FineTuneJob",
    "FineTuneJobSpec", "FineTuneJobStatus", "ModelDeployment", "ModelDeploymentSpec", "ModelDeploymentStatus",
    "Rule",
]

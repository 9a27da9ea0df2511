"""Lifecycle phases, each spelled once: ``status.phase`` of the three kinds, the canary's promotion phase, and
the Kubernetes pod phases the status functions read.

They are ``StrEnum``s, so a member equals its string (``Phase.SUCCEEDED == "Succeeded"``) and a status read
back from the API server compares equal without conversion. The status models use them in ``Literal[...]``,
which gives the CRDs the same string enum as before. Status functions write ``.value`` into their dicts:
PyYAML's safe dumper refuses ``str`` subclasses, and a status is plain data wherever it goes.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """``status.phase`` of a FineTuneJob or an Evaluation (the two kinds that run a Job to an end)."""

    PENDING = "Pending"
    #: Evaluation only: its FineTuneJob has not succeeded yet.
    WAITING_FOR_MODEL = "WaitingForModel"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


#: Phases a FineTuneJob or Evaluation never leaves: its record stands even after its Job is deleted.
TERMINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class DeploymentPhase(StrEnum):
    """``status.phase`` of a ModelDeployment."""

    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"


class PromotionPhase(StrEnum):
    """``status.promotionPhase`` of a ModelDeployment's canary."""

    PROGRESSING = "Progressing"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class PodPhase(StrEnum):
    """Kubernetes' ``Pod.status.phase`` (core/v1), as the status functions read it."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"

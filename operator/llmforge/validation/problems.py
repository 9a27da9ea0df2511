"""The one shape every validation finding takes, printed as `<kind>/<name>: <field.path>: <reason>`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Problem:
    kind: str
    name: str
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"
    #: Machine-readable reason for conditions/events (e.g. InsufficientGPUMemory, Advice).
    reason: str = "Invalid"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{self.kind}/{self.name}: {self.path}: {self.message}"


class ValidationFailed(Exception):
    """Raised by callers that want an exception rather than a list."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))

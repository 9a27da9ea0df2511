"""Pure builders: a validated custom resource in, the child manifests the operator applies out.

One module per kind (finetunejob, evaluation, modeldeployment) plus what they share (common: labels, security,
GKE placement and requests; batchjob: the Job both work kinds run). No API calls here; the same functions
serve the reconcilers and `llmforge render`, whose output for every example is pinned by
tests/unit/test_render_golden.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..settings import Settings

#: kind -> builder(resource dict, settings) -> children, for all three kinds (filled in by _register below).
BUILDERS: dict[str, Callable[[dict[str, Any], Settings], list[dict[str, Any]]]] = {}


def render_children(resource: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Every child object the operator would create for this resource (none for a kind that is not ours)."""
    builder = BUILDERS.get(resource.get("kind", ""))
    return builder(resource, settings) if builder else []


def _register() -> None:
    from . import evaluation, modeldeployment
    from .finetunejob import build_children as finetunejob_children

    BUILDERS["FineTuneJob"] = finetunejob_children
    BUILDERS["Evaluation"] = evaluation.render
    BUILDERS["ModelDeployment"] = modeldeployment.render


_register()

"""Pure builders: a validated custom resource in, the child manifests the operator applies out.

No API calls here; the same functions serve the reconcilers and `llmforge render`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..settings import Settings

#: kind -> builder(resource dict, settings) -> children. Filled in by each kind's builder module.
BUILDERS: dict[str, Callable[[dict[str, Any], Settings], list[dict[str, Any]]]] = {}


def render_children(resource: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Every child object the operator would create for this resource (empty until its builder exists)."""
    builder = BUILDERS.get(resource.get("kind", ""))
    return builder(resource, settings) if builder else []


def _register() -> None:
    from . import evaluation, modeldeployment
    from .finetunejob import build_children as finetunejob_children

    BUILDERS["FineTuneJob"] = finetunejob_children
    BUILDERS["Evaluation"] = evaluation.render
    BUILDERS["ModelDeployment"] = modeldeployment.render


_register()

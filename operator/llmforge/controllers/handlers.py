"""kopf registrations for the three kinds. Handlers only admit and delegate to the per-kind reconcilers."""

from __future__ import annotations

from typing import Any

import kopf

from .. import GROUP, VERSION
from . import admission
from .metrics import CENSUS, instrumented

KINDS = {"FineTuneJob": "finetunejobs", "Evaluation": "evaluations", "ModelDeployment": "modeldeployments"}
#: Kinds whose reconciles kopf triggers (create/update/resume, diff-base annotation). FineTuneJobs are
#: triggered from their own watch by generation vs. observedGeneration instead (finetunejob.py): at
#: thousands of jobs kopf's annotation patches were an eighth of the API server's time.
KOPF_TRIGGERED = ("Evaluation", "ModelDeployment")

#: kind -> async reconcile(model, body, patch, logger, **kw). Per-kind modules register here.
RECONCILERS: dict[str, Any] = {}


def register() -> None:
    """Register create/update/resume handlers for the kopf-triggered kinds, and every kind's own
    registrations (idempotent per kopf registry)."""
    for kind in KOPF_TRIGGERED:
        _register_kind(kind, KINDS[kind])
    from . import evaluation, finetunejob, modeldeployment
    from .run import SETTINGS

    finetunejob.register(SETTINGS)
    evaluation.register(SETTINGS)
    modeldeployment.register(SETTINGS)


def _register_kind(kind: str, plural: str) -> None:
    @kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-census")
    async def census(type: str | None, body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
        CENSUS.observe(kind, namespace, name, body, deleted=type == "DELETED")

    @kopf.on.resume(GROUP, VERSION, plural, id=f"{plural}-resume")
    @kopf.on.create(GROUP, VERSION, plural, id=f"{plural}-create")
    @kopf.on.update(GROUP, VERSION, plural, id=f"{plural}-update", field="spec")
    @instrumented(kind, "reconcile")
    async def reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any, reason: Any = None, **kw: Any) -> None:
        model, warnings = admission.admit(body, patch, logger)
        if model is None:
            return
        if str(reason) in ("create", "update"):
            for w in warnings:
                kopf.warn(body, reason="Advice", message=f"{w.path}: {w.message}")
        reconciler = RECONCILERS.get(kind)
        if reconciler is not None:
            await reconciler(model=model, body=body, patch=patch, logger=logger, **kw)
        elif not body.get("status", {}).get("phase"):
            patch.status["phase"] = "Pending"
            patch.status["observedGeneration"] = body.get("metadata", {}).get("generation")

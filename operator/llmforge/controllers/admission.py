"""Admission inside the operator: the same rules as `llmforge validate`, turned into status and events."""

from __future__ import annotations

from typing import Any

import kopf

from ..status.conditions import set_condition
from ..validation import validate_object
from ..validation.problems import Problem
from ..validation.validate import parse


def admit(body: kopf.Body, patch: kopf.Patch, logger: Any) -> tuple[Any, list[Problem]]:
    """Validate; on errors set Validated=False (+phase Failed) and return (None, errors). Never raises."""
    obj = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
           "metadata": dict(body.get("metadata", {})), "spec": dict(body.get("spec", {}))}
    problems = validate_object(obj)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    generation = body.get("metadata", {}).get("generation")
    conditions = list(body.get("status", {}).get("conditions", []))
    if errors:
        message = "; ".join(f"{p.path}: {p.message}" for p in errors)
        reason = errors[0].reason if errors[0].reason not in ("Invalid", "FieldValueInvalid") else "InvalidSpec"
        conditions = set_condition(conditions, "Validated", False, reason, message, generation)
        patch.status["conditions"] = conditions
        patch.status["phase"] = "Failed"
        patch.status["observedGeneration"] = generation
        patch.status["failure"] = {"reason": reason, "message": message}
        kopf.warn(body, reason=reason, message=message[:1024])
        logger.warning(f"rejected: {message}")
        return None, errors
    conditions = set_condition(conditions, "Validated", True, "Valid", "spec passed validation", generation)
    if warnings:
        advice = "; ".join(f"{p.path}: {p.message}" for p in warnings)
        conditions = set_condition(conditions, "Advice", True, "HyperparameterAdvice", advice, generation)
    patch.status["conditions"] = conditions
    model, _ = parse(obj)
    return model, warnings

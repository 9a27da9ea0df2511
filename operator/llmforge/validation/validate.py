"""validate_object(): one manifest in, every problem out, in the order a person should fix them."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .. import API_VERSION
from ..api import KINDS
from ..api.evaluation import Evaluation
from ..api.finetunejob import FineTuneJob
from ..api.modeldeployment import ModelDeployment
from . import advice, cel, semantic
from .problems import Problem

_SEMANTICS = {
    "FineTuneJob": semantic.finetune_semantics,
    "Evaluation": semantic.evaluation_semantics,
    "ModelDeployment": semantic.deployment_semantics,
}
_ADVICE = {"FineTuneJob": advice.finetune_advice, "Evaluation": advice.evaluation_advice}


def validate_object(obj: Any) -> list[Problem]:
    """Schema, CEL, semantic errors, then advice warnings. Never raises on bad input."""
    if not isinstance(obj, dict):
        return [Problem("?", "?", "(document)", f"expected a mapping, got {type(obj).__name__}")]
    kind = str(obj.get("kind") or "?")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = str(meta.get("name") or "?")
    if kind not in KINDS:
        return [Problem(kind, name, "kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")]
    problems: list[Problem] = []
    if obj.get("apiVersion") != API_VERSION:
        problems.append(Problem(kind, name, "apiVersion", f"must be {API_VERSION}, got {obj.get('apiVersion')!r}"))
    if not meta.get("name"):
        problems.append(Problem(kind, name, "metadata.name", "Required value"))
    model, schema_problems = parse(obj)
    problems += schema_problems
    if model is None:
        return problems
    for path, rule in cel.violations(model.spec, "spec"):
        problems.append(Problem(kind, name, path, rule.message, reason=rule.reason or "FieldValueInvalid"))
    for path, message, *reason in _SEMANTICS[kind](model.spec, name):
        problems.append(Problem(kind, name, path, message, reason=reason[0] if reason else "Invalid"))
    if not problems and kind in _ADVICE:
        for path, message in _ADVICE[kind](model.spec):
            problems.append(Problem(kind, name, path, message, severity="warning", reason="Advice"))
    return problems


def parse(obj: dict) -> tuple[FineTuneJob | Evaluation | ModelDeployment | None, list[Problem]]:
    """The typed object (defaults applied), or the schema problems. Status is ignored, as on create."""
    kind = obj.get("kind", "?")
    name = (obj.get("metadata") or {}).get("name") or "?"
    body = {k: v for k, v in obj.items() if k not in ("status", "apiVersion")}
    try:
        return KINDS[kind].model_validate(body), []
    except ValidationError as exc:
        return None, [Problem(kind, name, _path(e["loc"]), _message(e)) for e in exc.errors()]


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("literal['llmforge.dev/v1alpha1']",):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "missing":
        return "Required value"
    if kind == "extra_forbidden":
        return "unknown field (not declared in schema)"
    msg = err["msg"]
    if kind.startswith("literal_error") or kind == "enum":
        return f"Unsupported value: {err.get('input')!r}: {msg.removeprefix('Input ')}"
    return f"Invalid value: {err.get('input')!r}: {msg.removeprefix('Input ')}"

"""Evaluate the models' CEL rules offline with cel-python, on the defaulted object, as the apiserver does.

Transition rules (those using oldSelf) only apply to updates; `transition(old, new)` covers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import celpy
from pydantic import BaseModel

from ..api.common import ApiModel, Rule


def _is_sorted(items: Any) -> celpy.celtypes.BoolType:
    return celpy.celtypes.BoolType(all(a <= b for a, b in zip(items, items[1:], strict=False)))


# Kubernetes' CEL list library functions our rules use, for cel-python.
K8S_FUNCTIONS = {"isSorted": _is_sorted}


@cache
def _program(expr: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expr), functions=K8S_FUNCTIONS)


def evaluate(rule: str, self_value: Any, old_value: Any = None) -> bool:
    """True when the rule holds. An evaluation error (e.g. a missing field) counts as a violation."""
    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    try:
        return bool(_program(rule).evaluate(activation))
    except celpy.CELEvalError:
        return False


def violations(obj: BaseModel, path: str) -> Iterator[tuple[str, Rule]]:
    """(field path, rule) for every rule that fails anywhere below obj."""
    for sub_path, model in _walk(obj, path):
        rules: tuple[Rule, ...] = getattr(type(model), "rules", ())
        if not rules:
            continue
        data = model.dump()
        for rule in rules:
            if rule.is_transition or evaluate(rule.rule, data):
                continue
            yield sub_path + (rule.field_path or ""), rule


def _walk(obj: Any, path: str) -> Iterator[tuple[str, ApiModel]]:
    if isinstance(obj, ApiModel):
        yield path, obj
        for name, field in type(obj).model_fields.items():
            value = getattr(obj, name)
            if value is not None:
                yield from _walk(value, f"{path}.{field.alias or name}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _walk(item, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for key, item in obj.items():
            yield from _walk(item, f"{path}[{key}]")

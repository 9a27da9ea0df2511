"""Lifecycle phases are spelled once, in ``llmforge.api.phases``: the status models' enums are built from the
enums (so the CRDs' `phase` enums are too), promotion.py's literal agrees with them, and the status functions
write plain strings, never an enum member (JSON would accept one; PyYAML's safe dumper would not).
"""

from __future__ import annotations

from typing import Any, get_args

import yaml

from llmforge import promotion
from llmforge.api.evaluation import EvaluationStatus
from llmforge.api.finetunejob import FineTuneJobStatus
from llmforge.api.modeldeployment import ModelDeploymentStatus
from llmforge.api.phases import TERMINAL, DeploymentPhase, Phase, PromotionPhase
from llmforge.status.evaluation import compute_status as evaluation_status
from llmforge.status.modeldeployment import ObservedVariant
from tests.unit import test_evaluation_operator as ev
from tests.unit import test_ftj_status as ft
from tests.unit import test_modeldeployment_status as md


def _literal(model: Any, field: str) -> set[Any]:
    literal = next(a for a in get_args(model.model_fields[field].annotation) if a is not type(None))
    return set(get_args(literal))


def test_status_models_take_their_phases_from_the_enums():
    assert _literal(FineTuneJobStatus, "phase") == set(Phase) - {Phase.WAITING_FOR_MODEL}
    assert _literal(EvaluationStatus, "phase") == set(Phase)
    assert _literal(ModelDeploymentStatus, "phase") == set(DeploymentPhase)
    assert _literal(ModelDeploymentStatus, "promotion_phase") == set(PromotionPhase)
    assert set(get_args(promotion.Phase)) == {p.value for p in PromotionPhase}
    assert TERMINAL == {"Succeeded", "Failed"}


def _strings(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in (k, *_strings(v))]
    if isinstance(node, list):
        return [x for v in node for x in _strings(v)]
    return [node] if isinstance(node, str) else []


def _assert_plain(status: dict[str, Any]) -> None:
    strings = _strings(status)
    assert status["phase"] in strings and len(strings) > 5
    assert [s for s in strings if type(s) is not str] == []
    yaml.safe_dump(status)  # raises RepresenterError on a str subclass


def test_statuses_hold_plain_strings():
    done = ft.status_of(ft.resource(), ft.job(("Complete", "Completed", "", 600), completion=600),
                        [ft.pod("p1", "Succeeded", start=0, end=600, exit_code=0)])
    assert done["phase"] == Phase.SUCCEEDED
    _assert_plain(done)
    waiting = evaluation_status(ev.ev(), ev.ftj(phase="Running"), None, [], ev.NOW)
    assert waiting["phase"] == Phase.WAITING_FOR_MODEL
    _assert_plain(waiting)
    ready = md.status_of([ObservedVariant("stable", 100, deployment=md.deployment(1, 1))])
    assert ready["phase"] == DeploymentPhase.READY
    _assert_plain(ready)

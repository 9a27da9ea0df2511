"""docs/api.md: generated from the API models, complete (every spec and status field of every kind, walked
independently through the pydantic models), and current (drift test, also through the CLI's --check)."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from llmforge.api import KINDS
from llmforge.api.reference import render_reference

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"


def _unwrap(annotation):
    """Model, list of models or map of models inside Optional/Union/Annotated; (model, suffix) or None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found:
                return found
        return None
    if origin is list:
        inner = _unwrap(typing.get_args(annotation)[0])
        return (inner[0], "[]" + inner[1]) if inner else None
    if origin is dict:
        inner = _unwrap(typing.get_args(annotation)[1])
        return (inner[0], ".<key>" + inner[1]) if inner else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    return None


def model_paths(model: type[BaseModel], prefix: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        path = f"{prefix}.{alias}"
        out.append(path)
        found = _unwrap(field.annotation)
        if found:
            out += model_paths(found[0], path + found[1])
    return out


def _rows(text: str) -> dict[str, str]:
    return {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_spec_and_status_field_is_documented(kind):
    model = KINDS[kind]
    spec = model.model_fields["spec"].annotation
    status = _unwrap(model.model_fields["status"].annotation)[0]
    expected = model_paths(spec, "spec") + model_paths(status, "status")
    assert len(expected) > 20
    rows = _rows(_section(kind))
    missing = [p for p in expected if p not in rows]
    assert missing == []
    undocumented = [p for p, row in rows.items() if row.rstrip().endswith("|  |")]
    assert undocumented == [], "fields without a docstring"


def _section(kind: str) -> str:
    return DOC.read_text().split(f"\n## {kind}\n", 1)[1].split("\n## ", 1)[0]


def test_rows_carry_type_default_and_constraints():
    rows = _rows(_section("FineTuneJob"))
    assert rows["spec.lora.r"].split(" | ")[1:3] == ["`integer`", "`16`"]
    assert ">= 1; <= 1024" in rows["spec.lora.r"]
    assert "`[]string`" in rows["spec.lora.targetModules"]
    assert "one of `Pending`, `Running`, `Succeeded`, `Failed`, `Suspended`" in rows["status.phase"]
    assert "required" in rows["spec.dataset.train"]
    assert "`map[string]object`" in _rows(_section("Evaluation"))["spec.thresholds"]


def test_reference_is_current():
    assert DOC.read_text() == render_reference(), "stale: run `llmforge docs --out docs/api.md`"


def test_cli_check_fails_on_drift(tmp_path):
    stale = tmp_path / "api.md"
    stale.write_text(render_reference().replace("Rank.", "Rank!"))
    cmd = [sys.executable, "-m", "llmforge.cli.main", "docs", "--out"]
    env = {"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin"}
    assert subprocess.run([*cmd, str(stale), "--check"], env=env, capture_output=True).returncode == 1
    assert subprocess.run([*cmd, str(DOC), "--check"], env=env, capture_output=True).returncode == 0

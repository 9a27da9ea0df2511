"""`llmforge validate` on valid examples, the shared invalid table, advice and CLI error handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmforge.validation import validate_object
from tests.cases import CASES, SEMANTIC_CASES, ftj

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml"))


def test_at_least_25_invalid_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES + SEMANTIC_CASES, ids=lambda c: c.id)
def test_invalid_case_names_field_and_reason(case):
    errors = [p for p in validate_object(case.obj) if p.severity == "error"]
    assert errors, "expected a rejection"
    assert any(p.path == case.path and case.ours in p.message for p in errors), [str(p) for p in errors]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("apiVersion", "").startswith("llmforge.dev/"):
            errors = [str(p) for p in validate_object(doc) if p.severity == "error"]
            assert errors == []


def test_advice_is_warning_only():
    problems = validate_object(ftj(training={"learningRate": 1e-3, "epochs": 8, "batchSize": 1,
                                             "gradientAccumulationSteps": 2}, lora={"r": 64, "alpha": 4}))
    assert problems and all(p.severity == "warning" for p in problems)
    paths = {p.path for p in problems}
    assert paths >= {"spec.training.learningRate", "spec.training.epochs", "spec.training.gradientAccumulationSteps",
                     "spec.lora.alpha"}


def test_good_hyperparameters_get_no_advice():
    assert validate_object(ftj(training={"batchSize": 4, "gradientAccumulationSteps": 4})) == []


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmforge.cli.main", *args], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "operator"), "PATH": "/usr/bin"})


def test_cli_prints_one_line_per_problem_and_exits_1(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump_all([CASES[2].obj, CASES[15].obj]))
    out = _cli("validate", "-f", str(f))
    assert out.returncode == 1
    assert "FineTuneJob/bad: spec.lora.r: " in out.stdout
    assert "FineTuneJob/bad: spec.dataset.validationSplit: validationSplit must be in (0, 0.5)" in out.stdout
    assert "Traceback" not in out.stderr


def test_cli_warnings_exit_0(tmp_path):
    f = tmp_path / "warn.yaml"
    f.write_text(yaml.safe_dump(ftj(training={"learningRate": 1e-3})))
    out = _cli("validate", "-f", str(f))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("warning: FineTuneJob/bad: spec.training.learningRate:")


@pytest.mark.parametrize("content,expected", [
    ("a: [\n", "invalid YAML"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "unknown kind 'Pod'"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, content, expected):
    f = tmp_path / "in.yaml"
    f.write_text(content)
    out = _cli("validate", "-f", str(f))
    assert out.returncode == 1
    assert expected in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_cli_missing_file():
    out = _cli("validate", "-f", "/nonexistent/x.yaml")
    assert out.returncode == 1
    assert out.stderr.strip() == "error: /nonexistent/x.yaml: no such file"

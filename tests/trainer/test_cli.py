"""llmforge-train's argument and spec handling: exit codes and the termination message, before any torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmforge.api import contract
from llmforge_trainer import cli

REPO = Path(__file__).resolve().parents[2]


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main(["--help"])
    assert ei.value.code == 0
    assert "--termination-log" in capsys.readouterr().out


def test_invalid_spec_exit_2_and_result(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"apiVersion": "llmforge.dev/v1alpha1", "kind": "FineTuneJob",
                                    "spec": {"baseModel": {"uri": "/m"}, "dataset": {"train": "/t.jsonl"},
                                             "output": {"uri": "/o"}, "lora": {"r": 0}}}))
    term = tmp_path / "term"
    code = cli.main(["--spec", str(spec), "--termination-log", str(term)])
    assert code == contract.EXIT_INVALID_INPUT
    res = contract.TrainResult.model_validate_json(term.read_text())
    assert (res.phase, res.reason) == ("Failed", "InvalidSpec")
    assert "spec.lora.r" in res.message and "greater than or equal to 1" in res.message


def test_missing_spec_file_and_env_termination_path(tmp_path, monkeypatch):
    term = tmp_path / "sub" / "term.json"
    monkeypatch.setenv("LLMFORGE_TERMINATION_LOG", str(term))
    assert cli.main(["--spec", str(tmp_path / "nope.yaml")]) == contract.EXIT_INVALID_INPUT
    data = json.loads(term.read_text())
    assert data["reason"] == "InvalidSpec" and "nope.yaml" in data["message"]


def test_load_job_accepts_multi_document_files_and_bare_specs(tmp_path):
    job = cli.load_job(str(REPO / "examples" / "00-quickstart.yaml"))
    raw = next(d for d in yaml.safe_load_all((REPO / "examples" / "00-quickstart.yaml").read_text())
               if d["kind"] == "FineTuneJob")
    assert job.metadata["name"] == "quickstart" and job.spec.training.max_steps == raw["spec"]["training"]["maxSteps"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"baseModel": {"name": "x"}, "dataset": {"train": "/t"}, "output": {"uri": "/o"}}))
    assert cli.load_job(str(bare)).spec.base_model.name == "x"
    two = tmp_path / "two.yaml"
    two.write_text("kind: FineTuneJob\nspec: {}\n---\nkind: FineTuneJob\nspec: {}\n")
    with pytest.raises(ValueError, match="expected one FineTuneJob among 2 documents, found 2"):
        cli.load_job(str(two))

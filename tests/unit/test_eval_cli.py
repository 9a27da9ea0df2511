"""llmforge-eval failure paths that end before any model is loaded: each ends in a readable EvalResult at the
termination-message path (flag or $LLMFORGE_TERMINATION_LOG) and the contract's exit code."""

from __future__ import annotations

import json

import pytest
import yaml

from llmforge.api import contract
from llmforge_trainer import eval_cli


def _spec(tmp_path, **over):
    spec = {"model": {"adapterUri": str(tmp_path), "baseModel": {"uri": str(tmp_path)}},
            "dataset": {"uri": str(tmp_path / "data.jsonl")}, "output": {"uri": str(tmp_path / "out")}}
    spec.update(over)
    return spec


def _run(tmp_path, doc, *extra, env_log=False, monkeypatch=None):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    term = tmp_path / "term.json"
    args = ["--spec", str(path), *extra]
    if env_log:
        monkeypatch.setenv("LLMFORGE_TERMINATION_LOG", str(term))
    else:
        args += ["--termination-log", str(term)]
    code = eval_cli.main(args)
    return code, contract.EvalResult.model_validate_json(term.read_text())


def test_invalid_spec(tmp_path):
    code, res = _run(tmp_path, {"kind": "Evaluation", "spec": {"model": {}, "dataset": {"uri": "x"}, "bogus": 1}})
    assert code == contract.EXIT_INVALID_INPUT
    assert res.phase == "Failed" and res.reason == "InvalidSpec" and "bogus" in res.message


def test_unreadable_spec(tmp_path):
    code, res = _run(tmp_path, "a: [unclosed")
    assert (code, res.reason) == (contract.EXIT_INVALID_INPUT, "InvalidSpec")


def test_finetunejob_ref_needs_resolution(tmp_path):
    spec = _spec(tmp_path, model={"fineTuneJobRef": {"name": "ftj"}})
    code, res = _run(tmp_path, {"spec": spec, "kind": "Evaluation"})
    assert res.reason == "InvalidSpec" and "--adapter" in res.message and "ftj" in res.message
    assert code == contract.EXIT_INVALID_INPUT


def test_dataset_not_found(tmp_path, monkeypatch):
    code, res = _run(tmp_path, _spec(tmp_path), env_log=True, monkeypatch=monkeypatch)
    assert (code, res.reason) == (contract.EXIT_INVALID_INPUT, "DatasetNotFound")


def test_invalid_records_listed_with_file_and_line(tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n{oops\n"
                                         + json.dumps({"prompt": "q"}) + "\n")
    code, res = _run(tmp_path, _spec(tmp_path))
    assert res.reason == "InvalidData" and code == contract.EXIT_INVALID_INPUT
    assert "data.jsonl:2" in res.message and "data.jsonl:3" in res.message


def test_text_format_has_no_reference(tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    code, res = _run(tmp_path, _spec(tmp_path))
    assert res.reason == "InvalidData" and "reference" in res.message


def test_missing_adapter_and_output(tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    code, res = _run(tmp_path, _spec(tmp_path, output={}))
    assert res.reason == "InvalidSpec" and "output" in res.message
    code, res = _run(tmp_path, _spec(tmp_path), "--adapter", str(tmp_path / "nope"))
    assert res.reason == "InvalidSpec" and "nope" in res.message and code == contract.EXIT_INVALID_INPUT


def test_flags_override_spec(tmp_path):
    doc = {"kind": "Evaluation", "metadata": {"name": "e"}, "spec": _spec(tmp_path)}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(doc))
    spec, meta = eval_cli.load_spec(str(tmp_path / "e.yaml"))
    assert meta == {"name": "e"}
    assert eval_cli.resolve_model(spec, "gs://b/a", "org/model") == ("gs://b/a", "org/model")
    assert eval_cli.resolve_model(spec, None, None) == (str(tmp_path), str(tmp_path))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_spec(tmp_path)))  # a bare spec works too
    assert eval_cli.load_spec(str(tmp_path / "b.yaml"))[0] == spec


@pytest.mark.parametrize(("r", "want"), [(4, 8), (8, 8), (12, 16), (64, 64), (100, 128)])
def test_vllm_lora_rank(tmp_path, r, want):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": r}))
    assert eval_cli._lora_rank(str(tmp_path)) == want

"""Failure modes end in a TrainResult with a clear reason, and the right exit code; MLflow trouble does not.

Real runs (in-process, tiny model) for: NaN loss (a poisoned base), OOM raised from inside the training loop,
bad base model, missing dataset, and an unreachable MLflow server (training goes on; the outage is reported).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from llmforge.api import contract
from llmforge.api.finetunejob import FineTuneJob
from llmforge_trainer.tracking import Tracker
from tests.trainer.test_train_e2e import qlora_job


def _run(doc: dict, work: Path, callbacks=()):
    import torch

    from llmforge_trainer.train import RunOptions, run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(FineTuneJob.model_validate(doc), RunOptions(work_dir=work, callbacks=list(callbacks)))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def poisoned_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with a NaN in the final norm: every logit, hence the loss, is NaN."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("poisoned")
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        m.model.norm.weight[0] = float("nan")
    m.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(d)
    return d


@pytest.mark.ml
def test_nan_loss_fails_with_loss_diverged_and_no_poisoned_checkpoint(poisoned_model, tiny_data_dir, tmp_path):
    doc = qlora_job(poisoned_model, tiny_data_dir, str(tmp_path / "out"), maxSteps=4, loggingSteps=1, evalSteps=0)
    doc["spec"]["checkpoint"] = {"everySteps": 1}
    doc["spec"]["output"]["merge"] = False
    result, code, rep = _run(doc, tmp_path / "work")
    assert (result.phase, result.reason, code) == ("Failed", "LossDiverged", contract.EXIT_FAILED)
    assert "at step 1" in result.message and "learningRate" in result.message
    assert rep["phase"] == "Failed" and (tmp_path / "out" / "training_report.json").is_file()
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "adapter").exists()


class OomAt:
    """Raise the real torch OOM error at a given step, as CUDA would."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kw):
        import torch

        if state.global_step == self.step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 22.05 GiB total)")

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


@pytest.mark.ml
def test_oom_inside_training_fails_with_advice(tiny_model_dir, tiny_data_dir, tmp_path):
    doc = qlora_job(tiny_model_dir, tiny_data_dir, str(tmp_path / "out"), maxSteps=4, loggingSteps=1, evalSteps=0)
    doc["spec"]["output"]["merge"] = False
    result, code, _ = _run(doc, tmp_path / "work", callbacks=[OomAt(2)])
    assert (result.phase, result.reason, code) == ("Failed", "OutOfMemory", contract.EXIT_FAILED)
    assert "batchSize 8" in result.message and "maxSeqLength 256" in result.message
    assert "gradientAccumulationSteps" in result.message and "Tried to allocate 2.00 GiB" in result.message
    assert result.step == 2


@pytest.mark.ml
@pytest.mark.parametrize("kind", ["missing", "garbage-config"])
def test_bad_base_model(tiny_model_dir, tiny_data_dir, tmp_path, kind):
    base = tmp_path / "base"
    if kind == "garbage-config":
        shutil.copytree(tiny_model_dir, base)
        (base / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    doc = qlora_job(base, tiny_data_dir, str(tmp_path / "out"), maxSteps=2)
    result, code, _ = _run(doc, tmp_path / "work")
    assert (result.phase, result.reason, code) == ("Failed", "BadBaseModel", contract.EXIT_INVALID_INPUT)
    assert str(base) in result.message
    if kind == "missing":
        assert "not found (no config.json" in result.message
    else:
        assert "no-such-architecture" in result.message


@pytest.mark.ml
def test_missing_dataset(tiny_model_dir, tiny_data_dir, tmp_path):
    doc = qlora_job(tiny_model_dir, tiny_data_dir, str(tmp_path / "out"), maxSteps=2)
    doc["spec"]["dataset"]["train"] = str(tmp_path / "nope.jsonl")
    result, code, _ = _run(doc, tmp_path / "work")
    assert (result.phase, result.reason, code) == ("Failed", "DatasetNotFound", contract.EXIT_INVALID_INPUT)
    assert result.message == f"{tmp_path / 'nope.jsonl'}: dataset file not found"


@pytest.fixture
def dead_port():
    """A port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ml
def test_mlflow_unreachable_training_continues_and_outage_reported(tiny_model_dir, tmp_path, dead_port):
    """Also covers: chat format, invalid records skipped, validation split, no packing."""
    from llmforge_trainer.tiny import make_records, write_jsonl

    recs = make_records(60, "chat")
    lines = [json.dumps(r) for r in recs] + ['{"messages": [{"role": "robot", "content": "x"}]}', "{oops"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(tmp_path / "d" / "validation.jsonl", [])
    doc = qlora_job(tiny_model_dir, tmp_path / "d", str(tmp_path / "out"), f"http://127.0.0.1:{dead_port}",
                    maxSteps=2, loggingSteps=1, packing=False, evalSteps=0)
    doc["spec"]["dataset"] = {"train": str(tmp_path / "d" / "train.jsonl"), "onInvalidRecord": "skip",
                              "validationSplit": 0.2}
    doc["spec"]["output"]["merge"] = False
    result, code, rep = _run(doc, tmp_path / "work")
    assert (result.phase, code) == ("Succeeded", 0), result.message
    assert result.mlflow is None
    outage = rep["mlflow"]["outage"]
    assert outage["errors"] >= 1 and outage["run_created"] is False and "start" in outage["calls_lost"]
    assert result.data.format == "chat" and result.data.invalid_records == 2
    assert (result.data.train_examples, result.data.validation_examples) == (48, 12)
    assert rep["params"]["sft.packing"] is False
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def test_tracker_outage_mid_run_is_counted_and_cooled_down():
    """A server that accepts then drops every connection: calls fail fast, are counted, and later ones are skipped
    during the cool-down instead of each waiting for a timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def drop():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    try:
        tr = Tracker(f"http://127.0.0.1:{port}", "x", {"llmforge.uid": "u"}, cooldown=60)
        tr.start(resume=False)
        assert not tr.active and tr.errors == 1 and "start" in tr.lost
        tr.run_id, tr.experiment_id = "fake-run", "0"  # as if the server died after the run was created
        for step in range(5):  # during the cool-down: skipped at once, but counted as lost
            tr.log_metrics({"loss": 1.0}, step)
        assert tr.errors == 1 and tr.lost["log_metrics"] == 5
        tr._skip_until = 0  # cool-down over: the next call tries (and fails) once, then skips again
        for step in range(5):
            tr.log_metrics({"loss": 1.0}, step)
        assert tr.errors == 2 and tr.lost["log_metrics"] == 10
        out = tr.outage()
        assert out["errors"] == 2 and out["first_error"]
    finally:
        stop.set()
        t.join()
        srv.close()

"""One real QLoRA run on the tiny Llama (CPU), recorded in a real MLflow server, checked from every side.

The run happens once per module (``qlora_run``); each test asserts one property of it. Design-doc properties
(seeds/004) covered here: 7 (base weights unchanged, adapter changed), 8 (only adapter weights saved),
9/21 (4-bit NF4), 10 (gradient accumulation delays updates), 11 (saved files carry quantisation config and
adapter weights), 12 (all hyperparameters logged), 13 (metrics at multiples of the logging interval),
14 (checkpoints linked to the run), 15 (final metrics logged), 16 (perplexity = exp(mean NLL)).
"""

from __future__ import annotations

import json
import logging
import math
import urllib.request
from pathlib import Path

import pytest

from llmforge.api import contract
from llmforge.api.finetunejob import FineTuneJob
from llmforge_trainer import storage
from tests.fixtures.services import free_port

pytestmark = pytest.mark.ml

LOGGING_STEPS = 2
MAX_STEPS = 12
GRAD_ACCUM = 2


def qlora_job(model_dir: Path, data_dir: Path, out_uri: str, tracking_uri: str | None = None, **training) -> dict:
    """A FineTuneJob manifest for the tiny model (shared by the trainer tests)."""
    t = {"maxSteps": MAX_STEPS, "batchSize": 8, "gradientAccumulationSteps": 1, "learningRate": 0.002,
         "loggingSteps": LOGGING_STEPS, "maxSeqLength": 256, "evalSteps": 6, "warmupRatio": 0.0, "seed": 7}
    t.update(training)
    doc = {
        "apiVersion": "llmforge.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "tiny-e2e", "namespace": "team-a", "uid": "0b5e-e2e-uid"},
        "spec": {
            "baseModel": {"uri": str(model_dir)},
            "dataset": {"train": str(data_dir / "train.jsonl"), "validation": str(data_dir / "validation.jsonl")},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "training": t,
            "resources": {"accelerator": "cpu"},
            "checkpoint": {"everySteps": 6, "keep": 2},
            "output": {"uri": out_uri, "merge": True},
        },
    }
    if tracking_uri:
        doc["spec"]["tracking"] = {"mlflow": {"trackingUri": tracking_uri, "experiment": "trainer-e2e"}}
    return doc


class Spy:
    """A TrainerCallback (duck-typed) that watches the real model and the live metrics endpoint."""

    def __init__(self, metrics_port: int):
        self.port = metrics_port
        self.base_before: dict[str, bytes] = {}
        self.base_after: dict[str, bytes] = {}
        self.layers: list[tuple[str, str, str | None, bool]] = []
        self.lora_name: str | None = None
        self.lora_prev = None
        self.substep_changes: list[bool] = []
        self.step_changes: list[bool] = []
        self.substeps_before_step: list[int] = []
        self._subs = 0
        self.scrapes: list[str] = []

    @staticmethod
    def _base_state(model) -> dict[str, bytes]:
        return {n: p.detach().cpu().contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
                for n, p in model.named_parameters() if not p.requires_grad}

    def _lora(self, model):
        return dict(model.named_parameters())[self.lora_name].detach().float().clone()

    def on_train_begin(self, args, state, control, model=None, **kw):
        import bitsandbytes as bnb

        self.base_before = self._base_state(model)
        for name, mod in model.named_modules():
            if isinstance(mod, bnb.nn.Linear4bit):
                qs = mod.weight.quant_state
                self.layers.append((name, type(mod.weight).__name__, qs.quant_type, bool(qs.nested)))
        self.lora_name = next(n for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
        self.lora_prev = self._lora(model)

    def on_substep_end(self, args, state, control, model=None, **kw):
        now = self._lora(model)
        self.substep_changes.append(not bool((now == self.lora_prev).all()))
        self._subs += 1

    def on_step_end(self, args, state, control, model=None, **kw):
        now = self._lora(model)
        self.step_changes.append(not bool((now == self.lora_prev).all()))
        self.lora_prev = now
        self.substeps_before_step.append(self._subs)
        self._subs = 0

    def on_log(self, args, state, control, **kw):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            self.scrapes.append(r.read().decode())

    def on_train_end(self, args, state, control, model=None, **kw):
        self.base_after = self._base_state(model)

    def __getattr__(self, name):  # the other TrainerCallback events: no-op
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, tiny_data_dir, mlflow_server, tmp_path_factory):
    import torch

    from llmforge_trainer.train import RunOptions, run

    root = tmp_path_factory.mktemp("e2e")
    out = root / "out"
    doc = qlora_job(tiny_model_dir, tiny_data_dir, out.as_uri(), mlflow_server.uri,
                    gradientAccumulationSteps=GRAD_ACCUM, batchSize=4)
    job = FineTuneJob.model_validate(doc)
    port = free_port()
    spy = Spy(port)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Grab()
    lg = logging.getLogger("llmforge.train")
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        result, code, rep = run(job, RunOptions(work_dir=root / "work", metrics_port=port, callbacks=[spy]))
    finally:
        lg.removeHandler(handler)
        torch.set_num_threads(threads)
    return {"result": result, "code": code, "report": rep, "out": out, "spy": spy, "job": job, "logs": records,
            "mlflow": mlflow_server, "data_dir": tiny_data_dir, "model_dir": tiny_model_dir}


def test_run_succeeds_and_result_fits_the_termination_message(qlora_run):
    result, code = qlora_run["result"], qlora_run["code"]
    assert (result.phase, code) == ("Succeeded", contract.EXIT_OK), result.message
    text = contract.encode_result(result)
    assert len(text.encode()) <= contract.MAX_RESULT_BYTES
    back = contract.TrainResult.model_validate_json(text)
    assert back.step == MAX_STEPS and back.total_steps == MAX_STEPS
    assert back.output.adapter_uri == qlora_run["out"].as_uri() + "/adapter"
    assert back.data.train_examples == 320 and back.data.validation_examples == 64
    assert back.mlflow.run_id and back.metrics.eval_perplexity > 1.0


def test_base_layers_are_real_nf4_linear4bit(qlora_run):
    # Properties 9 and 21: the frozen base is stored in 4-bit NF4 (double quantisation: nested state)
    layers = qlora_run["spy"].layers
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    assert {(w, q, n) for _, w, q, n in layers} == {("Params4bit", "nf4", True)}


def test_base_weights_unchanged_and_adapter_trained(qlora_run):
    # Property 7: compare by the right key (peft renames to .base_layer); key sets equal and non-empty
    spy = qlora_run["spy"]
    before, after = spy.base_before, spy.base_after
    assert before and set(before) == set(after)
    assert any(".base_layer." in k for k in before)
    assert [k for k in before if before[k] != after[k]] == []
    assert any(spy.step_changes)


def test_gradient_accumulation_delays_updates(qlora_run):
    # Property 10: the adapter changes only at optimizer steps, never after an accumulation micro-step
    # (the last micro-batch of an epoch flushes early, so a step may follow fewer than N-1 micro-steps)
    spy = qlora_run["spy"]
    assert spy.substep_changes and not any(spy.substep_changes)
    assert len(spy.step_changes) == MAX_STEPS and all(spy.step_changes)
    assert set(spy.substeps_before_step) <= set(range(GRAD_ACCUM))
    epochs = math.ceil(qlora_run["report"]["history"][-1]["epoch"])
    assert spy.substeps_before_step.count(GRAD_ACCUM - 1) >= MAX_STEPS - epochs


def test_adapter_files_hold_only_adapter_weights_and_quant_config(qlora_run):
    # Properties 8 and 11
    from safetensors import safe_open

    adapter = qlora_run["out"] / "adapter"
    for f in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
              "llmforge_adapter.json"):
        assert (adapter / f).is_file(), f
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as st:
        keys = list(st.keys())
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    assert len(keys) == 2 * 14
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (8, 16, "LORA")
    assert {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    info = json.loads((adapter / "llmforge_adapter.json").read_text())
    assert info["quantization"] == {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}


def _completion_nll(model, tokenizer, rows) -> float:
    import torch

    total = n = 0.0
    for r in rows:
        p = tokenizer(r["prompt"])["input_ids"]
        ids = torch.tensor([tokenizer(r["prompt"] + r["completion"])["input_ids"]])
        labels = ids.clone()
        labels[0, : len(p)] = -100
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        mask = labels[0, 1:] != -100
        total += float(-lp[mask].sum())
        n += int(mask.sum())
    return total / n


def test_loss_and_perplexity_decrease(qlora_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmforge_trainer import data

    hist = [h for h in qlora_run["report"]["history"] if "loss" in h]
    assert hist[-1]["loss"] < hist[0]["loss"]
    tok = AutoTokenizer.from_pretrained(qlora_run["model_dir"])
    rows = [data.render(e, tok) for e in data.read_file(str(qlora_run["data_dir"] / "validation.jsonl")).examples]
    base = AutoModelForCausalLM.from_pretrained(qlora_run["model_dir"], dtype=torch.float32)
    base_ppl = math.exp(_completion_nll(base, tok, rows))
    final_ppl = qlora_run["result"].metrics.eval_perplexity
    assert final_ppl < 0.7 * base_ppl, (base_ppl, final_ppl)


def test_merged_model_is_bf16_and_matches_base_plus_adapter(qlora_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged_dir = qlora_run["out"] / "merged"
    assert qlora_run["result"].output.merged_uri == merged_dir.as_uri()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == torch.bfloat16
    assert not [n for n, _ in merged.named_parameters() if "lora" in n]
    base = AutoModelForCausalLM.from_pretrained(qlora_run["model_dir"], dtype=torch.bfloat16)
    peft = PeftModel.from_pretrained(base, str(qlora_run["out"] / "adapter"))
    ids = torch.tensor([[5, 17, 42, 99, 123, 7]])
    with torch.no_grad():
        a, b = merged(input_ids=ids).logits.float(), peft(input_ids=ids).logits.float()
    assert torch.allclose(a, b, atol=0.1), (a - b).abs().max()


def test_report_has_data_stats_durations_and_history(qlora_run):
    rep = json.loads((qlora_run["out"] / "training_report.json").read_text())
    assert rep["phase"] == "Succeeded" and rep["resumed_from_step"] is None
    assert rep["data"]["format"] == "alpaca" and rep["data"]["records_read"] == 384
    for k in ("load_model_seconds", "data_seconds", "train_seconds", "total_seconds"):
        assert rep["durations"][k] > 0
    assert [h["step"] for h in rep["history"] if "loss" in h] == list(range(LOGGING_STEPS, MAX_STEPS + 1,
                                                                           LOGGING_STEPS))
    assert rep["checkpoints_published"] == [6, 12]
    assert rep["mlflow"]["outage"] is None
    assert "optimizer paged_adamw_8bit needs a CUDA GPU; using adamw_torch on this machine" in rep["notes"]


def test_mlflow_run_has_tags_params_metrics_and_report(qlora_run):
    # Properties 12, 13, 14, 15, 16 against the real tracking server
    client = qlora_run["mlflow"].client()
    run_id = qlora_run["result"].mlflow.run_id
    run = client.get_run(run_id)
    tags = run.data.tags
    assert (tags["llmforge.namespace"], tags["llmforge.name"], tags["llmforge.uid"]) == (
        "team-a", "tiny-e2e", "0b5e-e2e-uid")
    assert run.info.status == "FINISHED"
    params = run.data.params
    expected = {k: str(v) for k, v in qlora_run["report"]["params"].items()}
    assert len(expected) > 40 and {k: params.get(k) for k in expected} == expected
    for k in ("lora.r", "lora.alpha", "quantization.type", "sft.learning_rate", "data.train_examples"):
        assert k in params
    loss_steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert loss_steps == list(range(LOGGING_STEPS, MAX_STEPS + 1, LOGGING_STEPS))
    for name in ("learning_rate", "grad_norm", "tokens_per_second"):
        assert len(client.get_metric_history(run_id, name)) == len(loss_steps), name
    final = run.data.metrics
    assert math.isclose(final["eval_perplexity"], math.exp(final["eval_loss"]), rel_tol=1e-9)
    assert math.isclose(final["eval_loss"], qlora_run["result"].metrics.eval_loss, rel_tol=1e-6)
    assert "training_report.json" in [a.path for a in client.list_artifacts(run_id)]
    # Property 14: the newest checkpoint is linked both ways
    ckpt_uri = qlora_run["result"].checkpoint.uri
    assert tags["llmforge.checkpoint"] == ckpt_uri
    marker = json.loads((Path(storage.parse(ckpt_uri).path) / "_COMPLETE.json").read_text())
    assert marker["mlflow_run_id"] == run_id and marker["step"] == MAX_STEPS


def test_live_gauges_and_human_lines(qlora_run):
    scrapes = qlora_run["spy"].scrapes
    assert scrapes
    last = {line.split()[0]: float(line.split()[1]) for line in scrapes[-1].splitlines()
            if line.startswith("llmforge_train_")}
    assert set(contract.PROGRESS_METRICS.values()) <= set(last)
    assert last["llmforge_train_total_steps"] == MAX_STEPS
    assert last["llmforge_train_step"] == MAX_STEPS and last["llmforge_train_tokens_per_second"] > 0
    assert last["llmforge_train_checkpoint_step"] == 12
    lines = [m for m in qlora_run["logs"] if m.startswith("step ")]
    assert f"step {LOGGING_STEPS}/{MAX_STEPS} (17%) loss " in lines[0]
    assert any("tokens/s" in m and "eta" in m for m in lines)

"""Preemption and resume, with the real entrypoint in subprocesses (as in a pod):

Output and data on gs:// (fake-gcs-server + google-cloud-storage). Three attempts, each a fresh scratch dir
(like a new pod):

1. SIGTERM mid-run: the trainer saves a checkpoint at the step it stopped, exits 143 with a Preempted result.
2. Resumes there (no step repeated or lost); SIGKILLed after checkpoint 8 (no result, no goodbye).
3. A half-uploaded newer checkpoint is planted first; the attempt ignores it, resumes from 8, repeats only the
   steps after 8, and finishes with the adapter and report on gs://.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from llmforge.api import contract
from llmforge_trainer import storage
from llmforge_trainer.tiny import make_records
from tests.trainer.test_train_e2e import qlora_job

pytestmark = pytest.mark.ml

STEP_RE = re.compile(r" step (\d+)/(\d+) \(\d+%\) loss ")
MAX = 12


def launch(spec_doc: dict, tmp: Path, name: str, env: dict, kill_when=None, sig=signal.SIGTERM, timeout=600):
    """Run llmforge-train; ``kill_when(line)`` returning True sends ``sig``. Returns (code, lines, result|None)."""
    spec = tmp / f"{name}.yaml"
    spec.write_text(yaml.safe_dump(spec_doc))
    term = tmp / f"{name}-result.json"
    cmd = [sys.executable, "-m", "llmforge_trainer.cli", "--spec", str(spec), "--metrics-port", "0",
           "--termination-log", str(term), "--work-dir", str(tmp / f"{name}-work")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, sent = [], False
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if kill_when and not sent and kill_when(line):
                os.kill(proc.pid, sig)
                sent = True
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    result = contract.TrainResult.model_validate_json(term.read_text()) if term.exists() else None
    return code, lines, result


def steps(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for ln in lines if (m := STEP_RE.search(ln))]


def job(tiny_model_dir, train: str, validation: str, out: str) -> dict:
    doc = qlora_job(tiny_model_dir, Path("/unused"), out, loggingSteps=1, maxSteps=MAX, batchSize=4,
                    maxSeqLength=128, evalSteps=0)
    doc["spec"]["dataset"] = {"train": train, "validation": validation}
    doc["spec"]["checkpoint"] = {"everySteps": 4, "keep": 2}
    doc["spec"]["output"] = {"uri": out}
    return doc


@pytest.fixture(scope="module")
def chain(tiny_model_dir, fake_gcs, ml_env, tmp_path_factory):
    """Three attempts of one job on gs://, like three pods: SIGTERM, then SIGKILL, then to the end."""
    tmp = tmp_path_factory.mktemp("resume")
    bucket = f"ft-{uuid.uuid4().hex[:8]}"
    b = fake_gcs.bucket(bucket)
    b.blob("data/train.jsonl").upload_from_string("".join(json.dumps(r) + "\n" for r in make_records(96)))
    b.blob("data/val.jsonl").upload_from_string("".join(json.dumps(r) + "\n" for r in make_records(16, offset=96)))
    out = f"gs://{bucket}/runs/tiny"
    doc = job(tiny_model_dir, f"gs://{bucket}/data/train.jsonl", f"gs://{bucket}/data/val.jsonl", out)
    env = {**ml_env, "STORAGE_EMULATOR_HOST": fake_gcs.endpoint}
    runs = {"out": out, "bucket": bucket, "gcs": fake_gcs}

    runs["a1"] = launch(doc, tmp, "a1", env, kill_when=lambda ln: " step 5/12 " in ln)
    seen = []

    def kill_when(line):  # SIGKILL once checkpoint 8 is complete and step 10 has run
        if "checkpoint: step 8 published" in line:
            seen.append(8)
        return bool(seen) and " step 10/12 " in line

    runs["latest_before_a2"] = storage.latest_checkpoint(out)
    runs["names_after_a1"] = {bl.name for bl in fake_gcs.client().list_blobs(bucket, prefix="runs/tiny/checkpoints/")}
    runs["a2"] = launch(doc, tmp, "a2", env, kill_when=kill_when, sig=signal.SIGKILL)
    runs["latest_after_a2"] = storage.latest_checkpoint(out)
    # A newer checkpoint whose upload was cut short (files, no marker): it must never be chosen.
    b.blob("runs/tiny/checkpoints/checkpoint-11/adapter_model.safetensors").upload_from_string(b"\0" * 10)
    runs["a3"] = launch(doc, tmp, "a3", env)
    return runs


def test_sigterm_saves_a_checkpoint_and_exits_143(chain):
    code, lines, res = chain["a1"]
    assert code == contract.EXIT_PREEMPTED, "\n".join(lines[-30:])
    assert res.phase == "Preempted" and res.reason == "Preempted"
    stopped = res.checkpoint.step
    assert stopped >= 5 and res.step == stopped
    assert res.checkpoint.uri == storage.checkpoint_uri(chain["out"], stopped)
    assert chain["latest_before_a2"] == (stopped, res.checkpoint.uri)
    assert steps(lines) == list(range(1, stopped + 1))
    names = chain["names_after_a1"]
    assert f"runs/tiny/checkpoints/checkpoint-{stopped}/_COMPLETE.json" in names
    assert f"runs/tiny/checkpoints/checkpoint-{stopped}/adapter_model.safetensors" in names


def test_resume_after_sigterm_repeats_no_step(chain):
    stopped = chain["a1"][2].checkpoint.step
    code, lines, res = chain["a2"]
    assert code == -signal.SIGKILL and res is None
    assert any(f"checkpoint-{stopped} (step {stopped})" in ln and "resume: from" in ln for ln in lines)
    assert steps(lines)[0] == stopped + 1  # SIGTERM checkpoint is at the stop step: nothing repeated, none lost
    assert chain["latest_after_a2"][0] == 8


def test_resume_after_sigkill_from_last_complete_checkpoint_ignoring_half_written(chain):
    code, lines, res = chain["a3"]
    assert code == contract.EXIT_OK, "\n".join(lines[-30:])
    assert res.phase == "Succeeded" and res.resumed_from_step == 8 and res.step == MAX
    assert steps(lines) == list(range(9, MAX + 1))  # only steps after the last complete checkpoint repeat
    all_steps = steps(chain["a1"][1]) + steps(chain["a2"][1]) + steps(lines)
    assert set(all_steps) == set(range(1, MAX + 1))
    # every step ran once, except those after checkpoint 8 that the SIGKILLed attempt had already run
    repeated = sorted(s for s in set(all_steps) if all_steps.count(s) > 1)
    assert repeated and repeated == [s for s in steps(chain["a2"][1]) if s > 8]


def test_final_outputs_on_gcs(chain):
    client, bucket, out = chain["gcs"].client(), chain["bucket"], chain["out"]
    res = chain["a3"][2]
    adapter = {bl.name for bl in client.list_blobs(bucket, prefix="runs/tiny/adapter/")}
    assert {"runs/tiny/adapter/adapter_model.safetensors", "runs/tiny/adapter/adapter_config.json",
            "runs/tiny/adapter/tokenizer.json"} <= adapter
    rep = json.loads(client.bucket(bucket).blob("runs/tiny/training_report.json").download_as_bytes())
    assert rep["resumed_from_step"] == 8 and rep["phase"] == "Succeeded"
    assert res.output.report_uri == f"{out}/training_report.json"
    assert res.output.adapter_uri == f"{out}/adapter"
    # step 11's half upload was replaced when step 12 completed and pruning kept the newest two
    assert [s for s, _ in storage.complete_checkpoints(out)] == [8, 12]
    leftovers = {bl.name.split("/")[3] for bl in client.list_blobs(bucket, prefix="runs/tiny/checkpoints/")}
    assert leftovers == {"checkpoint-8", "checkpoint-12"}

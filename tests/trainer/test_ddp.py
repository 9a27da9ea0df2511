"""The several-GPUs path, for real on CPU: ``llmforge-train --nproc 2`` relaunches itself under torchrun, two
processes train with DDP over gloo, rank 0 alone publishes checkpoints, the adapter and the result.

What only a GPU can prove (see docs/trainer.md): NCCL, FSDP sharding of 4-bit weights, memory per GPU.
"""

from __future__ import annotations

import json

import pytest

from llmforge.api import contract
from tests.trainer.test_resume import launch, steps
from tests.trainer.test_train_e2e import qlora_job

pytestmark = pytest.mark.ml


def test_two_process_ddp_gloo_run(tiny_model_dir, tiny_data_dir, ml_env, tmp_path):
    out = tmp_path / "out"
    doc = qlora_job(tiny_model_dir, tiny_data_dir, str(out), maxSteps=4, loggingSteps=1, batchSize=4,
                    maxSeqLength=128, evalSteps=4)
    doc["spec"]["checkpoint"] = {"everySteps": 2}
    doc["spec"]["output"]["merge"] = False
    env = {**ml_env, "LLMFORGE_NPROC": "2"}
    code, lines, res = launch(doc, tmp_path, "ddp", env)
    assert code == contract.EXIT_OK, "\n".join(lines[-40:])
    assert res.phase == "Succeeded" and res.step == 4
    assert any("launch: ddp (2 process(es) requested; CPU: DDP over gloo)" in ln for ln in lines)
    assert any("llmforge[rank 1]" in ln for ln in lines)  # the second worker really ran
    assert any("distributed: ddp over gloo, world size 2" in ln for ln in lines)
    rank0_steps = steps([ln for ln in lines if "llmforge[rank" not in ln])
    assert rank0_steps == [1, 2, 3, 4]
    rep = json.loads((out / "training_report.json").read_text())
    assert rep["params"]["world_size"] == 2 and rep["params"]["distributed_backend"] == "gloo"
    assert rep["checkpoints_published"] == [2, 4]
    assert sum("checkpoint: step 2 published" in ln for ln in lines) == 1  # rank 0 only
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert res.metrics.eval_loss is not None

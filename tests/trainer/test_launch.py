"""The launch plan is a pure function of the spec and what the pod sees; here are its cases."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmforge.api.finetunejob import FineTuneJob
from llmforge_trainer import launch


def spec(accelerator="nvidia-l4", count=1, method="qlora", bits=4):
    return FineTuneJob.model_validate({"spec": {
        "baseModel": {"name": "meta-llama/Llama-3.1-8B"}, "dataset": {"train": "gs://b/t.jsonl"},
        "output": {"uri": "gs://b/out"}, "method": method, "quantization": {"bits": bits},
        "resources": {"accelerator": accelerator, "count": count}}}).spec


ARGV = ["--spec", "/etc/llmforge/spec.yaml"]


def test_single_gpu_trains_in_process():
    p = launch.plan_launch(spec(count=1), ARGV, env={}, gpus_visible=1)
    assert (p.strategy, p.nproc, p.argv) == ("single", 1, None)


def test_cpu_trains_in_process():
    p = launch.plan_launch(spec("cpu"), ARGV, env={}, gpus_visible=0)
    assert (p.strategy, p.argv) == ("single", None)


def test_several_gpus_model_fits_ddp_under_torchrun():
    p = launch.plan_launch(spec(count=4), ARGV, env={}, gpus_visible=4, gpu_gib=22.0, params_billions=8.0,
                           python="/usr/bin/python3")
    assert p.strategy == "ddp" and p.nproc == 4
    assert p.argv == ["/usr/bin/python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                      "-m", "llmforge_trainer.cli", *ARGV]
    assert p.env == {"LLMFORGE_LAUNCHED": "1", "LLMFORGE_STRATEGY": "ddp"}


def test_model_too_big_for_one_gpu_is_fsdp():
    # 70B in NF4 is ~34 GiB of weights: not on one L4 (22 GiB), so shard it
    p = launch.plan_launch(spec(count=4), ARGV, env={}, gpus_visible=4, gpu_gib=22.0, params_billions=70.6)
    assert p.strategy == "fsdp" and "FSDP+QLoRA" in p.reason
    # ...but it fits one 80 GB H100
    p = launch.plan_launch(spec("nvidia-h100-80gb", count=2), ARGV, env={}, gpus_visible=2, gpu_gib=79.6,
                           params_billions=70.6)
    assert p.strategy == "ddp"


def test_gpu_size_from_the_accelerator_label_when_none_visible_yet():
    p = launch.plan_launch(spec("nvidia-l4", count=2), ARGV, env={}, gpus_visible=2, params_billions=70.6)
    assert p.strategy == "fsdp"


def test_children_do_not_relaunch():
    env = {"LLMFORGE_LAUNCHED": "1", "LLMFORGE_STRATEGY": "fsdp", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}
    p = launch.plan_launch(spec(count=4), ARGV, env=env, gpus_visible=4)
    assert (p.argv, p.strategy, p.nproc) == (None, "fsdp", 4)


def test_override_for_cpu_processes_and_fewer_visible_gpus():
    p = launch.plan_launch(spec("cpu"), [*ARGV, "--nproc", "2", "--nproc=2"], env={}, gpus_visible=0,
                           nproc_override=2)
    assert (p.strategy, p.nproc) == ("ddp", 2) and p.argv[0] == sys.executable and "gloo" in p.reason
    assert p.argv[-2:] == ARGV  # --nproc is not passed on
    p = launch.plan_launch(spec(count=8), ARGV, env={}, gpus_visible=2, gpu_gib=80.0, params_billions=8.0)
    assert p.nproc == 2 and "8 GPUs requested but 2 visible" in p.reason


def test_forced_strategy():
    p = launch.plan_launch(spec(count=2), ARGV, env={"LLMFORGE_STRATEGY": "fsdp"}, gpus_visible=2, gpu_gib=80.0,
                           params_billions=1.0)
    assert p.strategy == "fsdp"


@settings(max_examples=200, deadline=None)
@given(st.floats(0.1, 500), st.sampled_from([15.0, 22.0, 40.0, 80.0]), st.sampled_from([("qlora", 4), ("qlora", 8),
                                                                                         ("lora", 16)]))
def test_fit_is_monotonic_in_model_size_and_gpu_memory(params_b, gib, method_bits):
    method, bits = method_bits
    fits = launch.fits_one_gpu(params_b, gib, method, bits)
    if fits:
        assert launch.fits_one_gpu(params_b * 0.5, gib, method, bits)
        assert launch.fits_one_gpu(params_b, gib * 2, method, bits)
    else:
        assert not launch.fits_one_gpu(params_b * 2, gib, method, bits)
    # 4-bit never needs more than 8-bit, which never needs more than bf16
    if launch.fits_one_gpu(params_b, gib, "lora", 16):
        assert launch.fits_one_gpu(params_b, gib, "qlora", 8)
    if launch.fits_one_gpu(params_b, gib, "qlora", 8):
        assert launch.fits_one_gpu(params_b, gib, "qlora", 4)


@pytest.mark.parametrize("params_b,expect_gib", [(8.03, 3.86), (70.6, 33.9), (7.25, 3.48)])
def test_base_weight_memory_matches_qlora_arithmetic(params_b, expect_gib):
    # NF4 0.5 byte/param + double-quantised constants ~0.127 bit/param (QLoRA paper)
    assert launch.base_weights_gib(params_b, "qlora", 4) == pytest.approx(expect_gib, rel=0.01)


def test_params_from_checkpoint_files(tmp_path):
    assert launch.params_billions_from_index({"metadata": {"total_size": 16_060_522_496}}, None, 2) == \
        pytest.approx(8.03, rel=1e-3)
    assert launch.params_billions_from_index(None, 4_000_000, 4) == pytest.approx(0.001)
    assert launch.params_billions_from_index(None, None, 2) is None
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4000)
    assert launch.local_model_params_billions(str(tmp_path)) == pytest.approx(1e-6)
    assert launch.local_model_params_billions(str(tmp_path / "nope")) is None

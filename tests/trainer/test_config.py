"""Spec -> library objects: the SFTConfig, BitsAndBytesConfig and LoraConfig the trainer builds."""

from __future__ import annotations

import pytest

from llmforge.api.finetunejob import FineTuneJob
from llmforge_trainer.train import packed_batching


def spec(**over):
    doc = {"baseModel": {"uri": "/m"}, "dataset": {"train": "/t.jsonl"}, "output": {"uri": "/o"}}
    for k, v in over.items():
        doc[k] = v
    return FineTuneJob.model_validate({"spec": doc}).spec


def test_packed_batching_only_reshapes_without_flash_attention():
    assert packed_batching(4, 2, True, "flash_attention_2") == (4, 2, None)
    assert packed_batching(4, 2, False, "sdpa") == (4, 2, None)
    b, a, note = packed_batching(4, 2, True, "sdpa")
    assert (b, a) == (1, 8) and "same tokens per optimizer step" in note
    assert packed_batching(1, 3, True, "sdpa") == (1, 3, None)


@pytest.mark.ml
def test_sft_config_maps_the_spec(tmp_path):
    from llmforge_trainer.train import sft_config

    s = spec(training={"epochs": 2, "learningRate": 1e-4, "batchSize": 2, "gradientAccumulationSteps": 8,
                       "maxSeqLength": 1024, "scheduler": "linear", "warmupRatio": 0.1, "maxGradNorm": 0.5,
                       "seed": 5, "maxSteps": 7, "loggingSteps": 3, "evalSteps": 6, "packing": False},
             checkpoint={"everySteps": 50, "keep": 3})
    notes = []
    cfg = sft_config(s, tmp_path, "alpaca", has_cuda=False, has_validation=True, notes=notes, attn="sdpa")
    assert (cfg.num_train_epochs, cfg.max_steps, cfg.learning_rate, cfg.max_length) == (2, 7, 1e-4, 1024)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, 8)
    assert str(cfg.lr_scheduler_type.value) == "linear" and cfg.warmup_steps == 0.1 and cfg.max_grad_norm == 0.5
    assert (cfg.seed, cfg.data_seed, cfg.logging_steps, cfg.eval_steps, cfg.save_steps, cfg.save_total_limit) == (
        5, 5, 3, 6, 50, 3)
    assert str(cfg.eval_strategy.value) == "steps" and cfg.packing is False and cfg.completion_only_loss is True
    assert cfg.gradient_checkpointing and cfg.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert cfg.bf16 and cfg.use_cpu and cfg.logging_nan_inf_filter is False and cfg.report_to == []
    assert str(cfg.optim.value) == "adamw_torch" and notes == [
        "optimizer paged_adamw_8bit needs a CUDA GPU; using adamw_torch on this machine"]
    text = sft_config(s, tmp_path, "text", has_cuda=False, has_validation=False, attn="flash_attention_2")
    assert text.completion_only_loss is None and str(text.eval_strategy.value) == "no"


def test_optimizer_fallback_only_without_cuda():
    from llmforge_trainer.model import resolve_optimizer

    assert resolve_optimizer("paged_adamw_8bit", has_cuda=True) == ("paged_adamw_8bit", None)
    name, note = resolve_optimizer("adamw_8bit", has_cuda=False)
    assert name == "adamw_torch" and "needs a CUDA GPU" in note
    assert resolve_optimizer("adamw_torch", has_cuda=False) == ("adamw_torch", None)


@pytest.mark.ml
def test_quantization_and_lora_configs():
    import torch

    from llmforge_trainer.model import lora_config, quantization_config

    q = quantization_config(spec())
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config(spec(), fsdp=True).bnb_4bit_quant_storage == torch.bfloat16
    assert quantization_config(spec(method="lora")) is None
    assert quantization_config(spec(quantization={"bits": 8})).load_in_8bit
    lc = lora_config(spec(lora={"r": 4, "alpha": 8, "dropout": 0.1}))
    assert (lc.r, lc.lora_alpha, lc.lora_dropout, lc.target_modules) == (4, 8, 0.1, "all-linear")
    lc = lora_config(spec(lora={"targetModules": ["q_proj", "v_proj"]}))
    assert set(lc.target_modules) == {"q_proj", "v_proj"}

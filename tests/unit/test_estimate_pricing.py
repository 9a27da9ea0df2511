"""GPU memory estimate against published QLoRA figures, auto accelerator choice, and the price table."""

from __future__ import annotations

import json

import pytest

from llmforge.api.finetunejob import FineTuneJob
from llmforge.estimate import (
    GIB,
    PRESETS,
    ModelShape,
    check_fit,
    estimate_for_spec,
    estimate_memory,
    lora_params,
    shape_from_config_file,
    shape_from_name,
    shards_base,
)
from llmforge.pricing import DEFAULT_PRICES, Interval, cost_usd, gpu_hours, load_prices
from llmforge.validation import validate_object
from tests.cases import ftj

L8, L70, M7 = PRESETS["meta-llama/llama-3.1-8b"], PRESETS["meta-llama/llama-3.1-70b"], PRESETS[
    "mistralai/mistral-7b-v0.3"]
GB = 1e9 / GIB
LLAMA2_70B = ModelShape(80, 8192, 28672, 64, 8, 32000, 128)
LLAMA1_65B = ModelShape(80, 8192, 22016, 64, 64, 32000, 128)


def spec(**kw):
    return FineTuneJob.model_validate({k: v for k, v in ftj(**kw).items() if k != "apiVersion"}).spec


def test_several_gpus_divide_memory_only_when_the_launcher_shards():
    one = estimate_for_spec(spec(resources={"accelerator": "nvidia-l4", "count": 1}), L8)
    # 8B in NF4 fits one L4: the launcher runs DDP, every GPU holds it all.
    ddp = spec(resources={"accelerator": "nvidia-l4", "count": 2})
    assert not shards_base(ddp, L8, 2, "nvidia-l4")
    assert estimate_for_spec(ddp, L8).total == pytest.approx(one.total)
    # 70B does not fit one L4: FSDP, weights, adapter and optimizer state divided among the GPUs.
    fsdp = spec(baseModel={"name": "meta-llama/Llama-3.1-70B-Instruct"},
                resources={"accelerator": "nvidia-l4", "count": 4})
    assert shards_base(fsdp, L70, 4, "nvidia-l4")
    whole = estimate_for_spec(fsdp, L70, gpus=1)
    split = estimate_for_spec(fsdp, L70)
    assert split.weights == pytest.approx(whole.weights / 4) and split.optimizer == pytest.approx(whole.optimizer / 4)
    # The launcher decides with the same rule.
    from llmforge_trainer import launch

    assert launch.plan_launch(ddp, [], env={}, gpus_visible=2, params_billions=L8.params / 1e9).strategy == "ddp"
    assert launch.plan_launch(fsdp, [], env={}, gpus_visible=4, params_billions=L70.params / 1e9).strategy == "fsdp"


def test_parameter_counts_match_model_cards():
    assert L8.params / 1e9 == pytest.approx(8.03, abs=0.01)
    assert L70.params / 1e9 == pytest.approx(70.55, abs=0.05)
    assert M7.params / 1e9 == pytest.approx(7.25, abs=0.01)


#: (label, estimate kwargs, published GB, allowed relative error). See docs/estimate.md.
PUBLISHED = [
    ("HF+FA2 Llama 3.1 8B r32 all-linear, 5,789 tokens fills 24 GB", dict(shape=L8, r=32, seq_len=5789), 24.0, 0.10),
    ("litgpt Llama 3.1 8B seq 512 x2", dict(shape=L8, r=8, targets=["q_proj", "v_proj"], seq_len=512, batch_size=2,
                                             gradient_checkpointing=False, optimizer="adamw_torch"), 17.4, 0.12),
    ("litgpt Mistral 7B seq 512 x2", dict(shape=M7, r=8, targets=["q_proj", "v_proj"], seq_len=512, batch_size=2,
                                          gradient_checkpointing=False, optimizer="adamw_torch"), 14.3, 0.12),
    ("PEFT Llama 2 70B FSDP 2 GPUs seq 2048 x2", dict(shape=LLAMA2_70B, r=8, seq_len=2048, batch_size=2, gpus=2),
     35.6, 0.20),
]


@pytest.mark.parametrize("label,kw,published,tolerance", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_estimate_against_published_figures(label, kw, published, tolerance):
    shape = kw.pop("shape")
    est = estimate_memory(shape, **kw).total / GB
    assert abs(est - published) / published <= tolerance, f"{label}: estimate {est:.1f} GB vs {published} GB"


def test_qlora_paper_65b_fits_48gb():
    est = estimate_memory(LLAMA1_65B, r=64, seq_len=512, batch_size=1).total / GB
    assert 35 < est < 48


def test_lora_param_count():
    # Llama 3.1 8B, r=16, all-linear: 16 x 81,920 x 32 layers = 41.9M (peft prints 41,943,040).
    assert lora_params(L8, 16, ["all-linear"]) == 41_943_040
    assert lora_params(L8, 16, ["q_proj", "v_proj"]) == 16 * (8192 + 5120) * 32


def test_monotone_in_seq_and_batch():
    a = estimate_memory(L8, seq_len=1024).total
    assert estimate_memory(L8, seq_len=2048).total > a
    assert estimate_memory(L8, seq_len=1024, batch_size=4).total > a
    assert estimate_memory(L8, seq_len=1024, gradient_checkpointing=False).total > a
    assert estimate_memory(L8, method="lora").total > a


def test_config_json_at_local_uri(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 32768}))
    shape = shape_from_config_file(f"file://{tmp_path}")
    assert shape.params == M7.params
    assert shape_from_config_file("gs://bucket/model") is None
    assert shape_from_config_file(str(tmp_path / "missing")) is None


def test_size_from_name():
    shape = shape_from_name("someorg/custom-13B-chat")
    assert 11e9 < shape.params < 15e9
    assert shape_from_name("org/model") is None


def test_fit_and_auto_choice():
    fit = check_fit(spec(resources={"accelerator": "auto"}, training={"batchSize": 2}))
    assert fit.accelerator == "nvidia-l4" and fit.fits is True
    assert fit.status()["accelerator"] == "nvidia-l4"
    big = check_fit(spec(baseModel={"name": "meta-llama/Llama-3.1-70B-Instruct"}, resources={"accelerator": "auto"}))
    assert big.accelerator in ("nvidia-a100-80gb", "nvidia-h100-80gb") and big.fits
    # T4 is cheaper but has no bf16: only with float16 compute.
    t4 = check_fit(spec(resources={"accelerator": "auto"}, quantization={"computeDtype": "float16"},
                        training={"maxSeqLength": 512, "batchSize": 1}))
    assert t4.accelerator == "nvidia-tesla-t4"


def test_insufficient_memory_is_a_validation_error_with_alternatives():
    obj = ftj(baseModel={"name": "meta-llama/Llama-3.1-70B-Instruct"}, resources={"accelerator": "nvidia-l4"})
    errors = [p for p in validate_object(obj) if p.severity == "error"]
    assert [p.reason for p in errors] == ["InsufficientGPUMemory"]
    assert "exceeds nvidia-l4 x1" in errors[0].message and "would fit:" in errors[0].message
    assert "nvidia-a100-80gb x1" in errors[0].message or "nvidia-h100-80gb x1" in errors[0].message


def test_auto_with_unknown_model_is_rejected():
    errors = [p for p in validate_object(ftj(baseModel={"name": "org/mystery"}, resources={"accelerator": "auto"}))
              if p.severity == "error"]
    assert errors and "accelerator auto needs the model size" in errors[0].message


def test_price_table_values_and_math():
    assert DEFAULT_PRICES.rate("nvidia-l4", False) == 0.854
    assert DEFAULT_PRICES.rate("nvidia-l4", True) == 0.341
    assert DEFAULT_PRICES.rate("nvidia-tesla-a100", True) == 1.443
    assert DEFAULT_PRICES.rate("nvidia-h100-80gb", False) == 10.979
    spans = [Interval(0, 1800), Interval(2000, 2900), Interval(5, 5)]
    assert gpu_hours(spans, 2) == pytest.approx(2 * 2700 / 3600)
    assert cost_usd(spans, 2, 0.341) == pytest.approx(2 * 2700 / 3600 * 0.341)
    with pytest.raises(KeyError):
        DEFAULT_PRICES.rate("nvidia-b200", False)


def test_price_override():
    table = load_prices("date: '2026-12-01'\nsource: negotiated\naccelerators:\n  nvidia-l4: {onDemand: 0.5}\n"
                        "  nvidia-b200: {onDemand: 12, spot: 5}\n")
    assert table.rate("nvidia-l4", False) == 0.5 and table.rate("nvidia-l4", True) == 0.341
    assert table.rate("nvidia-b200", True) == 5.0
    assert table.label == "negotiated, 2026-12-01"
    for bad in ("accelerators: {nvidia-l4: 3}", "accelerators: {nvidia-l4: {onDemand: x}}", "- 1"):
        with pytest.raises(ValueError):
            load_prices(bad)


def test_kbit_preparation_puts_unquantised_params_in_fp32():
    # prepare_model_for_kbit_training casts embeddings, LM head and norms to fp32 (issue #4): vocab x hidden x
    # 2 matrices x 4 bytes. Llama 3.1 8B: 3.9 GiB, +2.0 over bf16; 70B: 7.8 GiB, +3.9.
    for shape, fp32_gib in ((L8, 3.91), (L70, 7.83)):
        q = estimate_memory(shape).weights
        nf4_linear = shape.linear_params * (0.5 + 0.127 / 8) / GIB
        assert q - nf4_linear == pytest.approx(fp32_gib, abs=0.01)
        assert (shape.params - shape.linear_params) * 4 / GIB == pytest.approx(fp32_gib, abs=0.01)
    # plain LoRA is not k-bit prepared: everything bf16.
    assert estimate_memory(L8, method="lora").weights == pytest.approx(L8.params * 2 / GIB)


def test_adapter_dtype_follows_the_trainer():
    n = lora_params(L8, 16, ["all-linear"])
    # qlora: trl casts the adapter to bf16 (weight + grad 4 bytes); lora: peft keeps it fp32 (8 bytes).
    assert estimate_memory(L8).lora == pytest.approx(n * 4 / GIB)
    assert estimate_memory(L8, method="lora").lora == pytest.approx(n * 8 / GIB)
    # Adam states: 8-bit 2 bytes, bitsandbytes 32-bit fp32 8 bytes, torch AdamW the parameter's dtype x 2.
    assert estimate_memory(L8).optimizer == pytest.approx(n * 2 / GIB)
    assert estimate_memory(L8, optimizer="paged_adamw_32bit").optimizer == pytest.approx(n * 8 / GIB)
    assert estimate_memory(L8, optimizer="adamw_torch").optimizer == pytest.approx(n * 4 / GIB)
    assert estimate_memory(L8, method="lora", optimizer="adamw_torch").optimizer == pytest.approx(n * 8 / GIB)

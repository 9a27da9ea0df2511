"""The memory estimate's bytes per parameter are the dtypes the trainer really leaves in memory (issue #4).

The estimate (operator/llmforge/estimate.py, ``param_bytes``) assumes: for qlora, peft's
``prepare_model_for_kbit_training`` casts the unquantised parameters (embeddings, LM head, norms) to fp32
and trl's SFTTrainer casts the adapter to bf16; for lora, the base stays bf16 and peft upcasts the adapter to
fp32. Those casts live in peft and trl, so a library upgrade can change them silently: this builds the
trainer's model on the tiny Llama exactly as ``train.py`` does (load, prepare, SFTTrainer) and compares.
"""

from __future__ import annotations

import pytest

from llmforge.api.finetunejob import FineTuneJob
from llmforge.estimate import lora_params, param_bytes, shape_from_config_file

pytestmark = pytest.mark.ml


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_trainer_parameter_dtypes_match_the_estimate(method, tiny_model_dir, tiny_data_dir, tmp_path):
    from datasets import Dataset
    from trl import SFTTrainer

    from llmforge_trainer import data as data_mod
    from llmforge_trainer import model as model_mod
    from llmforge_trainer.train import sft_config

    spec = FineTuneJob.model_validate({"spec": {
        "method": method, "baseModel": {"uri": str(tiny_model_dir)},
        "dataset": {"train": str(tiny_data_dir / "train.jsonl")}, "output": {"uri": str(tmp_path / "out")},
        "training": {"maxSeqLength": 128}, "resources": {"accelerator": "cpu"}}}).spec
    tok = model_mod.load_tokenizer(str(tiny_model_dir), spec, "tiny")
    prepared = data_mod.prepare(spec.dataset, tok, spec.training.max_seq_length, spec.training.seed)
    model = model_mod.prepare_for_training(model_mod.load_base_model(str(tiny_model_dir), spec, "tiny"), spec)
    cfg = sft_config(spec, tmp_path / "hf", prepared.format, has_cuda=False, has_validation=False)
    # Constructing the trainer is enough: trl's casts happen in __init__, before any step.
    SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(prepared.train[:8]), processing_class=tok)

    rest_bytes, lora_bytes = param_bytes(method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    quantised = [p for p in model.parameters() if type(p).__name__ in ("Params4bit", "Int8Params")]
    unquantised = [p for p in model.parameters()
                   if not p.requires_grad and type(p).__name__ not in ("Params4bit", "Int8Params")]
    assert trainable and unquantised
    assert bool(quantised) == (method == "qlora")
    assert {p.element_size() for p in trainable} == {lora_bytes}
    assert {p.element_size() for p in unquantised} == {rest_bytes}

    # And the estimate's parameter split is the model's: adapter size, and (qlora) what stays unquantised.
    shape = shape_from_config_file(str(tiny_model_dir))
    assert sum(p.numel() for p in trainable) == lora_params(shape, spec.lora.r, spec.lora.target_modules)
    if method == "qlora":
        assert sum(p.numel() for p in unquantised) == shape.params - shape.linear_params

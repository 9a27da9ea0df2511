"""Hypothesis properties that need torch/peft (design doc seeds/004): 5, 6 and 16."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmforge.api.finetunejob import FineTuneJob
from llmforge_trainer import report

pytestmark = pytest.mark.ml

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def spec(lora: dict):
    return FineTuneJob.model_validate({"spec": {"baseModel": {"uri": "/m"}, "dataset": {"train": "/t"},
                                                "output": {"uri": "/o"}, "lora": lora}}).spec


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 256), st.floats(0.5, 512, allow_nan=False), st.floats(0.0, 0.9),
       st.lists(st.sampled_from(PROJ), min_size=1, max_size=7, unique=True))
def test_property5_lora_config_sets_all_parameters(r, alpha, dropout, targets):
    # Feature: llm-fine-tuning-inference, Property 5: LoRA configuration sets all parameters
    from llmforge_trainer.model import lora_config

    lc = lora_config(spec({"r": r, "alpha": alpha, "dropout": dropout, "targetModules": targets}))
    assert (lc.r, lc.lora_alpha, lc.lora_dropout) == (r, alpha, dropout)
    assert set(lc.target_modules) == set(targets)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(PROJ), min_size=1, max_size=7, unique=True))
def test_property6_adapters_exactly_on_target_modules(tiny_model_dir_for_hypothesis, targets):
    # Feature: llm-fine-tuning-inference, Property 6: LoRA creates adapters for target modules, no others
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from llmforge_trainer.model import lora_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir_for_hypothesis)
    peft = get_peft_model(model, lora_config(spec({"r": 2, "targetModules": targets})))
    adapted = {n.rsplit(".", 1)[-1] for n, m in peft.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
    assert adapted == set(targets)
    layers = {n for n, m in peft.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)}
    assert len(layers) == 2 * len(targets)  # in each of the 2 decoder layers
    assert all(("lora_" in n) == p.requires_grad for n, p in peft.named_parameters())


@pytest.fixture(scope="module")
def tiny_model_dir_for_hypothesis(tiny_model_dir):
    """Module-scoped alias: Hypothesis re-runs the test body, not function-scoped fixtures."""
    return tiny_model_dir


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-30.0, -1e-6), min_size=1, max_size=200))
def test_property16_perplexity_is_exp_mean_nll(log_likelihoods):
    # Feature: llm-fine-tuning-inference, Property 16: Perplexity calculation correctness
    mean_nll = -sum(log_likelihoods) / len(log_likelihoods)
    assert math.isclose(report.perplexity(mean_nll), math.exp(mean_nll), rel_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 24), st.integers(3, 40), st.floats(0.0, 0.9))
def test_property16_eval_loss_is_mean_nll_of_scored_tokens(seed, length, vocab, mask_frac):
    """The model's causal-LM loss (what eval_loss averages) is the mean NLL over the unmasked next tokens, so
    exp(eval_loss) is exactly the perplexity of the design doc."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, length, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (1, length), generator=g)
    masked = torch.rand(1, length, generator=g) < mask_frac
    masked[0, -1] = False
    labels[masked] = -100
    scored = [(i, int(labels[0, i + 1])) for i in range(length - 1) if labels[0, i + 1] != -100]
    if not scored:
        return
    logp = torch.log_softmax(logits[0].double(), -1)
    ll = [float(logp[i, t]) for i, t in scored]
    loss = float(ForCausalLMLoss(logits, labels, vocab))
    assert math.isclose(loss, -sum(ll) / len(ll), rel_tol=1e-4, abs_tol=1e-6)  # float32 logits
    assert math.isclose(report.perplexity(loss), math.exp(-sum(ll) / len(ll)), rel_tol=1e-4, abs_tol=1e-6)

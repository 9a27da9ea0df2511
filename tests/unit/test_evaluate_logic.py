"""Evaluation bookkeeping without a model: deterministic sampling, every sample evaluated and counted once per
model, base and tuned fed identical inputs, lost predictions caught. A recording fake backend stands in for
the model; the same properties are checked on the real model in tests/eval/."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmforge.api.evaluation import EvaluationSpec
from llmforge_trainer import evaluate as E


class FakeTokenizer:
    """Character-level tokenizer without a chat template (exercises the trainer's fallback prompt)."""

    chat_template = None
    bos_token = None
    eos_token = "</s>"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


class FakeBackend:
    name = "fake"

    def __init__(self, drop_one=False):
        self.tokenizer = FakeTokenizer()
        self.calls = []  # (use_adapter, kind, rows)
        self.drop_one = drop_one

    def encode(self, texts, add_special_tokens):
        return E.encode(self.tokenizer, texts, add_special_tokens)

    def generate(self, prompt_ids, gen, use_adapter, seed=0):
        self.calls.append((use_adapter, "generate", [tuple(r) for r in prompt_ids]))
        out = [("The answer" if use_adapter else "nope") + f" {len(r)}" for r in prompt_ids]
        return out[:-1] if self.drop_one else out

    def nll(self, prompt_ids, completion_ids, use_adapter):
        self.calls.append((use_adapter, "nll", [tuple(p) + tuple(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]))
        per_token = 0.5 if use_adapter else 1.5
        return [per_token * len(c) for c in completion_ids], [len(c) for c in completion_ids]


def conversations(n):
    return [[{"role": "user", "content": f"question {i} " + "x" * (i % 7)},
             {"role": "assistant", "content": f"The answer {i}"}] for i in range(n)]


def spec(max_samples=1000, batch=3, compare=True, metrics=("rougeL", "perplexity", "exactMatch")):
    return EvaluationSpec.model_validate({
        "model": {"adapterUri": "/a", "baseModel": {"uri": "/b"}},
        "dataset": {"uri": "/d", "maxSamples": max_samples, "seed": 7},
        "metrics": list(metrics), "compareToBase": compare,
        "checks": [{"name": "hasAnswer", "type": "contains", "value": "answer"}],
        "generation": {"batchSize": batch, "maxNewTokens": 8}})


@given(n=st.integers(0, 300), k=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_select_indices_deterministic_and_complete(n, k, seed):
    got = E.select_indices(n, k, seed)
    assert got == E.select_indices(n, k, seed)
    assert got == sorted(set(got)) and len(got) == min(n, k)
    assert all(0 <= i < n for i in got)


def test_select_indices_depends_on_seed():
    assert E.select_indices(1000, 10, 1) != E.select_indices(1000, 10, 2)


@pytest.mark.parametrize(("n", "batch"), [(1, 1), (7, 3), (10, 10), (11, 4)])
def test_every_sample_evaluated_and_counted(n, batch):
    b = FakeBackend()
    out = E.evaluate(spec(batch=batch), b, conversations(n))
    assert out.samples_evaluated == n == len(out.rows)
    assert sorted(r["index"] for r in out.rows) == list(range(n))
    for use_adapter in (True, False):
        for kind in ("generate", "nll"):
            rows = [r for a, k, rs in b.calls if a == use_adapter and k == kind for r in rs]
            assert len(rows) == n, (use_adapter, kind)
    # every row has both predictions and per-sample metrics for both models
    for r in out.rows:
        assert r["prediction"].startswith("The answer") and r["basePrediction"].startswith("nope")
        assert {"rougeL", "exactMatch", "nll", "tokens", "hasAnswer"} <= set(r["metrics"]) == set(r["baseMetrics"])
    assert out.finetuned["hasAnswer"] == 1.0 and out.base["hasAnswer"] == 0.0


def test_base_and_tuned_receive_identical_inputs():
    b = FakeBackend()
    E.evaluate(spec(max_samples=9, batch=4), b, conversations(40))
    for kind in ("generate", "nll"):
        tuned = [rs for a, k, rs in b.calls if a and k == kind]
        base = [rs for a, k, rs in b.calls if not a and k == kind]
        assert tuned and tuned == base  # same batches, same order, same ids


def test_perplexity_aggregates_over_completion_tokens():
    out = E.evaluate(spec(), FakeBackend(), conversations(5))
    import math

    assert out.finetuned["perplexity"] == pytest.approx(math.exp(0.5))
    assert out.base["perplexity"] == pytest.approx(math.exp(1.5))
    assert out.delta["perplexity"] == pytest.approx(math.exp(0.5) - math.exp(1.5))


def test_lost_prediction_is_an_error_not_a_smaller_count():
    with pytest.raises(RuntimeError, match="predictions for"):
        E.evaluate(spec(batch=2), FakeBackend(drop_one=True), conversations(4))


def test_no_base_when_not_compared():
    b = FakeBackend()
    out = E.evaluate(spec(compare=False), b, conversations(3))
    assert out.base is None and out.delta == {}
    assert all(a for a, _, _ in b.calls) and "basePrediction" not in out.rows[0]


def test_max_samples_subset_is_seeded():
    a = E.evaluate(spec(max_samples=5), FakeBackend(), conversations(50))
    b = E.evaluate(spec(max_samples=5), FakeBackend(), conversations(50))
    assert [r["index"] for r in a.rows] == [r["index"] for r in b.rows] == E.select_indices(50, 5, 7)


def test_prompt_uses_trainer_fallback_and_completion_ends_with_eos():
    from llmforge_trainer import prompts

    ex = E.build_examples(FakeTokenizer(), conversations(2), [1])[0]
    assert ex.prompt == prompts.render_prompt(FakeTokenizer(), conversations(2)[1][:-1])
    assert ex.prompt.endswith(prompts.FALLBACK_HEADERS["assistant"])
    assert ex.completion == "The answer 1</s>" and ex.reference == "The answer 1"


def test_truncate_at_stop():
    assert E.truncate_at_stop("abc STOP def END", ["END", "STOP"]) == "abc "
    assert E.truncate_at_stop("abc", []) == "abc"

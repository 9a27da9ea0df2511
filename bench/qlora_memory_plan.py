"""PLAN, not a measurement: per-GPU peak memory of llmforge-train's QLoRA for three models, and what admission
decides for them on each GKE GPU.

Every number comes from the operator's own estimate (``llmforge.estimate``: ``estimate_for_spec`` and
``check_fit``, each term explained in docs/estimate.md) and the accelerator catalogue
(``llmforge.api.accelerators``), applied to FineTuneJob specs with the API's defaults. That is the model
``llmforge validate`` and the operator's admission run, so docs/benchmarks.md prints what admission checks; its
error against published figures is in docs/estimate.md and enforced by tests/unit/test_estimate_pricing.py.
No GPU is used. tests/unit/test_bench_memory_plan.py fails when docs/benchmarks.md no longer shows this
script's output.

    ~/.cache/llmforge/venv/bin/python bench/qlora_memory_plan.py   # prints the tables in docs/benchmarks.md
"""

from __future__ import annotations

from typing import Any

from llmforge.api.accelerators import GPU_COUNTS, capacity_gib
from llmforge.api.finetunejob import FineTuneJobSpec
from llmforge.estimate import GIB, PRESETS, check_fit, estimate_for_spec, param_bytes, shards_base

MODELS = {
    "Llama 3.1 8B": "meta-llama/Llama-3.1-8B-Instruct",
    "Llama 3.1 70B": "meta-llama/Llama-3.1-70B-Instruct",
    "Mistral 7B v0.3": "mistralai/Mistral-7B-Instruct-v0.3",
}
#: Columns of the placement table: the catalogue's GPUs with bf16 (the spec's default compute dtype).
GPUS = {"L4": "nvidia-l4", "A100 40GB": "nvidia-tesla-a100", "A100 80GB": "nvidia-a100-80gb",
        "H100 80GB": "nvidia-h100-80gb"}
#: Per-device batch sizes shown: 1, and the spec default 4 (x maxSeqLength 2048: 2,048 and 8,192 tokens).
BATCHES = (1, 4)


def spec(hub_id: str, batch_size: int, accelerator: str = "auto", count: int = 1) -> FineTuneJobSpec:
    """A FineTuneJob spec with the API's defaults but for the model, the batch size and the GPUs."""
    doc: dict[str, Any] = {
        "baseModel": {"name": hub_id}, "dataset": {"train": "gs://b/train.jsonl"}, "output": {"uri": "gs://b/out/"},
        "training": {"batchSize": batch_size}, "resources": {"accelerator": accelerator, "count": count}}
    return FineTuneJobSpec.model_validate(doc)


def placement(hub_id: str, batch_size: int, accelerator: str) -> str:
    """What admission decides on this GPU: the fewest GPUs of a GKE machine that fit, and the layout."""
    shape = PRESETS[hub_id.lower()]
    for count in GPU_COUNTS[accelerator]:
        s = spec(hub_id, batch_size, accelerator, count)
        fit = check_fit(s)
        if fit.fits:
            per_gpu = fit.estimate.total
            if count == 1:
                return f"1 GPU, {per_gpu:.1f} GiB"
            layout = "FSDP" if shards_base(s, shape, count, accelerator) else "DDP"
            return f"{layout} x{count}, {per_gpu:.1f} GiB each"
    one = check_fit(spec(hub_id, batch_size, accelerator)).estimate.total
    return f"does not fit ({one:.1f} GiB on 1 GPU)"


def main() -> int:
    spec_note = ("QLoRA NF4 with double quantisation, LoRA r=16 all-linear, gradient checkpointing, "
                 "paged_adamw_8bit, maxSeqLength 2048: the API's defaults")
    print(f"Per GPU on one GPU, GiB ({spec_note}):\n")
    print("| model | params (B) | batchSize | micro-batch tokens | frozen weights | of which embeddings, head, norms "
          "(fp32) | LoRA weights + grads | optimizer | activations | logits | overhead | **total** |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rest_bytes, _ = param_bytes("qlora")
    for name, hub_id in MODELS.items():
        shape = PRESETS[hub_id.lower()]
        rest = (shape.params - shape.linear_params) * rest_bytes / GIB
        for batch in BATCHES:
            s = spec(hub_id, batch)
            e = estimate_for_spec(s, shape, 1, "nvidia-h100-80gb")
            tokens = s.training.max_seq_length * batch
            print(f"| {name} | {shape.params / 1e9:.2f} | {batch} | {tokens:,} | {e.weights:.1f} | {rest:.1f} | "
                  f"{e.lora:.2f} | {e.optimizer:.2f} | {e.activations:.1f} | {e.logits:.1f} | {e.overhead:.1f} | "
                  f"**{e.total:.1f}** |")

    gpus = " | ".join(f"{label} ({capacity_gib(acc):.1f} GiB)" for label, acc in GPUS.items())
    print("\nWhat admission decides (`check_fit`: the fewest GPUs of a GKE machine that fit; DDP keeps a full copy "
          "per GPU, FSDP shards the base), and what `accelerator: auto` picks at count 1 (cheapest that fits):\n")
    print(f"| model | batchSize | {gpus} | auto |")
    print("|---|---|" + "---|" * len(GPUS) + "---|")
    for name, hub_id in MODELS.items():
        for batch in BATCHES:
            cells = [placement(hub_id, batch, acc) for acc in GPUS.values()]
            auto = check_fit(spec(hub_id, batch))
            cells.append(auto.accelerator if auto.fits else "rejected")
            print(f"| {name} | {batch} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

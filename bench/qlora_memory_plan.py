"""PLAN, not a measurement: expected peak GPU memory of llmforge-train's QLoRA for three models on three GPUs.

Arithmetic from the model shapes (config.json values, FINDINGS §8) and what the trainer's code path
actually holds in memory, checked on the tiny model where it can be (dtypes after each step):

- NF4 linear weights: 0.5 byte/param + double-quantised constants (0.127 bit/param).
- Embeddings and LM head: bitsandbytes leaves them in bf16, but peft's ``prepare_model_for_kbit_training``
  casts every non-4-bit parameter to **fp32** (4 bytes/param; verified on the tiny model).
- LoRA (r x (in+out) per projection, all-linear): trl casts the adapter to bf16 for quantised bases; weights
  + grads bf16 + paged 8-bit Adam (2 bytes/param for the two moments) = 6 bytes/param.
- Activations with gradient checkpointing: one bf16 hidden state per layer per token, plus one layer's
  working set being recomputed (~(20 x hidden + 8 x intermediate) bytes/token with flash-attention).
- Logits: bf16 logits, their fp32 upcast for the loss and its gradient: ~12 bytes per token per vocab entry.
- CUDA context, cuBLAS/flash-attention workspaces, allocator slack: 1 GiB + 5%.
- FSDP (count > 1, model too big for one GPU): base weights sharded across GPUs, plus two unsharded layers
  in flight (all-gather prefetch); activations and logits are per GPU.

    python bench/qlora_memory_plan.py        # prints the markdown tables used in docs/benchmarks.md
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def projections(self) -> list[tuple[int, int]]:
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.projections())

    @property
    def embedding_params(self) -> int:
        return 2 * self.vocab * self.hidden  # untied embed_tokens + lm_head

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (a + b) for a, b in self.projections())


MODELS = [
    Shape("Llama 3.1 8B", 32, 4096, 14336, 32, 8, 128256),
    Shape("Llama 3.1 70B", 80, 8192, 28672, 64, 8, 128256),
    Shape("Mistral 7B v0.3", 32, 4096, 14336, 32, 8, 32768),
]
#: Usable memory (nvidia-smi total) per GPU, GiB.
GPUS = {"L4 (24 GB)": 22.5, "A100 40GB": 40.0, "A100 80GB": 80.0, "H100 80GB": 79.6}


def breakdown(m: Shape, tokens: int, r: int = 16, shards: int = 1) -> dict[str, float]:
    """GiB per GPU for one micro-batch of ``tokens`` tokens."""
    weights = m.linear_params * (0.5 + 0.127 / 8) / shards
    embeddings = m.embedding_params * 4 / shards
    lora = m.lora_params(r) * 6
    act = tokens * (m.layers * m.hidden * 2 + 20 * m.hidden + 8 * m.intermediate)
    logits = tokens * m.vocab * 12
    fsdp_buffers = 0.0
    if shards > 1:
        layer = sum(a * b for a, b in m.projections()) * (0.5 + 0.127 / 8)
        fsdp_buffers = 2 * layer
    parts = {"nf4 weights": weights, "embed+head fp32": embeddings, "lora+grad+optim": lora,
             "activations": act, "logits": logits, "fsdp buffers": fsdp_buffers}
    parts = {k: v / GIB for k, v in parts.items()}
    parts["overhead"] = 1.0 + 0.05 * sum(parts.values())
    parts["total"] = sum(parts.values())
    return parts


def main() -> int:
    print("Per-GPU peak, GiB (r=16 all-linear, gradient checkpointing, flash-attention-2, paged 8-bit Adam)\n")
    print("| model | params (B) | micro-batch tokens | nf4 weights | embed+head fp32 | LoRA+grad+optim | "
          "activations | logits | overhead | **total** |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in MODELS:
        params = (m.linear_params + m.embedding_params) / 1e9
        for tokens in (2048, 8192):
            b = breakdown(m, tokens)
            print(f"| {m.name} | {params:.1f} | {tokens} | {b['nf4 weights']:.1f} | {b['embed+head fp32']:.1f} | "
                  f"{b['lora+grad+optim']:.2f} | {b['activations']:.1f} | {b['logits']:.1f} | {b['overhead']:.1f} | "
                  f"**{b['total']:.1f}** |")
    print("\nFit (micro-batch 2048 tokens, e.g. batchSize 1 x maxSeqLength 2048):\n")
    print("| model | " + " | ".join(GPUS) + " |")
    print("|---|" + "---|" * len(GPUS))
    for m in MODELS:
        cells = []
        for gib in GPUS.values():
            one = breakdown(m, 2048)["total"]
            if one <= 0.95 * gib:
                cells.append(f"1 GPU, {one:.0f} GiB")
                continue
            for n in (2, 4, 8):
                t = breakdown(m, 2048, shards=n)["total"]
                if t <= 0.95 * gib:
                    cells.append(f"FSDP x{n}, {t:.0f} GiB each")
                    break
            else:
                cells.append("does not fit 8")
        print(f"| {m.name} | " + " | ".join(cells) + " |")

    print("\nCalibration against published figures (same formula):\n")
    print("| published | setting | published GB | this plan, GB | error |")
    print("|---|---|---|---|---|")
    llama2_70b = Shape("Llama 2 70B", 80, 8192, 28672, 64, 8, 32000)
    cases = [
        ("Unsloth README: Llama 3.1 8B, HF + FA2, max context at 24 GB", "r=32, batch 1, 5,789 tokens",
         24.0, breakdown(MODELS[0], 5789, r=32)["total"]),
        ("PEFT docs: Llama 2 70B QLoRA + FSDP, 2 GPUs", "seq 2048, batch 1 (batch not stated)", 35.6,
         breakdown(llama2_70b, 2048, shards=2)["total"]),
        ("PEFT docs: Llama 2 70B QLoRA + FSDP, 2 GPUs", "seq 2048, if batch 2", 35.6,
         breakdown(llama2_70b, 4096, shards=2)["total"]),
    ]
    for what, setting, pub, gib in cases:
        gb = gib * GIB / 1e9
        print(f"| {what} | {setting} | {pub:.1f} | {gb:.1f} | {100 * (gb - pub) / pub:+.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Will it fit? Peak GPU memory of a (Q)LoRA run, per GPU, from the model shape and the spec.

    total = weights + lora + optimizer + activations + logits + overhead      (GiB, per GPU)

* weights: quantised linear layers at 0.5 byte/param (NF4) plus their constants (0.127 bit/param with
  double quantisation, 0.5 without). Everything bitsandbytes leaves unquantised (embeddings, LM head, norms)
  is cast to fp32 (4 bytes/param) by peft's ``prepare_model_for_kbit_training``, which the trainer calls for
  every qlora run (+2 GiB for Llama 3.1 8B's 128k-vocab embedding and head). 8-bit: 1 byte/param plus the
  same fp32 rest; method lora: 2 bytes/param throughout (bf16, no k-bit preparation). With count > 1 they
  are divided among the GPUs only when the launcher shards them (FSDP, when the base does not fit one GPU);
  under DDP each GPU holds them all, and the adapter and optimizer state too (`shards_base`).
* lora: r x (in + out) per adapted projection per layer, weight + gradient in the adapter's dtype: bf16
  (4 bytes/param) for qlora, because trl's SFTTrainer casts a quantised model's trainable parameters to bf16;
  fp32 (8 bytes/param) for lora, where peft's ``autocast_adapter_dtype`` upcasts them and nothing casts back.
* optimizer: Adam's two states per LoRA parameter: 1 byte each for the 8-bit optimizers, 4 for bitsandbytes'
  32-bit one (its states are fp32 whatever the parameter), and the parameter's own dtype for ``adamw_torch``
  (``zeros_like``).
* activations, per token of the per-device batch: with gradient checkpointing one bf16 hidden state per
  layer plus one layer's working set; without, every layer's working set.
* logits: the loss upcasts [tokens x vocab] logits to fp32 and keeps their gradient (16 bytes/token/vocab).
* overhead: CUDA context, allocator fragmentation and kernels' workspaces.

Calibrated against published figures (docs/estimate.md lists each with our error). Pure, except
``shape_from_config_file`` which reads a local config.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .api.accelerators import GPU_COUNTS, GPU_MEMORY_MIB, NO_BF16, auto_candidates, capacity_gib, fits_one_gpu
from .api.common import Resources
from .api.finetunejob import FineTuneJobSpec
from .pricing import PriceTable

GIB = 1024**3

#: Order `auto` considers when prices tie: the catalogue's, cheapest first.
AUTO_CANDIDATES = auto_candidates(1)

# Calibration constants (see docs/estimate.md).
LAYER_BYTES_PER_HIDDEN = 20.0     # one decoder layer's bf16 working set per token, per hidden unit ...
LAYER_BYTES_PER_INTERMEDIATE = 8.0  # ... and per MLP intermediate unit (gate, up, act x up)
LOGIT_BYTES = 16.0                # per token per vocab entry: bf16 logits, fp32 upcast, fp32 grad, bf16 grad
OVERHEAD_GIB = 1.0                # CUDA context + cuBLAS/FA workspaces
FRAGMENTATION = 0.05              # allocator slack on everything else


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a model's config.json."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 0
    tied_embeddings: bool = False

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def linear_params(self) -> int:
        """Parameters of the quantisable linear layers (attention and MLP projections)."""
        return self.layers * sum(i * o for i, o in self.projections().values())

    @property
    def params(self) -> int:
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.linear_params + self.embedding_params + norms

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer in one decoder layer, by its peft target name."""
        h, q, kv, i = self.hidden, self.heads * self.hd, self.kv_heads * self.hd, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


_LLAMA31_8B = ModelShape(32, 4096, 14336, 32, 8, 128256, 128)
_LLAMA31_70B = ModelShape(80, 8192, 28672, 64, 8, 128256, 128)
_MISTRAL_7B_V03 = ModelShape(32, 4096, 14336, 32, 8, 32768, 128)

#: Hub ids with known shapes (lower-cased; -Instruct variants share the base's shape).
PRESETS: dict[str, ModelShape] = {
    "meta-llama/llama-3.1-8b": _LLAMA31_8B, "meta-llama/llama-3.1-8b-instruct": _LLAMA31_8B,
    "meta-llama/meta-llama-3.1-8b": _LLAMA31_8B, "meta-llama/meta-llama-3.1-8b-instruct": _LLAMA31_8B,
    "meta-llama/llama-3.1-70b": _LLAMA31_70B, "meta-llama/llama-3.1-70b-instruct": _LLAMA31_70B,
    "meta-llama/meta-llama-3.1-70b": _LLAMA31_70B, "meta-llama/meta-llama-3.1-70b-instruct": _LLAMA31_70B,
    "mistralai/mistral-7b-v0.3": _MISTRAL_7B_V03, "mistralai/mistral-7b-instruct-v0.3": _MISTRAL_7B_V03,
}


def shape_from_config(cfg: dict) -> ModelShape:
    """A ModelShape from a transformers config.json dict (Llama/Mistral/Qwen-style keys)."""
    cfg = cfg.get("text_config", cfg)
    hidden = int(cfg["hidden_size"])
    heads = int(cfg.get("num_attention_heads", max(1, hidden // 128)))
    return ModelShape(
        layers=int(cfg["num_hidden_layers"]), hidden=hidden,
        intermediate=int(cfg.get("intermediate_size", 4 * hidden)), heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads), vocab=int(cfg.get("vocab_size", 32000)),
        head_dim=int(cfg.get("head_dim") or 0), tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def shape_from_config_file(uri: str | None) -> ModelShape | None:
    """Read config.json under a local path or file:// URI; None when not local or unreadable."""
    if not uri or (("://" in uri) and not uri.startswith("file://")):
        return None
    path = Path(uri.removeprefix("file://")) / "config.json"
    try:
        return shape_from_config(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shape_from_name(name: str | None) -> ModelShape | None:
    """Preset by hub id, else a generic decoder shaped from a size in the name (e.g. "...-13B")."""
    if not name:
        return None
    preset = PRESETS.get(name.lower())
    if preset:
        return preset
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", name.split("/")[-1])
    return generic_shape(float(m.group(1)) * 1e9) if m else None


def generic_shape(params: float) -> ModelShape:
    """A Llama-like decoder of about this many parameters (128k vocab, GQA 4:1, MLP 3.5 x hidden)."""
    hidden = 2048 if params < 2e9 else 3072 if params < 5e9 else 4096 if params < 10e9 else \
        5120 if params < 20e9 else 6656 if params < 40e9 else 8192
    per_layer = hidden * hidden * (2 + 0.5) + 3 * hidden * int(3.5 * hidden)
    layers = max(1, round((params - 2 * 128256 * hidden) / per_layer))
    return ModelShape(layers, hidden, int(3.5 * hidden), hidden // 128, hidden // 512, 128256, 128)


def resolve_shape(spec: FineTuneJobSpec) -> tuple[ModelShape | None, str]:
    """(shape, where it came from): config.json at a local uri, then the preset/name."""
    shape = shape_from_config_file(spec.base_model.uri)
    if shape:
        return shape, "config.json"
    shape = shape_from_name(spec.base_model.name)
    if shape:
        return shape, "preset" if (spec.base_model.name or "").lower() in PRESETS else "name"
    return None, "unknown"


def lora_params(shape: ModelShape, r: int, targets: list[str]) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted projection per layer."""
    projections = shape.projections()
    if "all-linear" in targets:
        chosen = list(projections)
    else:
        chosen = [t for t in projections if t in set(targets)]
    return shape.layers * sum(r * (projections[t][0] + projections[t][1]) for t in chosen)


def param_bytes(method: str) -> tuple[int, int]:
    """(bytes per unquantised frozen parameter, bytes per LoRA parameter) as the trainer leaves them.

    qlora: ``prepare_model_for_kbit_training`` casts every bf16/fp16 parameter that is not 4-bit/int8
    (embeddings, LM head, norms) to fp32, and trl's SFTTrainer casts a quantised model's adapter to bf16.
    lora: the base loads in bf16 and is not prepared; peft upcasts the adapter to fp32. A test in the ml tier
    (tests/trainer/test_estimate_dtypes_ml.py) checks these against the trainer's real model.
    """
    return (4, 2) if method == "qlora" else (2, 4)


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU GiB by component; total is what is compared against the GPU."""

    weights: float
    lora: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    params: int

    @property
    def total(self) -> float:
        return self.weights + self.lora + self.optimizer + self.activations + self.logits + self.overhead

    def breakdown(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 2) for k in
                ("weights", "lora", "optimizer", "activations", "logits", "overhead")}


def estimate_memory(shape: ModelShape, *, method: str = "qlora", bits: int = 4, double_quant: bool = True,
                    r: int = 16, targets: list[str] | None = None, seq_len: int = 2048, batch_size: int = 1,
                    gradient_checkpointing: bool = True, optimizer: str = "paged_adamw_8bit",
                    gpus: int = 1) -> MemoryEstimate:
    """Peak memory per GPU (GiB). See the module docstring for each term."""
    if method == "qlora":
        const_bits = (0.127 if double_quant else 0.5) if bits == 4 else 0.0
        per_param = bits / 8 + const_bits / 8
    else:
        per_param = 2.0
    rest_bytes, lora_bytes = param_bytes(method)
    frozen = shape.linear_params * per_param + (shape.params - shape.linear_params) * rest_bytes
    n_lora = lora_params(shape, r, targets or ["all-linear"])
    opt_bytes = 2 if "8bit" in optimizer else 8 if optimizer == "paged_adamw_32bit" else 2 * lora_bytes
    tokens = seq_len * batch_size
    layer_ws = tokens * (LAYER_BYTES_PER_HIDDEN * shape.hidden + LAYER_BYTES_PER_INTERMEDIATE * shape.intermediate)
    if gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * 2 + layer_ws
    else:
        activations = shape.layers * layer_ws
    logits = tokens * shape.vocab * LOGIT_BYTES
    shard = max(1, gpus)
    weights, lora, opt = frozen / shard / GIB, n_lora * 2 * lora_bytes / shard / GIB, n_lora * opt_bytes / shard / GIB
    act, lg = activations / GIB, logits / GIB
    overhead = OVERHEAD_GIB + FRAGMENTATION * (weights + lora + opt + act + lg)
    return MemoryEstimate(weights, lora, opt, act, lg, overhead, shape.params)


# Multi-GPU layout: the trainer's launcher (llmforge_trainer.launch) judges it with the same
# api.accelerators.fits_one_gpu, so the estimate is for the layout that will really run.
def shards_base(spec: FineTuneJobSpec, shape: ModelShape, gpus: int, accelerator: str) -> bool:
    """Whether `gpus` GPUs shard the model (FSDP) rather than each holding all of it (DDP, the launcher's
    choice whenever the base fits one GPU). An accelerator of unknown size is taken as sharding."""
    if gpus <= 1:
        return False
    if accelerator not in GPU_MEMORY_MIB:
        return True
    return not fits_one_gpu(shape.params / 1e9, capacity_gib(accelerator), spec.method, spec.quantization.bits)


def estimate_for_spec(spec: FineTuneJobSpec, shape: ModelShape, gpus: int | None = None,
                      accelerator: str | None = None) -> MemoryEstimate:
    """Per GPU on `gpus` x `accelerator` (default: the spec's). Under DDP every GPU holds the whole base,
    adapter and optimizer state, so only FSDP divides them."""
    t = spec.training
    count = gpus or spec.resources.count
    shard = shards_base(spec, shape, count, accelerator or spec.resources.accelerator)
    return estimate_memory(
        shape, method=spec.method, bits=spec.quantization.bits, double_quant=spec.quantization.double_quant,
        r=spec.lora.r, targets=spec.lora.target_modules, seq_len=t.max_seq_length, batch_size=t.batch_size,
        gradient_checkpointing=t.gradient_checkpointing, optimizer=t.optimizer,
        gpus=count if shard else 1)


def usable(accelerator: str, compute_dtype: str) -> bool:
    return not (accelerator in NO_BF16 and compute_dtype == "bfloat16")


@dataclass(frozen=True)
class FitResult:
    """The estimate, the accelerator it was judged against (auto resolved), and a message when it fails."""

    accelerator: str
    count: int
    estimate: MemoryEstimate | None
    fits: bool | None
    message: str = ""
    source: str = ""

    def status(self) -> dict:
        """status.estimate (camelCase), the shape the API's Estimate model has."""
        out: dict = {"accelerator": self.accelerator, "count": self.count}
        if self.estimate is not None:
            out.update(gpuMemoryGiB=round(self.estimate.total, 2), parametersBillions=round(
                self.estimate.params / 1e9, 2), breakdown=self.estimate.breakdown())
        if self.fits is not None:
            out["fits"] = self.fits
        return out


def check_fit(spec: FineTuneJobSpec, prices: PriceTable | None = None) -> FitResult:
    """Resolve `auto` to the cheapest GPU that fits and judge the chosen accelerator x count."""
    from .pricing import DEFAULT_PRICES, cheapest

    prices = prices or DEFAULT_PRICES
    res = spec.resources
    shape, source = resolve_shape(spec)
    if res.accelerator == "cpu":
        est = estimate_for_spec(spec, shape, 1) if shape else None
        return FitResult("cpu", 1, est, None, source=source)
    if shape is None:
        if res.accelerator == "auto":
            return FitResult("auto", res.count, None, False, (
                "accelerator auto needs the model size: use a known hub id, a local baseModel.uri with "
                "config.json, or a name with a size such as 8B; or set resources.accelerator"), source)
        return FitResult(res.accelerator, res.count, None, None, source=source)
    est = estimate_for_spec(spec, shape)
    dtype = spec.quantization.compute_dtype
    if res.accelerator == "auto":
        fitting = [a for a in auto_candidates(res.count, bf16=dtype == "bfloat16")
                   if estimate_for_spec(spec, shape, accelerator=a).total <= capacity_gib(a)]
        choice = cheapest(fitting, {a: res.count for a in fitting}, prices, res.spot)
        if choice is None:
            return FitResult("auto", res.count, est, False, _too_big(est, res.count, "any GKE GPU", spec, shape),
                             source)
        return FitResult(choice, res.count, estimate_for_spec(spec, shape, accelerator=choice), True, source=source)
    acc = res.accelerator
    if not usable(acc, dtype):
        return FitResult(acc, res.count, est, False, (
            f"{acc} has no bfloat16; set quantization.computeDtype: float16 or choose another accelerator"), source)
    if est.total <= capacity_gib(acc):
        return FitResult(acc, res.count, est, True, source=source)
    return FitResult(acc, res.count, est, False, _too_big(est, res.count, acc, spec, shape), source)


def _too_big(est: MemoryEstimate, count: int, target: str, spec: FineTuneJobSpec, shape: ModelShape) -> str:
    cap = f"{capacity_gib(target):.1f} GiB" if target in GPU_MEMORY_MIB else "the largest GPU (80 GiB)"
    msg = (f"estimated {est.total:.1f} GiB per GPU ({_parts(est)}) exceeds {target} x{count} ({cap} per GPU)")
    return msg + "; would fit: " + "; ".join(_what_fits(spec, shape))


def _parts(est: MemoryEstimate) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in est.breakdown().items() if v >= 0.05)


def _what_fits(spec: FineTuneJobSpec, shape: ModelShape) -> list[str]:
    """A few concrete alternatives: a bigger/more GPUs, a shorter sequence, a smaller batch."""
    dtype = spec.quantization.compute_dtype
    out = []
    for acc in AUTO_CANDIDATES:
        if not usable(acc, dtype):
            continue
        for n in GPU_COUNTS[acc]:
            if estimate_for_spec(spec, shape, n, acc).total <= capacity_gib(acc):
                out.append(f"{acc} x{n}")
                break
        if len(out) >= 2:
            break
    t = spec.training
    for seq in (t.max_seq_length // 2, t.max_seq_length // 4, t.max_seq_length // 8):
        if seq < 16:
            break
        alt = spec.model_copy(update={"training": t.model_copy(update={"max_seq_length": seq, "batch_size": 1})})
        target = spec.resources.accelerator if spec.resources.accelerator in GPU_MEMORY_MIB else "nvidia-h100-80gb"
        if estimate_for_spec(alt, shape, accelerator=target).total <= capacity_gib(target):
            out.append(f"maxSeqLength {seq} with batchSize 1")
            break
    return out or ["nothing on one node; use a smaller model"]


#: Serving's `auto` considers these, cheapest first (weights + KV cache must fit in GPU memory across `count`
#: GPUs): the catalogue's GPUs with bf16, because the served weights are the model's bf16 ones.
AUTO_ORDER = auto_candidates(1, bf16=True)


def serving_accelerator(res: Resources, model_name: str | None) -> str:
    """The accelerator to serve on: the one asked for, or for `auto` the cheapest with a machine of `count`
    GPUs whose memory holds the bf16 weights (2 bytes/param, size from the shared estimate's presets or the
    name) plus ~30% KV cache across them; an unknown size is taken as 8B."""
    if res.accelerator != "auto":
        return res.accelerator
    shape = shape_from_name(model_name)
    params = shape.params if shape else 8e9
    need_gib = params * 2 * 1.3 / 2**30 / res.count
    order = auto_candidates(res.count, bf16=True) or AUTO_ORDER  # no machine at all: validation rejects that
    return next((a for a in order if need_gib <= capacity_gib(a)), order[-1])

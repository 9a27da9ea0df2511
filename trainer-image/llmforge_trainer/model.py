"""Build the library objects for the model side of a FineTuneJob: quantisation, base model, k-bit prep, LoRA.

Small helpers in the style of trl's ``get_quantization_config``: each maps part of the spec onto one library
object, so the mapping is visible and testable.

- ``quantization_config(spec)``: bitsandbytes NF4 (or FP4/8-bit), double quantisation, bf16 compute (qlora only).
- ``attn_implementation()``: flash-attention-2 when a CUDA GPU (Ampere or newer) and the ``flash_attn`` package are
  present, else PyTorch SDPA (which also handles trl's padding-free packing through position ids).
- ``resolve_optimizer(name)``: the paged/8-bit bitsandbytes optimizers need CUDA; without it we fall back to
  ``adamw_torch`` and say so (documented in docs/trainer.md).
- ``load_base_model`` / ``load_tokenizer``: any failure becomes ``BadBaseModel`` with what was tried.
- ``prepare_for_training``: ``prepare_model_for_kbit_training`` (trl 1.16 no longer calls it), then peft LoRA.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from . import storage
from .errors import TrainError, invalid_input

log = logging.getLogger(__name__)

CUDA_ONLY_OPTIMIZERS = ("paged_adamw_8bit", "paged_adamw_32bit", "adamw_8bit")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def quantization_config(spec: Any, fsdp: bool = False):
    """BitsAndBytesConfig for ``spec.method == "qlora"``, None for plain LoRA.

    With FSDP the 4-bit weights are stored in the compute dtype (``bnb_4bit_quant_storage``) so FSDP can shard
    them like any other tensor (the FSDP+QLoRA recipe of the bitsandbytes/peft docs).
    """
    if spec.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    q = spec.quantization
    compute = torch_dtype(q.compute_dtype)
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    kwargs = {}
    if fsdp:
        kwargs["bnb_4bit_quant_storage"] = compute
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.type, bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=compute, **kwargs)


def lora_config(spec: Any):
    """peft LoraConfig from ``spec.lora``; ``["all-linear"]`` becomes peft's ``"all-linear"`` shorthand."""
    from peft import LoraConfig

    lo = spec.lora
    targets: Any = "all-linear" if lo.target_modules == ["all-linear"] else list(lo.target_modules)
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=targets, bias="none",
                      task_type="CAUSAL_LM")


def attn_implementation() -> str:
    """flash_attention_2 on an Ampere+ CUDA GPU with flash_attn installed, else sdpa."""
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        major, _ = torch.cuda.get_device_capability()
        if major >= 8:
            return "flash_attention_2"
    return "sdpa"


def resolve_optimizer(name: str, has_cuda: bool) -> tuple[str, str | None]:
    """(optimizer to use, note) — bitsandbytes' paged/8-bit optimizers need CUDA; on CPU use adamw_torch."""
    if name in CUDA_ONLY_OPTIMIZERS and not has_cuda:
        return "adamw_torch", f"optimizer {name} needs a CUDA GPU; using adamw_torch on this machine"
    return name, None


def resolve_model_source(spec: Any, scratch: Path) -> tuple[str, str]:
    """(what to pass to from_pretrained, human description). uri wins over name; gs:// is downloaded first."""
    src = spec.base_model
    if src.uri:
        loc = storage.parse(src.uri)
        if loc.scheme == "gs":
            files = storage.list_files(src.uri)
            if "config.json" not in files:
                raise invalid_input("BadBaseModel", f"base model at {src.uri}: no config.json there "
                                    f"({len(files)} objects under the prefix)")
            local = storage.download_dir(src.uri, scratch / "base-model")
            return str(local), src.uri
        if not (Path(loc.path) / "config.json").is_file():
            raise invalid_input("BadBaseModel", f"base model at {src.uri}: not found (no config.json in {loc.path})")
        return loc.path, src.uri
    if src.name:
        if os.path.isdir(src.name):
            return src.name, src.name
        return src.name, f"{src.name}@{src.revision or 'main'}"
    raise invalid_input("BadBaseModel", "spec.baseModel has neither uri nor name")


def load_tokenizer(path: str, spec: Any, described: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=spec.base_model.revision)
    except Exception as exc:  # noqa: BLE001 - any loader error means the base model is unusable
        raise invalid_input("BadBaseModel", f"cannot load the tokenizer of {described}: {type(exc).__name__}: "
                            f"{exc}".strip()[:1500]) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(path: str, spec: Any, described: str, device_map: Any = None, fsdp: bool = False):
    """The frozen base, 4-bit when qlora. Raises BadBaseModel on any loading error."""
    from transformers import AutoModelForCausalLM

    q = spec.quantization
    kwargs: dict[str, Any] = {
        "quantization_config": quantization_config(spec, fsdp=fsdp),
        "dtype": torch_dtype(q.compute_dtype) if spec.method == "qlora" else torch_dtype("bfloat16"),
        "attn_implementation": attn_implementation(),
        "revision": spec.base_model.revision,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise invalid_input("BadBaseModel", f"cannot load {described} as a causal LM: {type(exc).__name__}: "
                            f"{exc}".strip()[:1500]) from exc
    model.config.use_cache = False  # incompatible with gradient checkpointing; irrelevant for training
    keep_4bit_layout_trainable(model)
    return model


def keep_4bit_layout_trainable(model: Any) -> int:
    """Stop bitsandbytes (0.50) from repacking 4-bit weights into its CPU inference layout during evaluation.

    On a CPU with AVX512-BF16, ``Linear4bit.forward`` in eval mode converts its weight, permanently, to a layout
    whose matmul (``gemv_4bit``) has no autograd kernel. Training after a mid-run evaluation would then backprop
    through it ("may lead to silently incorrect behavior"): gradients to earlier layers' adapters go wrong until
    a checkpoint save happens to convert the weights back. Returns how many layers were switched off.
    """
    n = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def prepare_for_training(model: Any, spec: Any):
    """k-bit preparation (qlora) with non-reentrant gradient checkpointing, then the LoRA adapter."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    gc = spec.training.gradient_checkpointing
    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, lora_config(spec))


def parameter_counts(model: Any) -> dict[str, int]:
    """Trainable and total parameters (4-bit packed weights counted as their logical size)."""
    trainable, total = model.get_nb_trainable_parameters()
    return {"trainable_parameters": int(trainable), "total_parameters": int(total)}


def require_finite_adapter(model: Any, step: int) -> None:
    """Raise LossDiverged when any trainable weight is NaN/inf (never publish a poisoned checkpoint)."""
    import torch

    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise TrainError("LossDiverged", f"adapter weight {name} is not finite at step {step}; "
                             "lower training.learningRate, raise warmupRatio or keep maxGradNorm small")

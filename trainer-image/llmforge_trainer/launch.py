"""How to start training when a pod has several GPUs: a pure launch plan, and the facts it is computed from.

``plan_launch`` decides, without side effects:

- **single**: one process (one GPU, or CPU). ``llmforge-train`` trains in-process.
- **ddp**: one process per GPU under ``torchrun --standalone`` (``python -m torch.distributed.run``), each with a
  full 4-bit copy of the base; only the LoRA gradients are all-reduced. Chosen when the model fits one GPU.
- **fsdp**: same launcher, with FSDP sharding the base (4-bit weights stored in bf16 so FSDP can shard them, the
  FSDP+QLoRA recipe). Chosen when the model does not fit one GPU.

The relaunched children get ``LLMFORGE_LAUNCHED=1`` (so they don't relaunch again) and ``LLMFORGE_STRATEGY``.
``--nproc N`` / ``LLMFORGE_NPROC`` overrides the process count (for example 2 CPU processes with gloo in tests).

The fit test is deliberately coarse (weights + 25% + 2 GiB headroom against 90% of the GPU): the operator's
estimator already chose the accelerator and count; here we only pick DDP vs FSDP, with the very functions
the estimator uses to judge that layout (``llmforge.api.accelerators.fits_one_gpu``: the image ships only
``llmforge.api``, so the launcher must not import the operator's ``llmforge.estimate``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from llmforge.api.accelerators import GPU_MEMORY_MIB, base_weights_gib, capacity_gib, fits_one_gpu


@dataclass(frozen=True)
class LaunchPlan:
    """What ``llmforge-train`` should do: train here (``argv is None``) or exec ``argv`` with ``env`` added."""

    strategy: str
    nproc: int
    argv: list[str] | None
    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""


def plan_launch(spec: Any, argv: list[str], *, env: dict[str, str], gpus_visible: int,
                gpu_gib: float | None = None, params_billions: float | None = None,
                nproc_override: int | None = None, python: str | None = None) -> LaunchPlan:
    """The launch plan for ``spec`` given what this pod sees. Pure: reads only its arguments."""
    if env.get("LLMFORGE_LAUNCHED") == "1" or "LOCAL_RANK" in env:
        return LaunchPlan(env.get("LLMFORGE_STRATEGY", "ddp"), int(env.get("WORLD_SIZE", "1")), None,
                          reason="already running under the launcher")
    res = spec.resources
    on_cpu = res.accelerator == "cpu" or gpus_visible == 0
    nproc = nproc_override or (1 if res.accelerator == "cpu" else res.count)
    reason = f"{nproc} process(es) requested"
    if not on_cpu and gpus_visible and nproc > gpus_visible:
        reason = f"{nproc} GPUs requested but {gpus_visible} visible; using {gpus_visible}"
        nproc = gpus_visible
    if nproc <= 1:
        return LaunchPlan("single", 1, None, reason="one process")
    if gpu_gib is None and not on_cpu and res.accelerator in GPU_MEMORY_MIB:
        gpu_gib = capacity_gib(res.accelerator)  # no GPU visible yet: the catalogue's size of the label
    bits = spec.quantization.bits
    forced = env.get("LLMFORGE_STRATEGY")
    if forced in ("ddp", "fsdp"):
        strategy = forced
        reason += f"; strategy {forced} forced by LLMFORGE_STRATEGY"
    elif on_cpu:
        strategy = "ddp"
        reason += "; CPU: DDP over gloo"
    elif fits_one_gpu(params_billions, gpu_gib, spec.method, bits):
        strategy = "ddp"
        reason += f"; base fits one GPU ({gpu_gib:g} GiB): DDP" if gpu_gib else "; DDP"
    else:
        strategy = "fsdp"
        need = base_weights_gib(params_billions or 0, spec.method, bits)
        reason += f"; base weights {need:.1f} GiB do not fit one {gpu_gib:g} GiB GPU with headroom: FSDP+QLoRA"
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llmforge_trainer.cli", *child_args(argv)]
    child_env = {"LLMFORGE_LAUNCHED": "1", "LLMFORGE_STRATEGY": strategy}
    return LaunchPlan(strategy, nproc, cmd, child_env, reason)


def child_args(argv: list[str]) -> list[str]:
    """Our arguments minus ``--nproc`` (children must not relaunch, and torchrun's own parser would take
    ``--nproc`` as an ambiguous abbreviation of ``--nproc-per-node``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


def params_billions_from_index(index: dict | None, safetensors_bytes: int | None, dtype_bytes: int) -> float | None:
    """Parameter count (billions) from a safetensors index's total_size, or from the files' total size."""
    total = (index or {}).get("metadata", {}).get("total_size") or safetensors_bytes
    if not total:
        return None
    return total / dtype_bytes / 1e9


def local_model_params_billions(path: str) -> float | None:
    """Best-effort size of a local Hugging Face checkpoint directory, in billions of parameters."""
    from pathlib import Path

    p = Path(path)
    if not p.is_dir():
        return None
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    dtype_bytes = 4 if "32" in dtype else 2
    index = None
    idx = p / "model.safetensors.index.json"
    if idx.exists():
        try:
            index = json.loads(idx.read_text())
        except ValueError:
            index = None
    size = sum(f.stat().st_size for f in p.glob("*.safetensors"))
    return params_billions_from_index(index, size or None, dtype_bytes)

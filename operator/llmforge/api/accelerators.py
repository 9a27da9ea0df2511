"""The accelerator catalogue: facts about each GPU the operator schedules on, and the small pure functions
that judge whether a base model fits one of them.

It lives in the API layer because both sides of the contract need the same numbers: the operator's
estimator (``llmforge.estimate``) decides the accelerator and count, and the trainer image's launcher
(``llmforge_trainer.launch``) picks DDP or FSDP for that layout. The trainer image ships only
``llmforge.api``, so anything it needs from here must be here, not in the operator. Like the rest of the
API it imports nothing else of ours; unlike it, nothing here needs pydantic.
"""

from __future__ import annotations

#: Usable memory per GPU as the driver reports it (nvidia-smi total, MiB). Keys are the GKE accelerator
#: labels of ``common.GPU_ACCELERATORS``.
GPU_MEMORY_MIB = {
    "nvidia-tesla-t4": 15360, "nvidia-l4": 23034, "nvidia-tesla-a100": 40960,
    "nvidia-a100-80gb": 81920, "nvidia-h100-80gb": 81559,
}

#: Bytes per parameter of the frozen base, by (method, bits). qlora 4-bit is NF4 plus its double-quantised
#: constants (0.127 bit/param); lora keeps the base in bf16.
BYTES_PER_PARAM = {("qlora", 4): 0.5 + 0.127 / 8, ("qlora", 8): 1.0, ("lora", 16): 2.0}
# The one-GPU test is deliberately coarse (see fits_one_gpu): the estimator has already chosen the
# accelerator and count, so this only has to tell "fits one GPU, every GPU holds it all" from "must shard".
HEADROOM_FACTOR = 1.25
HEADROOM_GIB = 2.0
USABLE_FRACTION = 0.9


def capacity_gib(accelerator: str) -> float:
    """Memory of one GPU of this accelerator, GiB. KeyError for an accelerator not in the catalogue."""
    return GPU_MEMORY_MIB[accelerator] / 1024


def base_weights_gib(params_billions: float, method: str, bits: int) -> float:
    """Memory of the frozen base weights, GiB."""
    key = (method, bits if method == "qlora" else 16)
    return params_billions * 1e9 * BYTES_PER_PARAM[key] / 2**30


def fits_one_gpu(params_billions: float | None, gpu_gib: float | None, method: str, bits: int) -> bool:
    """Coarse: base weights x 1.25 + 2 GiB within 90% of one GPU. Unknown sizes are assumed to fit."""
    if params_billions is None or gpu_gib is None:
        return True
    need = base_weights_gib(params_billions, method, bits) * HEADROOM_FACTOR + HEADROOM_GIB
    return need <= gpu_gib * USABLE_FRACTION

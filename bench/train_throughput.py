"""Training throughput: trl padding-free packing vs naive padded batches, the real trainer, same process.

Runs ``llmforge_trainer.train.run`` (the code ``llmforge-train`` runs) on the tiny Llama on CPU, one epoch
over the same examples, alternating the two settings for ``--rounds`` rounds so both see the same machine
load. Throughput is *useful* tokens per second (of wall time, and of this process's CPU time inside the
training loop, which a busy shared machine disturbs far less): non-padding tokens trained on (transformers'
``num_input_tokens_seen`` with ``non_padding``) divided by training wall time. Both settings see the same
tokens; the padded one also computes on padding.

The data has the length spread of real instruction sets (a few words to a few hundred), generated here:
examples are the toy task's alpaca records with a random-length ``input`` of filler words.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 ~/.cache/llmforge/venv/bin/python bench/train_throughput.py
    # options: --examples 192 --rounds 2 --batch-size 8 --max-seq-length 512 --hidden-size 512

Prints one markdown table row per setting and the ratio, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for d in ("operator", "trainer-image"):
    sys.path.insert(0, str(REPO / d))


def lengths_data(n: int, seed: int) -> list[dict]:
    """Toy alpaca records with a long-tailed input length (log-normal, 3..350 words)."""
    from llmforge_trainer.tiny import WORDS, make_records

    rng = random.Random(seed)
    out = []
    for rec in make_records(n, "alpaca", seed=seed):
        k = int(min(350, max(3, rng.lognormvariate(3.6, 0.9))))
        rec = dict(rec, input=" ".join(rng.choice(WORDS) for _ in range(k)))
        out.append(rec)
    return out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores (load avg {load:.1f})"


class CpuClock:
    """A TrainerCallback (duck-typed) measuring this process's CPU time inside the training loop only.
    With one torch thread, CPU seconds are the work done, whatever else the machine is running."""

    def __init__(self):
        self.start = self.end = None

    def on_train_begin(self, *a, **k):
        self.start = time.process_time()

    def on_train_end(self, *a, **k):
        self.end = time.process_time()

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)


def one_run(model_dir: Path, data: Path, work: Path, packing: bool, args) -> dict:
    from llmforge.api.finetunejob import FineTuneJob
    from llmforge_trainer.train import RunOptions, run

    doc = {"metadata": {"name": "bench"}, "spec": {
        "baseModel": {"uri": str(model_dir)},
        "dataset": {"train": str(data), "validationSplit": 0.01},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"epochs": 1, "batchSize": args.batch_size, "gradientAccumulationSteps": 1,
                     "learningRate": 1e-3, "maxSeqLength": args.max_seq_length, "loggingSteps": 1000,
                     "packing": packing, "warmupRatio": 0.0},
        "resources": {"accelerator": "cpu"}, "checkpoint": {"everySteps": 100000},
        "output": {"uri": str(work / "out")}}}
    clock = CpuClock()
    result, code, rep = run(FineTuneJob.model_validate(doc), RunOptions(work_dir=work / "scratch", callbacks=[clock]))
    if code != 0:
        raise SystemExit(f"run failed: {result.message}")
    tokens = rep["train"]["num_input_tokens_seen"]
    seconds = rep["train"]["train_runtime"]
    cpu = clock.end - clock.start
    return {"packing": packing, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "cpu_seconds": round(cpu, 2), "tokens_per_cpu_second": tokens / cpu, "steps": rep["step"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=192)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden-size", type=int, default=512,
                   help="tiny Llama width; 512 makes the projections dominate per-token cost, as in real LLMs "
                        "(at 128, attention over a 512-token packed sequence dominates)")
    args = p.parse_args(argv)

    import logging

    import torch
    from transformers.utils import logging as hf_logging

    from llmforge_trainer.tiny import RECIPE_VERSION, build_tiny_model, write_jsonl

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cache = Path(os.environ.get("LLMFORGE_TINY_CACHE", Path(tempfile.gettempdir()) / f"llmforge-tiny-{os.getuid()}"))
    # Throughput does not depend on what the weights know: skip pre-training unless it is the cached test model.
    steps = 200 if args.hidden_size == 128 else 0
    model_dir = build_tiny_model(cache / f"model-r{RECIPE_VERSION}-h{args.hidden_size}-s{steps}-seed0",
                                 hidden_size=args.hidden_size, pretrain_steps=steps)
    work = Path(tempfile.mkdtemp(prefix="llmforge-bench-"))
    data = write_jsonl(work / "train.jsonl", lengths_data(args.examples, args.seed))

    results: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(args.rounds):
        for packing in (False, True) if r % 2 == 0 else (True, False):
            res = one_run(model_dir, data, work / f"r{r}-{int(packing)}", packing, args)
            results[packing].append(res)
            print(json.dumps(res), flush=True)
    med = {k: statistics.median(x["tokens_per_second"] for x in v) for k, v in results.items()}
    med_cpu = {k: statistics.median(x["tokens_per_cpu_second"] for x in v) for k, v in results.items()}
    toks = {k: v[0]["tokens"] for k, v in results.items()}
    ratio = med[True] / med[False]
    today = datetime.date.today().isoformat()
    env = f"{machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    print()
    print("| date | machine | hidden | examples | batch | maxSeqLength | setting | useful tokens | "
          "tokens/s wall (median) | tokens per CPU-second (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for packing in (False, True):
        name = "packing, padding-free (bfd)" if packing else "padded batches"
        print(f"| {today} | {env} | {args.hidden_size} | {args.examples} | {args.batch_size} | "
              f"{args.max_seq_length} | {name} | {toks[packing]} | {med[packing]:.0f} | {med_cpu[packing]:.0f} |")
    rounds = [t["tokens_per_second"] / f["tokens_per_second"] for t, f in zip(results[True], results[False],
                                                                               strict=True)]
    print(f"\nratio packing / padded (median tokens/s): {ratio:.2f}x (goal >= 1.5x); per round: "
          + ", ".join(f"{r:.2f}x" for r in rounds))
    cpu_rounds = [t["tokens_per_cpu_second"] / f["tokens_per_cpu_second"]
                  for t, f in zip(results[True], results[False], strict=True)]
    print(f"ratio by CPU time (robust to machine load): {med_cpu[True] / med_cpu[False]:.2f}x; per round: "
          + ", ".join(f"{r:.2f}x" for r in cpu_rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

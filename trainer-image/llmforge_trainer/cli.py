"""``llmforge-train``: QLoRA/LoRA fine-tuning driven by a FineTuneJob resource (YAML or JSON).

The operator mounts the FineTuneJob exactly as stored and runs ``llmforge-train --spec /etc/llmforge/spec.yaml``.
It is validated with the same pydantic models as the CRD. Copy-paste commands::

    # the tiny CPU example (builds a tiny Llama and its data first; see docs/trainer.md)
    python -m llmforge_trainer.tiny --out /tmp/llmforge-demo/model --data /tmp/llmforge-demo/data
    llmforge-train --spec examples/00-quickstart-finetunejob.yaml --metrics-port 0 \\
        --termination-log /tmp/llmforge-demo/result.json

    # resolve and print the plan (SFTConfig-level settings, launch strategy) without training
    llmforge-train --spec job.yaml --dry-run

    # two processes on CPU (DDP over gloo), as the multi-GPU path does with one process per GPU
    llmforge-train --spec job.yaml --nproc 2

Exit codes (``llmforge.api.contract``): 0 succeeded, 1 failed, 2 invalid input (spec, data, base model),
143 preempted (SIGTERM handled, checkpoint saved; reschedule to resume). The final ``TrainResult`` goes to the
termination-message path (``--termination-log``, env ``LLMFORGE_TERMINATION_LOG``, default /dev/termination-log);
live progress is served as Prometheus gauges on ``--metrics-port`` (env ``LLMFORGE_METRICS_PORT``, default 9090,
0 disables). See docs/reporting-contract.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from llmforge.api import contract


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmforge-train", description="Fine-tune with QLoRA/LoRA from a FineTuneJob.",
                                epilog="Exit codes: 0 ok, 1 failed, 2 invalid input, 143 preempted (resumable).")
    p.add_argument("--spec", required=True, help="FineTuneJob resource, YAML or JSON ('-' for stdin)")
    p.add_argument("--termination-log", default=None,
                   help="where to write the result (env LLMFORGE_TERMINATION_LOG; default /dev/termination-log)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help=f"Prometheus progress port (env LLMFORGE_METRICS_PORT; default {contract.METRICS_PORT}; "
                        "0 disables)")
    p.add_argument("--work-dir", default=None,
                   help="local scratch for checkpoints and downloads (env LLMFORGE_WORK_DIR; default a temp dir)")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes to launch (env LLMFORGE_NPROC; default resources.count, 1 on cpu)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved plan as JSON, exit")
    return p


def load_job(path: str):
    """Parse and validate a FineTuneJob from YAML/JSON text (the operator passes the resource as stored)."""
    import yaml

    from llmforge.api.finetunejob import FineTuneJob

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) > 1:  # a multi-document file (like examples/00-quickstart.yaml): take its FineTuneJob
        jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
        if len(jobs) != 1:
            raise ValueError(f"expected one FineTuneJob among {len(docs)} documents, found {len(jobs)}")
        docs = jobs
    doc = docs[0] if docs else None
    if isinstance(doc, dict) and "spec" not in doc and "baseModel" in doc:
        doc = {"spec": doc}  # a bare spec is accepted too
    return FineTuneJob.model_validate(doc)


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    prefix = "llmforge" if rank == "0" else f"llmforge[rank {rank}]"
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True,
                        format=f"%(asctime)s {prefix} %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "google", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Progress bars are unreadable in `kubectl logs`; our own lines say the same once per logging step.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork no tokenizer workers; silence the warning


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging()
    log = logging.getLogger("llmforge.train")

    # SIGTERM may arrive while we import torch: install the flag handler first.
    from .train import Preemption

    preemption = Preemption()
    preemption.install()

    from . import report

    term_path = report.termination_log_path(args.termination_log)
    is_main = os.environ.get("RANK", "0") == "0"
    try:
        job = load_job(args.spec)
    except Exception as exc:  # noqa: BLE001 - YAML, validation and I/O errors all mean a bad spec
        msg = f"{args.spec}: {type(exc).__name__}: {exc}"[:3000]
        log.error("invalid spec: %s", msg)
        result = report.make_result("Failed", reason="InvalidSpec", message=msg)
        if is_main:
            report.write_termination_message(result, term_path)
        return contract.EXIT_INVALID_INPUT

    from .launch import local_model_params_billions, plan_launch

    gpus = 0
    gpu_gib = None
    try:
        import torch

        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    except ImportError:
        pass
    spec = job.spec
    base_path = spec.base_model.uri or spec.base_model.name or ""
    local_base = base_path[7:] if base_path.startswith("file://") else base_path
    plan = plan_launch(spec, argv, env=dict(os.environ), gpus_visible=gpus, gpu_gib=gpu_gib,
                       params_billions=local_model_params_billions(local_base),
                       nproc_override=args.nproc or _env_int("LLMFORGE_NPROC"))
    if args.dry_run:
        from .train import sft_config

        notes: list[str] = []
        cfg = sft_config(spec, Path(tempfile.gettempdir()) / "llmforge-dry-run", spec.dataset.format,
                         gpus > 0, True, plan.strategy, notes)
        print(json.dumps({"plan": {"strategy": plan.strategy, "nproc": plan.nproc, "argv": plan.argv,
                                   "env": plan.env, "reason": plan.reason},
                          "sft_config": {k: str(v) for k, v in sorted(cfg.to_dict().items())},
                          "notes": notes}, indent=2))
        return contract.EXIT_OK
    log.info("launch: %s (%s)", plan.strategy, plan.reason)
    if plan.argv is not None:
        return _relaunch(plan, term_path, preemption)

    from transformers.utils import logging as hf_logging

    from .train import RunOptions, run

    hf_logging.disable_progress_bar()

    port = args.metrics_port if args.metrics_port is not None else _env_int("LLMFORGE_METRICS_PORT")
    work = args.work_dir or os.environ.get("LLMFORGE_WORK_DIR") or tempfile.mkdtemp(prefix="llmforge-train-")
    opts = RunOptions(work_dir=Path(work), metrics_port=contract.METRICS_PORT if port is None else port,
                      strategy=plan.strategy)
    result, code, _ = run(job, opts, preemption)
    if is_main:
        text = report.write_termination_message(result, term_path)
        log.info("result: %s", text)
    preemption.restore()
    return code


def _relaunch(plan, term_path: str, preemption) -> int:
    """Run the launcher (torchrun), forward SIGTERM to it, and turn rank 0's result into our exit code."""
    from . import report

    env = {**os.environ, **plan.env, "LLMFORGE_TERMINATION_LOG": term_path}
    if term_path and Path(term_path).exists() and term_path != contract.TERMINATION_LOG:
        Path(term_path).unlink()
    proc = subprocess.Popen(plan.argv, env=env)
    preemption.restore()
    signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
    code = proc.wait()
    try:
        result = contract.TrainResult.model_validate_json(Path(term_path).read_text())
    except (OSError, ValueError):
        result = None
    if result is None:
        msg = f"the {plan.strategy} launcher exited with code {code} and no worker wrote a result"
        report.write_termination_message(report.make_result("Failed", reason="Error", message=msg), term_path)
        return contract.EXIT_FAILED if code == 0 else code
    return {"Succeeded": contract.EXIT_OK, "Preempted": contract.EXIT_PREEMPTED}.get(
        result.phase, code or contract.EXIT_FAILED)


if __name__ == "__main__":
    raise SystemExit(main())

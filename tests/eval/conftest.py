"""Fixtures for the evaluation tests (ml tier): an adapter trained by the real trainer.

``eval_adapter_dir`` runs ``llmforge-train`` (QLoRA on CPU, the quickstart recipe) on the tiny model and the
toy task's 320 training records, and returns ``<output>/adapter``. It is cached per machine next to the tiny
model, keyed by the tiny recipe and the training spec below, so the ~30-60 s run happens once.
Held-out records for evaluation: ``make_records(n, offset=320)`` (validation uses offsets 352-383).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.fixtures.ml import TINY_CACHE, tiny_model_path

ROOT = Path(__file__).resolve().parents[2]
TRAINING = {"maxSteps": 30, "batchSize": 8, "gradientAccumulationSteps": 1, "learningRate": 2.0e-3,
            "maxSeqLength": 256, "loggingSteps": 10, "evalSteps": 30, "warmupRatio": 0.0}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in ("operator", "trainer-image", "server-image")))
    env.setdefault("HF_HOME", str(Path(tempfile.gettempdir()) / f"llmforge-hf-{os.getuid()}"))
    return env


def trained_adapter_path(base_dir: Path | None = None) -> Path:
    """Train (once per machine) with ``llmforge-train`` and return the adapter directory."""
    from llmforge_trainer.tiny import make_records, write_jsonl

    base_dir = base_dir or tiny_model_path()
    key = hashlib.sha256(json.dumps([str(base_dir), TRAINING, 1], sort_keys=True).encode()).hexdigest()[:12]
    root = TINY_CACHE / f"eval-trained-{key}"
    adapter = root / "run" / "adapter"
    if (root / "done").exists() and (adapter / "adapter_config.json").exists():
        return adapter
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=TINY_CACHE))
    try:
        write_jsonl(tmp / "train.jsonl", make_records(320, "alpaca"))
        write_jsonl(tmp / "validation.jsonl", make_records(32, "alpaca", offset=352))
        job = {"apiVersion": "llmforge.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "eval-fixture"},
               "spec": {"baseModel": {"uri": f"file://{base_dir}"},
                        "dataset": {"train": str(tmp / "train.jsonl"), "validation": str(tmp / "validation.jsonl")},
                        "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "training": TRAINING,
                        "resources": {"accelerator": "cpu"}, "checkpoint": {"everySteps": 30},
                        "output": {"uri": f"file://{root}/run/"}}}
        # the output URI must be final (the trainer records it); train into it after clearing it
        shutil.rmtree(root, ignore_errors=True)
        (tmp / "job.yaml").write_text(yaml.safe_dump(job))
        proc = subprocess.run(
            [sys.executable, "-m", "llmforge_trainer.cli", "--spec", str(tmp / "job.yaml"), "--metrics-port", "0",
             "--termination-log", str(tmp / "result.json"), "--work-dir", str(tmp / "work")],
            env=_env(), capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"llmforge-train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        (root / "done").write_text((tmp / "result.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return adapter


@pytest.fixture(scope="session")
def eval_adapter_dir(tiny_model_dir) -> Path:
    """``<output>/adapter`` of a real ``llmforge-train`` run on the tiny model (cached per machine)."""
    return trained_adapter_path(tiny_model_dir)

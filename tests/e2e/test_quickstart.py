"""The quickstart end to end, exactly as `make demo` runs it: real control plane, operator in the local
runtime, real QLoRA training, evaluation against the base and vLLM serving on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.k8s, pytest.mark.ml, pytest.mark.vllm, pytest.mark.slow]

ROOT = Path("/tmp/llmforge-quickstart")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo():
    for name in ("status.json", "completion.txt"):
        (ROOT / name).unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-m", "llmforge.devcluster.demo", "--timeout", "1200"],
                         capture_output=True, text=True, timeout=1800, cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1",  # this checkout's code, not an install's
                              "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in
                                                            ("operator", "trainer-image", "server-image"))})
    items = json.loads((ROOT / "status.json").read_text())["items"] if (ROOT / "status.json").exists() else []
    return out, {i["kind"]: i for i in items}


def test_demo_exits_cleanly(demo):
    out, _ = demo
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "$ kubectl get llmforge" in out.stdout


def test_finetunejob_trained_for_real(demo):
    _, objs = demo
    status = objs["FineTuneJob"]["status"]
    example = next(d for d in yaml.safe_load_all((REPO / "examples/00-quickstart.yaml").read_text())
                   if d["kind"] == "FineTuneJob")
    assert status["phase"] == "Succeeded"
    assert status["progress"]["step"] == example["spec"]["training"]["maxSteps"]
    assert status["cost"]["usd"] > 0 and status["cost"]["gpuHours"] > 0
    adapter = Path(status["output"]["adapterUri"].removeprefix("file://"))
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0


def test_evaluation_beats_the_base(demo):
    _, objs = demo
    status = objs["Evaluation"]["status"]
    assert status["phase"] == "Succeeded"
    results = status["results"]
    assert results["finetuned"]["perplexity"] < results["base"]["perplexity"]
    assert results["finetuned"]["rougeL"] > results["base"]["rougeL"]
    passed = next(c for c in status["conditions"] if c["type"] == "Passed")
    assert passed["status"] == "True"


def test_deployment_serves_the_adapter(demo):
    _, objs = demo
    status = objs["ModelDeployment"]["status"]
    assert status["phase"] == "Ready"
    stable = next(v for v in status["variants"] if v["name"] == "stable")
    assert "quickstart" in stable["adaptersLoaded"]
    assert (ROOT / "completion.txt").read_text().strip()

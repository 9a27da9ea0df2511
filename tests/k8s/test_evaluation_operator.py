"""The Evaluation operator against the real control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok GKE nodes), with the operator as a subprocess watching the test namespace.

The referenced FineTuneJobs run on kwok's L4 nodes (their pods complete at once). The eval pods are placed on
the FakeKubelet TEST DOUBLE's T4 node (accelerator nvidia-tesla-t4), so each test writes what llmforge-eval
would have written as termination message, and when.
"""

# ruff: noqa: F811
from __future__ import annotations

import json
import time

import pytest

from llmforge import kube
from llmforge.api.contract import EvalResult, encode_result
from llmforge.api.evaluation import EvalResults
from llmforge.api.gate import delta
from llmforge.pricing import DEFAULT_PRICES
from llmforge.status.attempts import parse_time
from tests.k8s.ftj_support import FTJ, FakeKubelet, ago, ftj_manifest, t4_manifest, wait_until

# The FineTuneJob operator tests' fixtures (CRDs once, a fresh namespace, the operator, the kubelet double);
# test parameters of the same names are what pytest injects, hence F811 is off for this file.
from tests.k8s.test_finetunejob_operator import crds, kubelet, ns, operator  # noqa: F401

pytestmark = pytest.mark.k8s
EV = ("llmforge.dev/v1alpha1", "Evaluation")


def ev_manifest(name: str, ref: str, **spec) -> dict:
    base = {"model": {"fineTuneJobRef": {"name": ref}}, "dataset": {"uri": "gs://b/test.jsonl", "maxSamples": 20},
            "thresholds": {"rougeL": {"min": 0.4, "minDeltaToBase": 0.05}, "perplexity": {"maxRatioToBase": 0.8}},
            "resources": {"accelerator": FakeKubelet.ACCELERATOR}}
    base.update(spec)
    return {"apiVersion": EV[0], "kind": EV[1], "metadata": {"name": name}, "spec": base}


def ev_status(ns: str, name: str) -> dict:
    return (kube.get(*EV, ns, name) or {}).get("status") or {}


def cond(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def eval_jobs(ns: str) -> list[dict]:
    return kube.list_("batch/v1", "Job", ns, "llmforge.dev/evaluation")


def result(ft: dict, base: dict) -> str:
    return encode_result(EvalResult(phase="Succeeded", results=EvalResults(finetuned=ft, base=base, delta=delta(ft, base)),
                                    samples_evaluated=20, report_uri="gs://b/runs/m/eval/e/report.jsonl"))


def _eval_pod(ns: str, kubelet: FakeKubelet) -> dict:
    return wait_until(lambda: next((p for p in kubelet.pods(ns) if "llmforge.dev/evaluation" in p["metadata"]["labels"]),
                                   None), 60, "eval pod on the fake kubelet's node")


def test_waits_for_model_then_runs_and_passes(ns, operator, kubelet):
    kube.request("POST", kube.path(*EV, ns), ev_manifest("e", "m"))
    st = wait_until(lambda: (s := ev_status(ns, "e")).get("phase") == "WaitingForModel" and s, 60, "WaitingForModel")
    assert cond(st, "ModelReady")["reason"] == "FineTuneJobNotFound" and cond(st, "Passed")["status"] == "Unknown"
    assert eval_jobs(ns) == []
    # The model appears and trains (kwok completes its pod at once): the eval Job follows, no Evaluation edit.
    kube.request("POST", kube.path(*FTJ, ns), ftj_manifest("m"))
    job = wait_until(lambda: kube.get("batch/v1", "Job", ns, "e-eval"), 90, "eval Job after the model Succeeded")
    ftj = kube.get(*FTJ, ns, "m")
    assert ftj["status"]["phase"] == "Succeeded"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "Evaluation"
    spec_doc = kube.get("v1", "ConfigMap", ns, "e-eval-spec")["data"]["spec.yaml"]
    assert "adapterUri: gs://b/runs/m/adapter" in spec_doc and "uri: gs://b/runs/m/eval/e/" in spec_doc
    pod = _eval_pod(ns, kubelet)
    started = ago(120)
    kubelet.run(pod, started)
    st = wait_until(lambda: (s := ev_status(ns, "e")).get("phase") == "Running" and s.get("cost") and s, 30,
                    "Running with cost")
    # Accruing: two minutes of a T4 already billed, and burning at the on-demand rate.
    assert st["cost"]["usd"] > 0 and st["cost"]["usdPerHour"] == DEFAULT_PRICES.rate(FakeKubelet.ACCELERATOR, False)
    kubelet.finish(pod, started, ago(0), 0, result({"rougeL": 0.6, "perplexity": 3.0},
                                                   {"rougeL": 0.2, "perplexity": 8.0}))
    st = wait_until(lambda: (s := ev_status(ns, "e")).get("phase") == "Succeeded" and s, 60, "Succeeded")
    assert st["passed"] is True and st["failedThresholds"] == [] and cond(st, "Passed")["status"] == "True"
    assert st["results"]["finetuned"]["rougeL"] == 0.6 and st["results"]["delta"]["perplexity"] == -5.0
    assert st["samplesEvaluated"] == 20 and st["reportUri"].endswith("report.jsonl")
    assert st["model"] == "FineTuneJob/m" and st["adapterUri"] == "gs://b/runs/m/adapter"
    assert len(eval_jobs(ns)) == 1
    # Final cost, from the pod's container timestamps as the API server holds them.
    term = kube.get("v1", "Pod", ns, pod["metadata"]["name"])["status"]["containerStatuses"][0]["state"]["terminated"]
    seconds = (parse_time(term["finishedAt"]) - parse_time(term["startedAt"])).total_seconds()
    expected = seconds / 3600 * DEFAULT_PRICES.rate(FakeKubelet.ACCELERATOR, False)
    assert seconds >= 120 and st["cost"]["usd"] == pytest.approx(expected, abs=1e-4) and st["cost"]["usd"] > 0
    assert st["cost"]["usdPerHour"] == 0 and st["cost"]["accelerator"] == FakeKubelet.ACCELERATOR
    assert [(a["startTime"], a["endTime"]) for a in st["attempts"]] == [(term["startedAt"], term["finishedAt"])]
    # The pod is deleted: the record (results and cost) stands.
    kube.delete("v1", "Pod", ns, pod["metadata"]["name"], grace_seconds=0)
    wait_until(lambda: kube.get("v1", "Pod", ns, pod["metadata"]["name"]) is None, 30, "pod deleted")
    # Nothing marks "the operator saw the deletion" when nothing changes, so watch for a while: the pod's
    # DELETED event is handled within a second or two; without the ledger it turned into Failed/NoResult.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        later = ev_status(ns, "e")
        assert later["phase"] == "Succeeded" and later["cost"]["usd"] == st["cost"]["usd"]
        assert later["results"] == st["results"] and later["attempts"] == st["attempts"]
        time.sleep(0.5)


def test_failed_thresholds_are_named_in_the_passed_condition(ns, operator, kubelet):
    kube.request("POST", kube.path(*FTJ, ns), ftj_manifest("m2"))
    wait_until(lambda: (kube.get(*FTJ, ns, "m2") or {}).get("status", {}).get("phase") == "Succeeded", 90,
               "model Succeeded")
    kube.request("POST", kube.path(*EV, ns), ev_manifest("g", "m2"))
    pod = _eval_pod(ns, kubelet)
    kubelet.finish(pod, ago(60), ago(0), 0, result({"rougeL": 0.3, "perplexity": 7.5}, {"rougeL": 0.28, "perplexity": 8.0}))
    st = wait_until(lambda: (s := ev_status(ns, "g")).get("phase") == "Succeeded" and s, 60, "Succeeded")
    assert st["passed"] is False and len(st["failedThresholds"]) == 3
    passed = cond(st, "Passed")
    assert passed["status"] == "False" and passed["reason"] == "ThresholdsFailed"
    for line in st["failedThresholds"]:
        assert line in passed["message"]
    assert "rougeL 0.3 < min 0.4" in passed["message"]
    # The operator's phase census counts Evaluations too (the per-namespace operator sees just this one).
    wait_until(lambda: 'llmforge_resources{kind="Evaluation",phase="Succeeded"} 1.0' in operator.metrics(), 10,
               "the Succeeded Evaluation in llmforge_resources")


def test_failed_model_fails_the_evaluation(ns, operator, kubelet):
    kube.request("POST", kube.path(*FTJ, ns), t4_manifest("bad"))
    kube.request("POST", kube.path(*EV, ns), ev_manifest("eb", "bad"))
    wait_until(lambda: ev_status(ns, "eb").get("phase") == "WaitingForModel", 60, "WaitingForModel")
    pod = wait_until(lambda: next(iter(kubelet.pods(ns)), None), 60, "trainer pod on the fake node")
    kubelet.finish(pod, ago(30), ago(0), 2, json.dumps({"phase": "Failed", "reason": "InvalidData",
                                                        "message": "train.jsonl:3: missing 'output'"}))
    st = wait_until(lambda: (s := ev_status(ns, "eb")).get("phase") == "Failed" and s, 90, "Evaluation Failed")
    assert st["failure"]["reason"] == "ModelFailed" and "InvalidData" in st["failure"]["message"]
    assert cond(st, "Passed")["status"] == "False" and eval_jobs(ns) == []
    # The verdict came from the operator's polling loop (no child of the Evaluation changed): its Warning
    # event must still be posted (kopf.event needs kopf's per-object context, which a loop started at
    # start-up lacks).
    uid = kube.get(*EV, ns, "eb")["metadata"]["uid"]
    wait_until(lambda: [e for e in kube.request("GET", kube.path("v1", "Event", ns), query={
        "fieldSelector": f"involvedObject.uid={uid}"})["items"] if e.get("reason") == "ModelFailed"], 30,
        "ModelFailed event")


def test_eval_pod_failure_reason_reaches_status(ns, operator, kubelet):
    kube.request("POST", kube.path(*EV, ns), ev_manifest(
        "direct", "unused", model={"adapterUri": "gs://b/a", "baseModel": {"uri": "gs://b/base"}},
        output={"uri": "gs://b/out/"}, thresholds=None))
    pod = _eval_pod(ns, kubelet)
    kubelet.finish(pod, ago(10), ago(0), 2, encode_result(EvalResult(phase="Failed", reason="DatasetNotFound",
                                                                     message="gs://b/test.jsonl: not found")))
    st = wait_until(lambda: (s := ev_status(ns, "direct")).get("phase") == "Failed" and s, 60, "Failed")
    assert st["failure"] == {"reason": "DatasetNotFound", "message": "gs://b/test.jsonl: not found"}
    assert st["model"] == "gs://b/a" and len(kube.list_("v1", "Pod", ns, "llmforge.dev/evaluation")) == 1

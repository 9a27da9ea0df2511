"""Evaluation builder and status, pure: model resolution from the FineTuneJob, GKE placement shared with the
trainer Job, the resolved spec the pod reads, and status from FineTuneJob/Job/Pods incl. the gate."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import pytest
import yaml

from llmforge.api.contract import EvalResult, encode_result
from llmforge.api.evaluation import EvalResults, EvaluationSpec, Sample
from llmforge.builders import BUILDERS, render_children
from llmforge.builders import evaluation as B
from llmforge.pricing import DEFAULT_PRICES
from llmforge.settings import Settings
from llmforge.status.attempts import Placement
from llmforge.status.evaluation import compute_status

SETTINGS = Settings()
NOW = datetime(2026, 11, 26, 17, 0, tzinfo=UTC)


def ev(**spec_over):
    spec = {"model": {"fineTuneJobRef": {"name": "ftj"}}, "dataset": {"uri": "gs://b/test.jsonl", "maxSamples": 10},
            "thresholds": {"rougeL": {"min": 0.4, "minDeltaToBase": 0.05}, "perplexity": {"maxRatioToBase": 0.8}},
            "resources": {"accelerator": "auto"}}
    spec.update(spec_over)
    return {"apiVersion": "llmforge.dev/v1alpha1", "kind": "Evaluation",
            "metadata": {"name": "e1", "namespace": "ns", "uid": "u-1", "generation": 2}, "spec": spec}


def ftj(phase="Succeeded", adapter="gs://b/runs/ftj/adapter", accelerator="nvidia-l4", spot=False):
    status = {"phase": phase}
    if adapter:
        status["output"] = {"adapterUri": adapter}
    if phase == "Failed":
        status["failure"] = {"reason": "LossDiverged", "message": "loss was NaN at step 7"}
    return {"apiVersion": "llmforge.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": "ftj", "namespace": "ns"},
            "spec": {"baseModel": {"name": "meta-llama/Llama-3.1-8B-Instruct",
                                   "tokenSecretRef": {"name": "hf", "key": "token"}},
                     "dataset": {"train": "gs://b/train.jsonl"}, "output": {"uri": "gs://b/runs/ftj/"},
                     "resources": {"accelerator": accelerator, "spot": spot}},
            "status": status}


def test_registered_for_render_with_placeholders():
    assert BUILDERS["Evaluation"] is B.render
    cm, job = render_children(ev(resources={"accelerator": "nvidia-l4"}), SETTINGS)
    assert (cm["kind"], job["kind"]) == ("ConfigMap", "Job")
    assert "<adapter of FineTuneJob ftj>" in cm["data"]["spec.yaml"]


def test_resolves_model_from_finetunejob_and_pod_reads_valid_spec():
    cm, job = B.build_children(ev(), SETTINGS, ftj())
    doc = yaml.safe_load(cm["data"]["spec.yaml"])
    spec = EvaluationSpec.model_validate(doc["spec"])  # what llmforge-eval will validate
    assert spec.model.fine_tune_job_ref is None
    assert spec.model.adapter_uri == "gs://b/runs/ftj/adapter"
    assert spec.model.base_model.name == "meta-llama/Llama-3.1-8B-Instruct"
    assert spec.output.uri == "gs://b/runs/ftj/eval/e1/"
    assert doc["metadata"] == {"name": "e1", "namespace": "ns", "uid": "u-1"}
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["llmforge-eval", "--spec", "/etc/llmforge/spec.yaml"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}} in c["env"]
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"  # FineTuneJob's accelerator
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert job["metadata"]["name"] == "e1-eval" and job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"] == [2]


def test_adapter_uri_defaults_to_output_adapter_and_builds_are_deterministic():
    _, job_a = B.build_children(ev(), SETTINGS, ftj(adapter=None))
    cm, job_b = B.build_children(copy.deepcopy(ev()), SETTINGS, ftj(adapter=None))
    assert "adapterUri: gs://b/runs/ftj/adapter" in cm["data"]["spec.yaml"]
    assert job_a == job_b


def test_same_gke_placement_helpers_as_trainer():
    from llmforge.builders import common

    _, job = B.build_children(ev(resources={"accelerator": "nvidia-tesla-a100", "count": 2, "spot": True}),
                              SETTINGS, ftj())
    pod = job["spec"]["template"]["spec"]
    expected = common.placement("nvidia-tesla-a100", 2, True)
    assert {k: pod[k] for k in expected} == expected
    assert pod["containers"][0]["resources"] == common.resources("nvidia-tesla-a100", 2)


def test_adapter_uri_model_needs_output_and_picks_gpu_by_size():
    e = ev(model={"adapterUri": "gs://b/a", "baseModel": {"name": "org/Llama-70B"}}, thresholds=None)
    with pytest.raises(ValueError, match="output.uri"):
        B.build_children(e, SETTINGS)
    e["spec"]["output"] = {"uri": "gs://b/out/"}
    _, job = B.build_children(e, SETTINGS)
    assert job["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-accelerator"] != "nvidia-l4"


def test_ref_without_finetunejob_is_an_error_outside_render():
    with pytest.raises(ValueError, match="FineTuneJob ftj"):
        B.build_children(ev(), SETTINGS)


# ----------------------------------------------------------------------------------------------- status


def job(condition=None, suspend=False):
    j = {"metadata": {"name": "e1-eval", "uid": "j1"}, "spec": {"suspend": suspend},
         "status": {"startTime": "2026-11-26T16:50:00Z"}}
    if condition:
        j["status"]["conditions"] = [{"type": condition, "status": "True", "lastTransitionTime": "2026-11-26T16:55:00Z",
                                      "reason": "BackoffLimitExceeded", "message": "Job has reached the backoff limit"}]
        if condition == "Complete":
            j["status"]["completionTime"] = "2026-11-26T16:55:00Z"
    return j


def pod(phase="Succeeded", message=None):
    p = {"metadata": {"name": "e1-eval-x", "ownerReferences": [{"uid": "j1"}]}, "status": {"phase": phase}}
    if message is not None:
        p["status"]["containerStatuses"] = [{"name": "eval", "state": {"terminated": {
            "exitCode": 0, "finishedAt": "2026-11-26T16:55:00Z", "message": message}}}]
    return p


def result(ft, base):
    from llmforge.api.gate import delta

    return encode_result(EvalResult(phase="Succeeded", results=EvalResults(finetuned=ft, base=base, delta=delta(ft, base)),
                                    samples_evaluated=10, samples=[Sample(prompt="p", reference="r", prediction="x")],
                                    report_uri="gs://b/runs/ftj/eval/e1/report.jsonl"))


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.mark.parametrize(("ref", "phase", "reason"), [
    (None, "WaitingForModel", "FineTuneJobNotFound"),
    (ftj("Running"), "WaitingForModel", "FineTuneJobNotSucceeded"),
    (ftj("Failed"), "Failed", "ModelFailed"),
    (ftj("Succeeded"), "Pending", "FineTuneJobSucceeded"),
])
def test_waits_for_model_level_based(ref, phase, reason):
    s = compute_status(ev(), ref, None, [], NOW)
    assert s["phase"] == phase and cond(s, "ModelReady")["reason"] == reason
    assert cond(s, "Passed")["status"] == ("False" if phase == "Failed" else "Unknown")
    if phase == "Failed":
        assert s["failure"]["reason"] == "ModelFailed" and "LossDiverged" in s["failure"]["message"]


def test_running_and_suspended():
    assert compute_status(ev(), ftj(), job(), [pod("Running")], NOW)["phase"] == "Running"
    assert compute_status(ev(), ftj(), job(suspend=True), [], NOW)["phase"] == "Suspended"


def test_succeeded_and_passed():
    msg = result({"rougeL": 0.6, "perplexity": 3.0}, {"rougeL": 0.2, "perplexity": 8.0})
    s = compute_status(ev(), ftj(), job("Complete"), [pod(message=msg)], NOW, job_name="e1-eval")
    assert s["phase"] == "Succeeded" and s["passed"] is True and s["failedThresholds"] == []
    assert cond(s, "Passed")["status"] == "True" and cond(s, "Complete")["status"] == "True"
    assert s["results"]["delta"]["rougeL"] == pytest.approx(0.4)
    assert s["samplesEvaluated"] == 10 and s["reportUri"].endswith("report.jsonl") and s["samples"][0]["prediction"]
    assert s["completionTime"] == "2026-11-26T16:55:00Z" and s["model"] == "FineTuneJob/ftj"


def test_succeeded_but_gate_failed_names_every_threshold():
    msg = result({"rougeL": 0.3, "perplexity": 7.5}, {"rougeL": 0.28, "perplexity": 8.0})
    s = compute_status(ev(), ftj(), job("Complete"), [pod(message=msg)], NOW)
    assert s["phase"] == "Succeeded" and s["passed"] is False
    assert len(s["failedThresholds"]) == 3
    c = cond(s, "Passed")
    assert c["status"] == "False" and c["reason"] == "ThresholdsFailed"
    for line in s["failedThresholds"]:
        assert line in c["message"]
    assert "rougeL 0.3 < min 0.4" in c["message"] and "maxRatioToBase 0.8" in c["message"]


def test_gate_follows_spec_generation():
    """Thresholds edited after the run: the verdict is recomputed from the same results (level-based)."""
    msg = result({"rougeL": 0.3, "perplexity": 7.5}, {"rougeL": 0.28, "perplexity": 8.0})
    s = compute_status(ev(thresholds={"rougeL": {"min": 0.1}}), ftj(), job("Complete"), [pod(message=msg)], NOW)
    assert s["passed"] is True


def test_failed_job_reports_eval_reason():
    msg = encode_result(EvalResult(phase="Failed", reason="DatasetNotFound", message="gs://b/test.jsonl: not found"))
    s = compute_status(ev(), ftj(), job("Failed"), [pod("Failed", msg)], NOW)
    assert s["phase"] == "Failed" and s["failure"] == {"reason": "DatasetNotFound",
                                                       "message": "gs://b/test.jsonl: not found"}
    assert s["passed"] is False and cond(s, "Failed")["reason"] == "DatasetNotFound"
    s = compute_status(ev(), ftj(), job("Failed"), [pod("Failed", "Traceback: boom")], NOW)
    assert s["failure"]["reason"] == "BackoffLimitExceeded" and "boom" in s["failure"]["message"]


def test_complete_without_result_is_not_success():
    s = compute_status(ev(), ftj(), job("Complete"), [pod(message="")], NOW)
    assert s["phase"] == "Failed" and s["failure"]["reason"] == "NoResult"


def test_status_fits_crd_model():
    from llmforge.api.evaluation import EvaluationStatus

    msg = result({"rougeL": 0.3}, {"rougeL": 0.2})
    s = compute_status(ev(), ftj(), job("Complete"), [pod(message=msg)], NOW, job_name="e1-eval",
                       adapter_uri="gs://b/a")
    parsed = EvaluationStatus.model_validate(s)
    assert parsed.passed is False and parsed.results.finetuned == {"rougeL": 0.3}
    assert json.loads(parsed.model_dump_json(by_alias=True, exclude_none=True))["adapterUri"] == "gs://b/a"


def test_pod_contract_the_cli_reads_the_mounted_spec(tmp_path):
    """What the operator mounts is what llmforge-eval accepts: adapter, base and output resolve with no flags."""
    from llmforge_trainer import eval_cli

    cm, job = B.build_children(ev(), SETTINGS, ftj())
    path = tmp_path / "spec.yaml"
    path.write_text(cm["data"]["spec.yaml"])
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1].endswith("spec.yaml")
    spec, meta = eval_cli.load_spec(str(path))
    assert meta["name"] == "e1"
    assert eval_cli.resolve_model(spec, None, None) == ("gs://b/runs/ftj/adapter", "meta-llama/Llama-3.1-8B-Instruct")
    assert spec.output.uri == "gs://b/runs/ftj/eval/e1/" and spec.thresholds["rougeL"].min == 0.4


# ----------------------------------------------------------------------------------------------- cost


L4 = Placement("nvidia-l4", 1, False)


def timed_pod(uid, started, finished=None, message=None, disrupted=False):
    """An eval pod as the kubelet reports it: container ``eval`` running since ``started``, or terminated."""
    state = ({"terminated": {"exitCode": 0 if not disrupted else 143, "startedAt": started, "finishedAt": finished,
                             **({"message": message} if message else {})}} if finished
             else {"running": {"startedAt": started}})
    phase = "Running" if not finished else ("Failed" if disrupted else "Succeeded")
    conds = [{"type": "DisruptionTarget", "status": "True", "lastTransitionTime": finished}] if disrupted else []
    return {"metadata": {"name": f"e1-eval-{uid}", "uid": uid, "ownerReferences": [{"uid": "j1"}],
                         "creationTimestamp": started},
            "spec": {"nodeName": "n1"},
            "status": {"phase": phase, "startTime": started, "conditions": conds,
                       "containerStatuses": [{"name": "eval", "state": state}]}}


def test_eval_container_name_matches_the_builder():
    from llmforge.status import evaluation as S

    assert S.CONTAINER == B.CONTAINER


def test_cost_accrues_while_running():
    # Running since 16:30, now 17:00: 1800 s x 2 spot L4s at the built-in spot rate.
    s = compute_status(ev(resources={"accelerator": "nvidia-l4", "count": 2, "spot": True}), ftj(), job(),
                       [timed_pod("p1", "2026-11-26T16:30:00Z")], NOW,
                       placement=Placement("nvidia-l4", 2, True), prices=DEFAULT_PRICES)
    assert s["phase"] == "Running"
    rate = DEFAULT_PRICES.rate("nvidia-l4", True)
    assert s["cost"]["usd"] == pytest.approx(round(1800 / 3600 * 2 * rate, 4), abs=1e-9)
    assert s["cost"]["usd"] > 0 and s["cost"]["usdPerHour"] == pytest.approx(2 * rate)
    assert s["cost"]["gpuHours"] == 1.0 and s["cost"]["spot"] is True and s["cost"]["accelerator"] == "nvidia-l4"
    assert s["attempts"] == [{"pod": "e1-eval-p1", "uid": "p1", "node": "n1", "startTime": "2026-11-26T16:30:00Z"}]


def test_cost_is_final_from_container_times_over_every_attempt():
    """A preempted attempt (10 min) then the one that finished (7 min 30 s): billed exactly, burn rate 0."""
    msg = result({"rougeL": 0.6, "perplexity": 3.0}, {"rougeL": 0.2, "perplexity": 8.0})
    pods = [timed_pod("p1", "2026-11-26T16:30:00Z", "2026-11-26T16:40:00Z", disrupted=True),
            timed_pod("p2", "2026-11-26T16:47:30Z", "2026-11-26T16:55:00Z", message=msg)]
    s = compute_status(ev(), ftj(), job("Complete"), pods, NOW, job_name="e1-eval", placement=L4,
                       prices=DEFAULT_PRICES)
    assert s["phase"] == "Succeeded"
    seconds = 600 + 450
    assert s["cost"]["usd"] == pytest.approx(round(seconds / 3600 * 0.854, 4), abs=1e-9)  # 0.2491
    assert s["cost"]["gpuHours"] == pytest.approx(round(seconds / 3600, 4), abs=1e-9)
    assert s["cost"]["usdPerHour"] == 0.0 and s["cost"]["ratePerGpuHour"] == 0.854
    assert [(a["uid"], a["reason"], a.get("endTime")) for a in s["attempts"]] == [
        ("p1", "DisruptionTarget", "2026-11-26T16:40:00Z"), ("p2", "Completed", "2026-11-26T16:55:00Z")]
    # Later, with NOW an hour on, the same pods cost the same: ended attempts do not accrue.
    later = compute_status({**ev(), "status": s}, ftj(), job("Complete"), pods, NOW.replace(hour=18),
                           job_name="e1-eval", placement=L4, prices=DEFAULT_PRICES)
    assert later["cost"]["usd"] == s["cost"]["usd"]


def test_cost_and_results_survive_pod_deletion():
    msg = result({"rougeL": 0.6, "perplexity": 3.0}, {"rougeL": 0.2, "perplexity": 8.0})
    running = compute_status(ev(), ftj(), job(), [timed_pod("p1", "2026-11-26T16:30:00Z")], NOW, job_name="e1-eval",
                             placement=L4, prices=DEFAULT_PRICES)
    # The node vanishes with the pod mid-run: the attempt ends when it was last missed (20 min on), the
    # replacement pod runs 16:52-16:55; both are billed.
    missed = NOW.replace(hour=16, minute=50)
    gone = compute_status({**ev(), "status": running}, ftj(), job(), [], missed, job_name="e1-eval",
                          placement=L4, prices=DEFAULT_PRICES)
    assert gone["attempts"][0]["endTime"] == "2026-11-26T16:50:00Z" and gone["attempts"][0]["reason"] == "PodGone"
    done = compute_status({**ev(), "status": gone}, ftj(), job("Complete"),
                          [timed_pod("p2", "2026-11-26T16:52:00Z", "2026-11-26T16:55:00Z", message=msg)], NOW,
                          job_name="e1-eval", placement=L4, prices=DEFAULT_PRICES)
    assert done["phase"] == "Succeeded" and len(done["attempts"]) == 2
    assert done["cost"]["usd"] == pytest.approx(round((1200 + 180) / 3600 * 0.854, 4), abs=1e-9)
    # Then every pod is deleted (TTL, a person): the record stands instead of turning into "no result".
    after = compute_status({**ev(), "status": done}, ftj(), job("Complete"), [], NOW.replace(hour=18),
                           job_name="e1-eval", placement=L4, prices=DEFAULT_PRICES)
    assert after["phase"] == "Succeeded" and after["passed"] is True
    assert after["cost"] == done["cost"] and after["results"] == done["results"]


def test_no_cost_without_placement_and_status_fits_crd_model():
    from llmforge.api.evaluation import EvaluationStatus

    pods = [timed_pod("p1", "2026-11-26T16:30:00Z")]
    assert "cost" not in compute_status(ev(), ftj(), job(), pods, NOW)
    s = compute_status(ev(), ftj(), job(), pods, NOW, placement=L4, prices=DEFAULT_PRICES)
    parsed = EvaluationStatus.model_validate(s)
    assert parsed.cost.usd == s["cost"]["usd"] > 0 and parsed.attempts[0].uid == "p1"


def test_controller_placement_follows_the_resolved_model_then_the_recorded_cost():
    from llmforge.controllers.evaluation import placement

    model = B.resolve(ev(resources={"accelerator": "auto", "count": 2, "spot": True}), ftj(accelerator="nvidia-l4"))
    r = ev(resources={"accelerator": "auto", "count": 2, "spot": True})
    assert placement(r, model) == Placement("nvidia-l4", 2, True)
    # The FineTuneJob is gone after the Job was created: the accelerator already billed is kept.
    r["status"] = {"cost": {"accelerator": "nvidia-tesla-t4"}}
    assert placement(r, None) == Placement("nvidia-tesla-t4", 2, True)
    assert placement(ev(), None) is None
    cpu = B.resolve(ev(model={"adapterUri": "gs://b/a", "baseModel": {"uri": "gs://b/base"}},
                       output={"uri": "gs://b/o/"}, resources={"accelerator": "cpu"}))
    assert placement(ev(resources={"accelerator": "cpu"}), cpu) == Placement("cpu", 1, False)

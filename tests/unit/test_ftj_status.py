"""FineTuneJob status from synthetic Job and Pod dicts: phases, restarts, cost, termination messages, budget."""

from __future__ import annotations

import http.server
import threading
from datetime import UTC, datetime, timedelta

import pytest

from llmforge.api.contract import PROGRESS_METRICS, EvalResult, TrainResult, decode_result, encode_result
from llmforge.api.finetunejob import FineTuneJobStatus
from llmforge.controllers.finetunejob_sync import fetch_progress
from llmforge.pricing import DEFAULT_PRICES
from llmforge.status.finetunejob import (
    Placement,
    compute_status,
    parse_progress,
    parse_result,
    progress_status,
)

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
L4 = Placement("nvidia-l4", 1, False)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def resource(status=None, budget=None, suspend=False):
    spec = {"resources": {"accelerator": "nvidia-l4", "count": 1}, "suspend": suspend}
    if budget:
        spec["budget"] = {"maxCostUSD": budget}
    return {"metadata": {"name": "demo", "namespace": "ns", "generation": 3}, "spec": spec,
            "status": status or {"conditions": [{"type": "Validated", "status": "True", "reason": "Valid"}]}}


def job(*conditions, suspend=False, completion=None):
    status = {"conditions": [{"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": ts(at)}
                             for t, r, m, at in conditions]}
    if completion is not None:
        status["completionTime"] = ts(completion)
    return {"metadata": {"name": "demo-train", "uid": "job-uid"}, "spec": {"suspend": suspend}, "status": status}


def pod(name, phase, start=None, end=None, exit_code=None, message=None, disrupted=False, created=0,
        unschedulable=None, reason=None):
    state = {}
    if end is not None:
        term = {"exitCode": exit_code, "startedAt": ts(start), "finishedAt": ts(end), "reason": reason or (
            "Completed" if exit_code == 0 else "Error")}
        if message is not None:
            term["message"] = message
        state["terminated"] = term
    elif start is not None:
        state["running"] = {"startedAt": ts(start)}
    conditions = []
    if disrupted:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                           "lastTransitionTime": ts(end or 0)})
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": unschedulable})
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": ts(created)},
            "spec": {"nodeName": "gke-l4-0"} if start is not None else {},
            "status": {"phase": phase, "conditions": conditions, "podIP": "10.0.0.1",
                       "containerStatuses": [{"name": "trainer", "state": state}] if state else []}}


def status_of(res, j, pods, now=3600, **kw):
    out = compute_status(res, j, pods, L4, DEFAULT_PRICES, T0 + timedelta(seconds=now), job_name="demo-train", **kw)
    FineTuneJobStatus.model_validate(out)  # the status always fits the CRD's schema
    return out


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_no_job_is_pending():
    s = status_of(resource(), None, [])
    assert s["phase"] == "Pending" and cond(s, "JobCreated")["status"] == "False"
    assert s["observedGeneration"] == 3 and s["gpu"] == "nvidia-l4x1"
    assert s["cost"]["usd"] == 0 and s["restarts"] == 0


def test_unschedulable_pending_says_why():
    s = status_of(resource(), job(), [pod("p0", "Pending", unschedulable="0/6 nodes are available: 6 node(s) didn't "
                                                                         "match Pod's node affinity/selector.")])
    assert s["phase"] == "Pending"
    running = cond(s, "Running")
    assert running["status"] == "False" and running["reason"] == "Unschedulable"
    assert "node affinity/selector" in running["message"]
    assert cond(s, "JobCreated")["status"] == "True"


def test_running_cost_accrues():
    s = status_of(resource(), job(), [pod("p0", "Running", start=0)], now=1800)
    assert s["phase"] == "Running" and cond(s, "Running")["status"] == "True"
    assert s["cost"]["usd"] == pytest.approx(0.854 / 2, abs=1e-4)
    assert s["cost"]["usdPerHour"] == 0.854 and s["durationSeconds"] == 1800
    assert s["startTime"] == ts(0)


def test_a_succeeded_pod_keeps_the_job_running_until_the_job_completes():
    # kwok (and a fast kubelet) report the pod Succeeded before the Job controller marks the Job Complete.
    s = status_of(resource(), job(), [pod("p0", "Succeeded", start=0, end=1800, exit_code=0)], now=1810)
    assert s["phase"] == "Running"
    assert cond(s, "Running")["reason"] == "Completing" and "p0 succeeded" in cond(s, "Running")["message"]
    assert s["cost"]["usd"] == pytest.approx(0.854 / 2, abs=1e-4) and s["cost"]["usdPerHour"] == 0
    done = status_of(resource(), job(("Complete", "", "", 1805), completion=1805),
                     [pod("p0", "Succeeded", start=0, end=1800, exit_code=0)], now=1810)
    assert done["phase"] == "Succeeded"


RESULT_OK = ('{"phase":"Succeeded","step":300,"totalSteps":300,"metrics":{"trainLoss":1.2,"evalLoss":1.4},'
             '"checkpoint":{"step":300,"uri":"gs://b/ckpt/300"},"output":{"adapterUri":"gs://b/out/adapter"},'
             '"data":{"format":"chat","trainExamples":900},"mlflow":{"runId":"r1"}}')


def test_succeeded_with_result_and_exact_cost_over_attempts():
    pods = [pod("p0", "Failed", start=0, end=1200, exit_code=143, disrupted=True, created=0),
            pod("p1", "Succeeded", start=1300, end=4000, exit_code=0, message=RESULT_OK, created=1250)]
    s = status_of(resource(), job(("Complete", "", "", 4000), completion=4000), pods, now=5000)
    assert s["phase"] == "Succeeded" and cond(s, "Complete")["status"] == "True"
    assert s["restarts"] == 1
    assert s["cost"]["usd"] == pytest.approx((1200 + 2700) / 3600 * 0.854, abs=1e-4)
    assert s["cost"]["gpuHours"] == pytest.approx(3900 / 3600, abs=1e-4)
    assert s["cost"]["usdPerHour"] == 0
    assert s["metrics"]["trainLoss"] == 1.2 and s["output"]["adapterUri"] == "gs://b/out/adapter"
    assert s["checkpoint"]["step"] == 300 and s["data"]["trainExamples"] == 900 and s["mlflow"]["runId"] == "r1"
    assert s["completionTime"] == ts(4000) and s["durationSeconds"] == 4000
    assert s["progress"]["summary"] == "100% 300/300"
    assert [a["reason"] for a in s["attempts"]] == ["DisruptionTarget", "Completed"]


def test_failed_carries_trainer_reason_and_message():
    msg = '{"phase":"Failed","reason":"OutOfMemory","message":"CUDA OOM at step 12; lower batchSize"}'
    s = status_of(resource(), job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit",
                                   900)), [pod("p0", "Failed", start=0, end=900, exit_code=1, message=msg)])
    assert s["phase"] == "Failed"
    assert s["failure"] == {"reason": "OutOfMemory", "message": "CUDA OOM at step 12; lower batchSize"}
    assert cond(s, "Failed")["reason"] == "OutOfMemory"


@pytest.mark.parametrize("message", ["Traceback (most recent call last):\n  boom", "{not json", '{"phase":"Weird"}',
                                     '{"phase":"Failed","step":"many"}', "", "[]", "{}", "null"])
def test_malformed_termination_messages_do_not_crash(message):
    s = status_of(resource(), job(("Failed", "PodFailurePolicy", "exit code 2", 60)),
                  [pod("p0", "Failed", start=0, end=60, exit_code=2, message=message)])
    assert s["phase"] == "Failed" and s["failure"]["reason"] == "PodFailurePolicy"
    if message.startswith("Traceback"):
        assert "boom" in s["failure"]["message"]


def test_parse_result():
    assert parse_result(RESULT_OK).step == 300
    assert parse_result(None) is None and parse_result("{bad") is None


@pytest.mark.parametrize("model", [TrainResult, EvalResult])
def test_termination_message_round_trips_and_rejects_what_is_not_a_result(model):
    result = model(phase="Failed", reason="InvalidData", message="train.jsonl:3: missing 'output'")
    assert decode_result(encode_result(result), model) == result
    for text in ("Traceback (most recent call last):\n  boom", '{"phase": "Exploded"}', "[1, 2]", "  {", ""):
        assert decode_result(text, model) is None, text


def test_preemption_counts_a_restart_and_keeps_running():
    pods = [pod("p0", "Failed", start=0, end=600, exit_code=143, disrupted=True, created=0),
            pod("p1", "Running", start=700, created=650)]
    s = status_of(resource(), job(), pods, now=1000)
    assert s["phase"] == "Running" and s["restarts"] == 1
    assert s["cost"]["usd"] == pytest.approx((600 + 300) / 3600 * 0.854, abs=1e-4)


def test_vanished_pod_keeps_its_cost():
    first = status_of(resource(), job(), [pod("p0", "Running", start=0)], now=600)
    # The node is gone and the pod object with it; a new attempt runs.
    res = resource(status=first)
    s = status_of(res, job(), [pod("p1", "Running", start=900, created=800)], now=1200)
    assert s["restarts"] == 1 and s["attempts"][0]["endTime"] == ts(1200)
    assert s["cost"]["usd"] == pytest.approx((1200 + 300) / 3600 * 0.854, abs=1e-4)


def test_suspended():
    s = status_of(resource(suspend=True), job(("Suspended", "JobSuspended", "", 10), suspend=True), [])
    assert s["phase"] == "Suspended" and cond(s, "Suspended")["reason"] == "SuspendedByUser"
    resumed = status_of(resource(status=s), job(), [pod("p1", "Running", start=20)])
    assert resumed["phase"] == "Running" and cond(resumed, "Suspended")["status"] == "False"


def test_budget_exceeded_accrued_and_sticky():
    s = status_of(resource(budget=0.5), job(), [pod("p0", "Running", start=0)], now=3600)
    assert s["phase"] == "Failed" and s["failure"]["reason"] == "BudgetExceeded"
    assert cond(s, "Suspended")["reason"] == "BudgetExceeded"
    later = status_of(resource(status=s, budget=0.5), job(suspend=True), [], now=7200)
    assert later["phase"] == "Failed" and later["failure"]["reason"] == "BudgetExceeded"


def test_budget_exceeded_by_projection():
    gauges = {"step": 100, "total_steps": 1000}
    s = status_of(resource(budget=2.0), job(), [pod("p0", "Running", start=0)], now=1800, progress=gauges)
    # 10 % in 30 min: 4.5 h left at $0.854/h -> ~$4.3 projected > $2.
    assert s["phase"] == "Failed" and "projected" in s["failure"]["message"]
    ok = status_of(resource(budget=10.0), job(), [pod("p0", "Running", start=0)], now=1800, progress=gauges)
    assert ok["phase"] == "Running"


def test_phase_change_moves_transition_time_only_on_flip():
    a = status_of(resource(), job(), [pod("p0", "Running", start=0)], now=10)
    b = status_of(resource(status=a), job(), [pod("p0", "Running", start=0)], now=20)
    assert cond(a, "Running")["lastTransitionTime"] == cond(b, "Running")["lastTransitionTime"]


PROM = "\n".join([
    "# HELP llmforge_train_step Optimizer steps done", "# TYPE llmforge_train_step gauge",
    f"{PROGRESS_METRICS['step']} 120.0", f"{PROGRESS_METRICS['total_steps']} 285",
    f"{PROGRESS_METRICS['loss']} 1.234", f"{PROGRESS_METRICS['epoch']} 0.84",
    f"{PROGRESS_METRICS['tokens_per_second']} 2400.5", "other_metric 7", "llmforge_train_loss_bad NaN",
    "python_gc_objects_collected_total{generation=\"0\"} 12.0", "garbage line",
])


def test_parse_progress():
    values = parse_progress(PROM)
    assert values == {"step": 120.0, "total_steps": 285.0, "loss": 1.234, "epoch": 0.84, "tokens_per_second": 2400.5}
    assert parse_progress("") == {} and parse_progress(f"{PROGRESS_METRICS['loss']} NaN") == {}


def test_progress_status_summary_and_eta():
    p = progress_status(parse_progress(PROM), T0, T0 + timedelta(seconds=1200))
    assert p["summary"] == "42% 120/285" and p["percent"] == 42.1
    assert p["etaSeconds"] == pytest.approx(1200 / 120 * 165)


def test_fetch_progress_from_a_metrics_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = PROM.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = fetch_progress(f"http://127.0.0.1:{server.server_port}/metrics")
        assert got["step"] == 120 and got["total_steps"] == 285
    finally:
        server.shutdown()
    assert fetch_progress(f"http://127.0.0.1:{server.server_port}/metrics", timeout=0.5) is None


def test_running_status_uses_fresh_progress():
    s = status_of(resource(), job(), [pod("p0", "Running", start=0)], now=1200, progress=parse_progress(PROM))
    assert s["progress"]["summary"] == "42% 120/285" and s["progress"]["loss"] == 1.234


def test_pod_creation_error_is_the_pending_reason():
    s = status_of(resource(), job(), [], create_error='serviceaccount "trainer" not found')
    assert s["phase"] == "Pending"
    assert cond(s, "Running")["reason"] == "FailedCreate" and "trainer" in cond(s, "Running")["message"]


def test_finished_job_keeps_its_status_when_the_job_is_gone():
    pods = [pod("p1", "Succeeded", start=0, end=600, exit_code=0, message=RESULT_OK)]
    done = status_of(resource(), job(("Complete", "", "", 600), completion=600), pods, now=700)
    later = status_of(resource(status=done), None, [], now=9000)
    assert later["phase"] == "Succeeded" and later["cost"] == done["cost"] and later["metrics"] == done["metrics"]


def test_mlflow_run_marked_killed_best_effort():
    import asyncio
    import json as _json
    import logging

    from llmforge.controllers.mlflow_cleanup import mark_mlflow_killed, mlflow_run_open

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen.append((self.path, _json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = {"tracking": {"mlflow": {"trackingUri": f"http://127.0.0.1:{server.server_port}"}}}
    status = {"phase": "Running", "mlflow": {"runId": "r42"}}
    assert mlflow_run_open(status) and not mlflow_run_open({"phase": "Running"})
    assert not mlflow_run_open({"phase": "Succeeded", "mlflow": {"runId": "r42"}})
    log = logging.getLogger("test")
    asyncio.run(mark_mlflow_killed(spec, status, log))
    server.shutdown()
    assert seen and seen[0][0] == "/api/2.0/mlflow/runs/update"
    assert seen[0][1]["run_id"] == "r42" and seen[0][1]["status"] == "KILLED"
    # Unreachable server: logged, not raised.
    asyncio.run(mark_mlflow_killed({"tracking": {"mlflow": {"trackingUri": "http://127.0.0.1:9"}}}, status, log))


def test_a_finished_jobs_status_does_not_change_with_the_clock():
    """Level-based and write-free at rest: a refresh of a finished job later must compute the same status,
    or every child event would cost a status write (and a watch event) for nothing."""
    pods = [pod("p1", "Succeeded", start=100, end=4000, exit_code=0, message=RESULT_OK, created=50)]
    first = status_of(resource(), job(("Complete", "", "", 4000), completion=4000), pods, now=5000)
    later = status_of(resource(status=first), job(("Complete", "", "", 4000), completion=4000), pods, now=9000)
    assert later == first


def test_a_running_jobs_cost_moves_with_the_clock():
    pods = [pod("p1", "Running", start=0, created=0)]
    first = status_of(resource(), job(), pods, now=600)
    later = status_of(resource(status=first), job(), pods, now=1200)
    assert later["cost"]["usd"] > first["cost"]["usd"]
    assert later["cost"]["updatedAt"] > first["cost"]["updatedAt"]


def test_job_failure_prefers_the_pods_result_then_the_job_condition_with_the_output_tail():
    from llmforge.api.contract import TrainResult
    from llmforge.status.conditions import job_failure

    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": ""}
    own = TrainResult(phase="Failed", reason="InvalidData", message="train.jsonl:3: missing 'output'")
    assert job_failure(failed, own, "ignored", "trainer") == {"reason": "InvalidData",
                                                              "message": "train.jsonl:3: missing 'output'"}
    tail = job_failure(failed, None, "x" * 2000 + "CUDA out of memory\n", "trainer")
    assert tail["reason"] == "BackoffLimitExceeded" and tail["message"].startswith("the trainer Job failed; ")
    assert tail["message"].endswith("CUDA out of memory") and len(tail["message"]) < 900
    assert job_failure({}, None, None, "eval") == {"reason": "JobFailed", "message": "the eval Job failed"}


def test_a_job_failed_by_oomkilled_pods_is_out_of_memory_not_backoff():
    from llmforge.status.conditions import job_failure

    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
              "message": "Job has reached the specified backoff limit"}
    oom = {"pod": "p", "uid": "u", "endTime": "2026-12-03T10:00:00Z", "exitCode": 137, "reason": "OOMKilled"}
    out = job_failure(failed, None, "Killed", "trainer", [dict(oom, pod="p0"), dict(oom, pod="p1")])
    assert out["reason"] == "OutOfMemory"
    assert "2 of 2 attempt(s)" in out["message"] and "spec.resources.memory" in out["message"]
    # An error after an earlier OOM is not an OOM; nor is a pod that is still running.
    err = dict(oom, pod="p2", exitCode=1, reason="Error")
    assert job_failure(failed, None, "boom", "trainer", [oom, err])["reason"] == "BackoffLimitExceeded"
    assert job_failure(failed, None, None, "trainer", [{**oom, "endTime": None}])["reason"] == "BackoffLimitExceeded"

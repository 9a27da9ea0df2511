"""Evaluation status from what exists: the referenced FineTuneJob, the eval Job, its Pods' termination messages.

Level-based and pure: ``compute_status`` gets whatever is observed now and returns the whole status.

* ``fineTuneJobRef`` not found, or not yet Succeeded -> ``WaitingForModel`` (no Job is created).
* The FineTuneJob Failed -> ``Failed`` with reason ``ModelFailed`` and its failure.
* Then the Job: absent -> Pending; suspended -> Suspended; a running pod -> Running; Complete -> Succeeded with
  results, samples, reportUri and the gate; Failed -> Failed with the pod's ``EvalResult`` reason/message.
* ``attempts`` and ``cost``: the eval pods' ledger and its price (``status.attempts``, shared with FineTuneJob),
  accrued while a pod runs and final once the pods' container timestamps say they ended; kept after the pods
  and the Job are gone.
* Once Succeeded or Failed with its pods or Job since deleted, the last status stands (as for FineTuneJobs).
* The gate is recomputed from ``spec.thresholds`` and the results with ``api.gate.check_thresholds`` (the
  function llmforge-eval uses), so ``Passed`` and ``failedThresholds`` always match the observed generation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..api.contract import EvalResult, decode_result
from ..api.gate import check_thresholds
from ..api.phases import TERMINAL, Phase, PodPhase
from ..pricing import PriceTable
from .attempts import Placement, cost_status, merge_attempts
from .conditions import job_failure, set_condition

#: The eval Job's container (builders.evaluation.CONTAINER; status may not import builders): its
#: startedAt/finishedAt bound each attempt's billed span.
CONTAINER = "eval"


def parse_result(message: str | None) -> EvalResult | None:
    """llmforge-eval's EvalResult JSON, or None when absent, a log tail (FallbackToLogsOnError) or malformed."""
    return decode_result(message, EvalResult)


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for c in pod.get("status", {}).get("containerStatuses") or []:
        term = (c.get("state") or {}).get("terminated")
        if term:
            return term
    return None


def latest_result(pods: list[dict[str, Any]]) -> tuple[EvalResult | None, str | None]:
    """(parsed result, raw message) of the most recently finished pod."""
    finished = [(t.get("finishedAt") or "", t) for p in pods if (t := _terminated(p))]
    if not finished:
        return None, None
    _, term = max(finished, key=lambda x: x[0])
    return parse_result(term.get("message")), term.get("message")


def _job_condition(job: dict[str, Any] | None, *types: str) -> dict[str, Any] | None:
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return cond
    return None


def model_summary(spec: dict[str, Any]) -> str:
    model = spec.get("model") or {}
    ref = (model.get("fineTuneJobRef") or {}).get("name")
    return f"FineTuneJob/{ref}" if ref else str(model.get("adapterUri") or "")


def reference_state(spec: dict[str, Any], finetunejob: dict[str, Any] | None) -> tuple[str, str, str]:
    """("ready" | "waiting" | "failed", reason, message) for the model reference."""
    ref = ((spec.get("model") or {}).get("fineTuneJobRef") or {}).get("name")
    if not ref:
        return "ready", "AdapterUri", "adapterUri given"
    if finetunejob is None:
        return "waiting", "FineTuneJobNotFound", f"FineTuneJob {ref} does not exist (yet)"
    phase = (finetunejob.get("status") or {}).get("phase")
    if phase == Phase.SUCCEEDED:
        return "ready", "FineTuneJobSucceeded", f"FineTuneJob {ref} succeeded"
    if phase == Phase.FAILED:
        failure = (finetunejob.get("status") or {}).get("failure") or {}
        why = ": ".join(x for x in (failure.get("reason"), failure.get("message")) if x)
        return "failed", "ModelFailed", f"FineTuneJob {ref} failed" + (f" ({why})" if why else "")
    return "waiting", "FineTuneJobNotSucceeded", f"FineTuneJob {ref} is {phase or 'not started'}"


def compute_status(resource: dict[str, Any], finetunejob: dict[str, Any] | None, job: dict[str, Any] | None,
                   pods: list[dict[str, Any]], now: datetime, job_name: str | None = None,
                   adapter_uri: str | None = None, placement: Placement | None = None,
                   prices: PriceTable | None = None) -> dict[str, Any]:
    """The whole status of a validated Evaluation from the observed FineTuneJob, Job and Pods.

    ``status.cost`` needs ``placement`` (the accelerator the eval Job requested) and ``prices``; without them
    only the attempts are recorded."""
    old = dict(resource.get("status") or {})
    spec = resource.get("spec") or {}
    gen = resource.get("metadata", {}).get("generation")
    if old.get("phase") in TERMINAL and old.get("jobName") and (job is None or not pods):
        # Finished, and its pods (or Job) have since been deleted by a person, a TTL or node GC: the record
        # stands, cost included. Recomputing would read "no result" as a failure and clear the results.
        return {**old, "observedGeneration": gen}
    conds = list(old.get("conditions") or [])
    out: dict[str, Any] = {"observedGeneration": gen, "model": model_summary(spec)}
    if adapter_uri:
        out["adapterUri"] = adapter_uri
    ref_state, ref_reason, ref_message = reference_state(spec, finetunejob)
    conds = set_condition(conds, "ModelReady", ref_state == "ready", ref_reason, ref_message, gen)
    failure: dict[str, str] | None = None
    attempts = merge_attempts(old.get("attempts"), pods, now, CONTAINER)
    result, raw = latest_result(pods)
    running = [p for p in pods if p.get("status", {}).get("phase") == PodPhase.RUNNING
               and not p.get("metadata", {}).get("deletionTimestamp")]
    complete = _job_condition(job, "Complete", "SuccessCriteriaMet")
    failed = _job_condition(job, "Failed", "FailureTarget")
    completion = None
    phase: Phase

    if job is None and ref_state == "failed":
        phase, failure = Phase.FAILED, {"reason": ref_reason, "message": ref_message}
    elif job is None and ref_state == "waiting":
        phase = Phase.WAITING_FOR_MODEL
    elif job is None:
        phase = Phase.PENDING
    elif complete:
        if result is not None and result.phase == Phase.SUCCEEDED:
            phase = Phase.SUCCEEDED
        else:
            phase = Phase.FAILED
            failure = {"reason": "NoResult", "message": "the eval Job completed without a readable result" + (
                f"; output: {raw.strip()[-500:]}" if raw else "")}
        completion = job.get("status", {}).get("completionTime") or complete.get("lastTransitionTime")
    elif failed:
        phase = Phase.FAILED
        completion = failed.get("lastTransitionTime")
        failure = job_failure(failed, result, raw, "eval", attempts)
    elif (job.get("spec") or {}).get("suspend"):
        phase = Phase.SUSPENDED
    elif running:
        phase = Phase.RUNNING
    else:
        phase = Phase.PENDING

    if job_name and job is not None:
        out["jobName"] = job_name
    start = (job or {}).get("status", {}).get("startTime")
    if start:
        out["startTime"] = start
    if completion and phase in TERMINAL:
        out["completionTime"] = completion

    if attempts:
        out["attempts"] = attempts
    if placement is not None and prices is not None:
        # Burn rate only while Running: a finished or suspended Evaluation spends nothing more.
        out["cost"] = cost_status(attempts, placement.accelerator, placement.count, placement.spot, prices, now,
                                  running=phase == Phase.RUNNING)

    if phase == Phase.SUCCEEDED and result is not None:
        if result.results is not None:
            # Four significant digits in status: what kubectl shows; the full numbers are in results.json.
            out["results"] = _rounded(result.results.model_dump(by_alias=True, exclude_none=True, mode="json"))
        for key, value in (("samplesEvaluated", result.samples_evaluated), ("reportUri", result.report_uri)):
            if value is not None:
                out[key] = value
        if result.samples:
            out["samples"] = [s.model_dump(by_alias=True, exclude_none=True, mode="json") for s in result.samples]
        if result.mlflow is not None:
            out["mlflow"] = result.mlflow.model_dump(by_alias=True, exclude_none=True, mode="json")
        finetuned = (result.results.finetuned if result.results else None) or {}
        base = result.results.base if result.results else None
        failed_thresholds = check_thresholds(spec.get("thresholds"), finetuned, base)
        out["passed"] = not failed_thresholds
        out["failedThresholds"] = failed_thresholds
        if failed_thresholds:
            conds = set_condition(conds, "Passed", False, "ThresholdsFailed",
                                  f"{len(failed_thresholds)} threshold(s) failed: " + "; ".join(failed_thresholds), gen)
        else:
            n = len(spec.get("thresholds") or {})
            conds = set_condition(conds, "Passed", True, "ThresholdsMet" if n else "NoThresholds",
                                  f"all {n} threshold(s) met" if n else "no thresholds set", gen)
    elif phase == Phase.FAILED:
        out["passed"] = False
        conds = set_condition(conds, "Passed", False, (failure or {}).get("reason", "Failed"),
                              "the evaluation did not complete", gen)
    else:
        conds = set_condition(conds, "Passed", "Unknown", phase.value, "not evaluated yet", gen)

    conds = set_condition(conds, "Complete", phase == Phase.SUCCEEDED, phase.value,
                          "evaluation finished" if phase == Phase.SUCCEEDED else "", gen)
    conds = set_condition(conds, "Failed", phase == Phase.FAILED, (failure or {}).get("reason", "NoFailure"),
                          (failure or {}).get("message", ""), gen)
    out["conditions"] = conds
    out["phase"] = phase.value
    if failure:
        out["failure"] = failure
    return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value

"""FineTuneJob status from what exists: its Job, its Pods, their termination messages and live progress.

Level-based: ``compute_status`` is called with whatever is observed now and returns the whole status.
The only memory kept between calls is ``status.attempts`` (pods vanish after preemption; their cost and
the restart count must not) and a BudgetExceeded failure (once stopped for money, it stays stopped).
Pure: plain dicts in, a camelCase status dict out. The pod ledger and its cost are ``status.attempts``
(shared with Evaluation); this module adds the trainer's phases, progress, results and budget.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from ..api.contract import EXIT_PREEMPTED, PROGRESS_METRICS, TrainResult, decode_result
from ..api.phases import TERMINAL, Phase, PodPhase
from ..pricing import PriceTable
from .attempts import Placement, container_status, cost_status, fmt_time, merge_attempts, parse_time
from .conditions import job_failure, set_condition

BUDGET_EXCEEDED = "BudgetExceeded"
TRAINER = "trainer"
#: Project the final cost only once this share of steps is done (early ETAs are noise).
PROJECTION_MIN_PERCENT = 10.0


# ---------------------------------------------------------------- termination message and progress


def parse_result(message: str | None) -> TrainResult | None:
    """The trainer's TrainResult JSON, or None when the message is absent, a log tail or malformed."""
    return decode_result(message, TrainResult)


def parse_progress(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {contract key: value} for the PROGRESS_METRICS gauges present."""
    names = {v: k for k, v in PROGRESS_METRICS.items()}
    out: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        metric = parts[0].split("{", 1)[0]
        if metric in names:
            try:
                value = float(parts[1])
            except ValueError:
                continue
            if math.isfinite(value):
                out[names[metric]] = value
    return out


def progress_status(values: dict[str, float], running_since: datetime | None, now: datetime) -> dict[str, Any]:
    """status.progress from parsed gauges; ETA from this attempt's pace."""
    out: dict[str, Any] = {"updatedAt": fmt_time(now)}
    step = int(values["step"]) if "step" in values else None
    total = int(values["total_steps"]) if values.get("total_steps") else None
    if step is not None:
        out["step"] = step
    if total:
        out["totalSteps"] = total
    for key, field in (("epoch", "epoch"), ("loss", "loss"), ("tokens_per_second", "tokensPerSecond")):
        if key in values:
            out[field] = round(values[key], 6)
    if step is not None and total:
        percent = min(100.0, 100.0 * step / total)
        out["percent"] = round(percent, 1)
        out["summary"] = f"{percent:.0f}% {step}/{total}"
        if running_since and step > 0:
            elapsed = (now - running_since).total_seconds()
            out["etaSeconds"] = round(max(0.0, elapsed / step * (total - step)), 1)
    elif step is not None:
        out["summary"] = f"step {step}"
    return out


# ---------------------------------------------------------------- pods (the ledger and cost: status.attempts)


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return container_status(pod, TRAINER)


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    state = _container(pod).get("state") or {}
    return state.get("terminated")


# ---------------------------------------------------------------- the whole status


def _job_condition(job: dict[str, Any] | None, *types: str) -> dict[str, Any] | None:
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") in types and cond.get("status") == "True":
            return cond
    return None


def _pending_reason(pods: list[dict[str, Any]]) -> tuple[str, str]:
    for pod in pods:
        for cond in pod.get("status", {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return cond.get("reason") or "Unschedulable", cond.get("message") or "no node fits the pod"
    for pod in pods:
        waiting = (_container(pod).get("state") or {}).get("waiting")
        if waiting:
            return waiting.get("reason") or "ContainerCreating", waiting.get("message") or ""
    if not pods:
        return "WaitingForPod", "the Job has no pod yet"
    return "PodPending", "the trainer pod has not started"


def _latest_result(pods: list[dict[str, Any]]) -> tuple[TrainResult | None, str | None]:
    """(parsed TrainResult, raw message) of the newest terminated pod that has a message."""
    for pod in sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "", reverse=True):
        term = _terminated(pod)
        if term and term.get("message"):
            return parse_result(term["message"]), term["message"]
    return None, None


def budget_stopped(status: dict[str, Any] | None) -> bool:
    """Whether this job was already stopped for exceeding its budget (sticky)."""
    return ((status or {}).get("failure") or {}).get("reason") == BUDGET_EXCEEDED


def projected_usd(cost: dict[str, Any], progress: dict[str, Any] | None) -> float | None:
    """Accrued + burn rate x ETA, once progress is past PROJECTION_MIN_PERCENT."""
    if not progress or progress.get("etaSeconds") is None or (progress.get("percent") or 0) < PROJECTION_MIN_PERCENT:
        return None
    return cost["usd"] + cost["usdPerHour"] * progress["etaSeconds"] / 3600


def compute_status(resource: dict[str, Any], job: dict[str, Any] | None, pods: list[dict[str, Any]],
                   placement: Placement, prices: PriceTable, now: datetime,
                   progress: dict[str, float] | None = None, estimate: dict[str, Any] | None = None,
                   job_name: str | None = None, create_error: str | None = None) -> dict[str, Any]:
    """The whole status of a validated FineTuneJob, from the observed Job and Pods."""
    old = dict(resource.get("status") or {})
    spec = resource.get("spec") or {}
    gen = resource.get("metadata", {}).get("generation")
    if job is None and old.get("phase") in TERMINAL and old.get("jobName"):
        # Finished, and the Job has since been deleted (by a person or a TTL): the record stands.
        return {**old, "observedGeneration": gen}
    conds = list(old.get("conditions") or [])
    attempts = merge_attempts(old.get("attempts"), pods, now)
    running_pods = [p for p in pods if p.get("status", {}).get("phase") == PodPhase.RUNNING
                    and not p.get("metadata", {}).get("deletionTimestamp")]
    succeeded_pods = [p for p in pods if p.get("status", {}).get("phase") == PodPhase.SUCCEEDED]
    out: dict[str, Any] = {"observedGeneration": gen, "jobName": job_name,
                           "gpu": _gpu(placement), "attempts": attempts,
                           "restarts": max(0, len(attempts) - 1)}
    if estimate:
        out["estimate"] = estimate
    cost = cost_status(attempts, placement.accelerator, placement.count, placement.spot, prices, now,
                       bool(running_pods))
    prev_cost = old.get("cost") or {}
    if prev_cost and all(prev_cost.get(k) == v for k, v in cost.items() if k != "updatedAt"):
        cost["updatedAt"] = prev_cost.get("updatedAt", cost["updatedAt"])  # the clock alone is not a change
    out["cost"] = cost
    starts = [parse_time(a.get("startTime")) for a in attempts if a.get("startTime")]
    start = min(starts) if starts else None
    result, raw_message = _latest_result(pods)
    if result is not None:
        for key, value in (("metrics", result.metrics), ("checkpoint", result.checkpoint),
                           ("output", result.output), ("data", result.data), ("mlflow", result.mlflow)):
            if value is not None:
                out[key] = value.model_dump(by_alias=True, exclude_none=True, mode="json")
    for key in ("metrics", "checkpoint", "output", "data", "mlflow"):
        if key not in out and old.get(key):
            out[key] = old[key]

    # Live progress: fresh gauges, else what we last read.
    prog = old.get("progress")
    if progress and running_pods:
        since = parse_time(_container(running_pods[0]).get("state", {}).get("running", {}).get("startedAt")) or start
        prog = progress_status(progress, since, now)

    complete = _job_condition(job, "Complete", "SuccessCriteriaMet")
    failed = _job_condition(job, "Failed", "FailureTarget")
    suspended_job = bool((job or {}).get("spec", {}).get("suspend"))
    failure: dict[str, Any] | None = None
    suspended = (False, "NotSuspended", "")
    completion: datetime | None = None
    phase: Phase

    if budget_stopped(old) and not complete:
        phase, failure = Phase.FAILED, old["failure"]
        suspended = (True, BUDGET_EXCEEDED, "Job suspended by the operator: budget exhausted")
        completion = parse_time(old.get("completionTime")) or now
    elif job is None:
        phase = Phase.PENDING
    elif complete:
        phase = Phase.SUCCEEDED
        completion = parse_time(job.get("status", {}).get("completionTime")) or parse_time(
            complete.get("lastTransitionTime")) or now
        if result and result.total_steps:
            step = result.step or result.total_steps
            prog = {**(prog or {}), "step": step, "totalSteps": result.total_steps, "percent": 100.0,
                    "summary": f"100% {step}/{result.total_steps}", "etaSeconds": 0.0}
    elif failed:
        phase = Phase.FAILED
        completion = parse_time(failed.get("lastTransitionTime")) or now
        failure = job_failure(failed, result, raw_message, "trainer", attempts)
    elif suspended_job:
        phase = Phase.SUSPENDED
        suspended = (True, "SuspendedByUser", "spec.suspend is true; set it to false to resume from the checkpoint")
    elif running_pods or succeeded_pods:
        # A pod that exited 0 ends the Job; until the Job controller says so it is still Running, not back
        # to Pending (that flip cost a status write and an Event for a third of the jobs at scale).
        phase = Phase.RUNNING
    else:
        phase = Phase.PENDING

    # Budget: stop when accrued or projected cost would pass the cap.
    max_usd = (spec.get("budget") or {}).get("maxCostUSD")
    if max_usd and phase in (Phase.RUNNING, Phase.PENDING) and not budget_stopped(old):
        projected = projected_usd(cost, prog)
        if cost["usd"] >= max_usd or (projected is not None and projected > max_usd):
            what = (f"accrued ${cost['usd']:.2f}" if cost["usd"] >= max_usd
                    else f"projected ${projected:.2f} (accrued ${cost['usd']:.2f})")
            phase = Phase.FAILED
            failure = {"reason": BUDGET_EXCEEDED, "message": (
                f"{what} passes budget.maxCostUSD ${max_usd:g}; Job suspended, checkpoint and partial adapter "
                "kept")}
            suspended = (True, BUDGET_EXCEEDED, "Job suspended by the operator: budget exhausted")
            completion = now

    # Conditions.
    pending_reason = _pending_reason(pods) if phase == Phase.PENDING and job is not None else ("", "")
    if phase == Phase.PENDING and not pods and create_error:
        pending_reason = ("FailedCreate", create_error)
    if job is None and phase != Phase.FAILED:
        conds = set_condition(conds, "JobCreated", False, "NotCreated", "the Job has not been created yet", gen)
    elif job is not None:
        conds = set_condition(conds, "JobCreated", True, "Created", f"Job {job_name}", gen)
    if phase == Phase.RUNNING and running_pods:
        conds = set_condition(conds, "Running", True, "PodRunning",
                              f"pod {running_pods[0]['metadata'].get('name')} on {running_pods[0].get('spec', {}).get('nodeName')}",
                              gen)
    elif phase == Phase.RUNNING:
        conds = set_condition(conds, "Running", True, "Completing",
                              f"pod {succeeded_pods[-1]['metadata'].get('name')} succeeded; the Job is completing",
                              gen)
    elif phase == Phase.PENDING:
        conds = set_condition(conds, "Running", False, pending_reason[0] or "NotCreated", pending_reason[1], gen)
    else:
        conds = set_condition(conds, "Running", False, phase.value, "", gen)
    done = phase == Phase.SUCCEEDED
    conds = set_condition(conds, "Complete", done, phase.value if done else "NotComplete",
                          "training finished" if done else "", gen)
    conds = set_condition(conds, "Failed", phase == Phase.FAILED, (failure or {}).get("reason", "NoFailure"),
                          (failure or {}).get("message", ""), gen)
    conds = set_condition(conds, "Suspended", suspended[0], suspended[1], suspended[2], gen)
    out["conditions"] = conds
    out["phase"] = phase.value
    if failure:
        out["failure"] = failure
    if prog:
        out["progress"] = prog
    if start:
        out["startTime"] = fmt_time(start)
        end = completion if phase in TERMINAL else now
        out["durationSeconds"] = round(max(0.0, ((end or now) - start).total_seconds()), 1)
    if completion and phase in TERMINAL:
        out["completionTime"] = fmt_time(completion)
    if phase in TERMINAL:
        cost["usdPerHour"] = 0.0
    return out


def pending_message(status: dict[str, Any]) -> str:
    """Why it is pending, for events (from the Running condition)."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Running":
            return f"{cond.get('reason')}: {cond.get('message')}"
    return ""


def _gpu(placement: Placement) -> str:
    text = "cpu" if placement.accelerator == "cpu" else f"{placement.accelerator}x{placement.count}"
    return f"{text} spot" if placement.spot else text


def preempted(attempt: dict[str, Any]) -> bool:
    return attempt.get("reason") == "DisruptionTarget" or attempt.get("exitCode") == EXIT_PREEMPTED

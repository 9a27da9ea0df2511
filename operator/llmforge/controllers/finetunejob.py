"""FineTuneJob reconciler: apply the ConfigMap and Job, then write the status observed from them.

Three entry points share one `sync`: the create/update/resume handler (after admission), a loop that
reads progress and accrues cost for unfinished jobs, and watches on the Jobs and Pods we own (label-filtered) so status
follows the children without waiting for the timer. `sync` is level-based: it reads the Job and Pods
and recomputes the whole status each time; nothing depends on which event fired.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION, kube
from ..api.finetunejob import FineTuneJob
from ..builders.common import MANAGED_BY, MANAGED_BY_LABEL
from ..builders.finetunejob import FTJ_LABEL, build_configmap, build_job, job_name
from ..estimate import check_fit
from ..settings import Settings
from ..status.conditions import set_condition
from ..status.finetunejob import (
    Placement,
    budget_stopped,
    compute_status,
    parse_progress,
    pending_message,
)
from .metrics import PHASES, instrumented
from .pricingcache import prices

KIND, PLURAL, API_VERSION = "FineTuneJob", "finetunejobs", f"{GROUP}/{VERSION}"
TERMINAL = ("Succeeded", "Failed")
PROGRESS_TIMEOUT_SECONDS = 1.5

_locks: dict[tuple[str, str], asyncio.Lock] = {}
_active: set[tuple[str, str]] = set()
_pending: set[tuple[str, str]] = set()
#: Pending jobs are re-read every this many status-loop ticks.
PENDING_EVERY = 2
_queued: set[tuple[str, str]] = set()
#: Threads for blocking API calls (asyncio's default is cores + 4, too few for many jobs' I/O).
API_THREADS = 32


def _settings() -> Settings:
    from .run import SETTINGS

    return SETTINGS


# ------------------------------------------------------------------------------------- edges (I/O)


def fetch_progress(url: str, timeout: float = PROGRESS_TIMEOUT_SECONDS) -> dict[str, float] | None:
    """Read the trainer's gauges; None when the pod does not answer (kwok pods, a pod starting up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (pod IP, http only)
            return parse_progress(resp.read(1 << 20).decode("utf-8", "replace")) or None
    except (OSError, ValueError):
        return None


def _model(resource: dict[str, Any]) -> FineTuneJob:
    return FineTuneJob.model_validate({k: v for k, v in resource.items() if k in ("kind", "metadata", "spec")})


def sync(resource: dict[str, Any], settings: Settings, *, apply_children: bool, read_progress: bool,
         logger: Any = None) -> dict[str, Any]:
    """Create what is missing, enforce suspend, observe the Job and Pods, return the whole status."""
    meta = resource["metadata"]
    ns, name = meta["namespace"], meta["name"]
    model = _model(resource)
    fit = check_fit(model.spec)
    if fit.accelerator == "auto":
        raise ValueError(fit.message)
    placement = Placement(fit.accelerator, 1 if fit.accelerator == "cpu" else model.spec.resources.count,
                          model.spec.resources.spot)
    old = resource.get("status") or {}
    jname = job_name(name)
    job = kube.get("batch/v1", "Job", ns, jname)
    want_suspend = bool(model.spec.suspend) or budget_stopped(old)
    if job is None and apply_children and old.get("phase") not in TERMINAL:
        kube.apply(build_configmap(resource), settings.field_manager)
        job = kube.apply(build_job(resource, settings, suspend=want_suspend), settings.field_manager)
    elif job is not None and bool(job.get("spec", {}).get("suspend")) != want_suspend and (
            apply_children or want_suspend):
        if not (_finished(job) and not want_suspend):
            job = kube.merge_patch("batch/v1", "Job", ns, jname, {"spec": {"suspend": want_suspend}})
    pods = kube.list_("v1", "Pod", ns, f"{FTJ_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}")
    if job is not None:
        uid = job["metadata"].get("uid")
        pods = [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]
    create_error = None
    if job is not None and not pods:
        create_error = _pod_create_error(ns, job)
    progress = None
    if read_progress:
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")]
        if running:
            ip = running[0]["status"]["podIP"]
            progress = fetch_progress(f"http://{ip}:{settings.trainer_metrics_port}/metrics")
    status = compute_status(resource, job, pods, placement, prices(settings, logger), datetime.now(UTC),
                            progress=progress, estimate=fit.status(), job_name=jname, create_error=create_error)
    if budget_stopped(status) and job is not None and not job.get("spec", {}).get("suspend") and not _finished(job):
        kube.merge_patch("batch/v1", "Job", ns, jname, {"spec": {"suspend": True}})
    return status


def _pod_create_error(namespace: str, job: dict[str, Any]) -> str | None:
    """The Job controller's latest FailedCreate event (missing ServiceAccount, quota, admission)."""
    uid = job["metadata"].get("uid")
    events = kube.request("GET", kube.path("v1", "Event", namespace), query={
        "fieldSelector": f"involvedObject.uid={uid},reason=FailedCreate"}).get("items", [])
    if not events:
        return None
    latest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return latest.get("message")


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def _with_removals(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that also clears fields that no longer apply (e.g. failure after a resume)."""
    patch = dict(new)
    for key in ("failure", "completionTime", "progress"):
        if key in old and key not in new:
            patch[key] = None
    return patch


def _announce(body: Any, old_phase: str | None, status: dict[str, Any]) -> None:
    """One event per phase change: Warning for Failed, Normal otherwise (kopf.event: not subject to the
    posting level, which keeps kopf's own INFO logs out of events)."""
    phase = status.get("phase")
    if phase == old_phase:
        return
    if phase == "Failed":
        failure = status.get("failure") or {}
        kopf.warn(body, reason=failure.get("reason") or "Failed", message=(failure.get("message") or "")[:1024])
    elif phase == "Pending":
        kopf.event(body, type="Normal", reason="Pending", message=pending_message(status)[:1024])
    else:
        cost = (status.get("cost") or {}).get("usd")
        kopf.event(body, type="Normal", reason=str(phase),
                   message=f"{old_phase or 'New'} -> {phase}; cost so far ${cost or 0:.2f}")
    if old_phase:
        PHASES.labels(KIND, old_phase).dec()
    PHASES.labels(KIND, str(phase)).inc()


def _lock(ns: str, name: str) -> asyncio.Lock:
    return _locks.setdefault((ns, name), asyncio.Lock())


def _plain(body: Any) -> dict[str, Any]:
    return {"apiVersion": body.get("apiVersion", API_VERSION), "kind": body.get("kind", KIND),
            "metadata": dict(body.get("metadata", {})), "spec": dict(body.get("spec", {})),
            "status": dict(body.get("status", {}) or {})}


# ------------------------------------------------------------------------------------- handlers


async def reconcile(model: Any, body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    """Create/update/resume, after admission passed (its conditions are already in patch.status)."""
    resource = _plain(body)
    old = resource["status"]
    resource["status"] = {**old, "conditions": list(patch.status.get("conditions") or old.get("conditions") or [])}
    meta = resource["metadata"]
    async with _lock(meta["namespace"], meta["name"]):
        try:
            status = await asyncio.to_thread(sync, resource, _settings(), apply_children=True, read_progress=False,
                                             logger=logger)
        except ValueError as exc:  # spec the schema accepted but we cannot build: a person must fix it
            conds = set_condition(resource["status"]["conditions"], "Validated", False, "InvalidSpec", str(exc),
                                  meta.get("generation"))
            patch.status.update(conditions=conds, phase="Failed", failure={"reason": "InvalidSpec",
                                                                          "message": str(exc)})
            raise kopf.PermanentError(str(exc)) from exc
        except ApiException as exc:
            raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=5) from exc
    patch.status.update(_with_removals(old, status))
    _track(meta["namespace"], meta["name"], status)
    _announce(body, old.get("phase"), status)


async def refresh(namespace: str, name: str, logger: Any, read_progress: bool = False) -> None:
    """Recompute one FineTuneJob's status from the API's current view and write it to /status."""
    async with _lock(namespace, name):
        _queued.discard((namespace, name))
        try:
            current = await asyncio.to_thread(kube.get, API_VERSION, KIND, namespace, name)
            if current is None or current.get("metadata", {}).get("deletionTimestamp"):
                _active.discard((namespace, name))
                return
            if _validated(current) is not True:
                return
            status = await asyncio.to_thread(sync, current, _settings(), apply_children=False,
                                             read_progress=read_progress, logger=logger)
            await asyncio.to_thread(kube.patch_status, API_VERSION, KIND, namespace, name,
                                    _with_removals(current.get("status") or {}, status))
        except ApiException as exc:
            if exc.status in (404, 409):
                return
            raise kopf.TemporaryError(f"API error {exc.status}", delay=2) from exc
        except ValueError:
            return
    _track(namespace, name, status)
    _announce(current, (current.get("status") or {}).get("phase"), status)


async def child_changed(namespace: str, labels: dict[str, str], logger: Any, **_: Any) -> None:
    """A Job or Pod of ours changed: recompute its FineTuneJob's status now.

    Bursts coalesce: while a refresh for the same job waits for the lock, later events add nothing (that
    refresh has not read anything yet, so it will see them); once it has started, a new event queues one more.
    """
    name = labels.get(FTJ_LABEL)
    if not name or not namespace or (namespace, name) in _queued:
        return
    _queued.add((namespace, name))
    await refresh(namespace, name, logger)


def _track(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Running jobs get progress and cost refreshed by the status loop. Nothing else changes without an
    event of its Job or Pods (a pending or suspended job accrues nothing), so only those are polled."""
    key = (namespace, name)
    if status.get("phase") == "Running":
        _active.add(key)
        _pending.discard(key)
    elif status.get("phase") == "Pending":
        # Why a job is pending (FailedCreate events, the scheduler's verdict) can change without any event of
        # its Job: re-read those too, at a slower pace so thousands of queued jobs cannot starve the rest.
        _pending.add(key)
        _active.discard(key)
    else:
        _active.discard(key)
        _pending.discard(key)


async def status_loop(interval: float, logger: Any) -> None:
    """Every interval: progress and accrued cost of every running job this operator has seen.

    One operator-wide loop rather than a kopf timer per object: kopf guards per-object timers with a
    finalizer, which would block deletion whenever the operator is down.
    """
    sem = asyncio.Semaphore(16)

    async def one(key: tuple[str, str]) -> None:
        async with sem:
            try:
                await instrumented(KIND, "status")(refresh)(key[0], key[1], logger, read_progress=True)
            except Exception as exc:  # noqa: BLE001 (a bad object must not stop the loop)
                logger.warning(f"status refresh of {key[0]}/{key[1]} failed: {exc}")

    tick = 0
    while True:
        await asyncio.sleep(interval)
        tick += 1
        keys = list(_active) + (list(_pending) if tick % PENDING_EVERY == 0 else [])
        await asyncio.gather(*(one(k) for k in keys))


def _validated(resource: dict[str, Any]) -> bool | None:
    for cond in (resource.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Validated":
            return cond.get("status") == "True"
    return None


def _mlflow_run_open(status: Any, **_: Any) -> bool:
    return bool((status or {}).get("mlflow", {}).get("runId")) and (status or {}).get("phase") not in TERMINAL


async def mark_mlflow_killed(spec: Any, status: Any, logger: Any, **_: Any) -> None:
    """Best-effort: an MLflow run left RUNNING by a deleted job is marked KILLED. Never blocks deletion."""
    uri = ((spec.get("tracking") or {}).get("mlflow") or {}).get("trackingUri")
    run_id = (status.get("mlflow") or {}).get("runId")
    if not uri or not run_id:
        return
    import json

    req = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/runs/update", method="POST",
                                 data=json.dumps({"run_id": run_id, "status": "KILLED",
                                                  "end_time": int(time.time() * 1000)}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        await asyncio.to_thread(urllib.request.urlopen, req, None, 5)
    except OSError as exc:
        logger.warning(f"MLflow run {run_id} not marked KILLED: {exc}")


def register(settings: Settings) -> None:
    """Register the reconciler, the status loop, child watches and the MLflow finalizer."""
    from .handlers import RECONCILERS

    RECONCILERS[KIND] = reconcile
    owned = {MANAGED_BY_LABEL: MANAGED_BY, FTJ_LABEL: kopf.PRESENT}
    interval = min(settings.progress_interval_seconds, settings.cost_interval_seconds)
    tasks: list[asyncio.Task] = []

    @kopf.on.startup(id="finetunejobs-status-loop")
    async def _start_loop(logger: Any, **_: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(API_THREADS, "llmforge-api"))
        tasks.append(asyncio.create_task(status_loop(interval, logger)))

    @kopf.on.cleanup(id="finetunejobs-status-loop-stop")
    async def _stop_loop(**_: Any) -> None:
        for task in tasks:
            task.cancel()

    kopf.on.event("batch", "v1", "jobs", id="finetunejob-jobs", labels=owned)(
        instrumented(KIND, "child")(child_changed))
    kopf.on.event("v1", "pods", id="finetunejob-pods", labels=owned)(
        instrumented(KIND, "child")(child_changed))
    kopf.on.delete(GROUP, VERSION, PLURAL, id="finetunejobs-mlflow", when=_mlflow_run_open)(mark_mlflow_killed)

"""Observe and apply one FineTuneJob's children: the watch caches, the ConfigMap and Job applied side by side,
the Job's pods (cached while a list vouches for them), and `sync`, which recomputes the whole status.

The controller (`finetunejob.py`) decides when; this module does one pass, level-based: nothing here
depends on which event fired.
"""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from .. import kube
from ..api.finetunejob import FineTuneJob
from ..builders.common import MANAGED_BY, MANAGED_BY_LABEL
from ..builders.finetunejob import FTJ_LABEL, build_configmap, build_job, job_name
from ..estimate import check_fit
from ..settings import Settings
from ..status.attempts import parse_time
from ..status.finetunejob import Placement, budget_stopped, compute_status, parse_progress
from .cache import Children, Latest
from .pricingcache import prices, prices_fresh

TERMINAL = ("Succeeded", "Failed")
PROGRESS_TIMEOUT_SECONDS = 1.5
#: A cached pod list is re-checked against the API after this long (heals a DELETED event lost in a
#: watch restart). At 60 s, jobs slowed by a busy control plane re-listed once each: 6% of its time.
POD_LIST_TTL_SECONDS = 300.0
#: A Job younger than this with no pod is normal, not worth an Event query for FailedCreate.
CREATE_ERROR_GRACE_SECONDS = 5.0

Key = tuple[str, str]
#: The newest FineTuneJobs, and only what `sync` and the status read of their Jobs and Pods.
ftj_cache, job_cache, pod_cache = Latest(), Latest(spec_keys=("suspend",)), Children(spec_keys=("nodeName",))


def fetch_progress(url: str, timeout: float = PROGRESS_TIMEOUT_SECONDS) -> dict[str, float] | None:
    """Read the trainer's gauges; None when the pod does not answer (kwok pods, a pod starting up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (pod IP, http only)
            return parse_progress(resp.read(1 << 20).decode("utf-8", "replace")) or None
    except (OSError, ValueError):
        return None


def _model(resource: dict[str, Any]) -> FineTuneJob:
    return FineTuneJob.model_validate({k: v for k, v in resource.items() if k in ("kind", "metadata", "spec")})


async def _create_children(resource: dict[str, Any], settings: Settings,
                           suspend: bool) -> tuple[dict[str, Any], bool]:
    """Apply the ConfigMap and the Job side by side; (job, created). The pod waits for its ConfigMap volume
    like any kubelet mount, so neither needs the other first. Server-side apply: a retry or a restart at any
    point converges on the same single Job. An existing Job whose immutable template we would now build
    differently (an operator upgrade) is left as it is."""
    cm = asyncio.to_thread(kube.apply, build_configmap(resource), settings.field_manager)
    job = asyncio.to_thread(kube.apply_created, build_job(resource, settings, suspend=suspend),
                            settings.field_manager)
    cm_result, job_result = await asyncio.gather(cm, job, return_exceptions=True)
    if isinstance(cm_result, BaseException):
        raise cm_result
    if isinstance(job_result, ApiException) and job_result.status == 422:
        meta = resource["metadata"]
        existing = await asyncio.to_thread(kube.get, "batch/v1", "Job", meta["namespace"], job_name(meta["name"]))
        if existing is None:
            raise job_result
        return existing, False
    if isinstance(job_result, BaseException):
        raise job_result
    return job_result


async def _pods_of(key: Key, job: dict[str, Any] | None, created: bool) -> list[dict[str, Any]]:
    """This Job's pods: from the cache while a recent list vouches for it, else listed (and the cache seeded)."""
    ns, name = key
    if created:  # a Job this call created has no pods but those its watch brings
        pod_cache.vouch(key)
    elif not pod_cache.fresh(key, POD_LIST_TTL_SECONDS):
        items, rv = await asyncio.to_thread(kube.list_at, "v1", "Pod", ns,
                                            f"{FTJ_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}")
        pod_cache.seed(key, items, rv)
    pods = pod_cache.items(key)
    if job is not None:
        uid = job["metadata"].get("uid")
        pods = [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]
    return sorted(pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"].get("name") or ""))


async def sync(resource: dict[str, Any], settings: Settings, *, apply_children: bool, read_progress: bool,
               logger: Any = None) -> dict[str, Any]:
    """Create what is missing, enforce suspend, observe the Job and Pods, return the whole status.

    Reads come from the watch cache; only what is missing there costs an API call.
    """
    meta = resource["metadata"]
    ns, name = meta["namespace"], meta["name"]
    key = (ns, name)
    model = _model(resource)
    fit = check_fit(model.spec)
    if fit.accelerator == "auto":
        raise ValueError(fit.message)
    placement = Placement(fit.accelerator, 1 if fit.accelerator == "cpu" else model.spec.resources.count,
                          model.spec.resources.spot)
    old = resource.get("status") or {}
    jname = job_name(name)
    want_suspend = bool(model.spec.suspend) or budget_stopped(old)
    job, created = job_cache.get(key), False
    if job is None and apply_children and old.get("phase") not in TERMINAL:
        job, created = await _create_children(resource, settings, want_suspend)
        job = job_cache.put(key, job)
    elif job is None:
        job = await asyncio.to_thread(kube.get, "batch/v1", "Job", ns, jname)
        job = job_cache.put(key, job) if job is not None else None
    if job is not None and bool(job.get("spec", {}).get("suspend")) != want_suspend and (
            apply_children or want_suspend) and not (finished(job) and not want_suspend):
        job = job_cache.put(key, await asyncio.to_thread(kube.merge_patch, "batch/v1", "Job", ns, jname,
                                                     {"spec": {"suspend": want_suspend}}))
    pods = await _pods_of(key, job, created)
    create_error = None
    if job is not None and not pods and age_seconds(job) > CREATE_ERROR_GRACE_SECONDS:
        create_error = await asyncio.to_thread(_pod_create_error, ns, job)
    progress = None
    if read_progress:
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP")]
        if running:
            ip = running[0]["status"]["podIP"]
            progress = await asyncio.to_thread(fetch_progress,
                                               f"http://{ip}:{settings.trainer_metrics_port}/metrics")
    table = prices(settings, logger) if prices_fresh() else await asyncio.to_thread(prices, settings, logger)
    status = compute_status(resource, job, pods, placement, table, datetime.now(UTC),
                            progress=progress, estimate=fit.status(), job_name=jname, create_error=create_error)
    if budget_stopped(status) and job is not None and not job.get("spec", {}).get("suspend") and not finished(job):
        job_cache.put(key, await asyncio.to_thread(kube.merge_patch, "batch/v1", "Job", ns, jname,
                                               {"spec": {"suspend": True}}))
    return status


def age_seconds(obj: dict[str, Any]) -> float:
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    return (datetime.now(UTC) - created).total_seconds() if created else 0.0


def _pod_create_error(namespace: str, job: dict[str, Any]) -> str | None:
    """The Job controller's latest FailedCreate event (missing ServiceAccount, quota, admission)."""
    uid = job["metadata"].get("uid")
    events = kube.request("GET", kube.path("v1", "Event", namespace), query={
        "fieldSelector": f"involvedObject.uid={uid},reason=FailedCreate"}).get("items", [])
    if not events:
        return None
    latest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return latest.get("message")


def finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])

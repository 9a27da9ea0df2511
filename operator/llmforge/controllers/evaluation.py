"""Evaluation reconciler: wait for the referenced FineTuneJob, apply the eval ConfigMap and Job, write status.

Entry points share one level-based ``sync``: the create/update/resume handler (after admission), watches on
the Jobs and Pods we own (label-filtered), and a watch on FineTuneJobs that refreshes the Evaluations
referencing one (so an Evaluation waiting for its model starts when the FineTuneJob Succeeds, and fails
when it Fails). ``sync`` reads the FineTuneJob, the Job and the Pods each time and recomputes the whole
status; the Job is created only while the Evaluation is not finished and its model is ready.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION, kube
from ..builders.common import MANAGED_BY, MANAGED_BY_LABEL
from ..builders.evaluation import EVAL_LABEL, build_configmap, build_job, job_name, resolve
from ..settings import Settings
from ..status.conditions import set_condition
from ..status.evaluation import compute_status, reference_state
from .metrics import PHASES, instrumented

KIND, PLURAL, API_VERSION = "Evaluation", "evaluations", f"{GROUP}/{VERSION}"
FTJ_KIND = "FineTuneJob"
TERMINAL = ("Succeeded", "Failed")

_locks: dict[tuple[str, str], asyncio.Lock] = {}


def _settings() -> Settings:
    from .run import SETTINGS

    return SETTINGS


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def sync(resource: dict[str, Any], settings: Settings, *, apply_children: bool) -> dict[str, Any]:
    """Create what is missing (once the model is ready), mirror spec.suspend, observe, return the status."""
    meta, spec = resource["metadata"], resource.get("spec") or {}
    ns, name = meta["namespace"], meta["name"]
    old = resource.get("status") or {}
    ref = ((spec.get("model") or {}).get("fineTuneJobRef") or {}).get("name")
    ftj = kube.get(API_VERSION, FTJ_KIND, ns, ref) if ref else None
    jname = job_name(name)
    job = kube.get("batch/v1", "Job", ns, jname)
    state, _, _ = reference_state(spec, ftj)
    adapter_uri = old.get("adapterUri")
    if job is None and apply_children and state == "ready" and old.get("phase") not in TERMINAL:
        model = resolve(resource, ftj)
        kube.apply(build_configmap(resource, model), settings.field_manager)
        job = kube.apply(build_job(resource, settings, model), settings.field_manager)
        adapter_uri = model.adapter_uri
    elif job is not None and bool((job.get("spec") or {}).get("suspend")) != bool(spec.get("suspend")) \
            and not _finished(job):
        job = kube.merge_patch("batch/v1", "Job", ns, jname, {"spec": {"suspend": bool(spec.get("suspend"))}})
    pods: list[dict[str, Any]] = []
    if job is not None:
        uid = job["metadata"].get("uid")
        pods = [p for p in kube.list_("v1", "Pod", ns, f"{EVAL_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}")
                if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]
    return compute_status(resource, ftj, job, pods, datetime.now(UTC), job_name=jname, adapter_uri=adapter_uri)


def _with_removals(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that also clears fields that no longer apply."""
    patch = dict(new)
    for key in ("failure", "completionTime", "results", "samples", "samplesEvaluated", "reportUri",
                "failedThresholds", "passed", "mlflow"):
        if key in old and key not in new:
            patch[key] = None
    return patch


def _announce(body: Any, old_phase: str | None, status: dict[str, Any]) -> None:
    """One event per phase change; the verdict in the Succeeded event."""
    phase = status.get("phase")
    if phase == old_phase:
        return
    if phase == "Failed":
        failure = status.get("failure") or {}
        kopf.warn(body, reason=failure.get("reason") or "Failed", message=(failure.get("message") or "")[:1024])
    elif phase == "Succeeded":
        passed = next((c for c in status.get("conditions") or [] if c.get("type") == "Passed"), {})
        kopf.event(body, type="Normal" if status.get("passed") else "Warning",
                   reason="Passed" if status.get("passed") else "ThresholdsFailed",
                   message=(passed.get("message") or "")[:1024])
    else:
        kopf.event(body, type="Normal", reason=str(phase), message=f"{old_phase or 'New'} -> {phase}")
    if old_phase:
        PHASES.labels(KIND, old_phase).dec()
    PHASES.labels(KIND, str(phase)).inc()


def _lock(ns: str, name: str) -> asyncio.Lock:
    return _locks.setdefault((ns, name), asyncio.Lock())


def _plain(body: Any) -> dict[str, Any]:
    return {"apiVersion": body.get("apiVersion", API_VERSION), "kind": body.get("kind", KIND),
            "metadata": dict(body.get("metadata", {})), "spec": dict(body.get("spec", {})),
            "status": dict(body.get("status", {}) or {})}


def _validated(resource: dict[str, Any]) -> bool | None:
    for cond in (resource.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Validated":
            return cond.get("status") == "True"
    return None


async def reconcile(model: Any, body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    """Create/update/resume, after admission passed (its conditions are already in patch.status)."""
    resource = _plain(body)
    old = resource["status"]
    resource["status"] = {**old, "conditions": list(patch.status.get("conditions") or old.get("conditions") or [])}
    meta = resource["metadata"]
    async with _lock(meta["namespace"], meta["name"]):
        try:
            status = await asyncio.to_thread(sync, resource, _settings(), apply_children=True)
        except ValueError as exc:  # accepted by the schema, but no Job can be built from it
            conds = set_condition(resource["status"]["conditions"], "Validated", False, "InvalidSpec", str(exc),
                                  meta.get("generation"))
            patch.status.update(conditions=conds, phase="Failed", failure={"reason": "InvalidSpec",
                                                                          "message": str(exc)})
            raise kopf.PermanentError(str(exc)) from exc
        except ApiException as exc:
            raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=5) from exc
    patch.status.update(_with_removals(old, status))
    _announce(body, old.get("phase"), status)


async def refresh(namespace: str, name: str, logger: Any) -> None:
    """Recompute one Evaluation's status from the API's current view (creating its Job if now due)."""
    async with _lock(namespace, name):
        try:
            current = await asyncio.to_thread(kube.get, API_VERSION, KIND, namespace, name)
            if current is None or current.get("metadata", {}).get("deletionTimestamp"):
                return
            if _validated(current) is not True:
                return
            status = await asyncio.to_thread(sync, current, _settings(), apply_children=True)
            await asyncio.to_thread(kube.patch_status, API_VERSION, KIND, namespace, name,
                                    _with_removals(current.get("status") or {}, status))
        except ApiException as exc:
            if exc.status in (404, 409):
                return
            raise kopf.TemporaryError(f"API error {exc.status}", delay=2) from exc
        except ValueError as exc:
            logger.warning(f"Evaluation {namespace}/{name}: {exc}")
            return
    _announce(current, (current.get("status") or {}).get("phase"), status)


async def child_changed(namespace: str, labels: dict[str, str], logger: Any, **_: Any) -> None:
    """A Job or Pod of ours changed: recompute its Evaluation's status now."""
    name = labels.get(EVAL_LABEL)
    if name and namespace:
        await refresh(namespace, name, logger)


async def finetunejob_changed(namespace: str, name: str, logger: Any, **_: Any) -> None:
    """A FineTuneJob changed: refresh every unfinished Evaluation in its namespace that references it."""
    if not namespace or not name:
        return
    try:
        evals = await asyncio.to_thread(kube.list_, API_VERSION, KIND, namespace, "")
    except ApiException:
        return
    for ev in evals:
        ref = (((ev.get("spec") or {}).get("model") or {}).get("fineTuneJobRef") or {}).get("name")
        if ref == name and (ev.get("status") or {}).get("phase") not in TERMINAL:
            await refresh(namespace, ev["metadata"]["name"], logger)


def register(settings: Settings) -> None:
    """Register the reconciler, label-filtered child watches, and the FineTuneJob watch."""
    from .handlers import RECONCILERS

    RECONCILERS[KIND] = reconcile
    owned = {MANAGED_BY_LABEL: MANAGED_BY, EVAL_LABEL: kopf.PRESENT}
    kopf.on.event("batch", "v1", "jobs", id="evaluation-jobs", labels=owned)(
        instrumented(KIND, "child")(child_changed))
    kopf.on.event("v1", "pods", id="evaluation-pods", labels=owned)(
        instrumented(KIND, "child")(child_changed))
    kopf.on.event(GROUP, VERSION, "finetunejobs", id="evaluation-models")(
        instrumented(KIND, "model")(finetunejob_changed))

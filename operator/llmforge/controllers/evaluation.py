"""Evaluation reconciler: wait for the referenced FineTuneJob, apply the eval ConfigMap and Job, write status.

Entry points share one level-based ``sync``: the create/update/resume handler (after admission), watches on
the Jobs and Pods we own (label-filtered), and a loop that re-checks every Evaluation in ``WaitingForModel``
(so one waiting for its FineTuneJob starts when that Succeeds, and fails when it Fails) and every ``Running``
one (so ``status.cost`` accrues while the pod works without sending events). A loop, not a kopf
watch on FineTuneJobs: an extra event handler on that kind made the FineTuneJob controller's own phase
events flaky in the k8s tests, and the FineTuneJob controller already polls for the same reason. ``sync``
reads the FineTuneJob, the Job and the Pods each time and recomputes the whole status; the Job is created
only while the Evaluation is not finished and its model is ready. Prices come from the shared
``pricingcache`` (the cluster's pricing ConfigMap), as for FineTuneJobs.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION, kube
from ..api.evaluation import Evaluation
from ..builders.common import MANAGED_BY, MANAGED_BY_LABEL
from ..builders.evaluation import EVAL_LABEL, ResolvedModel, build_configmap, build_job, job_name, resolve
from ..settings import Settings
from ..status.attempts import Placement
from ..status.conditions import set_condition
from ..status.evaluation import compute_status, reference_state
from .background import Loop
from .common import KeyedLocks, plain
from .metrics import instrumented
from .pricingcache import prices

KIND, PLURAL, API_VERSION = "Evaluation", "evaluations", f"{GROUP}/{VERSION}"
FTJ_KIND = "FineTuneJob"
TERMINAL = ("Succeeded", "Failed")

_lock = KeyedLocks()
#: Evaluations waiting for their model, re-checked by status_loop.
_waiting: set[tuple[str, str]] = set()
#: Evaluations with a running eval pod: status_loop re-syncs them so status.cost accrues between pod events.
_running: set[tuple[str, str]] = set()


def _settings() -> Settings:
    from .run import SETTINGS

    return SETTINGS


def _finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def placement(resource: dict[str, Any], model: ResolvedModel | None) -> Placement | None:
    """What the eval pod requests, for its cost: the resolved accelerator (``auto`` resolved as the builder did),
    else the one already in status.cost (the FineTuneJob may be gone once the Job exists). None: not known yet."""
    res = Evaluation.model_validate({"spec": resource.get("spec") or {}}).spec.resources
    accelerator = model.accelerator if model else ((resource.get("status") or {}).get("cost") or {}).get("accelerator")
    if not accelerator:
        return None
    return Placement(accelerator, 1 if accelerator == "cpu" else res.count, res.spot)


def sync(resource: dict[str, Any], settings: Settings, *, apply_children: bool,
         logger: Any = None) -> dict[str, Any]:
    """Create what is missing (once the model is ready), mirror spec.suspend, observe, return the status."""
    meta, spec = resource["metadata"], resource.get("spec") or {}
    ns, name = meta["namespace"], meta["name"]
    old = resource.get("status") or {}
    ref = ((spec.get("model") or {}).get("fineTuneJobRef") or {}).get("name")
    ftj = kube.get(API_VERSION, FTJ_KIND, ns, ref) if ref else None
    jname = job_name(name)
    job = kube.get("batch/v1", "Job", ns, jname)
    state, _, _ = reference_state(spec, ftj)
    model = resolve(resource, ftj) if state == "ready" else None
    adapter_uri = old.get("adapterUri")
    if job is None and apply_children and model is not None and old.get("phase") not in TERMINAL:
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
    return compute_status(resource, ftj, job, pods, datetime.now(UTC), job_name=jname, adapter_uri=adapter_uri,
                          placement=placement(resource, model), prices=prices(settings, logger))


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




def _validated(resource: dict[str, Any]) -> bool | None:
    for cond in (resource.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Validated":
            return cond.get("status") == "True"
    return None


async def reconcile(model: Any, body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    """Create/update/resume, after admission passed (its conditions are already in patch.status)."""
    _loop.ensure()
    resource = plain(body, KIND)
    old = resource["status"]
    resource["status"] = {**old, "conditions": list(patch.status.get("conditions") or old.get("conditions") or [])}
    meta = resource["metadata"]
    async with _lock(meta["namespace"], meta["name"]):
        try:
            status = await asyncio.to_thread(sync, resource, _settings(), apply_children=True, logger=logger)
        except ValueError as exc:  # accepted by the schema, but no Job can be built from it
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


async def refresh(namespace: str, name: str, logger: Any) -> None:
    """Recompute one Evaluation's status from the API's current view (creating its Job if now due)."""
    async with _lock(namespace, name):
        try:
            current = await asyncio.to_thread(kube.get, API_VERSION, KIND, namespace, name)
            if current is None or current.get("metadata", {}).get("deletionTimestamp"):
                _waiting.discard((namespace, name))
                _running.discard((namespace, name))
                return
            if _validated(current) is not True:
                return
            status = await asyncio.to_thread(sync, current, _settings(), apply_children=True, logger=logger)
            await asyncio.to_thread(kube.patch_status, API_VERSION, KIND, namespace, name,
                                    _with_removals(current.get("status") or {}, status))
        except ApiException as exc:
            if exc.status in (404, 409):
                return
            raise kopf.TemporaryError(f"API error {exc.status}", delay=2) from exc
        except ValueError as exc:
            logger.warning(f"Evaluation {namespace}/{name}: {exc}")
            return
    _track(namespace, name, status)
    _announce(current, (current.get("status") or {}).get("phase"), status)


def _track(namespace: str, name: str, status: dict[str, Any]) -> None:
    key = (namespace, name)
    phase = status.get("phase")
    (_waiting.add if phase == "WaitingForModel" else _waiting.discard)(key)
    (_running.add if phase == "Running" else _running.discard)(key)


async def status_loop(interval: float, logger: Any) -> None:
    """Every interval: re-sync each Evaluation waiting for its model (creates the Job once it is ready) and
    each running one (a running pod sends no event while it works, but its cost grows)."""
    while True:
        await asyncio.sleep(interval)
        for ns, name in list(_waiting) + list(_running):
            try:
                await instrumented(KIND, "status")(refresh)(ns, name, logger)
            except Exception as exc:  # noqa: BLE001 (one bad object must not stop the loop)
                logger.warning(f"Evaluation {ns}/{name}: refresh failed: {exc}")


LOG = logging.getLogger("llmforge.evaluation")
_loop_interval = [15.0]
_loop = Loop(lambda: status_loop(_loop_interval[0], LOG))


async def child_changed(namespace: str, labels: dict[str, str], logger: Any, **_: Any) -> None:
    """A Job or Pod of ours changed: recompute its Evaluation's status now."""
    _loop.ensure()
    name = labels.get(EVAL_LABEL)
    if name and namespace:
        await refresh(namespace, name, logger)


def register(settings: Settings) -> None:
    """Register the reconciler, label-filtered child watches, and the loop for waiting and running Evaluations."""
    from .handlers import RECONCILERS

    RECONCILERS[KIND] = reconcile
    owned = {MANAGED_BY_LABEL: MANAGED_BY, EVAL_LABEL: kopf.PRESENT}
    kopf.on.event("batch", "v1", "jobs", id="evaluation-jobs", labels=owned)(
        instrumented(KIND, "child")(child_changed))
    kopf.on.event("v1", "pods", id="evaluation-pods", labels=owned)(
        instrumented(KIND, "child")(child_changed))
    # The waiting check and cost accrual share one loop, at the faster of the two intervals.
    _loop_interval[0] = min(settings.progress_interval_seconds, settings.cost_interval_seconds)

    @kopf.on.cleanup(id="evaluations-waiting-loop-stop")
    async def _stop_loop(**_: Any) -> None:
        _loop.cancel()

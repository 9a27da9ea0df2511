"""FineTuneJob reconciler: apply the ConfigMap and Job, then write the status observed from them.

Three entry points share one `sync` (finetunejob_sync.py): a reconcile per new generation (from the FineTuneJob watch, not kopf's
create/update handlers), a loop that reads progress and accrues cost for running jobs, and watches on the
Jobs and Pods we own (label-filtered) so status follows the children without waiting for the loop. `sync`
is level-based: it reads the Job and Pods and recomputes the whole status each time; nothing depends on
which event fired. The watches also feed its cache (`cache.py`), so a refresh costs one status write, and
none when nothing changed; each write applies only to the FineTuneJob version it was computed from.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION, kube
from ..builders.common import MANAGED_BY, MANAGED_BY_LABEL
from ..builders.finetunejob import FTJ_LABEL, job_name
from ..settings import Settings
from ..status.conditions import set_condition
from ..status.finetunejob import pending_message
from . import admission
from .background import Loop
from .common import KeyedLocks, plain
from .finetunejob_sync import (
    TERMINAL,
    Key,
    age_seconds,
    ftj_cache,
    job_cache,
    pod_cache,
    sync,
)
from .gate import Gate
from .metrics import CENSUS, CONFLICTS, WATCH_LAG, instrumented
from .mlflow_cleanup import mark_mlflow_killed, mlflow_run_open

KIND, PLURAL, API_VERSION = "FineTuneJob", "finetunejobs", f"{GROUP}/{VERSION}"

#: Pending jobs are re-read every this many status-loop ticks.
PENDING_EVERY = 2
#: Threads for blocking API calls (asyncio's default is cores + 4, too few for many jobs' I/O).
API_THREADS = kube.POOL_SIZE
#: Status refreshes and writes at once, normally and while new jobs' children are being applied: at scale,
#: status writes queued ahead of the creates in the API thread pool (mean reconcile 38 s at 1,000 jobs).
#: Creates are never gated; a status write waits its turn (the status is level-based, nothing is lost).
REFRESH_THREADS, REFRESH_THREADS_WHILE_CREATING = 16, 4
#: Child events within this window share one status refresh; it widens with the API server's latency
#: (backpressure: a busy API server gets fewer, fuller status writes), up to the maximum.
DEBOUNCE_SECONDS, DEBOUNCE_LATENCY_FACTOR, DEBOUNCE_MAX_SECONDS = 1.0, 4.0, 10.0

_lock = KeyedLocks()
_active: set[Key] = set()
_pending: set[Key] = set()
_queued: set[Key] = set()
_tasks: set[asyncio.Task] = set()
_in_flight = [0]  # reconciles applying children now
_GATE = Gate(lambda: REFRESH_THREADS_WHILE_CREATING if _in_flight[0] else REFRESH_THREADS)
#: Jobs seen since start-up, and those with a reconcile in flight.
_seen: set[Key] = set()
_reconciling: set[Key] = set()
#: Status writes refused with 409 (computed from an older FineTuneJob than the API's): refreshed again when
#: the newer one arrives by watch.
_stale: set[Key] = set()
LOG = logging.getLogger("llmforge.finetunejob")
_loop_interval = [15.0]
_loop = Loop(lambda: status_loop(_loop_interval[0], LOG))


def _settings() -> Settings:
    from .run import SETTINGS

    return SETTINGS


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
    meta = body.get("metadata", {})
    LOG.info(f"[{meta.get('namespace')}/{meta.get('name')}] {old_phase or 'New'} -> {phase}")
    if phase == "Failed":
        failure = status.get("failure") or {}
        kopf.warn(body, reason=failure.get("reason") or "Failed", message=(failure.get("message") or "")[:1024])
    elif phase == "Pending":
        kopf.event(body, type="Normal", reason="Pending", message=pending_message(status)[:1024])
    else:
        cost = (status.get("cost") or {}).get("usd")
        kopf.event(body, type="Normal", reason=str(phase),
                   message=f"{old_phase or 'New'} -> {phase}; cost so far ${cost or 0:.2f}")


# ------------------------------------------------------------------------------------- handlers


def _changed(old: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Whether a status merge patch would change anything (an unchanged write still costs a request)."""
    return any(old.get(k) != v if v is not None else k in old for k, v in patch.items())


async def _write_status(key: Key, seen: dict[str, Any], status: dict[str, Any]) -> None:
    """Write `status` as computed from `seen` (the FineTuneJob as cached), only onto that version of it.

    The precondition matters when the view is stale: a replica that kopf's peering just paused keeps its
    last cache (its watches stop) and would otherwise write, say, Running over the Succeeded the active
    replica wrote. A conflict marks the job stale; its next watch event brings a refresh (`ftj_event`).
    """
    old = seen.get("status") or {}
    patch = _with_removals(old, status)
    if not _changed(old, patch):
        return
    LOG.debug(f"[{key[0]}/{key[1]}] status write: " + ", ".join(
        k for k, v in patch.items() if (old.get(k) != v if v is not None else k in old)))
    rv = seen.get("metadata", {}).get("resourceVersion")
    try:
        written = await asyncio.to_thread(kube.patch_status, API_VERSION, KIND, key[0], key[1], patch, rv)
    except ApiException as exc:
        if exc.status == 409:
            CONFLICTS.labels(KIND).inc()
            _stale.add(key)
        raise
    _stale.discard(key)
    ftj_cache.put(key, written)


async def reconcile(body: dict[str, Any], logger: Any) -> dict[str, Any]:
    """Admission, children and status for one FineTuneJob; returns the status written (or kept).

    The status is written here, under the job's lock, in one write with admission's conditions. Creating
    the children is not gated; the write waits for the gate, and is then recomputed from the cache (the
    pod may have started meanwhile: one write instead of two).
    """
    resource = plain(body, KIND)
    old = resource["status"]
    meta = resource["metadata"]
    key, generation = (meta["namespace"], meta["name"]), meta.get("generation")
    seen = {"metadata": meta, "status": old}
    admitted = kopf.Patch()
    model, warnings = admission.admit(body, admitted, logger)
    async with _lock(*key):
        if model is None:  # admission wrote Validated=False, phase Failed and the reasons
            status = {**old, **admitted.status}
            async with _GATE:
                await _write_status(key, seen, status)
            return status
        if old.get("observedGeneration") != generation:  # advice once per generation, not per restart
            for w in warnings:
                kopf.warn(body, reason="Advice", message=f"{w.path}: {w.message}")
        resource["status"] = {**old, "conditions": list(admitted.status["conditions"])}
        _in_flight[0] += 1
        status = None
        try:
            # Apply the children; the status this computes is recomputed below, after the wait for the gate.
            await sync(resource, _settings(), apply_children=True, read_progress=False, logger=logger)
        except ValueError as exc:  # a spec the schema accepted but we cannot build: a person must fix it
            conds = set_condition(resource["status"]["conditions"], "Validated", False, "InvalidSpec", str(exc),
                                  generation)
            status = {**old, "conditions": conds, "phase": "Failed", "observedGeneration": generation,
                      "failure": {"reason": "InvalidSpec", "message": str(exc)}}
        finally:
            _in_flight[0] -= 1
        async with _GATE:
            if status is None:
                status = await sync(resource, _settings(), apply_children=False, read_progress=False,
                                    logger=logger)
            await _write_status(key, seen, status)
    _track(*key, status)
    _announce(body, old.get("phase"), status)
    return status


def _newer_cached(key: Key, used: dict[str, Any]) -> bool:
    cached = ftj_cache.get(key)
    return cached is not None and cached["metadata"].get("resourceVersion") != used["metadata"].get(
        "resourceVersion")


def _needs_reconcile(body: dict[str, Any]) -> bool:
    """A generation the status has not observed: a new job, a spec change, or a write lost to a crash."""
    return (body.get("status") or {}).get("observedGeneration") != body.get("metadata", {}).get("generation")


async def _reconcile_until_done(key: Key, logger: Any) -> None:
    """Reconcile until the newest generation is observed; API errors retry with backoff (1 s .. 60 s).

    Level-based: each pass reads the newest cached FineTuneJob, so a spec change during a pass is picked
    up by the next one, and a deleted job ends the loop.
    """
    delay, done_generation = 1.0, None
    try:
        while True:
            body = ftj_cache.get(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            generation = body["metadata"].get("generation")
            if done_generation is not None and (generation == done_generation or not _needs_reconcile(body)):
                return
            try:
                logger.info(f"reconciling generation {generation}")
                await instrumented(KIND, "reconcile")(reconcile)(body, logger)
                done_generation, delay = generation, 1.0
                continue
            except ApiException as exc:
                if exc.status == 409 and key in _stale:  # our status write met a newer FineTuneJob
                    if _newer_cached(key, body):
                        continue
                    return  # its watch event triggers the next pass, if it still needs one
                logger.warning(f"[{key[0]}/{key[1]}] reconcile failed, retrying in {delay:.0f} s: {exc}")
            except Exception as exc:  # noqa: BLE001 (retried: an API error, a timeout, a bug on one object)
                logger.warning(f"[{key[0]}/{key[1]}] reconcile failed, retrying in {delay:.0f} s: {exc}")
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)
    finally:
        _reconciling.discard(key)


def _trigger(key: Key, body: dict[str, Any], logger: Any) -> None:
    """Start a reconcile for a new generation, or for a live job first seen since start-up (the resume:
    re-apply children a crash may have left half-made). One at a time per job."""
    first = key not in _seen
    _seen.add(key)
    if first and not body.get("status"):
        WATCH_LAG.labels(KIND).observe(max(0.0, age_seconds(body)))
    if key in _reconciling or body["metadata"].get("deletionTimestamp"):
        return
    if _needs_reconcile(body) or (first and (body.get("status") or {}).get("phase") not in TERMINAL):
        _reconciling.add(key)
        task = asyncio.create_task(_reconcile_until_done(key, logger))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)


async def refresh(namespace: str, name: str, logger: Any, read_progress: bool = False) -> None:
    """Recompute one FineTuneJob's status from the cached view (the API where the cache has nothing)."""
    key = (namespace, name)
    async with _lock(namespace, name), _GATE:  # lock before gate, as in reconcile: no wait cycle
        _queued.discard(key)
        try:
            current = ftj_cache.get(key)
            if current is None or _validated(current) is not True:
                # Not seen yet, or seen before admission wrote Validated: ask the API, not a stale view.
                current = await asyncio.to_thread(kube.get, API_VERSION, KIND, namespace, name)
                current = ftj_cache.put(key, current) if current is not None else None
            if current is None or current.get("metadata", {}).get("deletionTimestamp"):
                _active.discard(key)
                return
            if _validated(current) is not True:
                return
            old = current.get("status") or {}
            # A private copy: the cached body is the baseline the write is diffed against.
            status = await sync({**current, "status": copy.deepcopy(old)}, _settings(), apply_children=False,
                                read_progress=read_progress, logger=logger)
            await _write_status(key, current, status)
        except ApiException as exc:
            if exc.status == 409 and key in _stale and current is not None:  # our write met a newer job
                if _newer_cached(key, current):
                    _schedule(key, logger)  # the newer FineTuneJob is here already: no event is coming for it
                else:  # not polled until it arrives (ftj_event); a paused replica's loop goes quiet
                    _active.discard(key)
                    _pending.discard(key)
            if exc.status in (404, 409):
                return
            raise kopf.TemporaryError(f"API error {exc.status}", delay=2) from exc
        except ValueError:
            return
    _track(namespace, name, status)
    _announce(current, old.get("phase"), status)
    prog = status.get("progress") or {}
    if read_progress and prog.get("summary") and prog != old.get("progress"):
        loss = prog.get("loss")
        LOG.info(f"[{namespace}/{name}] {prog['summary']}" + (f", loss {loss:.4g}" if loss is not None else "")
                 + f", ${(status.get('cost') or {}).get('usd') or 0:.2f}")


def debounce_seconds(api_latency: float) -> float:
    return min(DEBOUNCE_MAX_SECONDS, max(DEBOUNCE_SECONDS, DEBOUNCE_LATENCY_FACTOR * api_latency))


async def _debounced_refresh(key: Key, logger: Any) -> None:
    await asyncio.sleep(debounce_seconds(kube.latency_ewma))
    try:
        await instrumented(KIND, "child")(refresh)(key[0], key[1], logger)
    except Exception as exc:  # noqa: BLE001 (the status loop and the next event retry)
        logger.warning(f"status refresh of {key[0]}/{key[1]} failed: {exc}")


def _schedule(key: Key, logger: Any) -> None:
    """One refresh per burst of child events: a pod's life under kwok or a preemption is a dozen events
    within a second, and each refresh reads all of them from the cache anyway."""
    if key in _queued:
        return
    _queued.add(key)
    task = asyncio.create_task(_debounced_refresh(key, logger))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def job_event(type: str | None, body: kopf.Body, namespace: str, name: str, labels: dict[str, str],
                    logger: Any, **_: Any) -> None:
    """A Job of ours changed: cache it and refresh its FineTuneJob's status."""
    owner = labels.get(FTJ_LABEL)
    if not owner or name != job_name(owner):
        return
    key = (namespace, owner)
    if type == "DELETED":
        job_cache.drop(key)
    else:
        job_cache.put(key, body)
    _schedule(key, logger)


async def pod_event(type: str | None, body: kopf.Body, namespace: str, labels: dict[str, str], logger: Any,
                    **_: Any) -> None:
    """A trainer Pod changed: cache it and refresh its FineTuneJob's status."""
    owner = labels.get(FTJ_LABEL)
    if not owner:
        return
    key = (namespace, owner)
    if type == "DELETED":
        pod_cache.delete(key, body)
    else:
        pod_cache.put(key, body)
    _schedule(key, logger)


async def ftj_event(type: str | None, body: kopf.Body, namespace: str, name: str, logger: Any,
                    **_: Any) -> None:
    """Keep the newest FineTuneJob in the cache and reconcile what needs it; forget a deleted one."""
    key = (namespace, name)
    CENSUS.observe(KIND, namespace, name, body, deleted=type == "DELETED")
    if type == "DELETED":
        for store in (ftj_cache, job_cache):
            store.drop(key)
        pod_cache.forget(key)
        for keys in (_active, _pending, _seen, _stale):
            keys.discard(key)
    else:
        _trigger(key, ftj_cache.put(key, body), logger)
        if key in _stale:
            _schedule(key, logger)
        _loop.ensure()


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


def register(settings: Settings) -> None:
    """Register the reconciler, the status loop, child watches and the MLflow finalizer."""
    owned = {MANAGED_BY_LABEL: MANAGED_BY, FTJ_LABEL: kopf.PRESENT}
    _loop_interval[0] = min(settings.progress_interval_seconds, settings.cost_interval_seconds)

    @kopf.on.startup(id="finetunejobs-executor")
    async def _executor(**_: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(API_THREADS, "llmforge-api"))

    @kopf.on.cleanup(id="finetunejobs-status-loop-stop")
    async def _stop_loop(**_: Any) -> None:
        _loop.cancel()

    kopf.on.event("batch", "v1", "jobs", id="finetunejob-jobs", labels=owned)(job_event)
    kopf.on.event("v1", "pods", id="finetunejob-pods", labels=owned)(pod_event)
    kopf.on.event(GROUP, VERSION, PLURAL, id="finetunejobs-cache")(ftj_event)
    kopf.on.delete(GROUP, VERSION, PLURAL, id="finetunejobs-mlflow", when=mlflow_run_open)(mark_mlflow_killed)

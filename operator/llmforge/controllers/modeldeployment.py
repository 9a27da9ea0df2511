"""ModelDeployment reconciler: observe, decide, build, apply, derive status. Level-based and idempotent.

Every run (on create/update/resume, and on a timer for what changes without an event: load, canary
analysis, cost) does the same thing:

1. resolve adapter URIs from referenced FineTuneJobs (Succeeded, or already served per the live ConfigMap;
   otherwise that variant waits, WaitingForAdapter);
2. read the serving pods' /metrics and /v1/models (URL from `settings.serving_url_template`);
3. decide the canary's promotion step (pure `llmforge.promotion`), from the state kept in status, judging
   the canary on the counters since the step began (the baseline is kept in status.analysisWindow);
4. build the children (pure builders) and server-side apply them; delete the ones no longer built;
5. derive status from the children as they are now (pure `llmforge.status.modeldeployment`).

A ModelDeployment waiting for a FineTuneJob or an Evaluation learns of its change from the timer, which
reads them fresh every run: level-triggered, so nothing depends on catching the moment it changed. No
kopf handler watches those kinds for us (controllers/evaluation.py says why).

The blocking work runs in a thread; kopf events are emitted back on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from .. import API_VERSION, GROUP, VERSION
from .. import kube as kubeapi
from ..api.modeldeployment import ModelDeployment
from ..builders import modeldeployment as b
from ..promotion import Decision, Gate, Policy, Sample, State, decide, parse_interval, revision
from ..settings import Settings
from ..status.conditions import get_condition
from ..status.modeldeployment import CostInputs, ObservedVariant, compute_status, iso, parse_iso, rolled_out
from ..status.servingmetrics import PodMetrics, aggregate, loaded_adapters, parse_metrics, snapshot, window
from . import run
from .pricingcache import prices


class Kube:
    """The calls the reconciler makes, over the shared `llmforge.kube` helpers (one object so tests and the
    timer pass the same thing around)."""

    def __init__(self, field_manager: str = "llmforge", kind_ttl: float = 300.0):
        self.field_manager = field_manager
        self.kind_ttl = kind_ttl
        self._kinds: dict[tuple[str, str], tuple[bool, float]] = {}

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return kubeapi.apply(obj, self.field_manager)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return kubeapi.get(api_version, kind, namespace, name)

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return kubeapi.list_(api_version, kind, namespace, label_selector)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        kubeapi.delete(api_version, kind, namespace, name)

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the API server serves this kind (its CRD is installed), from discovery; cached."""
        hit = self._kinds.get((api_version, kind))
        if hit and time.monotonic() - hit[1] < self.kind_ttl:
            return hit[0]
        try:
            found = any(r.get("kind") == kind for r in kubeapi.request("GET", f"/apis/{api_version}")
                        .get("resources", []))
        except kubeapi.ApiException as e:
            if e.status != 404:
                raise
            found = False
        self._kinds[(api_version, kind)] = (found, time.monotonic())
        return found


_KUBE: Kube | None = None


def kube(field_manager: str) -> Kube:
    global _KUBE
    if _KUBE is None:
        _KUBE = Kube(field_manager)
    return _KUBE


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


#: (uid, variant) -> (monotonic time, generation tokens): the previous sample for tokens/s.
_TOKENS: dict[tuple[str, str], tuple[float, float]] = {}


# -- observation ----------------------------------------------------------------------------------------

def adapter_uris(k: Kube, md: ModelDeployment, namespace: str) -> dict[str, str]:
    """FineTuneJob name -> adapter URI: from Succeeded jobs, else as already served (b.resolve_adapter_uris)."""
    models = [md.spec.model] + ([md.spec.canary.model] if md.spec.canary else [])
    jobs = sorted({a.fine_tune_job_ref.name for m in models for a in m.adapters if a.fine_tune_job_ref})
    if not jobs:
        return {}
    ftjs = {job: k.get(API_VERSION, "FineTuneJob", namespace, job) for job in jobs}
    served: dict[str, str] = {}
    if any(b.finetunejob_adapter_uri(obj) is None for obj in ftjs.values()):
        name = md.metadata["name"]
        served = b.served_adapter_uris([k.get("v1", "ConfigMap", namespace, b.config_map_name(name, v))
                                        for v in (b.STABLE, b.CANARY)])
    return b.resolve_adapter_uris(md, ftjs, served)


def _fetch(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http to our own pods)
            return resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


def pod_url(settings: Settings, pod: dict[str, Any], variant: str, md_name: str) -> str:
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    return settings.serving_url_template.format(
        pod_ip=st.get("podIP", ""), port=b.SERVE_PORT, pod=meta.get("name", ""),
        namespace=meta.get("namespace", ""), variant=variant, name=md_name).rstrip("/")


def _pod_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return (not (pod.get("metadata") or {}).get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []))


def observe_pods(k: Kube, settings: Settings, namespace: str, md_name: str, variant: str,
                 ) -> tuple[list[PodMetrics], list[list[str]]]:
    """Each ready pod's metrics and loaded adapters (pods that do not answer are left out)."""
    sel = ",".join(f"{key}={val}" for key, val in b.selector(md_name, variant).items())
    metrics, adapters = [], []
    for pod in k.list("v1", "Pod", namespace, sel):
        if not _pod_ready(pod):
            continue
        base = pod_url(settings, pod, variant, md_name)
        text = _fetch(f"{base}/metrics", settings.serving_http_timeout_seconds)
        if text is not None:
            try:
                pm = parse_metrics(text)
            except ValueError:
                pass
            else:
                pm.pod = (pod.get("metadata") or {}).get("name", "")
                metrics.append(pm)
        models = _fetch(f"{base}/v1/models", settings.serving_http_timeout_seconds)
        if models is not None:
            try:
                adapters.append(loaded_adapters(json.loads(models)))
            except (ValueError, AttributeError):
                pass
    return metrics, adapters


def evaluation_gate(k: Kube, namespace: str, name: str) -> Gate:
    ev = k.get(API_VERSION, "Evaluation", namespace, name)
    if ev is None:
        return Gate(False, f"Evaluation {name} not found")
    cond = get_condition((ev.get("status") or {}).get("conditions"), "Passed")
    if cond and cond.get("status") == "True":
        return Gate(True, cond.get("message") or "Passed")
    phase = (ev.get("status") or {}).get("phase") or "Pending"
    detail = f": {cond.get('reason')} {cond.get('message') or ''}".rstrip() if cond else ""
    return Gate(False, f"Evaluation {name} is {phase}{detail}")


def previous_state(status: dict[str, Any]) -> State | None:
    if not status.get("canaryRevision") or status.get("promotionStep") is None:
        return None
    started = parse_iso(status.get("stepStartedAt"))
    return State(status["canaryRevision"], int(status["promotionStep"]), int(status.get("canaryWeight") or 0),
                 started.timestamp() if started else time.time(), status.get("promotionPhase") or "Progressing")


def analysis_window(prev_window: dict[str, Any] | None, prev: State | None, rev: str, pods: list[PodMetrics],
                    now: datetime) -> dict[str, Any]:
    """The window the canary is judged on this run: the one in status when it belongs to the current
    revision and step, else (first run, or a status written before windows existed) one starting now."""
    w = prev_window or {}
    if (prev is not None and prev.revision == rev and w.get("canaryRevision") == rev
            and w.get("step") == prev.step and isinstance(w.get("baseline"), list)):
        return {"canaryRevision": rev, "step": prev.step, "since": w.get("since"), "baseline": w["baseline"]}
    return {"canaryRevision": rev, "step": None if prev is None else prev.step, "since": iso(now),
            "baseline": snapshot(pods)}


def monitoring_kind(k: Kube) -> b.Monitoring:
    if k.has_kind("monitoring.googleapis.com/v1", "PodMonitoring"):
        return "podmonitoring"
    if k.has_kind("monitoring.coreos.com/v1", "ServiceMonitor"):
        return "servicemonitor"
    return None


def _tokens_per_second(uid: str, variant: str, tokens: float, pods: int) -> float | None:
    now = time.monotonic()
    if len(_TOKENS) > 4096:  # deleted resources leave entries behind: drop the ones not seen for an hour
        for key in [k for k, (t, _) in _TOKENS.items() if now - t > 3600]:
            del _TOKENS[key]
    prev = _TOKENS.get((uid, variant))
    _TOKENS[(uid, variant)] = (now, tokens)
    if pods == 0 or prev is None or now <= prev[0] or tokens < prev[1]:
        return None
    return (tokens - prev[1]) / (now - prev[0])


# -- the reconcile --------------------------------------------------------------------------------------

def reconcile_sync(body: dict[str, Any], settings: Settings, k: Kube, now: datetime | None = None,
                   logger: Any = None) -> Outcome:
    now = now or datetime.now(UTC)
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta.get("namespace", "default"), meta.get("uid", "")
    md = ModelDeployment.model_validate({"metadata": dict(meta), "spec": dict(body["spec"])})
    status = dict(body.get("status") or {})
    events: list[tuple[str, str, str]] = []

    uris = adapter_uris(k, md, namespace)
    accelerator = b.serving_accelerator(md.spec.resources, md.spec.model.base_model.name)
    rate, source = b.gpu_hour_rate(accelerator, md.spec.resources.spot, prices(settings, logger))
    gpus = max(b.gpu_count(accelerator, md.spec.resources), 1)

    observed: dict[str, tuple[list[PodMetrics], list[list[str]]]] = {
        v: observe_pods(k, settings, namespace, name, v) for v in (b.STABLE, b.CANARY)}

    canary = md.spec.canary
    decision: Decision | None = None
    analysis: dict[str, Any] | None = None
    if canary is not None and canary.promotion is not None:
        promo = canary.promotion
        policy = Policy(tuple(promo.steps), parse_interval(promo.interval), promo.analysis.max_error_rate,
                        promo.analysis.max_p95_latency_ms, promo.analysis.min_requests)
        prev = previous_state(status)
        rev = revision(canary.model_dump(by_alias=True, mode="json"))
        cpods = observed[b.CANARY][0]
        analysis = analysis_window(status.get("analysisWindow"), prev, rev, cpods, now)
        cm = window(cpods, analysis["baseline"])
        gate = evaluation_gate(k, namespace, promo.evaluation_ref.name)
        _, missing = b.resolve_model(canary.model, uris)
        if gate.passed and (missing or not observed[b.CANARY][1]):
            # Never send more traffic to a canary that is not serving (no ready pod answered /v1/models).
            gate = Gate(False, f"canary not serving: FineTuneJob {', '.join(missing)} has no adapter yet"
                        if missing else "canary not serving yet: no ready pod answers")
        decision = decide(prev, rev=rev, initial_weight=canary.weight, policy=policy, gate=gate,
                          sample=Sample(cm.requests, cm.errors, cm.p95_ms), now=now.timestamp())
        st = decision.state
        if st.phase == "Progressing" and (prev is None or (st.revision, st.step, st.step_started_at)
                                          != (prev.revision, prev.step, prev.step_started_at)):
            # A new step (or a new canary) is judged on its own traffic: the window restarts from the counters
            # now. RolledBack keeps the window that breached, so status shows the numbers that decided it.
            analysis = {"canaryRevision": st.revision, "step": st.step,
                        "since": iso(datetime.fromtimestamp(st.step_started_at, UTC)), "baseline": snapshot(cpods)}
            cm = window(cpods, analysis["baseline"])
        analysis.update(requests=cm.requests, errors=cm.errors, errorRate=cm.error_rate, p95LatencyMs=cm.p95_ms)
        if decision.transition:
            kind = "Warning" if decision.action == "RolledBack" else "Normal"
            events.append((kind, decision.action, f"canary {decision.previous_weight}% -> "
                                                  f"{decision.state.weight}%: {decision.reason}"))

    promoted = decision is not None and decision.state.phase == "Promoted"
    inputs = b.ServingInputs(adapter_uris=uris, promoted=promoted, monitoring=monitoring_kind(k),
                             health_check_policy=bool(md.spec.routing.gateway)
                             and k.has_kind(b.HEALTH_CHECK_API_VERSION, "HealthCheckPolicy"),
                             usd_per_gpu_hour=rate,
                             canary_weight=None if decision is None else decision.state.weight)
    if promoted:
        # Retire the canary once the stable Deployment runs the promoted model everywhere.
        wanted = {(c["kind"], c["metadata"]["name"]): c for c in b.build_children(md, settings, inputs)}
        stable_want = wanted.get(("Deployment", b.child_name(name, b.STABLE)))
        stable_now = k.get("apps/v1", "Deployment", namespace, b.child_name(name, b.STABLE))
        if stable_want and stable_now and rolled_out(stable_now) and _hash(stable_now) == _hash(stable_want):
            inputs = b.ServingInputs(**{**inputs.__dict__, "canary_retired": True})
    plans = b.variant_plans(md, inputs)
    children = b.build_children(md, settings, inputs)
    if md.spec.routing.gateway and not k.has_kind(b.ROUTE_API_VERSION, "HTTPRoute"):
        # A missing Gateway API must not stop serving: skip the route, say so.
        children = [c for c in children if c["kind"] != "HTTPRoute"]
        events.append(("Warning", "GatewayAPIMissing", "routing.gateway is set but the cluster serves no "
                       f"{b.ROUTE_API_VERSION} HTTPRoute: install the Gateway API CRDs; serving through the "
                       f"shared Service {name} meanwhile"))
    for child in children:
        k.apply(child)
    built = {(c["apiVersion"], c["kind"], c["metadata"]["name"]) for c in children}
    for api_version, kind, child in b.child_keys(name):
        if (api_version, kind, child) in built:
            continue
        if kind in ("PodMonitoring", "ServiceMonitor", "HTTPRoute", "HealthCheckPolicy") and not k.has_kind(
                api_version, kind):
            continue  # the cluster does not serve the kind, so there is nothing of it to prune
        existing = k.get(api_version, kind, namespace, child)
        if existing and ((existing.get("metadata") or {}).get("labels") or {}).get(b.LABEL_MD) == name:
            k.delete(api_version, kind, namespace, child)

    variants = []
    for plan in plans:
        pods_metrics, pods_adapters = observed[plan.name]
        agg = aggregate(pods_metrics)
        child = b.child_name(name, plan.name)
        variants.append(ObservedVariant(
            name=plan.name, weight=plan.weight, expected_adapters=[a.name for a in plan.model.adapters],
            missing_jobs=list(plan.missing),
            deployment=k.get("apps/v1", "Deployment", namespace, child) if plan.buildable else None,
            hpa=k.get("autoscaling/v2", "HorizontalPodAutoscaler", namespace, child)
            if plan.buildable and md.spec.autoscaling.enabled else None,
            pod_adapters=pods_adapters, metrics=agg,
            tokens_per_second=_tokens_per_second(uid, plan.name, agg.generation_tokens, agg.pods)))
    cost = CostInputs(gpus, rate, accelerator, md.spec.resources.spot, source)
    new_status = compute_status(body, variants, cost, endpoint=b.endpoint(name, namespace), decision=decision,
                                promotion_configured=decision is not None, now=now, analysis_window=analysis)
    return Outcome(new_status, events)


def _hash(deployment: dict[str, Any]) -> str | None:
    return (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "annotations", {}).get(b.ANNOTATION_CONFIG_HASH)


async def _run(body: kopf.Body, patch: kopf.Patch, logger: Any) -> None:
    settings = run.SETTINGS
    raw = {"metadata": dict(body.get("metadata", {})), "spec": dict(body.get("spec", {})),
           "status": dict(body.get("status", {}))}
    if "conditions" in patch.status:  # admission's verdict (Validated, Advice) from this same handler run
        raw["status"]["conditions"] = list(patch.status["conditions"])
    outcome = await asyncio.to_thread(reconcile_sync, raw, settings, kube(settings.field_manager), None, logger)
    for key, value in outcome.status.items():
        patch.status[key] = value
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=message[:1024])
        logger.info(f"{reason}: {message}")


async def reconcile(model: ModelDeployment, body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    """create/update/resume: apply at once (the admission already validated the spec)."""
    await _run(body, patch, logger)


def register(settings: Settings) -> None:
    """Register the reconciler and the analysis timer (call once, from handlers.register)."""
    from .handlers import RECONCILERS

    RECONCILERS["ModelDeployment"] = reconcile

    @kopf.timer(GROUP, VERSION, "modeldeployments", id="modeldeployments-analysis",
                interval=settings.analysis_interval_seconds, initial_delay=settings.analysis_interval_seconds)
    async def modeldeployment_analysis(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
        conds = (body.get("status") or {}).get("conditions") or []
        validated = get_condition(conds, "Validated")
        if validated is None or validated.get("status") != "True":
            return  # not admitted (yet): the create/update handler owns that status
        await _run(body, patch, logger)


"""ModelDeployment status, level-based: what the children, the pods and the promotion decision show now,
plus the little that must carry over (accrued cost, bounded histories) taken from the previous status.

Pure: the controller observes (Deployments, HPAs, pods' /metrics and /v1/models) and passes plain data.
`adaptersLoaded` is what the pods' /v1/models list — never the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..api.modeldeployment import VariantStatus
from ..api.phases import DeploymentPhase, PromotionPhase
from ..promotion import Decision
from .conditions import set_condition
from .servingmetrics import VariantMetrics

HISTORY_LIMIT = 20


@dataclass
class ObservedVariant:
    """One variant as observed this tick."""

    name: str
    weight: int
    expected_adapters: list[str] = field(default_factory=list)
    missing_jobs: list[str] = field(default_factory=list)
    """FineTuneJobs whose adapter is not available: the Deployment is not built yet."""
    deployment: dict[str, Any] | None = None
    hpa: dict[str, Any] | None = None
    pod_adapters: list[list[str]] = field(default_factory=list)
    """Adapters each answering ready pod lists in /v1/models."""
    metrics: VariantMetrics | None = None
    tokens_per_second: float | None = None


@dataclass
class CostInputs:
    gpus_per_replica: int
    """GPUs per replica (1 on cpu, priced per pod)."""
    rate_per_gpu_hour: float
    accelerator: str
    spot: bool
    pricing_source: str


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _dstatus(d: dict[str, Any] | None) -> dict[str, Any]:
    return (d or {}).get("status") or {}


def desired_replicas(v: ObservedVariant) -> int:
    if v.deployment is None:
        return 0
    return int((v.deployment.get("spec") or {}).get("replicas") or 0)


def rolled_out(d: dict[str, Any] | None) -> bool:
    """The Deployment controller has seen the latest template and every replica is updated and ready."""
    if d is None:
        return False
    st, spec = _dstatus(d), d.get("spec") or {}
    want = int(spec.get("replicas") or 0)
    return (st.get("observedGeneration", 0) >= (d.get("metadata") or {}).get("generation", 0)
            and int(st.get("updatedReplicas") or 0) >= want and int(st.get("readyReplicas") or 0) >= want
            and int(st.get("replicas") or 0) <= want and want > 0)


def deadline_exceeded(d: dict[str, Any] | None) -> bool:
    return any(c.get("type") == "Progressing" and c.get("status") == "False"
               for c in _dstatus(d).get("conditions") or [])


def adapters_loaded(v: ObservedVariant) -> list[str]:
    """Adapters listed by every pod that answered (empty when none answered)."""
    if not v.pod_adapters:
        return []
    common = set(v.pod_adapters[0])
    for names in v.pod_adapters[1:]:
        common &= set(names)
    return sorted(common)


def variant_status(v: ObservedVariant, cost: CostInputs) -> dict[str, Any]:
    """One entry of status.variants, serialised through the API model (its aliases are the CRD's names)."""
    st = _dstatus(v.deployment)
    out: dict[str, Any] = {"name": v.name, "weight": v.weight, "replicas": desired_replicas(v),
                           "ready_replicas": int(st.get("readyReplicas") or 0),
                           "adapters_loaded": adapters_loaded(v)}
    m = v.metrics
    if m is not None and m.pods:
        out["requests"] = m.requests
        if m.error_rate is not None:
            out["error_rate"] = round(m.error_rate, 6)
        if m.p95_ms is not None:
            out["p95_latency_ms"] = round(m.p95_ms, 1)
    if v.tokens_per_second is not None:
        out["tokens_per_second"] = round(v.tokens_per_second, 3)
        usd_per_hour = int(st.get("replicas") or 0) * cost.gpus_per_replica * cost.rate_per_gpu_hour
        if v.tokens_per_second > 0:
            out["cost_per_1k_tokens"] = float(f"{usd_per_hour / (v.tokens_per_second * 3.6):.6g}")
    return VariantStatus(**out).model_dump(by_alias=True, exclude_none=True, mode="json")


def _integral(value: Any) -> Any:
    """Whole floats as ints: the API server stores JSON numbers, so 0.0 comes back as 0 and kopf would
    report every patch as inconsistent."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _append(history: list[dict[str, Any]] | None, entry: dict[str, Any]) -> list[dict[str, Any]]:
    return ([*(history or []), entry])[-HISTORY_LIMIT:]


def scaling_history(prev_status: dict[str, Any], variants: list[ObservedVariant], now: datetime,
                    ) -> list[dict[str, Any]] | None:
    """Append one entry per variant whose desired replica count differs from the last status."""
    history = prev_status.get("scalingHistory")
    before = {v.get("name"): v.get("replicas") for v in prev_status.get("variants") or []}
    for v in variants:
        if v.deployment is None:
            continue
        old, new = before.get(v.name), desired_replicas(v)
        if old is None or old == new or new == 0:
            continue
        reason = "replicas changed"
        hst = _dstatus(v.hpa)
        if v.hpa is not None:
            metrics = ", ".join(_metric_text(m) for m in hst.get("currentMetrics") or [])
            reason = f"HPA desired {hst.get('desiredReplicas', new)}" + (f" ({metrics})" if metrics else "")
        history = _append(history, {"time": iso(now), "variant": v.name, "action": "Scaled", "from": old,
                                    "to": new, "reason": reason})
    return history


def _metric_text(m: dict[str, Any]) -> str:
    kind = m.get("type", "")
    body = m.get(kind[:1].lower() + kind[1:], {}) if kind else {}
    name = (body.get("metric") or {}).get("name") or body.get("name") or kind
    cur = body.get("current") or {}
    value = cur.get("averageValue", cur.get("averageUtilization", cur.get("value")))
    return f"{name}={value}"


def promotion_history(prev_status: dict[str, Any], decision: Decision | None, now: datetime,
                      ) -> list[dict[str, Any]] | None:
    history = prev_status.get("promotionHistory")
    if decision is None or decision.action in ("Hold", "Done"):
        return history
    last = (history or [{}])[-1]
    if not decision.transition and last.get("action") == decision.action and last.get("reason") == decision.reason:
        return history  # the same block or wait as last time: one entry, not one per tick
    entry = {"time": iso(now), "variant": "canary", "action": decision.action, "reason": decision.reason,
             "to": decision.state.weight}
    if decision.previous_weight is not None:
        entry["from"] = decision.previous_weight
    return _append(history, entry)


def accrue_cost(prev_cost: dict[str, Any] | None, usd_per_hour: float, cost: CostInputs,
                now: datetime) -> dict[str, Any]:
    """`usd` and `gpuHours` grow by the previous burn rate over the time since the previous update: a step
    sum that is exact while the replica count is constant between ticks."""
    prev = prev_cost or {}
    usd, gpu_hours = float(prev.get("usd") or 0.0), float(prev.get("gpuHours") or 0.0)
    then = parse_iso(prev.get("updatedAt"))
    if then is not None and now > then:
        hours = (now - then).total_seconds() / 3600.0
        prev_rate = float(prev.get("usdPerHour") or 0.0)
        usd += prev_rate * hours
        if prev.get("ratePerGpuHour"):
            gpu_hours += prev_rate / float(prev["ratePerGpuHour"]) * hours
    return {"usd": round(usd, 6), "gpuHours": round(gpu_hours, 6), "ratePerGpuHour": cost.rate_per_gpu_hour,
            "usdPerHour": round(usd_per_hour, 6), "accelerator": cost.accelerator, "spot": cost.spot,
            "pricingSource": cost.pricing_source, "updatedAt": iso(now)}


def compute_status(body: dict[str, Any], variants: list[ObservedVariant], cost: CostInputs, *,
                   endpoint: str, decision: Decision | None, promotion_configured: bool,
                   now: datetime, analysis_window: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status fields to patch (everything but kopf's own)."""
    prev = body.get("status") or {}
    gen = (body.get("metadata") or {}).get("generation")
    conds = list(prev.get("conditions") or [])
    t = iso(now)
    stable = next(v for v in variants if v.name == "stable")
    canary = next((v for v in variants if v.name == "canary"), None)

    def cond(type_: str, ok: bool | str, reason: str, message: str = "") -> None:
        nonlocal conds
        conds = set_condition(conds, type_, ok, reason, message, gen, now=t)

    # Available: the stable variant serves.
    stable_ready = int(_dstatus(stable.deployment).get("readyReplicas") or 0)
    if stable.missing_jobs:
        cond("Available", False, "WaitingForAdapter",
             f"FineTuneJob {', '.join(stable.missing_jobs)} has no adapter yet (status.output.adapterUri)")
    elif stable_ready > 0:
        cond("Available", True, "MinimumReplicasAvailable", f"{stable_ready} stable replica(s) ready")
    else:
        cond("Available", False, "NoReadyReplicas", "no stable replica is ready yet (weights may be loading)")

    # Ready: every variant rolled out, with every adapter loaded on its pods.
    problems: list[tuple[str, str]] = []
    for v in variants:
        if v.missing_jobs:
            problems.append(("WaitingForAdapter", f"{v.name}: FineTuneJob {', '.join(v.missing_jobs)} has no "
                                                  "adapter yet"))
        elif not rolled_out(v.deployment):
            st = _dstatus(v.deployment)
            problems.append(("RollingOut", f"{v.name}: {int(st.get('readyReplicas') or 0)}/"
                                           f"{desired_replicas(v)} ready, {int(st.get('updatedReplicas') or 0)} updated"))
        else:
            absent = sorted(set(v.expected_adapters) - set(adapters_loaded(v)))
            if absent:
                problems.append(("AdaptersNotLoaded", f"{v.name}: /v1/models does not list {', '.join(absent)}"))
    if problems:
        cond("Ready", False, problems[0][0], "; ".join(p[1] for p in problems))
    else:
        cond("Ready", True, "AllVariantsReady", ", ".join(f"{v.name} {desired_replicas(v)} ready"
                                                           for v in variants))

    if canary is not None:
        cready = int(_dstatus(canary.deployment).get("readyReplicas") or 0)
        absent = sorted(set(canary.expected_adapters) - set(adapters_loaded(canary)))
        if canary.missing_jobs:
            cond("CanaryReady", False, "WaitingForAdapter", f"FineTuneJob {', '.join(canary.missing_jobs)} has "
                                                            "no adapter yet")
        elif cready > 0 and not absent:
            cond("CanaryReady", True, "CanaryServing", f"{cready} canary replica(s) ready")
        elif cready > 0:
            cond("CanaryReady", False, "AdaptersNotLoaded", f"/v1/models does not list {', '.join(absent)}")
        else:
            cond("CanaryReady", False, "NoReadyReplicas", "no canary replica is ready yet")

    out: dict[str, Any] = {"canaryWeight": canary.weight if canary is not None else 0}
    if not promotion_configured or decision is None:
        reason = "NoCanary" if canary is None else "StaticSplit"
        cond("Promoting", False, reason, "no progressive promotion configured")
        cond("RolledBack", False, reason, "")
    else:
        st = decision.state
        if st.phase == PromotionPhase.PROGRESSING:
            cond("Promoting", True, decision.action if decision.action != "Hold" else "Holding", decision.reason)
            cond("RolledBack", False, "NotRolledBack", "")
        elif st.phase == PromotionPhase.PROMOTED:
            cond("Promoting", False, "Promoted", decision.reason if decision.transition else "canary promoted")
            cond("RolledBack", False, "NotRolledBack", "")
        else:
            if decision.action == "RolledBack":
                cond("RolledBack", True, "AnalysisFailed", decision.reason)
            cond("Promoting", False, "RolledBack", "canary rolled back to 0%")
        out.update(promotionStep=st.step, stepStartedAt=iso(datetime.fromtimestamp(st.step_started_at, UTC)),
                   promotionPhase=st.phase, canaryRevision=st.revision)
    # None clears a window left from a canary that no longer has a promotion (merge patch: null deletes).
    out["analysisWindow"] = analysis_window if promotion_configured and decision is not None else None

    ready_cond = next(c for c in conds if c["type"] == "Ready")
    prev_available = next((c for c in prev.get("conditions") or [] if c.get("type") == "Available"), None)
    degraded = any(deadline_exceeded(v.deployment) for v in variants) or (
        stable_ready == 0 and prev_available is not None and prev_available.get("status") == "True")
    phase = DeploymentPhase.READY if ready_cond["status"] == "True" else (
        DeploymentPhase.DEGRADED if degraded else DeploymentPhase.PROGRESSING)

    usd_per_hour = sum(int(_dstatus(v.deployment).get("replicas") or 0) for v in variants) \
        * cost.gpus_per_replica * cost.rate_per_gpu_hour
    desired = sum(desired_replicas(v) for v in variants)
    ready = sum(int(_dstatus(v.deployment).get("readyReplicas") or 0) for v in variants)
    out.update(
        phase=phase.value, observedGeneration=gen, conditions=conds, endpoint=endpoint, ready=f"{ready}/{desired}",
        variants=[variant_status(v, cost) for v in variants],
        cost=accrue_cost(prev.get("cost"), usd_per_hour, cost, now),
    )
    out = _integral(out)
    sh = scaling_history(prev, variants, now)
    if sh is not None:
        out["scalingHistory"] = sh
    ph = promotion_history(prev, decision, now)
    if ph is not None:
        out["promotionHistory"] = ph
    return out

"""ModelDeployment status derivation and serving-metrics parsing (pure, no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llmforge.promotion import Decision, State
from llmforge.status.modeldeployment import CostInputs, ObservedVariant, accrue_cost, compute_status
from llmforge.status.servingmetrics import (
    PodMetrics,
    aggregate,
    loaded_adapters,
    parse_metrics,
    quantile,
    snapshot,
    window,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
COST = CostInputs(gpus_per_replica=1, rate_per_gpu_hour=0.854, accelerator="nvidia-l4", spot=False,
                  pricing_source="test table")

VLLM_TEXT = """\
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 90.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 10.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="m"} 5000.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.5",model_name="m"} 50.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0",model_name="m"} 90.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="2.5",model_name="m"} 100.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 100.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 100.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 60.0
"""
USAGE_TEXT = """\
# TYPE llmforge_requests_total counter
llmforge_requests_total{model="m",variant="canary"} 200.0
# TYPE llmforge_request_errors_total counter
llmforge_request_errors_total{code="5xx",model="m",variant="canary"} 6.0
llmforge_request_errors_total{code="4xx",model="m",variant="canary"} 9.0
"""


def test_parse_vllm_only():
    m = parse_metrics(VLLM_TEXT)
    assert (m.source, m.requests, m.errors, m.generation_tokens, m.waiting) == ("vllm", 100, 0, 5000, 3)
    assert m.latency_buckets == {0.5: 50, 1.0: 90, 2.5: 100, float("inf"): 100}


def test_usage_middleware_counts_win_and_only_5xx_are_errors():
    m = parse_metrics(VLLM_TEXT + USAGE_TEXT)
    assert (m.source, m.requests, m.errors) == ("llmforge", 200, 6)


def test_http_handler_counts():
    text = ('# TYPE http_requests_total counter\n'
            'http_requests_total{handler="/v1/completions",method="POST",status="2xx"} 40.0\n'
            'http_requests_total{handler="/v1/completions",method="POST",status="5xx"} 10.0\n'
            'http_requests_total{handler="/metrics",method="GET",status="2xx"} 999.0\n')
    m = parse_metrics(text)
    assert (m.source, m.requests, m.errors) == ("http", 50, 10)


def test_quantile_interpolates_like_prometheus():
    buckets = {0.5: 50.0, 1.0: 90.0, 2.5: 100.0, float("inf"): 100.0}
    assert quantile(0.95, buckets) == pytest.approx(1.0 + 1.5 * 0.5)  # rank 95 inside (1.0, 2.5]
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.95, {}) is None and quantile(0.95, {1.0: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {1.0: 0.0, float("inf"): 10.0}) == 1.0  # only +Inf: the highest finite bound


def test_aggregate_sums_pods():
    a = aggregate([parse_metrics(VLLM_TEXT), parse_metrics(VLLM_TEXT + USAGE_TEXT)])
    assert a.pods == 2 and a.requests == 300 and a.errors == 6
    assert a.error_rate == pytest.approx(0.02)
    assert a.p95_ms == pytest.approx(1750.0)


def pod(name: str, requests: float, errors: float, fast: float, slow: float) -> PodMetrics:
    """`fast` requests took <= 0.5 s, `slow` ones between 2.5 s and 5 s."""
    return PodMetrics(requests=requests, errors=errors, pod=name, latency_buckets={
        0.5: fast, 1.0: fast, 2.5: fast, 5.0: fast + slow, float("inf"): fast + slow})


def test_window_judges_only_what_happened_since_the_baseline():
    # An early burst: 50 errors and slow requests in the first 100, before the window began.
    base = snapshot([pod("p1", 100, 50, 0, 100)])
    assert base == [{"pod": "p1", "requests": 100, "errors": 50,
                     "latencyBuckets": {"0.5": 0, "1.0": 0, "2.5": 0, "5.0": 100, "+Inf": 100}}]
    now = [pod("p1", 1100, 51, 1000, 100)]  # since then: 1000 fast requests, 1 error
    cumulative, since = aggregate(now), window(now, base)
    assert cumulative.error_rate == pytest.approx(51 / 1100) and cumulative.p95_ms > 2500
    assert (since.requests, since.errors) == (1000, 1)
    assert since.error_rate == pytest.approx(0.001)
    assert since.p95_ms == pytest.approx(475.0)  # rank 950 of 1000 inside (0, 0.5]


def test_window_is_not_diluted_by_history():
    base = snapshot([pod("p1", 10000, 0, 10000, 0)])
    now = [pod("p1", 10040, 8, 10000, 40)]  # a fresh breach: 8 of the last 40 failed, all slow
    assert aggregate(now).error_rate < 0.001
    w = window(now, base)
    assert (w.requests, w.errors) == (40, 8) and w.error_rate == pytest.approx(0.2)
    assert 2500 < w.p95_ms <= 5000


def test_window_counts_restarted_and_new_pods_whole_and_ignores_gone_ones():
    base = snapshot([pod("p1", 500, 5, 500, 0), pod("p2", 300, 0, 300, 0), pod("gone", 900, 90, 900, 0)])
    now = [pod("p1", 20, 2, 20, 0),     # restarted: its counters went down, all 20 are new
           pod("p2", 330, 3, 330, 0),   # 30 new, 3 errors
           pod("p3", 7, 0, 7, 0)]       # ready after the window began
    w = window(now, base)
    assert w.pods == 3 and (w.requests, w.errors) == (20 + 30 + 7, 2 + 3)
    assert w.latency_buckets[0.5] == 57
    # a JSON round trip (status) keeps the bucket bounds, +Inf included
    assert window(now, [{**b, "latencyBuckets": dict(b["latencyBuckets"])} for b in base]).requests == 57
    assert snapshot([PodMetrics(requests=1)]) == []  # a pod without a name cannot be keyed


def test_loaded_adapters_reads_parent():
    models = {"object": "list", "data": [
        {"id": "base", "root": "/models/base", "parent": None},
        {"id": "support", "root": "/adapters/s", "parent": "base"},
        {"id": "support-v2", "root": "/adapters/v2", "parent": "base"}]}
    assert loaded_adapters(models) == ["support", "support-v2"]
    assert loaded_adapters({"data": [{"id": "base"}]}) == []


def deployment(replicas, ready, updated=None, generation=2, observed=2, conditions=None, template_hash="h"):
    return {"metadata": {"generation": generation},
            "spec": {"replicas": replicas,
                     "template": {"metadata": {"annotations": {"llmforge.dev/serve-config-hash": template_hash}}}},
            "status": {"replicas": replicas, "readyReplicas": ready,
                       "updatedReplicas": replicas if updated is None else updated,
                       "observedGeneration": observed, "conditions": conditions or []}}


def body(status=None, generation=3):
    return {"metadata": {"name": "m", "namespace": "ns", "generation": generation}, "spec": {},
            "status": status or {}}


def status_of(variants, prev=None, decision=None, now=NOW):
    return compute_status(body(prev), variants, COST, endpoint="http://m.ns.svc:8000/v1", decision=decision,
                          promotion_configured=decision is not None, now=now)


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_ready_needs_rollout_and_adapters_loaded_on_pods():
    v = ObservedVariant("stable", 100, expected_adapters=["support"], deployment=deployment(2, 2),
                        pod_adapters=[["support"], []])
    s = status_of([v])
    assert s["phase"] == "Progressing" and cond(s, "Ready")["reason"] == "AdaptersNotLoaded"
    assert s["variants"][0]["adaptersLoaded"] == []  # one pod lacks it: not "loaded"
    v.pod_adapters = [["support"], ["support"]]
    s = status_of([v])
    assert s["phase"] == "Ready" and cond(s, "Ready")["status"] == "True" and cond(s, "Available")["status"] == "True"
    assert s["variants"][0]["adaptersLoaded"] == ["support"]
    assert s["ready"] == "2/2" and s["endpoint"] == "http://m.ns.svc:8000/v1" and s["observedGeneration"] == 3


def test_adapters_loaded_never_copied_from_spec():
    v = ObservedVariant("stable", 100, expected_adapters=["support"], deployment=deployment(1, 1), pod_adapters=[])
    s = status_of([v])
    assert s["variants"][0]["adaptersLoaded"] == [] and s["phase"] != "Ready"


def test_waiting_for_adapter():
    v = ObservedVariant("stable", 100, expected_adapters=["support"], missing_jobs=["ftj-1"])
    s = status_of([v])
    assert cond(s, "Ready")["reason"] == "WaitingForAdapter" and "ftj-1" in cond(s, "Ready")["message"]
    assert cond(s, "Available")["reason"] == "WaitingForAdapter" and s["phase"] == "Progressing"


def test_rolling_update_is_not_ready_and_deadline_is_degraded():
    v = ObservedVariant("stable", 100, deployment=deployment(2, 2, updated=1))
    assert cond(status_of([v]), "Ready")["reason"] == "RollingOut"
    v = ObservedVariant("stable", 100, deployment=deployment(2, 2, observed=1))
    assert cond(status_of([v]), "Ready")["status"] == "False"
    stuck = deployment(1, 0, conditions=[{"type": "Progressing", "status": "False",
                                          "reason": "ProgressDeadlineExceeded"}])
    assert status_of([ObservedVariant("stable", 100, deployment=stuck)])["phase"] == "Degraded"


def test_lost_all_replicas_after_available_is_degraded():
    prev = {"conditions": [{"type": "Available", "status": "True", "reason": "x"}]}
    s = status_of([ObservedVariant("stable", 100, deployment=deployment(1, 0))], prev=prev)
    assert s["phase"] == "Degraded"


def test_cost_rate_and_accrual():
    variants = [ObservedVariant("stable", 90, deployment=deployment(3, 3)),
                ObservedVariant("canary", 10, deployment=deployment(1, 1))]
    s = status_of(variants)
    assert s["cost"]["usdPerHour"] == pytest.approx(4 * 0.854)
    assert s["cost"]["usd"] == 0 and s["cost"]["pricingSource"] == "test table"
    later = status_of(variants, prev={"cost": s["cost"]}, now=NOW + timedelta(minutes=30))
    assert later["cost"]["usd"] == pytest.approx(2 * 0.854)
    assert later["cost"]["gpuHours"] == pytest.approx(2.0)
    # a restart (no previous timestamp) accrues nothing, never a negative or a jump
    assert accrue_cost({"usd": 5.0}, 1.0, COST, NOW)["usd"] == 5.0


def test_variant_numbers_and_cost_per_1k_tokens():
    m = aggregate([parse_metrics(VLLM_TEXT + USAGE_TEXT)])
    v = ObservedVariant("stable", 100, deployment=deployment(1, 1), metrics=m, tokens_per_second=100.0)
    vs = status_of([v])["variants"][0]
    assert vs["requests"] == 200 and vs["errorRate"] == pytest.approx(0.03) and vs["p95LatencyMs"] == 1750.0
    assert vs["tokensPerSecond"] == 100.0
    assert vs["costPer1KTokens"] == pytest.approx(0.854 / 360, rel=1e-5)  # $/h over 360k tokens/h, per 1k


def test_scaling_history_records_replica_changes_bounded():
    hpa = {"status": {"desiredReplicas": 3, "currentMetrics": [{"type": "Pods", "pods": {
        "metric": {"name": "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"},
        "current": {"averageValue": "12"}}}]}}
    prev = {"variants": [{"name": "stable", "replicas": 1}]}
    s = status_of([ObservedVariant("stable", 100, deployment=deployment(3, 1), hpa=hpa)], prev=prev)
    (entry,) = s["scalingHistory"]
    assert (entry["from"], entry["to"], entry["action"]) == (1, 3, "Scaled")
    assert "vllm:num_requests_waiting" in entry["reason"] and "12" in entry["reason"]
    assert "scalingHistory" not in status_of([ObservedVariant("stable", 100, deployment=deployment(1, 1))],
                                             prev={"variants": [{"name": "stable", "replicas": 1}]})
    long = {"variants": [{"name": "stable", "replicas": 1}],
            "scalingHistory": [{"action": "Scaled"}] * 20}
    assert len(status_of([ObservedVariant("stable", 100, deployment=deployment(2, 2))], prev=long)
               ["scalingHistory"]) == 20


def test_promotion_conditions_and_history():
    variants = [ObservedVariant("stable", 50, deployment=deployment(1, 1)),
                ObservedVariant("canary", 50, deployment=deployment(1, 1))]
    adv = Decision(State("rev", 1, 50, NOW.timestamp()), "Advanced", "Evaluation Passed; error rate 0", 10)
    s = status_of(variants, decision=adv)
    assert cond(s, "Promoting")["status"] == "True" and cond(s, "RolledBack")["status"] == "False"
    assert (s["canaryWeight"], s["promotionStep"], s["canaryRevision"]) == (50, 1, "rev")
    assert s["promotionHistory"][-1] == {"time": "2026-11-26T12:00:00Z", "variant": "canary",
                                         "action": "Advanced", "reason": "Evaluation Passed; error rate 0",
                                         "to": 50, "from": 10}
    blocked = Decision(State("rev", 1, 50, 0), "Blocked", "Evaluation e is Running")
    s2 = status_of(variants, prev=s, decision=blocked)
    s3 = status_of(variants, prev=s2, decision=blocked)
    assert [h["action"] for h in s3["promotionHistory"]] == ["Advanced", "Blocked"]  # not one per tick
    variants[1].weight = 0
    rb = Decision(State("rev", 1, 0, 0, "RolledBack"), "RolledBack", "error rate 0.0500 > maxErrorRate 0.01", 50)
    s4 = status_of(variants, prev=s3, decision=rb)
    assert cond(s4, "RolledBack")["status"] == "True" and "0.0500" in cond(s4, "RolledBack")["message"]
    assert cond(s4, "Promoting")["reason"] == "RolledBack" and s4["canaryWeight"] == 0
    # the next tick (Done) keeps the RolledBack condition and its numbers
    s5 = status_of(variants, prev=s4, decision=Decision(rb.state, "Done", "canary RolledBack"))
    assert cond(s5, "RolledBack")["status"] == "True" and "0.0500" in cond(s5, "RolledBack")["message"]


def test_no_canary_conditions():
    s = status_of([ObservedVariant("stable", 100, deployment=deployment(1, 1))])
    assert cond(s, "Promoting")["reason"] == "NoCanary" and s["canaryWeight"] == 0
    assert "CanaryReady" not in {c["type"] for c in s["conditions"]}


# -- the status the operator writes, read by the chart's Argo CD health check ------------------------------

def _argo_health(status: dict) -> dict:
    from pathlib import Path

    from tests.unit.test_argocd_health import run_health

    script = (Path(__file__).resolve().parents[2] / "charts/llmforge/argocd/ModelDeployment/health.lua").read_text()
    return run_health(script, {"apiVersion": "llmforge.dev/v1alpha1", "kind": "ModelDeployment",
                               "metadata": {"name": "m", "generation": 3}, "status": status})


def test_argocd_reads_operator_status():
    ready = ObservedVariant("stable", 100, expected_adapters=["a"], deployment=deployment(1, 1), pod_adapters=[["a"]])
    assert _argo_health(status_of([ready]))["status"] == "Healthy"
    rolling = ObservedVariant("stable", 100, deployment=deployment(2, 1, updated=1))
    assert _argo_health(status_of([rolling]))["status"] == "Progressing"
    canary = ObservedVariant("canary", 30, expected_adapters=["b"], deployment=deployment(1, 1), pod_adapters=[["b"]])
    promoting = Decision(State("rev", 0, 30, NOW.timestamp()), "Advanced", "Evaluation Passed", 10)
    h = _argo_health(status_of([ready, canary], decision=promoting))
    assert h["status"] == "Progressing" and "30%" in h["message"]
    rb = Decision(State("rev", 0, 0, NOW.timestamp(), "RolledBack"), "RolledBack", "error rate 0.2000 > 0.05", 30)
    h = _argo_health(status_of([ready, canary], decision=rb))
    assert h["status"] == "Degraded" and "0.2000" in h["message"]

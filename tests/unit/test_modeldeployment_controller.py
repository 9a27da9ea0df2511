"""The ModelDeployment reconcile step against an in-memory API (a fake of `Kube`, this module only): what is
applied, pruned and reported. The real API server runs in tests/k8s/test_modeldeployment_operator.py."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from llmforge.controllers import modeldeployment as c
from llmforge.settings import Settings

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class FakeKube:
    """Objects keyed by (kind, name); `kinds` are the CRD kinds the fake cluster serves."""

    def __init__(self, kinds: set[str] = frozenset()):
        self.objects: dict[tuple[str, str], dict] = {}
        self.kinds = set(kinds)
        self.applied: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str]] = []

    def apply(self, obj):
        key = (obj["kind"], obj["metadata"]["name"])
        self.applied.append(key)
        self.objects[key] = copy.deepcopy(obj)
        return obj

    def get(self, api_version, kind, namespace, name):
        return copy.deepcopy(self.objects.get((kind, name)))

    def list(self, api_version, kind, namespace, label_selector):
        return []

    def delete(self, api_version, kind, namespace, name):
        self.deleted.append((kind, name))
        self.objects.pop((kind, name), None)

    def has_kind(self, api_version, kind):
        return kind in self.kinds


def body(canary: bool = True, gateway: bool = True) -> dict:
    spec: dict = {"model": {"baseModel": {"name": "base", "uri": "gs://b/base"},
                            "adapters": [{"name": "a", "uri": "gs://b/a"}]},
                  "resources": {"accelerator": "nvidia-l4", "count": 1}}
    if canary:
        spec["canary"] = {"model": {"baseModel": {"name": "base", "uri": "gs://b/base"},
                                    "adapters": [{"name": "a2", "uri": "gs://b/a2"}]}, "weight": 20}
    if gateway:
        spec["routing"] = {"gateway": {"name": "gw"}}
    return {"metadata": {"name": "m", "namespace": "ns", "uid": "u1", "generation": 1}, "spec": spec,
            "status": {}}


@pytest.fixture(autouse=True)
def builtin_prices(monkeypatch):
    from llmforge.pricing import DEFAULT_PRICES

    monkeypatch.setattr(c, "prices", lambda settings, logger=None: DEFAULT_PRICES)


def test_applies_every_child_with_route_when_the_gateway_api_exists():
    k = FakeKube({"HTTPRoute"})
    out = c.reconcile_sync(body(), Settings(), k, NOW)
    kinds = sorted(kind for kind, _ in k.applied)
    assert kinds.count("Deployment") == 2 and "HTTPRoute" in kinds and "PodMonitoring" not in kinds
    assert not out.events
    assert out.status["canaryWeight"] == 20
    assert out.status["cost"]["usdPerHour"] == 0  # no pods yet: nothing burns


def test_missing_gateway_api_skips_the_route_and_warns():
    k = FakeKube(set())
    out = c.reconcile_sync(body(), Settings(), k, NOW)
    assert ("Deployment", "m-stable") in k.applied and not [a for a in k.applied if a[0] == "HTTPRoute"]
    (event,) = out.events
    assert event[:2] == ("Warning", "GatewayAPIMissing")


def test_removing_the_canary_prunes_its_children_only():
    k = FakeKube({"HTTPRoute", "PodMonitoring"})
    c.reconcile_sync(body(), Settings(), k, NOW)
    assert ("PodMonitoring", "m") in k.objects
    c.reconcile_sync(body(canary=False, gateway=False), Settings(), k, NOW)
    assert {("Deployment", "m-canary"), ("ConfigMap", "m-canary-serve"), ("HorizontalPodAutoscaler", "m-canary"),
            ("Service", "m-canary"), ("PodDisruptionBudget", "m-canary"), ("HTTPRoute", "m")} <= set(k.deleted)
    assert ("Deployment", "m-stable") in k.objects and ("Service", "m") in k.objects
    assert ("Deployment", "m-stable") not in k.deleted


def test_never_deletes_an_object_it_does_not_label_as_its_own():
    k = FakeKube({"HTTPRoute"})
    k.objects[("Deployment", "m-canary")] = {"metadata": {"name": "m-canary", "labels": {"app": "someone-else"}}}
    c.reconcile_sync(body(canary=False), Settings(), k, NOW)
    assert ("Deployment", "m-canary") not in k.deleted


def test_waiting_for_adapter_from_an_unfinished_finetunejob():
    k = FakeKube({"HTTPRoute"})
    b = body(canary=False)
    b["spec"]["model"]["adapters"] = [{"name": "a", "fineTuneJobRef": {"name": "job"}}]
    k.objects[("FineTuneJob", "job")] = {"status": {"phase": "Running", "output": {"adapterUri": "gs://x"}}}
    out = c.reconcile_sync(b, Settings(), k, NOW)
    assert ("Deployment", "m-stable") not in k.applied
    ready = next(x for x in out.status["conditions"] if x["type"] == "Ready")
    assert ready["reason"] == "WaitingForAdapter" and "job" in ready["message"]
    k.objects[("FineTuneJob", "job")]["status"]["phase"] = "Succeeded"
    c.reconcile_sync(b, Settings(), k, NOW)
    assert ("Deployment", "m-stable") in k.applied


def test_a_served_adapter_keeps_serving_when_its_finetunejob_runs_again():
    k = FakeKube({"HTTPRoute"})
    b = body(canary=False)
    b["spec"]["model"]["adapters"] = [{"name": "a", "fineTuneJobRef": {"name": "job"}}]
    k.objects[("FineTuneJob", "job")] = {"spec": {"output": {"uri": "gs://b/runs/job/"}},
                                         "status": {"phase": "Succeeded"}}
    c.reconcile_sync(b, Settings(), k, NOW)
    assert "uri: gs://b/runs/job/adapter" in k.objects[("ConfigMap", "m-stable-serve")]["data"]["serve.yaml"]
    # Retrained (or its status rewritten): the variant already serving that adapter is not torn down.
    k.objects[("FineTuneJob", "job")]["status"]["phase"] = "Running"
    out = c.reconcile_sync(b, Settings(), k, NOW)
    assert ("Deployment", "m-stable") not in k.deleted and ("Deployment", "m-stable") in k.objects
    ready = next(x for x in out.status["conditions"] if x["type"] == "Ready")
    assert ready["reason"] != "WaitingForAdapter"
    assert "uri: gs://b/runs/job/adapter" in k.objects[("ConfigMap", "m-stable-serve")]["data"]["serve.yaml"]


def test_promotion_never_advances_a_canary_that_is_not_serving():
    k = FakeKube({"HTTPRoute"})
    k.objects[("Evaluation", "ev")] = {"status": {"phase": "Succeeded", "conditions": [
        {"type": "Passed", "status": "True", "reason": "Passed", "message": "all thresholds met"}]}}
    b = body()
    b["spec"]["canary"]["weight"] = 0
    b["spec"]["canary"]["promotion"] = {"evaluationRef": {"name": "ev"}, "steps": [50, 100], "interval": "1s"}
    first = c.reconcile_sync(b, Settings(), k, NOW)
    assert first.status["promotionHistory"][-1]["action"] == "Started"
    later = {**b, "status": first.status}
    out = c.reconcile_sync(later, Settings(), k, NOW.replace(minute=5))  # interval long over, eval Passed
    promoting = next(x for x in out.status["conditions"] if x["type"] == "Promoting")
    assert promoting["reason"] == "Blocked" and "canary not serving" in promoting["message"]
    assert out.status["canaryWeight"] == 0


def test_canary_analysis_judges_the_step_window_kept_in_status(monkeypatch):
    """The baseline lives in status: a second run (as after an operator restart) judges only what came after."""
    from llmforge.status.servingmetrics import PodMetrics

    counters = {"requests": 100.0, "errors": 50.0}  # an early burst of errors before the step began

    def observe(k, settings, namespace, md_name, variant):
        if variant != "canary":
            return [], [["a"]]
        return [PodMetrics(requests=counters["requests"], errors=counters["errors"], pod="m-canary-0",
                           latency_buckets={0.5: counters["requests"], float("inf"): counters["requests"]})], [["a2"]]

    monkeypatch.setattr(c, "observe_pods", observe)
    k = FakeKube({"HTTPRoute"})
    k.objects[("Evaluation", "ev")] = {"status": {"phase": "Succeeded", "conditions": [
        {"type": "Passed", "status": "True", "reason": "Passed", "message": "ok"}]}}
    b = body()
    b["spec"]["canary"]["promotion"] = {"evaluationRef": {"name": "ev"}, "steps": [50, 100], "interval": "1h",
                                        "analysis": {"maxErrorRate": 0.05, "minRequests": 10}}
    first = c.reconcile_sync(b, Settings(), k, NOW)
    window = first.status["analysisWindow"]
    assert window["baseline"][0]["requests"] == 100 and window["requests"] == 0
    counters["requests"] += 40  # 40 clean requests since: cumulative 50/140 would breach, the window does not
    second = c.reconcile_sync({**b, "status": first.status}, Settings(), k, NOW.replace(minute=1))
    assert second.status["promotionPhase"] == "Progressing", second.status["conditions"]
    assert second.status["analysisWindow"]["requests"] == 40 and second.status["analysisWindow"]["errorRate"] == 0
    assert second.status["analysisWindow"]["since"] == first.status["analysisWindow"]["since"]
    counters["requests"] += 10
    counters["errors"] += 5  # a fresh breach: 5 of the window's 50
    third = c.reconcile_sync({**b, "status": second.status}, Settings(), k, NOW.replace(minute=2))
    assert third.status["promotionPhase"] == "RolledBack"
    rolled = next(x for x in third.status["conditions"] if x["type"] == "RolledBack")
    assert "5/50" in rolled["message"] and third.status["analysisWindow"]["errors"] == 5

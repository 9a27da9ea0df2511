"""ModelDeployment builders: the serving children, without a cluster, and `llmforge render`."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmforge.api import serving
from llmforge.api.modeldeployment import ModelDeployment
from llmforge.builders import BUILDERS, render_children
from llmforge.builders import modeldeployment as b
from llmforge.builders.modeldeployment import gpu_hour_rate, serving_accelerator
from llmforge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "05-modeldeployment-canary.yaml"


def example() -> dict:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace="prod", uid="1234-uid")
    return doc


def md_of(doc: dict) -> ModelDeployment:
    return ModelDeployment.model_validate(doc)


URIS = {"support-llama31-8b": "gs://b/ftj/support/adapter", "support-v2": "gs://b/ftj/v2/adapter"}


def children(doc: dict | None = None, **inputs) -> dict[tuple[str, str], dict]:
    doc = doc or example()
    inputs.setdefault("adapter_uris", URIS)
    out = b.build_children(md_of(doc), Settings(), b.ServingInputs(**inputs))
    keyed = {(c["kind"], c["metadata"]["name"]): c for c in out}
    assert len(keyed) == len(out), "child names must be unique per kind"
    return keyed


def test_registered_for_render():
    assert BUILDERS["ModelDeployment"] is b.render
    kinds = [c["kind"] for c in render_children(example(), Settings())]
    assert kinds.count("Deployment") == 2 and kinds.count("HorizontalPodAutoscaler") == 2
    assert {"ConfigMap", "Service", "PodDisruptionBudget", "HTTPRoute", "PodMonitoring"} <= set(kinds)


def test_every_child_is_labelled_and_owned():
    for (kind, name), obj in children().items():
        meta = obj["metadata"]
        assert meta["namespace"] == "prod"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "llmforge"
        assert meta["labels"][b.LABEL_MD] == "support", (kind, name)
        assert meta["ownerReferences"] == [{"apiVersion": "llmforge.dev/v1alpha1", "kind": "ModelDeployment",
                                            "name": "support", "uid": "1234-uid", "controller": True,
                                            "blockOwnerDeletion": True}]


def test_deployment_per_variant_runs_llmforge_serve_with_gpu_placement():
    c = children()
    for variant in ("stable", "canary"):
        dep = c[("Deployment", f"support-{variant}")]
        assert dep["spec"]["selector"]["matchLabels"] == {b.LABEL_MD: "support", b.LABEL_VARIANT: variant}
        tmpl = dep["spec"]["template"]
        assert tmpl["metadata"]["labels"][b.LABEL_VARIANT] == variant
        pod = tmpl["spec"]
        (ctr,) = pod["containers"]
        assert ctr["command"] == ["llmforge-serve", "--config", "/etc/llmforge/serve.yaml"]
        assert ctr["image"] == Settings().server_image
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 1
        # sized to the g2-standard-8 that carries one L4 (75 %, the shared placement rule)
        assert ctr["resources"]["requests"] == {"cpu": "6", "memory": "24Gi"}
        # on-demand stays off spot nodes
        assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert ctr["startupProbe"]["httpGet"]["path"] == "/health"
        assert ctr["startupProbe"]["periodSeconds"] * ctr["startupProbe"]["failureThreshold"] >= 1200
        assert ctr["readinessProbe"]["httpGet"]["path"] == ctr["livenessProbe"]["httpGet"]["path"] == "/health"
        assert ctr["securityContext"]["runAsNonRoot"] and not ctr["securityContext"]["allowPrivilegeEscalation"]
        assert pod["securityContext"]["runAsNonRoot"]
        assert pod["serviceAccountName"] == "llmforge-server"
        assert tmpl["metadata"]["annotations"]["prometheus.io/port"] == "8000"
        assert {"name": "config", "configMap": {"name": f"support-{variant}-serve"}} in pod["volumes"]


def test_replicas_absent_while_hpa_owns_scaling_and_present_without():
    c = children()
    assert "replicas" not in c[("Deployment", "support-stable")]["spec"]
    doc = example()
    doc["spec"]["autoscaling"] = {"enabled": False, "minReplicas": 2, "maxReplicas": 2}
    c2 = children(doc)
    assert c2[("Deployment", "support-stable")]["spec"]["replicas"] == 2
    assert not [k for k in c2 if k[0] == "HorizontalPodAutoscaler"]


def test_serve_config_resolves_adapters_and_tensor_parallel():
    doc = example()
    doc["spec"]["resources"] = {"accelerator": "nvidia-a100-80gb", "count": 4, "spot": True}
    rate = gpu_hour_rate("nvidia-a100-80gb", True)[0]
    c = children(doc, usd_per_gpu_hour=rate)
    cfg = yaml.safe_load(c[("ConfigMap", "support-stable-serve")]["data"]["serve.yaml"])
    assert cfg["variant"] == "stable" and cfg["gpuCount"] == 4 and cfg["port"] == 8000
    assert cfg["model"]["adapters"] == [{"name": "support", "uri": "gs://b/ftj/support/adapter"}]
    assert cfg["vllm"]["enablePrefixCaching"] is True
    assert cfg["usdPerHour"] == pytest.approx(4 * rate) and rate > 0
    canary_cfg = yaml.safe_load(c[("ConfigMap", "support-canary-serve")]["data"]["serve.yaml"])
    assert canary_cfg["model"]["adapters"] == [{"name": "support-v2", "uri": "gs://b/ftj/v2/adapter"}]
    pod = c[("Deployment", "support-stable")]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb",
                                   "cloud.google.com/gke-spot": "true"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "affinity" not in pod


def test_serve_config_validates_against_the_server_contract():
    c = children()
    for variant in ("stable", "canary"):
        cfg = yaml.safe_load(c[("ConfigMap", f"support-{variant}-serve")]["data"]["serve.yaml"])
        parsed = serving.ServeConfig.model_validate(cfg)
        assert parsed.variant == variant and parsed.model.adapters


def test_unresolved_adapter_leaves_variant_without_deployment():
    c = children(adapter_uris={"support-llama31-8b": "gs://b/a"})
    assert ("Deployment", "support-stable") in c
    assert ("Deployment", "support-canary") not in c and ("ConfigMap", "support-canary-serve") not in c
    assert ("Service", "support-canary") in c  # the route keeps a valid backend
    plans = b.variant_plans(md_of(example()), b.ServingInputs(adapter_uris={}))
    assert [p.missing for p in plans] == [("support-llama31-8b",), ("support-v2",)]


def test_adapter_uri_only_from_a_succeeded_finetunejob():
    job = {"spec": {"output": {"uri": "gs://b/runs/j/"}}, "status": {"phase": "Succeeded"}}
    assert b.finetunejob_adapter_uri(job) == "gs://b/runs/j/adapter"
    job["status"]["output"] = {"adapterUri": "gs://b/elsewhere/adapter"}
    assert b.finetunejob_adapter_uri(job) == "gs://b/elsewhere/adapter"
    for phase in ("Pending", "Running", "Failed", None):
        assert b.finetunejob_adapter_uri({**job, "status": {**job["status"], "phase": phase}}) is None
    assert b.finetunejob_adapter_uri(None) is None


def test_resolve_keeps_what_is_served_for_a_job_that_is_not_succeeded_now():
    md = md_of(example())
    done = {"spec": {"output": {"uri": "gs://b/runs/v2/"}}, "status": {"phase": "Succeeded"}}
    again = {"spec": {"output": {"uri": "gs://b/runs/s/"}}, "status": {"phase": "Running"}}
    stable_cm = b.build_config_map(md, b.variant_plans(md, b.ServingInputs(adapter_uris=URIS))[0],
                                   {"model": {"adapters": [{"name": "support", "uri": "gs://old/support"}]}})
    served = b.served_adapter_uris([stable_cm, None, {"data": {"serve.yaml": ": not yaml ["}}])
    assert served == {"support": "gs://old/support"}
    jobs = {"support-llama31-8b": again, "support-v2": done}
    names = {a.name: a.fine_tune_job_ref.name for m in (md.spec.model, md.spec.canary.model) for a in m.adapters}
    assert names["support"] == "support-llama31-8b"  # the example's stable adapter comes from that job
    assert b.resolve_adapter_uris(md, jobs, served) == {"support-llama31-8b": "gs://old/support",
                                                        "support-v2": "gs://b/runs/v2/adapter"}
    # never served and not Succeeded: it waits
    assert b.resolve_adapter_uris(md, jobs, {}) == {"support-v2": "gs://b/runs/v2/adapter"}


def test_spec_change_changes_the_pod_template():
    before = children()[("Deployment", "support-stable")]["spec"]["template"]
    doc = example()
    doc["spec"]["vllm"]["maxModelLen"] = 4096
    after = children(doc)[("Deployment", "support-stable")]["spec"]["template"]
    assert before["metadata"]["annotations"][b.ANNOTATION_CONFIG_HASH] != \
        after["metadata"]["annotations"][b.ANNOTATION_CONFIG_HASH]


def test_services_variant_and_shared():
    c = children()
    assert c[("Service", "support")]["spec"]["selector"] == {b.LABEL_MD: "support"}
    assert c[("Service", "support-canary")]["spec"]["selector"] == {b.LABEL_MD: "support", b.LABEL_VARIANT: "canary"}
    assert c[("Service", "support")]["spec"]["ports"][0]["port"] == 8000
    assert b.endpoint("support", "prod") == "http://support.prod.svc:8000/v1"


def test_hpa_on_managed_prometheus_metric_and_cpu_fallback():
    hpa = children()[("HorizontalPodAutoscaler", "support-stable")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "support-stable"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"},
        "target": {"type": "AverageValue", "averageValue": "5"}}}]
    assert b.hpa_metric("cpu", 70) == {"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 70}}}
    assert b.hpa_metric("vllm:kv_cache_usage_perc", 0.8)["pods"]["target"]["averageValue"] == "800m"
    custom = "prometheus.googleapis.com|vllm:num_requests_running|gauge"
    assert b.hpa_metric(custom, 3)["pods"]["metric"]["name"] == custom


def test_httproute_weights_and_header_rules():
    route = children(canary_weight=30)[("HTTPRoute", "support")]
    spec = route["spec"]
    assert spec["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "llm-gateway",
                                   "namespace": "gateway"}]
    header_rules = [r for r in spec["rules"] if "headers" in r["matches"][0]]
    assert [(r["matches"][0]["headers"][0]["value"], r["backendRefs"][0]["name"]) for r in header_rules] == [
        ("stable", "support-stable"), ("canary", "support-canary")]
    assert all(r["matches"][0]["headers"][0]["name"] == "x-llmforge-variant" for r in header_rules)
    weighted = spec["rules"][-1]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in weighted] == [("support-stable", 70), ("support-canary", 30)]
    # Without a promotion state the spec's weight applies; no gateway, no route.
    assert [r["weight"] for r in children()[("HTTPRoute", "support")]["spec"]["rules"][-1]["backendRefs"]] == [90, 10]
    doc = example()
    del doc["spec"]["routing"]["gateway"]
    assert not [k for k in children(doc) if k[0] == "HTTPRoute"]


def test_promoted_stable_serves_canary_model_and_retired_canary_is_gone():
    c = children(promoted=True)
    stable_cfg = yaml.safe_load(c[("ConfigMap", "support-stable-serve")]["data"]["serve.yaml"])
    assert stable_cfg["model"]["adapters"][0]["name"] == "support-v2"
    assert [r["weight"] for r in c[("HTTPRoute", "support")]["spec"]["rules"][-1]["backendRefs"]] == [0, 100]
    retired = children(promoted=True, canary_retired=True)
    assert not [k for k in retired if k[1].startswith("support-canary")]
    assert [(r["name"], r["weight"]) for r in retired[("HTTPRoute", "support")]["spec"]["rules"][-1]["backendRefs"]] \
        == [("support-stable", 100)]


def test_monitoring_only_when_flagged():
    assert not [k for k in children() if k[0] in ("PodMonitoring", "ServiceMonitor")]
    pm = children(monitoring="podmonitoring")[("PodMonitoring", "support")]
    assert pm["apiVersion"] == "monitoring.googleapis.com/v1"
    assert pm["spec"]["endpoints"][0]["port"] == "http"
    sm = children(monitoring="servicemonitor")[("ServiceMonitor", "support")]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"


def test_health_check_policy_per_variant_service_only_with_gateway_and_crd():
    assert not [k for k in children() if k[0] == "HealthCheckPolicy"]  # the cluster lacks the CRD
    c = children(health_check_policy=True)
    policies = {k: v for k, v in c.items() if k[0] == "HealthCheckPolicy"}
    assert sorted(name for _, name in policies) == ["support-canary", "support-stable"]
    for (_, name), hcp in policies.items():
        assert hcp["apiVersion"] == "networking.gke.io/v1"
        target = hcp["spec"]["targetRef"]
        assert target == {"group": "", "kind": "Service", "name": name} and ("Service", name) in c
        check = hcp["spec"]["default"]["config"]
        assert check["type"] == "HTTP"
        # the path and port the Deployment's own probes use, i.e. where vLLM answers
        deployment = c[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]
        assert check["httpHealthCheck"]["requestPath"] == deployment["readinessProbe"]["httpGet"]["path"] == "/health"
        assert check["httpHealthCheck"]["port"] == deployment["ports"][0]["containerPort"]
        assert check["httpHealthCheck"]["portSpecification"] == "USE_FIXED_PORT"
        assert hcp["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    doc = example()
    del doc["spec"]["routing"]["gateway"]  # no gateway, no load balancer to health-check
    assert not [k for k in children(doc, health_check_policy=True) if k[0] == "HealthCheckPolicy"]
    keys = b.child_keys("support")
    assert ("networking.gke.io/v1", "HealthCheckPolicy", "support-canary") in keys  # pruned with the canary


def test_pdb_allows_one_disruption():
    pdb = children()[("PodDisruptionBudget", "support-stable")]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {b.LABEL_MD: "support",
                                                                            b.LABEL_VARIANT: "stable"}}}


def test_without_canary_only_stable():
    doc = example()
    del doc["spec"]["canary"]
    c = children(doc)
    assert not [k for k in c if "canary" in k[1]]
    assert [r["weight"] for r in c[("HTTPRoute", "support")]["spec"]["rules"][-1]["backendRefs"]] == [100]


def test_child_keys_cover_every_child():
    doc = example()
    everything = children(doc, monitoring="podmonitoring")
    keys = {(k, n) for _, k, n in b.child_keys("support")}
    assert set(everything) <= keys


def test_builder_is_pure():
    doc = example()
    snapshot = copy.deepcopy(doc)
    first = b.build_children(md_of(doc), Settings(), b.ServingInputs(adapter_uris=URIS))
    second = b.build_children(md_of(doc), Settings(), b.ServingInputs(adapter_uris=URIS))
    assert first == second and doc == snapshot


@pytest.mark.parametrize(("name", "count", "want"), [
    ("meta-llama/Llama-3.1-8B-Instruct", 1, "nvidia-l4"),
    ("mistralai/Mistral-7B-v0.3", 1, "nvidia-l4"),
    ("meta-llama/Llama-3.1-70B-Instruct", 1, "nvidia-h100-80gb"),
    ("meta-llama/Llama-3.1-70B-Instruct", 4, "nvidia-a100-80gb"),
    (None, 1, "nvidia-l4"),
])
def test_auto_accelerator(name, count, want):
    from llmforge.api.common import Resources

    assert serving_accelerator(Resources(accelerator="auto", count=count), name) == want


def test_cpu_accelerator_has_no_gpu():
    doc = example()
    doc["spec"]["resources"] = {"accelerator": "cpu", "count": 1, "cpu": "100m", "memory": "256Mi"}
    pod = children(doc)[("Deployment", "support-stable")]["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                 "limits": {"memory": "256Mi"}}


def test_render_cli_prints_the_children():
    env = {"PYTHONPATH": f"{ROOT / 'operator'}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "llmforge.cli.main", "render", "-f", str(EXAMPLE), "-n", "ml"],
                         capture_output=True, text=True, env=env, check=True).stdout
    docs = list(yaml.safe_load_all(out))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("Deployment") == 2, kinds
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["metadata"]["namespace"] == "ml"
    assert "replicas" not in dep["spec"]
    cfg = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["serve.yaml"])
    assert cfg["model"]["adapters"][0]["uri"].startswith("<FineTuneJob support-llama31-8b")

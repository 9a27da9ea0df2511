"""The Helm chart, rendered by the Go-built helm and checked offline: lint, Kubernetes 1.34 schemas, security
contexts, RBAC shape, peering, settings wiring, values schema and documentation, generated-file drift.

No cluster needed (the install test is tests/k8s/test_chart_install.py). helm comes from `make setup-k8s`;
without it these tests fail rather than skip, so a CI that forgot the build is red.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmforge.devcluster import assets
from llmforge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmforge"
KUBE_VERSION = "1.34.4"

_spec = importlib.util.spec_from_file_location("chartgen", ROOT / "scripts" / "chartgen.py")
chartgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chartgen)

#: Value sets every test renders: the defaults, and everything switched on.
FULL = ["--set", "operator.replicas=3", "--set", "operator.watchNamespaces={ml,research}",
        "--set", "pricing.enabled=true", "--set", "pricing.date=2026-11-26", "--set", "pricing.source=negotiated",
        "--set-json", 'pricing.accelerators={"nvidia-l4": {"onDemand": 0.8, "spot": 0.3}}',
        "--set", "metrics.podMonitoring.enabled=true", "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "serviceAccount.annotations.team=ml"]
HA_CLUSTERWIDE = ["--set", "operator.replicas=2"]
VALUE_SETS = {"default": [], "full": FULL, "ha-clusterwide": HA_CLUSTERWIDE,
              "crds-and-rbac-only": ["--set", "operator.enabled=false"]}
#: Kinds with no schema in kubernetes-validate: third-party CRDs, checked by hand below.
NOT_BUILTIN = {"PodMonitoring", "ServiceMonitor", "KopfPeering", "ClusterKopfPeering"}


@pytest.fixture(scope="session")
def helm() -> str:
    path = assets.find("helm")
    if path is None:
        pytest.fail("helm not built: run `make setup-k8s` (scripts/build-k8s.sh)")
    return str(path)


def render(helm: str, *args: str, crds: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [helm, "template", "rel", str(CHART), "--namespace", "llmforge-system", "--kube-version", KUBE_VERSION]
    if crds:
        cmd.append("--include-crds")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, check=check, timeout=120)


def objects(helm: str, *args: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(render(helm, *args).stdout) if d]
    assert docs
    return docs


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in docs]
    return found[0]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict(helm, values):
    out = subprocess.run([helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_object_validates_against_kubernetes_1_34(helm, values):
    validated = 0
    for doc in objects(helm, *values):
        if doc["kind"] in NOT_BUILTIN:
            assert doc["apiVersion"] in {"monitoring.googleapis.com/v1", "monitoring.coreos.com/v1", "kopf.dev/v1"}
            continue
        kubernetes_validate.validate(doc, "1.34.0", strict=True)
        validated += 1
    assert validated >= (5 + 2 if values != VALUE_SETS["crds-and-rbac-only"] else 5)


def test_validation_catches_a_wrong_field(helm):
    """Guard for the test above: strict validation must reject an unknown field in a rendered object."""
    deployment = one(objects(helm), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.34.0", strict=True)


def test_pod_runs_locked_down(helm):
    pod = one(objects(helm), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["resources"]["limits"]["memory"]


def test_settings_wiring_matches_the_operator(helm):
    """Every LLMFORGE_* variable the chart sets is a real setting that parses; ports and paths agree."""
    docs = objects(helm, *FULL)
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "llmforge-system") for e in container["env"]}
    assert env.pop("POD_ID") == "llmforge-system"  # from the downward API (kopf's peering identity)
    assert env.pop("MALLOC_ARENA_MAX") == "2"  # glibc, not ours: bounds RSS with the API thread pool
    assert all(k.startswith("LLMFORGE_") for k in env)
    fields = {f"LLMFORGE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    settings = Settings.from_env(env)
    assert settings.namespaces == ["ml", "research"]
    assert settings.pricing_configmap == Settings().pricing_configmap == "llmforge-pricing"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == Settings().metrics_port
    assert Settings().liveness.endswith(f":{ports['healthz']}{container['livenessProbe']['httpGet']['path']}")
    assert "--liveness=" + Settings().liveness in container["args"]
    pricing = one(docs, "ConfigMap")
    assert pricing["metadata"]["name"] == settings.pricing_configmap
    prices = yaml.safe_load(pricing["data"]["prices.yaml"])
    assert prices == {"date": "2026-11-26", "source": "negotiated",
                      "accelerators": {"nvidia-l4": {"onDemand": 0.8, "spot": 0.3}}}


def test_chart_defaults_are_the_operator_defaults(helm):
    """With default values, every setting the chart passes equals the operator's own default."""
    container = one(objects(helm), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e and e["name"].startswith("LLMFORGE_")}
    assert len(env) >= 7
    from_chart, default = Settings.from_env(env), Settings()
    for var in env:
        field = var.removeprefix("LLMFORGE_").lower()
        assert getattr(from_chart, field) == getattr(default, field), var


def test_the_operator_cli_accepts_the_chart_args(helm):
    """The container args parse with `llmforge operator`'s own parser."""
    import argparse

    from llmforge.cli import operator_cmd

    container = one(objects(helm, *HA_CLUSTERWIDE), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    parser = argparse.ArgumentParser()
    operator_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["operator", *container["args"]])
    assert args.peering == "rel-llmforge" and args.metrics_port == 9090


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


@pytest.mark.parametrize("values", [[], FULL], ids=["clusterwide", "namespaced"])
def test_rbac_is_least_privilege(helm, values):
    roles = [d for d in objects(helm, *values) if d["kind"] in ("ClusterRole", "Role")]
    triples = set().union(*(_rules(r) for r in roles))
    assert triples
    assert not any("*" in t for t in triples)
    assert not any(r in ("secrets", "pods/exec", "pods/proxy", "nodes") for _, r, _ in triples)
    assert not any(v in ("escalate", "bind", "impersonate", "deletecollection", "update") for _, _, v in triples)
    # Jobs are never deleted (GC via ownerReferences), so a retry can never make a second one by accident.
    assert ("batch", "jobs", "delete") not in triples
    assert ("batch", "jobs", "create") in triples and ("", "pods", "watch") in triples
    pricing = one(roles, "Role", "-pricing")
    assert pricing["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                 "resourceNames": ["llmforge-pricing"], "verbs": ["get"]}]


def test_namespaced_install_keeps_work_out_of_the_clusterrole(helm):
    docs = objects(helm, *FULL)
    cluster = _rules(one(docs, "ClusterRole"))
    assert cluster == {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
                       ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
                       ("", "namespaces", "list"), ("", "namespaces", "watch")}
    work = [d for d in docs if d["kind"] == "Role" and not d["metadata"]["name"].endswith("-pricing")]
    assert sorted(r["metadata"]["namespace"] for r in work) == ["ml", "research"]
    for role in work:
        assert ("kopf.dev", "kopfpeerings", "patch") in _rules(role)
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["llmforge-system", "ml", "research"]
    assert all(b["subjects"][0]["namespace"] == "llmforge-system" for b in bindings)
    peerings = [d for d in docs if d["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "research"]


def test_one_replica_runs_standalone(helm):
    docs = objects(helm)
    deployment = one(docs, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--peering") for a in args)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two workers during a rollout
    assert not [d for d in docs if d["kind"] in ("ClusterKopfPeering", "KopfPeering", "PodDisruptionBudget")]
    assert ("kopf.dev", "clusterkopfpeerings", "patch") not in _rules(one(docs, "ClusterRole"))


def test_several_replicas_peer(helm):
    docs = objects(helm, *HA_CLUSTERWIDE)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "--peering=rel-llmforge" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "rel-llmforge"
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in _rules(one(docs, "ClusterRole"))
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds


def test_monitoring_toggles(helm):
    assert not [d for d in objects(helm) if d["kind"] in ("PodMonitoring", "ServiceMonitor")]
    docs = objects(helm, *FULL)
    pm, sm = one(docs, "PodMonitoring"), one(docs, "ServiceMonitor")
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert pm["spec"]["selector"]["matchLabels"] == selector
    assert pm["spec"]["endpoints"][0]["port"] == sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert one(docs, "Service")["spec"]["selector"] == selector


def test_network_policy_allows_what_the_operator_needs(helm):
    policy = one(objects(helm), "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, Settings().trainer_metrics_port} <= egress_ports
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"healthz", "metrics"}


@pytest.mark.parametrize(("args", "needle"), [
    (["--set", "operator.replicaz=2"], "replicaz"),
    (["--set", "operator.replicas=-1"], "replicas"),
    (["--set", "operator.image.pullPolicy=Sometimes"], "pullPolicy"),
    (["--set", "metrics.port=70000"], "port"),
    (["--set", "pricing.enabled=true"], "pricing.date is required"),
    (["--set", "pricing.accelerators.nvidia-l4.spot=0.3"], "spot"),
])
def test_bad_values_are_rejected(helm, args, needle):
    out = render(helm, *args, check=False)
    assert out.returncode != 0
    assert needle in out.stderr


def test_every_value_has_a_doc_comment():
    docs = chartgen.values_docs((CHART / "values.yaml").read_text())
    assert len(docs) >= 40
    assert all(desc for desc, _ in docs.values())
    with pytest.raises(chartgen.ValuesError, match="operator.sneaky"):
        chartgen.values_docs("# -- The operator.\noperator:\n  # -- Fine.\n  ok: 1\n  sneaky: 2\n")


@pytest.mark.parametrize("path", sorted(chartgen.expected(), key=str), ids=lambda p: str(p.relative_to(CHART)))
def test_generated_file_is_current(path):
    assert path.read_text() == chartgen.expected()[path], "stale: run python scripts/chartgen.py"


def test_no_stray_files_in_chart_crds():
    assert chartgen.stale() == []


def test_chart_crds_are_the_generated_crds():
    for src in sorted((ROOT / "crds").glob("*.yaml")):
        shipped = yaml.safe_load((CHART / "crds" / src.name).read_text())
        assert shipped == yaml.safe_load(src.read_text())


def test_argocd_cm_carries_every_check():
    cm = yaml.safe_load((CHART / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["metadata"]["name"] == "argocd-cm"
    keys = sorted(cm["data"])
    assert keys == [f"resource.customizations.health.llmforge.dev_{k}"
                    for k in ("Evaluation", "FineTuneJob", "ModelDeployment")]
    for key in keys:
        kind = key.rsplit("_", 1)[1]
        assert cm["data"][key] == (CHART / "argocd" / kind / "health.lua").read_text()

"""The chart's RBAC against what the operator really does, and the Argo CD health checks on what it writes.

On a local control plane with the kube-apiserver audit log on, install the chart (ServiceAccount + RBAC),
mint a token for that ServiceAccount with the TokenRequest API and run the real operator with it, so every
call it makes is authorised by exactly the chart's rules. Reconcile a FineTuneJob to a Job and a status,
then read the audit log:
- no call was refused (no 403 in the audit log, no "forbidden" in the operator's log);
- every call made is covered by the rendered ClusterRole/Roles (server-side apply that created an object,
  i.e. PATCH answered 201, also needs `create`);
- every permission granted is either used here or listed in UNUSED_HERE with the reason: the list can only
  shrink as more reconcilers are exercised, and a permission nobody needs shows up as a failure.
The same run feeds the Argo CD health checks the statuses the operator really wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from llmforge.devcluster import LocalCluster, assets
from llmforge.devcluster.cluster import free_port
from tests.cases import ftj, lfe, mdep
from tests.unit.test_argocd_health import CHECKS, run_health

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llmforge"
RELEASE, SA = "llmforge", "llmforge-operator"

#: Log only what service accounts outside kube-system do (the operator under test), at Metadata level.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}

#: Granted by the chart, not exercised here: (apiGroup, resource, verb) -> why it is granted. The runs below
#: reconcile FineTuneJobs, an Evaluation and a ModelDeployment (gateway, PodMonitoring, autoscaling turned
#: off) without a canary; what remains was read from the controllers' code.
PRUNE = "ModelDeployment controller deletes a child it no longer builds (here only the HPA is pruned)"
SERVICEMONITOR = "ModelDeployment controller uses a ServiceMonitor only where PodMonitoring is absent"
UNUSED_HERE = {
    **{(g, r, "delete"): PRUNE for g, r in [("apps", "deployments"), ("", "services"), ("", "configmaps"),
                                            ("policy", "poddisruptionbudgets"),
                                            ("gateway.networking.k8s.io", "httproutes"),
                                            ("monitoring.googleapis.com", "podmonitorings"),
                                            ("networking.gke.io", "healthcheckpolicies")]},
    # Read only to check the label before pruning one.
    ("gateway.networking.k8s.io", "httproutes", "get"): PRUNE,
    ("monitoring.googleapis.com", "podmonitorings", "get"): PRUNE,
    **{("monitoring.coreos.com", "servicemonitors", v): SERVICEMONITOR for v in ("get", "create", "patch", "delete")},
    # kopf's finalizer on a FineTuneJob with an open MLflow run (marked KILLED if deleted); the jobs here
    # record none, and FineTuneJob reconciles themselves write no annotations.
    ("llmforge.dev", "finetunejobs", "patch"): "finalizer only while an MLflow run is open",
}


@pytest.fixture(scope="module")
def audited_cluster():
    local = LocalCluster(audit_policy=AUDIT_POLICY)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _api(local: LocalCluster) -> client.ApiClient:
    from kubernetes import config

    cfg = client.Configuration()
    config.load_kube_config(config_file=local.kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)


def _helm(local: LocalCluster, *args: str) -> str:
    out = subprocess.run([str(assets.find("helm")), "--kubeconfig", local.kubeconfig, *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _granted(rendered: str) -> set[tuple[str, str, str]]:
    out = set()
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                if rule.get("resourceNames"):
                    continue  # name-scoped (the pricing ConfigMap): checked separately
                out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def _calls(audit_log: str, user: str) -> list[dict]:
    events = [json.loads(line) for line in Path(audit_log).read_text().splitlines() if line.strip()]
    # Watches still open have only a ResponseStarted event; finished requests end with ResponseComplete.
    latest: dict[str, dict] = {}
    for e in events:
        if e["user"]["username"] == user and e.get("objectRef") and e["stage"] in ("ResponseStarted",
                                                                                    "ResponseComplete"):
            latest[e["auditID"]] = e
    return list(latest.values())


#: GKE's kinds the ModelDeployment controller writes when their CRDs exist: stand-ins with open schemas, so
#: its HTTPRoute, PodMonitoring and HealthCheckPolicy calls happen here too (the real schemas are not needed for RBAC).
STANDIN_CRDS = [("gateway.networking.k8s.io", "HTTPRoute", "httproutes"),
                ("monitoring.googleapis.com", "PodMonitoring", "podmonitorings"),
                ("networking.gke.io", "HealthCheckPolicy", "healthcheckpolicies")]


def _install_standin_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for group, kind, plural in STANDIN_CRDS:
        ext.create_custom_resource_definition({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}", "annotations": {
                # *.k8s.io groups need it; the real Gateway API CRDs carry this value.
                "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"}},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}})
    deadline = time.monotonic() + 30
    for group, _, plural in STANDIN_CRDS:
        while not any(c.type == "Established" and c.status == "True" for c in
                      ext.read_custom_resource_definition(f"{plural}.{group}").status.conditions or []):
            assert time.monotonic() < deadline
            time.sleep(0.2)


@dataclass
class Run:
    local: LocalCluster
    ns_sys: str
    ns: str
    granted: set[tuple[str, str, str]]
    log: Path
    proc: subprocess.Popen


@pytest.fixture(scope="module")
def operator_as_chart_sa(audited_cluster, tmp_path_factory):
    """The chart installed (without the operator Deployment), and `llmforge operator` running locally with a
    TokenRequest token of the chart's ServiceAccount: every call it makes is judged by the chart's RBAC."""
    local, tmp = audited_cluster, tmp_path_factory.mktemp("operator")
    ns_sys, ns = "llmforge-system", f"ml-{uuid.uuid4().hex[:6]}"
    _helm(local, "install", RELEASE, str(CHART), "-n", ns_sys, "--create-namespace", "--set", "operator.enabled=false")
    granted = _granted(_helm(local, "get", "manifest", RELEASE, "-n", ns_sys))
    assert granted

    with _api(local) as api:
        _install_standin_crds(api)
        core = client.CoreV1Api(api)
        token = core.create_namespaced_service_account_token(
            SA, ns_sys, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                audiences=[], expiration_seconds=3600))).status.token
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        deadline = time.monotonic() + 60
        while not core.list_namespaced_service_account(ns, field_selector="metadata.name=default").items:
            assert time.monotonic() < deadline
            time.sleep(0.2)

    kubeconfig = tmp / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": local.server, "certificate-authority": local.ca_file}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}]}))
    log = tmp / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LLMFORGE_OPERATOR_NAMESPACE": ns_sys,
           "LLMFORGE_METRICS_PORT": "0", "LLMFORGE_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
           "LLMFORGE_PROGRESS_INTERVAL_SECONDS": "2", "LLMFORGE_COST_INTERVAL_SECONDS": "2",
           "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("operator", "trainer-image", "server-image"))}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmforge.cli.main", "operator"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp)
    try:
        yield Run(local, ns_sys, ns, granted, log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_phase(run: Run, name: str, phases: tuple[str, ...], timeout: float = 120, job: bool = False,
                until: Callable[[dict], bool] = lambda status: True) -> dict:
    with _api(run.local) as api:
        objs = client.CustomObjectsApi(api)
        deadline, obj = time.monotonic() + timeout, {}
        while time.monotonic() < deadline and run.proc.poll() is None:
            obj = objs.get_namespaced_custom_object("llmforge.dev", "v1alpha1", run.ns, "finetunejobs", name)
            status = obj.get("status") or {}
            if (status.get("phase") in phases and status.get("observedGeneration") == obj["metadata"]["generation"]
                    and (status.get("jobName") or not job) and until(status)):
                return obj
            time.sleep(1)
    pytest.fail(f"{name}: phase not in {phases}: {obj.get('status')}\n{run.log.read_text()[-3000:]}")


def _create(run: Run, name: str, **spec) -> None:
    resource = ftj(**spec)
    resource["metadata"] = {"name": name, "namespace": run.ns}
    with _api(run.local) as api:
        client.CustomObjectsApi(api).create_namespaced_custom_object("llmforge.dev", "v1alpha1", run.ns,
                                                                     "finetunejobs", resource)


def test_argocd_health_of_live_finetunejobs(operator_as_chart_sa):
    """What the operator really writes reads right in Argo CD: running -> Progressing with progress, a job
    that cannot fit -> Degraded with the operator's reason. Set LLMFORGE_CAPTURE_DIR to keep the objects."""
    run = operator_as_chart_sa
    script = (CHECKS / "FineTuneJob" / "health.lua").read_text()
    _create(run, "fits", resources={"accelerator": "nvidia-l4", "count": 1},
            training={"batchSize": 1, "maxSeqLength": 1024})
    _create(run, "too-big", resources={"accelerator": "nvidia-l4", "count": 1})
    fits = _wait_phase(run, "fits", ("Running", "Succeeded"))
    too_big = _wait_phase(run, "too-big", ("Failed",))
    with _api(run.local) as api:
        job = client.BatchV1Api(api).read_namespaced_job(fits["status"]["jobName"], run.ns)
        assert job.metadata.labels["app.kubernetes.io/managed-by"] == "llmforge"

    health = run_health(script, fits)
    expected = {"Running": "Progressing", "Succeeded": "Healthy"}[fits["status"]["phase"]]
    assert health["status"] == expected, (health, fits["status"])
    assert health["message"].startswith(fits["status"]["phase"])
    health = run_health(script, too_big)
    assert health["status"] == "Degraded", (health, too_big["status"])
    assert "GiB" in health["message"], health  # the operator's own explanation reaches the Argo CD UI

    # Stale status: bump the generation (suspend, the one mutable field) and read it before the operator does.
    stale = dict(fits, metadata={**fits["metadata"], "generation": fits["metadata"]["generation"] + 1})
    assert run_health(script, stale)["status"] == "Progressing"

    if os.environ.get("LLMFORGE_CAPTURE_DIR"):
        for name, obj in ((f"captured_{fits['status']['phase'].lower()}", fits), ("captured_does_not_fit", too_big)):
            meta = {k: obj["metadata"][k] for k in ("name", "namespace", "generation", "creationTimestamp")}
            Path(os.environ["LLMFORGE_CAPTURE_DIR"], f"{name}.yaml").write_text(yaml.safe_dump(
                {**obj, "metadata": meta}, sort_keys=False))


def test_argocd_health_of_a_live_evaluation(operator_as_chart_sa):
    """The Evaluation controller, as the chart's ServiceAccount, evaluates the FineTuneJob `fits` (finished
    by kwok above): an eval Job appears and whatever phase it reaches reads right in Argo CD."""
    run = operator_as_chart_sa
    script = (CHECKS / "Evaluation" / "health.lua").read_text()
    resource = lfe(model={"fineTuneJobRef": {"name": "fits"}}, resources={"accelerator": "nvidia-l4", "count": 1})
    resource["metadata"] = {"name": "gate", "namespace": run.ns}
    with _api(run.local) as api:
        objs = client.CustomObjectsApi(api)
        objs.create_namespaced_custom_object("llmforge.dev", "v1alpha1", run.ns, "evaluations", resource)
        deadline, obj = time.monotonic() + 120, {}
        while time.monotonic() < deadline and run.proc.poll() is None:
            obj = objs.get_namespaced_custom_object("llmforge.dev", "v1alpha1", run.ns, "evaluations", "gate")
            status = obj.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed") and status.get("observedGeneration") == 1:
                break
            time.sleep(1)
        jobs = [j.metadata.name for j in client.BatchV1Api(api).list_namespaced_job(run.ns).items]
        assert any(j.startswith("gate-") for j in jobs), (jobs, obj.get("status"), run.log.read_text()[-3000:])
    status = obj.get("status") or {}
    assert status.get("phase") in ("Succeeded", "Failed"), status
    health = run_health(script, obj)
    if status["phase"] == "Failed" or status.get("passed") is False:
        assert health["status"] == "Degraded", (health, status)
    else:
        assert health["status"] == "Healthy", (health, status)
    if os.environ.get("LLMFORGE_CAPTURE_DIR"):
        meta = {k: obj["metadata"][k] for k in ("name", "namespace", "generation", "creationTimestamp")}
        Path(os.environ["LLMFORGE_CAPTURE_DIR"], f"captured_{status['phase'].lower()}.yaml").write_text(
            yaml.safe_dump({**obj, "metadata": meta}, sort_keys=False))


def test_argocd_health_of_a_live_modeldeployment(operator_as_chart_sa):
    """The ModelDeployment controller, as the chart's ServiceAccount, serves a base model: its Deployment,
    Service and HPA appear, kwok makes the pods ready, and the status reads right in Argo CD."""
    run = operator_as_chart_sa
    script = (CHECKS / "ModelDeployment" / "health.lua").read_text()
    resource = mdep(resources={"accelerator": "nvidia-l4", "count": 1},
                    autoscaling={"minReplicas": 1, "maxReplicas": 2},
                    routing={"gateway": {"name": "llm-gateway", "namespace": "gateway"}})
    resource["metadata"] = {"name": "serve", "namespace": run.ns}
    with _api(run.local) as api:
        objs = client.CustomObjectsApi(api)
        objs.create_namespaced_custom_object("llmforge.dev", "v1alpha1", run.ns, "modeldeployments", resource)
        deadline, obj = time.monotonic() + 120, {}
        while time.monotonic() < deadline and run.proc.poll() is None:
            obj = objs.get_namespaced_custom_object("llmforge.dev", "v1alpha1", run.ns, "modeldeployments", "serve")
            status = obj.get("status") or {}
            if status.get("phase") in ("Ready", "Degraded") and status.get("observedGeneration") == 1:
                break
            time.sleep(1)
        assert client.AppsV1Api(api).list_namespaced_deployment(run.ns).items, run.log.read_text()[-3000:]
        for group, _, plural in STANDIN_CRDS:
            assert objs.list_namespaced_custom_object(group, "v1", run.ns, plural)["items"], plural

        # Autoscaling off: the controller prunes the HPA it no longer builds.
        hpas = client.AutoscalingV2Api(api)
        assert hpas.list_namespaced_horizontal_pod_autoscaler(run.ns).items
        objs.patch_namespaced_custom_object("llmforge.dev", "v1alpha1", run.ns, "modeldeployments", "serve",
                                            {"spec": {"autoscaling": {"enabled": False}}})
        deadline = time.monotonic() + 60
        while hpas.list_namespaced_horizontal_pod_autoscaler(run.ns).items:
            assert time.monotonic() < deadline, run.log.read_text()[-3000:]
            time.sleep(0.5)
    health = run_health(script, obj)
    expected = {"Ready": "Healthy", "Progressing": "Progressing", "Degraded": "Degraded"}
    assert health["status"] == expected[obj["status"]["phase"]], (health, obj["status"])
    if os.environ.get("LLMFORGE_CAPTURE_DIR"):
        meta = {k: obj["metadata"][k] for k in ("name", "namespace", "generation", "creationTimestamp")}
        Path(os.environ["LLMFORGE_CAPTURE_DIR"], f"captured_{obj['status']['phase'].lower()}.yaml").write_text(
            yaml.safe_dump({**obj, "metadata": meta}, sort_keys=False))


def test_operator_reconciles_with_exactly_the_chart_rbac(operator_as_chart_sa):
    run = operator_as_chart_sa
    local, ns_sys, ns, granted = run.local, run.ns_sys, run.ns, run.granted
    _create(run, "rbac-check", resources={"accelerator": "nvidia-l4", "count": 1},
            training={"batchSize": 1, "maxSeqLength": 1024})
    # The GPUs may be taken by the tests above (kwok nodes are finite): a created Job is what counts here.
    _wait_phase(run, "rbac-check", ("Pending", "Running", "Succeeded"), job=True)
    # A Job whose pods cannot be created (no such ServiceAccount): the operator reads the FailedCreate Event.
    _create(run, "no-sa", resources={"accelerator": "nvidia-l4", "count": 1},
            training={"batchSize": 1, "maxSeqLength": 1024}, serviceAccountName="does-not-exist")
    _wait_phase(run, "no-sa", ("Pending", "Failed"), job=True, until=lambda status: any(
        c.get("reason") == "FailedCreate" for c in status.get("conditions") or []))
    time.sleep(4)  # let timer ticks (progress/cost) run with the same credentials
    with _api(local) as api:
        objs = client.CustomObjectsApi(api)
        objs.delete_namespaced_custom_object("llmforge.dev", "v1alpha1", ns, "finetunejobs", "rbac-check")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = [o["metadata"]["name"] for o in
                     objs.list_namespaced_custom_object("llmforge.dev", "v1alpha1", ns, "finetunejobs")["items"]]
            if "rbac-check" not in names:
                break
            time.sleep(0.5)
    assert run.proc.poll() is None, run.log.read_text()[-3000:]


    calls = _calls(local.audit_log, f"system:serviceaccount:{ns_sys}:{SA}")
    assert len(calls) > 10
    refused = [(c["verb"], c["objectRef"], c["responseStatus"]) for c in calls
               if c.get("responseStatus", {}).get("code") == 403]
    assert refused == []
    text = run.log.read_text()
    assert "forbidden" not in text.lower() and " 403" not in text, text[-4000:]

    used: set[tuple[str, str, str]] = set()
    for c in calls:
        ref = c["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        if ref["resource"] == "configmaps" and ref.get("name") == "llmforge-pricing":
            assert c["verb"] == "get" and ref["namespace"] == ns_sys
            continue
        used.add((ref.get("apiGroup", ""), resource, c["verb"]))
        if c["verb"] == "patch" and c.get("responseStatus", {}).get("code") == 201:
            used.add((ref.get("apiGroup", ""), resource, "create"))  # server-side apply that created it
    assert used - granted == set()
    for must in [("batch", "jobs", "create"), ("", "configmaps", "create"), ("", "pods", "watch"),
                 ("llmforge.dev", "finetunejobs", "watch"), ("llmforge.dev", "finetunejobs/status", "patch"),
                 ("", "events", "create"), ("", "events", "list"),
                 ("apiextensions.k8s.io", "customresourcedefinitions", "watch")]:
        assert must in used, (must, sorted(used))
    unused = granted - used
    unexplained = sorted(unused - set(UNUSED_HERE))
    assert unexplained == [], f"granted but never used and not explained: {unexplained}; used: {sorted(used)}"
    stale = sorted(set(UNUSED_HERE) & used)
    assert stale == [], f"UNUSED_HERE lists permissions that are now used: {stale}"

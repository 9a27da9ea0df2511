"""The FineTuneJob operator against the real control plane (etcd, kube-apiserver, controller-manager,
kube-scheduler, kwok fake GKE GPU nodes). The operator runs as a subprocess watching the test namespace.

kwok completes Job pods at once and cannot write a termination message; where a test needs a pod to run,
fail or be preempted on its schedule, the FakeKubelet TEST DOUBLE plays the kubelet and the trainer's exit.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from kubernetes.client.rest import ApiException

from llmforge import kube
from llmforge.pricing import DEFAULT_PRICES
from llmforge.status.finetunejob import parse_time
from tests.cases import SEMANTIC_CASES
from tests.k8s.ftj_support import (
    FTJ,
    FakeKubelet,
    OperatorProcess,
    ago,
    ftj_manifest,
    t4_manifest,
    wait_until,
)

pytestmark = pytest.mark.k8s
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def crds(k8s_cluster):
    """Our CRDs, from crds/*.yaml, installed once and Established."""
    kube._client = k8s_cluster.api_client()
    import yaml

    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kube.request("PATCH", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
                     crd, {"fieldManager": "tests", "force": "true"}, "application/apply-patch+yaml")
        wait_until(lambda n=crd["metadata"]["name"]: any(
            c["type"] == "Established" and c["status"] == "True" for c in kube.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}").get("status", {}).get(
                "conditions", [])), 30, f"CRD {crd['metadata']['name']} established")
    # kube-controller-manager's namespace and garbage collectors learn new types by periodic discovery;
    # until then a namespace holding a FineTuneJob never finishes terminating. Wait until one does.
    warm = f"crd-warmup-{int(time.time())}"
    kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": warm}})
    create(warm, ftj_manifest("warmup"))
    kube.request("DELETE", f"/api/v1/namespaces/{warm}")
    wait_until(lambda: kube.get("v1", "Namespace", "", warm) is None, 180, "controller-manager discovers the CRDs",
               interval=1)
    return True


@pytest.fixture
def ns(k8s_cluster, k8s_namespace, crds):
    yield k8s_namespace
    # Pods that never reached a node keep the Job's tracking finalizer until PodGC forces them (20 s), and
    # the namespace controller backs off meanwhile: clear them so the namespace goes in one pass.
    for job in jobs(k8s_namespace):  # first, or the Job controller replaces the pods we delete
        kube.delete("batch/v1", "Job", k8s_namespace, job["metadata"]["name"])
    for pod in pods(k8s_namespace):
        name = pod["metadata"]["name"]
        try:
            kube.merge_patch("v1", "Pod", k8s_namespace, name, {"metadata": {"finalizers": None}})
            kube.delete("v1", "Pod", k8s_namespace, name, grace_seconds=0)
        except ApiException as exc:
            if exc.status != 404:
                raise
    wait_until(lambda: not pods(k8s_namespace), 30, "test pods gone")


@pytest.fixture
def operator(k8s_cluster, ns, tmp_path):
    op = OperatorProcess(k8s_cluster.kubeconfig, ns, tmp_path).start()
    yield op
    op.stop()


@pytest.fixture
def kubelet(ns, crds):
    fk = FakeKubelet().start()
    yield fk
    fk.stop(ns)


def create(ns: str, obj: dict) -> dict:
    return kube.request("POST", kube.path(*FTJ, ns), obj)


def get(ns: str, name: str) -> dict:
    return kube.get(*FTJ, ns, name) or {}


def status(ns: str, name: str) -> dict:
    return get(ns, name).get("status") or {}


def cond(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def jobs(ns: str) -> list[dict]:
    return kube.list_("batch/v1", "Job", ns, "app.kubernetes.io/managed-by=llmforge")


def pods(ns: str) -> list[dict]:
    return kube.list_("v1", "Pod", ns, "app.kubernetes.io/managed-by=llmforge")


def node_labels(name: str) -> dict:
    return kube.request("GET", f"/api/v1/nodes/{name}")["metadata"]["labels"]


def attempt_seconds(pod: dict) -> float:
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return (parse_time(term["finishedAt"]) - parse_time(term["startedAt"])).total_seconds()


# ------------------------------------------------------------------------------------------ tests


def test_job_created_and_bound_to_the_l4_node(ns, operator):
    create(ns, ftj_manifest("l4"))
    job = wait_until(lambda: kube.get("batch/v1", "Job", ns, "l4-train"), 60, "Job l4-train")
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "FineTuneJob" and owner["controller"] is True and owner["uid"] == get(ns, "l4")[
        "metadata"]["uid"]
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "llmforge"
    cm = kube.get("v1", "ConfigMap", ns, "l4-spec")
    assert "kind: FineTuneJob" in cm["data"]["spec.yaml"]
    pod = wait_until(lambda: next((p for p in pods(ns) if p["spec"].get("nodeName")), None), 60, "pod bound")
    labels = node_labels(pod["spec"]["nodeName"])
    assert labels["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert labels.get("cloud.google.com/gke-spot") != "true"  # on-demand job, on-demand node
    st = wait_until(lambda: (s := status(ns, "l4")).get("phase") == "Succeeded" and s, 60, "Succeeded")
    assert st["jobName"] == "l4-train" and st["gpu"] == "nvidia-l4x1" and st["observedGeneration"] == 1
    assert cond(st, "Validated")["status"] == "True" and cond(st, "Complete")["status"] == "True"
    assert st["estimate"]["fits"] is True and st["estimate"]["gpuMemoryGiB"] > 5
    assert len(jobs(ns)) == 1
    # Reconciles follow generation vs. observedGeneration: no kopf diff-base or progress annotations.
    assert [a for a in get(ns, "l4")["metadata"].get("annotations") or {} if a.startswith("llmforge.dev/")] == []

    def phase_events() -> list[tuple[str, str]]:
        return [(e["reason"], e.get("message") or "") for e in kube.request(
            "GET", f"/api/v1/namespaces/{ns}/events")["items"] if e["involvedObject"].get("kind") == "FineTuneJob"]

    def announced() -> bool:
        reasons = {reason for reason, _ in phase_events()}
        # The first status is computed after the children are applied, from the newest view: a pod that is
        # already running makes it "New -> Running" (one write, no Pending to announce).
        return "Succeeded" in reasons and bool(reasons & {"Pending", "Running"})

    try:
        wait_until(announced, 120, "phase-change events")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nevents: {phase_events()}\n{operator.log()}") from None


def test_hyperparameter_advice_is_a_warning_event_and_a_condition(ns, operator):
    create(ns, ftj_manifest("hot", training={"batchSize": 1, "maxSeqLength": 1024, "gradientAccumulationSteps": 8,
                                             "learningRate": 0.01}))
    st = wait_until(lambda: (s := status(ns, "hot")) and cond(s, "Advice") and s, 60, "Advice condition")
    assert cond(st, "Advice")["reason"] == "HyperparameterAdvice"
    assert "spec.training.learningRate: 0.01 is above" in cond(st, "Advice")["message"]
    assert cond(st, "Validated")["status"] == "True"  # advice, not rejection: the job goes ahead
    wait_until(lambda: kube.get("batch/v1", "Job", ns, "hot-train"), 60, "Job hot-train")
    warned = wait_until(lambda: [e for e in kube.request("GET", f"/api/v1/namespaces/{ns}/events")["items"]
                                 if e["involvedObject"].get("name") == "hot" and e["reason"] == "Advice"], 60,
                        "Advice event")
    assert warned[0]["type"] == "Warning" and "spec.training.learningRate" in warned[0]["message"]


def test_no_matching_node_stays_pending_and_says_why(ns, operator):
    # There is no spot H100 node in the fleet.
    create(ns, ftj_manifest("nospot", baseModel={"name": "meta-llama/Llama-3.1-8B-Instruct"},
                            resources={"accelerator": "nvidia-h100-80gb", "count": 1, "spot": True}))
    st = wait_until(lambda: (s := status(ns, "nospot")) and cond(s, "Running").get("reason") == "Unschedulable"
                    and s, 60, "Unschedulable reason")
    assert st["phase"] == "Pending"
    assert "node" in cond(st, "Running")["message"]
    (pod,) = pods(ns)
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_missing_service_account_is_the_pending_reason(ns, operator):
    create(ns, ftj_manifest("nosa", serviceAccountName="missing-sa"))
    st = wait_until(lambda: (s := status(ns, "nosa")) and cond(s, "Running").get("reason") == "FailedCreate" and s,
                    60, "FailedCreate reason")
    assert st["phase"] == "Pending" and "missing-sa" in cond(st, "Running")["message"]


def test_succeeded_with_result_and_cost_from_pod_times(ns, operator):
    create(ns, ftj_manifest("done"))
    pod = wait_until(lambda: next((p for p in pods(ns) if p["status"].get("phase") == "Succeeded"), None), 60,
                     "kwok completes the pod")
    # TEST DOUBLE for the trainer: kwok cannot write a termination message or run for long, so write what
    # llmforge-train would: a 30-minute attempt and its TrainResult.
    result = {"phase": "Succeeded", "step": 120, "totalSteps": 120, "metrics": {"trainLoss": 1.1, "evalLoss": 1.3},
              "checkpoint": {"step": 120, "uri": "gs://b/runs/done/checkpoint-120"},
              "output": {"adapterUri": "gs://b/runs/done/adapter"}, "mlflow": {"runId": "abc"}}
    started, finished = ago(1800), ago(0)
    FakeKubelet().finish(pod, started, finished, 0, json.dumps(result))
    st = wait_until(lambda: (s := status(ns, "done")).get("phase") == "Succeeded" and s.get("metrics") and s, 60,
                    "Succeeded with metrics")
    pod = kube.get("v1", "Pod", ns, pod["metadata"]["name"])
    expected = attempt_seconds(pod) / 3600 * DEFAULT_PRICES.rate("nvidia-l4", False)
    assert attempt_seconds(pod) == 1800
    assert st["cost"]["usd"] == pytest.approx(round(expected, 4), abs=1e-4) and st["cost"]["usd"] > 0.4
    assert st["cost"]["usdPerHour"] == 0
    assert st["output"]["adapterUri"] == "gs://b/runs/done/adapter" and st["metrics"]["trainLoss"] == 1.1
    assert st["checkpoint"]["step"] == 120 and st["mlflow"]["runId"] == "abc"
    assert st["progress"]["summary"] == "100% 120/120" and st["restarts"] == 0


def test_failed_pod_carries_reason_and_message(ns, operator, kubelet):
    create(ns, t4_manifest("bad-data"))
    pod = wait_until(lambda: next(iter(kubelet.pods(ns)), None), 60, "pod on the fake kubelet's node")
    started = ago(60)
    kubelet.run(pod, started)
    wait_until(lambda: status(ns, "bad-data").get("phase") == "Running", 30, "Running")
    msg = {"phase": "Failed", "reason": "InvalidData", "message": "train.jsonl:17: missing 'messages'"}
    kubelet.finish(pod, started, ago(0), 2, json.dumps(msg))  # exit 2: podFailurePolicy FailJob
    st = wait_until(lambda: (s := status(ns, "bad-data")).get("phase") == "Failed" and s, 60, "Failed")
    assert st["failure"] == {"reason": "InvalidData", "message": "train.jsonl:17: missing 'messages'"}
    assert cond(st, "Failed")["reason"] == "InvalidData"
    assert len(pods(ns)) == 1  # FailJob: no retry


def test_preemption_counts_a_restart_and_does_not_fail(ns, operator, kubelet):
    create(ns, t4_manifest("spotty"))
    first = wait_until(lambda: next(iter(kubelet.pods(ns)), None), 60, "first pod")
    t1 = ago(600)
    kubelet.run(first, t1)
    kubelet.finish(first, t1, ago(300), 143, disrupted=True)  # SIGTERM handled after a spot reclaim
    second = wait_until(lambda: next((p for p in kubelet.pods(ns) if p["metadata"]["uid"] != first["metadata"][
        "uid"]), None), 60, "replacement pod")
    t2 = ago(200)
    kubelet.run(second, t2)
    st = wait_until(lambda: (s := status(ns, "spotty")).get("phase") == "Running" and s.get("restarts") == 1 and s,
                    30, "Running with one restart")
    kubelet.finish(second, t2, ago(0), 0, json.dumps({"phase": "Succeeded", "step": 10, "totalSteps": 10}))
    st = wait_until(lambda: (s := status(ns, "spotty")).get("phase") == "Succeeded" and s, 60, "Succeeded")
    assert st["restarts"] == 1
    job = kube.get("batch/v1", "Job", ns, "spotty-train")
    assert not job["status"].get("failed")  # podFailurePolicy Ignore: preemption not counted
    rate = DEFAULT_PRICES.rate("nvidia-tesla-t4", False)
    seconds = [attempt_seconds(p) for p in sorted(kubelet.pods(ns), key=lambda p: p["metadata"]["creationTimestamp"])]
    assert len(seconds) == 2 and seconds[0] == 300 and 200 <= seconds[1] <= 210  # the second ends "now"
    assert st["cost"]["usd"] == pytest.approx(round(sum(seconds) / 3600 * rate, 4), abs=1e-4)


def test_deleting_a_job_with_an_open_mlflow_run_marks_the_run_killed(ns, operator, kubelet, mlflow_server):
    """The one finalizer: added while an MLflow run is known and the job unfinished, so deletion can mark
    the run KILLED (a real `mlflow server`), then removed so the FineTuneJob goes."""
    mlflow = mlflow_server.client()
    run = mlflow.create_run(mlflow.create_experiment(f"ftj-{ns}"))
    run_id = run.info.run_id
    create(ns, t4_manifest("tracked", tracking={"mlflow": {"trackingUri": mlflow_server.uri}}))
    first = wait_until(lambda: next(iter(kubelet.pods(ns)), None), 60, "first pod")
    kubelet.run(first, ago(600))
    # TEST DOUBLE for the trainer: a spot reclaim; its SIGTERM handler reports the run it was logging to.
    kubelet.finish(first, ago(600), ago(300), 143, json.dumps(
        {"phase": "Preempted", "step": 3, "totalSteps": 10, "mlflow": {"runId": run_id}}), disrupted=True)
    second = wait_until(lambda: next((p for p in kubelet.pods(ns) if p["metadata"]["uid"] != first["metadata"][
        "uid"]), None), 60, "replacement pod")
    kubelet.run(second, ago(100))
    wait_until(lambda: (s := status(ns, "tracked")).get("mlflow", {}).get("runId") == run_id and s.get("phase")
               == "Running", 60, "Running with the MLflow run in status")
    wait_until(lambda: "llmforge.dev/finalizer" in (get(ns, "tracked")["metadata"].get("finalizers") or []), 30,
               "finalizer while the run is open")
    assert mlflow.get_run(run_id).info.status == "RUNNING"
    kube.delete(*FTJ, ns, "tracked")
    wait_until(lambda: not get(ns, "tracked"), 60, "FineTuneJob gone after its finalizer")
    assert mlflow.get_run(run_id).info.status == "KILLED"
    assert operator.alive()


def test_budget_exceeded_stops_the_job(ns, operator, kubelet):
    create(ns, t4_manifest("pricey", budget={"maxCostUSD": 0.1}))
    pod = wait_until(lambda: next(iter(kubelet.pods(ns)), None), 60, "pod")
    kubelet.run(pod, ago(3600))  # an hour at $0.73 > $0.10
    st = wait_until(lambda: (s := status(ns, "pricey")).get("phase") == "Failed" and s, 30, "Failed")
    assert st["failure"]["reason"] == "BudgetExceeded" and "maxCostUSD $0.1" in st["failure"]["message"]
    assert cond(st, "Suspended")["reason"] == "BudgetExceeded"
    wait_until(lambda: kube.get("batch/v1", "Job", ns, "pricey-train")["spec"]["suspend"] is True, 30,
               "Job suspended")
    # The Job controller stops the pod (graceful: the trainer checkpoints on SIGTERM).
    wait_until(lambda: kube.get("v1", "Pod", ns, pod["metadata"]["name"])["metadata"].get("deletionTimestamp"),
               30, "pod terminating")
    assert status(ns, "pricey")["phase"] == "Failed"


def test_spec_is_immutable_except_suspend(ns, operator):
    create(ns, ftj_manifest("held", resources={"accelerator": "nvidia-h100-80gb", "count": 1, "spot": True}))
    wait_until(lambda: kube.get("batch/v1", "Job", ns, "held-train"), 60, "Job")
    with pytest.raises(ApiException) as err:
        kube.merge_patch(*FTJ, ns, "held", {"spec": {"lora": {"r": 64}}})
    assert err.value.status == 422 and b"immutable" in err.value.body
    kube.merge_patch(*FTJ, ns, "held", {"spec": {"suspend": True}})
    wait_until(lambda: kube.get("batch/v1", "Job", ns, "held-train")["spec"]["suspend"] is True, 30, "Job suspended")
    st = wait_until(lambda: (s := status(ns, "held")).get("phase") == "Suspended" and s, 30, "Suspended")
    assert cond(st, "Suspended")["reason"] == "SuspendedByUser" and st["observedGeneration"] == 2
    kube.merge_patch(*FTJ, ns, "held", {"spec": {"suspend": False}})
    wait_until(lambda: kube.get("batch/v1", "Job", ns, "held-train")["spec"]["suspend"] is False, 30, "resumed")
    wait_until(lambda: status(ns, "held").get("phase") == "Pending", 30, "Pending again")
    assert len(jobs(ns)) == 1


def test_invalid_resources_never_crash_the_operator(ns, operator):
    bad = [c for c in SEMANTIC_CASES if c.obj["kind"] == "FineTuneJob"]
    assert bad
    names = []
    for i, case in enumerate(bad):
        obj = json.loads(json.dumps(case.obj))
        obj["metadata"] = {"name": f"bad-{i}"}
        create(ns, obj)
        names.append(f"bad-{i}")
    create(ns, ftj_manifest("toobig", baseModel={"name": "meta-llama/Llama-3.1-70B-Instruct"}))
    for name in names:
        st = wait_until(lambda n=name: (s := status(ns, n)) and cond(s, "Validated").get("status") == "False" and s,
                        60, f"{name} Validated=False")
        assert st["phase"] == "Failed"
    st = wait_until(lambda: (s := status(ns, "toobig")) and cond(s, "Validated").get("status") == "False" and s, 60,
                    "toobig rejected")
    assert cond(st, "Validated")["reason"] == "InsufficientGPUMemory"
    assert "exceeds nvidia-l4 x1" in cond(st, "Validated")["message"]
    assert jobs(ns) == [] and operator.alive()
    create(ns, ftj_manifest("fine"))  # the operator still works
    wait_until(lambda: status(ns, "fine").get("phase") == "Succeeded", 60, "valid job after invalid ones")


def test_metrics_endpoint_counts_reconciles_and_phases(ns, operator):
    for i in range(3):
        create(ns, ftj_manifest(f"m{i}"))
    wait_until(lambda: all(status(ns, f"m{i}").get("phase") == "Succeeded" for i in range(3)), 60, "all Succeeded")

    def count() -> float:
        m = re.search(r'llmforge_reconcile_total\{handler="reconcile",kind="FineTuneJob",result="ok"\} (\S+)',
                      operator.metrics())
        return float(m.group(1)) if m else 0.0

    assert wait_until(lambda: count() >= 3, 10, "reconcile count")
    assert 'llmforge_reconcile_total{handler="child",kind="FineTuneJob",result="ok"}' in operator.metrics()

    def census(phase: str) -> float | None:
        try:
            text = operator.metrics()
        except OSError:  # restarting
            return None
        m = re.search(rf'llmforge_resources\{{kind="FineTuneJob",phase="{phase}"\}} (\S+)', text)
        return float(m.group(1)) if m else None

    wait_until(lambda: census("Succeeded") == 3, 10, "3 Succeeded in llmforge_resources")
    # Level-based: a restarted operator counts what its watch lists (no transition happens to count),
    # and a deleted job leaves the count.
    operator.stop()
    operator.start()
    wait_until(lambda: census("Succeeded") == 3, 30, "3 Succeeded counted again after a restart")
    kube.delete(*FTJ, ns, "m0")
    wait_until(lambda: census("Succeeded") == 2, 30, "a deleted job leaves llmforge_resources")


def test_sigkill_mid_reconcile_twenty_times_leaves_one_job_each(ns, k8s_cluster, tmp_path):
    names = [f"crash{i}" for i in range(5)]
    for name in names:
        create(ns, ftj_manifest(name))
    op = OperatorProcess(k8s_cluster.kubeconfig, ns, tmp_path)
    rnd = random.Random(7)
    try:
        for _ in range(20):
            op.start()
            time.sleep(rnd.uniform(0.3, 2.5))  # deliberately random: kill at arbitrary points of start-up/reconcile
            op.kill()
        op.start()
        wait_until(lambda: all(status(ns, n).get("phase") == "Succeeded" for n in names), 120, "converged",
                   interval=0.5)
        assert op.alive(), op.log()
    finally:
        op.stop()
    by_owner: dict[str, int] = {}
    for job in jobs(ns):
        by_owner[job["metadata"]["labels"]["llmforge.dev/finetunejob"]] = by_owner.get(
            job["metadata"]["labels"]["llmforge.dev/finetunejob"], 0) + 1
    assert by_owner == dict.fromkeys(names, 1)
    for name in names:
        st = status(ns, name)
        assert st["observedGeneration"] == 1 and cond(st, "Complete")["status"] == "True"
        assert st["restarts"] == 0 and len(st["attempts"]) == 1


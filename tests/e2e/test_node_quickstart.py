"""The quickstart on a real node, in the real images, as users run it (what `make demo-node` shows).

The operator image runs as a pod on the node (llmforge.devcluster.nodedemo); its trainer, eval and vLLM pods
run the trainer and server images under containerd, with data on fake-gcs-server in a container. Nothing is a
host process: termination messages, SIGTERM, memory limits and Service traffic are the real kubelet's,
containerd's and kube-proxy's.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from llmforge.api.contract import TrainResult, decode_result
from llmforge.devcluster import demo, nodedemo
from tests.waiting import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.node, pytest.mark.slow]
NS = nodedemo.NAMESPACE


def _get(cluster, *args: str) -> dict:
    return json.loads(demo.kubectl(cluster.kubeconfig, "-n", NS, "get", *args, "-o", "json"))


def _wait(what: str, check, timeout: float, cluster, name: str):
    def detail() -> str:  # the FineTuneJob's status, the pods, their logs and the warnings
        status = json.dumps(_get(cluster, "finetunejob", name).get("status"), indent=1)[-3000:]
        return f"{status}\n{nodedemo.diagnose(cluster.kubeconfig)}"

    return wait_for(check, timeout=timeout, interval=2, what=what, detail=detail)


@pytest.fixture(scope="module")
def platform(k8s_cluster, real_node, tmp_path_factory):
    cluster = k8s_cluster.local
    work = tmp_path_factory.mktemp("node-quickstart")
    nodedemo.start_platform(cluster, real_node, work)
    yield SimpleNamespace(cluster=cluster, node=real_node, work=work)
    # The operator watches every namespace: it must be gone before other modules start their own. Its
    # resources go first, while it still runs to release their finalizers; then the namespace.
    demo.kubectl(cluster.kubeconfig, "-n", NS, "delete", "finetunejobs,evaluations,modeldeployments", "--all",
                 "--wait=true", "--timeout=100s", check=False)
    demo.kubectl(cluster.kubeconfig, "-n", NS, "delete", "deployment", "llmforge-operator", "--wait=true",
                 "--timeout=100s")
    wait_for(lambda: not _get(cluster, "pods", "-l", "app.kubernetes.io/name=llmforge-operator")["items"],
             timeout=100, what="the operator pod to be gone")
    demo.kubectl(cluster.kubeconfig, "delete", "namespace", NS, "--wait=false")


@pytest.fixture(scope="module")
def quickstart(platform):
    state = nodedemo.run_quickstart(platform.cluster, 1200, platform.work)
    items = json.loads((platform.work / "status.json").read_text())["items"]
    completion = platform.work / "completion.txt"
    return SimpleNamespace(state=state, objs={i["kind"]: i for i in items},
                           completion=json.loads(completion.read_text()) if completion.exists() else None)


def _ftj(name: str, **training) -> dict:
    doc = copy.deepcopy(next(d for d in nodedemo.quickstart_manifests() if d["kind"] == "FineTuneJob"))
    doc["metadata"] = {"name": name, "namespace": NS}
    doc["spec"]["output"]["uri"] = f"gs://{nodedemo.BUCKET}/runs/{name}/"
    doc["spec"]["training"].update(training)
    return doc


def test_chain_trains_evaluates_and_serves_in_real_containers(quickstart):
    assert quickstart.state == {"FineTuneJob": "Succeeded", "Evaluation": "Succeeded",
                                "ModelDeployment": "Ready"}, quickstart.state
    ftj = quickstart.objs["FineTuneJob"]["status"]
    assert ftj["progress"]["step"] == 20 and ftj["cost"]["usd"] > 0
    assert ftj["output"]["adapterUri"].startswith(f"gs://{nodedemo.BUCKET}/runs/quickstart/")
    results = quickstart.objs["Evaluation"]["status"]["results"]
    assert results["finetuned"]["perplexity"] < results["base"]["perplexity"]
    served = quickstart.objs["ModelDeployment"]["status"]["variants"][0]
    assert "quickstart" in served["adaptersLoaded"]


def test_completion_comes_through_the_services_cluster_ip(quickstart, platform):
    assert quickstart.completion is not None, "no completion: the ModelDeployment never became Ready"
    ip = demo.kubectl(platform.cluster.kubeconfig, "-n", NS, "get", "service", "quickstart", "-o",
                      "jsonpath={.spec.clusterIP}")
    assert ip.startswith("10.96.") and quickstart.completion["url"] == f"http://{ip}:8000/v1"
    assert quickstart.completion["text"].strip()


def test_every_pod_ran_a_local_image_on_the_real_node_as_non_root(quickstart, platform):
    pods = _get(platform.cluster, "pods", "-l", "app.kubernetes.io/managed-by=llmforge")["items"]
    images = {p["spec"]["containers"][0]["image"] for p in pods}
    assert {"llmforge/trainer:0.1.0-cpu", "llmforge/server:0.1.0-cpu"} <= images, images
    for pod in pods:
        assert pod["spec"]["nodeName"] == "realnode", pod["metadata"]["name"]
        status = pod["status"]["containerStatuses"][0]
        assert status["imageID"].startswith("sha256:") or "@sha256:" in status["imageID"], status
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001


def test_operator_image_serves_healthz_and_its_metrics(quickstart, platform):
    """The operator runs from its image on the node (host network): its probes and /metrics answer."""
    import urllib.request

    deployment = _get(platform.cluster, "deployment", "llmforge-operator")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert deployment["status"]["readyReplicas"] == 1  # the readinessProbe is /healthz
    with urllib.request.urlopen(env["LLMFORGE_LIVENESS"], timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{env['LLMFORGE_METRICS_PORT']}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'llmforge_resources{kind="FineTuneJob",phase="Succeeded"}' in metrics, metrics[-2000:]
    running = _get(platform.cluster, "pods", "-l", "app.kubernetes.io/name=llmforge-operator")["items"]
    assert running[0]["spec"]["containers"][0]["image"] == "llmforge/operator:0.1.0-cpu"
    assert running[0]["status"]["containerStatuses"][0]["restartCount"] == 0


def test_trainer_result_is_the_termination_message_the_kubelet_read(quickstart, platform):
    pods = _get(platform.cluster, "pods", "-l", "app.kubernetes.io/component=trainer,"
                "llmforge.dev/finetunejob=quickstart")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    trainer = pods[0]
    term = trainer["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    result = decode_result(term["message"], TrainResult)
    assert result.phase == "Succeeded" and result.step == 20
    assert result.output.adapter_uri == quickstart.objs["FineTuneJob"]["status"]["output"]["adapterUri"]


def test_pod_deleted_mid_training_gets_sigterm_and_the_next_pod_resumes(platform, quickstart):
    cluster = platform.cluster
    doc = _ftj("resume", maxSteps=80, loggingSteps=2)
    doc["spec"]["checkpoint"] = {"everySteps": 5}
    nodedemo.apply(cluster.kubeconfig, [doc])

    def step() -> int:
        return (_get(cluster, "finetunejob", "resume").get("status", {}).get("progress") or {}).get("step", 0)

    _wait("the trainer past step 12 (two checkpoints)", lambda: step() >= 12, 600, cluster, "resume")
    first = _get(cluster, "pods", "-l", "job-name=resume-train")["items"]
    assert len(first) == 1
    demo.kubectl(cluster.kubeconfig, "-n", NS, "delete", "pod", first[0]["metadata"]["name"], "--wait=false")
    done = _wait("the FineTuneJob to finish", lambda: _get(cluster, "finetunejob", "resume").get("status", {})
                 .get("phase") in ("Succeeded", "Failed") and _get(cluster, "finetunejob", "resume")["status"],
                 900, cluster, "resume")
    assert done["phase"] == "Succeeded", done.get("failure")
    first_attempt = next(a for a in done["attempts"] if a["uid"] == first[0]["metadata"]["uid"])
    assert first_attempt["exitCode"] == 143, first_attempt  # the trainer's SIGTERM handler: checkpoint saved
    pods = _get(cluster, "pods", "-l", "job-name=resume-train")["items"]
    last = [p for p in pods if p["metadata"]["uid"] != first[0]["metadata"]["uid"]]
    assert last, "no second pod"
    result = decode_result(last[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"],
                           TrainResult)
    assert result.phase == "Succeeded" and result.step == 80
    assert result.resumed_from_step and result.resumed_from_step >= 10, result


def test_a_memory_limit_too_small_fails_with_out_of_memory(platform, quickstart):
    cluster = platform.cluster
    doc = _ftj("oom")
    doc["spec"]["resources"]["memory"] = "256Mi"
    nodedemo.apply(cluster.kubeconfig, [doc])
    status = _wait("the FineTuneJob to fail", lambda: (s := _get(cluster, "finetunejob", "oom").get("status", {}))
                   .get("phase") == "Failed" and s, 600, cluster, "oom")
    assert status["failure"]["reason"] == "OutOfMemory", status["failure"]
    assert "spec.resources.memory" in status["failure"]["message"]
    assert all(a["reason"] == "OOMKilled" and a["exitCode"] == 137 for a in status["attempts"]), status["attempts"]


"""Two operator replicas with the chart's peering: one works, one stands by, the standby takes over.

kopf peering is not a lock: peers of equal priority all pause (kopf 1.45), so `llmforge operator --peering`
gives each replica a distinct random priority. Here two real operator processes run with the chart's
ServiceAccount token against a local control plane and the chart's ClusterKopfPeering; exactly one pauses,
a FineTuneJob gets exactly one Job, and after the active replica is stopped (as in a rollout) the standby
resumes and reconciles the next FineTuneJob.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from llmforge import kube
from llmforge.devcluster import LocalCluster
from llmforge.devcluster.cluster import free_port
from tests.cases import ftj
from tests.k8s.ftj_support import FTJ, FakeKubelet, ago, t4_manifest
from tests.k8s.test_chart_rbac import CHART, ROOT, SA, _api, _helm

pytestmark = pytest.mark.k8s

NS_SYS = "llmforge-system"
RESUMED = "Resuming operations after the pause"
PAUSED = "Pausing operations in favour of"


def paused(log: str) -> bool:
    """kopf's peering state from its log: paused at start, until it logs that it resumes."""
    return log.rfind(RESUMED) < log.rfind(PAUSED) or RESUMED not in log


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster()
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _wait(what: str, check, timeout: float = 90, detail=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{detail()}")


def _lists(objs: client.CustomObjectsApi, plural: str) -> bool:
    try:
        objs.list_cluster_custom_object("llmforge.dev", "v1alpha1", plural, limit=1)
    except client.ApiException:
        return False
    return True


@pytest.fixture(scope="module")
def chart(cluster, tmp_path_factory) -> tuple[str, Path]:
    """The chart installed with two replicas (operator pods off: the replicas run here, as processes with the
    chart's ServiceAccount token); returns the peering object's name and that token's kubeconfig."""
    _helm(cluster, "install", "llmforge", str(CHART), "-n", NS_SYS, "--create-namespace",
          "--set", "operator.enabled=false", "--set", "operator.replicas=2")
    manifest = list(yaml.safe_load_all(_helm(cluster, "get", "manifest", "llmforge", "-n", NS_SYS)))
    (peering,) = [d for d in manifest if d and d["kind"] == "ClusterKopfPeering"]
    with _api(cluster) as api:
        token = client.CoreV1Api(api).create_namespaced_service_account_token(
            SA, NS_SYS, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                audiences=[], expiration_seconds=3600))).status.token
        # kopf's start-up LIST is not cut short by a pause: one that the just-installed CRDs' storage answers with
        # 429 retries, and may deliver a FineTuneJob created after the pause to the standby. Serve lists first.
        _wait("the CRDs' storage to serve lists", lambda: all(_lists(client.CustomObjectsApi(api), plural) for plural
                                                              in ("finetunejobs", "evaluations", "modeldeployments")))
    kubeconfig = tmp_path_factory.mktemp("sa") / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority": cluster.ca_file}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}))
    return peering["metadata"]["name"], kubeconfig


def _namespace(cluster: LocalCluster) -> str:
    ns = f"ml-{uuid.uuid4().hex[:6]}"
    with _api(cluster) as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        _wait("default ServiceAccount", lambda: core.list_namespaced_service_account(
            ns, field_selector="metadata.name=default").items)
    return ns


def _replica(replica: str, chart: tuple[str, Path], tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    name, kubeconfig = chart
    log = tmp_path / f"operator-{replica}.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LLMFORGE_OPERATOR_NAMESPACE": NS_SYS,
           "LLMFORGE_METRICS_PORT": "0", "LLMFORGE_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
           "POD_ID": f"replica-{replica}",
           "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("operator", "trainer-image", "server-image")),
           **env}
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "llmforge.cli.main", "operator", f"--peering={name}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path), log


def _stop(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_standby_replica_pauses_then_takes_over(cluster, chart, tmp_path):
    ns, name = _namespace(cluster), chart[0]
    procs = {replica: _replica(replica, chart, tmp_path) for replica in ("a", "b")}
    try:
        with _api(cluster) as api:
            objs = client.CustomObjectsApi(api)
            batch = client.BatchV1Api(api)

            def peering_object():
                return objs.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)

            def peers():
                return {k: v for k, v in (peering_object().get("status") or {}).items() if v}

            def logs():
                return f"{peering_object()}\n" + "\n".join(f"--- {r}\n{log.read_text()[-2000:]}"
                                                           for r, (_, log) in procs.items())

            seen = _wait("both replicas in the peering", lambda: len(peers()) == 2 and peers(), detail=logs)
            assert set(seen) == {"replica-a", "replica-b"}
            priorities = {k: v["priority"] for k, v in seen.items()}
            assert len(set(priorities.values())) == 2, priorities  # never a tie, which would pause both
            active = max(priorities, key=priorities.get)[-1]
            standby = "b" if active == "a" else "a"
            # kopf starts paused and resumes when no live peer outranks it; a replica that started first works
            # until the higher one shows up, then pauses.
            _wait("the standby to pause", lambda: paused(procs[standby][1].read_text()), detail=logs)
            _wait("the active replica to work", lambda: not paused(procs[active][1].read_text()), detail=logs)

            def create(ftj_name: str) -> None:
                resource = ftj(resources={"accelerator": "nvidia-l4", "count": 1},
                               training={"batchSize": 1, "maxSeqLength": 1024})
                resource["metadata"] = {"name": ftj_name, "namespace": ns}
                objs.create_namespaced_custom_object("llmforge.dev", "v1alpha1", ns, "finetunejobs", resource)

            def jobs_of(ftj_name: str) -> list:
                return [j for j in batch.list_namespaced_job(ns).items if j.metadata.name.startswith(f"{ftj_name}-")]

            create("first")
            assert len(_wait("a Job for the first FineTuneJob", lambda: jobs_of("first"))) == 1
            _wait("the active replica's reconcile",
                  lambda: f"[{ns}/first] reconciling generation" in procs[active][1].read_text(), detail=logs)
            # The standby reconciled (applied children for) nothing of ours. A status refresh from child events
            # already streaming when it paused may still show in its log: level-based, the same status.
            assert f"[{ns}/first] reconciling generation" not in procs[standby][1].read_text(), logs()

            # A rollout stops the active pod with SIGTERM; kopf withdraws from the peering on the way out.
            procs[active][0].send_signal(signal.SIGTERM)
            procs[active][0].wait(timeout=30)
            _wait("the standby to resume", lambda: not paused(procs[standby][1].read_text()), detail=logs)
            create("second")
            assert len(_wait("a Job for the second FineTuneJob", lambda: jobs_of("second"))) == 1
            _wait("the new active replica's reconcile",
                  lambda: f"[{ns}/second] reconciling generation" in procs[standby][1].read_text(),
                  detail=logs)
            assert len(jobs_of("first")) == 1  # nothing redone by the replica that took over
    finally:
        _stop(procs)


@contextlib.contextmanager
def _kube_on(cluster: LocalCluster):
    """Point llmforge.kube (which the kubelet double uses) at this module's cluster, and back afterwards."""
    saved = kube._client
    kube._client = _api(cluster)
    try:
        yield
    finally:
        kube._client = saved


def test_paused_replica_never_writes_back_the_status_it_last_saw(cluster, chart, tmp_path):
    """A replica that a higher one pauses keeps its last view of a running job (kopf stops its watches) and its
    status loop. Its writes must not put back that view over what the active replica wrote since."""
    ns = _namespace(cluster)
    fast = {"LLMFORGE_COST_INTERVAL_SECONDS": "1", "LLMFORGE_PROGRESS_INTERVAL_SECONDS": "1"}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def phase() -> str | None:
        return ((kube.get(*FTJ, ns, "handover") or {}).get("status") or {}).get("phase")

    def logs() -> str:
        return "\n".join(f"--- {r}\n{log.read_text()[-3000:]}" for r, (_, log) in procs.items())

    with _kube_on(cluster):
        kubelet = FakeKubelet().start()
        try:
            metrics_port = free_port()
            procs["low"] = _replica("low", chart, tmp_path, LLMFORGE_PEERING_PRIORITY="10",
                                    LLMFORGE_METRICS_PORT=str(metrics_port), **fast)
            _wait("the first replica to work", lambda: not paused(procs["low"][1].read_text()), detail=logs)
            kube.request("POST", kube.path(*FTJ, ns), t4_manifest("handover"))
            pod = _wait("the trainer pod on the kubelet double", lambda: next(iter(kubelet.pods(ns)), None),
                        detail=logs)
            started = ago(60)
            kubelet.run(pod, started)
            _wait("Running, from the first replica", lambda: phase() == "Running", detail=logs)

            procs["high"] = _replica("high", chart, tmp_path, LLMFORGE_PEERING_PRIORITY="20", **fast)
            _wait("the first replica to pause", lambda: paused(procs["low"][1].read_text()), detail=logs)
            _wait("the second replica to work", lambda: not paused(procs["high"][1].read_text()), detail=logs)
            kubelet.finish(kubelet.pods(ns)[0], started, ago(0), 0,
                           json.dumps({"phase": "Succeeded", "step": 10, "totalSteps": 10}))
            _wait("Succeeded, from the second replica", lambda: phase() == "Succeeded", detail=logs)
            # The paused replica's loop ticks every second with its last view (Running, cost accruing).
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                assert phase() == "Succeeded", logs()
                time.sleep(0.25)
            assert procs["low"][0].poll() is None, logs()  # a refused write is not a crash
            # Refused once, then quiet: the paused replica stops polling a job its writes conflict on.
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                conflicts = re.search(r'llmforge_status_conflicts_total\{kind="FineTuneJob"\} (\S+)', r.read().decode())
            assert conflicts and 1 <= float(conflicts.group(1)) <= 3, (conflicts and conflicts.group(0), logs())
        finally:
            _stop(procs)
            kubelet.stop(ns)

"""Two operator replicas with the chart's peering: one works, one stands by, the standby takes over.

kopf peering is not a lock: peers of equal priority all pause (kopf 1.45), so `llmforge operator --peering`
gives each replica a distinct random priority. Here two real operator processes run with the chart's
ServiceAccount token against a local control plane and the chart's ClusterKopfPeering; exactly one pauses,
a FineTuneJob gets exactly one Job, and after the active replica is stopped (as in a rollout) the standby
resumes and reconciles the next FineTuneJob.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from llmforge.devcluster import LocalCluster
from llmforge.devcluster.cluster import free_port
from tests.cases import ftj
from tests.k8s.test_chart_rbac import CHART, ROOT, SA, _api, _helm

pytestmark = pytest.mark.k8s

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


def test_standby_replica_pauses_then_takes_over(cluster, tmp_path):
    ns_sys, ns = "llmforge-system", f"ml-{uuid.uuid4().hex[:6]}"
    _helm(cluster, "install", "llmforge", str(CHART), "-n", ns_sys, "--create-namespace",
          "--set", "operator.enabled=false", "--set", "operator.replicas=2")
    manifest = list(yaml.safe_load_all(_helm(cluster, "get", "manifest", "llmforge", "-n", ns_sys)))
    (peering,) = [d for d in manifest if d and d["kind"] == "ClusterKopfPeering"]
    name = peering["metadata"]["name"]

    with _api(cluster) as api:
        core = client.CoreV1Api(api)
        token = core.create_namespaced_service_account_token(
            SA, ns_sys, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
                audiences=[], expiration_seconds=3600))).status.token
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        _wait("default ServiceAccount", lambda: core.list_namespaced_service_account(
            ns, field_selector="metadata.name=default").items)
        # kopf's start-up LIST is not cut short by a pause: one that the just-installed CRDs' storage answers with
        # 429 retries, and may deliver a FineTuneJob created after the pause to the standby. Serve lists first.
        _wait("the CRDs' storage to serve lists", lambda: all(_lists(client.CustomObjectsApi(api), plural) for plural
                                                              in ("finetunejobs", "evaluations", "modeldeployments")))

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority": cluster.ca_file}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}))
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    for replica in ("a", "b"):
        log = tmp_path / f"operator-{replica}.log"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LLMFORGE_OPERATOR_NAMESPACE": ns_sys,
               "LLMFORGE_METRICS_PORT": "0", "LLMFORGE_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
               "POD_ID": f"replica-{replica}",
               "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in ("operator", "trainer-image", "server-image"))}
        with log.open("w") as out:
            procs[replica] = (subprocess.Popen(
                [sys.executable, "-m", "llmforge.cli.main", "operator", f"--peering={name}"], env=env, stdout=out,
                stderr=subprocess.STDOUT, cwd=tmp_path), log)
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
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

"""The local kubelet runs pods bound to its node as real processes and reports status like a kubelet."""

from __future__ import annotations

import sys
import time

import pytest
from kubernetes import client

from llmforge.devcluster.kubelet import NODE_NAME, RUNTIME_LABEL, LocalKubelet

pytestmark = pytest.mark.k8s

SCRIPT = """
import os, pathlib, sys
spec = pathlib.Path(sys.argv[1]).read_text()
pathlib.Path(os.environ["LLMFORGE_TERMINATION_LOG"]).write_text(
    f'{{"spec":"{spec.strip()}","pod":"{os.environ["POD"]}","secret":"{os.environ["TOKEN"]}"}}')
sys.exit(int(os.environ.get("CODE", "0")))
"""


@pytest.fixture(scope="module")
def kubelet(k8s_cluster, tmp_path_factory):
    api = k8s_cluster.api_client()
    k = LocalKubelet(api, tmp_path_factory.mktemp("kubelet"), bin_dir=str(sys.executable.rsplit("/", 1)[0]))
    k.start()
    yield k
    k.stop()


def _wait(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def _job(name: str, code: int) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "nodeSelector": {RUNTIME_LABEL: "local"},
            "tolerations": [{"key": RUNTIME_LABEL, "operator": "Equal", "value": "local", "effect": "NoSchedule"}],
            "volumes": [{"name": "spec", "configMap": {"name": f"{name}-spec"}}],
            "containers": [{
                "name": "main", "image": "llmforge/trainer:test",
                "command": ["python", "-c", SCRIPT, "/etc/llmforge/spec.yaml"],
                "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "CODE", "value": str(code)},
                        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}],
                "volumeMounts": [{"name": "spec", "mountPath": "/etc/llmforge"}],
            }],
        }}},
    }


@pytest.mark.parametrize("code,phase", [(0, "Succeeded"), (3, "Failed")])
def test_job_pod_runs_locally_and_reports(k8s_cluster, k8s_namespace, kubelet, code, phase):
    with k8s_cluster.api_client() as api:
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        core.create_namespaced_config_map(k8s_namespace, {"metadata": {"name": f"run{code}-spec"},
                                                          "data": {"spec.yaml": "hello-spec"}})
        core.create_namespaced_secret(k8s_namespace, {"metadata": {"name": "tok"}, "stringData": {"token": "s3"}})
        batch.create_namespaced_job(k8s_namespace, _job(f"run{code}", code))
        pod = _wait(lambda: next((p for p in core.list_namespaced_pod(k8s_namespace).items
                                  if p.status.phase in ("Succeeded", "Failed")), None))
        assert pod.spec.node_name == NODE_NAME
        assert pod.status.phase == phase
        term = pod.status.container_statuses[0].state.terminated
        assert term.exit_code == code
        assert term.message == f'{{"spec":"hello-spec","pod":"{pod.metadata.name}","secret":"s3"}}'
        if code == 0:
            _wait(lambda: batch.read_namespaced_job(f"run{code}", k8s_namespace).status.succeeded == 1)


def test_deleting_a_pod_stops_its_process(k8s_cluster, k8s_namespace, kubelet):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
           "spec": {"restartPolicy": "Never", "nodeSelector": {RUNTIME_LABEL: "local"},
                    "terminationGracePeriodSeconds": 5,
                    "tolerations": [{"key": RUNTIME_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "main", "image": "x", "command": ["sleep", "300"]}]}}
    with k8s_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        created = core.create_namespaced_pod(k8s_namespace, pod)
        _wait(lambda: core.read_namespaced_pod("sleeper", k8s_namespace).status.phase == "Running")
        proc = kubelet.running[created.metadata.uid].proc
        assert proc.poll() is None
        core.delete_namespaced_pod("sleeper", k8s_namespace)
        _wait(lambda: proc.poll() is not None, timeout=20)
        assert proc.returncode == -15  # SIGTERM, within the grace period
        _wait(lambda: not [p for p in core.list_namespaced_pod(k8s_namespace).items if p.metadata.name == "sleeper"])

"""Helpers for the FineTuneJob operator tests on the real control plane.

* `OperatorProcess`: `llmforge operator` as a subprocess (its own metrics port), stopped by PID.
* `FakeKubelet`: a TEST DOUBLE for the kubelet on one extra node that kwok does not manage, so a test
  decides when the trainer pod starts, what it exits with and what it writes as termination message —
  what the real trainer and kubelet would do. The node is Ready (lease renewed in the background) and
  labelled as a GKE T4 node, an accelerator the kwok fleet does not have, so only the pods a test aims
  at it land there, placed by the real kube-scheduler.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from llmforge import kube

ROOT = Path(__file__).resolve().parents[2]
FTJ = ("llmforge.dev/v1alpha1", "FineTuneJob")


def wait_until(fn: Callable[[], Any], timeout: float = 60.0, what: str = "condition", interval: float = 0.2) -> Any:
    """Poll until fn() is truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # keep polling through transient API errors
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class OperatorProcess:
    """`python -m llmforge.cli.main operator -n NS` with fast timers."""

    def __init__(self, kubeconfig: str, namespace: str, log_dir: Path, interval: float = 1.0):
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.interval = interval
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, LLMFORGE_COST_INTERVAL_SECONDS=str(self.interval),
                   LLMFORGE_PROGRESS_INTERVAL_SECONDS=str(self.interval),
                   PYTHONPATH=os.pathsep.join(str(ROOT / p) for p in ("operator",)))
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "w")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmforge.cli.main", "operator", "-n", self.namespace,
             "--metrics-port", str(self.metrics_port), "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.log_dir.glob("operator-*.log")))


class FakeKubelet:
    """TEST DOUBLE: plays the kubelet (and the trainer's exit) for pods on one manual node."""

    ACCELERATOR = "nvidia-tesla-t4"

    def __init__(self) -> None:
        self.node = f"manual-t4-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FakeKubelet:
        now = ts(datetime.now(UTC))
        kube.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": {
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "cloud.google.com/gke-accelerator": self.ACCELERATOR, "cloud.google.com/gke-gpu": "true",
                "node.kubernetes.io/instance-type": "n1-standard-32"}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": self._node_status(now)})
        self._heartbeat()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _node_status(self, now: str) -> dict[str, Any]:
        res = {"cpu": "32", "memory": "120Gi", "pods": "110", "nvidia.com/gpu": "4"}
        return {"capacity": res, "allocatable": res, "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test double",
             "lastHeartbeatTime": now, "lastTransitionTime": now}]}

    def _heartbeat(self) -> None:
        now = datetime.now(UTC)
        kube.request("PATCH", f"/api/v1/nodes/{self.node}/status", {"status": self._node_status(ts(now))},
                     content_type="application/strategic-merge-patch+json")
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.node, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40,
                          "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        kube.request("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}",
                     lease, {"fieldManager": "fake-kubelet", "force": "true"},
                     "application/apply-patch+yaml")

    def _loop(self) -> None:
        while not self._stop.wait(5):
            try:
                self._heartbeat()
            except Exception:  # noqa: BLE001 (best effort between tests)
                pass

    def stop(self, namespace: str) -> None:
        self._stop.set()
        for pod in kube.list_("v1", "Pod", namespace, "app.kubernetes.io/managed-by=llmforge"):
            kube.delete("v1", "Pod", namespace, pod["metadata"]["name"], grace_seconds=0)
        kube.request("DELETE", f"/api/v1/nodes/{self.node}")

    # -- what the kubelet (and the trainer) would write
    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return [p for p in kube.list_("v1", "Pod", namespace, "app.kubernetes.io/managed-by=llmforge")
                if p["spec"].get("nodeName") == self.node]

    def run(self, pod: dict[str, Any], started: datetime) -> None:
        self._status(pod, {"phase": "Running", "podIP": "127.0.0.1", "startTime": ts(started),
                           "conditions": [{"type": "Ready", "status": "True"}],
                           "containerStatuses": [self._container(pod, {"running": {"startedAt": ts(started)}},
                                                                 ready=True)]})

    def finish(self, pod: dict[str, Any], started: datetime, finished: datetime, exit_code: int,
               message: str | None = None, disrupted: bool = False) -> None:
        term = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": ts(started), "finishedAt": ts(finished)}
        if message is not None:
            term["message"] = message
        conditions = [{"type": "Ready", "status": "False", "reason": "PodCompleted"}]
        if disrupted:
            conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                               "message": "spot VM reclaimed (test double)", "lastTransitionTime": ts(finished)})
        self._status(pod, {"phase": "Succeeded" if exit_code == 0 else "Failed", "startTime": ts(started),
                           "conditions": conditions,
                           "containerStatuses": [self._container(pod, {"terminated": term}, ready=False)]})

    def _container(self, pod: dict[str, Any], state: dict[str, Any], ready: bool) -> dict[str, Any]:
        c = pod["spec"]["containers"][0]
        return {"name": c["name"], "image": c["image"], "imageID": "", "ready": ready, "restartCount": 0,
                "started": ready, "state": state}

    def _status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        kube.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                     {"status": status}, content_type="application/strategic-merge-patch+json")


def ftj_manifest(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "dataset": {"train": "gs://b/train.jsonl"}, "output": {"uri": f"gs://b/runs/{name}/"},
        "training": {"batchSize": 1, "maxSeqLength": 1024, "gradientAccumulationSteps": 8},
        "resources": {"accelerator": "nvidia-l4", "count": 1},
    }
    base.update(spec)
    return {"apiVersion": FTJ[0], "kind": FTJ[1], "metadata": {"name": name}, "spec": base}


def t4_manifest(name: str, **spec: Any) -> dict[str, Any]:
    """A job that only the fake kubelet's T4 node can take (T4 needs float16 compute)."""
    return ftj_manifest(name, resources={"accelerator": FakeKubelet.ACCELERATOR, "count": 1},
                        quantization={"computeDtype": "float16"},
                        training={"batchSize": 1, "maxSeqLength": 512, "gradientAccumulationSteps": 8}, **spec)


def ago(seconds: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds)

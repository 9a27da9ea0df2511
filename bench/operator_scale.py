"""Operator scale benchmark: N FineTuneJobs on the local control plane (kwok fake GKE GPU nodes).

Measures, in one run:
  * CR create -> Job create latency (p50/p99): client-side watch arrival times of the Job vs. POST return;
  * kube-controller-manager's own Job -> Pod latency (p50/p99), the reference for "how fast can it be";
  * time until every FineTuneJob's status says Succeeded;
  * operator RSS (peak, sampled every 0.5 s).

    python bench/operator_scale.py            # 1,000 jobs
    python bench/operator_scale.py -n 100     # quicker
Not a timed test: prints a Markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

import psutil  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client, watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from llmforge import kube  # noqa: E402
from llmforge.devcluster import LocalCluster  # noqa: E402
from tests.k8s.ftj_support import FTJ, free_port, ftj_manifest  # noqa: E402

NS = "bench"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def watch_arrivals(api: client.ApiClient, kind: str, seen: dict[str, float], stop: threading.Event) -> None:
    """First ADDED time (monotonic) per FineTuneJob name, from the Job's or Pod's label."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    fn = batch.list_namespaced_job if kind == "Job" else core.list_namespaced_pod
    while not stop.is_set():
        w = watch.Watch()
        for ev in w.stream(fn, NS, label_selector="app.kubernetes.io/managed-by=llmforge", timeout_seconds=5):
            name = (ev["object"].metadata.labels or {}).get("llmforge.dev/finetunejob")
            if name and name not in seen:
                seen[name] = time.monotonic()
            if stop.is_set():
                break


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()

    with LocalCluster() as cluster:
        os.environ["KUBECONFIG"] = cluster.kubeconfig
        kube._client = None
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            kube.request("PATCH", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}",
                         crd, {"fieldManager": "bench", "force": "true"}, "application/apply-patch+yaml")
        kube.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        while True:  # CRD served
            try:
                kube.request("GET", kube.path(*FTJ, NS))
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.5)

        metrics_port = free_port()
        log = open(Path(tempfile.gettempdir()) / "llmforge-bench-operator.log", "w")  # noqa: SIM115
        op = subprocess.Popen([sys.executable, "-m", "llmforge.cli.main", "operator", "-n", NS,
                               "--metrics-port", str(metrics_port), "--liveness",
                               f"http://127.0.0.1:{free_port()}/healthz"],
                              env=dict(os.environ, PYTHONPATH=str(ROOT / "operator")), stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT)
        proc = psutil.Process(op.pid)
        peak_rss = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    peak_rss[0] = max(peak_rss[0], proc.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.5)

        job_seen: dict[str, float] = {}
        pod_seen: dict[str, float] = {}
        api = client.ApiClient(kube.api_client().configuration)
        threads = [threading.Thread(target=sample, daemon=True),
                   threading.Thread(target=watch_arrivals, args=(api, "Job", job_seen, stop), daemon=True),
                   threading.Thread(target=watch_arrivals, args=(api, "Pod", pod_seen, stop), daemon=True)]
        for t in threads:
            t.start()
        time.sleep(3)  # operator start-up, not part of the measurement

        try:
            create_s, converged, rss_now = run(args, proc, created := {}, stop)
        finally:
            stop.set()
            if op.poll() is None:
                op.terminate()
                try:
                    op.wait(30)
                except subprocess.TimeoutExpired:
                    op.kill()
            log.close()
    report(args, created, job_seen, pod_seen, create_s, converged, peak_rss[0], rss_now)
    return 0 if converged else 1


def run(args: argparse.Namespace, proc: psutil.Process, created: dict[str, float],
        stop: threading.Event) -> tuple[float, float | None, int]:
    def make(i: int) -> None:
        name = f"b{i:05d}"
        for attempt in range(5):  # a saturated apiserver times out now and then; 409 = an earlier try landed
            try:
                kube.request("POST", kube.path(*FTJ, NS), ftj_manifest(name), timeout=60)
                break
            except ApiException as exc:
                if exc.status == 409:
                    break
                if attempt == 4:
                    raise
            except Exception:  # noqa: BLE001 (read timeout: retry)
                if attempt == 4:
                    raise
        created[name] = time.monotonic()

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(make, range(args.n)))
    create_s = time.monotonic() - t0
    converged = None
    while time.monotonic() - t0 < args.timeout:
        try:
            items = kube.request("GET", kube.path(*FTJ, NS), timeout=60)["items"]
        except Exception:  # noqa: BLE001 (saturated apiserver: poll again)
            continue
        done = sum(1 for o in items if (o.get("status") or {}).get("phase") == "Succeeded")
        if done == args.n:
            converged = time.monotonic() - t0
            break
        time.sleep(1)
    stop.set()
    return create_s, converged, proc.memory_info().rss


def report(args: argparse.Namespace, created: dict[str, float], job_seen: dict[str, float],
           pod_seen: dict[str, float], create_s: float, converged: float | None, peak_rss: int,
           rss_now: int) -> None:
    cr_job = [job_seen[n] - created[n] for n in created if n in job_seen]
    job_pod = [pod_seen[n] - job_seen[n] for n in job_seen if n in pod_seen]
    cpu = platform.processor() or platform.machine()
    out = f"""### Operator scale ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores shared with other work, {cpu})

`python bench/operator_scale.py -n {args.n}`: {args.n} FineTuneJobs created by {args.workers} client threads
in {create_s:.1f} s against the local control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok nodes; kwok completes each pod at once).

| measure | p50 | p99 | n |
|---|---|---|---|
| CR create -> Job exists (operator) | {pct(cr_job, 50) * 1000:.0f} ms | {pct(cr_job, 99) * 1000:.0f} ms | {len(cr_job)} |
| Job -> Pod exists (kube-controller-manager, reference) | {pct(job_pod, 50) * 1000:.0f} ms | {pct(job_pod, 99) * 1000:.0f} ms | {len(job_pod)} |

All {args.n} Succeeded in status after: {f'{converged:.1f} s' if converged else 'not within the timeout'}
(from the first create). Operator RSS: peak {peak_rss / 2**20:.0f} MiB, at the end {rss_now / 2**20:.0f} MiB.
Mean latencies: CR->Job {statistics.mean(cr_job) * 1000 if cr_job else float('nan'):.0f} ms,
Job->Pod {statistics.mean(job_pod) * 1000 if job_pod else float('nan'):.0f} ms.
"""
    print(out)


if __name__ == "__main__":
    sys.exit(main())

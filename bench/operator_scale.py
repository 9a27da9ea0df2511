"""Operator scale benchmark: N FineTuneJobs on the local control plane (kwok fake GKE GPU nodes).

Measures, in one run:
  * CR create -> Job create latency (p50/p99): client-side watch arrival times of the Job vs. POST return;
  * kube-controller-manager's own Job -> Pod latency (p50/p99), the reference for "how fast can it be";
  * time until every FineTuneJob's status says Succeeded;
  * operator RSS (peak, sampled every 0.5 s).

    python bench/operator_scale.py                      # 1,000 jobs, large-cluster client QPS
    python bench/operator_scale.py -n 100               # quicker
    python bench/operator_scale.py --profile default    # upstream kube-controller-manager defaults
    python bench/operator_scale.py --native             # the floor: the same Jobs, created directly

`--native` runs no operator: it creates the Jobs the operator would build (no owner) with the same client
threads, and times until every Job is Complete. That is how fast this machine's control plane finishes
N such Jobs at all, the reference for the operator's convergence time.

The `large` profile raises kube-controller-manager's and kube-scheduler's client QPS (upstream defaults
are 20 and 50 requests/s, which alone need minutes for 1,000 Jobs' ~5 writes each) and the Job
controller's concurrent syncs, as large production clusters do; the reference is measured under the same
settings, so the ratio stays fair.
Not a timed test: prints a Markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

import psutil  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from llmforge import kube  # noqa: E402
from llmforge.api.accelerators import machine  # noqa: E402
from llmforge.devcluster import LocalCluster  # noqa: E402
from llmforge.devcluster.nodes import DEFAULT_SHAPES, NodeShape, default_nodes  # noqa: E402
from tests.k8s.ftj_support import FTJ, free_port, ftj_manifest  # noqa: E402

NS = "bench"
#: kube-apiserver's audit log times the creates to the microsecond (creationTimestamps have 1 s resolution).
#: Pods are logged with their request body: kube-controller-manager names them by generateName.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Request", "verbs": ["create"], "resources": [{"group": "", "resources": ["pods"]}]},
        {"level": "Metadata", "verbs": ["create", "patch"],
         "resources": [{"group": "llmforge.dev", "resources": ["finetunejobs"]}, {"group": "batch", "resources": ["jobs"]}]},
        {"level": "None"},
    ],
}
PROFILES = {
    "default": {},
    "large": {"kube-controller-manager": ["--kube-api-qps=200", "--kube-api-burst=400", "--concurrent-job-syncs=50"],
              "kube-scheduler": ["--kube-api-qps=200", "--kube-api-burst=400"]},
}


def server_latencies(audit_log: str) -> tuple[list[float], list[float]]:
    """(CR -> Job, Job -> Pod) from kube-apiserver's audit log: when each create completed, to the
    microsecond, with no watcher's lag in it."""
    crs: dict[str, float] = {}
    jobs: dict[str, float] = {}
    pods: dict[str, float] = {}
    with open(audit_log) as f:
        for line in f:
            e = json.loads(line)
            ref, code = e.get("objectRef") or {}, (e.get("responseStatus") or {}).get("code")
            if ref.get("namespace") != NS or code != 201:  # 201: created (a server-side apply too)
                continue
            at = datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00")).timestamp()
            if ref["resource"] == "finetunejobs":
                crs.setdefault(ref["name"], at)
            elif ref["resource"] == "jobs" and ref.get("name", "").endswith("-train"):
                jobs.setdefault(ref["name"][: -len("-train")], at)
            elif ref["resource"] == "pods" and not ref.get("subresource"):
                owner = ((e.get("requestObject") or {}).get("metadata", {}).get("labels") or {}).get(
                    "llmforge.dev/finetunejob")
                if owner:
                    pods.setdefault(owner, at)
    for d in (crs, jobs):
        d.pop("warmup", None)  # the operator's start-up job, not measured
    return [jobs[n] - crs[n] for n in crs if n in jobs], [pods[n] - jobs[n] for n in jobs if n in pods]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def watch_raw(api: client.ApiClient, url_path: str, selector: str, handle: Callable[[dict], None],
              stop: threading.Event, wanted: bytes) -> None:
    """A plain JSON watch that parses only the events containing `wanted`: a watcher that decodes every
    event falls behind at this rate, and its lag would count as the operator's latency."""
    query = [("watch", "true"), ("timeoutSeconds", "30")] + ([("labelSelector", selector)] if selector else [])
    while not stop.is_set():
        try:
            m, url, hdrs, data, post = api.param_serialize("GET", url_path, query_params=query,
                                                           header_params={"Accept": "application/json"},
                                                           auth_settings=["BearerToken"])
            resp = api.call_api(m, url, hdrs, data, post, _request_timeout=(10, 60))
            buf = b""
            for chunk in resp.response.stream(1 << 16):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if wanted in line:
                        handle(json.loads(line)["object"])
                if stop.is_set():
                    return
        except Exception:  # noqa: BLE001 (saturated apiserver: watch again)
            time.sleep(0.5)


def first_seen(seen: dict[str, float]) -> Callable[[dict], None]:
    """Record when each FineTuneJob's child (by label) was first seen."""
    def handle(obj: dict) -> None:
        name = (obj.get("metadata", {}).get("labels") or {}).get("llmforge.dev/finetunejob")
        if name and name not in seen:
            seen[name] = time.monotonic()
    return handle


def succeeded(seen: dict[str, float]) -> Callable[[dict], None]:
    """Record when each FineTuneJob's status first said Succeeded."""
    def handle(obj: dict) -> None:
        name = obj.get("metadata", {}).get("name")
        if name and name not in seen and (obj.get("status") or {}).get("phase") == "Succeeded":
            seen[name] = time.monotonic()
    return handle


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="large")
    ap.add_argument("--l4-nodes", type=int, default=None, help="8-GPU L4 nodes to add (default: n / 8)")
    ap.add_argument("--native", action="store_true", help="no operator: create the Jobs directly (the floor)")
    args = ap.parse_args()

    # Enough fake GPUs for every job at once (the catalogue's 8 x L4 machine, g2-standard-96), so the pods run
    # in parallel and the measure is the control plane's, not one node's queue.
    pool = args.l4_nodes if args.l4_nodes is not None else -(-args.n // 8)
    l4x8 = machine("nvidia-l4", 8)
    shapes = DEFAULT_SHAPES + tuple(
        NodeShape(f"gke-l4-x8-{i}", l4x8.type, l4x8.vcpus, l4x8.memory_gib, "nvidia-l4", 8) for i in range(pool))
    with LocalCluster(nodes=default_nodes(shapes), extra_args=PROFILES[args.profile],
                      audit_policy=AUDIT_POLICY) as cluster:
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

        if args.native:
            return native(args, cluster)
        metrics_port = free_port()
        log = open(Path(tempfile.gettempdir()) / "llmforge-bench-operator.log", "w")  # noqa: SIM115
        op = subprocess.Popen([sys.executable, "-m", "llmforge.cli.main", "operator", "-n", NS,
                               "--metrics-port", str(metrics_port), "--liveness",
                               f"http://127.0.0.1:{free_port()}/healthz"],
                              # As the chart's Deployment runs it (MALLOC_ARENA_MAX: see values.yaml).
                              env=dict(os.environ, PYTHONPATH=str(ROOT / "operator"), MALLOC_ARENA_MAX="2"),
                              stdout=log,
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
        done_seen: dict[str, float] = {}
        api = client.ApiClient(kube.api_client().configuration)
        owned = "app.kubernetes.io/managed-by=llmforge"
        threads = [threading.Thread(target=sample, daemon=True),
                   threading.Thread(target=watch_raw, daemon=True,
                                    args=(api, kube.path("batch/v1", "Job", NS), owned, first_seen(job_seen), stop,
                                          b'{"type":"ADDED"')),
                   threading.Thread(target=watch_raw, daemon=True,
                                    args=(api, kube.path("v1", "Pod", NS), owned, first_seen(pod_seen), stop,
                                          b'{"type":"ADDED"')),
                   threading.Thread(target=watch_raw, daemon=True,
                                    args=(api, kube.path(*FTJ, NS), "", succeeded(done_seen), stop,
                                          b'"phase":"Succeeded"'))]
        for t in threads:
            t.start()
        # Operator start-up is not part of the measurement: one job through to Succeeded first.
        post_with_retries(kube.path(*FTJ, NS), ftj_manifest("warmup"))
        deadline = time.monotonic() + 120
        while "warmup" not in done_seen and time.monotonic() < deadline:
            time.sleep(0.2)
        for seen in (job_seen, pod_seen, done_seen):
            seen.clear()

        try:
            create_s, converged, rss_now = run(args, proc, created := {}, done_seen, stop)
            cpu_s = sum(proc.cpu_times()[:2])
            calls = api_calls(metrics_port)
            server_time = apiserver_time()
            stamps = server_latencies(cluster.audit_log)
        finally:
            stop.set()
            if op.poll() is None:
                op.terminate()
                try:
                    op.wait(30)
                except subprocess.TimeoutExpired:
                    op.kill()
            log.close()
    report(args, created, job_seen, pod_seen, create_s, converged, peak_rss[0], rss_now, cpu_s, calls, stamps)
    total = sum(v[0] for v in server_time.values())
    print("kube-apiserver request time by verb and resource (share of all; where the 2 cores go):\n")
    print("| request | share of time | per job | mean |\n|---|---|---|---|")
    for key, (secs, count) in sorted(server_time.items(), key=lambda kv: -kv[1][0])[:10]:
        print(f"| {key} | {100 * secs / total:.0f}% | {count / args.n:.2f} | {1000 * secs / max(count, 1):.0f} ms |")
    return 0 if converged else 1


def native(args: argparse.Namespace, cluster: LocalCluster) -> int:
    """The same N Jobs created directly, no operator: time until all are Complete."""
    from llmforge.builders.finetunejob import build_job
    from llmforge.settings import Settings

    settings = Settings()
    created: dict[str, float] = {}
    job_seen: dict[str, float] = {}
    pod_seen: dict[str, float] = {}
    done: dict[str, float] = {}
    stop = threading.Event()
    api = client.ApiClient(kube.api_client().configuration)
    owned = "app.kubernetes.io/managed-by=llmforge"

    def complete(obj: dict) -> None:
        name = (obj.get("metadata", {}).get("labels") or {}).get("llmforge.dev/finetunejob")
        if name and name not in done and any(c.get("type") == "Complete" and c.get("status") == "True"
                                             for c in (obj.get("status") or {}).get("conditions") or []):
            done[name] = time.monotonic()

    for target, wanted, handle in ((kube.path("batch/v1", "Job", NS), b'{"type":"ADDED"', first_seen(job_seen)),
                                   (kube.path("v1", "Pod", NS), b'{"type":"ADDED"', first_seen(pod_seen)),
                                   (kube.path("batch/v1", "Job", NS), b'"type":"Complete"', complete)):
        threading.Thread(target=watch_raw, daemon=True, args=(api, target, owned, handle, stop, wanted)).start()
    time.sleep(3)

    def make(i: int) -> None:
        name = f"b{i:05d}"
        manifest = {**ftj_manifest(name), "metadata": {"name": name, "namespace": NS}}
        post_with_retries(kube.path("batch/v1", "Job", NS), build_job(manifest, settings))
        created[name] = time.monotonic()

    create_s, converged = create_and_wait(args, make, done)
    stop.set()
    job_pod = [pod_seen[n] - job_seen[n] for n in job_seen if n in pod_seen]
    stamped = server_latencies(cluster.audit_log)[1]
    print(f"""### Native floor ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end)

`python bench/operator_scale.py -n {args.n} --profile {args.profile} --native`: {args.n} trainer Jobs (as the
operator builds them) created directly by {args.workers} client threads in {create_s:.1f} s, no operator.
Job -> Pod exists p50 {pct(job_pod, 50) * 1000:.0f} ms, p99 {pct(job_pod, 99) * 1000:.0f} ms by client watch, p50 {pct(stamped, 50) * 1000:.0f} ms,
p99 {pct(stamped, 99) * 1000:.0f} ms by the audit log. All {args.n} Jobs Complete after:
{f'{converged:.1f} s' if converged else 'not within the timeout'} (from the first create).
""")
    return 0 if converged else 1


def post_with_retries(path: str, body: dict) -> None:
    """POST; a saturated apiserver times out now and then, and 409 means an earlier try landed."""
    for attempt in range(5):
        try:
            kube.request("POST", path, body, timeout=60)
            return
        except ApiException as exc:
            if exc.status == 409:
                return
            if attempt == 4:
                raise
        except Exception:  # noqa: BLE001 (read timeout: retry)
            if attempt == 4:
                raise


def apiserver_time() -> dict[str, list[float]]:
    """Seconds kube-apiserver spent serving each resource+verb (its own request-duration histogram),
    watches excluded."""
    from prometheus_client.parser import text_string_to_metric_families

    api = kube.api_client()
    m, url, hdrs, data, post = api.param_serialize("GET", "/metrics", header_params={"Accept": "text/plain"},
                                                   auth_settings=["BearerToken"])
    text = api.call_api(m, url, hdrs, data, post, _request_timeout=30).read().decode()
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "apiserver_request_duration_seconds":
            continue
        for s in fam.samples:
            if s.name.endswith(("_sum", "_count")) and s.labels.get("verb") not in ("WATCH", "CONNECT"):
                sub = s.labels.get("subresource")
                key = f"{s.labels['verb']} {s.labels['resource']}{'/' + sub if sub else ''}"
                out.setdefault(key, [0.0, 0.0])[s.name.endswith("_count")] += s.value
    return out


def api_calls(port: int) -> dict[str, float]:
    """The operator's own API request counter (llmforge_api_requests_total), summed by verb and resource.

    kopf's own requests (its watches, its annotation patches and Event posts) are not in it."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()  # noqa: S310
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if fam.name == "llmforge_api_requests" and s.name.endswith("_total"):
                key = f"{s.labels['verb']} {s.labels['resource']}"
                out[key] = out.get(key, 0) + s.value
                if s.labels.get("code") == "409":
                    out["conflict count"] = out.get("conflict count", 0) + s.value
            elif fam.name == "llmforge_api_request_duration_seconds" and s.name.endswith(("_sum", "_count")):
                key = f"latency {s.name.rsplit('_', 1)[1]}"
                out[key] = out.get(key, 0) + s.value
            elif fam.name == "llmforge_watch_lag_seconds" and s.name.endswith(("_sum", "_count")):
                out[f"lag {s.name.rsplit('_', 1)[1]}"] = s.value
            elif (fam.name == "llmforge_reconcile_duration_seconds" and s.name.endswith(("_sum", "_count"))
                  and s.labels.get("kind") == "FineTuneJob" and s.labels.get("handler") == "reconcile"):
                out[f"reconcile {s.name.rsplit('_', 1)[1]}"] = s.value
    return out


def run(args: argparse.Namespace, proc: psutil.Process, created: dict[str, float], done_seen: dict[str, float],
        stop: threading.Event) -> tuple[float, float | None, int]:
    def make(i: int) -> None:
        name = f"b{i:05d}"
        post_with_retries(kube.path(*FTJ, NS), ftj_manifest(name))
        created[name] = time.monotonic()

    create_s, converged = create_and_wait(args, make, done_seen)
    stop.set()
    return create_s, converged, proc.memory_info().rss


def create_and_wait(args: argparse.Namespace, make: Callable[[int], None],
                    done: dict[str, float]) -> tuple[float, float | None]:
    """Create N objects with the client threads; (seconds to create, seconds until all N are done or None)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(make, range(args.n)))
    create_s = time.monotonic() - t0
    while time.monotonic() - t0 < args.timeout:
        if len(done) >= args.n:
            return create_s, max(done.values()) - t0
        time.sleep(0.5)
    return create_s, None


def report(args: argparse.Namespace, created: dict[str, float], job_seen: dict[str, float],
           pod_seen: dict[str, float], create_s: float, converged: float | None, peak_rss: int,
           rss_now: int, cpu_s: float, calls: dict[str, float],
           stamps: tuple[list[float], list[float]]) -> None:
    cr_job = [job_seen[n] - created[n] for n in created if n in job_seen]
    job_pod = [pod_seen[n] - job_seen[n] for n in job_seen if n in pod_seen]
    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    latency = calls.pop("latency sum", 0.0) / max(1.0, calls.pop("latency count", 0.0))
    lag = calls.pop("lag sum", 0.0) / max(1.0, calls.pop("lag count", 0.0))
    reconcile = calls.pop("reconcile sum", 0.0) / max(1.0, calls.pop("reconcile count", 0.0))
    conflicts = calls.pop("conflict count", 0.0)
    per_job = ", ".join(f"{k} {v / args.n:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]))
    out = f"""### Operator scale ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores, {cpu}, load {load:.1f} at the end)

`python bench/operator_scale.py -n {args.n} --profile {args.profile}`: {args.n} FineTuneJobs created by {args.workers} client threads
in {create_s:.1f} s against the local control plane (etcd, kube-apiserver, controller-manager, scheduler,
kwok nodes incl. {-(-args.n // 8) if args.l4_nodes is None else args.l4_nodes} fake 8 x L4 nodes; kwok completes each pod at once).

| measure | p50 | p99 | n |
|---|---|---|---|
| CR create -> Job exists (operator), audit log | {pct(stamps[0], 50) * 1000:.0f} ms | {pct(stamps[0], 99) * 1000:.0f} ms | {len(stamps[0])} |
| Job -> Pod exists (kube-controller-manager, reference), audit log | {pct(stamps[1], 50) * 1000:.0f} ms | {pct(stamps[1], 99) * 1000:.0f} ms | {len(stamps[1])} |
| CR create -> Job exists (operator), client watch | {pct(cr_job, 50) * 1000:.0f} ms | {pct(cr_job, 99) * 1000:.0f} ms | {len(cr_job)} |
| Job -> Pod exists (kube-controller-manager, reference), client watch | {pct(job_pod, 50) * 1000:.0f} ms | {pct(job_pod, 99) * 1000:.0f} ms | {len(job_pod)} |

All {args.n} Succeeded in status after: {f'{converged:.1f} s' if converged else 'not within the timeout'}
(from the first create). Operator RSS: peak {peak_rss / 2**20:.0f} MiB, at the end {rss_now / 2**20:.0f} MiB.
Mean latencies: CR->Job {statistics.mean(cr_job) * 1000 if cr_job else float('nan'):.0f} ms,
Job->Pod {statistics.mean(job_pod) * 1000 if job_pod else float('nan'):.0f} ms by client watch; by the audit log CR->Job
{statistics.mean(stamps[0]) if stamps[0] else float('nan'):.2f} s, Job->Pod {statistics.mean(stamps[1]) if stamps[1] else float('nan'):.2f} s.
Operator CPU: {cpu_s:.1f} s ({cpu_s / args.n * 1000:.0f} ms per job). Its own API calls per job: {per_job}
({sum(calls.values()) / args.n:.2f} in all), {latency * 1000:.0f} ms mean latency as the operator saw them;
{conflicts:.0f} answered 409 Conflict (a status write computed from an older FineTuneJob).
Where CR -> Job goes, by the operator's own metrics: a new FineTuneJob reached the operator {lag:.1f} s after
its creationTimestamp (mean, 1 s resolution), and its reconcile (admission, applies, status write) took
{reconcile:.2f} s (mean).
"""
    print(out)


if __name__ == "__main__":
    sys.exit(main())

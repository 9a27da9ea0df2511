"""The three images as built here (`make images`), run by the real node: as their non-root user, on a read-only
root filesystem, every module of their packages imports, and each entrypoint starts.

Training, evaluation and serving in these images run end to end in tests/e2e/test_node_quickstart.py.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from llmforge.devcluster import demo, images, nodedemo

pytestmark = [pytest.mark.k8s, pytest.mark.node]

IMPORT_ALL = """
import importlib, json, os, pkgutil, sys
names, failed = [], {}
for top in sys.argv[1:]:
    pkg = importlib.import_module(top)
    for m in pkgutil.walk_packages(pkg.__path__, top + "."):
        if ".devcluster" in m.name:  # dev tooling: the operator image never runs it
            continue
        names.append(m.name)
        try:
            importlib.import_module(m.name)
        except Exception as e:
            failed[m.name] = repr(e)
try:
    open("/probe", "w")
    root_writable = True
except OSError:
    root_writable = False
print(json.dumps({"uid": os.getuid(), "modules": names, "failed": failed, "root_writable": root_writable}))
"""


def _run_pod(cluster, namespace: str, image: str, command: list[str], timeout: float = 300) -> dict:
    name = f"img-{uuid.uuid4().hex[:6]}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"restartPolicy": "Never", "containers": [{
               "name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
               "resources": {"limits": {"memory": "3Gi"}},
               "securityContext": nodedemo.restricted(user=None),  # the image's own USER must be non-root
               "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
               "securityContext": {"runAsNonRoot": True},
               "volumes": [{"name": "tmp", "emptyDir": {}}], **nodedemo.node_placement()}}
    nodedemo.apply(cluster.kubeconfig, [pod])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = json.loads(demo.kubectl(cluster.kubeconfig, "-n", namespace, "get", "pod", name, "-o", "json"))
        if got["status"].get("phase") in ("Succeeded", "Failed"):
            logs = demo.kubectl(cluster.kubeconfig, "-n", namespace, "logs", name, check=False)
            return {"pod": got, "logs": logs}
        time.sleep(1)
    pytest.fail(f"pod {name} ({image}) did not finish in {timeout:.0f}s")


@pytest.fixture(scope="module")
def loaded(real_node):
    images.load_into(real_node.ctr, real_node.import_image)
    return real_node


@pytest.mark.parametrize(("image", "packages", "least"), [
    (images.TRAINER, ["llmforge_trainer", "llmforge"], 15),
    (images.SERVER, ["llmforge_server", "llmforge"], 6),
    (images.OPERATOR, ["llmforge"], 40),
])
def test_every_module_imports_as_the_images_own_non_root_user_on_a_read_only_root(
        loaded, k8s_cluster, k8s_namespace, image, packages, least):
    out = _run_pod(k8s_cluster.local, k8s_namespace, image.removeprefix("docker.io/"),
                   ["python", "-c", IMPORT_ALL, *packages])
    assert out["pod"]["status"]["phase"] == "Succeeded", out["logs"][-3000:]
    report = json.loads(out["logs"].strip().splitlines()[-1])
    assert report["uid"] == 10001
    assert report["root_writable"] is False
    assert not report["failed"], report["failed"]
    assert len(report["modules"]) >= least, report["modules"]


def test_trainer_sees_real_nf4_layers_in_its_image(loaded, k8s_cluster, k8s_namespace):
    """bitsandbytes' CPU backend inside the image quantizes a layer to NF4 (the QLoRA path)."""
    code = ("import torch, bitsandbytes as bnb, json\n"
            "lin = bnb.nn.Linear4bit(64, 64, quant_type='nf4', compute_dtype=torch.float32)\n"
            "lin.load_state_dict(torch.nn.Linear(64, 64).state_dict()); lin = lin.to('cpu')\n"
            "w = lin.weight\n"
            "print(json.dumps({'type': type(lin).__name__, 'dtype': str(w.dtype),"
            " 'quant': w.quant_state.quant_type if w.quant_state else None,"
            " 'out': list(lin(torch.randn(2, 64)).shape)}))")
    out = _run_pod(k8s_cluster.local, k8s_namespace, images.TRAINER.removeprefix("docker.io/"),
                   ["python", "-c", code])
    assert out["pod"]["status"]["phase"] == "Succeeded", out["logs"][-3000:]
    report = json.loads(out["logs"].strip().splitlines()[-1])
    assert report == {"type": "Linear4bit", "dtype": "torch.uint8", "quant": "nf4", "out": [2, 64]}, report


def test_entrypoints_start(loaded, k8s_cluster, k8s_namespace):
    for image, entry in ((images.TRAINER, "llmforge-train"), (images.TRAINER, "llmforge-eval"),
                         (images.SERVER, "llmforge-serve"), (images.OPERATOR, "llmforge")):
        out = _run_pod(k8s_cluster.local, k8s_namespace, image.removeprefix("docker.io/"), [entry, "--help"])
        assert out["pod"]["status"]["phase"] == "Succeeded", (entry, out["logs"][-2000:])
        assert "usage" in out["logs"].lower(), (entry, out["logs"][-2000:])

"""The generated CRDs on a real kube-apiserver: install, accept examples, reject the invalid table exactly as
`llmforge validate` does, keep every status field, and show printer columns and explanations."""

from __future__ import annotations

import os
import subprocess
import typing
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from pydantic import BaseModel

from llmforge.api import KINDS
from llmforge.validation import validate_object
from tests.cases import CASES, ftj

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "llmforge.dev", "v1alpha1"
PLURALS = {"FineTuneJob": "finetunejobs", "Evaluation": "evaluations", "ModelDeployment": "modeldeployments"}


@pytest.fixture(scope="module")
def crds(k8s_cluster):
    """Install crds/*.yaml and wait until every CRD is Established."""
    with k8s_cluster.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        names = []
        for path in sorted((ROOT / "crds").glob("*.yaml")):
            body = yaml.safe_load(path.read_text())
            try:
                ext.create_custom_resource_definition(body)
            except ApiException as e:
                if e.status != 409:
                    raise
                current = ext.read_custom_resource_definition(body["metadata"]["name"])
                body["metadata"]["resourceVersion"] = current.metadata.resource_version
                ext.replace_custom_resource_definition(body["metadata"]["name"], body)
            names.append(body["metadata"]["name"])
        _wait(lambda: all(_established(ext, n) for n in names), "CRDs Established")
    return names


def _established(ext, name):
    conds = ext.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conds)


def _wait(pred, what, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _create(api, ns, obj):
    co = client.CustomObjectsApi(api)
    return co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[obj["kind"]], obj,
                                              field_validation="Strict")


def test_crds_established(crds):
    assert sorted(crds) == sorted(f"{p}.{GROUP}" for p in PLURALS.values())


def test_every_example_is_accepted(k8s_cluster, k8s_namespace, crds):
    created = 0
    with k8s_cluster.api_client() as api:
        for path in sorted((ROOT / "examples").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and str(doc.get("apiVersion", "")).startswith(f"{GROUP}/"):
                    _create(api, k8s_namespace, doc)
                    created += 1
    assert created >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_apiserver_and_validate_agree_on_invalid(k8s_cluster, k8s_namespace, crds, case):
    ours = [p for p in validate_object(case.obj) if p.severity == "error"]
    assert any(p.path == case.path for p in ours), [str(p) for p in ours]
    with k8s_cluster.api_client() as api, pytest.raises(ApiException) as info:
        _create(api, k8s_namespace, case.obj)
    assert info.value.status == 422, info.value.body
    body = yaml.safe_load(info.value.body)
    fields = [c.get("field", "") for c in body.get("details", {}).get("causes", [])]
    message = body.get("message", "")
    assert case.path in fields or f"{case.path}:" in message, (fields, message)
    assert case.server in message, message


def _sample(annotation, depth=0):
    """A value of the annotated type, so every declared status field is exercised."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _sample(args[0], depth)
    if origin is typing.Literal:  # a phase Literal is built from StrEnum members: write the plain string
        return getattr(args[0], "value", args[0])
    if origin is list:
        return [_sample(args[0], depth + 1)]
    if origin is dict:
        return {"rougeL": _sample(args[1], depth + 1)}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {(f.alias or n): _sample(f.annotation, depth + 1) for n, f in annotation.model_fields.items()}
    return {bool: True, int: 7, float: 1.25, str: "x"}.get(annotation, "x")


@pytest.mark.parametrize("kind", list(KINDS))
def test_full_status_round_trips_unpruned(k8s_cluster, k8s_namespace, crds, kind):
    from tests.cases import lfe, mdep

    obj = {"FineTuneJob": ftj, "Evaluation": lfe, "ModelDeployment": mdep}[kind]()
    obj["metadata"]["name"] = "full-status"
    status_model = typing.get_args(KINDS[kind].model_fields["status"].annotation)[0]
    status = _sample(status_model)
    for cond in status["conditions"]:
        cond.update(status="True", lastTransitionTime="2026-11-26T10:00:00Z")
    for key in ("startTime", "completionTime", "updatedAt", "stepStartedAt"):
        status.pop(key, None)
    with k8s_cluster.api_client() as api:
        co = client.CustomObjectsApi(api)
        created = _create(api, k8s_namespace, obj)
        created["status"] = status
        co.replace_namespaced_custom_object_status(GROUP, VERSION, k8s_namespace, PLURALS[kind], "full-status",
                                                   created)
        back = co.get_namespaced_custom_object(GROUP, VERSION, k8s_namespace, PLURALS[kind], "full-status")
    assert back["status"] == status
    assert len(yaml.safe_dump(status)) > 500


def _kubectl(k8s_cluster, *args):
    from llmforge.devcluster.assets import find

    exe = str(find("kubectl"))  # the Go-built v1.34 kubectl, never an older one on PATH
    env = {**os.environ, "KUBECONFIG": k8s_cluster.kubeconfig}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=60)


def test_kubectl_get_shows_printer_columns(k8s_cluster, k8s_namespace, crds):
    obj = ftj()
    obj["metadata"]["name"] = "cols"
    with k8s_cluster.api_client() as api:
        co = client.CustomObjectsApi(api)
        created = _create(api, k8s_namespace, obj)
        created["status"] = {"phase": "Running", "progress": {"summary": "42% 120/285", "loss": 1.21},
                             "gpu": "nvidia-l4x1 spot", "cost": {"usd": 1.84}}
        co.replace_namespaced_custom_object_status(GROUP, VERSION, k8s_namespace, "finetunejobs", "cols", created)
    out = _kubectl(k8s_cluster, "get", "finetunejobs", "-n", k8s_namespace)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "GPU", "COST", "AGE"]
    for value in ("cols", "Running", "42%", "120/285", "1.21", "nvidia-l4x1", "1.84"):
        assert value in row.split(), row
    out = _kubectl(k8s_cluster, "get", "llmforge", "-n", k8s_namespace)
    assert out.returncode == 0 and "finetunejob.llmforge.dev/cols" in out.stdout, out.stdout + out.stderr


def test_kubectl_explain_teaches(k8s_cluster, crds):
    out = _kubectl(k8s_cluster, "explain", "finetunejob.spec.lora.alpha")
    assert out.returncode == 0, out.stderr
    assert "Scaling numerator" in out.stdout
    out = _kubectl(k8s_cluster, "explain", "modeldeployment.spec.canary.promotion.steps")
    assert "100 promotes the canary to stable" in " ".join(out.stdout.split())


def test_spec_immutable_except_suspend(k8s_cluster, k8s_namespace, crds):
    obj = ftj()
    obj["metadata"]["name"] = "immut"
    with k8s_cluster.api_client() as api:
        co = client.CustomObjectsApi(api)
        _create(api, k8s_namespace, obj)
        args = (GROUP, VERSION, k8s_namespace, "finetunejobs", "immut")
        co.patch_namespaced_custom_object(*args, {"spec": {"suspend": True}})
        with pytest.raises(ApiException) as info:
            co.patch_namespaced_custom_object(*args, {"spec": {"training": {"learningRate": 1e-4}}})
        assert info.value.status == 422 and "immutable" in info.value.body
        with pytest.raises(ApiException) as info:
            co.patch_namespaced_custom_object(*args, {"spec": {"budget": {"maxCostUSD": 5}}})
        assert info.value.status == 422 and "immutable" in info.value.body
        assert co.get_namespaced_custom_object(*args)["spec"]["suspend"] is True

"""The trainer Job and ConfigMap builders: placement, resources per GKE shape, security, failure policy."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from llmforge.builders import BUILDERS, render_children
from llmforge.builders.common import machine_shape, pod_requests
from llmforge.builders.finetunejob import build_job
from llmforge.settings import Settings
from tests.cases import ftj

SETTINGS = Settings()


def resource(**spec):
    obj = ftj(**spec)
    obj["metadata"] = {"name": "demo", "namespace": "team-a", "uid": "1234-uid", "generation": 1}
    return obj


def pod_spec(job):
    return job["spec"]["template"]["spec"]


def trainer(job):
    (c,) = pod_spec(job)["containers"]
    return c


def test_registered_for_render():
    assert "FineTuneJob" in BUILDERS
    kinds = [c["kind"] for c in render_children(resource(), SETTINGS)]
    assert kinds == ["ConfigMap", "Job"]


def test_deterministic_name_and_output():
    a = render_children(resource(), SETTINGS)
    b = render_children(copy.deepcopy(resource()), SETTINGS)
    assert a == b
    assert a[1]["metadata"]["name"] == "demo-train"
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("acc,count,cpu,mem", [
    ("nvidia-l4", 1, "6", "24Gi"),            # g2-standard-8: 8 vCPU, 32 GB
    ("nvidia-l4", 2, "18", "72Gi"),           # g2-standard-24
    ("nvidia-tesla-a100", 1, "9", "63Gi"),    # a2-highgpu-1g: 12 vCPU, 85 GB
    ("nvidia-a100-80gb", 1, "9", "127Gi"),    # a2-ultragpu-1g: 12 vCPU, 170 GB
    ("nvidia-h100-80gb", 1, "19", "175Gi"),   # a3-highgpu-1g: 26 vCPU, 234 GB
    ("nvidia-h100-80gb", 8, "156", "1404Gi"),  # a3-highgpu-8g
])
def test_placement_and_resources_per_shape(acc, count, cpu, mem):
    job = build_job(resource(resources={"accelerator": acc, "count": count}), SETTINGS)
    spec = pod_spec(job)
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": acc}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    res = trainer(job)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == count
    assert res["requests"] == {"cpu": cpu, "memory": mem}


def test_machine_shapes_are_gke_types():
    assert machine_shape("nvidia-l4", 1)[0] == "g2-standard-8"
    assert machine_shape("nvidia-tesla-a100", 2)[0] == "a2-highgpu-2g"
    assert machine_shape("nvidia-h100-80gb", 1)[0] == "a3-highgpu-1g"
    assert machine_shape("nvidia-l4", 16) is None


def test_spot_selector_and_toleration():
    spec = pod_spec(build_job(resource(resources={"accelerator": "nvidia-l4", "spot": True}), SETTINGS))
    assert spec["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert any(t["key"] == "cloud.google.com/gke-spot" for t in spec["tolerations"])


def test_cpu_has_no_gpu_fields():
    job = build_job(resource(resources={"accelerator": "cpu"}), SETTINGS)
    spec = pod_spec(job)
    assert "nodeSelector" not in spec and "tolerations" not in spec
    text = json.dumps(job)
    assert "nvidia.com/gpu" not in text and "gke-accelerator" not in text
    assert trainer(job)["resources"]["requests"] == {"cpu": "2", "memory": "8Gi"}


def test_overrides_of_cpu_and_memory():
    res = trainer(build_job(resource(resources={"accelerator": "nvidia-l4", "cpu": "3", "memory": "20Gi"}),
                            SETTINGS))["resources"]
    assert res["requests"] == {"cpu": "3", "memory": "20Gi"}


def test_auto_resolves_to_cheapest_fitting_gpu():
    job = build_job(resource(resources={"accelerator": "auto"}, training={"batchSize": 2}), SETTINGS)
    assert pod_spec(job)["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    # Defaults (seq 2048 x batch 4 of Llama 3.1's 128k-vocab logits) no longer fit 22.5 GiB: next cheapest.
    job = build_job(resource(resources={"accelerator": "auto"}), SETTINGS)
    assert pod_spec(job)["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-tesla-a100"


def test_security_context():
    job = build_job(resource(), SETTINGS)
    pod_sc = pod_spec(job)["securityContext"]
    sc = trainer(job)["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False and sc["runAsNonRoot"] is True


def test_pod_failure_policy():
    job = build_job(resource(), SETTINGS)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail and fail[0]["onExitCodes"]["values"] == [2]
    assert pod_spec(job)["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_secret_only_as_secret_key_ref():
    obj = resource(baseModel={"name": "meta-llama/Llama-3.1-8B-Instruct",
                              "tokenSecretRef": {"name": "hf-token", "key": "tok"}})
    children = render_children(obj, SETTINGS)
    env = {e["name"]: e for e in trainer(children[1])["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "tok"}}}
    # The Secret's name appears only in the env reference and in the spec copy the trainer reads.
    dumped = yaml.safe_dump(children[1])
    assert dumped.count("hf-token") == 1


def test_pod_basics():
    job = build_job(resource(serviceAccountName="trainer-sa", image="my/img:1"), SETTINGS)
    spec, c = pod_spec(job), trainer(job)
    assert spec["serviceAccountName"] == "trainer-sa"
    assert c["image"] == "my/img:1"
    assert c["command"] == ["llmforge-train", "--spec", "/etc/llmforge/spec.yaml"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["ports"][0]["containerPort"] == 9090
    shm = [v for v in spec["volumes"] if v["name"] == "dshm"][0]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "spec", "configMap": {"name": "demo-spec"}} in spec["volumes"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LLMFORGE_NAMESPACE"] == "team-a" and env["LLMFORGE_NAME"] == "demo"
    assert env["LLMFORGE_UID"] == "1234-uid"
    assert build_job(resource(), SETTINGS)["spec"]["template"]["spec"]["containers"][0]["image"] == \
        SETTINGS.trainer_image


def test_labels_and_owner():
    for child in render_children(resource(), SETTINGS):
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "llmforge"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/component"] == "trainer"
        assert labels["llmforge.dev/finetunejob"] == "demo"
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["controller"] is True and owner["uid"] == "1234-uid" and owner["kind"] == "FineTuneJob"


def test_configmap_is_the_resource_without_status():
    obj = resource()
    obj["status"] = {"phase": "Running"}
    cm = render_children(obj, SETTINGS)[0]
    doc = yaml.safe_load(cm["data"]["spec.yaml"])
    assert doc["kind"] == "FineTuneJob" and doc["spec"] == obj["spec"] and "status" not in doc
    assert doc["metadata"] == {"name": "demo", "namespace": "team-a", "uid": "1234-uid"}


def test_suspend_follows_spec_and_override():
    assert build_job(resource(suspend=True), SETTINGS)["spec"]["suspend"] is True
    assert build_job(resource(), SETTINGS)["spec"]["suspend"] is False
    assert build_job(resource(), SETTINGS, suspend=True)["spec"]["suspend"] is True


def test_requests_fit_the_fake_gke_nodes():
    # The smallest L4 machine (g2-standard-8) leaves ~7.9 CPU and ~30 GiB allocatable.
    req = pod_requests("nvidia-l4", 1)
    assert int(req["cpu"]) <= 7 and int(req["memory"].removesuffix("Gi")) <= 30


def test_workload_env_reaches_every_container_after_ours():
    """LLMFORGE_WORKLOAD_ENV (NAME=VALUE, comma-separated) goes to trainer, evaluation and vLLM containers."""
    from llmforge.api.modeldeployment import ModelDeployment
    from llmforge.builders.evaluation import build_children as eval_children
    from llmforge.builders.modeldeployment import ServingInputs
    from llmforge.builders.modeldeployment import build_children as md_children

    settings = Settings.from_env({"LLMFORGE_WORKLOAD_ENV": "STORAGE_EMULATOR_HOST=http://gcs:4443, A_B=x=y"})
    extra = [{"name": "STORAGE_EMULATOR_HOST", "value": "http://gcs:4443"}, {"name": "A_B", "value": "x=y"}]
    job = build_job(resource(), settings)
    assert trainer(job)["env"][-2:] == extra
    assert trainer(job)["env"][0]["name"] == "LLMFORGE_NAMESPACE"  # ours first, unchanged
    ev = {"apiVersion": "llmforge.dev/v1alpha1", "kind": "Evaluation", "metadata": {"name": "e", "namespace": "n"},
          "spec": {"model": {"baseModel": {"uri": "gs://b/m"}}, "dataset": {"uri": "gs://b/t.jsonl"},
                   "output": {"uri": "gs://b/out/"}, "resources": {"accelerator": "cpu"}}}
    eval_job = [c for c in eval_children(ev, settings, None) if c["kind"] == "Job"][0]
    assert eval_job["spec"]["template"]["spec"]["containers"][0]["env"][-2:] == extra
    md = ModelDeployment.model_validate({"metadata": {"name": "m", "namespace": "n"}, "spec": {
        "model": {"baseModel": {"uri": "gs://b/m"}}, "resources": {"accelerator": "cpu"}}})
    deps = [c for c in md_children(md, settings, ServingInputs()) if c["kind"] == "Deployment"]
    assert deps and all(d["spec"]["template"]["spec"]["containers"][0]["env"][-2:] == extra for d in deps)
    assert Settings().workload_env == [] and trainer(build_job(resource(), SETTINGS))["env"][-1]["name"] != "A_B"


@pytest.mark.parametrize("bad", ["NOEQUALS", "1BAD=x", "=x"])
def test_workload_env_rejects_what_is_not_name_equals_value(bad):
    with pytest.raises(ValueError, match="LLMFORGE_WORKLOAD_ENV"):
        Settings.from_env({"LLMFORGE_WORKLOAD_ENV": bad})


def test_workload_pool_selector_and_tolerations_join_the_accelerators_own():
    from llmforge.builders.common import workload_placement
    from llmforge.settings import Settings

    s = Settings.from_env({"LLMFORGE_WORKLOAD_NODE_SELECTOR": "pool=llm,llmforge.dev/runtime=containerd",
                           "LLMFORGE_WORKLOAD_TOLERATIONS": "llmforge.dev/runtime=containerd:NoSchedule,dedicated:NoExecute"})
    out = workload_placement(s, "nvidia-l4", 1, False)
    assert out["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "llm",
                                   "llmforge.dev/runtime": "containerd"}
    assert out["tolerations"][1:] == [
        {"key": "llmforge.dev/runtime", "operator": "Equal", "value": "containerd", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]
    assert out["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert workload_placement(Settings(), "cpu", 1, False) == {}


def test_bad_workload_pool_settings_name_the_variable():
    import pytest

    from llmforge.settings import Settings

    with pytest.raises(ValueError, match="LLMFORGE_WORKLOAD_TOLERATIONS.*KEY=VALUE:EFFECT"):
        Settings.from_env({"LLMFORGE_WORKLOAD_TOLERATIONS": "a=b:Sometimes"})
    with pytest.raises(ValueError, match="LLMFORGE_WORKLOAD_NODE_SELECTOR"):
        Settings.from_env({"LLMFORGE_WORKLOAD_NODE_SELECTOR": "novalue"})

"""The manifests `make demo-node` and the real-node end-to-end test apply (llmforge.devcluster.nodedemo)."""

from __future__ import annotations

import base64
import copy

import yaml

from llmforge.devcluster import nodedemo
from llmforge.settings import Settings


def test_quickstart_is_the_kind_quickstart_with_smaller_cpu_requests_only():
    kind = [d for d in yaml.safe_load_all(nodedemo.QUICKSTART.read_text()) if d]
    node = nodedemo.quickstart_manifests()
    assert [d["kind"] for d in node] == ["FineTuneJob", "Evaluation", "ModelDeployment"]
    for a, b in zip(kind, node, strict=True):
        b = copy.deepcopy(b)
        assert b["spec"]["resources"].pop("cpu") == nodedemo.POD_CPU
        a["spec"]["resources"].pop("cpu")
        assert a == b


def test_operator_settings_put_workloads_on_the_real_node_with_local_images():
    env = nodedemo.workload_env()
    settings = Settings.from_env(env)  # every value parses
    assert settings.image_pull_policy == "Never" and settings.runtime == "kubernetes"
    assert settings.node_selector() == {"llmforge.dev/runtime": "containerd"}
    assert settings.tolerations()[0]["effect"] == "NoSchedule"
    assert f"STORAGE_EMULATOR_HOST={nodedemo.GCS_URL}" in settings.workload_env


def test_operator_pod_uses_its_kubeconfig_secret_and_no_service_account_token(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [
        {"name": "c", "cluster": {"server": "https://127.0.0.1:6443", "certificate-authority": str(ca)}}]}))
    secret, deployment = nodedemo.operator_manifests(str(kubeconfig), 18080, 19090)
    inlined = yaml.safe_load(base64.b64decode(secret["data"]["config"]))
    cluster = inlined["clusters"][0]["cluster"]
    assert "certificate-authority" not in cluster
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca.read_bytes()
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["KUBECONFIG"] == "/etc/llmforge-kube/config"
    assert env["LLMFORGE_LIVENESS"] == "http://127.0.0.1:18080/healthz"
    assert pod["tolerations"] == nodedemo.node_placement()["tolerations"]


def test_fake_gcs_service_has_the_fixed_cluster_ip_its_urls_name():
    _, deployment, service = nodedemo.storage_manifests("localhost/llmforge/fake-gcs:x")
    assert service["spec"]["clusterIP"] == nodedemo.GCS_IP
    args = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert args[0] == "/fake-gcs-server"  # the one-file image has a Cmd, no Entrypoint: args alone would replace it
    assert args[args.index("-external-url") + 1] == nodedemo.GCS_URL

"""`helm install` of charts/llmforge into the real local control plane (Go-built helm, kube-apiserver, kwok).

After the install the operator's Deployment, ServiceAccount and RBAC exist, the CRDs from the chart's crds/
are established, kwok runs the operator pod on the fake CPU node, and the ServiceAccount is allowed exactly
what the chart grants (checked with SubjectAccessReview against the apiserver's own RBAC authorizer).
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from kubernetes import client

from llmforge.devcluster import assets

pytestmark = pytest.mark.k8s

CHART = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "charts" / "llmforge")


def helm(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    path = assets.find("helm")
    assert path is not None, "helm not built: run `make setup-k8s`"
    out = subprocess.run([str(path), "--kubeconfig", cluster.kubeconfig, *args], capture_output=True, text=True,
                         timeout=300)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture
def release(k8s_cluster):
    """Install the chart in a fresh namespace with two replicas (peering on); uninstall afterwards."""
    name, ns = "llmforge", f"sys-{uuid.uuid4().hex[:8]}"
    helm(k8s_cluster, "install", name, CHART, "--namespace", ns, "--create-namespace",
         "--set", "operator.replicas=2", "--set", "networkPolicy.enabled=true",
         "--set", "pricing.enabled=true", "--set", "pricing.date=2026-11-26", "--set", "pricing.source=test")
    yield name, ns
    helm(k8s_cluster, "uninstall", name, "--namespace", ns, "--wait", check=False)
    with k8s_cluster.api_client() as api:
        client.CoreV1Api(api).delete_namespace(ns)


def _can(api, user: str, verb: str, group: str, resource: str, namespace: str = "ml", name: str = "") -> bool:
    resource, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user, groups=["system:serviceaccounts", "system:authenticated"],
        resource_attributes=client.V1ResourceAttributes(verb=verb, group=group, resource=resource,
                                                        namespace=namespace or None, name=name or None,
                                                        subresource=subresource or None)))
    return client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed


def test_helm_install_creates_operator_and_rbac(k8s_cluster, release):
    name, ns = release
    sa_name = f"{name}-operator"
    with k8s_cluster.api_client() as api:
        apps, core, rbac = client.AppsV1Api(api), client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        deployment = apps.read_namespaced_deployment(sa_name, ns)
        assert deployment.spec.replicas == 2
        assert deployment.spec.template.spec.service_account_name == sa_name
        assert "--peering=llmforge" in deployment.spec.template.spec.containers[0].args
        core.read_namespaced_service_account(sa_name, ns)
        role = rbac.read_cluster_role(sa_name)
        assert any("finetunejobs" in (r.resources or []) for r in role.rules)
        binding = rbac.read_cluster_role_binding(sa_name)
        assert binding.subjects[0].name == sa_name and binding.subjects[0].namespace == ns
        assert core.read_namespaced_config_map("llmforge-pricing", ns).data["prices.yaml"].startswith("date:")
        crds = {c.metadata.name for c in client.ApiextensionsV1Api(api).list_custom_resource_definition().items}
        assert {"finetunejobs.llmforge.dev", "evaluations.llmforge.dev", "modeldeployments.llmforge.dev",
                "clusterkopfpeerings.kopf.dev"} <= crds
        peering = client.CustomObjectsApi(api).get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                                         "llmforge")
        assert peering["metadata"]["name"] == "llmforge"

        # kwok plays the kubelet: both operator pods get scheduled on the CPU node and reported ready.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            deployment = apps.read_namespaced_deployment(sa_name, ns)
            if (deployment.status.ready_replicas or 0) == 2:
                break
            time.sleep(1)
        assert deployment.status.ready_replicas == 2, deployment.status

        user = f"system:serviceaccount:{ns}:{sa_name}"
        allowed = [("create", "batch", "jobs"), ("patch", "llmforge.dev", "finetunejobs"),
                   ("patch", "llmforge.dev", "finetunejobs/status"),
                   ("watch", "", "pods"), ("create", "", "events"), ("patch", "apps", "deployments"),
                   ("list", "apiextensions.k8s.io", "customresourcedefinitions")]
        denied = [("get", "", "secrets"), ("list", "", "secrets"), ("delete", "batch", "jobs"),
                  ("update", "apps", "deployments"), ("create", "rbac.authorization.k8s.io", "clusterroles"),
                  ("list", "", "configmaps"), ("get", "", "pods"), ("delete", "llmforge.dev", "finetunejobs"),
                  ("update", "llmforge.dev", "finetunejobs/status")]
        for verb, group, resource in allowed:
            assert _can(api, user, verb, group, resource), (verb, group, resource)
        for verb, group, resource in denied:
            assert not _can(api, user, verb, group, resource), (verb, group, resource)

"""The local control plane is real: kube-scheduler places GPU pods, controllers run Jobs and GC.

Each test asserts values that only the real components produce (a bound nodeName, an Unschedulable
condition from the scheduler, a Job's Complete condition, pods removed by the garbage collector).
"""

from __future__ import annotations

import pytest
from kubernetes import client

from llmforge.devcluster.nodes import ACCELERATOR_LABEL, GPU_RESOURCE, default_nodes
from tests.waiting import wait_for

pytestmark = pytest.mark.k8s

GPU_TOLERATION = client.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")




@pytest.fixture
def core(k8s_cluster):
    with k8s_cluster.api_client() as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def batch(k8s_cluster):
    with k8s_cluster.api_client() as api:
        yield client.BatchV1Api(api)


def gpu_pod(name, accelerator, gpus=1, tolerate=True):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_selector={ACCELERATOR_LABEL: accelerator},
            tolerations=[GPU_TOLERATION] if tolerate else None,
            containers=[client.V1Container(
                name="trainer", image="example.invalid/trainer:1",
                resources=client.V1ResourceRequirements(limits={GPU_RESOURCE: str(gpus)}),
            )],
        ),
    )


def condition(obj, type_):
    return next((c for c in (obj.status.conditions or []) if c.type == type_), None)


def test_fake_gke_nodes_ready_with_labels_taints_and_gpus(core):
    expected = {n["metadata"]["name"]: n for n in default_nodes()}
    nodes = core.list_node(label_selector="type=kwok").items
    assert len(nodes) == len(expected) > 0
    for node in nodes:
        want = expected[node.metadata.name]
        ready = condition(node, "Ready")
        assert ready is not None and ready.status == "True", node.metadata.name
        for key, value in want["metadata"]["labels"].items():
            assert node.metadata.labels.get(key) == value
        taints = [(t.key, t.value, t.effect) for t in (node.spec.taints or [])]
        want_taints = [(t["key"], t["value"], t["effect"]) for t in want["spec"].get("taints", [])]
        assert taints == want_taints
        gpus = want["status"]["allocatable"].get(GPU_RESOURCE)
        assert node.status.allocatable.get(GPU_RESOURCE) == gpus
        assert node.status.capacity.get(GPU_RESOURCE) == gpus
    by_accel = {n.metadata.labels.get(ACCELERATOR_LABEL) for n in nodes}
    assert {"nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb", None} <= by_accel


@pytest.mark.parametrize(("gpus", "expected_nodes"), [
    (1, {"gke-l4-0", "gke-l4-spot-0"}),
    (2, {"gke-l4-spot-0"}),  # only the g2-standard-24 has two L4s: the scheduler must fit resources
])
def test_scheduler_binds_l4_pod_to_an_l4_node(core, k8s_namespace, gpus, expected_nodes):
    core.create_namespaced_pod(k8s_namespace, gpu_pod("l4", "nvidia-l4", gpus))
    pod = wait_for(lambda: (p := core.read_namespaced_pod("l4", k8s_namespace)).spec.node_name and p,
                   what="pod bound to a node")
    assert pod.spec.node_name in expected_nodes
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels[ACCELERATOR_LABEL] == "nvidia-l4"
    assert condition(pod, "PodScheduled").status == "True"
    events = core.list_namespaced_event(k8s_namespace, field_selector="involvedObject.name=l4").items
    assert any(e.reason == "Scheduled" and e.reporting_component == "default-scheduler" for e in events), \
        [(e.reason, e.reporting_component) for e in events]
    # kwok runs the "kubelet" side: the bound pod turns Running on the fake node.
    wait_for(lambda: core.read_namespaced_pod("l4", k8s_namespace).status.phase == "Running",
             what="pod Running via kwok")


@pytest.mark.parametrize(("pod", "reason_text"), [
    (gpu_pod("p", "nvidia-tesla-t4"), "node affinity/selector"),  # no such accelerator
    (gpu_pod("p", "nvidia-l4", gpus=4), "Insufficient nvidia.com/gpu"),  # no L4 node has 4
    (gpu_pod("p", "nvidia-l4", tolerate=False), "untolerated taint"),
], ids=["no-t4-node", "too-many-gpus", "no-toleration"])
def test_pod_without_matching_node_stays_pending_unschedulable(core, k8s_namespace, pod, reason_text):
    core.create_namespaced_pod(k8s_namespace, pod)
    cond = wait_for(lambda: condition(core.read_namespaced_pod("p", k8s_namespace), "PodScheduled"),
                    what="PodScheduled condition")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")
    assert reason_text in cond.message
    pod = core.read_namespaced_pod("p", k8s_namespace)
    assert pod.status.phase == "Pending" and pod.spec.node_name is None


def job(name, completions=1):
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            completions=completions, parallelism=completions, backoff_limit=0,
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
                restart_policy="Never",
                node_selector={"type": "kwok"},
                containers=[client.V1Container(name="main", image="example.invalid/job:1")],
            )),
        ),
    )


def test_job_completes_on_kwok_node(batch, core, k8s_namespace):
    batch.create_namespaced_job(k8s_namespace, job("train", completions=2))
    done = wait_for(lambda: condition(batch.read_namespaced_job("train", k8s_namespace), "Complete"),
                    timeout=90, what="Job Complete condition")
    assert done.status == "True"
    status = batch.read_namespaced_job("train", k8s_namespace).status
    assert status.succeeded == 2 and not status.failed
    pods = core.list_namespaced_pod(k8s_namespace, label_selector="job-name=train").items
    assert len(pods) == 2
    assert all(p.status.phase == "Succeeded" and p.spec.node_name for p in pods)


def test_garbage_collector_deletes_job_pods(batch, core, k8s_namespace):
    created = batch.create_namespaced_job(k8s_namespace, job("gc"))
    pods = wait_for(lambda: core.list_namespaced_pod(k8s_namespace, label_selector="job-name=gc").items,
                    what="Job pod created")
    assert len(pods) == 1
    owners = pods[0].metadata.owner_references
    assert [(o.kind, o.uid, o.controller) for o in owners] == [("Job", created.metadata.uid, True)]
    batch.delete_namespaced_job("gc", k8s_namespace, propagation_policy="Background")
    wait_for(lambda: not core.list_namespaced_pod(k8s_namespace, label_selector="job-name=gc").items,
             what="garbage collector to delete the Job's pod")


def test_namespace_controller_empties_and_removes_a_namespace(core):
    name = "t-ns-delete"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: core.list_namespaced_service_account(name).items, what="default ServiceAccount")
    core.create_namespaced_pod(name, gpu_pod("p", "nvidia-l4"))
    core.delete_namespace(name)

    def gone():
        try:
            core.read_namespace(name)
        except client.ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, timeout=90, what="namespace controller to delete the namespace and its pod")
    assert not core.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={name}").items

"""A real node: containerd runs the pods, so what these tests see comes from a real kubelet and kernel.

Each test checks something kwok cannot fake: a termination message read from the container's file, logs
from containerd, traffic through kube-proxy's iptables rules, an OOM kill by the kernel, a signal reaching
PID 1. The last test stops the node, checks the host is as it was before, and starts it again.
"""

from __future__ import annotations

import os
import time
import urllib.request

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from llmforge.devcluster.realnode import POD_SUBNET, RUNTIME, RUNTIME_LABEL, RealNode, RealNodeError
from tests.fixtures.realnode import host_state
from tests.waiting import wait_for

pytestmark = pytest.mark.node

UID = 10001


@pytest.fixture
def core(k8s_cluster):
    with k8s_cluster.api_client() as api:
        yield client.CoreV1Api(api)



def node_pod(name, image, command, *, memory=None, grace=5, labels=None, volumes=(), mounts=(), probe=None,
             read_only_root=True):
    """A pod only the real node takes: the runtime toleration + nodeSelector, non-root, image never pulled."""
    container = {
        "name": "main", "image": image, "imagePullPolicy": "Never", "command": command,
        "securityContext": {"readOnlyRootFilesystem": read_only_root, "allowPrivilegeEscalation": False},
        "volumeMounts": list(mounts),
    }
    if memory:
        container["resources"] = {"limits": {"memory": memory, "cpu": "500m"},
                                  "requests": {"memory": memory, "cpu": "100m"}}
    if probe:
        container["readinessProbe"] = probe
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeSelector": {RUNTIME_LABEL: RUNTIME},
            "tolerations": [{"key": RUNTIME_LABEL, "operator": "Equal", "value": RUNTIME, "effect": "NoSchedule"}],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID},
            "containers": [container],
            "volumes": list(volumes),
        },
    }


def terminated(core, ns, name):
    pod = core.read_namespaced_pod(name, ns)
    statuses = pod.status.container_statuses or []
    if statuses and statuses[0].state.terminated:
        return pod, statuses[0].state.terminated
    return None


def test_node_ready_with_runtime_label_and_taint(real_node, core):
    node = core.read_node(real_node.name)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True", ready.message
    assert node.metadata.labels[RUNTIME_LABEL] == RUNTIME
    assert [(t.key, t.value, t.effect) for t in node.spec.taints or []] == [(RUNTIME_LABEL, RUNTIME, "NoSchedule")]
    # reported by the running kubelet and containerd, not by a manifest
    assert node.status.node_info.kubelet_version == "v1.34.4"
    assert node.status.node_info.container_runtime_version.startswith("containerd://2.")
    assert {(a.type, a.address) for a in node.status.addresses} >= {("InternalIP", real_node.node_ip)}
    print(f"kubelet start -> node Ready: {real_node.ready_seconds:.2f} s")


def test_pod_succeeds_with_termination_message_and_logs(real_node, busybox_image, core, k8s_namespace):
    script = ("echo uid=$(id -u); if touch /probe 2>/dev/null; then echo rootfs=rw; else echo rootfs=ro; fi; "
              "printf 'result from %s' $(hostname) > /dev/termination-log")
    t0 = time.monotonic()
    core.create_namespaced_pod(k8s_namespace, node_pod("once", busybox_image, ["/bin/sh", "-c", script]))
    pod, state = wait_for(lambda: terminated(core, k8s_namespace, "once"), what="pod 'once' to terminate")
    wait_for(lambda: core.read_namespaced_pod("once", k8s_namespace).status.phase == "Succeeded", what="Succeeded")
    print(f"pod create -> Succeeded: {time.monotonic() - t0:.2f} s")
    assert pod.spec.node_name == real_node.name
    assert (state.exit_code, state.reason) == (0, "Completed")
    assert state.message == "result from once"
    assert core.read_namespaced_pod_log("once", k8s_namespace) == f"uid={UID}\nrootfs=ro\n"


def test_cluster_ip_service_answers_from_the_host(real_node, busybox_image, core, k8s_namespace):
    script = 'echo "hello from $(hostname)" > /tmp/index.html && exec httpd -f -p 8080 -h /tmp'
    core.create_namespaced_pod(k8s_namespace, node_pod(
        "web", busybox_image, ["/bin/sh", "-c", script], labels={"app": "web"},
        volumes=[{"name": "tmp", "emptyDir": {}}], mounts=[{"name": "tmp", "mountPath": "/tmp"}],
        probe={"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}))
    svc = core.create_namespaced_service(k8s_namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    pod = wait_for(lambda: (p := core.read_namespaced_pod("web", k8s_namespace)).status.container_statuses
                   and p.status.container_statuses[0].ready and p, what="web pod Ready")
    prefix = POD_SUBNET.rsplit(".", 2)[0]
    assert pod.status.pod_ip.startswith(prefix + "."), pod.status.pod_ip

    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a host's HTTP proxy

    def get():  # kube-proxy writes the endpoint's rules about 1 s after the pod turns Ready
        try:
            with no_proxy.open(f"http://{svc.spec.cluster_ip}:80/index.html", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return None
    assert wait_for(get, timeout=20, interval=0.3, what=f"GET {svc.spec.cluster_ip}") == "hello from web\n"


def test_memory_limit_oom_kills(real_node, busybox_image, core, k8s_namespace):
    # dd reads 64 MiB from /dev/zero into one buffer; exec makes it PID 1, so its death ends the container.
    command = ["/bin/sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=64M count=1"]
    t0 = time.monotonic()
    core.create_namespaced_pod(k8s_namespace, node_pod("hog", busybox_image, command, memory="32Mi"))
    pod, state = wait_for(lambda: terminated(core, k8s_namespace, "hog"), what="pod 'hog' to terminate")
    print(f"pod create -> OOMKilled: {time.monotonic() - t0:.2f} s")
    assert (state.reason, state.exit_code) == ("OOMKilled", 137)


def test_pod_deletion_sends_sigterm_to_pid_1(real_node, busybox_image, core, k8s_namespace, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the pod runs as UID 10001
    # PID 1 ignores signals it has no handler for: without the trap, deletion waits the whole 30 s grace.
    # ($$$$ is the shell's $$: Kubernetes turns $$ into $ in a command.)
    script = ("trap 'echo \"TERM pid=$$$$\" > /out/marker; exit 143' TERM; echo ready; "
              "while true; do sleep 0.2; done")
    core.create_namespaced_pod(k8s_namespace, node_pod(
        "term", busybox_image, ["/bin/sh", "-c", script], grace=30,
        volumes=[{"name": "out", "hostPath": {"path": str(out), "type": "Directory"}}],
        mounts=[{"name": "out", "mountPath": "/out"}]))

    def logged_ready():
        try:
            return core.read_namespaced_pod_log("term", k8s_namespace) == "ready\n"
        except ApiException:
            return False  # container not started yet
    wait_for(logged_ready, what="the trap to be set")
    t0 = time.monotonic()
    core.delete_namespaced_pod("term", k8s_namespace)

    def gone():
        try:
            core.read_namespaced_pod("term", k8s_namespace)
            return False
        except ApiException as e:
            return e.status == 404
    wait_for(gone, timeout=40, what="pod 'term' deleted")
    elapsed = time.monotonic() - t0
    print(f"pod delete -> gone: {elapsed:.2f} s")
    assert (out / "marker").read_text() == "TERM pid=1\n"
    assert elapsed < 10, f"deletion took {elapsed:.1f} s of the 30 s grace period: SIGTERM did not end PID 1"


def test_a_second_real_node_is_refused(real_node, k8s_cluster, core):
    with pytest.raises(RealNodeError, match="another real node is running"):
        RealNode(k8s_cluster.local, name="realnode").start()
    ready = next(c for c in core.read_node(real_node.name).status.conditions if c.type == "Ready")
    assert ready.status == "True"  # the refused start touched nothing of the running node


# Keep last: it stops the session's node and starts it again.
def test_stop_restores_the_host_and_images_survive_a_restart(real_node, busybox_image, host_before_real_node,
                                                             core):
    procs = list(real_node.procs.values())
    state_dir = real_node.state_dir
    assert len(procs) == 3 and host_state() != host_before_real_node  # the node did change the host

    real_node.stop()

    after = host_state()
    for key, before in host_before_real_node.items():
        assert after[key] == before, f"{key} not restored"
    assert not [p for p in procs if p.alive()]
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _in_node_cgroup(pid)]
    assert not state_dir.exists()
    assert not [line for line in open("/proc/self/mountinfo") if str(state_dir) in line]
    with pytest.raises(ApiException) as e:
        core.read_node(real_node.name)
    assert e.value.status == 404

    real_node.start()
    assert busybox_image in real_node.images()  # containerd's root (content, snapshots) persists


def _in_node_cgroup(pid: str) -> bool:
    try:
        cgroups = open(f"/proc/{pid}/cgroup").read()
    except OSError:
        return False
    return "/kubepods" in cgroups or "/llmforge-realnode" in cgroups

"""Pure: the real node's configuration files and flags, from its paths (realnode.RealNode writes them).

containerd 2.x (config version 3), the bridge CNI network, the KubeletConfiguration and kube-proxy's flags,
plus the pause container's C source. The reasons for the unusual settings are in docs/real-node.md.
"""

from __future__ import annotations

import json
from pathlib import Path

RUNTIME_LABEL = "llmforge.dev/runtime"
RUNTIME = "containerd"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CLUSTER_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"
BRIDGE = "rn-cni0"
NETWORK = "realnode"  # the CNI network name; host-local keeps its leases in <ipam dir>/<NETWORK>/

# The sandbox ("pause") container: sleeps until SIGTERM/SIGINT, reaps orphans if it is PID 1 of a shared
# PID namespace. Built with gcc -static, so the image is this one file.
PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, 0); sigaction(SIGTERM, &q, 0); sigaction(SIGCHLD, &r, 0);
  for (;;) pause();
}
"""


def containerd_toml(root: Path, state: Path, socket: str, runc: str, cni_bin_dir: str, cni_conf_dir: Path) -> str:
    q = json.dumps  # a JSON string is a valid TOML basic string
    return f"""\
version = 3
root = {q(str(root))}
state = {q(str(state))}
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs",
  "io.containerd.nri.v1.nri"]
[grpc]
  address = {q(socket)}
[ttrpc]
  address = {q(socket + '.ttrpc')}
[plugins.'io.containerd.internal.v1.opt']
  path = {q(str(state / 'opt'))}
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = {q(PAUSE_IMAGE)}
[plugins.'io.containerd.cri.v1.runtime']
  # Without CAP_SYS_RESOURCE (missing from some VMs' bounding set) runc cannot set an oom_score_adj below
  # containerd's own, and every sandbox fails; this keeps pods at or above it.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  netns_mounts_under_state_dir = true  # not /run/netns
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = {q(runc)}
        Root = {q(str(state / 'runc'))}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [{q(cni_bin_dir)}]
    conf_dir = {q(str(cni_conf_dir))}
"""


def cni_conflist(ipam_dir: Path) -> dict:
    """One bridge with the pods' gateway on it; no masquerade, so pods cannot reach beyond this host."""
    return {
        "cniVersion": "1.0.0", "name": NETWORK,
        "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                     "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                              "ranges": [[{"subnet": POD_SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}}],
    }


def kubelet_config(kubelet_dir: Path, node_ip: str, socket: str, client_ca_file: str) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node_ip, "port": 10250, "readOnlyPort": 0,  # listens on the lo address only
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": client_ca_file}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{socket}",
        # cgroup v1 hosts: 1.35 flips failCgroupV1 to true
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "podLogsDir": str(kubelet_dir / "pod-logs"),
        "volumePluginDir": str(kubelet_dir / "volume-plugins"),  # else it creates /usr/libexec/kubernetes
        "resolvConf": str(kubelet_dir / "resolv.conf"),
        "clusterDomain": "cluster.local", "rotateCertificates": False, "serializeImagePulls": False,
        # Imported images cannot be pulled again: never garbage-collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "maxPods": 20,
        "registerWithTaints": [{"key": RUNTIME_LABEL, "value": RUNTIME, "effect": "NoSchedule"}],
    }


def kube_proxy_args(kubeconfig: Path, name: str, node_ip: str) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}", f"--hostname-override={name}", "--proxy-mode=iptables",
        f"--cluster-cidr={CLUSTER_CIDR}", "--bind-address=127.0.0.1", "--healthz-bind-address=127.0.0.1:10256",
        "--metrics-bind-address=127.0.0.1:10249", f"--nodeport-addresses={node_ip}/32",
        # 0 = leave the host's conntrack table size and TCP timeouts alone
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
    ]

"""RealNode: a real Kubernetes node on this host (containerd 2, runc, kubelet, kube-proxy) joined to a
LocalCluster, for tests that need real containers: images, exit codes, termination messages, logs,
memory limits, signals and Service traffic. Needs root; see docs/real-node.md.

The node registers with the label and taint `llmforge.dev/runtime=containerd`, so only pods that
tolerate it land there. There is no registry: images come from `import_image()` (an OCI or docker
archive) and pods use `imagePullPolicy: Never`. containerd's root (content and snapshots: the imported
images) persists in ${LLMFORGE_CACHE:-~/.cache/llmforge}/realnode/containerd; its state, sockets, the
kubelet's files and the logs live in a temp state dir. What the node changes on the host is recorded
first and undone by stop() (realnode_host.py).

    with LocalCluster() as cluster, RealNode(cluster) as node:
        node.import_image("busybox.tar")
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from . import assets
from . import realnode_host as host
from .apiclient import ApiError
from .oci import single_layer_image
from .process import Proc, spawn, stop_all
from .realnode_config import (
    CLUSTER_CIDR,
    NETWORK,
    PAUSE_C,
    PAUSE_IMAGE,
    POD_SUBNET,
    RUNTIME,
    RUNTIME_LABEL,
    cni_conflist,
    containerd_toml,
    kube_proxy_args,
    kubelet_config,
)
from .realnode_host import RealNodeError

__all__ = ["CLUSTER_CIDR", "PAUSE_IMAGE", "POD_SUBNET", "RUNTIME", "RUNTIME_LABEL", "RealNode", "RealNodeError",
           "unavailable"]

CNI_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
PROXY_HEALTHZ = "http://127.0.0.1:10256/healthz"

# command -> (Debian package, why); checked by unavailable()
HOST_COMMANDS = {
    "runc": ("runc", "the OCI runtime containerd's shim calls"),
    "iptables": ("iptables", "kube-proxy and the kubelet program Services with it"),
    "ip6tables": ("iptables", "kube-proxy and the kubelet program Services with it"),
    "conntrack": ("conntrack", "kube-proxy clears stale UDP flows with it"),
    "ip": ("iproute2", "the node IP on lo and the bridge"),
    "gcc": ("gcc", "compiles the pause container"),
    "openssl": ("openssl", "the control plane's kubelet client certificate"),
}


def cache_root() -> Path:
    return Path(os.environ.get("LLMFORGE_CACHE") or Path.home() / ".cache" / "llmforge")


def cni_bin_dir() -> str | None:
    return next((d for d in CNI_DIRS if all(Path(d, p).is_file() for p in ("bridge", "host-local", "loopback"))),
                None)


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def unavailable() -> str | None:
    """Why a real node cannot run on this machine (one line to act on), or None when it can."""
    if os.uname().sysname != "Linux":
        return "a real node needs Linux"
    if os.geteuid() != 0:
        return "a real node needs root (it mounts, creates cgroups, a bridge, iptables rules and sets sysctls)"
    absent = [n for n in assets.NODE if assets.find(n) is None]
    if absent:
        return (f"missing {', '.join(absent)} in {', '.join(map(str, assets.search_dirs()))}: "
                "run `make setup-k8s` (scripts/build-k8s.sh builds them)")
    packages = {pkg: f"{cmd}: {why}" for cmd, (pkg, why) in HOST_COMMANDS.items() if _which(cmd) is None}
    if _which("nft") is None and "nf_tables" in _iptables_version():
        packages["nftables"] = "nft: deletes the empty iptables-nft tables the kubelet and kube-proxy leave"
    if cni_bin_dir() is None:
        packages["containernetworking-plugins"] = f"bridge, host-local, loopback: CNI plugins, in one of {CNI_DIRS}"
    if _which("gcc") and not Path(_gcc_libc()).is_absolute():
        packages["libc6-dev"] = "libc.a: links the pause container statically"
    if packages:
        return (f"missing host packages {', '.join(sorted(packages))} ({'; '.join(packages.values())}): "
                f"apt-get install -y --no-install-recommends {' '.join(sorted(packages))} "
                "(scripts/setup-host.sh installs them)")
    if not _has_memory_cgroup():
        return "no cgroup memory controller (neither /sys/fs/cgroup/memory nor memory in cgroup2's controllers)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlay filesystem (containerd's overlayfs snapshotter needs it)"
    return None


def _iptables_version() -> str:
    ipt = _which("iptables")
    return subprocess.run([ipt, "--version"], capture_output=True, text=True).stdout if ipt else ""


def _gcc_libc() -> str:
    return subprocess.run(["gcc", "-print-file-name=libc.a"], capture_output=True, text=True).stdout.strip()


def _has_memory_cgroup() -> bool:
    if Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        return True
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    return controllers.exists() and "memory" in controllers.read_text().split()


class RealNode:
    """A kubelet named `name` on `node_ip` (added to lo) joined to `cluster` (a started LocalCluster whose
    `real_nodes` include `name`). `state_dir` defaults to a temp dir, removed by stop() unless start-up
    failed; `containerd_root` (images) defaults to the persistent cache."""

    def __init__(self, cluster, name: str = "realnode", node_ip: str = "10.200.0.1",
                 state_dir: str | Path | None = None, containerd_root: str | Path | None = None,
                 timeout: float = 120.0, die_with_parent: bool = True):
        self.cluster = cluster
        self.name = name
        self.node_ip = node_ip
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else None
        self.containerd_root = Path(containerd_root or cache_root() / "realnode" / "containerd").resolve()
        self.timeout = timeout
        self.die_with_parent = die_with_parent
        self.procs: dict[str, Proc] = {}
        self._lock_fd: int | None = None
        self._record: dict | None = None
        self.ready_seconds: float | None = None  # kubelet start -> node Ready, of the last start()

    # -- public ----------------------------------------------------------------------------------
    @property
    def socket(self) -> str:
        return str(self._dir("containerd") / "containerd.sock")

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run `ctr -a <socket> -n k8s.io <args>` (the kubelet's namespace)."""
        argv = [str(assets.find("ctr")), "-a", self.socket, "-n", "k8s.io", *args]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RealNodeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def images(self) -> set[str]:
        return set(self.ctr("images", "ls", "-q").stdout.split())

    def import_image(self, archive: str | Path) -> None:
        """Import an OCI or docker archive (unpacked for the overlayfs snapshotter the kubelet uses). The packed
        layers are dropped once unpacked: containers run from the snapshots, and keeping both doubles the disk
        (about 10 GB for the trainer and server images)."""
        self.ctr("images", "import", "--local", "--snapshotter", "overlayfs", "--discard-unpacked-layers", str(archive))

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> RealNode:
        reason = unavailable()
        if reason:
            raise RealNodeError(reason)
        if self.name not in getattr(self.cluster, "real_nodes", ()):
            raise RealNodeError(f"the cluster has no token for node {self.name!r}: "
                                f"LocalCluster(real_nodes=(..., {self.name!r}))")
        self._lock_fd = host.lock()  # raises if another real node runs; then there is nothing to undo
        try:
            stale = host.load_record()
            if stale:  # an earlier run crashed before its stop() finished: undo with its own record
                errors: list[str] = []
                host.undo(stale, errors)
                if errors:
                    raise RealNodeError(f"could not clean up an earlier run ({stale['state_dir']}): {errors}")
                if stale.get("own_state_dir"):
                    shutil.rmtree(stale["state_dir"], ignore_errors=True)
            if self.state_dir is None:
                self.state_dir = Path(tempfile.mkdtemp(prefix="llmforge-realnode-"))
            self.state_dir = self.state_dir.resolve()
            self._record = host.record(self.state_dir, self.node_ip, self._own_dir)
            self._start(time.monotonic() + self.timeout)
        except BaseException as e:
            tails = self.log_tails()
            try:
                self.stop(keep_state=True)
            except RealNodeError as cleanup:
                tails += f"\n{cleanup}"
            if isinstance(e, Exception):
                raise RealNodeError(f"real node did not start: {e}\nstate dir: {self.state_dir}\n{tails}") from e
            raise
        return self

    def stop(self, keep_state: bool = False) -> None:
        """Delete the pods, stop kube-proxy, kubelet and containerd, and undo every host change.

        Safe to call twice and after a failed start; raises RealNodeError listing what it could not undo."""
        if self._lock_fd is None:
            return  # not started (or a start refused by the lock): nothing here is ours
        errors: list[str] = []
        if self._record is not None:
            self._teardown(errors)
            host.undo(self._record, errors)
        host.unlock(self._lock_fd)
        self._lock_fd, self._record = None, None
        if self._own_dir and not keep_state and not errors and self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None
        if errors:
            raise RealNodeError("real node teardown left: " + "; ".join(errors))

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name} ({p.log}) ---\n{p.log_tail(lines)}" for p in self.procs.values())

    # -- start -----------------------------------------------------------------------------------
    def _dir(self, *parts: str) -> Path:
        if self.state_dir is None:
            raise RealNodeError("the real node is not started")
        return self.state_dir.joinpath(*parts)

    def _start(self, deadline: float) -> None:
        bins = {n: str(assets.find(n)) for n in assets.NODE}
        for d in ("containerd", "cni/net.d", "kubelet/root", "kubelet/pki", "kubelet/pod-logs"):
            self._dir(d).mkdir(parents=True, exist_ok=True)
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        self._write_configs()
        host.add_node_ip(self.node_ip)
        host.write_sysctls({"net.ipv4.ip_forward": "1"})  # bridge gateway and Service DNAT

        # containerd finds its shim on PATH
        self._spawn("containerd", [bins["containerd"], f"--config={self._dir('containerd', 'config.toml')}"],
                    env={"PATH": f"{Path(bins['containerd-shim-runc-v2']).parent}:{os.environ.get('PATH', '')}:/usr/sbin"})
        self._wait("containerd", lambda: self.ctr("version", check=False, timeout=5).returncode == 0, deadline)
        self._remove_containers()  # a crashed run's containers are still in the persistent metadata
        if PAUSE_IMAGE not in self.images():
            self._import_pause()

        t0 = time.monotonic()
        self._spawn("kubelet", [
            bins["kubelet"], f"--config={self._dir('kubelet', 'config.yaml')}",
            f"--kubeconfig={self._dir('kubelet', 'kubeconfig')}", f"--root-dir={self._dir('kubelet', 'root')}",
            f"--cert-dir={self._dir('kubelet', 'pki')}", f"--hostname-override={self.name}",
            f"--node-ip={self.node_ip}", f"--node-labels={RUNTIME_LABEL}={RUNTIME}", "--v=1",
        ])
        self._wait("node Ready", self._node_ready, deadline)
        self.ready_seconds = time.monotonic() - t0
        self._spawn("kube-proxy", [bins["kube-proxy"], *kube_proxy_args(
            self._dir("kube-proxy.kubeconfig"), self.name, self.node_ip)])
        self._wait("kube-proxy", lambda: _http_ok(PROXY_HEALTHZ), deadline)

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        env = {"PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin", **(env or {})}  # iptables, mount, runc
        proc = spawn(name, argv, self._dir(), env, self.die_with_parent)
        self.procs[name] = proc
        host.track(proc.pid)

    def _wait(self, what: str, check, deadline: float) -> None:
        while time.monotonic() < deadline:
            dead = [p.name for p in self.procs.values() if not p.alive()]
            if dead:
                raise RealNodeError(f"{', '.join(dead)} exited while waiting for {what}")
            try:
                if check():
                    return
            except (OSError, ApiError, subprocess.SubprocessError):
                pass
            time.sleep(0.1)
        raise RealNodeError(f"timed out after {self.timeout:.0f}s waiting for {what}")

    def _node_ready(self) -> bool:
        node = self.cluster.api().get_json(f"/api/v1/nodes/{self.name}")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))

    def _import_pause(self) -> None:
        with tempfile.TemporaryDirectory(dir=self._dir()) as tmp:
            src, binary = Path(tmp, "pause.c"), Path(tmp, "pause")
            src.write_text(PAUSE_C)
            subprocess.run(["gcc", "-Os", "-static", "-s", "-o", str(binary), str(src)], check=True,
                           capture_output=True)
            archive = Path(tmp, "pause.tar")
            single_layer_image({"/pause": binary}, archive, PAUSE_IMAGE, ["/pause"], user="65535:65535")
            self.import_image(archive)

    def _write_configs(self) -> None:
        d = self._dir()
        (d / "containerd" / "config.toml").write_text(containerd_toml(
            self.containerd_root, d / "containerd" / "state", self.socket, _which("runc") or "runc",
            cni_bin_dir() or CNI_DIRS[0], d / "cni" / "net.d"))
        (d / "cni" / "net.d" / "10-realnode.conflist").write_text(json.dumps(cni_conflist(d / "cni" / "ipam")))
        (d / "kubelet" / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # no DNS query leaves a pod
        config = kubelet_config(d / "kubelet", self.node_ip, self.socket, self.cluster.kubelet_ca_file)
        (d / "kubelet" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.cluster.write_kubeconfig(d / "kubelet" / "kubeconfig", f"system:node:{self.name}")
        self.cluster.write_kubeconfig(d / "kube-proxy.kubeconfig", "system:kube-proxy")

    # -- stop ------------------------------------------------------------------------------------
    def _teardown(self, errors: list[str]) -> None:
        kubelet, proxy, containerd = (self.procs.get(n) for n in ("kubelet", "kube-proxy", "containerd"))
        if kubelet and kubelet.alive():
            try:  # while the kubelet runs, so that it stops the sandboxes: veths and pod IPs are released
                self._delete_pods()
            except OSError:
                pass  # the control plane is gone already: the host clean-up below kills and unmounts the pods
            except (ApiError, RealNodeError) as e:
                errors.append(f"delete pods: {e}")
        if proxy:
            stop_all([proxy])
            subprocess.run([str(assets.find("kube-proxy")), "--cleanup"], capture_output=True, timeout=60)
        if kubelet:
            stop_all([kubelet])
            try:
                self.cluster.api().request("DELETE", f"/api/v1/nodes/{self.name}")
            except OSError:
                pass  # the cluster may be gone already
        if containerd and containerd.alive():
            try:
                self._remove_containers()
            except (OSError, RealNodeError, subprocess.SubprocessError) as e:
                errors.append(f"remove containers: {e}")
        if containerd:
            stop_all([containerd])
        self.procs = {}

    def _delete_pods(self, timeout: float = 60) -> None:
        api = self.cluster.api()
        # Cordon first, as a drain does: a Deployment or Job would otherwise put a new pod here at once.
        status, text = api.request("PATCH", f"/api/v1/nodes/{self.name}", {"spec": {"unschedulable": True}},
                                   content_type="application/merge-patch+json")
        if status != 200:
            raise RealNodeError(f"cordon {self.name}: HTTP {status}: {text[:300]}")
        pods = api.get_json(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self.name}")["items"]
        for pod in pods:
            meta = pod["metadata"]
            api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                        {"gracePeriodSeconds": 0})
        deadline = time.monotonic() + timeout
        ipam = self._dir("cni", "ipam", NETWORK)
        while time.monotonic() < deadline:
            tasks = self._live_tasks()
            ips = [p for p in ipam.glob("*") if p.name[0].isdigit()] if ipam.is_dir() else []
            if not tasks and not ips:
                return
            time.sleep(0.2)
        raise RealNodeError(f"pods not gone after {timeout:.0f}s (tasks {tasks}, pod IPs {[p.name for p in ips]})")

    def _live_tasks(self) -> list[str]:
        """Tasks still running. A finished container's task stays listed as STOPPED until the kubelet's
        garbage collection (about a minute later) or _remove_containers() deletes it: not worth waiting for."""
        rows = self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
        return [cols[0] for cols in map(str.split, rows) if cols and cols[-1] != "STOPPED"]

    def _remove_containers(self) -> None:
        """Remove every container and sandbox from containerd's metadata (never images)."""
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "rm", "-f", task, check=False)
        for kind in ("containers", "sandboxes"):
            ids = self.ctr(kind, "ls", "-q", check=False).stdout.split()
            if ids:
                self.ctr(kind, "rm", *ids, check=False)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200

"""A local kubelet: runs the pods bound to one node as local processes, for demos on machines with no
container runtime.

kwok fakes pods; this runs them for real. The node `llmforge-local` carries the label and taint
`llmforge.dev/runtime=local`, so only pods the operator built for the local runtime land on it. For each
such pod it does what a kubelet does, minus the container: materialises ConfigMap/Secret/emptyDir volumes
in a per-pod directory (mount paths in args and env are rewritten to it), resolves env (values,
fieldRefs, Secret and ConfigMap keys), runs `command + args` from the pod spec with the venv on PATH,
and writes pod status back: Running, then Succeeded/Failed with the exit code and the termination
message (the file named by LLMFORGE_TERMINATION_LOG, falling back to the log tail like
FallbackToLogsOnError). Deleting the pod sends SIGTERM, waits the grace period, then SIGKILL.

Limits, on purpose: one network namespace (pods share 127.0.0.1, so two pods must not use the same
port at once), no images (the command must exist in this venv), no resource isolation.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

NODE_NAME = "llmforge-local"
RUNTIME_LABEL = "llmforge.dev/runtime"
TERMINATION_ENV = "LLMFORGE_TERMINATION_LOG"


def local_node(name: str = NODE_NAME, cpu: str = "64", memory: str = "256Gi") -> dict[str, Any]:
    """The Node this kubelet serves (no kwok annotation: kwok leaves it alone). Processes share the machine
    unisolated, so capacity is generous: requests sized for GKE machines must not keep the demo Pending."""
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                              RUNTIME_LABEL: "local", "type": "local"}},
        "spec": {"taints": [{"key": RUNTIME_LABEL, "value": "local", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": cpu, "memory": memory, "pods": "20"},
                   "allocatable": {"cpu": cpu, "memory": memory, "pods": "20"}},
    }


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Running:
    """A pod's process and where its files are."""

    uid: str
    name: str
    namespace: str
    proc: subprocess.Popen
    root: Path
    log: Path
    termination: Path
    started: str
    restart_policy: str
    restarts: int = 0
    deleting_since: float | None = None
    grace: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)


def _http_probe(container: Any) -> tuple[int, str] | None:
    """(port, path) of an httpGet readinessProbe, with named ports resolved."""
    probe = container.readiness_probe
    if probe is None or probe.http_get is None:
        return None
    port = probe.http_get.port
    if isinstance(port, str) and not port.isdigit():
        port = next((p.container_port for p in container.ports or [] if p.name == port), None)
        if port is None:
            return None
    return int(port), probe.http_get.path or "/"


def rewrite(value: str, mounts: dict[str, Path]) -> str:
    """Replace a mount path prefix with its local directory (longest mount path first)."""
    for mount in sorted(mounts, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + value[len(mount.rstrip("/")):]
    return value


class LocalKubelet:
    """Polls pods on its node and runs them. `run()` blocks; `start()` runs it in a daemon thread."""

    def __init__(self, api_client: Any, work_dir: str | Path, node_name: str = NODE_NAME,
                 bin_dir: str | None = None, poll: float = 0.5, pod_ip: str = "127.0.0.1"):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.coord = client.CoordinationV1Api(api_client)
        self.work_dir = Path(work_dir)
        self.node_name = node_name
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.poll = poll
        self.pod_ip = pod_ip
        self.running: dict[str, Running] = {}
        self.finished: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def register(self) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.core.create_node(local_node(self.node_name))
        except ApiException as e:
            if e.status != 409:
                raise
        self._heartbeat()

    def start(self) -> LocalKubelet:
        self.register()
        self._thread = threading.Thread(target=self.run, name="local-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        for run in list(self.running.values()):
            self._kill(run)
        try:  # a node nobody serves would go NotReady and confuse the scheduler's users
            self.core.delete_node(self.node_name)
        except Exception as exc:
            print(f"local-kubelet: could not delete node: {exc}", file=sys.stderr)

    def run(self) -> None:
        last_beat = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_beat > 10:
                    self._heartbeat()
                    last_beat = time.monotonic()
                self.sync()
            except Exception as exc:  # keep serving: a transient API error must not kill the node
                print(f"local-kubelet: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.poll)

    # -- one reconcile pass ----------------------------------------------------------------------
    def sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={self.node_name}").items
        seen = set()
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            run = self.running.get(uid)
            if pod.metadata.deletion_timestamp is not None:
                self._delete(pod, run)
                continue
            if run is None and uid not in self.finished:
                if pod.status and pod.status.phase in ("Succeeded", "Failed"):
                    self.finished.add(uid)  # ran under an earlier kubelet; never run a finished pod again
                    continue
                self._launch(pod)
            elif run is not None:
                self._check(run)
        for uid in list(self.running):
            if uid not in seen:  # force-deleted
                self._kill(self.running.pop(uid))

    def _launch(self, pod: Any) -> None:
        container = pod.spec.containers[0]
        root = self.work_dir / pod.metadata.namespace / pod.metadata.name
        root.mkdir(parents=True, exist_ok=True)
        mounts = self._volumes(pod, root)
        env = self._env(pod, container, mounts)
        termination = root / "termination-log"
        termination.unlink(missing_ok=True)
        env[TERMINATION_ENV] = str(termination)
        argv = [rewrite(a, mounts) for a in (container.command or []) + (container.args or [])]
        if not argv:
            self._fail_start(pod, "the local runtime needs an explicit command in the pod spec")
            return
        log = root / f"{container.name}.log"
        workdir = rewrite(container.working_dir, mounts) if container.working_dir else str(root)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=open(log, "ab"),  # noqa: SIM115
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            self._fail_start(pod, f"cannot start {argv[0]}: {exc}")
            return
        run = Running(pod.metadata.uid, pod.metadata.name, pod.metadata.namespace, proc, root, log,
                      termination, _now(), pod.spec.restart_policy or "Always",
                      grace=float(pod.spec.termination_grace_period_seconds or 30))
        run.extra["argv"], run.extra["env"], run.extra["cwd"] = argv, env, workdir
        run.extra["readiness"] = _http_probe(container)
        run.extra["ready"] = self._probe(run)
        self.running[run.uid] = run
        self._write_status(run, "Running", {"running": {"startedAt": run.started}}, ready=run.extra["ready"])

    def _check(self, run: Running) -> None:
        code = run.proc.poll()
        if code is None:
            ready = self._probe(run)
            if ready != run.extra.get("ready"):
                run.extra["ready"] = ready
                self._write_status(run, "Running", {"running": {"startedAt": run.started}}, ready=ready,
                                   last_state=run.extra.get("last_state"))
            return
        if run.extra.get("restart_at") is not None:  # backing off
            if time.monotonic() >= run.extra["restart_at"]:
                self._restart(run)
            return
        message = self._termination_message(run)
        state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "message": message, "startedAt": run.started, "finishedAt": _now()}}
        if run.restart_policy == "Always" or (run.restart_policy == "OnFailure" and code != 0):
            # CrashLoopBackOff, as a kubelet would: 2 s doubling to 60 s between restarts.
            delay = min(60.0, 2.0 * 2 ** run.restarts)
            run.extra.update(restart_at=time.monotonic() + delay, last_state=state, ready=False)
            self._write_status(run, "Running", {"waiting": {"reason": "CrashLoopBackOff",
                                                            "message": f"back-off {delay:.0f}s restarting"}},
                               ready=False, last_state=state)
            return
        self.running.pop(run.uid)
        self.finished.add(run.uid)
        self._write_status(run, "Succeeded" if code == 0 else "Failed", state, ready=False)

    def _restart(self, run: Running) -> None:
        run.restarts += 1
        run.extra["restart_at"] = None
        run.proc = subprocess.Popen(run.extra["argv"], env=run.extra["env"], cwd=run.extra["cwd"],
                                    stdout=open(run.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                    start_new_session=True)
        run.started = _now()
        run.extra["ready"] = self._probe(run)
        self._write_status(run, "Running", {"running": {"startedAt": run.started}}, ready=run.extra["ready"],
                           last_state=run.extra.get("last_state"))

    def _probe(self, run: Running) -> bool:
        """The container's readinessProbe (httpGet on this machine), or ready once running when it has none."""
        probe = run.extra.get("readiness")
        if not probe:
            return True
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{probe[0]}{probe[1]}", timeout=1) as resp:
                return 200 <= resp.status < 400
        except OSError:
            return False

    def _delete(self, pod: Any, run: Running | None) -> None:
        from kubernetes.client.rest import ApiException

        if run is not None and run.proc.poll() is None:
            if run.deleting_since is None:
                run.deleting_since = time.monotonic()
                os.killpg(run.proc.pid, signal.SIGTERM)
                return
            if time.monotonic() - run.deleting_since < run.grace:
                return
            self._kill(run)
        if run is not None:
            self.running.pop(run.uid, None)
        self.finished.add(pod.metadata.uid)
        try:  # the kubelet's final, zero-grace delete
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise

    # -- helpers ---------------------------------------------------------------------------------
    def _volumes(self, pod: Any, root: Path) -> dict[str, Path]:
        """mountPath -> local directory, with ConfigMap/Secret contents written out."""
        by_name: dict[str, Path] = {}
        for vol in pod.spec.volumes or []:
            target = root / "volumes" / vol.name
            target.mkdir(parents=True, exist_ok=True)
            if vol.config_map is not None:
                cm = self.core.read_namespaced_config_map(vol.config_map.name, pod.metadata.namespace)
                for key, value in (cm.data or {}).items():
                    (target / key).write_text(value)
            elif vol.secret is not None:
                secret = self.core.read_namespaced_secret(vol.secret.secret_name, pod.metadata.namespace)
                for key, value in (secret.data or {}).items():
                    (target / key).write_bytes(base64.b64decode(value))
            by_name[vol.name] = target
        mounts = {}
        for vm in pod.spec.containers[0].volume_mounts or []:
            if vm.name in by_name:
                mounts[vm.mount_path] = by_name[vm.name] / (vm.sub_path or "")
        return mounts

    def _env(self, pod: Any, container: Any, mounts: dict[str, Path]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR", "HF_HOME", "HF_HUB_OFFLINE",
                                                             "MLFLOW_DISABLE_TELEMETRY", "LLMFORGE_CACHE",
                                                             "PYTHONPATH")}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}/usr/local/bin:/usr/bin:/bin"
        fields = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
                  "metadata.uid": pod.metadata.uid, "spec.nodeName": self.node_name,
                  "status.podIP": self.pod_ip, "spec.serviceAccountName": pod.spec.service_account_name or ""}
        for item in container.env or []:
            if item.value is not None:
                env[item.name] = rewrite(item.value, mounts)
            elif item.value_from is not None:
                src = item.value_from
                if src.field_ref is not None:
                    env[item.name] = fields.get(src.field_ref.field_path, "")
                elif src.secret_key_ref is not None:
                    secret = self.core.read_namespaced_secret(src.secret_key_ref.name, pod.metadata.namespace)
                    env[item.name] = base64.b64decode((secret.data or {})[src.secret_key_ref.key]).decode()
                elif src.config_map_key_ref is not None:
                    cm = self.core.read_namespaced_config_map(src.config_map_key_ref.name, pod.metadata.namespace)
                    env[item.name] = (cm.data or {})[src.config_map_key_ref.key]
        return env

    def _termination_message(self, run: Running) -> str:
        try:
            text = run.termination.read_text()
        except OSError:
            text = ""
        if not text.strip():  # FallbackToLogsOnError: the last 80 lines / 2 KiB of the log
            try:
                text = "\n".join(run.log.read_text(errors="replace").splitlines()[-80:])[-2048:]
            except OSError:
                text = ""
        return text[:4096]

    def _write_status(self, run: Running, phase: str, state: dict[str, Any], ready: bool,
                      last_state: dict[str, Any] | None = None) -> None:
        pod = self.core.read_namespaced_pod(run.name, run.namespace)
        container = pod.spec.containers[0]
        status = {
            "phase": phase, "hostIP": self.pod_ip, "podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}],
            "startTime": (pod.status.start_time.isoformat().replace("+00:00", "Z")
                          if pod.status and pod.status.start_time else run.started),
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": run.started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": run.started},
                {"type": "Ready", "status": str(ready), "lastTransitionTime": _now()},
                {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": _now()},
            ],
            "containerStatuses": [{
                "name": container.name, "image": container.image, "imageID": f"local://{container.image}",
                "ready": ready, "restartCount": run.restarts, "started": phase == "Running", "state": state,
                **({"lastState": last_state} if last_state else {}),
            }],
        }
        self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})

    def _fail_start(self, pod: Any, message: str) -> None:
        self.finished.add(pod.metadata.uid)
        status = {"phase": "Failed", "reason": "LocalRuntimeError", "message": message,
                  "containerStatuses": [{"name": pod.spec.containers[0].name, "image": pod.spec.containers[0].image,
                                         "imageID": "", "ready": False, "restartCount": 0,
                                         "state": {"terminated": {"exitCode": 127, "reason": "StartError",
                                                                  "message": message}}}]}
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})

    def _kill(self, run: Running) -> None:
        if run.proc.poll() is None:
            try:
                os.killpg(run.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            run.proc.wait(timeout=10)

    def _heartbeat(self) -> None:
        """Keep the node Ready: status conditions plus the node Lease, as a kubelet does."""
        from kubernetes.client.rest import ApiException

        now = _now()
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "local runtime",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}
        node = local_node(self.node_name)
        self.core.patch_node_status(self.node_name, {"status": {**node["status"], "conditions": [ready]}})
        lease = {"metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": 40,
                          "renewTime": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")}}
        try:
            self.coord.patch_namespaced_lease(self.node_name, "kube-node-lease", lease)
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", lease)

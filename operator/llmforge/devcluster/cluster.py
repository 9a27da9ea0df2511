"""LocalCluster: a real Kubernetes control plane on loopback, with fake GKE GPU nodes from kwok.

etcd + kube-apiserver (token auth, RBAC, service-account issuer) + kube-controller-manager (all
controllers: job, garbage collector, namespace, service accounts, root CA) + kube-scheduler + kwok
(nodes Ready, pods Running, Job pods Succeeded). No kubelet and no containers: pods are scheduled and
their lifecycle simulated, which is what an operator's tests need. Everything started is stopped
again, by PID, even when start-up fails half way.

A real kubelet can join too (realnode.RealNode): the apiserver always runs the Node authorizer and
NodeRestriction, reaches kubelets with a client certificate (O=system:masters) from a throw-away CA, and
its token file has a `system:node:<name>` user per name in `real_nodes` and `system:kube-proxy`.

    with LocalCluster() as c:
        subprocess.run(["kubectl", "--kubeconfig", c.kubeconfig, "get", "nodes"])
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from . import assets
from .apiclient import Api, ApiError
from .nodes import default_nodes
from .process import Proc, spawn, stop_all

SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"


class ClusterStartError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def free_port() -> int:
    # Bind-and-release has a small race with other programs, acceptable for a test machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`work_dir` defaults to a temp dir removed on stop (kept, with logs, if start-up fails).
    `die_with_parent` makes the kernel kill every component when the thread that started them
    exits, so start it from the main thread (or pass False and call stop() yourself)."""

    def __init__(self, work_dir: str | Path | None = None, nodes: list[dict] | None = None,
                 build: bool = False, die_with_parent: bool = True, timeout: float = 240.0,
                 audit_policy: dict | None = None, extra_args: dict[str, list[str]] | None = None,
                 real_nodes: tuple[str, ...] = ("realnode",)):
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="llmforge-k8s-")).resolve()
        self.nodes = default_nodes() if nodes is None else nodes
        self.build = build
        self.die_with_parent = die_with_parent
        self.timeout = timeout
        self.procs: list[Proc] = []
        self.admin_token = secrets.token_hex(16)
        self.server = ""
        self.kubeconfig = str(self.work_dir / "kubeconfig")
        self.ca_file = str(self.work_dir / "apiserver-certs" / "apiserver.crt")
        # Node names a real kubelet may join as (each gets a token), and the CA kubelets trust for the
        # apiserver's client certificate (logs, exec).
        self.real_nodes = tuple(real_nodes)
        self.kubelet_ca_file = str(self.work_dir / "kubelet-pki" / "ca.crt")
        # Optional kube-apiserver audit log (JSON lines), e.g. to see which API calls a client really makes.
        self.audit_policy = audit_policy
        self.audit_log = str(self.work_dir / "audit.log") if audit_policy else ""
        # Extra flags per component, e.g. a large cluster's client QPS for a scale benchmark.
        self.extra_args = extra_args or {}

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        try:
            bins = assets.ensure_assets(assets.CONTROL_PLANE, build=self.build)
        except BaseException:
            self.stop()  # nothing started yet; just drop our temp dir
            raise
        self.work_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        try:
            self._start(bins, deadline)
        except BaseException as e:
            logs = "\n".join(f"--- {p.name} ({p.log}) ---\n{p.log_tail()}" for p in self.procs)
            self.stop(keep_logs=True)
            if isinstance(e, Exception):
                raise ClusterStartError(f"{e}\n{logs}") from e
            raise
        return self

    def stop(self, keep_logs: bool = False) -> None:
        stop_all(self.procs)
        self.procs = []
        if self._own_dir and not keep_logs:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def api(self) -> Api:
        return Api(self.server, self.admin_token, self.ca_file)

    def token(self, user: str) -> str:
        """The bearer token of a user in the token file, e.g. `system:node:realnode`."""
        for line in (self.work_dir / "tokens.csv").read_text().splitlines():
            fields = line.split(",")
            if fields[1] == user:
                return fields[0]
        raise KeyError(f"no token for {user!r} in {self.work_dir / 'tokens.csv'} (real_nodes={self.real_nodes})")

    def write_kubeconfig(self, path: str | Path, user: str) -> None:
        """A kubeconfig for `user` (a name in the token file) against this cluster."""
        self._write_kubeconfig(str(path), self.token(user))

    # -- start-up ----------------------------------------------------------------------------
    def _start(self, bins: dict[str, Path], deadline: float) -> None:
        wd = self.work_dir
        tokens = self._write_credentials()
        kubelet_client = self._write_kubelet_client_cert()

        etcd_port, etcd_peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn("etcd", [
            str(bins["etcd"]), "--name=llmforge", f"--data-dir={wd / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=llmforge=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync",  # test data: durability is not worth the disk latency
            "--log-level=warn",
        ])
        self._wait("etcd", lambda: Api(etcd_url).ok("/health"), deadline)

        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._spawn("kube-apiserver", [
            str(bins["kube-apiserver"]), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={wd / 'apiserver-certs'}",  # self-signed serving cert, SAN 127.0.0.1
            f"--token-auth-file={wd / 'tokens.csv'}",
            # Node + NodeRestriction: a kubelet's token may touch only its own Node and its pods.
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={kubelet_client}.crt", f"--kubelet-client-key={kubelet_client}.key",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={wd / 'sa.pub'}",
            f"--service-account-signing-key-file={wd / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # The lease reconciler would publish 127.0.0.1 as the `kubernetes` Service endpoint,
            # which validation rejects (loopback); nothing here dials that Service.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            *self._audit_flags(),
        ])
        api = self.api()
        self._wait("kube-apiserver", lambda: api.ok("/readyz"), deadline)

        self._write_kubeconfig(self.kubeconfig, self.admin_token)
        for comp in ("kube-controller-manager", "kube-scheduler"):
            self._write_kubeconfig(str(wd / f"{comp}.kubeconfig"), tokens[comp])

        kcm_port, sched_port = free_port(), free_port()
        kcm_kc = wd / "kube-controller-manager.kubeconfig"
        self._spawn("kube-controller-manager", [
            str(bins["kube-controller-manager"]), f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}", f"--authorization-kubeconfig={kcm_kc}",
            "--leader-elect=false", "--controllers=*",
            f"--service-account-private-key-file={wd / 'sa.key'}", f"--root-ca-file={self.ca_file}",
            "--use-service-account-credentials=true",  # one identity per controller, as in GKE
            f"--flex-volume-plugin-dir={wd / 'flexvolume'}",  # else it creates /usr/libexec/kubernetes
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            *self.extra_args.get("kube-controller-manager", []),
        ])
        sched_kc = wd / "kube-scheduler.kubeconfig"
        self._spawn("kube-scheduler", [
            str(bins["kube-scheduler"]), f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}", f"--authorization-kubeconfig={sched_kc}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
            *self.extra_args.get("kube-scheduler", []),
        ])
        kwok_home = wd / "kwok-home"
        kwok_home.mkdir(exist_ok=True)
        self._spawn("kwok", [
            str(bins["kwok"]), f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=40",
        ], env={"HOME": str(kwok_home)})  # kwok also reads ~/.kwok/kwok.yaml: keep the user's out

        insecure = {"verify": False}
        self._wait("kube-controller-manager",
                   lambda: Api(f"https://127.0.0.1:{kcm_port}", **insecure).ok("/healthz"), deadline)
        self._wait("kube-scheduler",
                   lambda: Api(f"https://127.0.0.1:{sched_port}", **insecure).ok("/healthz"), deadline)

        for node in self.nodes:
            api.create("/api/v1/nodes", node)
        self._wait("default ServiceAccount (serviceaccount controller)",
                   lambda: api.ok("/api/v1/namespaces/default/serviceaccounts/default"), deadline)
        names = {n["metadata"]["name"] for n in self.nodes}
        self._wait("fake nodes Ready (kwok)", lambda: names <= self.ready_nodes(), deadline)

    def ready_nodes(self) -> set[str]:
        items = self.api().get_json("/api/v1/nodes")["items"]
        return {
            n["metadata"]["name"] for n in items
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in n.get("status", {}).get("conditions", []))
        }

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> None:
        self.procs.append(spawn(name, argv, self.work_dir, env, self.die_with_parent))

    def _wait(self, what: str, check, deadline: float) -> None:
        while time.monotonic() < deadline:
            dead = [p.name for p in self.procs if not p.alive()]
            if dead:
                raise ClusterStartError(f"{', '.join(dead)} exited while waiting for {what}")
            try:
                if check():
                    return
            except (OSError, ApiError):
                pass  # a refused connection or a 5xx while starting means "not yet"
            time.sleep(0.25)
        raise ClusterStartError(f"timed out after {self.timeout:.0f}s waiting for {what}")

    # -- files -------------------------------------------------------------------------------
    def _audit_flags(self) -> list[str]:
        if not self.audit_policy:
            return []
        policy = self.work_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(self.audit_policy, sort_keys=False))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-mode=blocking"]

    def _write_credentials(self) -> dict[str, str]:
        wd = self.work_dir
        tokens = {c: secrets.token_hex(16) for c in ("kube-controller-manager", "kube-scheduler")}
        # Components authenticate as the users the bootstrap RBAC roles are bound to.
        lines = [f'{self.admin_token},admin,admin,"system:masters"']
        lines += [f"{tok},system:{comp},{comp}" for comp, tok in tokens.items()]
        for node in self.real_nodes:
            lines.append(f"{secrets.token_hex(16)},system:node:{node},system:node:{node},system:nodes")
        lines.append(f"{secrets.token_hex(16)},system:kube-proxy,system:kube-proxy")
        (wd / "tokens.csv").write_text("\n".join(lines) + "\n")
        (wd / "tokens.csv").chmod(0o600)
        key = wd / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                           capture_output=True)
            subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(wd / "sa.pub")],
                           check=True, capture_output=True)
        return tokens

    def _write_kubelet_client_cert(self) -> Path:
        """A throw-away CA (kubelets trust it) and the apiserver's client cert for kubelets; returns the cert
        path without suffix. EC keys: about 10 ms each, against about 190 ms for RSA 2048."""
        pki = Path(self.kubelet_ca_file).parent
        client = pki / "apiserver-kubelet-client"
        if client.with_suffix(".crt").exists():
            return client
        pki.mkdir(exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650"]
        subprocess.run(["openssl", "req", "-x509", *ec, "-subj", "/CN=llmforge-dev-kubelet-ca",
                        "-keyout", str(pki / "ca.key"), "-out", self.kubelet_ca_file,
                        "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-x509", *ec, "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
                        "-CA", self.kubelet_ca_file, "-CAkey", str(pki / "ca.key"),
                        "-keyout", f"{client}.key", "-out", f"{client}.crt",
                        "-addext", "basicConstraints=critical,CA:FALSE",
                        "-addext", "keyUsage=critical,digitalSignature",
                        "-addext", "extendedKeyUsage=clientAuth"], check=True, capture_output=True)
        return client

    def _write_kubeconfig(self, path: str, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "llmforge-dev",
                          "cluster": {"server": self.server, "certificate-authority": self.ca_file}}],
            "users": [{"name": "llmforge-dev", "user": {"token": token}}],
            "contexts": [{"name": "llmforge-dev",
                          "context": {"cluster": "llmforge-dev", "user": "llmforge-dev"}}],
            "current-context": "llmforge-dev",
        }
        Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
        Path(path).chmod(0o600)

"""What a real node changes on the host, recorded before start and undone at stop (see docs/real-node.md).

A kubelet, containerd and kube-proxy are not contained: they add an address on `lo`, a bridge, iptables
chains, cgroups, mounts, files in /var and /run, and change sysctls (the kubelet sets vm.overcommit_memory,
kernel.panic and kernel.panic_on_oops at start-up). `record()` saves the values and paths to
/run/llmforge-realnode.json *before* anything changes; `undo(record)` puts the host back and deletes the
record. Because the record outlives a crashed run (and /run is emptied by a reboot, which also resets what it
describes), the next start undoes a crashed run's leftovers with that run's own record.

Processes: containerd, the kubelet and kube-proxy join one tracking cgroup, and so do the shims containerd
forks; pods run in the kubelet's `kubepods` cgroups. Teardown kills the processes in exactly those cgroups,
by PID: never by name. `lock()` makes this one real node per host.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .realnode_config import BRIDGE

LOCK_FILE = Path("/run/lock/llmforge-realnode.lock")
RECORD_FILE = Path("/run/llmforge-realnode.json")
CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
# Sysctls the kubelet (setupKernelTunables), kube-proxy, the bridge CNI plugin or we may change.
SYSCTLS = (
    "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
    "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
# Written by the kubelet (container log links; its device-plugin socket, whose path ignores --root-dir),
# libcni (its result cache) and the shims (their sockets).
HOST_PATHS = ("/var/log/containers", "/var/lib/kubelet", "/var/lib/cni", "/run/containerd")


class RealNodeError(RuntimeError):
    """The real node cannot start here, did not come up, or left something behind."""


# -- lock and record ---------------------------------------------------------------------------------
def lock() -> int:
    """Take the host-wide lock (an open fd; closing it releases the lock), or say who holds it."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RealNodeError(f"another real node is running on this host (pid {holder} holds {LOCK_FILE}); "
                            "only one can run at a time: stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def unlock(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.close(fd)


def load_record() -> dict | None:
    try:
        return json.loads(RECORD_FILE.read_text())
    except (OSError, ValueError):
        return None


def record(state_dir: Path, node_ip: str, own_state_dir: bool) -> dict:
    """Save what start() is about to change; call with the lock held and before changing anything."""
    if kubepods_dirs():
        raise RealNodeError("a kubepods cgroup exists, but no record of ours: another kubelet runs on this host "
                            f"({', '.join(map(str, kubepods_dirs()))})")
    rec = {
        "state_dir": str(state_dir),
        "own_state_dir": own_state_dir,  # a temp dir of ours: a crashed run's is removed by the next start
        "node_ip": node_ip,
        "sysctls": read_sysctls(SYSCTLS),
        "created_paths": [p for p in HOST_PATHS if not os.path.lexists(p)],
        "had_node_ip": node_ip in lo_addresses(),
        "nft_tables": nft_tables(),
        "tracking_cgroup": str(tracking_cgroup()),
    }
    RECORD_FILE.write_text(json.dumps(rec, indent=1))
    return rec


# -- changes start() makes ---------------------------------------------------------------------------
def read_sysctls(names) -> dict[str, str]:
    values = {}
    for name in names:
        try:
            values[name] = _sysctl_path(name).read_text().strip()
        except OSError:
            pass  # not on this kernel (e.g. no br_netfilter): nothing to record or restore
    return values


def write_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        _sysctl_path(name).write_text(value + "\n")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def lo_addresses() -> list[str]:
    out = _run(["ip", "-o", "-4", "addr", "show", "dev", "lo"]).stdout.split()
    return [w.split("/")[0] for prev, w in zip(out, out[1:], strict=False) if prev == "inet"]


def add_node_ip(ip: str) -> None:
    """The kubelet refuses a loopback node IP; a /32 on lo is reachable only from this host."""
    if ip not in lo_addresses():
        _run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], check=True)


def tracking_cgroup() -> Path:
    """A cgroup holding every process of ours outside the pods: v1's pids hierarchy, else the v2 root."""
    v1 = Path("/sys/fs/cgroup/pids")
    base = v1 if (v1 / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
    return base / "llmforge-realnode"


def track(pid: int) -> None:
    """Move `pid` into the tracking cgroup; its later children (containerd's shims) are born there."""
    cg = tracking_cgroup()
    cg.mkdir(exist_ok=True)
    (cg / "cgroup.procs").write_text(str(pid))


# -- undo --------------------------------------------------------------------------------------------
def undo(rec: dict, errors: list[str]) -> None:
    """Put the host back as `rec` found it; append what could not be undone to `errors`."""
    state_dir = rec["state_dir"]
    _kill_cgroups([Path(rec["tracking_cgroup"]), *kubepods_dirs()], errors)
    _step(errors, "unmount", lambda: unmount_under(state_dir))
    for d in kubepods_dirs():
        _step(errors, f"rmdir {d}", lambda d=d: _rmdir_tree(d))
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _step(errors, f"delete {BRIDGE}", lambda: _run(["ip", "link", "del", BRIDGE], check=True))
    if not rec["had_node_ip"] and rec["node_ip"] in lo_addresses():
        _step(errors, "lo address", lambda: _run(["ip", "addr", "del", f"{rec['node_ip']}/32", "dev", "lo"],
                                                 check=True))
    _step(errors, "iptables", delete_chains)
    _step(errors, "nftables", lambda: delete_new_tables(rec["nft_tables"]))
    _step(errors, "sysctls", lambda: write_sysctls(
        {k: v for k, v in rec["sysctls"].items() if read_sysctls([k]).get(k) != v}))
    for p in rec["created_paths"]:
        _step(errors, f"remove {p}", lambda p=p: shutil.rmtree(p) if os.path.lexists(p) else None)
    _step(errors, "tracking cgroup", lambda: _rmdir_tree(Path(rec["tracking_cgroup"])))
    if not errors:
        RECORD_FILE.unlink(missing_ok=True)  # kept on failure, so the next start() tries again


def _step(errors: list[str], what: str, fn) -> None:
    try:
        fn()
    except subprocess.CalledProcessError as e:
        errors.append(f"{what}: {shlex.join(e.cmd)}: {(e.stderr or '').strip()}")
    except (OSError, subprocess.SubprocessError) as e:
        errors.append(f"{what}: {e}")


def kubepods_dirs() -> list[Path]:
    """The kubelet's `kubepods` cgroup in every mounted hierarchy (cgroupfs driver, cgroupRoot /)."""
    return [d for m in _mounts() if m[1] in ("cgroup", "cgroup2")
            if (d := Path(m[0]) / "kubepods").is_dir()]


def _cgroup_pids(root: Path) -> set[int]:
    pids = set()
    for procs in root.rglob("cgroup.procs"):
        try:
            pids |= {int(p) for p in procs.read_text().split()}
        except OSError:
            pass
    return pids


def _kill_cgroups(roots: list[Path], errors: list[str], grace: float = 5.0) -> None:
    """SIGTERM every process in these cgroups (they are all ours), then SIGKILL what is left."""
    roots = [r for r in roots if r.is_dir()]
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while pids := set().union(*(_cgroup_pids(r) for r in roots)):
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                errors.append(f"processes survived SIGKILL: {sorted(pids)}")
                return
            sig, deadline = signal.SIGKILL, time.monotonic() + grace
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _rmdir_tree(root: Path) -> None:
    if not root.is_dir():
        return
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        d.rmdir()
    root.rmdir()


def _mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount, from /proc/self/mountinfo (octal escapes decoded)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        out.append((point, fields[fields.index("-") + 1]))
    return out


def unmount_under(root: str) -> None:
    """Detach every mount at or below `root`, deepest first (the kubelet bind-mounts its root dir onto itself)."""
    libc = ctypes.CDLL(None, use_errno=True)
    root = root.rstrip("/")
    points = {p for p, _ in _mounts() if p == root or p.startswith(root + "/")}
    for point in sorted(points, key=lambda p: -p.count("/")):
        if libc.umount2(point.encode(), 2) != 0:  # MNT_DETACH
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):  # already gone with a parent
                raise OSError(err, f"umount {point}: {os.strerror(err)}")


def chains() -> list[str]:
    """Our chains left in any table, as 'iptables -t nat KUBE-SERVICES' (what the clean-host test checks)."""
    found = []
    for ipt in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            for line in _run([ipt, "-t", table, "-S"]).stdout.splitlines():
                if line.startswith("-N ") and line.split()[1].startswith(CHAIN_PREFIXES):
                    found.append(f"{ipt} -t {table} {line.split()[1]}")
    return found


def delete_chains() -> None:
    """Delete the jumps into KUBE-*/CNI-* chains from built-in chains, then flush and delete those chains."""
    for ipt in ("iptables", "ip6tables"):
        if shutil.which(ipt) is None:
            continue
        for table in IPTABLES_TABLES:
            rules = _run([ipt, "-t", table, "-S"]).stdout.splitlines()
            ours = [r.split()[1] for r in rules if r.startswith("-N ") and r.split()[1].startswith(CHAIN_PREFIXES)]
            for rule in rules:
                args = shlex.split(rule)
                if args[0] == "-A" and not args[1].startswith(CHAIN_PREFIXES) and any(c in args for c in ours):
                    _run([ipt, "-t", table, "-D", *args[1:]], check=True)
            for flag in ("-F", "-X"):
                for chain in ours:
                    _run([ipt, "-t", table, flag, chain], check=True)


def nft_tables() -> list[str]:
    """The nftables tables ("ip nat", "ip6 filter", ...); iptables-nft keeps each iptables table in one."""
    if shutil.which("nft") is None:
        return []
    return sorted(line.removeprefix("table ") for line in _run(["nft", "list", "tables"]).stdout.splitlines()
                  if line.startswith("table "))


def delete_new_tables(before: list[str]) -> None:
    """Delete the iptables-nft tables that appeared since `before` (kubelet, kube-proxy) and are empty again:
    built-in chains with an ACCEPT policy and no rule."""
    for table in sorted(set(nft_tables()) - set(before)):
        family, name = table.split()
        if family not in ("ip", "ip6") or name not in IPTABLES_TABLES:
            continue
        rules = _run(["iptables" if family == "ip" else "ip6tables", "-t", name, "-S"]).stdout.splitlines()
        if all(r.startswith("-P ") and r.endswith(" ACCEPT") for r in rules):
            _run(["nft", "delete", "table", family, name], check=True)


def _run(argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)

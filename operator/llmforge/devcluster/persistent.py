"""A dev cluster that outlives the command starting it: `up`, `status`, `down` over a state dir.

`up` starts a LocalCluster whose processes are not tied to this Python process, records their PIDs
(and executables, to refuse a recycled PID) in `<state_dir>/state.json`, and returns. `down` stops
exactly those PIDs. The CLI (`llmforge dev cluster up|down`) and `python -m llmforge.devcluster`
both call `main(argv)`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .apiclient import Api
from .cluster import LocalCluster
from .process import Proc, stop_all

STATE_FILE = "state.json"


def default_state_dir() -> Path:
    root = os.environ.get("LLMFORGE_CACHE") or str(Path.home() / ".cache" / "llmforge")
    return Path(root) / "devcluster"


def _load(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def status(state_dir: Path) -> dict:
    """{'running': bool, 'ready': bool, 'server', 'kubeconfig', 'processes': {name: alive}}."""
    state = _load(Path(state_dir))
    if state is None:
        return {"running": False, "ready": False, "processes": {}}
    procs = [Proc.from_json(p) for p in state["processes"]]
    alive = {p.name: p.alive() for p in procs}
    api = Api(state["server"], state["admin_token"], state["ca_file"])
    return {
        "running": all(alive.values()),
        "ready": all(alive.values()) and api.ok("/readyz"),
        "server": state["server"],
        "kubeconfig": state["kubeconfig"],
        "processes": alive,
    }


def up(state_dir: Path | str | None = None, build: bool = False) -> dict:
    """Start (or reuse a healthy) dev cluster; return its state (server, kubeconfig, pids)."""
    state_dir = Path(state_dir or default_state_dir())
    st = status(state_dir)
    if st["ready"]:
        return _load(state_dir)  # type: ignore[return-value]
    if st["processes"]:
        down(state_dir)  # half-dead leftovers: start clean
    work = state_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    cluster = LocalCluster(work_dir=work, build=build, die_with_parent=False).start()
    state = {
        "server": cluster.server,
        "kubeconfig": cluster.kubeconfig,
        "admin_token": cluster.admin_token,
        "ca_file": cluster.ca_file,
        "work_dir": str(work),
        "processes": [p.to_json() for p in cluster.procs],
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / STATE_FILE
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)  # it holds the admin token
    return state


def down(state_dir: Path | str | None = None) -> bool:
    """Stop the processes recorded in the state dir; False if there was nothing to stop."""
    state_dir = Path(state_dir or default_state_dir())
    state = _load(state_dir)
    if state is None:
        return False
    # Reverse start order: clients first, etcd last.
    stop_all([Proc.from_json(p) for p in reversed(state["processes"])])
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(state_dir / "work", ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmforge.devcluster",
                                     description="Local Kubernetes control plane with fake GKE GPU nodes.")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(),
                        help="where PIDs, logs and the kubeconfig live (default: %(default)s)")
    parser.add_argument("--build", action="store_true",
                        help="run scripts/build-k8s.sh first if binaries are missing")
    args = parser.parse_args(argv)
    if args.command == "up":
        state = up(args.state_dir, build=args.build)
        print(f"cluster up at {state['server']}\nexport KUBECONFIG={state['kubeconfig']}")
        return 0
    if args.command == "down":
        print("cluster stopped" if down(args.state_dir) else f"no cluster recorded in {args.state_dir}")
        return 0
    st = status(args.state_dir)
    if not st["processes"]:
        print(f"no cluster recorded in {args.state_dir}")
        return 1
    for name, alive in st["processes"].items():
        print(f"{name:<24} {'running' if alive else 'DEAD'}")
    print(f"api {'ready' if st['ready'] else 'NOT ready'} at {st['server']}\nexport KUBECONFIG={st['kubeconfig']}")
    return 0 if st["ready"] else 1


if __name__ == "__main__":
    sys.exit(main())

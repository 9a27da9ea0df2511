"""`python -m llmforge.devcluster up|status|down`: a dev cluster that outlives the command starting it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmforge.devcluster import assets, persistent
from llmforge.devcluster.process import is_ours

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def devcluster(*args, state_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    return subprocess.run([sys.executable, "-m", "llmforge.devcluster", *args, "--state-dir", str(state_dir)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_up_status_down_across_processes(tmp_path):
    state_dir = tmp_path / "dev"
    try:
        up = devcluster("up", state_dir=state_dir)
        assert up.returncode == 0, up.stderr
        state = json.loads((state_dir / "state.json").read_text())
        procs = {p["name"]: p for p in state["processes"]}
        assert set(procs) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        # The `up` process has exited; the components it started must still be running.
        assert all(is_ours(p["pid"], p["exe"]) for p in procs.values())
        assert f"export KUBECONFIG={state['kubeconfig']}" in up.stdout

        kubectl = str(assets.find("kubectl"))
        nodes = subprocess.run([kubectl, "--kubeconfig", state["kubeconfig"], "get", "nodes", "-o", "name"],
                               capture_output=True, text=True, timeout=60)
        assert nodes.returncode == 0, nodes.stderr
        assert "node/gke-l4-0" in nodes.stdout.split()

        st = devcluster("status", state_dir=state_dir)
        assert st.returncode == 0 and "api ready" in st.stdout, st.stdout + st.stderr

        again = devcluster("up", state_dir=state_dir)  # idempotent: reuses the healthy cluster
        assert again.returncode == 0, again.stderr
        assert json.loads((state_dir / "state.json").read_text())["server"] == state["server"]

        down = devcluster("down", state_dir=state_dir)
        assert down.returncode == 0 and "cluster stopped" in down.stdout, down.stderr
        assert not any(is_ours(p["pid"], p["exe"]) for p in procs.values())
        assert devcluster("status", state_dir=state_dir).returncode == 1
    finally:
        persistent.down(state_dir)  # whatever happened above, leave nothing running

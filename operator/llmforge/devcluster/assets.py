"""Find the binaries that scripts/build-k8s.sh compiles: the control plane (etcd, kube-*, kwok), the tools
(kubectl, helm) and the real node's (kubelet, kube-proxy, containerd, its runc shim, ctr).

Lookup order per binary: $KUBEBUILDER_ASSETS, then the build cache
${LLMFORGE_CACHE:-~/.cache/llmforge}/k8s/<k8s-version>/. `ensure_assets(build=True)` runs the build
script when something is missing, so a fresh checkout needs no manual step.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

K8S_VERSION = "1.34.4"  # keep in step with LLMFORGE_K8S_VERSION's default in scripts/build-k8s.sh
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
TOOLS = ("kubectl", "helm")
NODE = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr")  # realnode.RealNode
ALL_BINARIES = CONTROL_PLANE + TOOLS

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-k8s.sh"


class AssetsMissing(RuntimeError):
    """A binary is in neither KUBEBUILDER_ASSETS nor the build cache."""


def cache_dir() -> Path:
    root = os.environ.get("LLMFORGE_CACHE") or str(Path.home() / ".cache" / "llmforge")
    version = os.environ.get("LLMFORGE_K8S_VERSION", K8S_VERSION)
    return Path(root) / "k8s" / version


def search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("KUBEBUILDER_ASSETS"):
        dirs.append(Path(os.environ["KUBEBUILDER_ASSETS"]))
    dirs.append(cache_dir())
    return dirs


def find(name: str) -> Path | None:
    for d in search_dirs():
        path = d / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def missing(names: tuple[str, ...] = ALL_BINARIES) -> list[str]:
    return [n for n in names if find(n) is None]


def ensure_assets(names: tuple[str, ...] = ALL_BINARIES, build: bool = False) -> dict[str, Path]:
    """Map each binary name to its path; build first (20-40 min the first time) if `build` is set."""
    if missing(names) and build:
        # The script prints progress on stderr; let it reach the user as it happens.
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    absent = missing(names)
    if absent:
        raise AssetsMissing(
            f"missing {', '.join(absent)} in {', '.join(map(str, search_dirs()))}; "
            "run `make setup-k8s` (scripts/build-k8s.sh) or set KUBEBUILDER_ASSETS"
        )
    return {n: find(n) for n in names}  # type: ignore[misc]

"""Static checks that CI enforces: ruff, import layers (import-linter) and hadolint on every Dockerfile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILES = sorted(ROOT.glob("*/Dockerfile"))


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / d) for d in
                                                       ("operator", "trainer-image", "server-image"))}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_ruff():
    out = _run(str(BIN / "ruff"), "check", "operator", "trainer-image", "server-image", "tests", "bench")
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_layers():
    out = _run(str(BIN / "lint-imports"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert "broken" not in out.stdout.lower() or "0 broken" in out.stdout


def test_dockerfiles_exist():
    assert {p.parent.name for p in DOCKERFILES} >= {"operator"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile):
    out = _run(str(BIN / "hadolint"), str(dockerfile))
    assert out.returncode == 0, out.stdout + out.stderr

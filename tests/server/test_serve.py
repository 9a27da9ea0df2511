"""llmforge-serve: config files and flags become one validated ServeConfig and one vLLM command."""

from __future__ import annotations

import json
import shlex
import sys

import pytest
import yaml

from llmforge.api.serving import ServeConfig
from llmforge_server.serve import build_config, command, main, parser, serve_env

CONFIG = {
    "variant": "canary",
    "servedModelName": "llama",
    "usdPerHour": 0.854,
    "gpuCount": 2,
    "cacheDir": "/cache",
    "model": {"baseModel": {"uri": "gs://models/llama-3.1-8b"},
              "adapters": [{"name": "support", "uri": "gs://runs/support/adapter/"},
                           {"name": "local", "uri": "file:///adapters/local"}]},
    "vllm": {"maxModelLen": 4096, "maxLoraRank": 16, "extraArgs": ["--enforce-eager"]},
}


def _build(argv: list[str], extra: list[str] | None = None) -> ServeConfig:
    return build_config(parser().parse_args(argv), extra or [])


@pytest.fixture(params=["yaml", "json"])
def config_file(request, tmp_path):
    path = tmp_path / f"serve.{request.param}"
    path.write_text(yaml.safe_dump(CONFIG) if request.param == "yaml" else json.dumps(CONFIG))
    return path


def test_file_is_read(config_file):
    cfg = _build(["--config", str(config_file)])
    assert cfg.variant == "canary" and cfg.served_model_name == "llama" and cfg.gpu_count == 2
    assert cfg.served_models() == ["llama", "support", "local"]
    assert cfg.vllm.max_model_len == 4096


def test_flags_override_the_file_and_extra_args_append(config_file):
    cfg = _build(["--config", str(config_file), "--variant", "stable", "--port", "9001", "--usd-per-hour", "2",
                  "--adapter", "only=/adapters/only", "--model-uri", "/models/other"], ["--seed", "3"])
    assert (cfg.variant, cfg.port, cfg.usd_per_hour) == ("stable", 9001, 2.0)
    assert [(a.name, a.uri) for a in cfg.model.adapters] == [("only", "/adapters/only")]
    assert cfg.model.base_model.uri == "/models/other"
    assert cfg.vllm.extra_args == ["--enforce-eager", "--seed", "3"]


def test_flags_alone():
    cfg = _build(["--served-model-name", "tiny", "--model-name", "org/tiny"])
    assert cfg.model.base_model.name == "org/tiny" and cfg.model.adapters == []
    assert (cfg.variant, cfg.port, cfg.usd_per_hour) == ("stable", 8000, 0.0)


def test_env_names_the_config_file(config_file, monkeypatch):
    monkeypatch.setenv("LLMFORGE_SERVE_CONFIG", str(config_file))
    assert _build([]).served_model_name == "llama"


def test_command_and_env_for_dry_run(config_file):
    cfg = _build(["--config", str(config_file)])
    cmd = command(cfg, dry_run=True)
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == "/cache/gcs/models/llama-3.1-8b"
    i = cmd.index("--lora-modules")
    assert cmd[i + 1:i + 3] == ["support=/cache/gcs/runs/support/adapter", "local=/adapters/local"]
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    assert serve_env(cfg) == {"LLMFORGE_VARIANT": "canary", "LLMFORGE_GPU_USD_PER_HOUR": "0.854",
                              "LLMFORGE_SERVED_MODELS": "llama,support,local"}


def test_hub_model_passes_name_and_revision():
    cfg = ServeConfig.model_validate({"servedModelName": "m", "model": {"baseModel": {
        "name": "meta-llama/Llama-3.1-8B-Instruct", "revision": "main"}}})
    cmd = command(cfg)
    assert cmd[cmd.index("--model") + 1] == "meta-llama/Llama-3.1-8B-Instruct"
    assert cmd[cmd.index("--revision") + 1] == "main"


def test_main_dry_run_prints_a_runnable_line(config_file, capsys):
    assert main(["--config", str(config_file), "--dry-run", "--", "--seed", "5"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[:3] == ["LLMFORGE_VARIANT=canary", "LLMFORGE_GPU_USD_PER_HOUR=0.854",
                         "LLMFORGE_SERVED_MODELS=llama,support,local"]
    assert words[3:6] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert words[-2:] == ["--seed", "5"]


@pytest.mark.parametrize(("change", "message"), [
    ({"model": {"baseModel": {"uri": "/m"}, "adapters": [{"name": "a", "fineTuneJobRef": {"name": "j"}}]}},
     "has no uri"),
    ({"model": {"baseModel": {"uri": "/m"}, "adapters": [{"name": "llama", "uri": "/a"}]}}, "unique"),
    ({"model": {"baseModel": {}}}, "uri"),
    ({"variant": "Canary!"}, "variant"),
    ({"usdPerHour": -1}, "usdPerHour"),
    ({"gpuCount": 0}, "gpuCount"),
    ({"vllm": {"maxLoraRank": 8, "bogus": 1}}, "bogus"),
])
def test_bad_configs_exit_2_with_the_reason(tmp_path, capsys, change, message):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **change}))
    assert main(["--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmforge-serve: invalid config:") and message in err


def test_bad_adapter_flag_and_missing_file(tmp_path, capsys):
    assert main(["--served-model-name", "m", "--model-uri", "/m", "--adapter", "noequals", "--dry-run"]) == 2
    assert "NAME=URI" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "absent.yaml"), "--dry-run"]) == 2


def test_missing_local_model_exits_1(tmp_path, capsys):
    assert main(["--served-model-name", "m", "--model-uri", str(tmp_path / "absent")]) == 1
    assert "cannot fetch model" in capsys.readouterr().err

"""llmforge-serve: fetch a variant's weights and adapters, then exec the real vLLM OpenAI server.

The operator mounts a ServeConfig (llmforge.api.serving) from a ConfigMap and runs
``llmforge-serve --config /etc/llmforge/serve.yaml``. Flags override single fields, and anything after
``--`` is appended to vLLM's arguments. The process becomes vLLM (``os.execvpe``), so signals, exit
codes and logs are vLLM's own; our usage middleware rides inside it.

    llmforge-serve --config serve.yaml
    llmforge-serve --config serve.yaml --dry-run          # print the command, fetch nothing
    llmforge-serve --served-model-name tiny --model-uri /models/tiny \\
        --adapter support=gs://bucket/adapters/support --port 8000 --usd-per-hour 0.85 \\
        -- --enforce-eager
    LLMFORGE_SERVE_CONFIG=serve.json llmforge-serve
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from pydantic import ValidationError

from llmforge.api.serving import ENV_SERVED_MODELS, ENV_USD_PER_HOUR, ENV_VARIANT, ServeConfig

from .args import VLLM_MODULE, vllm_args
from .fetch import planned_path, resolve

ENV_CONFIG = "LLMFORGE_SERVE_CONFIG"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmforge-serve", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.environ.get(ENV_CONFIG),
                   help=f"ServeConfig file, JSON or YAML (default: ${ENV_CONFIG})")
    p.add_argument("--variant", help="variant name (stable, canary)")
    p.add_argument("--served-model-name", help="name clients send for the base model")
    p.add_argument("--model-uri", help="base weights: gs://, file:// or a path")
    p.add_argument("--model-name", help="base model Hugging Face id (when no --model-uri)")
    p.add_argument("--adapter", action="append", metavar="NAME=URI",
                   help="LoRA adapter to serve; repeatable; replaces the config's adapters")
    p.add_argument("--port", type=int)
    p.add_argument("--host")
    p.add_argument("--gpu-count", type=int, help="GPUs per replica (tensor parallel size)")
    p.add_argument("--usd-per-hour", type=float, help="replica cost rate for usage cost, USD/h")
    p.add_argument("--cache-dir", help="where gs:// weights are downloaded")
    p.add_argument("--dry-run", action="store_true", help="print the command and environment, fetch nothing")
    return p


def load_file(path: str) -> dict[str, Any]:
    import yaml  # JSON is YAML

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def build_config(opts: argparse.Namespace, extra: list[str]) -> ServeConfig:
    """The file's config with flags applied on top, validated."""
    data = load_file(opts.config) if opts.config else {}
    scalar = {"variant": opts.variant, "servedModelName": opts.served_model_name, "port": opts.port,
              "host": opts.host, "gpuCount": opts.gpu_count, "usdPerHour": opts.usd_per_hour,
              "cacheDir": opts.cache_dir}
    data.update({k: v for k, v in scalar.items() if v is not None})
    model = data.setdefault("model", {})
    base = model.setdefault("baseModel", {})
    if opts.model_uri:
        base["uri"] = opts.model_uri
    if opts.model_name:
        base["name"] = opts.model_name
    if opts.adapter is not None:
        adapters = []
        for item in opts.adapter:
            name, sep, uri = item.partition("=")
            if not sep or not name or not uri:
                raise ValueError(f"--adapter {item!r}: expected NAME=URI")
            adapters.append({"name": name, "uri": uri})
        model["adapters"] = adapters
    if extra:
        vllm = data.setdefault("vllm", {})
        vllm["extraArgs"] = [*vllm.get("extraArgs", []), *extra]
    return ServeConfig.model_validate(data)


def serve_env(config: ServeConfig) -> dict[str, str]:
    """Environment for the usage middleware inside vLLM."""
    return {ENV_VARIANT: config.variant, ENV_USD_PER_HOUR: repr(config.usd_per_hour),
            ENV_SERVED_MODELS: ",".join(config.served_models())}


def command(config: ServeConfig, *, dry_run: bool = False) -> list[str]:
    """The vLLM command line, fetching gs:// weights and adapters first (unless ``dry_run``)."""
    locate = planned_path if dry_run else resolve
    base = config.model.base_model
    if base.uri:
        model, revision = locate(base.uri, config.cache_dir), None
    else:  # a hub id: vLLM downloads it itself (HF_TOKEN from the pod's Secret)
        model, revision = base.name, base.revision
    adapters = {a.name: locate(a.uri, config.cache_dir) for a in config.model.adapters}
    return [sys.executable, "-m", VLLM_MODULE, *vllm_args(
        config.vllm, model=model, served_model_name=config.served_model_name, adapters=adapters,
        port=config.port, host=config.host, gpu_count=config.gpu_count, revision=revision)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    opts = parser().parse_args(argv)
    try:
        config = build_config(opts, extra)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        detail = e.errors(include_url=False) if isinstance(e, ValidationError) else e
        print(f"llmforge-serve: invalid config: {detail}", file=sys.stderr)
        return 2
    env = serve_env(config)
    try:
        cmd = command(config, dry_run=opts.dry_run)
    except (OSError, ValueError) as e:
        print(f"llmforge-serve: cannot fetch model: {e}", file=sys.stderr)
        return 1
    line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(cmd)])
    if opts.dry_run:
        print(line)
        return 0
    print(f"llmforge-serve: exec {line}", file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, {**os.environ, **env})
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())

"""vllm_args: a ModelDeployment's vllm settings become exactly these vLLM arguments."""

from __future__ import annotations

import json

import pytest

from llmforge.api.modeldeployment import VllmSpec
from llmforge_server.args import USAGE_MIDDLEWARE, lora_module, lora_rank, vllm_args


def _opt(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} appears {args.count(flag)} times in {args}"
    return args[args.index(flag) + 1]


def test_full_spec_maps_every_field():
    spec = VllmSpec.model_validate({
        "maxModelLen": 8192, "gpuMemoryUtilization": 0.85, "enablePrefixCaching": True, "maxNumSeqs": 64,
        "maxLoraRank": 16, "dtype": "bfloat16", "extraArgs": ["--enforce-eager", "--seed", "7"],
    })
    args = vllm_args(spec, model="/cache/base", served_model_name="llama", port=8000, gpu_count=4,
                     adapters={"support": "/cache/a1", "sales": "/cache/a2"})
    assert _opt(args, "--model") == "/cache/base"
    assert _opt(args, "--served-model-name") == "llama"
    assert _opt(args, "--port") == "8000"
    assert _opt(args, "--host") == "0.0.0.0"
    assert _opt(args, "--tensor-parallel-size") == "4"
    assert _opt(args, "--max-model-len") == "8192"
    assert _opt(args, "--gpu-memory-utilization") == "0.85"
    assert _opt(args, "--max-num-seqs") == "64"
    assert _opt(args, "--dtype") == "bfloat16"
    assert "--enable-prefix-caching" in args and "--no-enable-prefix-caching" not in args
    assert "--enable-lora" in args
    assert _opt(args, "--max-lora-rank") == "16"
    assert _opt(args, "--max-loras") == "2"
    i = args.index("--lora-modules")
    assert args[i + 1:i + 3] == ["support=/cache/a1", "sales=/cache/a2"]
    assert args.count("--lora-modules") == 1  # vLLM replaces the list on a repeated flag
    assert _opt(args, "--middleware") == USAGE_MIDDLEWARE
    assert args[-3:] == ["--enforce-eager", "--seed", "7"]  # extraArgs last, so they override


def test_defaults_and_no_adapters():
    args = vllm_args(VllmSpec(), model="/m", served_model_name="m", port=9000)
    assert not {"--enable-lora", "--lora-modules", "--max-lora-rank", "--max-loras"} & set(args)
    assert not {"--max-model-len", "--max-num-seqs", "--revision"} & set(args)
    assert _opt(args, "--tensor-parallel-size") == "1"
    assert _opt(args, "--gpu-memory-utilization") == "0.9"
    assert _opt(args, "--dtype") == "auto"
    assert "--enable-prefix-caching" in args


def test_prefix_caching_off_is_explicit():
    args = vllm_args(VllmSpec(enable_prefix_caching=False), model="/m", served_model_name="m", port=1)
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args


def test_hub_model_with_revision_and_no_middleware():
    args = vllm_args(VllmSpec(), model="org/model", served_model_name="m", port=1, revision="abc123",
                     middleware=False)
    assert _opt(args, "--revision") == "abc123"
    assert "--middleware" not in args


@pytest.mark.parametrize(("rank", "expected"), [(1, 1), (2, 8), (8, 8), (12, 16), (64, 64), (65, 128),
                                                (300, 320), (512, 512)])
def test_lora_rank_rounds_up_to_what_vllm_accepts(rank, expected):
    assert lora_rank(rank) == expected


def test_lora_rank_too_big():
    with pytest.raises(ValueError, match="exceeds"):
        lora_rank(513)


def test_lora_module_uses_json_when_path_has_a_comma():
    assert lora_module("a", "/x/y") == "a=/x/y"
    assert json.loads(lora_module("a", "/x,y")) == {"name": "a", "path": "/x,y"}


@pytest.mark.vllm
def test_vllm_own_parser_accepts_our_arguments(tmp_path):
    """The real vLLM 0.32 argument parser parses what we build, to the values we meant."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    spec = VllmSpec.model_validate({"maxModelLen": 512, "maxNumSeqs": 8, "maxLoraRank": 12, "dtype": "float32",
                                    "enablePrefixCaching": False, "extraArgs": ["--enforce-eager"]})
    args = vllm_args(spec, model=str(tmp_path), served_model_name="tiny", port=8123, gpu_count=2,
                     adapters={"a": "/ad/a", "b": "/ad/b,c"})
    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(args)
    validate_parsed_serve_args(ns)
    assert (ns.model, ns.served_model_name, ns.port) == (str(tmp_path), ["tiny"], 8123)
    assert (ns.max_model_len, ns.max_num_seqs, ns.max_lora_rank, ns.max_loras) == (512, 8, 16, 2)
    assert (ns.tensor_parallel_size, ns.dtype, ns.enable_prefix_caching) == (2, "float32", False)
    assert ns.enable_lora is True and ns.enforce_eager is True
    assert [(m.name, m.path) for m in ns.lora_modules] == [("a", "/ad/a"), ("b", "/ad/b,c")]
    assert ns.middleware == [USAGE_MIDDLEWARE]

"""One accelerator catalogue (``llmforge.api.accelerators``): the schema names exactly its GPUs, and every
(accelerator, count, spot) that the schema and `llmforge validate` admit, for every kind, renders onto a GKE
machine that carries exactly that many GPUs and has an on-demand and a spot price.

Before the catalogue, validation kept its own list of counts and admitted ``nvidia-a100-80gb`` x 16, for
which no machine exists: such a spec passed validation and failed in the builder. This test walks the whole
admitted space, so a count validation admits without a machine, or a GPU without a price, fails here.
"""

from __future__ import annotations

from typing import Any, get_args

import pytest

from llmforge.api.accelerators import CATALOGUE, GPU_COUNTS, machine
from llmforge.api.common import Accelerator, Resources
from llmforge.builders import render_children
from llmforge.builders.common import ACCELERATOR_LABEL, GPU_RESOURCE
from llmforge.pricing import DEFAULT_PRICES
from llmforge.settings import Settings
from llmforge.validation import validate_object
from tests.cases import ftj, lfe, mdep

SCHEMA_COUNT = Resources.model_json_schema()["properties"]["count"]
COUNTS = range(SCHEMA_COUNT["minimum"], SCHEMA_COUNT["maximum"] + 1)
#: GPUs per VM of each GKE machine family (T4 on N1, L4 on G2, A2 High/Mega, A2 Ultra, A3 High), as GKE
#: documents them: pinned here so that dropping a machine from the catalogue is a visible, failing change.
GKE_COUNTS = {
    "nvidia-tesla-t4": (1, 2, 4), "nvidia-l4": (1, 2, 4, 8), "nvidia-tesla-a100": (1, 2, 4, 8, 16),
    "nvidia-a100-80gb": (1, 2, 4, 8), "nvidia-h100-80gb": (1, 2, 4, 8),
}
#: A base and batch that fit every GPU, so admission is decided by the accelerator and count, not by memory.
SMALL = {"baseModel": {"name": "acme/model-1B"}, "training": {"batchSize": 1}}
KINDS = {
    # float16 compute, so the T4 (no bf16) is admitted for training too
    "FineTuneJob": lambda res: ftj(resources=res, **SMALL, quantization={"computeDtype": "float16"}),
    "FineTuneJob-bf16": lambda res: ftj(resources=res, **SMALL),
    "Evaluation-adapterUri": lambda res: lfe(resources=res, model={
        "adapterUri": "gs://b/adapter", "baseModel": {"name": "meta-llama/Llama-3.1-8B-Instruct"}},
        output={"uri": "gs://b/eval/"}),
    "Evaluation-fineTuneJobRef": lambda res: lfe(resources=res),
    "ModelDeployment": lambda res: mdep(resources=res),
}


def test_schema_enum_is_auto_cpu_and_the_catalogue():
    assert get_args(Accelerator) == ("auto", "cpu", *CATALOGUE)
    assert len(CATALOGUE) >= 5


def test_catalogue_offers_the_gke_machine_counts():
    assert GPU_COUNTS == GKE_COUNTS


def _pod_specs(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["spec"]["template"]["spec"] for c in children if c["kind"] in ("Job", "Deployment")]


@pytest.mark.parametrize("kind", KINDS)
def test_every_admitted_accelerator_and_count_has_a_machine_and_prices(kind):
    admitted: dict[str, list[int]] = {}
    for accelerator in get_args(Accelerator):
        for count in COUNTS:
            for spot in (False, True):
                obj = KINDS[kind]({"accelerator": accelerator, "count": count, "spot": spot})
                if any(p.severity == "error" for p in validate_object(obj)):
                    continue
                where = f"{kind} {accelerator} x{count}{' spot' if spot else ''}"
                obj["metadata"]["namespace"] = "default"
                try:
                    pods = _pod_specs(render_children(obj, Settings()))
                except ValueError as exc:  # e.g. pod_requests: no GKE machine carries it
                    pytest.fail(f"{where} is admitted by validation but does not render: {exc}")
                assert pods, where
                for pod in pods:
                    resolved = pod.get("nodeSelector", {}).get(ACCELERATOR_LABEL, "cpu")
                    gpus = pod["containers"][0]["resources"]["limits"].get(GPU_RESOURCE)
                    if accelerator != "auto":
                        assert resolved == accelerator, where
                    if resolved == "cpu":
                        assert count == 1 and gpus is None, where
                    else:
                        assert gpus == count, where
                        assert machine(resolved, count) is not None, f"{where}: no machine for {resolved} x{count}"
                    assert DEFAULT_PRICES.rate(resolved, False) > 0, f"{where}: no on-demand price"
                    assert DEFAULT_PRICES.rate(resolved, True) > 0, f"{where}: no spot price"
                admitted.setdefault(accelerator, []).append(count)
    # The walk covered something, and for named GPUs it admitted exactly the catalogue's machines.
    assert admitted.get("cpu") and admitted.get("auto"), admitted
    for accelerator, counts in admitted.items():
        if accelerator in CATALOGUE:
            assert sorted(set(counts)) == list(GPU_COUNTS[accelerator]), accelerator
    assert set(admitted) >= set(CATALOGUE) - ({"nvidia-tesla-t4"} if kind == "FineTuneJob-bf16" else set())

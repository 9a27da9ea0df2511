"""Generated CRDs: no drift from the models, structural, every status field declared, kubectl niceties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from llmforge.api import KINDS
from llmforge.api.crd import crd_for
from llmforge.cli.crds import render_crds

ROOT = Path(__file__).resolve().parents[2]


def test_crd_files_match_models():
    files = render_crds()
    assert len(files) == 3
    for name, text in files.items():
        on_disk = ROOT / "crds" / name
        assert on_disk.exists(), f"{name} missing: run `make crds`"
        assert on_disk.read_text() == text, f"{name} drifted from the models: run `make crds`"


def _walk(node, path="$"):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind):
    schema = crd_for(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = json.dumps(schema)
    assert "$ref" not in text and "anyOf" not in text and "oneOf" not in text
    for path, node in _walk(schema):
        if "properties" in node or "items" in node:
            assert node.get("type") in ("object", "array"), path
        if path.endswith(".properties") or "x-kubernetes-validations" in path:
            continue
        if ("description" in node and "type" not in node and "x-kubernetes-preserve-unknown-fields" not in node
                and not path.endswith("]")):
            pytest.fail(f"{path} has no type")


def _model_fields(model: type[BaseModel], prefix: str):
    for name, field in model.model_fields.items():
        alias = field.alias or name
        yield f"{prefix}.{alias}"
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _model_fields(inner, f"{prefix}.{alias}")


@pytest.mark.parametrize("kind", KINDS)
def test_every_status_field_is_declared(kind):
    model = KINDS[kind]
    status_model = model.model_fields["status"].annotation.__args__[0]
    schema = crd_for(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    fields = list(_model_fields(status_model, "status"))
    assert len(fields) > 10
    for dotted in fields:
        node = schema
        for part in dotted.split(".")[1:]:
            if node.get("type") == "array":
                node = node["items"]
            elif "additionalProperties" in node and "properties" not in node:
                node = node["additionalProperties"]
            assert part in node.get("properties", {}), f"{dotted} not declared: the apiserver would prune it"
            node = node["properties"][part]


def test_printer_columns_names_and_categories():
    expected = {
        "FineTuneJob": ["Phase", "Progress", "Loss", "GPU", "Cost", "Age"],
        "Evaluation": ["Phase", "Model", "ROUGE-L", "BLEU", "PPL", "Passed", "Age"],
        "ModelDeployment": ["Phase", "Endpoint", "Ready", "Canary%", "Cost/h", "Age"],
    }
    for kind, cols in expected.items():
        crd = crd_for(KINDS[kind])
        version = crd["spec"]["versions"][0]
        assert [c["name"] for c in version["additionalPrinterColumns"]] == cols
        assert crd["spec"]["names"]["categories"] == ["llmforge"]
        assert version["subresources"] == {"status": {}}
    assert crd_for(KINDS["FineTuneJob"])["spec"]["names"]["shortNames"] == ["ftj"]


def test_defaults_live_in_the_schema():
    spec = crd_for(KINDS["FineTuneJob"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["method"]["default"] == "qlora"
    assert spec["properties"]["lora"]["default"] == {"r": 16, "alpha": 32.0, "dropout": 0.05,
                                                      "targetModules": ["all-linear"]}
    assert spec["properties"]["lora"]["properties"]["targetModules"]["default"] == ["all-linear"]
    assert spec["properties"]["training"]["properties"]["learningRate"]["default"] == 2e-4


def test_immutability_rules_spare_suspend():
    spec = crd_for(KINDS["FineTuneJob"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "x-kubernetes-validations" not in spec["properties"]["suspend"]
    assert {"rule": "self == oldSelf", "message": "is immutable after creation; only spec.suspend may change"} in \
        spec["properties"]["training"]["x-kubernetes-validations"]
    md = crd_for(KINDS["ModelDeployment"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "oldSelf" not in yaml.safe_dump(md)

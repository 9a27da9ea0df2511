"""Generate structural CustomResourceDefinitions from the pydantic models.

pydantic's JSON Schema is post-processed into the OpenAPI v3 subset Kubernetes accepts: $refs inlined,
Optional unwrapped, exclusive bounds turned into booleans, defaults made explicit (so the apiserver,
not the operator, fills spec), and each model's CEL ``rules`` attached as x-kubernetes-validations.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .. import GROUP, VERSION
from .common import ApiModel, Rule
from .evaluation import Evaluation
from .finetunejob import FineTuneJob
from .modeldeployment import ModelDeployment

IMMUTABLE_MESSAGE = "is immutable after creation; only spec.suspend may change"

CRD_META: dict[type[BaseModel], dict[str, Any]] = {
    FineTuneJob: {
        "plural": "finetunejobs", "singular": "finetunejob", "shortNames": ["ftj"], "immutable": True,
        "columns": [
            ("Phase", "string", ".status.phase", "Lifecycle phase"),
            ("Progress", "string", ".status.progress.summary", "Percent and steps done"),
            ("Loss", "number", ".status.progress.loss", "Latest training loss"),
            ("GPU", "string", ".status.gpu", "Accelerator x count, spot"),
            ("Cost", "number", ".status.cost.usd", "Accrued cost, USD"),
            ("Age", "date", ".metadata.creationTimestamp", None),
        ],
    },
    Evaluation: {
        "plural": "evaluations", "singular": "evaluation", "shortNames": ["lfe"], "immutable": True,
        "columns": [
            ("Phase", "string", ".status.phase", "Lifecycle phase"),
            ("Model", "string", ".status.model", "What is evaluated"),
            ("ROUGE-L", "number", ".status.results.finetuned.rougeL", "Fine-tuned ROUGE-L"),
            ("BLEU", "number", ".status.results.finetuned.bleu", "Fine-tuned BLEU"),
            ("PPL", "number", ".status.results.finetuned.perplexity", "Fine-tuned perplexity"),
            ("Passed", "string", '.status.conditions[?(@.type=="Passed")].status', "Gate verdict"),
            ("Age", "date", ".metadata.creationTimestamp", None),
        ],
    },
    ModelDeployment: {
        "plural": "modeldeployments", "singular": "modeldeployment", "shortNames": ["mdep"], "immutable": False,
        "columns": [
            ("Phase", "string", ".status.phase", "Progressing, Ready or Degraded"),
            ("Endpoint", "string", ".status.endpoint", "OpenAI-compatible base URL"),
            ("Ready", "string", ".status.ready", "Ready/desired replicas"),
            ("Canary%", "integer", ".status.canaryWeight", "Canary traffic percent"),
            ("Cost/h", "number", ".status.cost.usdPerHour", "Current USD per hour"),
            ("Age", "date", ".metadata.creationTimestamp", None),
        ],
    },
}


def crd_for(model: type[BaseModel]) -> dict[str, Any]:
    """The CRD manifest for one kind."""
    meta = CRD_META[model]
    kind = model.model_fields["kind"].default
    spec_model = model.model_fields["spec"].annotation
    status_model = _unwrap(model.model_fields["status"].annotation)
    spec_schema = object_schema(spec_model, with_defaults=True)
    if meta["immutable"]:
        _add_immutability(spec_schema, spec_model)
    schema = {
        "type": "object",
        "description": _doc(model),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": object_schema(status_model, with_defaults=False),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{meta['plural']}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind, "listKind": f"{kind}List", "plural": meta["plural"],
                "singular": meta["singular"], "shortNames": meta["shortNames"], "categories": ["llmforge"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [_column(*c) for c in meta["columns"]],
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd_for(m) for m in CRD_META]


def object_schema(model: type[BaseModel], *, with_defaults: bool) -> dict[str, Any]:
    """Structural schema of one pydantic model (recursively)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    out = _clean(raw, defs, with_defaults)
    _attach(out, model, with_defaults)
    return out


def _clean(node: Any, defs: dict, with_defaults: bool) -> Any:
    if isinstance(node, list):
        return [_clean(n, defs, with_defaults) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, defs, with_defaults)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"non-structural union in schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _clean({**options[0], **rest}, defs, with_defaults)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "additionalProperties" and value is False):
            continue
        if key == "default" and (not with_defaults or value is None):
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {k: _clean(v, defs, with_defaults) for k, v in value.items()}
            continue
        out[key] = _clean(value, defs, with_defaults)
    if "enum" in out and "type" not in out:
        out["type"] = "integer" if all(isinstance(v, int) for v in out["enum"]) else "string"
    return out


def _attach(schema: dict[str, Any], model: type[BaseModel], with_defaults: bool) -> None:
    """Walk model and schema together: CEL rules, factory defaults, descriptions from class docstrings."""
    if model.__doc__ and "description" not in schema:
        schema["description"] = _doc(model)
    rules: tuple[Rule, ...] = getattr(model, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.as_schema() for r in rules]
    props = schema.get("properties", {})
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = props.get(alias)
        if prop is None:
            continue
        if with_defaults and field.default_factory is not None:
            value = field.default_factory()
            # The apiserver checks defaults against CEL rules as written, so spell them out in full.
            prop["default"] = (value.model_dump(by_alias=True, exclude_none=True, mode="json")
                               if isinstance(value, BaseModel) else value)
        sub = _model_of(field)
        if sub is not None:
            target = prop
            if prop.get("type") == "array":
                target = prop["items"]
            elif prop.get("type") == "object" and "additionalProperties" in prop and "properties" not in prop:
                target = prop["additionalProperties"]
            _attach(target, sub, with_defaults)
    if schema.get("properties") and "conditions" in schema["properties"]:
        cond = schema["properties"]["conditions"]
        cond["x-kubernetes-list-type"] = "map"
        cond["x-kubernetes-list-map-keys"] = ["type"]
        cond["items"]["required"] = ["type", "status"]


def _add_immutability(spec_schema: dict[str, Any], spec_model: type[BaseModel]) -> None:
    """Every spec field but suspend is immutable: equality per field, and no field added or removed."""
    optional = []
    for name, field in spec_model.model_fields.items():
        alias = field.alias or name
        if alias == "suspend":
            continue
        spec_schema["properties"][alias].setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": IMMUTABLE_MESSAGE})
        if alias not in spec_schema.get("required", []):
            optional.append(alias)
    presence = " && ".join(f"has(self.{a}) == has(oldSelf.{a})" for a in optional)
    spec_schema.setdefault("x-kubernetes-validations", []).append(
        {"rule": presence, "message": f"fields cannot be added or removed: spec {IMMUTABLE_MESSAGE}"})


def _model_of(field: FieldInfo) -> type[ApiModel] | None:
    ann = _unwrap(field.annotation)
    args = getattr(ann, "__args__", ())
    for candidate in (ann, *args):
        candidate = _unwrap(candidate)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _unwrap(ann: Any) -> Any:
    args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
    if type(None) in getattr(ann, "__args__", ()) and len(args) == 1:
        return args[0]
    return ann


def _doc(model: type) -> str:
    return " ".join((model.__doc__ or "").split())


def _column(name: str, type_: str, path: str, description: str | None) -> dict[str, Any]:
    col = {"name": name, "type": type_, "jsonPath": path}
    if description:
        col["description"] = description
    return col

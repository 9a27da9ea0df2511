"""Operator settings: one typed object, read once from LLMFORGE_* environment variables at start-up.

Bad values fail fast with the variable named. Every field says its unit and default.
"""

from __future__ import annotations

import json
import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class Settings(BaseModel):
    """How the operator runs. Env var = LLMFORGE_ + field name upper-cased (lists: comma-separated)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty = all (cluster-wide)."""
    runtime: Literal["kubernetes", "local"] = "kubernetes"
    """kubernetes: create Jobs/Deployments. local: run the exact same commands as local processes (demo)."""
    trainer_image: str = "llmforge/trainer:0.1.0"
    """Image for training and evaluation Jobs."""
    server_image: str = "llmforge/server:0.1.0"
    """Image for vLLM serving Deployments."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Pull policy for the images above."""
    liveness: str = "http://0.0.0.0:8080/healthz"
    """kopf liveness endpoint URL."""
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    """Prometheus /metrics port of the operator (0 disables)."""
    operator_namespace: str = "llmforge-system"
    """Namespace holding the pricing ConfigMap."""
    pricing_configmap: str = "llmforge-pricing"
    """ConfigMap overriding the built-in price table (key prices.yaml); optional."""
    peering: str = ""
    """kopf peering object name (a ClusterKopfPeering, or a KopfPeering per watched namespace). Empty: run
    standalone, for exactly one replica. Set it when running several replicas: the replica with the highest
    peering_priority works, the others stand by until its keep-alive lapses (60 s)."""
    peering_priority: int = Field(default=0, ge=0, le=2**31 - 1)
    """This replica's kopf peering priority; 0 picks a random one at start, so replicas never tie."""
    field_manager: str = "llmforge"
    """Server-side apply field manager."""
    progress_interval_seconds: float = Field(default=15.0, gt=0)
    """How often running pods' progress is read (seconds)."""
    cost_interval_seconds: float = Field(default=30.0, gt=0)
    """How often cost accrues into status while work runs (seconds)."""
    local_workdir: str = "/tmp/llmforge-local"
    """Where the local runtime keeps specs, logs and termination messages."""
    trainer_metrics_port: int = Field(default=9090, ge=1, le=65535)
    """Port of the trainer's progress endpoint inside its pod."""
    analysis_interval_seconds: float = Field(default=30.0, gt=0)
    """How often serving pods' /metrics and /v1/models are read, canary promotion is decided and
    ModelDeployment status and cost are refreshed (seconds)."""
    serving_url_template: str = "http://{pod_ip}:{port}"
    """Base URL of a serving pod's HTTP API; placeholders {pod_ip}, {port}, {pod}, {namespace}, {variant},
    {name}. Tests point it at a stand-in server; in a cluster keep the default."""
    serving_http_timeout_seconds: float = Field(default=3.0, gt=0)
    """Timeout for one /metrics or /v1/models request to a serving pod (seconds)."""
    workload_env: list[str] = Field(default_factory=list)
    """Extra NAME=VALUE environment variables for every container the operator creates (trainer and
    evaluation Jobs, vLLM Deployments), after the operator's own. For clusters without Google storage:
    `make demo-kind` points the trainer and server at an in-cluster fake-gcs-server with
    STORAGE_EMULATOR_HOST. Comma-separated in LLMFORGE_WORKLOAD_ENV, so values cannot contain commas."""

    workload_node_selector: list[str] = Field(default_factory=list)
    """Extra KEY=VALUE node labels every workload pod (trainer, evaluation, vLLM) must match, added to the
    accelerator's own selector: pins llmforge's pods to a dedicated node pool. Comma-separated in
    LLMFORGE_WORKLOAD_NODE_SELECTOR. The real-node tests use it to put pods on the containerd node."""
    workload_tolerations: list[str] = Field(default_factory=list)
    """Extra tolerations for every workload pod, each KEY=VALUE:EFFECT (operator Equal) or KEY:EFFECT
    (operator Exists), EFFECT one of NoSchedule, PreferNoSchedule, NoExecute; for a tainted dedicated pool.
    Comma-separated in LLMFORGE_WORKLOAD_TOLERATIONS."""

    @field_validator("workload_node_selector")
    @classmethod
    def _key_equals_value(cls, items: list[str]) -> list[str]:
        for item in items:
            key, eq, value = item.partition("=")
            if not eq or not key or not _LABEL.fullmatch(key.rsplit("/", 1)[-1]) or (value and not _LABEL.fullmatch(value)):
                raise ValueError(f"{item!r} is not KEY=VALUE with a valid label key and value")
        return items

    @field_validator("workload_tolerations")
    @classmethod
    def _toleration(cls, items: list[str]) -> list[str]:
        for item in items:
            head, colon, effect = item.rpartition(":")
            if not colon or effect not in _EFFECTS or not head.partition("=")[0]:
                raise ValueError(f"{item!r} is not KEY=VALUE:EFFECT or KEY:EFFECT "
                                 f"(EFFECT one of {', '.join(_EFFECTS)})")
        return items

    def node_selector(self) -> dict[str, str]:
        """workload_node_selector as a nodeSelector map."""
        return dict(item.split("=", 1) for item in self.workload_node_selector)

    def tolerations(self) -> list[dict[str, str]]:
        """workload_tolerations as pod tolerations."""
        out = []
        for item in self.workload_tolerations:
            head, _, effect = item.rpartition(":")
            key, eq, value = head.partition("=")
            out.append({"key": key, "operator": "Equal", "value": value, "effect": effect} if eq
                       else {"key": key, "operator": "Exists", "effect": effect})
        return out

    @field_validator("workload_env")
    @classmethod
    def _name_equals_value(cls, items: list[str]) -> list[str]:
        for item in items:
            name, eq, _ = item.partition("=")
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{item!r} is not NAME=VALUE")
        return items

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            key = f"LLMFORGE_{name.upper()}"
            if key in env:
                value = env[key]
                if field.annotation == list[str]:
                    raw[name] = [v.strip() for v in value.split(",") if v.strip()]
                else:
                    raw[name] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = f"LLMFORGE_{str(first['loc'][0]).upper()}"
            raise ValueError(f"{key}: {first['msg']} (got {json.dumps(first.get('input'))})") from None

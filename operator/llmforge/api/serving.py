"""The serving contract between the operator and the server image (llmforge-serve).

The operator writes one ``ServeConfig`` per variant (stable, canary) into a ConfigMap; ``llmforge-serve
--config`` reads it, fetches weights and starts vLLM. The usage middleware inside vLLM exports the
Prometheus series named in ``USAGE_METRICS``, which the operator reads back into
``status.variants[]``. See docs/serving.md.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .common import ApiModel
from .modeldeployment import ServedModel, VllmSpec

#: Port of the OpenAI-compatible API and /metrics.
SERVE_PORT = 8000

#: Environment the usage middleware reads (vLLM's --middleware classes take no options).
ENV_VARIANT = "LLMFORGE_VARIANT"
ENV_USD_PER_HOUR = "LLMFORGE_GPU_USD_PER_HOUR"
ENV_SERVED_MODELS = "LLMFORGE_SERVED_MODELS"

#: Model label value for requests naming a model this server does not serve.
OTHER_MODEL = "other"

#: Series the usage middleware exports on /metrics. Labels: variant, model (bounded: the served names
#: or ``other``); errors add ``code`` (4xx or 5xx). Counters carry the ``_total`` suffix on the wire.
USAGE_METRICS = {
    "requests": "llmforge_requests_total",
    "prompt_tokens": "llmforge_prompt_tokens_total",
    "completion_tokens": "llmforge_completion_tokens_total",
    "errors": "llmforge_request_errors_total",
    "disconnects": "llmforge_client_disconnects_total",
    "cost_usd": "llmforge_cost_usd_total",
    "latency": "llmforge_request_duration_seconds",
    "in_flight": "llmforge_requests_in_flight",
    "busy_seconds": "llmforge_busy_seconds_total",
}


class ServeConfig(ApiModel):
    """What llmforge-serve needs to start one variant's vLLM server."""

    variant: str = Field(default="stable", min_length=1, max_length=63,
                         pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Variant name (stable or canary): the `variant` label on usage metrics and logs."""
    served_model_name: str = Field(min_length=1, max_length=256)
    """Name clients send as `model` for the base model."""
    model: ServedModel
    """Base weights and adapters. Adapters must carry a resolved `uri`."""
    vllm: VllmSpec = Field(default_factory=VllmSpec)
    """Engine settings."""
    gpu_count: int = Field(default=1, ge=1, le=16)
    """GPUs per replica; vLLM's tensor parallel size."""
    usd_per_hour: float = Field(default=0.0, ge=0.0)
    """Cost rate of one replica (its GPUs plus their share of the VM), USD per hour; 0 turns cost off."""
    host: str = Field(default="0.0.0.0", max_length=253)
    """Listen address."""
    port: int = Field(default=SERVE_PORT, ge=1, le=65535)
    """Listen port (API and /metrics)."""
    cache_dir: str = Field(default="/var/cache/llmforge", max_length=1024)
    """Local directory that gs:// weights and adapters are downloaded into."""

    @model_validator(mode="after")
    def _adapters_resolved(self) -> ServeConfig:
        names = [self.served_model_name]
        for adapter in self.model.adapters:
            if not adapter.uri:
                raise ValueError(f"adapter {adapter.name!r} has no uri: the operator must resolve "
                                 "fineTuneJobRef to the job's output adapterUri before serving")
            names.append(adapter.name)
        if len(set(names)) != len(names):
            raise ValueError(f"served names must be unique, got {names}")
        if not (self.model.base_model.uri or self.model.base_model.name):
            raise ValueError("model.baseModel needs uri or name")
        return self

    def served_models(self) -> list[str]:
        """Every name a client may send as `model`, base first."""
        return [self.served_model_name, *(a.name for a in self.model.adapters)]

"""ModelDeployment: vLLM serving of a base model plus LoRA adapters, with autoscaling and canary/A-B."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import ApiModel, BaseModelSource, CommonStatus, LocalRef, Resources, Rule, StatusModel
from .phases import DeploymentPhase, PromotionPhase


class AdapterSource(ApiModel):
    """A LoRA adapter served by name (the `model` field clients send)."""

    rules = (
        Rule("has(self.fineTuneJobRef) != has(self.uri)", "exactly one of fineTuneJobRef or uri must be set"),
    )

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Served model name of the adapter."""
    fine_tune_job_ref: LocalRef | None = None
    """A Succeeded FineTuneJob whose adapter to serve."""
    uri: str | None = Field(default=None, max_length=1024)
    """Adapter directory (gs://, file://, /path)."""


class ServedModel(ApiModel):
    """A base model and the adapters served on top of it, unmerged."""

    def served_name(self, resource_name: str) -> str:
        """What clients send as `model` for the base: the hub id when known, else `<resource>-base`."""
        return self.base_model.name or f"{resource_name}-base"

    base_model: BaseModelSource
    """Base weights."""
    adapters: list[AdapterSource] = Field(default_factory=list, max_length=16)
    """LoRA adapters (vLLM --lora-modules)."""


class Analysis(ApiModel):
    """Live checks on the canary; a breach rolls it back."""

    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    """Highest acceptable fraction of 5xx responses."""
    max_p95_latency_ms: float = Field(default=2000.0, gt=0)
    """Highest acceptable p95 end-to-end latency, ms."""
    min_requests: int = Field(default=20, ge=0)
    """Requests needed in a step before it can be judged."""


class Promotion(ApiModel):
    """Progressive promotion of the canary, gated on an Evaluation."""

    rules = (
        Rule("self.steps.all(s, s >= 1 && s <= 100)", "steps must be in 1..100", field_path=".steps"),
        Rule("self.steps.isSorted()", "steps must be in increasing order", field_path=".steps"),
    )

    evaluation_ref: LocalRef
    """Evaluation that must be Passed before each step; nothing is promoted without it."""
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100], min_length=1, max_length=20)
    """Canary weights, in order; 100 promotes the canary to stable."""
    interval: str = Field(default="10m", pattern=r"^[0-9]+(s|m|h)$")
    """Hold time per step, e.g. 30s, 10m, 1h."""
    analysis: Analysis = Field(default_factory=Analysis)
    """Live checks."""


class Canary(ApiModel):
    """A second variant. Without promotion it is a fixed A/B split."""

    rules = (Rule("self.weight >= 0 && self.weight <= 100", "canary.weight must be in 0..100",
                  field_path=".weight"),)

    model: ServedModel
    """The canary's model."""
    weight: int = 10
    """Percent of traffic for the canary (0..100) before promotion starts."""
    promotion: Promotion | None = None
    """Progressive promotion; omit for a static A/B split."""


class VllmSpec(ApiModel):
    """vLLM engine settings, turned into server arguments."""

    max_model_len: int | None = Field(default=None, ge=16, le=1048576)
    """Context length (default: the model's)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    """Fraction of GPU memory for weights + KV cache."""
    enable_prefix_caching: bool = True
    """Reuse KV cache across shared prefixes."""
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)
    """Concurrent sequences per replica."""
    max_lora_rank: int = Field(default=64, ge=1, le=512)
    """Largest adapter rank served."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights dtype."""
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    """Extra vLLM arguments, appended verbatim."""


class Autoscaling(ApiModel):
    """HPA on an LLM-aware metric."""

    rules = (Rule("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas",
                  field_path=".minReplicas"),)

    enabled: bool = True
    """Create an HPA per variant."""
    min_replicas: int = Field(default=1, ge=1, le=1000)
    """Lowest replica count."""
    max_replicas: int = Field(default=3, ge=1, le=1000)
    """Highest replica count."""
    metric: str = Field(default="vllm:num_requests_waiting", max_length=256)
    """Per-pod Prometheus metric (GKE managed Prometheus name), or `cpu` for CPU utilisation."""
    target: float = Field(default=5.0, gt=0)
    """Average value per pod (or CPU percent for `cpu`)."""


class GatewayRef(ApiModel):
    """A Gateway API Gateway."""

    name: str = Field(min_length=1, max_length=253)
    """Gateway name."""
    namespace: str | None = Field(default=None, max_length=63)
    """Gateway namespace (default: this one)."""


class Routing(ApiModel):
    """Traffic routing between variants."""

    gateway: GatewayRef | None = None
    """Attach an HTTPRoute with weighted backends to this Gateway."""
    header_name: str = Field(default="x-llmforge-variant", max_length=128)
    """Header that pins a request to a variant (stable or canary)."""
    hostnames: list[str] = Field(default_factory=list, max_length=16)
    """HTTPRoute hostnames."""


class ModelDeploymentSpec(ApiModel):
    """What to serve, where, and how to scale and route it."""

    model: ServedModel
    """The stable variant."""
    canary: Canary | None = None
    """Optional second variant."""
    resources: Resources = Field(default_factory=Resources)
    """GPUs per replica; tensor parallel = count."""
    vllm: VllmSpec = Field(default_factory=VllmSpec)
    """Engine settings."""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    """Scaling."""
    routing: Routing = Field(default_factory=Routing)
    """Routing."""
    service_account_name: str | None = Field(default=None, max_length=253)
    """Pod service account (Workload Identity)."""
    image: str | None = Field(default=None, max_length=512)
    """Server image override."""


class VariantStatus(StatusModel):
    """One variant's serving state and live numbers."""

    name: str
    """stable or canary."""
    weight: int | None = None
    """Percent of traffic."""
    replicas: int | None = None
    """Pods desired."""
    ready_replicas: int | None = None
    """Pods ready."""
    adapters_loaded: list[str] | None = None
    """Adapters listed by the pods' /v1/models."""
    requests: float | None = None
    """Requests served."""
    error_rate: float | None = None
    """Fraction of failed requests."""
    p95_latency_ms: float | None = None
    """p95 end-to-end latency."""
    tokens_per_second: float | None = None
    """Generation throughput."""
    cost_per_1k_tokens: float | None = None
    """USD per 1,000 tokens at current rate and throughput."""


class HistoryEntry(StatusModel):
    """A scaling or promotion decision."""

    time: str | None = None
    """When."""
    variant: str | None = None
    """Which variant."""
    action: str | None = None
    """Scaled, Advanced, Promoted, RolledBack, Blocked."""
    from_value: int | None = Field(default=None, alias="from")
    """Replicas or weight before."""
    to_value: int | None = Field(default=None, alias="to")
    """Replicas or weight after."""
    reason: str | None = None
    """Why, with numbers."""


class PodCounters(StatusModel):
    """One canary pod's cumulative counters when the analysis window began."""

    pod: str
    """Pod name."""
    requests: float = 0.0
    """Requests served since the pod started."""
    errors: float = 0.0
    """Failed (5xx) requests since the pod started."""
    latency_buckets: dict[str, float] | None = None
    """End-to-end latency histogram: bucket upper bound in seconds ("+Inf" for the last) -> cumulative count."""


class AnalysisWindow(StatusModel):
    """The canary's live analysis over the current promotion step only: the baseline counters taken when the
    step began (kept here so an operator restart continues the same window) and the numbers since then."""

    canary_revision: str | None = None
    """The canary revision the window belongs to."""
    step: int | None = None
    """The promotion step the window belongs to."""
    since: str | None = None
    """When the window began."""
    requests: float | None = None
    """Canary requests in the window."""
    errors: float | None = None
    """Failed canary requests in the window."""
    error_rate: float | None = None
    """errors / requests in the window."""
    p95_latency_ms: float | None = None
    """p95 end-to-end latency in the window, from histogram bucket deltas."""
    baseline: list[PodCounters] | None = None
    """Each canary pod's counters at `since`."""


class ModelDeploymentStatus(CommonStatus):
    """Observed serving state."""

    phase: Literal[DeploymentPhase.PROGRESSING, DeploymentPhase.READY, DeploymentPhase.DEGRADED] | None = None
    """Progressing, Ready or Degraded."""
    endpoint: str | None = None
    """OpenAI-compatible base URL of the shared Service."""
    ready: str | None = None
    """Ready/desired replicas across variants, for kubectl."""
    canary_weight: int | None = None
    """Current canary percent."""
    promotion_step: int | None = None
    """Index into promotion.steps."""
    step_started_at: str | None = None
    """When the current promotion step began."""
    promotion_phase: Literal[PromotionPhase.PROGRESSING, PromotionPhase.PROMOTED,
                             PromotionPhase.ROLLED_BACK] | None = None
    """Where the canary's promotion stands; Promoted and RolledBack are final for that canary."""
    canary_revision: str | None = None
    """Hash of the spec.canary the promotion state belongs to; a changed canary starts over."""
    analysis_window: AnalysisWindow | None = None
    """The canary analysis of the current promotion step (numbers since the step began)."""
    variants: list[VariantStatus] | None = None
    """Per-variant state."""
    scaling_history: list[HistoryEntry] | None = None
    """Recent replica changes."""
    promotion_history: list[HistoryEntry] | None = None
    """Recent promotion decisions."""


class ModelDeployment(ApiModel):
    """vLLM serving with LoRA adapters, LLM-aware autoscaling and eval-gated canary promotion."""

    api_version: Literal["llmforge.dev/v1alpha1"] = "llmforge.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

"""Pure builders for a ModelDeployment's children: per variant (stable, canary) a serve-config ConfigMap,
a Deployment running `llmforge-serve`, a Service, an HPA and a PDB, and (with a gateway, on GKE) a
HealthCheckPolicy for that Service; shared: a Service over all variants, an HTTPRoute (with a gateway)
and a PodMonitoring/ServiceMonitor (when the cluster has the CRD).

Each variant is its own Deployment so base and adapter requests of different variants never share a vLLM
batch (vLLM 0.32 on CPU applies an adapter to base requests batched with it: docs/serving.md, "Known fault").
While autoscaling is on, the Deployment carries no `spec.replicas` at all, so the
operator's server-side apply never owns the field and never fights the HPA, not even after a restart.

What the builders cannot know from the spec alone — adapter URIs of referenced FineTuneJobs, the current
canary weight, whether the canary was promoted, which monitoring CRD exists, the price — comes in as
`ServingInputs`, filled by the controller from the cluster and by `render` with placeholders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .. import API_VERSION
from ..api.common import Resources
from ..api.modeldeployment import ModelDeployment, ServedModel
from ..api.phases import Phase
from ..api.serving import SERVE_PORT
from ..estimate import serving_accelerator
from ..pricing import DEFAULT_PRICES, PriceTable
from ..settings import Settings
from .common import (
    container_security_context,
    pod_security_context,
    resources,
    workload_env,
    workload_placement,
)

CONFIG_DIR = "/etc/llmforge"
CONFIG_FILE = "serve.yaml"
CACHE_DIR = "/var/cache/llmforge"
STABLE, CANARY = "stable", "canary"
MANAGED_BY = "llmforge"
LABEL_MD = "llmforge.dev/modeldeployment"
LABEL_VARIANT = "llmforge.dev/variant"
ANNOTATION_CONFIG_HASH = "llmforge.dev/serve-config-hash"
GATEWAY_GROUP = "gateway.networking.k8s.io"
ROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
HEALTH_CHECK_API_VERSION = "networking.gke.io/v1"
Monitoring = Literal["podmonitoring", "servicemonitor"] | None


def gpu_count(accelerator: str, res: Resources) -> int:
    """GPUs per replica (0 on cpu)."""
    return 0 if accelerator == "cpu" else res.count


def gpu_hour_rate(accelerator: str, spot: bool, prices: PriceTable = DEFAULT_PRICES) -> tuple[float, str]:
    """(USD per GPU-hour, or per pod-hour on cpu; pricing source). Unknown accelerator: 0 and why."""
    try:
        return prices.rate(accelerator, spot), prices.label
    except KeyError as e:
        return 0.0, str(e)


@dataclass(frozen=True)
class ServingInputs:
    """Facts from outside the spec. Defaults describe a fresh object with nothing resolved yet."""

    adapter_uris: dict[str, str] = field(default_factory=dict)
    """FineTuneJob name -> its status.output.adapterUri (Succeeded jobs only)."""
    canary_weight: int | None = None
    """Current canary percent (from status while promoting); None = spec.canary.weight."""
    promoted: bool = False
    """The canary was promoted: the stable variant serves the canary's model."""
    canary_retired: bool = False
    """After promotion, once stable runs the new model: the canary's children are no longer built."""
    monitoring: Monitoring = None
    """Which scrape CRD the cluster has."""
    health_check_policy: bool = False
    """The cluster serves GKE's HealthCheckPolicy (networking.gke.io/v1): give each variant Service one."""
    usd_per_gpu_hour: float = 0.0
    """Price of one GPU-hour (per pod-hour on cpu), passed to the server's usage metering."""
    placeholders: bool = False
    """Render unresolved adapter URIs as a readable placeholder instead of leaving the variant out."""


@dataclass(frozen=True)
class VariantPlan:
    """One variant as it will be served."""

    name: str
    model: ServedModel
    weight: int
    missing: tuple[str, ...] = ()
    """FineTuneJobs whose adapter is not available yet (the variant's Deployment is not built)."""

    @property
    def buildable(self) -> bool:
        return not self.missing


def child_name(md_name: str, variant: str) -> str:
    return f"{md_name}-{variant}"


def config_map_name(md_name: str, variant: str) -> str:
    return f"{md_name}-{variant}-serve"


def endpoint(md_name: str, namespace: str) -> str:
    return f"http://{md_name}.{namespace}.svc:{SERVE_PORT}/v1"


def labels(md_name: str, variant: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "llmforge-server",
        "app.kubernetes.io/instance": md_name,
        "app.kubernetes.io/component": "serving",
        "app.kubernetes.io/part-of": "llmforge",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MD: md_name,
    }
    if variant:
        out[LABEL_VARIANT] = variant
    return out


def selector(md_name: str, variant: str | None = None) -> dict[str, str]:
    out = {LABEL_MD: md_name}
    if variant:
        out[LABEL_VARIANT] = variant
    return out


def owner_references(md: ModelDeployment) -> list[dict[str, Any]]:
    uid = md.metadata.get("uid")
    if not uid:  # render: no object in a cluster yet
        return []
    return [{"apiVersion": API_VERSION, "kind": "ModelDeployment", "name": md.metadata["name"], "uid": uid,
             "controller": True, "blockOwnerDeletion": True}]


def _meta(md: ModelDeployment, name: str, variant: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": md.metadata.get("namespace", "default"),
                            "labels": labels(md.metadata["name"], variant)}
    owners = owner_references(md)
    if owners:
        meta["ownerReferences"] = owners
    return meta


# -- variants ---------------------------------------------------------------------------------------------

def resolve_model(model: ServedModel, adapter_uris: dict[str, str], placeholders: bool = False,
                  ) -> tuple[ServedModel, tuple[str, ...]]:
    """The model with every adapter's `uri` filled from its FineTuneJob; plus the jobs still missing."""
    adapters, missing = [], []
    for adapter in model.adapters:
        if adapter.uri:
            adapters.append({"name": adapter.name, "uri": adapter.uri})
            continue
        job = adapter.fine_tune_job_ref.name  # type: ignore[union-attr]  # CEL: exactly one is set
        uri = adapter_uris.get(job)
        if uri:
            adapters.append({"name": adapter.name, "uri": uri})
        else:
            missing.append(job)
            if placeholders:
                adapters.append({"name": adapter.name,
                                 "uri": f"<FineTuneJob {job} status.output.adapterUri>"})
    data = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    data["adapters"] = adapters
    return ServedModel.model_validate(data), tuple(missing)


def finetunejob_adapter_uri(ftj: dict[str, Any] | None) -> str | None:
    """The adapter a FineTuneJob produced, once it has Succeeded: `status.output.adapterUri`, else
    `<spec.output.uri>/adapter`, where the trainer writes it (the Evaluation controller resolves it the same
    way). None for a job that is missing or not Succeeded."""
    st = (ftj or {}).get("status") or {}
    if ftj is None or st.get("phase") != Phase.SUCCEEDED:
        return None
    uri = (st.get("output") or {}).get("adapterUri")
    if uri:
        return uri
    base = ((ftj.get("spec") or {}).get("output") or {}).get("uri")
    return f"{base.rstrip('/')}/adapter" if base else None


def served_adapter_uris(config_maps: list[dict[str, Any] | None]) -> dict[str, str]:
    """Adapter name -> URI as the variants' serve-config ConfigMaps (what the pods run) have it now."""
    out: dict[str, str] = {}
    for cm in config_maps:
        text = ((cm or {}).get("data") or {}).get(CONFIG_FILE)
        if not text:
            continue
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            continue
        for adapter in ((doc.get("model") or {}).get("adapters") or []):
            if isinstance(adapter, dict) and adapter.get("name") and adapter.get("uri"):
                out.setdefault(adapter["name"], adapter["uri"])
    return out


def resolve_adapter_uris(md: ModelDeployment, finetunejobs: dict[str, dict[str, Any] | None],
                         served: dict[str, str]) -> dict[str, str]:
    """FineTuneJob name -> adapter URI for every job the spec references that can be served.

    A Succeeded job gives its adapter. A job that is not Succeeded *now* (retrained, deleted, or its status
    rewritten) keeps the URI its adapters are already served with, read from the live ConfigMaps: a
    finished adapter stays valid, and tearing down a serving variant because its job went back to Running
    would be an outage. Only a job never served waits (WaitingForAdapter)."""
    models = [md.spec.model] + ([md.spec.canary.model] if md.spec.canary else [])
    out: dict[str, str] = {}
    for job in sorted({a.fine_tune_job_ref.name for m in models for a in m.adapters if a.fine_tune_job_ref}):
        uri = finetunejob_adapter_uri(finetunejobs.get(job))
        if uri is None:
            names = [a.name for m in models for a in m.adapters
                     if a.fine_tune_job_ref and a.fine_tune_job_ref.name == job]
            uri = next((served[n] for n in names if n in served), None)
        if uri:
            out[job] = uri
    return out


def variant_plans(md: ModelDeployment, inputs: ServingInputs) -> list[VariantPlan]:
    """Stable (with the canary's model once promoted) and, while there is one, the canary, with weights."""
    spec = md.spec
    canary = spec.canary
    stable_model = canary.model if (canary and inputs.promoted) else spec.model
    has_canary = canary is not None and not inputs.canary_retired
    weight = 0
    if has_canary:
        weight = 100 if inputs.promoted else (
            canary.weight if inputs.canary_weight is None else inputs.canary_weight)  # type: ignore[union-attr]
    model, missing = resolve_model(stable_model, inputs.adapter_uris, inputs.placeholders)
    plans = [VariantPlan(STABLE, model, 100 - weight, () if inputs.placeholders else missing)]
    if has_canary:
        cmodel, cmissing = resolve_model(canary.model, inputs.adapter_uris, inputs.placeholders)  # type: ignore[union-attr]
        plans.append(VariantPlan(CANARY, cmodel, weight, () if inputs.placeholders else cmissing))
    return plans


def served_model_name(md: ModelDeployment) -> str:
    """What clients send as `model` for the base (one rule, shared with validation)."""
    return md.spec.model.served_name(md.metadata["name"])


# -- per-variant children ---------------------------------------------------------------------------------

def serve_config(md: ModelDeployment, plan: VariantPlan, inputs: ServingInputs) -> dict[str, Any]:
    """The ServeConfig `llmforge-serve --config` reads (llmforge.api.serving.ServeConfig on the wire)."""
    accelerator = serving_accelerator(md.spec.resources, plan.model.base_model.name)
    gpus = gpu_count(accelerator, md.spec.resources)
    return {
        "variant": plan.name,
        "servedModelName": served_model_name(md),
        "model": plan.model.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "vllm": md.spec.vllm.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "gpuCount": max(gpus, 1),
        "usdPerHour": round(inputs.usd_per_gpu_hour * max(gpus, 1), 6),
        "host": "0.0.0.0",
        "port": SERVE_PORT,
        "cacheDir": CACHE_DIR,
    }


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def build_config_map(md: ModelDeployment, plan: VariantPlan, config: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(md, config_map_name(md.metadata["name"], plan.name), plan.name),
            "data": {CONFIG_FILE: yaml.safe_dump(config, sort_keys=False)}}


def build_deployment(md: ModelDeployment, plan: VariantPlan, config: dict[str, Any],
                     settings: Settings) -> dict[str, Any]:
    name = md.metadata["name"]
    spec = md.spec
    accelerator = serving_accelerator(spec.resources, plan.model.base_model.name)
    # HOME on the cache emptyDir: vLLM, torch and Triton write under ~/.cache and ~/.config, and the root
    # filesystem is read-only.
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
                                 {"name": "HOME", "value": CACHE_DIR},
                                 {"name": "VLLM_NO_USAGE_STATS", "value": "1"}]
    token = plan.model.base_model.token_secret_ref
    if token:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    env += workload_env(settings)

    def probe() -> dict[str, Any]:
        return {"httpGet": {"path": "/health", "port": "http"}}

    container = {
        "name": "server",
        "image": spec.image or settings.server_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["llmforge-serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "ports": [{"name": "http", "containerPort": SERVE_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": resources(accelerator, spec.resources.count, spec.resources.cpu, spec.resources.memory),
        # Weights download and load can take many minutes: up to 30 min before liveness starts.
        "startupProbe": {**probe(), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 180},
        "readinessProbe": {**probe(), "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe(), "periodSeconds": 15, "timeoutSeconds": 10, "failureThreshold": 4},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                         {"name": "cache", "mountPath": CACHE_DIR},
                         {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 60,
        "volumes": [
            {"name": "config", "configMap": {"name": config_map_name(name, plan.name)}},
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            # vLLM's tensor-parallel workers talk through shared memory.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        ],
        **workload_placement(settings, accelerator, spec.resources.count, spec.resources.spot),
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    deploy_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(name, plan.name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": 3600,
        "template": {
            "metadata": {
                "labels": labels(name, plan.name),
                "annotations": {ANNOTATION_CONFIG_HASH: config_hash(config),
                                "prometheus.io/scrape": "true", "prometheus.io/port": str(SERVE_PORT),
                                "prometheus.io/path": "/metrics"},
            },
            "spec": pod_spec,
        },
    }
    if not spec.autoscaling.enabled:
        # Only without an HPA does the operator own the replica count.
        deploy_spec = {"replicas": spec.autoscaling.min_replicas, **deploy_spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(md, child_name(name, plan.name),
                                                                             plan.name),
            "spec": deploy_spec}


def build_service(md: ModelDeployment, variant: str | None) -> dict[str, Any]:
    """A variant's Service, or (variant None) the shared one over every variant's pods."""
    name = md.metadata["name"]
    svc_name = child_name(name, variant) if variant else name
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(md, svc_name, variant),
            "spec": {"type": "ClusterIP", "selector": selector(name, variant),
                     "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": "http", "protocol": "TCP"}]}}


def build_health_check_policy(md: ModelDeployment, variant: str) -> dict[str, Any]:
    """GKE's health check for the load balancer backend behind a variant's Service. Without it the GKE
    Gateway probes `/` on the serving port, which vLLM answers 404, so every backend is marked unhealthy
    and the route serves nothing; vLLM's health endpoint is `/health` on that same port."""
    name = child_name(md.metadata["name"], variant)
    return {"apiVersion": HEALTH_CHECK_API_VERSION, "kind": "HealthCheckPolicy", "metadata": _meta(md, name, variant),
            "spec": {"default": {"checkIntervalSec": 15, "timeoutSec": 5, "healthyThreshold": 1,
                                 "unhealthyThreshold": 2,
                                 "config": {"type": "HTTP", "httpHealthCheck": {
                                     "portSpecification": "USE_FIXED_PORT", "port": SERVE_PORT,
                                     "requestPath": "/health"}}},
                     "targetRef": {"group": "", "kind": "Service", "name": name}}}


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def hpa_metric(metric: str, target: float) -> dict[str, Any]:
    """`cpu` -> Resource utilisation; a bare Prometheus name -> the GKE managed-Prometheus custom metric
    (`prometheus.googleapis.com|<name>|gauge`, the name the Stackdriver custom-metrics adapter serves a
    Managed Prometheus gauge under: docs/gke.md section 4); a name with `|` is used as given."""
    if metric == "cpu":
        return {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": max(1, round(target))}}}
    name = metric if "|" in metric else f"prometheus.googleapis.com|{metric}|gauge"
    return {"type": "Pods", "pods": {"metric": {"name": name},
                                     "target": {"type": "AverageValue", "averageValue": _quantity(target)}}}


def build_hpa(md: ModelDeployment, variant: str) -> dict[str, Any]:
    name = md.metadata["name"]
    auto = md.spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(md, child_name(name, variant), variant),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(name, variant)},
            "minReplicas": auto.min_replicas, "maxReplicas": auto.max_replicas,
            "metrics": [hpa_metric(auto.metric, auto.target)],
            # A GPU replica takes minutes to load: scale up at once, scale down slowly.
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                         "scaleDown": {"stabilizationWindowSeconds": 600,
                                       "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]}},
        },
    }


def build_pdb(md: ModelDeployment, variant: str) -> dict[str, Any]:
    name = md.metadata["name"]
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(md, child_name(name, variant), variant),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name, variant)}}}


# -- shared children --------------------------------------------------------------------------------------

def build_httproute(md: ModelDeployment, plans: list[VariantPlan]) -> dict[str, Any]:
    """Weighted backends for the split, plus one header-matched rule per variant for deterministic A/B."""
    name = md.metadata["name"]
    routing = md.spec.routing
    gateway = routing.gateway
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}  # type: ignore[union-attr]
    if gateway.namespace:  # type: ignore[union-attr]
        parent["namespace"] = gateway.namespace  # type: ignore[union-attr]

    def backend(plan: VariantPlan, weight: int | None = None) -> dict[str, Any]:
        ref: dict[str, Any] = {"kind": "Service", "name": child_name(name, plan.name), "port": SERVE_PORT}
        if weight is not None:
            ref["weight"] = weight
        return ref

    rules: list[dict[str, Any]] = [
        {"matches": [{"headers": [{"type": "Exact", "name": routing.header_name, "value": plan.name}]}],
         "backendRefs": [backend(plan)]}
        for plan in plans
    ]
    rules.append({"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                  "backendRefs": [backend(plan, plan.weight) for plan in plans]})
    spec: dict[str, Any] = {"parentRefs": [parent], "rules": rules}
    if routing.hostnames:
        spec["hostnames"] = list(routing.hostnames)
    return {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute", "metadata": _meta(md, name, None),
            "spec": spec}


def build_monitoring(md: ModelDeployment, kind: Monitoring) -> dict[str, Any] | None:
    name = md.metadata["name"]
    endpoint_ = {"port": "http", "path": "/metrics", "interval": "15s"}
    if kind == "podmonitoring":
        return {"apiVersion": "monitoring.googleapis.com/v1", "kind": "PodMonitoring",
                "metadata": _meta(md, name, None),
                "spec": {"selector": {"matchLabels": selector(name)}, "endpoints": [endpoint_]}}
    if kind == "servicemonitor":
        return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                "metadata": _meta(md, name, None),
                "spec": {"selector": {"matchLabels": {**selector(name), "app.kubernetes.io/managed-by": MANAGED_BY}},
                         "endpoints": [endpoint_]}}
    return None


# -- everything -------------------------------------------------------------------------------------------

def build_children(md: ModelDeployment, settings: Settings, inputs: ServingInputs) -> list[dict[str, Any]]:
    """Every child, in apply order (ConfigMaps before the Deployments that mount them)."""
    plans = variant_plans(md, inputs)
    out: list[dict[str, Any]] = []
    for plan in plans:
        if plan.buildable:
            config = serve_config(md, plan, inputs)
            out += [build_config_map(md, plan, config), build_deployment(md, plan, config, settings)]
        out.append(build_service(md, plan.name))
        if md.spec.autoscaling.enabled and plan.buildable:
            out.append(build_hpa(md, plan.name))
        out.append(build_pdb(md, plan.name))
        if md.spec.routing.gateway and inputs.health_check_policy:
            out.append(build_health_check_policy(md, plan.name))
    out.append(build_service(md, None))
    if md.spec.routing.gateway:
        out.append(build_httproute(md, plans))
    monitor = build_monitoring(md, inputs.monitoring)
    if monitor:
        out.append(monitor)
    return out


def child_keys(md_name: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every child this kind can ever create, for pruning what is not built."""
    keys: list[tuple[str, str, str]] = []
    for variant in (STABLE, CANARY):
        n = child_name(md_name, variant)
        keys += [("v1", "ConfigMap", config_map_name(md_name, variant)), ("apps/v1", "Deployment", n),
                 ("v1", "Service", n), ("autoscaling/v2", "HorizontalPodAutoscaler", n),
                 ("policy/v1", "PodDisruptionBudget", n), (HEALTH_CHECK_API_VERSION, "HealthCheckPolicy", n)]
    keys += [("v1", "Service", md_name), (f"{GATEWAY_GROUP}/v1", "HTTPRoute", md_name),
             ("monitoring.googleapis.com/v1", "PodMonitoring", md_name),
             ("monitoring.coreos.com/v1", "ServiceMonitor", md_name)]
    return keys


def render(resource: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """`llmforge render`: children of a fresh object on GKE (PodMonitoring), FineTuneJob adapters shown as
    placeholders, the price from the built-in table."""
    md = ModelDeployment.model_validate(resource)
    accelerator = serving_accelerator(md.spec.resources, md.spec.model.base_model.name)
    inputs = ServingInputs(monitoring="podmonitoring", placeholders=True,
                           usd_per_gpu_hour=gpu_hour_rate(accelerator, md.spec.resources.spot)[0])
    return build_children(md, settings, inputs)

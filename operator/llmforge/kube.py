"""Thin Kubernetes helpers over the official client: server-side apply, get, list, status patch, delete.

Plain dicts in and out, addressed by apiVersion/kind, so controllers never touch generated model classes.
Synchronous: controllers call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from prometheus_client import Counter, Histogram

#: Every API call we make, so a scale benchmark (and a dashboard) can see calls per reconcile.
API_REQUESTS = Counter("llmforge_api_requests_total", "Kubernetes API requests made by llmforge",
                       ["verb", "resource", "code"])
API_SECONDS = Histogram("llmforge_api_request_duration_seconds", "Kubernetes API request latency, as we see it",
                        ["verb"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
#: Exponentially weighted mean API latency (seconds): how busy the API server is right now, as we see it.
latency_ewma = 0.0
#: Connections kept per API server; sized to the operator's API thread pool so none is discarded.
POOL_SIZE = 64

#: kind -> plural for the kinds we touch.
PLURALS = {"Namespace": "namespaces", "Job": "jobs", "Pod": "pods", "ConfigMap": "configmaps", "Secret": "secrets",
           "Event": "events",
           "FineTuneJob": "finetunejobs", "Evaluation": "evaluations", "ModelDeployment": "modeldeployments",
           "Deployment": "deployments", "Service": "services",
           "HorizontalPodAutoscaler": "horizontalpodautoscalers", "PodDisruptionBudget": "poddisruptionbudgets",
           "HTTPRoute": "httproutes", "PodMonitoring": "podmonitorings", "ServiceMonitor": "servicemonitors",
           "HealthCheckPolicy": "healthcheckpolicies"}

_lock = threading.Lock()
_client: client.ApiClient | None = None


def api_client() -> client.ApiClient:
    """One ApiClient per process: in-cluster credentials, else $KUBECONFIG."""
    global _client
    with _lock:
        if _client is None:
            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                # The client reads $KUBECONFIG at import time; read it now so a later setting counts.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
            cfg.connection_pool_maxsize = POOL_SIZE
            _client = client.ApiClient(cfg)
        return _client


def path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
         sub: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{PLURALS[kind]}"
    if name:
        base += f"/{quote(name)}"
    if sub:
        base += f"/{sub}"
    return base


def request(method: str, url_path: str, body: Any = None, query: dict[str, str] | None = None,
            content_type: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """One API call; raises ApiException (with .status) on HTTP errors."""
    return call(method, url_path, body, query, content_type, timeout)[1]


def call(method: str, url_path: str, body: Any = None, query: dict[str, str] | None = None,
         content_type: str | None = None, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """`request`, also returning the HTTP status (201 tells an apply that created from one that updated)."""
    api = api_client()
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    if body is not None and not isinstance(body, (str, bytes)):
        # The client's REST layer serialises JSON bodies itself: a pre-encoded string would arrive as a
        # JSON string (the API server then answers 500 "cannot unmarshal string").
        headers.setdefault("Content-Type", "application/json")
    m, url, hdrs, data, post = api.param_serialize(method, url_path, query_params=list((query or {}).items()),
                                                   header_params=headers, body=body,
                                                   auth_settings=["BearerToken"])
    start = time.perf_counter()
    resp = api.call_api(m, url, hdrs, data, post, _request_timeout=timeout)
    raw = resp.read()
    elapsed = time.perf_counter() - start
    API_SECONDS.labels(method).observe(elapsed)
    global latency_ewma
    latency_ewma += 0.05 * (elapsed - latency_ewma)  # a race between threads only blurs an average
    API_REQUESTS.labels(method, _resource(url_path), str(resp.status)).inc()
    if resp.status >= 400:
        exc = ApiException(status=resp.status, reason=resp.reason)
        exc.body = raw
        raise exc
    return resp.status, (json.loads(raw) if raw else {})


def _resource(url_path: str) -> str:
    """The resource (plus subresource) of an API path, for metric labels: .../jobs/x/status -> jobs/status."""
    parts = url_path.split("?")[0].strip("/").split("/")
    if "namespaces" in parts and parts.index("namespaces") + 2 < len(parts):
        parts = parts[parts.index("namespaces") + 2:]
    else:
        parts = parts[2:] if parts[0] == "api" else parts[3:]
    return parts[0] + (f"/{parts[2]}" if len(parts) > 2 else "") if parts else "unknown"


def apply(obj: dict[str, Any], field_manager: str) -> dict[str, Any]:
    """Server-side apply (force: we own these objects). Creating twice yields one object."""
    return apply_created(obj, field_manager)[0]


def apply_created(obj: dict[str, Any], field_manager: str) -> tuple[dict[str, Any], bool]:
    """`apply`, also saying whether this call created the object."""
    meta = obj["metadata"]
    url = path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
    code, body = call("PATCH", url, obj, {"fieldManager": field_manager, "force": "true"},
                      "application/apply-patch+yaml")
    return body, code == 201


def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return request("GET", path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_(api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    return list_at(api_version, kind, namespace, label_selector)[0]


def list_at(api_version: str, kind: str, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
    """Items and the list's resourceVersion (the point in time the list shows)."""
    body = request("GET", path(api_version, kind, namespace), query={"labelSelector": label_selector})
    return body.get("items", []), (body.get("metadata") or {}).get("resourceVersion", "")


def patch_status(api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any],
                 resource_version: str | None = None) -> dict[str, Any]:
    """JSON merge patch of /status (lists such as conditions are replaced whole). With `resource_version`, the
    write applies only to that version of the object, else 409 Conflict: a status computed from a stale view
    never overwrites a newer one."""
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    return request("PATCH", path(api_version, kind, namespace, name, "status"), body,
                   content_type="application/merge-patch+json")


def merge_patch(api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return request("PATCH", path(api_version, kind, namespace, name), body,
                   content_type="application/merge-patch+json")


def delete(api_version: str, kind: str, namespace: str, name: str, grace_seconds: int | None = None) -> None:
    body: dict[str, Any] = {"propagationPolicy": "Background"}
    if grace_seconds is not None:
        body["gracePeriodSeconds"] = grace_seconds
    try:
        request("DELETE", path(api_version, kind, namespace, name), body)
    except ApiException as exc:
        if exc.status != 404:
            raise

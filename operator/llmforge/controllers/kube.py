"""The few Kubernetes calls the reconcilers make: server-side apply under our field manager, get, delete,
list, and "does the cluster serve this kind". Synchronous (kubernetes' dynamic client); async handlers call
them through `asyncio.to_thread`. One client per process, from KUBECONFIG or the in-cluster account.

Kept small and in one place so the FineTuneJob controller's equivalent can replace it when merged.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

_LOCK = threading.Lock()
_CLIENT: Kube | None = None


class Kube:
    def __init__(self, api_client: client.ApiClient, field_manager: str = "llmforge"):
        self.api_client = api_client
        self.field_manager = field_manager
        # Our own discovery cache file: another process' stale cache for the same host must not leak in.
        cache = os.path.join(tempfile.mkdtemp(prefix="llmforge-discovery-"), "cache.json")
        self.dyn = DynamicClient(api_client, cache_file=cache)
        self._kinds: dict[tuple[str, str], tuple[bool, float]] = {}

    def _res(self, api_version: str, kind: str) -> Any:
        return self.dyn.resources.get(api_version=api_version, kind=kind)

    def has_kind(self, api_version: str, kind: str, ttl: float = 300.0) -> bool:
        """Whether the API server serves this kind (CRD installed); cached for `ttl` seconds."""
        key = (api_version, kind)
        hit = self._kinds.get(key)
        if hit and time.monotonic() - hit[1] < ttl:
            return hit[0]
        try:
            self._res(api_version, kind)
            found = True
        except ResourceNotFoundError:
            found = False
        self._kinds[key] = (found, time.monotonic())
        return found

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply; we own exactly the fields in `obj` (force: the operator is the authority)."""
        res = self._res(obj["apiVersion"], obj["kind"])
        out = self.dyn.server_side_apply(res, body=obj, namespace=obj["metadata"].get("namespace"),
                                         field_manager=self.field_manager, force_conflicts=True)
        return out.to_dict()

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._res(api_version, kind).get(name=name, namespace=namespace).to_dict()
        except (NotFoundError, ResourceNotFoundError):
            return None

    def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        try:
            items = self._res(api_version, kind).get(namespace=namespace, label_selector=label_selector)
        except ResourceNotFoundError:
            return []
        return list(items.to_dict().get("items", []))

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete if present (foreground for Deployments' pods is the GC's job); True if something went."""
        try:
            self._res(api_version, kind).delete(name=name, namespace=namespace,
                                                body={"propagationPolicy": "Background"})
            return True
        except (NotFoundError, ResourceNotFoundError):
            return False
        except ApiException as e:
            if e.status == 404:
                return False
            raise


def kube(field_manager: str = "llmforge") -> Kube:
    """The process-wide client (KUBECONFIG if set, else in-cluster)."""
    global _CLIENT
    with _LOCK:
        if _CLIENT is None:
            path = os.environ.get("KUBECONFIG")
            if path:
                api_client = config.new_client_from_config(config_file=path)
            else:
                config.load_incluster_config()
                api_client = client.ApiClient()
            _CLIENT = Kube(api_client, field_manager)
        return _CLIENT

"""MLflow tracking that never stops training: params, metrics per logging step, tags, the report artifact.

Everything goes through one ``MlflowClient`` against ``spec.tracking.mlflow.trackingUri``. Every call is guarded:
when the server is unreachable we log a warning, keep training, and record the outage (count, first error, what
was lost) for the training report. After a failure, calls are skipped for ``cooldown`` seconds so a dead server
does not add a timeout to every step. Metrics dropped during an outage are not replayed.

Runs are tagged ``llmforge.namespace``, ``llmforge.name`` and ``llmforge.uid`` from the FineTuneJob's metadata. A
resumed attempt (after preemption) continues the run tagged with the same uid, so one job is one MLflow run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

log = logging.getLogger("llmforge.train")

TAG_PREFIX = "llmforge."


class Tracker:
    """Guarded MLflow client for one training attempt. Without tracking config, every method is a no-op."""

    def __init__(self, tracking_uri: str | None, experiment: str = "llmforge", tags: dict[str, str] | None = None,
                 cooldown: float = 30.0):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment
        self.tags = {k: v for k, v in (tags or {}).items() if v}
        self.cooldown = cooldown
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed_run = False
        self.errors = 0
        self.first_error: str | None = None
        self.first_error_at: float | None = None
        self.lost: dict[str, int] = {}
        self._skip_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.tracking_uri is not None

    @property
    def active(self) -> bool:
        return self.run_id is not None

    # --- guarded call ----------------------------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.enabled or self.client is None and what != "start":
            return None
        if time.monotonic() < self._skip_until:
            self.lost[what] = self.lost.get(what, 0) + 1
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self.errors += 1
            self.lost[what] = self.lost.get(what, 0) + 1
            msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if self.first_error is None:
                self.first_error, self.first_error_at = msg, time.time()
            log.warning("mlflow: %s failed (%s); training continues, outage recorded in the report", what, msg)
            self._skip_until = time.monotonic() + self.cooldown
            return None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self, resume: bool, run_name: str | None = None) -> None:
        """Create (or, when resuming, find) the run. Fails soft."""
        if not self.enabled:
            return
        # Fail fast instead of mlflow's default ~2 min of retries per call.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._call("start", self._start, resume, run_name)

    def _start(self, resume: bool, run_name: str | None) -> None:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment_name)
        key = self.tags.get(f"{TAG_PREFIX}uid") and f"{TAG_PREFIX}uid" or f"{TAG_PREFIX}output_uri"
        if resume and self.tags.get(key):
            runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{key}` = '{self.tags[key]}'",
                                           order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                self.run_id = runs[0].info.run_id
                self.resumed_run = True
                self.client.update_run(self.run_id, status="RUNNING")
                return
        run = self.client.create_run(self.experiment_id, tags=dict(self.tags), run_name=run_name)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not yet on the run (MLflow params are immutable; a resumed run keeps the first values)."""
        if not self.active:
            return
        from mlflow.entities import Param

        def do():
            have = self.client.get_run(self.run_id).data.params if self.resumed_run else {}
            items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items()) if k not in have]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100])
        self._call("log_params", do)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())
                 if isinstance(v, int | float) and math.isfinite(float(v))]
        if items:
            self._call("log_metrics", self.client.log_batch, self.run_id, metrics=items)

    def set_tag(self, key: str, value: str) -> None:
        if self.active:
            self._call("set_tag", self.client.set_tag, self.run_id, key, value)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if self.active:
            self._call("log_artifact", self.client.log_artifact, self.run_id, local_path, artifact_path)

    def end(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (preempted: the next attempt sets it back to RUNNING)."""
        if self.active:
            self._call("end", self.client.set_terminated, self.run_id, status)

    # --- reporting -------------------------------------------------------------------------------------------
    def url(self) -> str | None:
        if not (self.active and self.experiment_id):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def status(self) -> dict[str, str] | None:
        """The contract's MlflowStatus fields, or None when no run exists."""
        if not self.active:
            return None
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "url": self.url()}

    def outage(self) -> dict[str, Any] | None:
        """What the report says about tracking trouble; None when all calls succeeded."""
        if not self.errors and not self.lost:
            return None
        return {"errors": self.errors, "first_error": self.first_error, "first_error_at": self.first_error_at,
                "calls_lost": dict(self.lost), "run_created": self.active}


def job_tags(metadata: dict[str, Any], output_uri: str, base_model: str,
             env: dict[str, str] | None = None) -> dict[str, str]:
    """Tags from the FineTuneJob's metadata (namespace/name/uid; else the operator's LLMFORGE_NAMESPACE,
    LLMFORGE_NAME, LLMFORGE_UID env) plus where the output goes."""
    env = os.environ if env is None else env

    def get(key: str) -> str:
        return metadata.get(key) or env.get(f"LLMFORGE_{key.upper()}") or ""

    return {
        f"{TAG_PREFIX}namespace": get("namespace"),
        f"{TAG_PREFIX}name": get("name"),
        f"{TAG_PREFIX}uid": get("uid"),
        f"{TAG_PREFIX}kind": "FineTuneJob",
        f"{TAG_PREFIX}output_uri": output_uri,
        f"{TAG_PREFIX}base_model": base_model,
    }


def flatten(prefix: str, value: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"lora.r": 16, ...} from nested dicts; lists become comma-joined strings."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list | tuple):
        out[prefix] = ",".join(str(v) for v in value)
    elif value is not None:
        out[prefix] = value
    return out

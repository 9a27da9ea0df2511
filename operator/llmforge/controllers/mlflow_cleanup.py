"""The one thing garbage collection cannot do for a deleted FineTuneJob: mark its open MLflow run KILLED.

Registered as kopf's only FineTuneJob delete handler, and only while a run is open (`mlflow_run_open`), so the
finalizer it implies never holds up a finished job's deletion.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

TERMINAL = ("Succeeded", "Failed")


def mlflow_run_open(status: Any, **_: Any) -> bool:
    return bool((status or {}).get("mlflow", {}).get("runId")) and (status or {}).get("phase") not in TERMINAL


async def mark_mlflow_killed(spec: Any, status: Any, logger: Any, **_: Any) -> None:
    """Best-effort: an MLflow run left RUNNING by a deleted job is marked KILLED. Never blocks deletion."""
    uri = ((spec.get("tracking") or {}).get("mlflow") or {}).get("trackingUri")
    run_id = (status.get("mlflow") or {}).get("runId")
    if not uri or not run_id:
        return
    req = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/runs/update", method="POST",
                                 data=json.dumps({"run_id": run_id, "status": "KILLED",
                                                  "end_time": int(time.time() * 1000)}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        await asyncio.to_thread(urllib.request.urlopen, req, None, 5)
    except OSError as exc:
        logger.warning(f"MLflow run {run_id} not marked KILLED: {exc}")

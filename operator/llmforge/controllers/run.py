"""Start the operator: kopf with our settings, a liveness endpoint and the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import logging
import random

import kopf
from prometheus_client import start_http_server

from ..settings import Settings

SETTINGS: Settings = Settings()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    # Our own field manager and finalizer names; no annotations-based diff storage noise on children.
    settings.persistence.finalizer = "llmforge.dev/finalizer"
    # Annotations, not status.kopf: our structural status schema would prune an undeclared field.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="llmforge.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="llmforge.dev", key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300


#: Watch handlers that only feed the cache and schedule a refresh: their per-event "succeeded" line would
#: be most of the log at scale and says nothing (failures still log).
_WATCH_HANDLERS = ("finetunejob-jobs", "finetunejob-pods", "finetunejobs-cache")


def _quiet_watch_handlers(record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not (record.levelno <= logging.INFO and msg.endswith("succeeded.")
                and any(f"'{h}'" in msg for h in _WATCH_HANDLERS))


def run_operator(settings: Settings) -> int:
    """Blocking: run until interrupted. Returns an exit code."""
    global SETTINGS
    SETTINGS = settings
    from . import handlers

    handlers.register()
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    # kopf's own format, with each object's namespace/name in the message.
    kopf.configure(log_format=kopf.LogFormat.FULL, log_prefix=True)
    logging.getLogger("kopf.objects").addFilter(_quiet_watch_handlers)
    namespaces = settings.namespaces
    # kopf peering is not a lock: same-priority peers all keep working. Distinct priorities make it one
    # active replica and hot standbys.
    peering = {"standalone": True}
    if settings.peering:
        priority = settings.peering_priority or random.SystemRandom().randint(1, 2**31 - 1)
        peering = {"standalone": False, "peering_name": settings.peering, "priority": priority}
    # kopf 1.45 iterates `namespaces` even when cluster-wide: pass an empty list, never None.
    asyncio.run(kopf.operator(
        clusterwide=not namespaces, namespaces=namespaces or [], liveness_endpoint=settings.liveness,
        **peering,
    ))
    return 0

"""Prometheus metrics of the operator itself: reconcile counts, durations and errors per kind."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("llmforge_reconcile_total", "Handler invocations", ["kind", "handler", "result"])
RECONCILE_SECONDS = Histogram("llmforge_reconcile_duration_seconds", "Handler duration", ["kind", "handler"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RECONCILE_ERRORS = Counter("llmforge_reconcile_errors_total", "Handler errors", ["kind", "handler", "error"])
CONFLICTS = Counter("llmforge_status_conflicts_total",
                    "Status writes refused because the object changed since it was read (409)", ["kind"])
WATCH_LAG = Histogram("llmforge_watch_lag_seconds",
                      "A new resource's creationTimestamp to the operator first seeing it (1 s resolution)",
                      ["kind"], buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300))


class PhaseCensus(Collector):
    """`llmforge_resources{kind,phase}`, counted from the phase each resource's watch event last showed.

    Level-based, as status is: after a restart the watches' listing counts every resource again, and a
    deleted one leaves. Counting transitions instead forgot every phase at a restart (the next transition
    then drove a gauge negative) and never counted deletions. A series seen once stays, at 0 when empty.
    """

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str, str], str] = {}
        self._labels: set[tuple[str, str]] = set()

    def observe(self, kind: str, namespace: str, name: str, body: Any, deleted: bool = False) -> None:
        key = (kind, namespace, name)
        if deleted:
            self._phases.pop(key, None)
            return
        phase = str(((body or {}).get("status") or {}).get("phase") or "New")
        self._phases[key] = phase
        self._labels.add((kind, phase))

    def collect(self) -> Any:
        family = GaugeMetricFamily("llmforge_resources", "Resources by kind and phase", labels=["kind", "phase"])
        counts = dict.fromkeys(self._labels, 0)
        for (kind, _, _), phase in list(self._phases.items()):
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), n in sorted(counts.items()):
            family.add_metric([kind, phase], n)
        yield family


CENSUS = PhaseCensus()
REGISTRY.register(CENSUS)


def instrumented(kind: str, handler: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Count, time and classify a handler's outcome; TemporaryError is a retry, not an error."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def inner(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = "ok"
            try:
                return await fn(*args, **kwargs)
            except kopf.TemporaryError:
                result = "retry"
                raise
            except kopf.PermanentError as exc:
                result = "error"
                RECONCILE_ERRORS.labels(kind, handler, type(exc).__name__).inc()
                raise
            except Exception as exc:
                result = "error"
                RECONCILE_ERRORS.labels(kind, handler, type(exc).__name__).inc()
                raise
            finally:
                RECONCILES.labels(kind, handler, result).inc()
                RECONCILE_SECONDS.labels(kind, handler).observe(time.perf_counter() - start)

        return inner

    return wrap

"""Live progress: the Prometheus gauges of ``contract.PROGRESS_METRICS`` and one human line per logging step.

The operator scrapes the gauges from the pod (port ``contract.METRICS_PORT``, 0 disables) to fill
``status.progress``; people read the log lines (``kubectl logs``). Both come from the same numbers.
Gauges live in a private registry, so nothing else in the process leaks onto the endpoint.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from llmforge.api import contract

log = logging.getLogger("llmforge.train")


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m04s``, ``12s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def eta_seconds(step: int, total: int, elapsed: float, start_step: int = 0) -> float | None:
    """Seconds left at the rate of this attempt (steps done since ``start_step`` in ``elapsed`` seconds)."""
    done = step - start_step
    if done <= 0 or total <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - step) * elapsed / done)


def format_line(step: int, total: int, values: dict[str, Any], eta: float | None) -> str:
    """``step 12/40 (30%) loss 2.3140 lr 1.80e-04 grad_norm 0.520 tokens/s 1234 epoch 0.60 eta 1m23s``."""
    pct = 100.0 * step / total if total else 0.0
    parts = [f"step {step}/{total} ({pct:.0f}%)"]
    fmt = {"loss": "loss {:.4f}", "eval_loss": "eval_loss {:.4f}", "eval_perplexity": "eval_ppl {:.3f}",
           "learning_rate": "lr {:.2e}", "grad_norm": "grad_norm {:.3f}", "tokens_per_second": "tokens/s {:.0f}",
           "epoch": "epoch {:.2f}", "gpu_memory_gib": "gpu_mem {:.2f}GiB"}
    for key, pattern in fmt.items():
        v = values.get(key)
        if isinstance(v, int | float):
            parts.append(pattern.format(v))
    parts.append(f"eta {format_duration(eta)}")
    return " ".join(parts)


class ProgressExporter:
    """Owns the gauges; ``start(port)`` serves them over HTTP (no-op when port is 0)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry()
        docs = {
            "step": "Optimizer steps done.", "total_steps": "Planned optimizer steps.",
            "epoch": "Fractional epoch.", "loss": "Latest training loss.",
            "tokens_per_second": "Recent training throughput (non-padding tokens/s).",
            "learning_rate": "Current learning rate.", "checkpoint_step": "Step of the latest complete checkpoint.",
        }
        self.gauges = {key: Gauge(name, docs[key], registry=self.registry)
                       for key, name in contract.PROGRESS_METRICS.items()}
        self.server = None
        self.port = 0

    def start(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve on ``port`` (0: don't). Returns the port, or 0. A busy port is a warning, not a failure."""
        if not port:
            return 0
        from prometheus_client import start_http_server

        try:
            self.server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.warning("progress metrics: cannot listen on %s:%s (%s); continuing without them", addr, port, exc)
            return 0
        self.port = self.server.server_port
        return self.port

    def set(self, **values: float | None) -> None:
        for key, value in values.items():
            if value is not None and key in self.gauges and isinstance(value, int | float):
                self.gauges[key].set(value)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

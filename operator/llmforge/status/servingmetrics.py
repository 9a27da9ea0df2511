"""Read a serving pod's numbers from its Prometheus text (vLLM's /metrics plus our usage middleware) and
its loaded models from /v1/models. Pure parsing and arithmetic; the controller does the HTTP.

Requests and errors come from the usage middleware's `llmforge_requests_total` /
`llmforge_request_errors_total{code="5xx"}` when present; otherwise from FastAPI's `http_requests_total`
(status 5xx over the inference handlers); otherwise from `vllm:request_success_total` (no errors known).
p95 comes from the `vllm:e2e_request_latency_seconds` histogram (summed over pods, interpolated inside the
bucket as Prometheus' histogram_quantile does), falling back to the middleware's own histogram.

The pods' counters are cumulative since each pod started, so the canary analysis judges a window instead:
`snapshot` records each pod's counters when a promotion step begins (the controller keeps that in status,
so an operator restart continues the same window), and `window` subtracts it from the counters now. An
early burst of errors then ages out at the next step, and a fresh breach is not diluted by old traffic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

INFERENCE_HANDLERS = ("/v1/completions", "/v1/chat/completions")


@dataclass
class PodMetrics:
    """One pod's counters (cumulative since it started)."""

    requests: float = 0.0
    errors: float = 0.0
    generation_tokens: float = 0.0
    prompt_tokens: float = 0.0
    waiting: float = 0.0
    running: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)
    """le (seconds) -> cumulative count."""
    source: str = "none"
    """Which series the request counts came from."""
    pod: str = ""
    """The pod's name (the key of its window baseline)."""


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def _sum(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str) -> float | None:
    rows = samples.get(name)
    if rows is None:
        return None
    return sum(v for labels, v in rows if all(labels.get(k) == val for k, val in match.items()))


def _buckets(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for labels, v in samples.get(f"{name}_bucket", []):
        out[float(labels["le"])] += v
    return dict(out)


def parse_metrics(text: str) -> PodMetrics:
    s = _samples(text)
    m = PodMetrics()
    if "llmforge_requests_total" in s:
        m.requests = _sum(s, "llmforge_requests_total") or 0.0
        m.errors = _sum(s, "llmforge_request_errors_total", code="5xx") or 0.0
        m.source = "llmforge"
    elif any(lab.get("handler") in INFERENCE_HANDLERS for lab, _ in s.get("http_requests_total", [])):
        rows = [(lab, v) for lab, v in s["http_requests_total"] if lab.get("handler") in INFERENCE_HANDLERS]
        m.requests = sum(v for _, v in rows)
        m.errors = sum(v for lab, v in rows if lab.get("status", "").startswith("5"))
        m.source = "http"
    elif "vllm:request_success_total" in s:
        m.requests = _sum(s, "vllm:request_success_total") or 0.0
        m.source = "vllm"
    m.generation_tokens = _sum(s, "vllm:generation_tokens_total") or 0.0
    m.prompt_tokens = _sum(s, "vllm:prompt_tokens_total") or 0.0
    m.waiting = _sum(s, "vllm:num_requests_waiting") or 0.0
    m.running = _sum(s, "vllm:num_requests_running") or 0.0
    m.latency_buckets = (_buckets(s, "vllm:e2e_request_latency_seconds")
                         or _buckets(s, "llmforge_request_duration_seconds"))
    return m


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus histogram_quantile over cumulative buckets (le -> count); None without observations.
    In the +Inf bucket the answer is the highest finite bound, as Prometheus does."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                finite = [b for b in bounds if not math.isinf(b)]
                return finite[-1] if finite else None
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return bounds[-1]


@dataclass
class VariantMetrics:
    """A variant's pods, summed."""

    pods: int = 0
    requests: float = 0.0
    errors: float = 0.0
    generation_tokens: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    @property
    def p95_ms(self) -> float | None:
        value = quantile(0.95, self.latency_buckets)
        return None if value is None else value * 1000.0


def aggregate(pods: list[PodMetrics]) -> VariantMetrics:
    out = VariantMetrics(pods=len(pods))
    buckets: dict[float, float] = defaultdict(float)
    for p in pods:
        out.requests += p.requests
        out.errors += p.errors
        out.generation_tokens += p.generation_tokens
        for le, v in p.latency_buckets.items():
            buckets[le] += v
    out.latency_buckets = dict(buckets)
    return out


def loaded_adapters(models: dict[str, Any]) -> list[str]:
    """Adapter names an OpenAI /v1/models answer lists: vLLM lists each LoRA module with `parent` set to
    the base model's served name; the base itself has no parent."""
    return sorted({e["id"] for e in models.get("data") or []
                   if isinstance(e, dict) and e.get("id") and e.get("parent")})


def _le_key(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(le)


def snapshot(pods: list[PodMetrics]) -> list[dict[str, Any]]:
    """Each pod's counters as the window baseline kept in status (JSON: bucket bounds become strings)."""
    return [{"pod": p.pod, "requests": p.requests, "errors": p.errors,
             "latencyBuckets": {_le_key(le): v for le, v in sorted(p.latency_buckets.items())}}
            for p in sorted(pods, key=lambda p: p.pod) if p.pod]


def window(pods: list[PodMetrics], baseline: list[dict[str, Any]]) -> VariantMetrics:
    """The pods' counters since `baseline` (a `snapshot`), summed, with latency buckets as deltas too.

    As Prometheus' increase() does, a counter lower than its baseline means the pod restarted: everything it
    counts now is new. A pod without a baseline entry (it became ready after the window began) counts whole.
    Only requests, errors and latency are windowed (what the analysis judges); the baseline holds nothing else."""
    base = {b.get("pod"): b for b in baseline if isinstance(b, dict)}
    deltas = []
    for p in pods:
        b = base.get(p.pod)
        if b is None:
            deltas.append(p)
            continue
        b_buckets = {float(le): float(v) for le, v in (b.get("latencyBuckets") or {}).items()}
        reset = (p.requests < float(b.get("requests") or 0) or p.errors < float(b.get("errors") or 0)
                 or any(p.latency_buckets.get(le, 0.0) < v for le, v in b_buckets.items()))
        if reset:
            deltas.append(p)
            continue
        deltas.append(PodMetrics(
            requests=p.requests - float(b.get("requests") or 0), errors=p.errors - float(b.get("errors") or 0),
            latency_buckets={le: v - b_buckets.get(le, 0.0) for le, v in p.latency_buckets.items()},
            source=p.source, pod=p.pod))
    return aggregate(deltas)

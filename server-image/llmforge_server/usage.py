"""Per-variant usage and cost metering inside vLLM's API server: a pure ASGI middleware.

Loaded with ``--middleware llmforge_server.usage.UsageMiddleware`` (args.py adds it), so it runs in
vLLM's own process with no extra network hop. For each POST to /v1/completions or
/v1/chat/completions it records, labelled by variant and a bounded model name:

- requests, errors (4xx/5xx), client disconnects, a latency histogram;
- prompt and completion tokens, from the response's ``usage`` (JSON body, or the final SSE chunk when
  the client asked for ``stream_options.include_usage``), else from vLLM's per-request state, which vLLM
  fills for streams too;
- cost in USD under the fair-share model (cost.py), and busy seconds;

and writes one JSON line per request to stdout (logger ``llmforge.usage``). The series appear on
vLLM's own /metrics (prometheus_client's default registry). Settings come from the environment
(metering.Settings). Metering never fails a request: a bug here is logged and the response passes.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from llmforge.api.serving import USAGE_METRICS

from .cost import FairShareMeter
from .metering import (
    METERED_PATHS,
    UNREADABLE,
    Settings,
    SseTail,
    parse_json_body,
    requested_model,
    state_request_id,
    state_usage,
    usage_counts,
)

log = logging.getLogger("llmforge.usage")
#: Largest request/response JSON body kept for reading ``model`` and ``usage`` (streams keep one event).
MAX_BODY_BYTES = 8 * 1024 * 1024
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


def _name(key: str) -> str:
    return USAGE_METRICS[key].removesuffix("_total")


class Metrics:
    """The Prometheus series, one set per registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        labels = ("variant", "model")
        self.requests = Counter(_name("requests"), "Metered inference requests.", labels, registry=registry)
        self.prompt_tokens = Counter(_name("prompt_tokens"), "Prompt tokens, from response usage.",
                                     labels, registry=registry)
        self.completion_tokens = Counter(_name("completion_tokens"), "Completion tokens, from response usage.",
                                         labels, registry=registry)
        self.errors = Counter(_name("errors"), "Requests answered with a 4xx or 5xx status.",
                              (*labels, "code"), registry=registry)
        self.disconnects = Counter(_name("disconnects"), "Requests whose client went away before the end "
                                   "of the response (their tokens are not counted).", labels, registry=registry)
        self.cost = Counter(_name("cost_usd"), "Fair-share cost of requests, USD.", labels, registry=registry)
        self.latency = Histogram(_name("latency"), "End-to-end request time, seconds.", labels,
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(_name("in_flight"), "Metered requests in flight.", ("variant",),
                               multiprocess_mode="livesum", registry=registry)
        self.busy = Counter(_name("busy_seconds"), "Seconds with at least one metered request in flight.",
                            ("variant",), registry=registry)


@dataclass
class UsageState:
    """What every middleware instance in a process shares: settings, series and one cost meter, so
    in-flight counts are global. vLLM's instance uses ``process_state()``; tests make their own."""

    settings: Settings
    metrics: Metrics
    meter: FairShareMeter
    busy_reported: float = 0.0
    children: dict = field(default_factory=dict)
    """model label -> that model's labelled series (labels() lookups are cached per model)."""

    def __post_init__(self) -> None:
        self.in_flight = self.metrics.in_flight.labels(self.settings.variant)
        self.busy = self.metrics.busy.labels(self.settings.variant)

    @classmethod
    def create(cls, settings: Settings, registry: CollectorRegistry = REGISTRY) -> UsageState:
        return cls(settings, Metrics(registry), FairShareMeter(settings.usd_per_hour, time.monotonic()))


_PROCESS_STATE: UsageState | None = None


def process_state() -> UsageState:
    """The process-wide state, from the environment, registered on prometheus_client's default registry."""
    global _PROCESS_STATE
    if _PROCESS_STATE is None:
        _PROCESS_STATE = UsageState.create(Settings.from_env())
    return _PROCESS_STATE


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of the record (it may be replaced after start)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def _usage_logger() -> logging.Logger:
    if not log.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


class _Exchange:
    """What one request and its response showed the middleware."""

    __slots__ = ("body", "body_size", "status", "stream", "resp", "resp_size", "sse", "done",
                 "disconnected")

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.body_size = 0
        self.status = 0
        self.stream = False
        self.resp: list[bytes] = []
        self.resp_size = 0
        self.sse: SseTail | None = None
        self.done = False
        self.disconnected = False


class UsageMiddleware:
    """Pure ASGI middleware; see the module docstring."""

    def __init__(self, app, state: UsageState | None = None):
        self.app = app
        self.shared = state or process_state()
        _usage_logger()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in METERED_PATHS:
            await self.app(scope, receive, send)
            return
        ex = _Exchange()
        # The handler's request.state is scope["state"]; make sure it exists before the app runs so the
        # dict vLLM writes request_metadata into is the one we read afterwards.
        state = scope.setdefault("state", {})

        async def receive_wrapper():
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                chunk = message.get("body", b"")
                if chunk and ex.body_size + len(chunk) <= MAX_BODY_BYTES:
                    ex.body.append(chunk)
                ex.body_size += len(chunk)
            elif kind == "http.disconnect" and not ex.done:
                ex.disconnected = True
            return message

        async def send_wrapper(message):
            kind = message["type"]
            if kind == "http.response.start":
                ex.status = message["status"]
                for key, value in message.get("headers", ()):
                    if key.lower() == b"content-type":
                        ex.stream = value.startswith(b"text/event-stream")
                        if ex.stream:
                            ex.sse = SseTail()
            elif kind == "http.response.body":
                chunk = message.get("body", b"")
                if ex.sse is not None:
                    ex.sse.feed(chunk)
                elif chunk:
                    ex.resp_size += len(chunk)
                    if ex.resp_size <= MAX_BODY_BYTES:
                        ex.resp.append(chunk)
                if not message.get("more_body", False):
                    ex.done = True
            await send(message)

        shared = self.shared
        path = scope["path"]
        started = time.monotonic()
        key = object()
        shared.meter.start(key, started)
        shared.in_flight.inc()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException:
            if not ex.status:
                ex.status = 500
            raise
        finally:
            try:
                self._record(ex, path, state, started, key)
            except Exception:  # metering must never break serving
                log.exception("llmforge usage metering failed")

    def _record(self, ex: _Exchange, path: str, state: dict, started: float, key: object) -> None:
        shared = self.shared
        now = time.monotonic()
        cost = shared.meter.finish(key, now)
        settings, m = shared.settings, shared.metrics
        variant = settings.variant
        shared.in_flight.dec()
        busy = shared.meter.busy_seconds
        if busy > shared.busy_reported:
            shared.busy.inc(busy - shared.busy_reported)
            shared.busy_reported = busy

        readable = ex.body and ex.body_size <= MAX_BODY_BYTES
        model = settings.model_label(requested_model(b"".join(ex.body)) if readable else UNREADABLE)
        children = shared.children.get(model)
        if children is None:
            children = shared.children[model] = tuple(
                c.labels(variant, model) for c in
                (m.requests, m.prompt_tokens, m.completion_tokens, m.disconnects, m.cost, m.latency))
        requests, prompt_c, completion_c, disconnects, cost_c, latency = children

        response = None
        if ex.sse is not None:
            response = ex.sse.last_json()
            source = "stream"
        elif ex.resp and ex.resp_size <= MAX_BODY_BYTES:
            response = parse_json_body(b"".join(ex.resp))
            source = "body"
        counts = usage_counts(response.get("usage")) if response else None
        if counts is None:
            counts = state_usage(state)
            source = "state"
        if counts is None:
            counts, source = (0, 0), "none"
        prompt, completion = counts
        disconnected = ex.disconnected and not ex.done
        status = ex.status or 500

        requests.inc()
        prompt_c.inc(prompt)
        completion_c.inc(completion)
        cost_c.inc(cost)
        latency.observe(now - started)
        if status >= 400:
            m.errors.labels(variant, model, f"{status // 100}xx").inc()
        if disconnected:
            disconnects.inc()

        rid = (response.get("id") if response else None) or state_request_id(state) or uuid.uuid4().hex
        log.info(json.dumps({
            "event": "usage", "id": rid, "variant": variant, "model": model,
            "path": path, "status": status, "stream": ex.stream,
            "prompt_tokens": prompt, "completion_tokens": completion,
            "latency_s": round(now - started, 6), "cost_usd": cost, "usage_source": source,
            "disconnected": disconnected,
        }, separators=(",", ":")))

"""Pure pieces of usage metering: settings from the environment, bounded model labels, and reading
token usage from a response (JSON body, the final SSE usage chunk, or vLLM's per-request state).

Kept apart from the ASGI middleware (usage.py) so each piece is unit-tested without a server.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmforge.api.serving import ENV_SERVED_MODELS, ENV_USD_PER_HOUR, ENV_VARIANT, OTHER_MODEL

#: Endpoints whose responses carry OpenAI ``usage``. Everything else passes through unmetered.
METERED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


@dataclass(frozen=True)
class Settings:
    """Middleware settings. vLLM's --middleware takes a class with no options, so they come from env."""

    variant: str = "default"
    usd_per_hour: float = 0.0
    served_models: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        rate = env.get(ENV_USD_PER_HOUR, "").strip() or "0"
        try:
            usd = float(rate)
        except ValueError:
            raise ValueError(f"{ENV_USD_PER_HOUR}={rate!r} is not a number (USD per hour)") from None
        if usd < 0 or usd != usd or usd == float("inf"):
            raise ValueError(f"{ENV_USD_PER_HOUR}={rate!r} must be a finite number >= 0")
        models = tuple(m.strip() for m in env.get(ENV_SERVED_MODELS, "").split(",") if m.strip())
        return cls(variant=env.get(ENV_VARIANT, "").strip() or "default", usd_per_hour=usd,
                   served_models=models)

    def model_label(self, requested: object) -> str:
        """The ``model`` label for a requested model name: a served name, or ``other``, so a client
        cannot create label values. A missing name means vLLM's default, the first served model."""
        if requested is None and self.served_models:
            return self.served_models[0]
        if isinstance(requested, str) and requested in self.served_models:
            return requested
        return OTHER_MODEL


#: requested_model's answer for a body it cannot read (not JSON, not an object, or too large to keep).
UNREADABLE = object()


def requested_model(body: bytes) -> object:
    """The ``model`` field of a JSON request body: None when absent (vLLM's default model), UNREADABLE when
    the body is not a JSON object (labelled ``other``)."""
    try:
        data = json.loads(body)
    except ValueError:
        return UNREADABLE
    return data.get("model") if isinstance(data, dict) else UNREADABLE


def usage_counts(usage: object) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from an OpenAI ``usage`` dict or vLLM ``UsageInfo``."""
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
    prompt, completion = get("prompt_tokens"), get("completion_tokens")
    if not isinstance(prompt, int):
        return None
    return prompt, completion if isinstance(completion, int) else 0


def parse_json_body(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class SseTail:
    """The last ``data:`` event of a server-sent-event stream other than ``[DONE]``.

    With ``stream_options.include_usage`` vLLM's last event before ``[DONE]`` is the usage chunk
    (``choices: []``, ``usage: {...}``). ``feed`` only keeps the most recent chunks (at least ``keep_bytes``
    of them), so it costs an append per chunk and memory stays bounded; events are parsed once, at the end,
    across chunk boundaries.
    """

    __slots__ = ("_chunks", "_size", "_keep")

    def __init__(self, keep_bytes: int = 64 * 1024) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._keep = keep_bytes

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        chunks = self._chunks
        chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(chunks[0]) >= self._keep:
            self._size -= len(chunks.popleft())

    def last_json(self) -> dict[str, Any] | None:
        events = b"".join(self._chunks).replace(b"\r\n", b"\n").split(b"\n\n")
        for event in reversed(events):
            payload = _event_data(event)
            if payload is not None and payload != b"[DONE]":
                return parse_json_body(payload)
        return None


def _event_data(event: bytes) -> bytes | None:
    lines = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def state_usage(state: object) -> tuple[int, int] | None:
    """Usage from vLLM's per-request state: ``request.state.request_metadata.final_usage_info``.

    vLLM 0.32's completion and chat handlers fill it for plain and streamed responses alike (once the
    stream has finished); an internal detail, pinned by tests/server/test_vllm_server.py.
    """
    metadata = state.get("request_metadata") if isinstance(state, dict) else None
    return usage_counts(getattr(metadata, "final_usage_info", None))


def state_request_id(state: object) -> str | None:
    metadata = state.get("request_metadata") if isinstance(state, dict) else None
    rid = getattr(metadata, "request_id", None)
    return rid if isinstance(rid, str) else None

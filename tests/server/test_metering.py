"""Pure metering pieces: settings from env, bounded model labels, usage from bodies and SSE streams."""

from __future__ import annotations

import json

import pytest

from llmforge.api.serving import OTHER_MODEL
from llmforge_server.metering import (
    UNREADABLE,
    Settings,
    SseTail,
    requested_model,
    state_request_id,
    state_usage,
    usage_counts,
)

ENV = {"LLMFORGE_VARIANT": "canary", "LLMFORGE_GPU_USD_PER_HOUR": "0.854",
       "LLMFORGE_SERVED_MODELS": "base, support ,sales"}


def test_settings_from_env():
    s = Settings.from_env(ENV)
    assert s == Settings(variant="canary", usd_per_hour=0.854, served_models=("base", "support", "sales"))


def test_settings_defaults():
    assert Settings.from_env({}) == Settings(variant="default", usd_per_hour=0.0, served_models=())


@pytest.mark.parametrize("bad", ["abc", "-1", "nan", "inf"])
def test_settings_reject_bad_rates(bad):
    with pytest.raises(ValueError, match="LLMFORGE_GPU_USD_PER_HOUR"):
        Settings.from_env({"LLMFORGE_GPU_USD_PER_HOUR": bad})


def test_model_label_is_bounded():
    s = Settings.from_env(ENV)
    assert s.model_label("support") == "support"
    assert s.model_label("base") == "base"
    assert s.model_label(None) == "base"  # vLLM's default model
    for junk in ["nope", "SUPPORT", "", 42, ["base"], "base\n"]:
        assert s.model_label(junk) == OTHER_MODEL
    assert Settings().model_label("anything") == OTHER_MODEL


def test_requested_model():
    assert requested_model(b'{"model": "support", "prompt": "x"}') == "support"
    assert requested_model(b'{"prompt": "the \\"model\\": \\"x\\""}') is None
    assert requested_model(b'{"prompt": "x"}') is None  # absent: vLLM's default model
    s = Settings.from_env(ENV)
    for unreadable in (b"not json", b"[1]", b'{"model": "base"'):
        assert requested_model(unreadable) is UNREADABLE
        assert s.model_label(requested_model(unreadable)) == OTHER_MODEL


def test_usage_counts_from_dict_and_object():
    class UsageInfo:
        prompt_tokens, completion_tokens = 7, 3

    assert usage_counts({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}) == (7, 3)
    assert usage_counts({"prompt_tokens": 7}) == (7, 0)  # embeddings-style usage
    assert usage_counts(UsageInfo()) == (7, 3)
    assert usage_counts(None) is None
    assert usage_counts({"completion_tokens": 3}) is None


def _sse(*events: dict | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n"
                    for e in events)


def test_sse_tail_finds_the_usage_chunk_across_any_chunking():
    usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    stream = _sse({"id": "c1", "choices": [{"text": "a"}]}, {"id": "c1", "choices": [{"text": "b"}]},
                  {"id": "c1", "choices": [], "usage": usage}, "[DONE]")
    for size in (1, 2, 3, 7, 50, len(stream)):
        tail = SseTail()
        for i in range(0, len(stream), size):
            tail.feed(stream[i:i + size])
        last = tail.last_json()
        assert last["usage"] == usage and last["id"] == "c1", size


def test_sse_tail_without_usage_keeps_the_last_event():
    tail = SseTail()
    tail.feed(_sse({"id": "c2", "choices": [{"text": "a", "finish_reason": "length"}]}, "[DONE]"))
    assert tail.last_json() == {"id": "c2", "choices": [{"text": "a", "finish_reason": "length"}]}
    assert usage_counts(tail.last_json().get("usage")) is None


def test_sse_tail_memory_is_bounded_and_a_cut_event_is_not_misread():
    tail = SseTail(keep_bytes=100)
    for i in range(1000):
        tail.feed(b'data: {"i": %d, "pad": "%s"}\n\n' % (i, b"x" * 30))
    assert sum(map(len, tail._chunks)) < 100 + 60
    assert tail.last_json()["i"] == 999
    cut = SseTail(keep_bytes=8)
    for part in (b'data: {"usage": {"prompt_tokens": 1, "comp', b'letion_tokens": 2}}', b"\n\n"):
        cut.feed(part)
    assert cut.last_json() is None  # the start of the event was dropped: no usage rather than a wrong one


def test_sse_tail_crlf_and_empty():
    tail = SseTail()
    assert tail.last_json() is None
    tail.feed(b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}\r\n\r\ndata: [DONE]\r\n\r\n')
    assert usage_counts(tail.last_json()["usage"]) == (1, 2)


def test_state_readers():
    class Usage:
        prompt_tokens, completion_tokens = 4, 9

    class Metadata:
        request_id, final_usage_info = "cmpl-1", Usage()

    assert state_usage({"request_metadata": Metadata()}) == (4, 9)
    assert state_request_id({"request_metadata": Metadata()}) == "cmpl-1"
    assert state_usage({}) is None and state_request_id({}) is None

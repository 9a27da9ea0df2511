"""UsageMiddleware edge cases that real vLLM does not produce on demand: an app that raises, a body too large
to read, a request body in pieces, paths we do not meter. Driven with plain ASGI messages on a private
registry; the behaviour against real vLLM is in test_vllm_server.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from llmforge_server import usage
from llmforge_server.metering import Settings
from llmforge_server.usage import UsageMiddleware, UsageState

SETTINGS = Settings(variant="canary", usd_per_hour=3600.0, served_models=("base", "lora"))


def _value(reg: CollectorRegistry, name: str, **labels) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def call(app, path: str, body_parts: list[bytes], method: str = "POST", disconnect_early: bool = False):
    """Run one HTTP exchange through ``app``; returns (messages sent, exception raised or None)."""
    incoming = [{"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1}
                for i, part in enumerate(body_parts)]
    sent = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        if disconnect_early:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [], "asgi": {"spec_version": "2.3"}}
    try:
        asyncio.run(app(scope, receive, send))
    except Exception as e:  # noqa: BLE001 - returned for the test to inspect
        return sent, e
    return sent, None


def json_app(status: int, payload: dict):
    async def app(scope, receive, send):
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})
    return app


@pytest.fixture
def reg():
    return CollectorRegistry()


def test_body_in_pieces_and_usage_from_the_json_body(reg, capsys):
    mw = UsageMiddleware(json_app(200, {"id": "cmpl-1", "usage": {"prompt_tokens": 5, "completion_tokens": 7}}),
                         UsageState.create(SETTINGS, reg))
    body = json.dumps({"model": "lora", "prompt": "x" * 100}).encode()
    sent, err = call(mw, "/v1/completions", [body[:10], body[10:50], body[50:]])
    assert err is None and sent[0]["status"] == 200
    labels = {"variant": "canary", "model": "lora"}
    assert _value(reg, "llmforge_requests_total", **labels) == 1
    assert _value(reg, "llmforge_prompt_tokens_total", **labels) == 5
    assert _value(reg, "llmforge_completion_tokens_total", **labels) == 7
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["id"], line["model"], line["usage_source"], line["status"]) == ("cmpl-1", "lora", "body", 200)


def test_app_exception_counts_a_5xx_and_frees_the_slot(reg, capsys):
    async def broken(scope, receive, send):
        await receive()
        raise RuntimeError("boom")

    mw = UsageMiddleware(broken, UsageState.create(SETTINGS, reg))
    _, err = call(mw, "/v1/chat/completions", [b'{"model": "base"}'])
    assert isinstance(err, RuntimeError)
    assert _value(reg, "llmforge_request_errors_total", variant="canary", model="base", code="5xx") == 1
    assert _value(reg, "llmforge_requests_in_flight", variant="canary") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == 500


def test_too_large_body_is_labelled_other(reg, monkeypatch):
    monkeypatch.setattr(usage, "MAX_BODY_BYTES", 64)
    mw = UsageMiddleware(json_app(200, {"usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
                         UsageState.create(SETTINGS, reg))
    call(mw, "/v1/completions", [json.dumps({"model": "base", "prompt": "y" * 200}).encode()])
    assert _value(reg, "llmforge_requests_total", variant="canary", model="other") == 1
    assert _value(reg, "llmforge_requests_total", variant="canary", model="base") == 0


def test_client_error_is_4xx_and_disconnect_before_the_end_is_counted(reg):
    mw = UsageMiddleware(json_app(400, {"error": {"message": "bad"}}), UsageState.create(SETTINGS, reg))
    call(mw, "/v1/completions", [b'{"model": "base"}'])
    assert _value(reg, "llmforge_request_errors_total", variant="canary", model="base", code="4xx") == 1

    async def hangs_up(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"id": "c"}\n\n', "more_body": True})
        assert (await receive())["type"] == "http.disconnect"  # the client went away; the app stops

    mw = UsageMiddleware(hangs_up, UsageState.create(SETTINGS, reg2 := CollectorRegistry()))
    call(mw, "/v1/completions", [b'{"model": "base"}'], disconnect_early=True)
    assert _value(reg2, "llmforge_client_disconnects_total", variant="canary", model="base") == 1
    assert _value(reg2, "llmforge_prompt_tokens_total", variant="canary", model="base") == 0


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/tokenize"),
                                              ("GET", "/v1/completions")])
def test_other_requests_pass_through_unmetered(reg, method, path):
    mw = UsageMiddleware(json_app(200, {"ok": True}), UsageState.create(SETTINGS, reg))
    sent, err = call(mw, path, [b""], method=method)
    assert err is None and sent[0]["status"] == 200
    assert all(s.name != "llmforge_requests_total" or s.value == 0
               for m in reg.collect() for s in m.samples)
    assert _value(reg, "llmforge_requests_total", variant="canary", model="base") == 0

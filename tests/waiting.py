"""Polling for tests that wait on a real cluster or node: one helper, failing with the last value seen."""

from __future__ import annotations

import time

import pytest


def wait_for(fn, timeout=60, interval=0.5, what="condition", detail=None):
    """Poll `fn` until it returns something truthy; fail with the last value seen (and `detail()`, such as
    logs, when given)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    extra = f"\n{detail()}" if detail else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}{extra}")

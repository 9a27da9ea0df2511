"""Operator-wide background loops (status polling), started from inside a kopf object handler.

kopf.event() posts through context variables that kopf sets while it processes an object. A task created
in a start-up handler does not inherit them, so every event it tried to post would raise LookupError and
be lost; a task created from an object handler does inherit them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class Loop:
    """One long-running task, (re)started on demand."""

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._factory = factory
        self._task: asyncio.Task | None = None

    def ensure(self) -> None:
        """Start the loop unless it is running; call from within a kopf handler."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._factory())

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

"""A concurrency limit that can change while it is held: how many refreshes may run depends on the load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType


class Gate:
    """`async with gate:` admits at most `limit()` holders; the limit is re-read as holders leave."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._held = 0
        self._cond: asyncio.Condition | None = None  # made in the running loop, on first use

    @property
    def held(self) -> int:
        return self._held

    async def __aenter__(self) -> None:
        self._cond = self._cond or asyncio.Condition()
        async with self._cond:
            await self._cond.wait_for(lambda: self._held < self._limit())
            self._held += 1

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._cond is not None
        async with self._cond:
            self._held -= 1
            # Wake as many as may now enter (more than one when the limit has risen meanwhile).
            self._cond.notify(max(1, self._limit() - self._held))

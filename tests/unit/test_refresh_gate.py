"""The FineTuneJob refresh gate (controllers/gate.py): a concurrency limit read anew as holders leave."""

from __future__ import annotations

import asyncio

from llmforge.controllers.gate import Gate


def test_gate_holds_to_the_limit_and_follows_it_when_it_changes():
    limit = [2]
    gate = Gate(lambda: limit[0])
    held_on_entry: list[int] = []

    async def main() -> None:
        first, rest = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with gate:
                held_on_entry.append(gate.held)
                await (first if len(held_on_entry) <= 2 else rest).wait()

        tasks = [asyncio.create_task(hold()) for _ in range(6)]
        await asyncio.sleep(0.05)
        assert gate.held == 2  # four wait
        limit[0] = 5
        first.set()  # the first two leave; the raised limit lets all four others in together
        await asyncio.sleep(0.05)
        assert gate.held == 4
        rest.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert gate.held == 0

    asyncio.run(main())
    assert held_on_entry[:2] == [1, 2] and max(held_on_entry) == 4

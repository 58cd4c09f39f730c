"""The event loop keeps turning while a worker's answer is due (conch_python.process._spin_until)."""

from __future__ import annotations

import asyncio

from conch_python.process import _spin_until


async def test_other_work_runs_while_spinning_and_the_spin_ends_with_the_answer() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[int] = loop.create_future()
    ran: list[str] = []
    loop.call_soon(ran.append, "other work")
    loop.call_later(0.01, answer.set_result, 7)
    await _spin_until(answer, 30.0)
    assert answer.done() and answer.result() == 7
    assert ran == ["other work"]


async def test_the_spin_gives_up_after_its_time() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await _spin_until(never, 0.001)
    assert not never.done()
    never.cancel()

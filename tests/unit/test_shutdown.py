"""streams.shutdown.SendGate: the stop waits for timer bodies in progress, refuses new ones, and
does not wait forever."""

from __future__ import annotations

import asyncio

from streams.shutdown import SendGate


async def test_close_waits_for_every_body_in_progress_and_refuses_new_ones():
    gate = SendGate()
    done: list[str] = []
    release = asyncio.Event()

    async def body(name: str) -> None:
        async with gate.sending() as allowed:
            if not allowed:
                done.append(f"{name} skipped")
                return
            await release.wait()
            done.append(name)

    first, second = asyncio.ensure_future(body("a")), asyncio.ensure_future(body("b"))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(gate.close())
    await asyncio.sleep(0.01)
    assert not closing.done() and gate.closing  # both bodies still hold it
    await body("late")
    release.set()
    assert await closing is True
    await asyncio.gather(first, second)
    assert done == ["late skipped", "a", "b"]


async def test_close_gives_up_after_its_timeout_and_says_so():
    gate = SendGate()
    stuck = asyncio.Event()

    async def body() -> None:
        async with gate.sending():
            await stuck.wait()

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0)
    assert await gate.close(timeout=0.05) is False
    stuck.set()
    await task


async def test_close_with_nothing_in_progress_returns_at_once():
    gate = SendGate()
    async with gate.sending() as allowed:
        assert allowed
    assert await gate.close(timeout=0.01) is True
    async with gate.sending() as allowed:
        assert not allowed

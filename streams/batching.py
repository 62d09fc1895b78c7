"""Batches of input messages for the validation stage, with a window that follows the lag.

Faust's ``take_events`` cuts a batch at a count or after a fixed window. In a backlog the window
cuts, not the count, and what a backlog costs per event grows with the number of batches: each is
one more message to identity resolution and one per partition to the profile stage
(docs/performance.md, lever 6). Here a batch waits ``live_s`` while the input is caught up, and up
to ``backlog_s`` as soon as one of its messages is at least a full batch behind the end of its
partition.

A batch's events are acked when the next batch is asked for, that is after the caller has passed
the batch on: a worker that dies meanwhile sees them again (at least once). Up to about twice
``max_messages`` events are held unacked (the batch in hand and a full queue), against about
``max_messages`` with ``take_events``. When ``halt`` is set
(faust's ``consumer.suspend_flow``: a rebalance or a stop, which waits until every event handed to
a stream is acked) the open batch is cut at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol


class Flag(Protocol):
    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


def window_seconds(behind: int, max_messages: int, live_s: float, backlog_s: float) -> float:
    """How long a batch may wait for a message that is ``behind`` messages before its partition's end.

    >>> window_seconds(0, 500, 0.02, 0.5), window_seconds(499, 500, 0.02, 0.5), window_seconds(500, 500, 0.02, 0.5)
    (0.02, 0.02, 0.5)
    """
    return backlog_s if behind >= max_messages else live_s


async def take_batches(
    stream: Any,
    max_messages: int,
    live_s: float,
    backlog_s: float,
    behind: Callable[[Any], int],
    halt: Flag | None = None,
) -> AsyncIterator[list[Any]]:
    """Batches of at most ``max_messages`` events of a Faust ``stream``.

    ``behind(event)`` tells how far the event is from the end of its partition. A reader task moves
    the stream's events (not acked) into a queue of one batch; a batch starts with the next event and
    takes what comes until it is full, its window has passed or ``halt`` is set. A failing stream
    raises here.
    """
    source = stream.noack()
    queue: asyncio.Queue = asyncio.Queue(maxsize=max_messages)

    async def read() -> None:
        async for event in source.events():
            await queue.put(event)

    reader = asyncio.ensure_future(read())
    loop = asyncio.get_running_loop()

    async def next_event(timeout: float | None) -> Any:
        """The next event, or None when ``timeout`` passes, ``halt`` is set or the reader stops."""
        getter = asyncio.ensure_future(queue.get())
        waits = {getter, reader}
        if halt is not None and timeout is not None:
            waits.add(asyncio.ensure_future(halt.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the caller is cancelled here
            for task in waits - {reader}:
                task.cancel()
        # A get that finished is taken even if something else finished first: its event is out of the queue.
        return getter.result() if getter.done() and not getter.cancelled() else None

    try:
        while True:
            first = await next_event(None)
            if first is None:
                reader.result()  # raises what the stream raised
                return
            batch = [first]
            started = loop.time()
            deadline = started + window_seconds(behind(first), max_messages, live_s, backlog_s)
            while len(batch) < max_messages:
                try:
                    event = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or (halt is not None and halt.is_set()) or reader.done():
                        break
                    event = await next_event(remaining)
                    if event is None:
                        break
                batch.append(event)
                deadline = max(deadline, started + window_seconds(behind(event), max_messages, live_s, backlog_s))
            yield batch
            for event in batch:
                await source.ack(event)
    finally:
        reader.cancel()

"""Batches of input messages for the validation stage, with a window that follows the lag.

Faust's ``take_events`` cuts a batch at a count or after a fixed window. In a backlog the window
cuts, not the count, and what a backlog costs per event grows with the number of batches: each is
one more message to identity resolution and one per partition to the profile stage
(docs/performance.md, lever 6). Here a batch waits ``live_s`` while the input is caught up, and up
to ``backlog_s`` as soon as one of its messages is at least a full batch behind the end of its
partition.

A batch's events are acked when the next batch is asked for, that is after the caller has passed
the batch on: a worker that dies meanwhile sees them again (at least once).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any


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
) -> AsyncIterator[list[Any]]:
    """Batches of at most ``max_messages`` events of a Faust ``stream``.

    ``behind(event)`` tells how far the event is from the end of its partition. A reader task moves
    the stream's events (not acked) into a queue of one batch; a batch starts with the next event and
    takes what comes until it is full or its window has passed. A failing stream raises here.
    """
    source = stream.noack()
    queue: asyncio.Queue = asyncio.Queue(maxsize=max_messages)

    async def read() -> None:
        async for event in source.events():
            await queue.put(event)

    reader = asyncio.ensure_future(read())
    loop = asyncio.get_running_loop()
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                reader.result()  # raises what the stream raised
                return
            batch = [getter.result()]
            started = loop.time()
            deadline = started + window_seconds(behind(batch[0]), max_messages, live_s, backlog_s)
            while len(batch) < max_messages:
                try:
                    event = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        event = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                batch.append(event)
                deadline = max(deadline, started + window_seconds(behind(event), max_messages, live_s, backlog_s))
            yield batch
            for event in batch:
                await source.ack(event)
    finally:
        reader.cancel()

"""A full flush of faust's producer buffer before every offset commit and at stop.

Table writes do not reach Kafka at once: faust queues each changelog record in its producer buffer
(``ProducerBuffer``), and one task hands them to aiokafka one by one. Two things in faust-streaming
0.15.3 let the table fall behind the committed offsets:

1. Before committing offsets the consumer calls ``producer.flush()``, whose buffer flush
   (``flush_atmost(None)``) *returns* when no record was handed over within 0.1 s, with records still
   queued, and does not count the record being handed over at that moment. aiokafka makes that hand-over
   wait whenever a partition's batch is full and the one before it is still in flight, so 0.1 s
   passes under load. The offsets are then committed ahead of the table's changelog: a worker killed
   before the records go out restarts from a changelog without them, and the events behind them are
   not read again.
2. At a clean stop faust stops the consumer (the last commit), flushes as in 1, and then the buffer's
   own ``on_stop`` flushes again; by then the buffer is "stopping", and its flush raises "Cannot flush:
   Producer not Running" if anything is queued. What was queued is dropped, behind committed offsets.
   A restarted worker then folds the next events of those customers into older states: the events
   whose changelog records were dropped are gone from the table for good (their updates were
   published, the offsets committed).

``guard_flush`` makes the buffer's ``flush`` wait until every record that was queued or being handed
over when it was called has been handed to aiokafka (records queued later do not hold it up, so a
commit is not starved by ongoing traffic); the producer's flush then waits for aiokafka to deliver
them. At the buffer's own stop, when faust has already stopped the aiokafka producer, it only logs what
it drops (records of events processed after the last commit, which the next worker reads again).
faust's partial ``flush_atmost`` (its back-pressure) is left as it is.
Unit tests: ``tests/unit/test_flushing.py`` (faust's own buffer, alone and guarded).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

STUCK_SECONDS = 5.0  # no record handed over for this long: the broker is away (or stopping with us), stop waiting


class FlushGuard:
    """Counts the records the buffer hands over; ``flush`` waits for a count."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.handed = 0  # records whose hand-over to aiokafka finished (or failed)
        self.in_flight = 0  # records taken from the queue and not yet handed over
        self.overtaken = 0  # flushes at which faust's own would have returned with records outstanding
        self.overtaken_records = 0  # the records outstanding then
        self._reported_at = float("-inf")
        self._send = buffer._send_pending

    async def send_pending(self, fut: Any) -> None:
        self.in_flight += 1
        try:
            await self._send(fut)
        finally:
            self.in_flight -= 1
            self.handed += 1

    async def flush(self) -> None:
        """Return once every record queued or in flight now has been handed to aiokafka."""
        if self.buffer.should_stop:
            # The buffer's own stop: faust has stopped the aiokafka producer before it (so nothing can
            # be sent any more) and made the last commit after the app's full flush; what was queued
            # since belongs to events processed after that commit, which a restart reads again.
            if self.buffer.size:
                log.warning("%d table and output records queued after the last commit are dropped at "
                            "stop; their events are read again by the next worker", self.buffer.size)
            return
        target = self.handed + self.in_flight + self.buffer.size
        loop = asyncio.get_running_loop()
        last, last_progress = self.handed, loop.time()
        # faust's flush returns at once when only a record in flight is left, and after 0.1 s without a
        # hand-over: how many records it would have left behind, had it been faust's
        left_behind = target - self.handed if self.buffer.size == 0 else 0
        while self.handed < target and not self.buffer.should_stop:
            self.buffer.message_sent.clear()
            try:
                await asyncio.wait_for(self.buffer.message_sent.wait(), timeout=0.1)
            except asyncio.TimeoutError:
                left_behind = left_behind or target - self.handed
            if self.handed != last:
                last, last_progress = self.handed, loop.time()
            elif loop.time() - last_progress > STUCK_SECONDS:
                log.error("The producer handed no record to Kafka for %.0f s; the commit goes on without "
                          "%d table and output records still queued (check the broker connection)",
                          STUCK_SECONDS, target - self.handed)
                return
        if left_behind:
            self.overtaken += 1
            self.overtaken_records += left_behind
            if loop.time() - self._reported_at >= 60:
                self._reported_at = loop.time()
                log.info("A flush before a commit or at stop waited for records faust's own flush would have "
                         "left queued (%d such flushes, %d records so far)", self.overtaken, self.overtaken_records)


def guard_flush(producer: Any) -> FlushGuard:
    """Install the full flush on a faust producer's buffer (before the producer starts: the buffer's
    sending task takes its send method when it starts)."""
    buffer = producer.buffer
    guard = FlushGuard(buffer)
    buffer._send_pending = guard.send_pending
    buffer.flush = guard.flush
    return guard

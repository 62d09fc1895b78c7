"""Make faust-streaming's consumer re-deliver what its streams never processed.

faust-streaming 0.15.3 loses input around a restart or rebalance (found under CPU starvation and in
the fault suite's poison scenario; docs/reliability.md, "The silent skip"). At the end of recovery
it resumes the stream partitions and seeks them back to the committed offsets while its fetcher
already runs, and then:

* The fetch loop drops any fetched message whose offset is below the partition's *read offset*,
  as a copy it already handed on. The seek resets the read offset, but the fetch loop can still be
  part-way through a batch fetched before the seek, and each message of that batch sets the read
  offset forward again, so copies fetched after the seek can be dropped as already read.
* It resumes flow control after the seek, and resuming empties the stream queues: what was
  fetched during the seek is thrown away unprocessed, and nothing fetches it again. Those events
  are never processed, never dead-lettered, and nothing is logged above the debug level.

And its commit moves past a hole of one offset (meant for the control record a transactional
producer leaves) without asking whether that offset was a message that was fetched but never
processed; with no committed offset yet (offset 0) it checks for no hole at all.

:func:`guard_redelivery` installs four small changes on a consumer before it starts:

1. The read offset of an acked (input) topic always reads as unknown, so the fetch loop hands
   every fetched copy to the streams. A message re-fetched after a seek that had been processed
   already is processed again; the pipeline is idempotent (event ids), so this costs time only
   after a seek, i.e. after a rebalance.
2. The consumer remembers which offsets it fetched since the last commit, and a commit is held
   while one of them below the lowest processed offset is still unprocessed
   (:func:`first_unprocessed`).
3. Before flow control empties the queues (every queue faust creates with ``clear_on_resume``;
   found by the poison scenario: a few input messages never validated, commits held by 2., the
   worker idle), the guard notes the lowest input offset per partition in the queues it
   empties and seeks those partitions back to it (:func:`lowest_offsets`). Faust also empties the
   queues when partitions are revoked; a partition sought back then is sought again to its
   committed offset by the next recovery, so that seek is harmless.
4. Faust relies on its seek to the committed offsets (at the end of recovery, and whenever it
   fetches while flow is stopped) to fetch again whatever it threw away, but aiokafka's
   ``seek_to_committed`` leaves a partition with no committed offset (or offset 0) where the
   fetcher had got to. Found by the fault suite's ``kill -9`` scenario: the restarted worker
   fetched a batch between resuming the stream partitions and that seek, handed none of it to
   the streams, fetched every partition with a committed offset again from it, and never
   fetched again the messages of one its predecessor had not committed yet (nothing committed,
   nothing held, the worker idle). The guard seeks such a partition of an acked topic to offset
   0, where its committed offset would be: the app reads from the earliest offset
   (``consumer_auto_offset_reset``), and an offset 0 no longer kept resets to the earliest one
   (:func:`uncommitted`).

:func:`seek_before_streaming` adds a fifth, found by the poison scenario's duplicate dead letters
(every bad input of a backlog dead-lettered twice, about 0.4 s apart, after a clean restart):

5. At the end of recovery Faust resumes the stream partitions and *then* seeks them to their
   committed offsets. The seek took about 0.3 s against Tansu, and in that time the streams
   processed what the fetcher brought from where it was; the seek then sent the partitions back,
   and everything was processed again (harmless for profiles, which are idempotent, but every
   dead letter came twice and the time was paid twice). The stream partitions of acked topics
   are now resumed when the seek has finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def first_unprocessed(fetched: Collection[int], acked: Collection[int], committed: int | None) -> int | None:
    """The lowest fetched offset a commit would pass over without it being processed, or None.

    A commit goes up to the first run of consecutive processed (acked) offsets; every offset
    between the committed one and the lowest acked one is passed over. That is right for offsets
    that never held a message, wrong for one that was fetched and skipped.

    >>> first_unprocessed({10, 11, 12}, acked=[11, 12], committed=10)
    10
    >>> first_unprocessed({11, 12}, acked=[11, 12], committed=10) is None  # 10: no message
    True
    >>> first_unprocessed({0, 1, 2}, acked=[1, 2], committed=None)  # nothing committed yet
    0
    >>> first_unprocessed({10, 11}, acked=[10, 11], committed=10) is None
    True
    """
    if not acked or not fetched:
        return None
    lowest_acked = min(acked)
    floor = committed if committed is not None else min(fetched)
    passed = [offset for offset in fetched if floor <= offset < lowest_acked]
    return min(passed) if passed else None


class _UnknownForAcked(defaultdict):
    """Faust's per-partition read offsets, reading as unknown (None) for acked topics."""

    def __init__(self, acks_enabled_for: Callable[[str], bool], *args: Any) -> None:
        super().__init__(lambda: None, *args)
        self._acks_enabled_for = acks_enabled_for

    def __getitem__(self, tp: Any) -> int | None:
        if self._acks_enabled_for(tp.topic):
            return None
        return super().__getitem__(tp)


def lowest_offsets(items: Iterable[Any], acks_enabled_for: Callable[[str], bool]) -> dict[Any, int]:
    """The lowest offset per partition among queued events of acked topics (others are ignored:
    values sent to a channel carry no message, changelogs are not acked).

    >>> from types import SimpleNamespace as NS
    >>> event = lambda topic, offset: NS(message=NS(topic=topic, tp=(topic, 0), offset=offset))
    >>> lowest_offsets([event("in", 7), event("in", 5), event("log", 1), "a value"], lambda t: t == "in")
    {('in', 0): 5}
    """
    lowest: dict[Any, int] = {}
    for item in items:
        message = getattr(item, "message", None)
        if message is None or not acks_enabled_for(message.topic):
            continue
        if message.tp not in lowest or message.offset < lowest[message.tp]:
            lowest[message.tp] = message.offset
    return lowest


def uncommitted(committed: Mapping[Any, int | None], acks_enabled_for: Callable[[str], bool]) -> list[Any]:
    """The partitions of acked topics that ``seek_to_committed`` leaves where they are: no
    committed offset, or offset 0 (aiokafka seeks only to a committed offset above 0).

    >>> from faust.types import TP
    >>> uncommitted({TP("in", 0): None, TP("in", 1): 0, TP("in", 2): 7, TP("log", 0): None}, lambda t: t == "in")
    [TP(topic='in', partition=0), TP(topic='in', partition=1)]
    """
    return sorted((tp for tp, offset in committed.items() if not offset and acks_enabled_for(tp.topic)),
                  key=lambda tp: (tp.topic, tp.partition))


@dataclass
class RedeliveryGuard:
    """What the guard did, for /metrics: commits held for a fetched but unprocessed offset, and
    partitions sought back to messages that resuming flow control threw away."""

    commits_held: int = 0
    reseeks: int = 0


def guard_redelivery(
    consumer: Any, acks_enabled_for: Callable[[str], bool], flow_control: Any | None = None
) -> RedeliveryGuard:
    """Install changes 1 to 4 of the module docstring on a not yet started consumer (5 is
    :func:`seek_before_streaming`, which needs faust's own resume and seek on the consumer).

    ``consumer`` is a ``faust.transport.consumer.Consumer``; ``acks_enabled_for`` tells the input
    topics (acked) from the changelogs (not acked); ``flow_control`` is the app's
    ``mode.utils.queues.FlowControlEvent`` (change 3; without it, only 1 and 2). Returns the
    guard's counters.
    """
    guard = RedeliveryGuard()
    if flow_control is not None:
        reseek_what_resume_clears(consumer, acks_enabled_for, flow_control, guard)
    consumer._read_offset = _UnknownForAcked(acks_enabled_for, consumer._read_offset)
    fetched: defaultdict[Any, set[int]] = defaultdict(set)
    deliver = consumer.callback

    def remember_and_deliver(message: Any) -> Any:
        if acks_enabled_for(message.topic):
            fetched[message.tp].add(message.offset)
        return deliver(message)

    new_offset = consumer._new_offset

    def checked_new_offset(tp: Any) -> int | None:
        seen = fetched.get(tp)
        committed = consumer._committed_offset.get(tp)
        if seen:
            if committed is not None:  # committed elsewhere (another worker had the partition)
                seen.difference_update([o for o in seen if o < committed])
            if first_unprocessed(seen, consumer._acked.get(tp, ()), committed) is not None:
                guard.commits_held += 1
                return None
        offset = new_offset(tp)
        if offset is not None and seen:
            seen.difference_update([o for o in seen if o < offset])
        return offset

    seek_to_committed = consumer.seek_to_committed

    async def seek_to_committed_or_start() -> Mapping[Any, int | None]:
        committed = await seek_to_committed()
        for tp in uncommitted(committed, acks_enabled_for):
            await consumer.seek(tp, 0)
        return committed

    consumer.callback = remember_and_deliver
    consumer._new_offset = checked_new_offset
    consumer.seek_to_committed = seek_to_committed_or_start
    return guard


def reseek_what_resume_clears(
    consumer: Any, acks_enabled_for: Callable[[str], bool], flow_control: Any, guard: RedeliveryGuard
) -> None:
    """Change 3: before flow control empties the queues, note the lowest queued input offset per
    partition; afterwards seek each partition still assigned back to it."""
    clear = flow_control.clear

    def clear_and_reseek() -> None:
        queued = [item for queue in list(flow_control._queues) for item in list(getattr(queue, "_queue", ()))]
        lowest = lowest_offsets(queued, acks_enabled_for)
        clear()
        if not lowest:
            return
        assigned = consumer.assignment()
        for tp, offset in sorted(lowest.items()):
            if tp in assigned:
                guard.reseeks += 1
                log.info("Flow control dropped queued messages from %s[%d]@%d on: fetching them again",
                         tp.topic, tp.partition, offset)
                task = asyncio.ensure_future(consumer.seek(tp, offset))
                task.add_done_callback(_log_failure)

    flow_control.clear = clear_and_reseek


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Seeking back to dropped messages failed: %r", task.exception())


def seek_before_streaming(consumer: Any, acks_enabled_for: Callable[[str], bool]) -> None:
    """Change 5: partitions of acked topics that Faust resumes are resumed only once the next
    ``perform_seek`` (which Faust's recovery awaits right after resuming) has finished, failed or
    been cancelled; other partitions (changelogs, standbys) are resumed at once."""
    resume_partitions = consumer.resume_partitions
    perform_seek = consumer.perform_seek
    held: set[Any] = set()

    def resume_after_seek(tps: Iterable[Any]) -> None:
        tps = set(tps)
        streams = {tp for tp in tps if acks_enabled_for(tp.topic)}
        held.update(streams)
        if tps - streams:
            resume_partitions(tps - streams)

    async def seek_then_resume() -> None:
        try:
            await perform_seek()
        finally:
            if held:
                resuming = set(held)
                held.clear()
                resume_partitions(resuming)

    consumer.resume_partitions = resume_after_seek
    consumer.perform_seek = seek_then_resume

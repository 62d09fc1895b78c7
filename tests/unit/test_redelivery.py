"""The redelivery guard on faust-streaming's own commit arithmetic (streams.redelivery).

The consumer here is a plain object carrying the attributes faust's ``Consumer._new_offset``
reads; the method itself is faust's, so these tests show what faust 0.15.3 commits with and
without the guard; change 3 runs on mode's own flow control and queues, change 4 on aiokafka's and
faust's own seek to the committed offsets, change 5 on faust's own resume and seek. End to end, the
fault suite's restarts exercise the guard; one rare stall it does not cover is still open
(docs/reliability.md, "The silent skip").
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import MethodType, SimpleNamespace

from faust.transport.consumer import Consumer
from faust.types import TP
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams.redelivery import RedeliveryGuard, first_unprocessed, guard_redelivery, seek_before_streaming

INPUT = TP("omniprofile.events.web", 0)
CHANGELOG = TP("omniprofile-profiles-changelog", 0)


def fake_consumer(delivered: list) -> SimpleNamespace:
    consumer = SimpleNamespace(
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _gap=defaultdict(lambda: None),
        _committed_offset=defaultdict(lambda: None),
        _read_offset=defaultdict(lambda: None),
        callback=lambda message: delivered.append(message.offset),
        seek_to_committed=None,  # faust's, replaced by the guard (change 4); see the tests at the end
    )
    consumer._new_offset = MethodType(Consumer._new_offset, consumer)
    return consumer


def fetch(consumer: SimpleNamespace, tp: TP, *offsets: int) -> None:
    for offset in offsets:
        consumer.callback(SimpleNamespace(topic=tp.topic, tp=tp, offset=offset))


def ack(consumer: SimpleNamespace, tp: TP, *offsets: int) -> None:
    for offset in offsets:
        consumer._acked[tp].append(offset)
        consumer._acked_index[tp].add(offset)


def acked_topics(topic: str) -> bool:
    return topic != CHANGELOG.topic


def test_faust_alone_commits_past_one_skipped_offset() -> None:
    """The behaviour the guard exists for: offset 10 was fetched, skipped, never processed."""
    consumer = fake_consumer([])
    consumer._committed_offset[INPUT] = 10
    fetch(consumer, INPUT, 10, 11, 12)
    ack(consumer, INPUT, 11, 12)
    assert consumer._new_offset(INPUT) == 13


def test_guard_holds_the_commit_until_the_skipped_offset_is_processed() -> None:
    consumer = fake_consumer([])
    guard = guard_redelivery(consumer, acked_topics)
    consumer._committed_offset[INPUT] = 10
    fetch(consumer, INPUT, 10, 11, 12)
    ack(consumer, INPUT, 11, 12)
    assert consumer._new_offset(INPUT) is None
    assert guard.commits_held == 1
    # the seek after the rebalance fetches 10 again; once processed the commit moves on
    fetch(consumer, INPUT, 10)
    ack(consumer, INPUT, 10)
    assert consumer._new_offset(INPUT) == 13
    assert guard.commits_held == 1


def test_guard_passes_offsets_that_held_no_message() -> None:
    """A transactional producer's control record takes an offset that is never fetched."""
    consumer = fake_consumer([])
    guard_redelivery(consumer, acked_topics)
    consumer._committed_offset[INPUT] = 10
    fetch(consumer, INPUT, 11, 12)
    ack(consumer, INPUT, 11, 12)
    assert consumer._new_offset(INPUT) == 13


def test_guard_holds_at_offset_zero_where_faust_checks_nothing() -> None:
    consumer = fake_consumer([])
    fetch(consumer, INPUT, 0, 1, 2, 3)
    ack(consumer, INPUT, 2, 3)
    assert consumer._new_offset(INPUT) == 4  # faust: 0 and 1 passed over
    consumer = fake_consumer([])
    guard_redelivery(consumer, acked_topics)
    fetch(consumer, INPUT, 0, 1, 2, 3)
    ack(consumer, INPUT, 2, 3)
    assert consumer._new_offset(INPUT) is None


def test_fetched_offsets_are_forgotten_once_committed() -> None:
    consumer = fake_consumer([])
    guard_redelivery(consumer, acked_topics)
    fetch(consumer, INPUT, *range(100))
    ack(consumer, INPUT, *range(100))
    assert consumer._new_offset(INPUT) == 100
    consumer._committed_offset[INPUT] = 100
    # a later hole is judged on its own: 100 never fetched (no message), 101 processed
    fetch(consumer, INPUT, 101)
    ack(consumer, INPUT, 101)
    assert consumer._new_offset(INPUT) == 102


def test_read_offsets_of_input_topics_read_as_unknown() -> None:
    """The fetch loop drops a message below the read offset; for input topics it never can."""
    delivered: list = []
    consumer = fake_consumer(delivered)
    guard_redelivery(consumer, acked_topics)
    consumer._read_offset[INPUT] = 500
    consumer._read_offset[CHANGELOG] = 500
    assert consumer._read_offset[INPUT] is None
    assert consumer._read_offset[CHANGELOG] == 500
    fetch(consumer, INPUT, 7)
    assert delivered == [7]


def test_first_unprocessed_matches_a_scan_of_the_passed_range() -> None:
    fetched = {3, 5, 6, 9, 12}
    for committed in (None, 0, 3, 4, 6, 10):
        for acked in ([], [5], [6, 7], [9, 12], [13]):
            floor = min(fetched) if committed is None else committed
            lowest = min(acked) if acked else None
            expected = None
            if lowest is not None:
                for offset in range(floor, lowest):
                    if offset in fetched:
                        expected = offset
                        break
            assert first_unprocessed(fetched, acked, committed) == expected, (committed, acked)


def seeking_consumer(assigned: set) -> SimpleNamespace:
    """A fake consumer that also has the two things change 3 asks of faust's: its assignment, and
    seek (recorded in ``sought``)."""
    consumer = fake_consumer([])
    consumer.sought = []
    consumer.assignment = lambda: assigned

    async def seek(tp: TP, offset: int) -> None:
        consumer.sought.append((tp, offset))

    consumer.seek = seek
    return consumer


def queued_event(tp: TP, offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic=tp.topic, tp=tp, offset=offset))


def test_messages_that_resuming_flow_throws_away_are_fetched_again() -> None:
    """Faust's recovery resumes flow control after its seek; resuming empties every stream queue."""
    other = TP("omniprofile.events.app", 3)  # queued too, but no longer assigned to this worker

    async def scenario() -> tuple[SimpleNamespace, RedeliveryGuard, list]:
        flow = FlowControlEvent(initially_suspended=False)
        queue = ThrowableQueue(maxsize=100, flow_control=flow, clear_on_resume=True)
        for item in (queued_event(INPUT, 8), queued_event(INPUT, 6), queued_event(CHANGELOG, 2),
                     queued_event(other, 40), "a value sent to a channel"):
            queue.put_nowait(item)
        consumer = seeking_consumer({INPUT, CHANGELOG})
        guard = guard_redelivery(consumer, acked_topics, flow)
        flow.resume()
        await asyncio.sleep(0)
        return consumer, guard, list(queue._queue)

    consumer, guard, left = asyncio.run(scenario())
    assert left == []  # faust's behaviour, kept
    assert consumer.sought == [(INPUT, 6)]
    assert guard.reseeks == 1


def test_resuming_with_empty_queues_seeks_nothing() -> None:
    async def scenario() -> SimpleNamespace:
        flow = FlowControlEvent(initially_suspended=True)
        queue = ThrowableQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
        consumer = seeking_consumer({INPUT})
        guard_redelivery(consumer, acked_topics, flow)
        flow.resume()
        await asyncio.sleep(0)
        assert queue.empty()
        return consumer

    assert asyncio.run(scenario()).sought == []


APP = TP("omniprofile.events.app", 2)


def test_aiokafka_leaves_a_partition_without_a_committed_offset_where_it_is() -> None:
    """The behaviour change 4 exists for, in aiokafka's own ``seek_to_committed``."""
    from aiokafka import AIOKafkaConsumer

    sought: list = []
    committed = {INPUT: 10, APP: None, CHANGELOG: None}

    async def fetch_committed(tp: TP) -> int | None:
        return committed[tp]

    fake = SimpleNamespace(
        _subscription=SimpleNamespace(assigned_partitions=lambda: set(committed)),
        committed=fetch_committed,
        _fetcher=SimpleNamespace(seek_to=lambda tp, offset: sought.append((tp, offset))),
    )
    assert asyncio.run(AIOKafkaConsumer.seek_to_committed(fake)) == committed
    assert sought == [(INPUT, 10)]  # APP stays wherever the fetcher had got to


def test_faust_seek_to_committed_sends_uncommitted_input_partitions_to_the_start() -> None:
    """Faust's own ``perform_seek`` (the end of recovery): an input partition with no committed
    offset, or offset 0, is sought to 0; one with a committed offset and the changelogs are left
    to aiokafka."""
    async def scenario() -> SimpleNamespace:
        consumer = seeking_consumer({INPUT, APP, CHANGELOG})
        zero = TP("omniprofile.events.email", 1)

        async def seek_to_committed() -> dict:
            return {INPUT: 10, APP: None, zero: 0, CHANGELOG: None}

        consumer.seek_to_committed = seek_to_committed
        guard_redelivery(consumer, acked_topics)
        consumer.perform_seek = MethodType(Consumer.perform_seek, consumer)
        await consumer.perform_seek()
        assert consumer._committed_offset[INPUT] == 10
        assert consumer._read_offset[CHANGELOG] is None
        return consumer

    consumer = asyncio.run(scenario())
    assert consumer.sought == [(TP("omniprofile.events.app", 2), 0), (TP("omniprofile.events.email", 1), 0)]


def pausing_consumer(committed: dict, fail: bool = False) -> SimpleNamespace:
    """A fake consumer with faust's own ``resume_partitions`` and ``perform_seek``; its
    ``seek_to_committed`` records which partitions were streaming (faust's active set) while it ran."""
    consumer = fake_consumer([])
    consumer.active = set()
    consumer._paused_partitions = set(committed)
    consumer._get_active_partitions = lambda: consumer.active
    consumer.streaming_during_seek = None

    async def seek_to_committed() -> dict:
        consumer.streaming_during_seek = set(consumer.active)
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError("the broker went away")
        return committed

    consumer.seek_to_committed = seek_to_committed
    consumer.resume_partitions = MethodType(Consumer.resume_partitions, consumer)
    consumer.perform_seek = MethodType(Consumer.perform_seek, consumer)
    return consumer


async def end_of_recovery(consumer: SimpleNamespace, tps: set) -> None:
    """What faust's ``Recovery.on_recovery_completed`` does: resume the stream partitions, then seek."""
    consumer.resume_partitions(tps)
    await consumer.perform_seek()


def test_faust_alone_streams_from_where_the_fetcher_was_while_it_seeks() -> None:
    """The behaviour change 5 exists for: during the seek the input partitions already stream."""
    consumer = pausing_consumer({INPUT: 10, APP: 4})
    asyncio.run(end_of_recovery(consumer, {INPUT, APP}))
    assert consumer.streaming_during_seek == {INPUT, APP}


def test_input_partitions_stream_only_after_the_seek() -> None:
    consumer = pausing_consumer({INPUT: 10, APP: 4, CHANGELOG: None})
    seek_before_streaming(consumer, acked_topics)
    consumer.resume_partitions({CHANGELOG})  # recovery resumes changelogs on their own: at once
    assert consumer.active == {CHANGELOG}
    asyncio.run(end_of_recovery(consumer, {INPUT, APP}))
    assert consumer.streaming_during_seek == {CHANGELOG}
    assert consumer.active == {INPUT, APP, CHANGELOG}
    assert consumer._paused_partitions == set()
    assert consumer._committed_offset[INPUT] == 10  # faust's seek did its own work too


def test_a_failed_seek_still_resumes_what_it_held() -> None:
    """Faust then retries its recovery; partitions left paused would never stream again."""
    consumer = pausing_consumer({INPUT: 10}, fail=True)
    seek_before_streaming(consumer, acked_topics)

    async def scenario() -> None:
        try:
            await end_of_recovery(consumer, {INPUT})
        except RuntimeError:
            return
        raise AssertionError("the seek's error was swallowed")

    asyncio.run(scenario())
    assert consumer.active == {INPUT}

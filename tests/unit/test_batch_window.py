"""The validation stage's batches (streams.batching): the window follows the lag, and a batch is
acked only once the next one is asked for. A stand-in stream delivers events on a schedule; the
expected batches are worked out from that schedule in the test."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from streams.batching import take_batches, window_seconds


@dataclass(frozen=True)
class Event:
    number: int
    behind: int  # messages after this one in its partition when it was read


class ScheduledStream:
    """Yields events after the given pauses, then waits for ever like a stream with no input.

    Like a Faust stream, its own ``events()`` acks an event when the next one is asked for;
    ``noack()`` gives the same events without that, to be acked by ``ack``."""

    def __init__(self, schedule: list[tuple[float, Event]], fail_after: bool = False, acking: bool = True) -> None:
        self.schedule = schedule
        self.fail_after = fail_after
        self.acking = acking
        self.acked: list[int] = []

    def noack(self) -> ScheduledStream:
        view = ScheduledStream(self.schedule, self.fail_after, acking=False)
        view.acked = self.acked
        return view

    async def events(self):
        previous = None
        for pause, event in self.schedule:
            if pause:
                await asyncio.sleep(pause)
            if self.acking and previous is not None:
                self.acked.append(previous.number)
            yield event
            previous = event
        if self.fail_after:
            raise RuntimeError("the broker went away")
        await asyncio.Event().wait()

    async def ack(self, event: Event) -> bool:
        self.acked.append(event.number)
        return True


def behind(event: Event) -> int:
    return event.behind


async def first_batches(stream: ScheduledStream, count: int, *, max_messages: int = 500,
                        live_s: float = 0.01, backlog_s: float = 0.5) -> list[list[int]]:
    out: list[list[int]] = []
    batches = take_batches(stream, max_messages, live_s, backlog_s, behind)
    try:
        async for batch in batches:
            out.append([event.number for event in batch])
            if len(out) == count:
                break
    finally:
        await batches.aclose()
    return out


def test_the_window_is_the_backlog_one_from_a_full_batch_behind():
    assert window_seconds(0, 500, 0.02, 0.5) == 0.02
    assert window_seconds(499, 500, 0.02, 0.5) == 0.02
    assert window_seconds(500, 500, 0.02, 0.5) == 0.5
    assert window_seconds(10_000, 1, 0.02, 0.5) == 0.5


async def test_caught_up_events_further_apart_than_the_live_window_go_one_per_batch():
    # 300 ms between events, a 10 ms live window: nothing waits for the next one.
    stream = ScheduledStream([(0.3, Event(n, behind=0)) for n in range(4)])
    assert await first_batches(stream, 4) == [[0], [1], [2], [3]]


async def test_events_of_a_backlog_wait_for_each_other_up_to_the_backlog_window():
    # The same spacing, but every event is far behind its partition's end: they wait for each
    # other (a 30 s window) until the batch is full at four.
    stream = ScheduledStream([(0.3, Event(n, behind=5_000)) for n in range(5)])
    assert await first_batches(stream, 1, max_messages=4, backlog_s=30.0) == [[0, 1, 2, 3]]


async def test_a_batch_that_starts_live_switches_to_the_backlog_window_when_a_lagging_event_comes():
    schedule = [(0.0, Event(0, behind=0)), (0.0, Event(1, behind=800)), (0.3, Event(2, behind=700)),
                (0.3, Event(3, behind=0)), (0.0, Event(4, behind=0))]
    # Event 1 comes with event 0 and is 800 behind (>= 4): the window becomes 30 s, so events 2 and 3
    # join and fill the batch; a fixed 10 ms window would have made 0-1, 2, 3-4.
    assert await first_batches(ScheduledStream(schedule), 1, max_messages=4, backlog_s=30.0) == [[0, 1, 2, 3]]


async def test_a_batch_is_cut_at_the_count_and_the_rest_follows():
    stream = ScheduledStream([(0.0, Event(n, behind=10_000 - n)) for n in range(1_200)])
    batches = await first_batches(stream, 3, max_messages=500, backlog_s=0.2)
    assert [len(b) for b in batches] == [500, 500, 200]
    assert [n for b in batches for n in b] == list(range(1_200))


async def test_events_are_acked_only_when_the_next_batch_is_asked_for():
    stream = ScheduledStream([(0.0, Event(n, behind=0)) for n in range(3)] + [(0.3, Event(3, behind=0))])
    batches = take_batches(stream, 500, 0.01, 0.5, behind)
    try:
        first = await batches.__anext__()
        assert [e.number for e in first] == [0, 1, 2]
        assert stream.acked == []  # being passed on: a crash now must see them again
        second = await batches.__anext__()
        assert [e.number for e in second] == [3]
        assert stream.acked == [0, 1, 2]
    finally:
        await batches.aclose()
    assert stream.acked == [0, 1, 2]  # the batch in hand when it stopped was not acked


async def test_a_failing_stream_raises_through_the_batches():
    stream = ScheduledStream([(0.0, Event(0, behind=0))], fail_after=True)
    batches = take_batches(stream, 500, 0.01, 0.5, behind)
    try:
        assert [e.number for e in await batches.__anext__()] == [0]
        with pytest.raises(RuntimeError, match="broker went away"):
            await batches.__anext__()
    finally:
        await batches.aclose()


def test_a_backlog_window_shorter_than_the_live_one_is_refused_with_the_fix():
    from streams.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="OMNIPROFILE_BATCH_BACKLOG_WAIT_MS=10 is shorter than OMNIPROFILE_BATCH_WAIT_MS=20"):
        load_settings(batch_wait_ms=20, batch_backlog_wait_ms=10)
    assert load_settings(batch_wait_ms=20, batch_backlog_wait_ms=20).batch_backlog_wait_ms == 20


async def test_a_halt_cuts_the_open_batch_at_once():
    # A rebalance or a stop waits until every event handed to the stream is acked: a batch that
    # would wait out its backlog window (30 s here) for more is cut as soon as the flow stops.
    halt = asyncio.Event()
    stream = ScheduledStream([(0.0, Event(0, behind=5_000)), (60.0, Event(1, behind=5_000))])
    batches = take_batches(stream, 500, 0.01, 30.0, behind, halt)
    try:
        asyncio.get_running_loop().call_later(0.05, halt.set)
        batch = await asyncio.wait_for(batches.__anext__(), 10)
        assert [e.number for e in batch] == [0]
    finally:
        await batches.aclose()


async def test_after_a_halt_the_queued_events_still_come_and_the_batches_go_on():
    halt = asyncio.Event()
    halt.set()  # the flow is stopped: batches are cut as soon as the queue is empty, never waited on
    stream = ScheduledStream([(0.0, Event(0, behind=5_000)), (0.0, Event(1, behind=5_000)),
                              (0.3, Event(2, behind=5_000))])
    batches = take_batches(stream, 500, 0.01, 30.0, behind, halt)
    try:
        assert [e.number for e in await asyncio.wait_for(batches.__anext__(), 10)] == [0, 1]
        assert [e.number for e in await asyncio.wait_for(batches.__anext__(), 10)] == [2]
        assert stream.acked == [0, 1]
    finally:
        await batches.aclose()


def test_a_longer_live_window_set_before_this_setting_existed_still_loads():
    from streams.settings import load_settings

    settings = load_settings(batch_wait_ms=1000)
    assert (settings.batch_wait_ms, settings.backlog_wait_ms) == (1000, 1000)
    assert load_settings(batch_wait_ms=20).backlog_wait_ms == 500

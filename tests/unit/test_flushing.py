"""The full flush of faust's producer buffer (streams.flushing) on faust-streaming's own
``ProducerBuffer``: its sending task, its ``flush``, its stop. Only the channel the records go to is a
stand-in, one whose hand-over to the Kafka client takes a while, as aiokafka's does when a partition's
batch is full and the one before it is still in flight."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.producer import ProducerBuffer

from streams.flushing import guard_flush

HAND_OVER_SECONDS = 0.15  # longer than the 0.1 s faust's flush waits for one record


class SlowChannel:
    def __init__(self) -> None:
        self.handed: list[str] = []

    async def publish_message(self, fut, wait: bool = False) -> None:
        await asyncio.sleep(HAND_OVER_SECONDS)
        self.handed.append(fut.name)


def record(channel: SlowChannel, name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, message=SimpleNamespace(channel=channel))


async def started_buffer(guarded: bool) -> tuple[ProducerBuffer, SlowChannel]:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    if guarded:
        buffer.guard = guard_flush(SimpleNamespace(buffer=buffer))
    await buffer.start()
    return buffer, SlowChannel()


async def test_faust_alone_returns_from_flush_with_records_still_queued() -> None:
    """What the consumer's commit relies on: faust's flush gives up after 0.1 s without a hand-over."""
    buffer, channel = await started_buffer(guarded=False)
    for name in ("a", "b", "c"):
        buffer.put(record(channel, name))
    await buffer.flush()
    assert len(channel.handed) < 3  # offsets would be committed ahead of these changelog records
    while len(channel.handed) < 3:
        await asyncio.sleep(0.05)
    await buffer.stop()


async def test_faust_alone_drops_what_is_queued_at_its_stop() -> None:
    """faust's own stop of the buffer: its flush refuses while records are queued, they are dropped."""
    buffer, channel = await started_buffer(guarded=False)
    for name in ("a", "b", "c"):
        buffer.put(record(channel, name))
    try:
        await buffer.stop()
    except RuntimeError as exc:
        assert "not Running" in str(exc)
    else:
        raise AssertionError("faust's buffer now flushes at stop: streams.flushing may be moot")
    await asyncio.sleep(3 * HAND_OVER_SECONDS)
    assert len(channel.handed) < 3


async def test_guarded_flush_waits_for_every_record_queued_when_it_was_called() -> None:
    buffer, channel = await started_buffer(guarded=True)
    for name in ("a", "b", "c"):
        buffer.put(record(channel, name))
    await asyncio.sleep(0.01)  # the sending task has taken "a": in flight, no longer in the queue
    assert buffer.size == 2
    flushing = asyncio.ensure_future(buffer.flush())
    await asyncio.sleep(0.01)
    for name in ("d", "e", "f", "g"):  # traffic goes on: these must not hold the flush up
        buffer.put(record(channel, name))
    await flushing
    assert channel.handed[:3] == ["a", "b", "c"]
    assert len(channel.handed) < 7
    # faust's flush would have returned after its first 0.1 s, with all three outstanding
    assert (buffer.guard.overtaken, buffer.guard.overtaken_records) == (1, 3)
    await buffer.flush()
    assert channel.handed == ["a", "b", "c", "d", "e", "f", "g"]  # in order, one sender
    await buffer.stop()


async def test_guarded_flush_at_the_buffers_own_stop_returns_at_once() -> None:
    """By then faust has stopped the Kafka client; the app's flush before it was the full one."""
    buffer, channel = await started_buffer(guarded=True)
    buffer.put(record(channel, "a"))
    buffer._stopped.set()
    await asyncio.wait_for(buffer.flush(), timeout=0.05)
    buffer._stopped.clear()
    await buffer.stop()

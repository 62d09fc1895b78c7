"""streams.endoffsets against the real broker: end offsets as a fetch reports them.

The expected ends are counted from what the test itself produced (the offsets the broker
acknowledged), not taken from the broker's ListOffsets answer, which Tansu gets wrong after a
multi-record batch."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.endoffsets import FetchedEnds
from streams.local import free_port


async def new_topic(bootstrap: str, partitions: int) -> str:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def produce_batches(bootstrap: str, topic: str, sizes: dict[int, list[int]]) -> dict[int, int]:
    """Record batches of the given sizes per partition (linger keeps each size one batch); returns
    each partition's end offset (last acknowledged offset + 1)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for partition, batches in sizes.items():
            for size in batches:
                futures = [await producer.send(topic, b"v" * 100, partition=partition) for _ in range(size)]
                ends[partition] = max([(await f).offset for f in futures]) + 1
    finally:
        await producer.stop()
    return ends


async def test_fetched_ends_cover_the_whole_last_batch(broker):
    topic = await new_topic(broker.bootstrap, 3)
    lister = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await lister.start()
    probes: list[AIOKafkaConsumer] = []

    def new_probe() -> AIOKafkaConsumer:
        probes.append(AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=20))
        return probes[-1]

    ends = FetchedEnds(lambda *tps: lister.end_offsets(list(tps)), new_probe)
    parts = [TopicPartition(topic, p) for p in range(3)]
    try:
        truth = await produce_batches(broker.bootstrap, topic, {0: [3, 5], 1: [1, 1, 1]})
        listed = await lister.end_offsets(parts)
        got = await ends.highwaters(*parts)
        assert got == {parts[0]: truth[0], parts[1]: truth[1], parts[2]: 0}, f"listed by the broker: {listed}"
        # Between calls the probe fetches nothing (its partitions are paused), and one probe serves all calls.
        assert probes[0].paused() == {parts[0], parts[1]}
        # Reused probe, new records: the second call sees them (no high watermark kept from the first).
        truth.update(await produce_batches(broker.bootstrap, topic, {0: [4], 2: [2]}))
        got = await ends.highwaters(*parts)
        assert got == {parts[0]: truth[0], parts[1]: truth[1], parts[2]: truth[2]}
        assert len(probes) == 1 and probes[0].paused() == set(parts)
    finally:
        await ends.close()
        await lister.stop()


async def test_a_probe_that_cannot_fetch_leaves_the_listed_ends(broker, caplog):
    topic = await new_topic(broker.bootstrap, 1)
    await produce_batches(broker.bootstrap, topic, {0: [3]})
    lister = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await lister.start()
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    ends = FetchedEnds(lambda *tps: lister.end_offsets(list(tps)), lambda: AIOKafkaConsumer(bootstrap_servers=nowhere), timeout=2.0)
    part = TopicPartition(topic, 0)
    try:
        listed = await lister.end_offsets([part])
        assert await ends.highwaters(part) == listed
        assert "Could not check the broker's end offsets by a fetch" in caplog.text
    finally:
        await ends.close()
        await lister.stop()

"""Batching between the stages (streams.agents): pure framing, checked against a plain regrouping."""

import random

import orjson

from streams.agents import chunks, partition_batches
from streams.throughput import LatencyMeter
from streams.topics import partition_of


def routed_sample(seed: int, customers: int = 60) -> dict[str, list[dict]]:
    rnd = random.Random(seed)
    return {f"c-{i}": [{"event_id": f"c-{i}-{j}", "pad": "x" * rnd.randint(0, 400)} for j in range(rnd.randint(1, 6))]
            for i in range(customers)}


def test_partition_batches_put_every_customer_on_its_own_partition_once():
    for seed in range(5):
        routed = routed_sample(seed)
        got: dict[str, tuple[int, list[dict]]] = {}
        for partition, value in partition_batches(routed, partitions=4, max_bytes=2048):
            batch = orjson.loads(value)["batch"]
            for customer, records in batch.items():
                assert customer not in got, "a customer's records were split over two messages"
                got[customer] = (partition, records)
        assert got == {c: (partition_of(c.encode(), 4), r) for c, r in routed.items()}


def test_partition_batches_respect_the_size_limit_unless_one_customer_is_larger():
    routed = routed_sample(9)
    for _, value in partition_batches(routed, partitions=3, max_bytes=1500):
        batch = orjson.loads(value)["batch"]
        assert len(value) <= 1500 + 20 or len(batch) == 1


def test_chunks_keep_order_and_split_by_size():
    records = [{"i": i, "pad": "y" * (i % 50)} for i in range(300)]
    parts = chunks(records, 1000)
    assert len(parts) > 1
    assert [r for p in parts for r in orjson.loads(p)] == records
    assert all(len(p) <= 1000 + 2 or len(orjson.loads(p)) == 1 for p in parts)


def test_latency_meter_matches_each_event_to_the_first_update_that_counts_it():
    meter = LatencyMeter()
    sent = {"a": [0.0, 1.0, 2.0, 3.0], "b": [0.5]}
    for customer, times in sent.items():
        for t in times:
            meter.published(customer, t)
    # (customer, events counted, arrival): an update may cover several events; a stale one nothing
    updates = [("a", 2, 2.5), ("b", 1, 1.0), ("a", 1, 9.0), ("a", 4, 4.0)]
    for u in updates:
        meter.updated(*u)
    expected = []
    for customer, times in sent.items():
        for i, t in enumerate(times):
            first = next(at for c, n, at in updates if c == customer and n > i)  # first to count event i
            expected.append(first - t)
    assert sorted(meter.latencies) == sorted(expected)
    assert meter.pending == 0
    p = meter.percentiles()
    assert p["p50_ms"] == sorted(expected)[2] * 1000 and p["p999_ms"] == max(expected) * 1000


def test_the_production_table_store_resolves_to_faust_rocksdb_on_rocksdict():
    import faust.stores
    from faust.stores import rocksdb

    from streams.app import faust_store_url

    store = faust.stores.by_url(faust_store_url("rocksdict://"))
    assert store is rocksdb.Store and rocksdb.USE_ROCKSDICT  # the rocksdict library backs it
    assert faust_store_url("memory://") == "memory://"


def test_the_fetch_wait_reaches_the_attribute_aiokafka_starts_its_fetcher_with():
    """use_fetch_wait patches one faust-streaming method; an upgrade that renames either side fails here."""
    import inspect
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers import aiokafka as driver

    from streams.app import use_fetch_wait

    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=1500" in inspect.getsource(driver)  # the hard-coded wait this replaces
    original = driver.AIOKafkaConsumerThread._create_worker_consumer
    made = SimpleNamespace(_fetch_max_wait_ms=1500)  # what faust would build
    calls = []

    def build(self, transport):
        calls.append(transport)
        return made

    try:
        driver.AIOKafkaConsumerThread._create_worker_consumer = build
        use_fetch_wait(37)
        assert driver.AIOKafkaConsumerThread._create_worker_consumer(None, "transport") is made
        assert calls == ["transport"] and made._fetch_max_wait_ms == 37
    finally:
        driver.AIOKafkaConsumerThread._create_worker_consumer = original


async def test_a_batch_that_fails_to_be_passed_on_goes_to_the_dead_letters_whole(monkeypatch):
    # A bug after validation (here: framing the records) must not stop the stage on the same batch
    # at every restart: every message of the batch is dead-lettered with the error, to be replayed.
    from collections import Counter
    from types import SimpleNamespace

    import streams.agents as agents
    from streams.settings import Settings

    letters: list[dict] = []
    passed: list[bytes] = []

    async def dead_letter_send(key, value):
        letters.append(orjson.loads(value))

    async def identity_send(key, value):
        passed.append(value)

    wiring = SimpleNamespace(
        settings=Settings(),
        names=SimpleNamespace(source_of=lambda topic: "clickstream"),
        stats=SimpleNamespace(events_valid=Counter(), dead_letters=Counter()),
        deadletter_topic=SimpleNamespace(send=dead_letter_send),
        identity_events_topic=SimpleNamespace(send=identity_send),
    )
    now = 1_795_341_600_000
    values = [orjson.dumps({"event_id": f"e-{n}", "type": "page_view", "ts": now, "customer_id": f"c-{n}",
                            "channel": "web"}) for n in range(3)]
    events = [SimpleNamespace(value=v, message=SimpleNamespace(topic="t.events.clickstream", partition=0, offset=n,
                                                               key=None))
              for n, v in enumerate(values)]

    def broken(records, max_bytes):
        raise RuntimeError("framing bug")

    monkeypatch.setattr(agents, "chunks", broken)
    await agents.route_batch(wiring, events)
    assert passed == []
    assert [(d["offset"], d["error"]) for d in letters] == [(n, "internal error: RuntimeError: framing bug")
                                                           for n in range(3)]
    assert wiring.stats.events_valid["clickstream"] == 3  # validated before the failure

    monkeypatch.undo()
    letters.clear()
    await agents.route_batch(wiring, events)
    assert letters == [] and len(passed) == 1  # the same batch without the bug goes through

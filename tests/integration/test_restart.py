"""Duplicates change nothing across a worker restart: the profile table (with its dedup
window) is recovered from the changelog, so events delivered again after a ``kill -9``
are recognised and counted once."""

from __future__ import annotations

import random
import signal
import time
from datetime import datetime, timedelta, timezone

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from streams.admin import OutputFollower, producer, read_records
from tests.integration.conftest import make_stack
from tests.integration.oracle import compare, expected_profiles


def events_for(customers: int, per_customer: int, start: datetime, seed: int, tag: str) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    out = []
    for c in range(customers):
        for i in range(per_customer):
            ts = start + timedelta(minutes=rng.randrange(0, 60 * 24 * 5))
            kind = rng.choice(["page_view", "product_view", "purchase"])
            props = {"category": rng.choice(["books", "toys"])}
            if kind == "purchase":
                props["revenue"] = round(rng.uniform(5, 200), 2)
            out.append(("clickstream", {
                "event_id": f"{tag}-{c}-{i}", "type": kind, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "customer_id": f"restart-{c}", "channel": rng.choice(["web", "amazon"]), "properties": props,
            }))
    return out


def publish(stack, events) -> None:
    prod = producer(stack.settings)
    for source, event in events:
        prod.send(stack.names.source(source), key=event["customer_id"].encode(), value=orjson.dumps(event))
    prod.flush()
    prod.close()


def wait_applied(follower: OutputFollower, stack, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while follower.events_applied < count:
        assert stack.worker.proc.poll() is None, stack.worker.tail()
        assert time.monotonic() < deadline, f"only {follower.events_applied} of {count} applied"
        follower.poll(1000)


def test_events_delivered_again_after_kill_9_are_counted_once(stack):
    start = datetime.now(timezone.utc) - timedelta(days=6)
    first = events_for(30, 10, start, seed=1, tag="a")
    publish(stack, first)
    follower = OutputFollower(stack.settings)
    wait_applied(follower, stack, len(first))
    versions_before = {k: u["version"] for k, u in follower.latest.items()}

    stack.worker.proc.send_signal(signal.SIGKILL)
    stack.worker.proc.wait(30)
    stack.start_worker("worker-2.log")

    # Everything again (as a producer retry or a replay would), plus one new event per customer.
    second = events_for(30, 1, start, seed=2, tag="b")
    publish(stack, first + second)
    wait_applied(follower, stack, len(first) + len(second))
    time.sleep(1.5)
    follower.poll(1000)

    expected = expected_profiles(first + second)
    assert sorted(follower.latest) == sorted(expected)
    for key, want in expected.items():
        profile = follower.latest[key]["profile"]
        assert compare(want, profile) == [], key
        # One new message applied per customer: exactly one version more, however many duplicates came.
        assert profile["version"] == versions_before[key] + 1, key
    assert follower.events_applied == len(first) + len(second)

    client = redis.Redis.from_url(stack.settings.redis_url)
    for key, update in follower.latest.items():
        assert int(client.hget(f"{stack.settings.redis_key_prefix}profile:{key}", "version")) == update["version"]
    client.close()
    follower.close()


def test_the_worker_survives_sigterm_and_resumes(stack):
    """SIGTERM stops cleanly (exit 0), and a new worker resumes from the committed offsets."""
    follower = OutputFollower(stack.settings)
    follower.poll(2000)
    applied = follower.events_applied
    assert stack.worker.stop() == 0, stack.worker.tail()
    third = events_for(5, 2, datetime.now(timezone.utc) - timedelta(days=6), seed=3, tag="c")
    publish(stack, third)  # published while no worker runs
    stack.start_worker("worker-3.log")
    wait_applied(follower, stack, applied + len(third))
    assert follower.events_applied == applied + len(third)
    follower.close()


def read_topic(stack, topic: str) -> list[bytes | None]:
    """Every value on ``topic``, from the beginning, read by a plain consumer."""
    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    values = [record.value for record in consumer]
    consumer.close()
    return values


def taught(stack) -> list[dict]:
    """The feature vectors on the segment learner's topic."""
    vectors = []
    for value in read_topic(stack, stack.names.segment_features):
        message = orjson.loads(value)
        vectors.extend(message.get("batch", [message] if "scope" in message else []))
    return vectors


def test_sigterm_sends_the_queued_feature_vectors_to_the_learner(broker, redis_server, tmp_path):
    """The learner's samples wait in the worker (OMNIPROFILE_SEGMENT_TEACH_*); a clean stop sends
    them. With the timer and the size trigger out of reach, nothing reaches the learning topic while
    the worker runs; after SIGTERM, every profile version with 5 events or more (learn rate 1: each
    teaches) has its vector of scope ``all`` there, counted from ``profiles.updates``."""
    own = make_stack(broker, redis_server, tmp_path, OMNIPROFILE_SEGMENT_TEACH_FLUSH_SECONDS="3600",
                     OMNIPROFILE_SEGMENT_TEACH_BATCH="100000", OMNIPROFILE_SEGMENT_LEARN_RATE="1")
    try:
        events = events_for(8, 9, datetime.now(timezone.utc) - timedelta(days=6), seed=4, tag="t")
        publish(own, events)
        follower = OutputFollower(own.settings)
        wait_applied(follower, own, len(events))
        follower.close()
        assert taught(own) == []
        assert own.worker.stop() == 0, own.worker.tail()
    finally:
        own.worker.stop()
    updates = [orjson.loads(v) for v in read_topic(own, own.names.updates) if v is not None]
    teaching_versions = [u for u in updates if u["profile"]["events"] >= 5]
    assert teaching_versions, "no profile reached 5 events: the test teaches nothing"
    vectors = [v for v in taught(own) if v["scope"] == "all"]
    assert len(vectors) == len(teaching_versions)


def append_old_then_last(stack, copies: int = 150) -> dict[str, tuple[int, int]]:
    """For one customer per partition of the profiles changelog, append its first state
    ``copies`` times and then its last state, as one record batch: what a worker leaves when its
    last changelog writes of a partition go out together. The last record per key stays what it
    was; a recovery that stops at an end offset short of the batch (Tansu lists a batch's first
    offset + 1) once the other changelogs are read restores an old state instead. The copies make
    that partition the last one read (the identity graph's changelog is longer than the others).
    Returns customer -> (partition, offset of the appended last state)."""
    topic = f"{stack.settings.app_id}-profiles-changelog"
    states: dict[tuple[int, str], list[bytes]] = {}
    for message in read_records(stack.settings, topic, idle_ms=600):
        if message.key is not None and message.value is not None:
            states.setdefault((message.partition, message.key.decode()), []).append(message.value)
    chosen = {}
    for (partition, key), values in sorted(states.items()):
        if len(values) >= 2 and partition not in {p for p, _, _ in chosen.values()}:
            chosen[key] = (partition, values[0], values[-1])
    prod = producer(stack.settings, linger_ms=500, batch_size=4 * 1024 * 1024, max_request_size=16 * 1024 * 1024)
    sent = {}
    for key, (partition, old, last) in chosen.items():
        for _ in range(copies):
            prod.send(topic, key=key.encode(), value=old, partition=partition)
        sent[key] = (partition, prod.send(topic, key=key.encode(), value=last, partition=partition))
    prod.flush()
    prod.close()
    return {key: (partition, future.get(10).offset) for key, (partition, future) in sent.items()}


def listed_ends(stack, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: end for tp, end in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def test_a_restart_recovers_the_whole_last_changelog_batch(broker, redis_server, tmp_path):
    """After a clean stop the offsets are committed, so nothing is processed again: the restarted
    worker has only its tables' changelogs, and every customer's state must come back whole, also
    when its last record is in the tail of a partition's last multi-record batch, past the end
    offset Tansu lists (streams.endoffsets). One more event per customer after the restart: each
    profile then holds all its events, as the oracle recomputes them from everything sent. Failed
    (4 of 4 profiles at 5 of 7 events) before the worker checked end offsets by a fetch."""
    own = make_stack(broker, redis_server, tmp_path)
    start = datetime.now(timezone.utc) - timedelta(days=6)
    first = events_for(40, 4, start, seed=11, tag="t1")
    again = events_for(40, 2, start, seed=12, tag="t2")
    follower = OutputFollower(own.settings)
    try:
        publish(own, first)
        wait_applied(follower, own, len(first))
        publish(own, again)
        wait_applied(follower, own, len(first) + len(again))
        assert own.worker.stop() == 0, own.worker.tail()
        tails = append_old_then_last(own)
        assert len(tails) == own.settings.partitions, f"a customer with two states on every partition: {tails}"
        ends = listed_ends(own, f"{own.settings.app_id}-profiles-changelog")
        own.start_worker("worker-2.log")
        after = events_for(40, 1, start, seed=13, tag="t3")
        publish(own, after)
        total = len(first) + len(again) + len(after)
        # Not wait_applied: a profile that lost state never reaches the total, and the comparison
        # below says which ones and by how much.
        deadline = time.monotonic() + 60
        while follower.events_applied < total and time.monotonic() < deadline:
            assert own.worker.proc.poll() is None, own.worker.tail()
            follower.poll(1000)
        expected = expected_profiles(first + again + after)
        lost = {key: (follower.latest[key]["profile"]["events"], want["events"])
                for key, want in expected.items() if compare(want, follower.latest[key]["profile"])}
        assert not lost, (f"{len(lost)} profiles lost state across the restart (published events, expected): "
                          f"{lost}; last states appended at (partition, offset) {tails}, listed end offsets {ends}")
    finally:
        follower.close()
        own.worker.stop()

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

from streams.admin import OutputFollower, producer
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

"""Where the publish-to-update latency goes, stage by stage (docs/performance.md, "Latency by stage").

Starts an embedded Tansu broker, Redis and one worker, drives single-event page views at a fixed
rate with the latency driver of ``omniprofile bench throughput``, then reads the topics back and
splits each event's way by the Kafka timestamps the producers set when they sent each message:

    input topic -> identity-events     (the validator: batch window, fetch, validation)
    identity-events -> events-by-customer (identity resolution)
    events-by-customer -> profiles.updates (the profile stage: fold, score, publish)

The arrival at the driver's consumer is the bench's own end-to-end figure, printed first.

    .venv/bin/python scripts/latency_stages.py RATE SECONDS [OMNIPROFILE_NAME=VALUE ...]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition

from streams.admin import ensure_topics
from streams.commands import Worker, worker_env
from streams.local import RedisServer, Tansu
from streams.settings import settings_from_env
from streams.throughput import drive_latency, embedded_env
from streams.topics import TopicNames


def read(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records = list(consumer)
    consumer.close()
    return records


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    n = len(values)
    if not n:
        return "no events"
    at = lambda q: values[min(n - 1, int(n * q))]  # noqa: E731
    return f"{n:>6,}  {at(0.5):>7.0f}  {at(0.9):>7.0f}  {at(0.99):>7.0f}  {values[-1]:>7.0f}"


def stages(bootstrap: str, names: TopicNames) -> dict[str, list[float]]:
    """Per-event milliseconds spent between the stages, from the messages' timestamps."""
    sent = {orjson.loads(r.value)["event_id"]: r.timestamp for r in read(bootstrap, names.source("clickstream"))}
    resolving: dict[str, int] = {}
    for r in read(bootstrap, names.identity_events):
        for record in orjson.loads(r.value).get("records", []):
            resolving.setdefault(record["event_id"], r.timestamp)
    routed: dict[str, int] = {}
    for r in read(bootstrap, names.by_customer):
        value = orjson.loads(r.value)
        groups = value["batch"].values() if isinstance(value, dict) and "batch" in value else (
            [value] if isinstance(value, list) else [])
        for records in groups:
            for record in records:
                routed.setdefault(record["event_id"], r.timestamp)
    published: dict[tuple[str, int], int] = {}
    for r in read(bootstrap, names.updates):
        if r.value is not None:
            update = orjson.loads(r.value)
            published.setdefault((update["customer_id"], update["profile"]["events"]), r.timestamp)
    # The driver's event ids are "<customer>-<n>"; a customer's k-th event is done by the update
    # whose profile counts k events.
    order: dict[str, list[str]] = {}
    for event_id in sorted(sent, key=sent.__getitem__):
        order.setdefault(event_id.rsplit("-", 1)[0], []).append(event_id)
    profile_stage = [published[(c, k + 1)] - routed[e] for c, ids in order.items() for k, e in enumerate(ids)
                     if (c, k + 1) in published and e in routed]
    return {
        "input -> identity-events (validation)": [resolving[e] - t for e, t in sent.items() if e in resolving],
        "identity-events -> events-by-customer (identity)": [routed[e] - t for e, t in resolving.items() if e in routed],
        "events-by-customer -> profiles.updates (profile)": profile_stage,
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    rate, seconds = float(argv[0]), float(argv[1])
    extra = dict(item.split("=", 1) for item in argv[2:])
    broker, redis_server = Tansu().start(), RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="omniprofile-stages-"))
    env = {**embedded_env(broker.bootstrap, redis_server.url, "stages."),
           "OMNIPROFILE_DATA_DIR": str(workdir / "data"), **extra}
    settings = settings_from_env(env)
    names = TopicNames(settings.topic_prefix)
    ensure_topics(settings, names.public + (names.by_customer,))
    worker = Worker(worker_env(env), workdir / "worker.log")
    try:
        worker.wait_ready()
        pids = {"worker": worker.proc.pid, "broker": broker.proc.pid}
        [row] = asyncio.run(drive_latency(broker.bootstrap, names, [rate], seconds, 120, worker.log_path, pids))
        print(f"{rate:,.0f} events/s for {seconds:.0f} s: end to end p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
              f"p999 {row['p999_ms']:.0f} ms; CPU (share of a core) worker {row['worker_cpu']:.0%}, "
              f"broker {row['broker_cpu']:.0%}, driver {row['driver_cpu']:.0%}")
        print(f"{'stage':<50}  {'events':>6}  {'p50 ms':>7}  {'p90 ms':>7}  {'p99 ms':>7}  {'max ms':>7}")
        for stage, values in stages(broker.bootstrap, names).items():
            print(f"{stage:<50}  {percentiles(values)}")
    finally:
        worker.stop()
        broker.stop()
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

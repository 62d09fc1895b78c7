"""Plain Kafka clients (kafka-python) for everything outside the Faust worker.

Topic creation, publishing generated events, reading output topics back: used by the
command line, the demo and the tests. Kept apart from the worker so that each side can
check the other.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.settings import ConfigError, Settings
from streams.topics import TopicNames

log = logging.getLogger(__name__)


def client_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_list,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()  # type: ignore[union-attr]
    if settings.kafka_ssl_cafile:
        options["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return options


def check_kafka(settings: Settings, timeout: float = 5.0) -> None:
    """Fail fast, with the fix in the message, when no bootstrap server accepts a connection.

    A TCP check, on purpose: the Kafka clients retry for long before they give up.
    """
    errors = []
    for server in settings.bootstrap_list:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except OSError as exc:
            errors.append(f"{server}: {exc.strerror or exc}")
    raise ConfigError(
        f"no Kafka broker answers at {settings.kafka_bootstrap_servers} ({'; '.join(errors)}); start one, "
        "or set OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS to the host:port of a running broker"
    )


def ensure_topics(settings: Settings, topics: Iterable[str], partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    names = TopicNames(settings.topic_prefix)
    # The latest profile per customer, summary per scope, lineage per old id; erasure tombstones remove them.
    compacted = {names.updates, names.segment_summaries, names.identity}
    admin = KafkaAdminClient(**client_options(settings))
    try:
        existing = set(admin.list_topics())
        wanted = [t for t in topics if t not in existing]
        created = []
        for topic in wanted:
            try:
                configs = {"cleanup.policy": "compact"} if topic in compacted else {}
                admin.create_topics(
                    [NewTopic(topic, partitions or settings.partitions, settings.replication_factor, topic_configs=configs)]
                )
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    options = {"linger_ms": 20, "batch_size": 256 * 1024, "acks": 1, **overrides}
    return KafkaProducer(**client_options(settings), **options)


def read_topic(
    settings: Settings, topic: str, idle_ms: int = 1500, timeout_s: float = 60.0
) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a topic from the beginning, until it has gone quiet (:func:`read_records`)."""
    for message in read_records(settings, topic, idle_ms, timeout_s):
        yield message.key, message.value


def read_records(settings: Settings, topic: str, idle_ms: int = 1500, timeout_s: float = 60.0) -> Iterator[Any]:
    """Every record of a topic (kafka-python's ``ConsumerRecord``: partition, offset, key, value,
    ...) from the beginning, until it has gone quiet.

    Reads at least up to the end offsets reported at the start (so a slow partition is never
    taken for an empty one), then on until no message came for ``idle_ms``: Tansu can report
    an end offset short of the last multi-record batch, so the end offsets alone are not
    enough. Raises ``TimeoutError`` after ``timeout_s``.
    """
    consumer = KafkaConsumer(
        **client_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while True:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                yield from records
            now = time.monotonic()
            if batch:
                quiet_since = now
            behind = {tp.partition: end - consumer.position(tp) for tp, end in ends.items()
                      if consumer.position(tp) < end}
            if not behind and now - quiet_since >= idle_ms / 1000:
                return
            if now > deadline:
                raise TimeoutError(f"{topic}: not read to its end after {timeout_s:.0f} s (messages left by "
                                   f"partition: {behind}); is the broker at {settings.kafka_bootstrap_servers} up?")
    finally:
        consumer.close()


class OutputFollower:
    """Follows ``profiles.updates`` and ``profiles.deadletter`` from the beginning.

    Keeps the latest ProfileUpdate per live profile (a tombstone removes it: the profile was
    merged into another or erased) and every dead letter, so a caller can
    tell when everything it published has been processed (the demo, the tests).
    """

    def __init__(self, settings: Settings) -> None:
        names = TopicNames(settings.topic_prefix)
        self.updates_topic = names.updates
        self.deadletter_topic = names.deadletter
        self.latest: dict[str, Any] = {}
        self.dead_letters: list[dict[str, Any]] = []
        self.tombstones: set[str] = set()  # keys whose latest record is a tombstone
        self.updates_seen = 0
        self.last_update_ms = 0  # the latest timestamp (set by the worker's producer) of an update read
        self._consumer = KafkaConsumer(
            **client_options(settings),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        topics = (self.updates_topic, self.deadletter_topic)
        parts = []
        for topic in topics:
            for p in sorted(self._consumer.partitions_for_topic(topic) or ()):
                parts.append(TopicPartition(topic, p))
        self._consumer.assign(parts)
        self._consumer.seek_to_beginning()

    def poll(self, timeout_ms: int = 200) -> int:
        """Read what has arrived; return how many records."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=50_000)
        count = 0
        for tp, records in batches.items():
            for record in records:
                count += 1
                if tp.topic == self.updates_topic:
                    self.updates_seen += 1
                    self.last_update_ms = max(self.last_update_ms, record.timestamp)
                    key = record.key.decode()
                    if record.value is None:  # merged into another profile, or erased
                        self.latest.pop(key, None)
                        self.tombstones.add(key)
                        continue
                    self.tombstones.discard(key)
                    update = orjson.loads(record.value)
                    held = self.latest.get(key)
                    if held is None or update["version"] >= held["version"]:
                        self.latest[key] = update
                else:
                    self.dead_letters.append(orjson.loads(record.value))
        return count

    @property
    def events_applied(self) -> int:
        return sum(u["profile"]["events"] for u in self.latest.values() if u)

    def close(self) -> None:
        self._consumer.close()

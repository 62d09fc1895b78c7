"""Plain Kafka clients (kafka-python) for everything outside the Faust worker.

Topic creation, publishing generated events, reading output topics back: used by the
command line, the demo and the tests. Kept apart from the worker so that each side can
check the other.
"""

from __future__ import annotations

import logging
import socket
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
    compacted = {TopicNames(settings.topic_prefix).updates}  # the latest profile per customer
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


def read_topic(settings: Settings, topic: str, idle_ms: int = 2000) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a topic from the beginning, until no message came for ``idle_ms``."""
    consumer = KafkaConsumer(
        **client_options(settings),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=idle_ms,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        for message in consumer:
            yield message.key, message.value
    finally:
        consumer.close()


def latest_by_key(settings: Settings, topic: str, idle_ms: int = 2000) -> dict[str, Any]:
    """The last JSON value per key of a topic (None for a tombstone)."""
    latest: dict[str, Any] = {}
    for key, value in read_topic(settings, topic, idle_ms):
        latest[key.decode() if key else ""] = orjson.loads(value) if value else None
    return latest

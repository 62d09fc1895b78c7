"""The Faust application: configuration, topics, tables and the wiring of the agents.

``create_app(settings)`` builds everything explicitly from a :class:`~streams.settings.Settings`
and does no I/O; starting it is the worker's job (:mod:`streams.cli`).
"""

from __future__ import annotations

import gc
import ssl
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import faust
from faust.tables import TableManager

from streams.endoffsets import FetchedEnds
from streams.flushing import FlushGuard, guard_flush
from streams.metrics import WorkerStats
from streams.redelivery import RedeliveryGuard, guard_redelivery, seek_before_streaming
from streams.settings import Settings
from streams.sinks import RedisIdentitySink, RedisJourneySink, RedisLayout, RedisProfileSink
from streams.topics import TopicNames

PROFILES_TABLE = "profiles"
SEGMENT_MODELS_TABLE = "segment-models"
IDENTITY_TABLE = "identity-graph"


@dataclass(frozen=True)
class Wiring:
    """Everything the agents touch, created once per app."""

    settings: Settings
    names: TopicNames
    input_topic: faust.TopicT
    by_customer_topic: faust.TopicT
    updates_topic: faust.TopicT
    deadletter_topic: faust.TopicT
    segments_topic: faust.TopicT
    summaries_topic: faust.TopicT
    learn_topic: faust.TopicT
    tallies_topic: faust.TopicT
    hops_topic: faust.TopicT
    journey_topic: faust.TopicT
    identity_events_topic: faust.TopicT
    erasure_topic: faust.TopicT
    identity_topic: faust.TopicT
    audit_topic: faust.TopicT
    profiles: faust.Table
    identity: faust.Table
    segment_models: faust.GlobalTable
    journey_daily: Any  # windowed tables (faust WindowWrapper): counter -> value per window
    journey_totals: faust.Table
    sink: RedisProfileSink
    journey_sink: RedisJourneySink
    identity_sink: RedisIdentitySink
    teaching: list = field(default_factory=list)  # feature vectors queued for the learner (streams.agents.teach)
    # Erasures waiting for Redis (streams.agents.resend_erasures): profile keys left as erased markers,
    # and erasure requests the identity stage put off (request id -> request).
    erasing: set = field(default_factory=set)
    deferred_erasures: dict = field(default_factory=dict)
    stats: WorkerStats = field(default_factory=WorkerStats)  # counters for /metrics (streams.metrics)


def kafka_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust credentials for the configured security protocol (None for PLAINTEXT)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if protocol.startswith("SASL"):
        assert settings.kafka_sasl_username and settings.kafka_sasl_password  # checked by load_settings
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


def journey_tables(app: faust.App, settings: Settings) -> dict[str, Any]:
    """The journey counters (transitions, conversions, attribution credit) per event-time
    window of a whole UTC day, and all-time totals. The 7-day windows are sums of daily ones."""
    day = timedelta(days=1)
    retention = timedelta(days=settings.journey_retention_days)
    # key_type str: Faust serialises these tables as JSON (windowed keys are (key, (start, end))).
    options = {"default": float, "partitions": settings.partitions, "key_type": str, "value_type": float}
    return {
        "journey_daily": app.Table("journeys-daily", help="journey counters per day", options=table_options(settings),
                                   **options)
        .tumbling(day, expires=retention)
        .relative_to_stream(),
        "journey_totals": app.Table("journeys-total", help="journey counters since the start",
                                    options=table_options(settings), **options),
    }


def faust_store_url(table_store: str) -> str:
    """Faust's URL for the configured table store.

    faust-streaming registers no ``rocksdict`` scheme (``rocksdict://`` resolved to the Python
    module and the worker failed at start); its ``rocksdb`` store runs on the rocksdict library
    when that is installed, as it is here.
    """
    if table_store.startswith("rocksdict://"):
        return "rocksdb://" + table_store.removeprefix("rocksdict://")
    return table_store


def table_options(settings: Settings) -> dict[str, Any] | None:
    """RocksDB memory per table partition (each partition is a database of its own), or None for
    the memory store. Faust's defaults (2 GB block cache, 2.5 GB with the compressed one, three
    64 MB write buffers) are per database, so they bound nothing useful on a worker with 16 of them.
    At 100,000 customers the two made no measurable difference (docs/performance.md); the memory
    growth found then was Faust's changelog buffer (streams.agents.drain_changelog)."""
    if not settings.table_store.startswith(("rocksdb://", "rocksdict://")):
        return None
    cache = settings.rocksdb_block_cache_mb * 1024 * 1024
    return {
        "block_cache_size": cache,
        "block_cache_compressed_size": max(1024 * 1024, cache // 4),
        "write_buffer_size": settings.rocksdb_write_buffer_mb * 1024 * 1024,
        "max_write_buffer_number": 2,
    }


_FETCH_WAIT_MS: list[int] = []


def use_fetch_wait(ms: int) -> None:
    """Make the worker's consumer wait at most ``ms`` for data in a fetch.

    faust-streaming 0.15.3 builds its consumer with ``fetch_max_wait_ms=1500`` and no setting to
    change it. Apache Kafka answers a waiting fetch as soon as data arrives, so there it only bounds
    an idle poll; Tansu answers a fetch over many partitions late, by up to the wait (a fetch of
    one partition comes back as soon as data arrives), which put up to 1.5 s on every hop between
    the stages. The value is set on the aiokafka consumer before it starts.
    """
    from faust.transport.drivers import aiokafka as driver

    _FETCH_WAIT_MS[:] = [ms]
    cls = driver.AIOKafkaConsumerThread
    if getattr(cls._create_worker_consumer, "omniprofile_fetch_wait", False):
        return
    create = cls._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        consumer._fetch_max_wait_ms = _FETCH_WAIT_MS[0]
        return consumer

    create_worker_consumer.omniprofile_fetch_wait = True  # type: ignore[attr-defined]
    cls._create_worker_consumer = create_worker_consumer


class PromptTableManager(TableManager):
    """faust's table manager sleeps a fixed second at start so that tables declared late can still
    register; every table here is declared by ``create_app`` before the worker starts, so it goes
    straight on (one second off every worker start and restart)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class OmniApp(faust.App):
    """faust.App whose consumer re-delivers what a stream skipped (streams.redelivery) and takes
    end offsets as a fetch reports them (streams.endoffsets), and whose producer buffer is flushed
    in full before a commit and at stop (streams.flushing)."""

    redelivery: RedeliveryGuard | None = None
    flush_guard: FlushGuard | None = None
    fetched_ends: FetchedEnds | None = None
    fetch_wait_ms: int = 500  # the end-offset probe's fetch wait (create_app sets the worker's)

    def _new_producer(self) -> Any:
        producer = super()._new_producer()
        self.flush_guard = guard_flush(producer)  # commits and the stop wait for the table's records
        return producer

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        self.redelivery = guard_redelivery(consumer, self.topics.acks_enabled_for, self.flow_control)
        seek_before_streaming(consumer, self.topics.acks_enabled_for)
        self.fetched_ends = FetchedEnds(consumer.highwaters, self._new_end_probe)
        consumer.highwaters = self.fetched_ends.highwaters  # table recovery, lag, resync
        return consumer

    def _new_end_probe(self) -> Any:
        """The consumer (no group, same broker and credentials) whose fetches check end offsets."""
        import aiokafka
        from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

        conf = self.conf
        return aiokafka.AIOKafkaConsumer(
            client_id=f"{conf.broker_client_id}-end-offsets",
            bootstrap_servers=server_list(conf.broker, 9092),
            request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
            enable_auto_commit=False,
            auto_offset_reset="latest",  # an offset no longer kept: just the high watermark
            fetch_max_wait_ms=self.fetch_wait_ms,
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )

    async def on_stop(self) -> None:
        await super().on_stop()
        if self.fetched_ends is not None:
            await self.fetched_ends.close()


def create_app(settings: Settings) -> faust.App:
    """Build the omniprofile Faust app (topics, table, agents, timers); no I/O here."""
    use_fetch_wait(settings.kafka_fetch_max_wait_ms)
    app = OmniApp(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_list],
        broker_credentials=kafka_credentials(settings),
        store=faust_store_url(settings.table_store),
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        # No Faust web server (table pages, stats): /health and /metrics are served by
        # streams.metrics on OMNIPROFILE_WEB_HOST:OMNIPROFILE_WEB_PORT instead.
        web_enabled=False,
        TableManager=PromptTableManager,
        web_tables_enabled=False,
        # Large messages must reach the validator (and the dead-letter topic), not stall the fetch.
        consumer_max_fetch_size=max(4 * 1024 * 1024, 2 * settings.max_event_bytes),
        producer_max_request_size=max(1024 * 1024, 2 * settings.max_event_bytes),
        consumer_auto_offset_reset="earliest",
        # A group join waits up to about half the session timeout for other members on Tansu.
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout / 3),
        # Faust refuses to recover a table whose local offset is past the broker's end offset.
        # Tansu lists the end offset of a multi-record batch as its first offset + 1, so the
        # embedded setups (demo, tests) turned the check off; keep it on with Apache Kafka. (The
        # ends faust sees are now checked by a fetch, see _new_consumer; the setting stays.)
        recovery_consistency_check=settings.recovery_consistency_check,
    )
    app.fetch_wait_ms = settings.kafka_fetch_max_wait_ms
    names = TopicNames(settings.topic_prefix)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    wiring = Wiring(
        settings=settings,
        names=names,
        input_topic=app.topic(*names.inputs, **raw),
        by_customer_topic=app.topic(names.by_customer, partitions=settings.partitions, internal=True, **raw),
        updates_topic=app.topic(names.updates, **raw),
        deadletter_topic=app.topic(names.deadletter, **raw),
        segments_topic=app.topic(names.segments, **raw),
        summaries_topic=app.topic(names.segment_summaries, **raw),
        # One partition: every model is learned in one place, by one learner.
        learn_topic=app.topic(names.segment_features, partitions=1, internal=True, **raw),
        # One partition: the per-partition tallies meet in one place to be merged.
        tallies_topic=app.topic(names.segment_tallies, partitions=1, internal=True, **raw),
        hops_topic=app.topic(names.hops, **raw),
        # Keyed by counter; each message's timestamp is the event-time day its value belongs to.
        journey_topic=app.topic(names.journey_deltas, partitions=settings.partitions, internal=True, **raw),
        # One partition: the identity graph is one connected whole, resolved in one place, in order.
        identity_events_topic=app.topic(names.identity_events, partitions=1, internal=True, **raw),
        erasure_topic=app.topic(names.erasure_requests, **raw),
        identity_topic=app.topic(names.identity, **raw),
        audit_topic=app.topic(names.audit, **raw),
        profiles=app.Table(
            PROFILES_TABLE,
            options=table_options(settings),
            default=None,
            partitions=settings.partitions,
            key_type=bytes,  # raw keys on the changelog; values are JSON (never pickle)
            help="Profile state per customer (models.profile); the source of truth.",
        ),
        identity=app.Table(
            IDENTITY_TABLE,
            options=table_options(settings),
            default=None,
            partitions=1,
            key_type=bytes,
            help="The identity graph (models.identity): identifier -> group, group -> members; suppressions.",
        ),
        segment_models=app.GlobalTable(
            SEGMENT_MODELS_TABLE,
            options=table_options(settings),
            default=None,
            partitions=1,
            key_type=bytes,
            help="Segment model snapshots per scope (models.segments, JSON), read by every worker.",
        ),
        **journey_tables(app, settings),
        sink=RedisProfileSink(
            settings.redis_url,
            RedisLayout(settings.redis_key_prefix),
            socket_timeout=settings.redis_socket_timeout,
            flush_max=settings.redis_flush_max,
            json_codec=settings.redis_json_codec,
        ),
        identity_sink=RedisIdentitySink(
            settings.redis_url, RedisLayout(settings.redis_key_prefix), socket_timeout=settings.redis_socket_timeout
        ),
        journey_sink=RedisJourneySink(
            settings.redis_url,
            RedisLayout(settings.redis_key_prefix),
            settings.journey_retention_days,
            socket_timeout=settings.redis_socket_timeout,
        ),
    )
    from streams.agents import register_agents

    register_agents(app, wiring)

    @app.task
    async def freeze_startup_objects() -> None:
        # Runs once the tables are recovered. What exists by now (modules, classes, the app, the
        # recovered tables) lives as long as the worker; frozen, it is no longer walked by every
        # full collection of the cyclic garbage collector, which held the event loop, and every
        # stage's latency with it, for tens of milliseconds per pass (docs/performance.md).
        gc.collect()
        gc.freeze()

    return app

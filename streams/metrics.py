"""What operators see of a worker: ``/health`` and Prometheus ``/metrics`` over HTTP.

The figures are read when scraped, from counters the worker keeps anyway (Faust's monitor,
the Redis sinks, the serving-view check) plus a few of its own (events and dead letters by
kind), so the hot path pays almost nothing. Consumer lag per partition comes from the
broker: every ``LAG_INTERVAL`` seconds the worker asks for the end offsets of its assigned
partitions and subtracts the committed ones.

The server binds ``OMNIPROFILE_WEB_HOST`` (default 127.0.0.1) on ``OMNIPROFILE_WEB_PORT``
(default 6066; 0 turns it off). It serves nothing else: no table pages, no Faust web views.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

LAG_INTERVAL = 10.0


@dataclass
class WorkerStats:
    """Counters the agents keep (plain numbers, cheap to bump)."""

    events_valid: Counter = field(default_factory=Counter)  # source -> valid events
    dead_letters: Counter = field(default_factory=Counter)  # reason kind -> dead letters
    merge_double_counted: int = 0  # events counted under both ids of a merge (models.stitching.overlap)
    merge_recounted: int = 0  # as many, counted once by a given-up hold's rewind (models.stitching.absorb)
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Health:
    status: str  # ok, starting, rebalancing, stalled
    http_status: int
    detail: str


def judge_health(*, started: bool, recovering: bool, rebalancing: bool, input_lag: int,
                 idle_seconds: float, stall_seconds: float) -> Health:
    """The worker's health from what it knows of itself (pure, unit-tested).

    ``stalled`` (HTTP 503, for a liveness probe) means input is waiting but nothing was read for
    ``stall_seconds``; the other states answer 200 and say whether the worker is ready.

    >>> judge_health(started=True, recovering=False, rebalancing=False, input_lag=5, idle_seconds=300,
    ...              stall_seconds=120).status
    'stalled'
    >>> judge_health(started=True, recovering=False, rebalancing=False, input_lag=0, idle_seconds=300,
    ...              stall_seconds=120).http_status
    200
    """
    if not started or recovering:
        return Health("starting", 200, "recovering tables" if recovering else "starting")
    if rebalancing:
        return Health("rebalancing", 200, "partitions are being reassigned")
    if input_lag > 0 and idle_seconds >= stall_seconds:
        return Health("stalled", 503, f"{input_lag} input messages waiting and none read for {idle_seconds:.0f} s")
    return Health("ok", 200, f"{input_lag} input messages waiting")


class WorkerMetrics:
    """Reads a running worker's figures; serves them as JSON (health) and Prometheus text."""

    def __init__(self, app: Any, wiring: Any, serving: Any, learner: Any = None) -> None:
        self.app = app
        self.wiring = wiring
        self.serving = serving
        self.learner = learner
        self.lag: dict[tuple[str, int], int] = {}
        self.last_received = 0
        self.last_progress = time.monotonic()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # --- state kept up to date by a timer ----------------------------------------------------

    async def refresh(self) -> None:
        """Consumer lag from the broker's end offsets; progress of the input."""
        monitor = self.app.monitor
        received = monitor.messages_received_total
        if received != self.last_received:
            self.last_received = received
            self.last_progress = time.monotonic()
        try:
            assigned = [tp for tp in self.app.consumer.assignment() if not tp.topic.endswith("-changelog")]
            if not assigned:
                self.lag = {}
                return
            ends = await self.app.consumer.highwaters(*assigned)
        except Exception as exc:  # noqa: BLE001 - a metric must never hurt the worker
            log.warning("Could not read end offsets for the lag metric: %r", exc)
            return
        committed = monitor.tp_committed_offsets
        lag = {}
        for tp, end in ends.items():
            done = committed.get(tp)
            # Committed offsets are the next offset to read; a partition never committed lags by all of it.
            lag[(tp.topic, tp.partition)] = max(0, int(end) - int(done if done is not None else 0))
        self.lag = lag

    def input_lag(self) -> int:
        inputs = set(self.wiring.names.inputs)
        return sum(v for (topic, _), v in self.lag.items() if topic in inputs)

    def health(self) -> Health:
        app = self.app
        started = bool(getattr(app, "started", True)) and app.tables.recovery.completed.is_set()
        return judge_health(
            started=started,
            recovering=bool(getattr(app, "in_recovery", False)),
            rebalancing=bool(getattr(app, "rebalancing", False)),
            input_lag=self.input_lag(),
            idle_seconds=time.monotonic() - self.last_progress,
            stall_seconds=self.wiring.settings.stall_seconds,
        )

    def health_document(self) -> dict:
        h = self.health()
        actives = sorted(f"{tp.topic}[{tp.partition}]" for tp in self.app.assignor.assigned_actives())
        return {
            "status": h.status,
            "ready": h.status == "ok",
            "detail": h.detail,
            "uptime_seconds": round(time.time() - self.wiring.stats.started_at, 1),
            "assigned_partitions": len(actives),
            "rebalances": int(getattr(self.app, "rebalancing_count", 0)),
            "input_lag": self.input_lag(),
            "seconds_since_input": round(time.monotonic() - self.last_progress, 1),
            "redis_pending": self._redis_pending(),
            "resync_backlog": self.serving.backlog,
        }

    def _redis_pending(self) -> int:
        w = self.wiring
        return w.sink.pending + w.journey_sink.pending + w.identity_sink.pending

    # --- the Prometheus collector ----------------------------------------------------------------

    def collect(self) -> Iterable[Any]:
        monitor = self.app.monitor
        w = self.wiring
        received = CounterMetricFamily("omniprofile_messages_in", "Messages read, by topic (input and internal)",
                                       labels=["topic"])
        for topic, n in sorted(monitor.messages_received_by_topic.items()):
            received.add_metric([topic], n)
        yield received
        sent = CounterMetricFamily("omniprofile_messages_out", "Records produced, by topic", labels=["topic"])
        for topic, n in sorted(monitor.messages_sent_by_topic.items()):
            sent.add_metric([topic], n)
        yield sent
        valid = CounterMetricFamily("omniprofile_events_valid", "Valid events read, by source", labels=["source"])
        for source, n in sorted(w.stats.events_valid.items()):
            valid.add_metric([source], n)
        yield valid
        dead = CounterMetricFamily("omniprofile_dead_letters", "Messages or array elements dead-lettered, by kind "
                                   "of reason", labels=["reason"])
        for kind, n in sorted(w.stats.dead_letters.items()):
            dead.add_metric([kind], n)
        yield dead
        lag = GaugeMetricFamily("omniprofile_consumer_lag", "Messages not yet committed, per assigned partition "
                                "(broker end offset minus committed offset)", labels=["topic", "partition"])
        for (topic, partition), n in sorted(self.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        errors = CounterMetricFamily("omniprofile_redis_errors", "Failed Redis flushes, by sink", labels=["sink"])
        errors.add_metric(["profiles"], w.sink.stats.failed_flushes)
        errors.add_metric(["journeys"], w.journey_sink.failed_flushes)
        errors.add_metric(["identity"], w.identity_sink.failed_flushes)
        yield errors
        pending = GaugeMetricFamily("omniprofile_redis_pending", "Entries staged for Redis and not yet written "
                                    "(grows while Redis is down)", labels=["sink"])
        pending.add_metric(["profiles"], w.sink.pending)
        pending.add_metric(["journeys"], w.journey_sink.pending)
        pending.add_metric(["identity"], w.identity_sink.pending)
        yield pending
        yield GaugeMetricFamily("omniprofile_redis_resync_backlog", "Keys left in the rewrite of Redis from the "
                                "tables under way (streams.resync)", value=self.serving.backlog)
        yield CounterMetricFamily("omniprofile_redis_resyncs", "Parts of the serving view rewritten from the tables",
                                  value=self.serving.rewritten)
        catch_ups = CounterMetricFamily("omniprofile_redis_catchups", "Parts taken over and checked "
                                        "against Redis, by how: profile partitions scanned, or clean_handover "
                                        "(scan skipped); the identity graph identity_rewritten, or "
                                        "identity_clean_handover (rewrite skipped)",
                                        labels=["how"])
        for how, count in sorted(self.serving.catch_ups.items()):
            catch_ups.add_metric([how], count)
        yield catch_ups
        yield CounterMetricFamily("omniprofile_redis_restaged", "Profiles written again by catch-ups (Redis was "
                                  "behind the table)", value=self.serving.restaged)
        yield CounterMetricFamily("omniprofile_rebalances", "Consumer group rebalances this worker took part in",
                                  value=int(getattr(self.app, "rebalancing_count", 0)))
        yield GaugeMetricFamily("omniprofile_assigned_partitions", "Partitions assigned to this worker (actives)",
                                value=len(self.app.assignor.assigned_actives()))
        yield GaugeMetricFamily("omniprofile_seconds_since_input", "Seconds since a message was last read",
                                value=time.monotonic() - self.last_progress)
        guard = getattr(self.app, "redelivery", None)
        yield CounterMetricFamily("omniprofile_commits_held", "Offset commits held back because a fetched input "
                                  "message was not processed yet; a rebalance fetches it again (streams.redelivery)",
                                  value=guard.commits_held if guard is not None else 0)
        yield CounterMetricFamily("omniprofile_reseeks", "Input partitions sought back to messages that resuming flow "
                                  "control threw away unprocessed (streams.redelivery)",
                                  value=guard.reseeks if guard is not None else 0)
        flush = getattr(self.app, "flush_guard", None)
        yield CounterMetricFamily("omniprofile_flush_overtaken", "Flushes before a commit at which faust's own flush "
                                  "would have returned with changelog records still queued (streams.flushing)",
                                  value=flush.overtaken if flush is not None else 0)
        ends = getattr(self.app, "fetched_ends", None)
        yield CounterMetricFamily("omniprofile_end_offsets_raised", "Partition end offsets the broker listed short and "
                                  "a fetch raised (Tansu after multi-record batches; streams.endoffsets)",
                                  value=ends.raised if ends is not None else 0)
        yield CounterMetricFamily("omniprofile_merge_double_counted", "Events counted twice by a merge whose "
                                  "survivor had stopped waiting for it (models.stitching.overlap; a lower bound)",
                                  value=w.stats.merge_double_counted)
        yield CounterMetricFamily("omniprofile_merge_recounted", "Events a late merge would have counted twice, "
                                  "counted once by rewinding the survivor (models.stitching.absorb)",
                                  value=w.stats.merge_recounted)
        core = getattr(self.learner, "core", None)
        yield CounterMetricFamily("omniprofile_segment_replays_skipped", "Learning messages re-read after a restart "
                                  "or rebalance and not learned twice (this worker's learner)",
                                  value=core.replays_skipped if core is not None else 0)
        yield GaugeMetricFamily("omniprofile_up", "1 when /health answers 200 (not stalled)",
                                value=1 if self.health().http_status == 200 else 0)

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """A small aiohttp server with ``/health`` and ``/metrics``, started with the worker."""

    def __init__(self, metrics: WorkerMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host, self.port = host, port
        self._runner = None

    async def start(self) -> None:
        from aiohttp import web

        async def health(_request: web.Request) -> web.Response:
            document = self.metrics.health_document()
            status = 503 if document["status"] == "stalled" else 200
            return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=self.metrics.prometheus_text(),
                                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise RuntimeError(
                f"cannot serve /health and /metrics on {self.host}:{self.port} ({exc.strerror or exc}); another "
                "worker on this machine probably uses the port: give each worker its own OMNIPROFILE_WEB_PORT, "
                "or set it to 0 to turn the endpoint off"
            ) from None
        log.info("Health and metrics on http://%s:%d/health and /metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


"""``omniprofile bench throughput``: the worker against the ceiling, on one machine, in one run.

Every contender reads the same generated events from the same embedded broker:

* ``raw``: an aiokafka consumer that decodes every event (getmany + orjson), nothing else: the
  ceiling of any Python consumer here;
* ``naive``: a Faust agent with one table update per event, what a user would write first;
* ``omniprofile``: the real worker process, all features on (validation, identity, profiles,
  journeys, segments, Redis), with single-event messages and with arrays of 100 events.

Each contender runs in its own process after the events are published, so its start-up is not
timed: the clock starts at the first event it handles (for the worker: the first ProfileUpdate an
independent consumer receives) and stops when every event is accounted for. CPU seconds and peak
RSS are the contender process's own (``/proc``, ``getrusage``). Then Redis: read latency of a
profile and bytes per customer. Results: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

import orjson

from streams.console import format_table
from streams.topics import TopicNames

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_seconds / self.events * 1_000_000 if self.events else 0.0


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def self_usage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


class LatencyMeter:
    """Publish-to-ProfileUpdate latency per event, for events keyed by customer id.

    Every event of a customer is published in order to one partition, so a ProfileUpdate whose
    profile counts ``n`` events accounts for the customer's first ``n``: each of those not yet
    matched gets the update's arrival time minus its own publish time.
    """

    def __init__(self) -> None:
        self.sent: dict[str, list[float]] = {}
        self.matched: dict[str, int] = {}
        self.latencies: list[float] = []

    def published(self, customer: str, at: float) -> None:
        self.sent.setdefault(customer, []).append(at)

    def updated(self, customer: str, events: int, at: float) -> None:
        times = self.sent.get(customer, [])
        done = self.matched.get(customer, 0)
        for t in times[done:events]:
            self.latencies.append(at - t)
        self.matched[customer] = max(done, min(events, len(times)))

    @property
    def pending(self) -> int:
        return sum(len(t) for t in self.sent.values()) - len(self.latencies)

    def percentiles(self) -> dict[str, float]:
        """p50, p99 and p999 in milliseconds (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return {"p50_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0}

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q) - 1))] * 1000

        return {"p50_ms": rank(0.5), "p99_ms": rank(0.99), "p999_ms": rank(0.999)}


# --- the contenders that run as children of the bench (python -m streams.throughput ...) ----------


async def raw_consume(bootstrap: str, topics: list[str], events: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen = 0
        # The clock starts before the first fetch: the ceiling includes reading from the broker.
        started, cpu0 = time.perf_counter(), self_usage()[0]
        while seen < events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    value = orjson.loads(record.value)
                    seen += len(value) if isinstance(value, list) else 1
        elapsed = time.perf_counter() - started
        cpu, rss = self_usage()
        return {"events": seen, "seconds": elapsed, "cpu_seconds": cpu - cpu0, "peak_rss_mb": rss}
    finally:
        await consumer.stop()


def naive_worker(bootstrap: str, topics: list[str], events: int, app_id: str, datadir: str, out: str,
                 partitions: int) -> None:
    """A Faust agent with one table update per event: count events per customer."""
    import faust

    app = faust.App(app_id, broker=f"kafka://{bootstrap}", store="memory://", datadir=datadir,
                    web_enabled=False, consumer_auto_offset_reset="earliest", key_serializer="raw",
                    value_serializer="raw", topic_partitions=partitions)
    topic = app.topic(*topics, key_type=bytes, value_type=bytes)
    table = app.Table("naive-counts", default=int, partitions=partitions, key_type=str, value_type=int)
    state: dict[str, Any] = {"seen": 0, "started": None, "cpu0": 0.0}

    @app.agent(topic)
    async def count(stream: faust.StreamT) -> None:
        async for value in stream:
            if state["started"] is None:
                state["started"], state["cpu0"] = time.perf_counter(), self_usage()[0]
            event = orjson.loads(value)
            table[event.get("customer_id") or event.get("anonymous_id") or "?"] += 1
            state["seen"] += 1
            if state["seen"] >= events:
                elapsed = time.perf_counter() - state["started"]
                cpu, rss = self_usage()
                Path(out).write_bytes(orjson.dumps({"events": state["seen"], "seconds": elapsed,
                                                    "cpu_seconds": cpu - state["cpu0"], "peak_rss_mb": rss}))
                os._exit(0)

    sys.argv = ["naive", "worker", "--loglevel", "warn"]
    app.main()


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="streams.throughput")
    parser.add_argument("mode", choices=["raw", "naive"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--app-id", default="bench-naive")
    parser.add_argument("--datadir", default=tempfile.gettempdir())
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    topics = args.topics.split(",")
    if args.mode == "raw":
        result = asyncio.run(raw_consume(args.bootstrap, topics, args.events))
        Path(args.out).write_bytes(orjson.dumps(result))
        return 0
    naive_worker(args.bootstrap, topics, args.events, args.app_id, args.datadir, args.out, args.partitions)
    return 0


# --- the bench ---------------------------------------------------------------------------------


def run_child(mode: str, bootstrap: str, topics: list[str], events: int, workdir: Path, timeout: float,
              partitions: int = 4) -> Result:
    out = workdir / f"{mode}.json"
    log = (workdir / f"{mode}.log").open("wb")
    cmd = [sys.executable, "-m", "streams.throughput", mode, "--bootstrap", bootstrap, "--topics", ",".join(topics),
           "--events", str(events), "--out", str(out), "--datadir", str(workdir / f"{mode}-data"),
           "--partitions", str(partitions)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{mode} did not finish within {timeout:.0f} s; see {workdir / (mode + '.log')}") from None
    finally:
        log.close()
    if not out.exists():
        raise RuntimeError(f"{mode} exited with {proc.returncode} without a result; see {workdir / (mode + '.log')}")
    data = orjson.loads(out.read_bytes())
    return Result(mode, data["events"], data["seconds"], data["cpu_seconds"], data["peak_rss_mb"])


def _child_env() -> dict[str, str]:
    from streams.commands import worker_env

    return worker_env({})


def run_worker(settings_env: dict[str, str], events: int, workdir: Path, name: str, timeout: float,
               workers: int = 1) -> Result:
    """Start ``workers`` omniprofile workers on pre-published events; time them from the first update."""
    from streams.admin import OutputFollower
    from streams.commands import Worker, worker_env
    from streams.settings import settings_from_env

    settings = settings_from_env(settings_env)
    procs = []
    for i in range(workers):
        env = dict(settings_env, OMNIPROFILE_DATA_DIR=str(workdir / f"{name}-data-{i}"),
                   OMNIPROFILE_WEB_PORT=str(6100 + i))
        procs.append(Worker(worker_env(env), workdir / f"{name}-{i}.log"))
    follower = OutputFollower(settings)
    try:
        for w in procs:
            w.wait_ready()
        deadline = time.monotonic() + timeout
        started = None
        cpu0 = 0.0
        while follower.events_applied < events:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: {follower.events_applied:,} of {events:,} events within {timeout:.0f} s")
            follower.poll(100)
            if started is None and follower.updates_seen:
                started = time.perf_counter()
                cpu0 = sum(proc_cpu(w.proc.pid) for w in procs)
        elapsed = time.perf_counter() - started
        cpu = sum(proc_cpu(w.proc.pid) for w in procs) - cpu0
        rss = max(proc_peak_rss_mb(w.proc.pid) for w in procs)
    finally:
        follower.close()
        for w in procs:
            w.stop()
    return Result(name, events, elapsed, cpu, rss, note=f"{workers} worker(s)")


def run_latency(settings_env: dict[str, str], rates: list[float], seconds: float, workdir: Path,
                timeout: float, broker_pid: int | None = None) -> list[dict[str, float]]:
    """Publish at each fixed rate for ``seconds`` to one worker; publish-to-update latency percentiles.

    The events are page views of their own customers (customer ids only, so no merges), sent one
    per message, keyed by customer, stamped with the current time; an independent consumer reads
    ``profiles.updates``. Producer and consumer share one asyncio loop (aiokafka): the driver must
    not take the CPU the worker needs (a kafka-python loop polling every 2 ms took 70% of a core
    at 240 events/s, the broker and the worker shared the rest of the 2 cores). Each rate also
    reports the CPU used, as a share of one core, by the worker, the broker (``broker_pid``) and
    this driver, from the first event sent until the last update arrived.
    """
    from streams.commands import Worker, worker_env
    from streams.settings import settings_from_env

    settings = settings_from_env(settings_env)
    worker = Worker(worker_env(dict(settings_env, OMNIPROFILE_DATA_DIR=str(workdir / "latency-data"))),
                    workdir / "omniprofile-latency.log")
    try:
        worker.wait_ready()
        return asyncio.run(drive_latency(settings.kafka_bootstrap_servers, TopicNames(settings.topic_prefix),
                                         rates, seconds, timeout, worker.log_path,
                                         {"worker": worker.proc.pid, "broker": broker_pid}))
    finally:
        worker.stop()


async def drive_latency(bootstrap: str, names: TopicNames, rates: list[float], seconds: float, timeout: float,
                        log_path: Path, pids: dict[str, int | None]) -> list[dict[str, float]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    # Every fetch costs the broker CPU that the worker shares on this machine: a 5 ms fetch wait
    # made Tansu busier than 50 ms did, with the same p50 at 5 events/s.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50, auto_offset_reset="latest")
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await consumer.start()
    await prod.start()
    meter = LatencyMeter()

    async def follow() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            arrived = time.perf_counter()
            for records in batches.values():
                for record in records:
                    if record.value is not None:
                        update = orjson.loads(record.value)
                        meter.updated(record.key.decode(), update["profile"]["events"], arrived)

    results = []
    try:
        parts = [TopicPartition(names.updates, p) for p in sorted(consumer.partitions_for_topic(names.updates) or ())]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end offsets now, before anything is published
            await consumer.position(tp)
        follower = asyncio.create_task(follow())
        try:
            for step, rate in enumerate(rates):
                meter = LatencyMeter()
                total = max(1, int(rate * seconds))
                customers = max(20, total // 10)
                start = time.perf_counter()
                cpu0 = cpu_snapshot(pids)
                sent = 0
                while sent < total:
                    now = time.perf_counter()
                    while sent < total and start + sent / rate <= now:
                        customer = f"lat{step}-{sent % customers}"
                        body = {"event_id": f"{customer}-{sent}", "type": "page_view", "ts": int(time.time() * 1000),
                                "customer_id": customer, "channel": "web",
                                "properties": {"url": f"/p/{sent % 97}", "category": "shoes"}}
                        await prod.send(names.source("clickstream"), key=customer.encode(), value=orjson.dumps(body))
                        meter.published(customer, time.perf_counter())
                        sent += 1
                    await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
                deadline = time.perf_counter() + timeout
                while meter.pending:
                    if follower.done():
                        follower.result()  # raises what stopped the consumer
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"latency at {rate:,.0f} events/s: {meter.pending:,} events without an "
                                           f"update {timeout:.0f} s after the last was sent; see {log_path}")
                    await asyncio.sleep(0.05)
                shares = cpu_shares(cpu0, cpu_snapshot(pids), time.perf_counter() - start)
                results.append({"rate": rate, "events": total, **meter.percentiles(), **shares})
                await asyncio.sleep(2)  # let the worker go idle between the rates
        finally:
            follower.cancel()
    finally:
        await prod.stop()
        await consumer.stop()
    return results


def cpu_snapshot(pids: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds so far of each named process (``driver``: this one)."""
    out = {name: proc_cpu(pid) for name, pid in pids.items() if pid is not None}
    out["driver"] = self_usage()[0]
    return out


def cpu_shares(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Share of one core each process used between two snapshots ``seconds`` apart.

    >>> cpu_shares({"worker": 1.0, "driver": 0.5}, {"worker": 4.0, "driver": 0.8}, 5.0)
    {'worker_cpu': 0.6, 'driver_cpu': 0.06}
    """
    return {f"{name}_cpu": round((after[name] - before[name]) / seconds, 3) for name in before if seconds > 0}


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scale_env(settings_env: dict[str, str], workdir: Path) -> dict[str, str]:
    """The scale run's worker: the rocksdict table store, its data under ``workdir`` (a worker
    started again with these settings recovers the same tables)."""
    return dict(settings_env, OMNIPROFILE_TABLE_STORE="rocksdict://", OMNIPROFILE_DATA_DIR=str(workdir / "scale-data"))


def run_scale(settings_env: dict[str, str], customers: int, workdir: Path, timeout: float) -> dict:
    """One worker on the rocksdict store takes one event from each of ``customers`` customers (in
    arrays of 1,000). Its RSS is read at every tenth of the way (``curve``) and once every customer
    has a published profile; a run that runs out of time reports how far it got (``completed`` false)."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.admin import client_options, producer
    from streams.commands import Worker, worker_env
    from streams.console import Progress
    from streams.settings import settings_from_env

    env = scale_env(settings_env, workdir)
    settings = settings_from_env(env)
    names = TopicNames(settings.topic_prefix)
    prod = producer(settings, max_request_size=8 * 1024 * 1024)
    progress = Progress("publishing one event per customer", customers)
    now = int(time.time() * 1000)
    for first in range(0, customers, 1000):
        batch = [{"event_id": f"s-{i}", "type": "page_view", "ts": now - i % 86_400_000, "customer_id": f"s-{i}",
                  "channel": ("web", "amazon", "app", "ebay")[i % 4], "properties": {"category": "shoes"}}
                 for i in range(first, min(customers, first + 1000))]
        prod.send(names.source("clickstream"), value=orjson.dumps(batch))
        progress.update(min(customers, first + 1000))
    prod.flush()
    prod.close()
    progress.finish(customers)
    worker = Worker(worker_env(env), workdir / "omniprofile-scale.log")
    consumer = KafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None,
                             auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024)
    seen: set[bytes] = set()
    curve: list[dict[str, float]] = []
    step = max(1, customers // 10)
    try:
        worker.wait_ready()
        pid = worker.proc.pid
        consumer.assign([TopicPartition(names.updates, p)
                         for p in sorted(consumer.partitions_for_topic(names.updates) or ())])
        consumer.seek_to_beginning()
        progress = Progress("customers with a profile", customers)
        started = time.perf_counter()
        completed = True
        while len(seen) < customers:
            if time.perf_counter() - started > timeout:
                completed = False
                break
            for records in consumer.poll(timeout_ms=500, max_records=50_000).values():
                seen.update(r.key for r in records if r.value is not None)
            progress.update(len(seen))
            if len(seen) >= step * (len(curve) + 1):
                curve.append({"customers": len(seen), "seconds": time.perf_counter() - started,
                              "rss_mb": proc_rss_mb(pid)})
        progress.finish(len(seen))
        elapsed = time.perf_counter() - started
        return {"customers": len(seen), "target": customers, "completed": completed, "rss_mb": proc_rss_mb(pid),
                "peak_rss_mb": proc_peak_rss_mb(pid), "seconds": elapsed, "curve": curve,
                "log": str(worker.log_path)}
    finally:
        consumer.close()
        worker.stop()


def redis_figures(url: str, prefix: str, sample: int = 2000) -> dict[str, float]:
    """Profile read latency (HGETALL, one round trip each) and memory per customer, sampled."""
    import redis

    from models.view import LISTPACK_VALUE_HINT
    from streams.sinks import RedisLayout

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=RedisLayout(prefix).profile("*"), count=1000))
    chosen = random.Random(1).sample(keys, min(sample, len(keys)))
    timings = []
    for key in chosen:
        t = time.perf_counter()
        client.hgetall(key)
        timings.append((time.perf_counter() - t) * 1000)
    # SAMPLES 0: every field. The default estimate (5 fields, scaled up) swung from 1.8 to 14.7 KB
    # between runs, by whether the sample held the large json field.
    sizes = [client.memory_usage(key, samples=0) or 0 for key in chosen[:500]]
    listpack = variant_sizes(client, chosen[:500], 16_384)
    zlib_default = variant_sizes(client, chosen[:500], None, zlib_json)
    zlib_listpack = variant_sizes(client, chosen[:500], LISTPACK_VALUE_HINT, zlib_json)
    client.close()
    timings.sort()

    def mean(values: list[int]) -> float:
        return statistics.mean(values) if values else 0.0

    return {
        "profiles": len(keys),
        "read_p50_ms": timings[len(timings) // 2],
        "read_p99_ms": timings[int(len(timings) * 0.99)],
        "bytes_per_customer": mean(sizes),
        "bytes_per_customer_listpack": mean(listpack),
        "bytes_per_customer_zlib": mean(zlib_default),
        "bytes_per_customer_zlib_listpack": mean(zlib_listpack),
    }


def zlib_json(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A stored hash with its ``json`` field as ``OMNIPROFILE_REDIS_JSON_CODEC=zlib`` stores it (the
    sink's own encoding, models.view.encode_profile_json; tests/integration/test_pipeline.py checks
    that the worker stores exactly that)."""
    from models.view import encode_profile_json, profile_json_text

    return {**fields, b"json": encode_profile_json(profile_json_text(fields[b"json"]), "zlib")}


def variant_sizes(client: Any, keys: list[bytes], max_value: int | None,
                  change: Callable[[dict[bytes, bytes]], dict[bytes, bytes]] | None = None) -> list[int]:
    """Memory of the same hashes copied (through ``change``, if given) to scratch keys, measured and
    deleted, with the server's ``hash-max-listpack-value`` set to ``max_value`` meanwhile (None: as
    it is, 64 by default). Redis keeps a hash in its compact listpack encoding only while every value
    is at most that long, so a plain ``json`` field puts every profile in the hashtable encoding."""
    old = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    if max_value is not None:
        client.config_set("hash-max-listpack-value", max_value)
    try:
        out = []
        for key in keys:
            scratch = b"bench-scratch:" + key
            fields = client.hgetall(key)
            client.hset(scratch, mapping=change(fields) if change else fields)
            out.append(client.memory_usage(scratch, samples=0) or 0)
            client.delete(scratch)
        return out
    finally:
        client.config_set("hash-max-listpack-value", old)


CONTENDERS = ("raw", "naive", "single", "latency", "batched", "two", "scale")
DEFAULT_CONTENDERS = ("raw", "naive", "single", "latency", "batched")


def embedded_env(bootstrap: str, redis_url: str, prefix: str, partitions: int = 4) -> dict[str, str]:
    """A worker's settings on the embedded broker and Redis, under its own topic and key prefix
    (the bench, the measurement scripts in ``scripts/`` and the integration tests' stacks)."""
    return {
        "OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "OMNIPROFILE_REDIS_URL": redis_url,
        "OMNIPROFILE_TOPIC_PREFIX": prefix,
        "OMNIPROFILE_APP_ID": f"bench-{prefix.rstrip('.')}",
        "OMNIPROFILE_REDIS_KEY_PREFIX": prefix.replace(".", ":"),
        "OMNIPROFILE_PARTITIONS": str(partitions),
        # Tansu holds a group join for about 2 s at 3 s (3 s at 6 s) waiting for other members; a
        # killed worker's session expires that much sooner too. The heartbeats run on faust's consumer
        # thread, so a busy event loop does not miss them. (The demo keeps 6 s.)
        "OMNIPROFILE_KAFKA_SESSION_TIMEOUT": "3",
        "OMNIPROFILE_KAFKA_FETCH_MAX_WAIT_MS": "20",  # Tansu can answer a fetch up to its wait late
        "OMNIPROFILE_WEB_PORT": "0",  # several workers on one machine; the bench reads no metrics
        "OMNIPROFILE_RECOVERY_CONSISTENCY_CHECK": "false",
        "OMNIPROFILE_LOG_LEVEL": "info",  # the bench waits for "Worker ready"
    }


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from models.synthetic import generate
    from streams.admin import ensure_topics
    from streams.commands import default_start, interrupt_on_signals, publish_dataset
    from streams.local import RedisServer, Tansu
    from streams.settings import settings_from_env

    interrupt_on_signals()  # a SIGTERM, too, stops the broker, Redis and workers started below
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    dataset = generate(max(50, args.events // 11), seed=args.seed, start=default_start(28), days=28)
    dataset = type(dataset)(dataset.customers, dataset.events[: args.events], ())
    events = len(dataset.events)
    say(f"bench throughput: {events:,} generated events; starting an embedded broker and Redis")
    workdir = Path(tempfile.mkdtemp(prefix="omniprofile-bench-"))
    broker, redis_server = Tansu().start(), RedisServer().start()
    results: list[Result] = []
    extra: dict[str, Any] = {}
    try:
        overrides = {}
        for item in args.set:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise SystemExit(f"--set {item!r}: expected NAME=VALUE, for example --set BATCH_WAIT_MS=50")
            overrides["OMNIPROFILE_" + name.upper().removeprefix("OMNIPROFILE_")] = value

        def stack(prefix: str, batch: int, publish: bool = True) -> dict[str, str]:
            env = {**embedded_env(broker.bootstrap, redis_server.url, prefix, args.partitions), **overrides}
            settings = settings_from_env(env)
            names = TopicNames(prefix)
            ensure_topics(settings, names.public + (names.by_customer,))
            if publish:
                publish_dataset(settings, dataset, batch, label=f"publishing to {prefix}*")
            return env

        only = set(args.only.split(",")) if args.only else set(DEFAULT_CONTENDERS)
        unknown = only - set(CONTENDERS)
        if unknown:
            raise SystemExit(f"--only: unknown contender(s) {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(CONTENDERS)}")
        if args.workers2:
            only.add("two")
        single = stack("single.", 1)
        topics = list(TopicNames("single.").inputs)
        if "raw" in only:
            say("raw aiokafka consumer (the ceiling) ...")
            results.append(run_child("raw", broker.bootstrap, topics, events, workdir, args.timeout, args.partitions))
        if "naive" in only:
            say("naive Faust agent (one table update per event) ...")
            results.append(run_child("naive", broker.bootstrap, topics, events, workdir, args.timeout,
                                     args.partitions))
        if "single" in only:
            say("omniprofile worker, single-event messages ...")
            results.append(run_worker(single, events, workdir, "omniprofile-single", args.timeout))
            extra["redis"] = redis_figures(redis_server.url, "single:")
        if "latency" in only:
            if args.latency_rates:
                rates = [float(r) for r in args.latency_rates.split(",")]
                listed = ", ".join(f"{r:,.0f}" for r in rates)
                say(f"latency at {listed} events/s ({args.latency_seconds:.0f} s each) ...")
            else:
                single_result = next((r for r in results if r.name == "omniprofile-single"), None)
                if single_result is None:
                    raise SystemExit("--only latency needs single too (the rates are 50% and 90% of its events/s), "
                                     "or --latency-rates")
                top = single_result.rate
                rates = [round(top * 0.5), round(top * 0.9)]
                say(f"latency at 50% and 90% of {top:,.0f} events/s ({args.latency_seconds:.0f} s each) ...")
            extra["latency"] = run_latency(stack("latency.", 1, publish=False), rates, args.latency_seconds,
                                           workdir, args.timeout, broker.proc.pid if broker.proc else None)
            for row, load in zip(extra["latency"], [None] * len(rates) if args.latency_rates else [0.5, 0.9]):
                row["load"] = load  # share of the measured single-event rate, when the rates came from it
        if "batched" in only:
            batched = stack("batched.", 100)
            say("omniprofile worker, arrays of 100 events ...")
            results.append(run_worker(batched, events, workdir, "omniprofile-batched", args.timeout))
        if "two" in only:
            two = stack("two.", 1)
            say("omniprofile, 2 workers, single-event messages ...")
            results.append(run_worker(two, events, workdir, "omniprofile-single-2w", args.timeout, workers=2))
        if args.scale:
            only.add("scale")
        if "scale" in only:
            say(f"scale: one worker (rocksdict store), {args.scale:,} customers ...")
            extra["scale"] = run_scale(stack("scale.", 1, publish=False), args.scale, workdir, args.timeout)
            if not extra["scale"]["completed"]:
                say(f"scale: {extra['scale']['customers']:,} of {args.scale:,} customers within {args.timeout:.0f} s; "
                    f"see {extra['scale']['log']}")
    finally:
        broker.stop()
        redis_server.stop()
    report = build_report(results, extra, args, events)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def build_report(results: list[Result], extra: dict[str, Any], args: argparse.Namespace, events: int) -> dict:
    by = {r.name: r for r in results}
    ratios = {}
    if "naive" in by and "omniprofile-single" in by:
        ratios["single_vs_naive"] = by["omniprofile-single"].rate / by["naive"].rate
    if "raw" in by and "omniprofile-batched" in by:
        ratios["batched_vs_raw"] = by["omniprofile-batched"].rate / by["raw"].rate
    if "omniprofile-single-2w" in by and "omniprofile-single" in by:
        ratios["two_workers_vs_one"] = by["omniprofile-single-2w"].rate / by["omniprofile-single"].rate
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "events": events,
        "partitions": args.partitions,
        "results": [dict(asdict(r), events_per_second=r.rate, cpu_seconds_per_million=r.cpu_per_million)
                    for r in results],
        "ratios": ratios,
        "targets": {"single_vs_naive": 3.0, "batched_vs_raw": 0.25, "two_workers_vs_one": 1.6,
                    "redis_read_p99_ms": 2.0, "bytes_per_customer": 2048,
                    "latency_p99_ms_at_50pct": 100.0, "rss_mb_at_1m_customers": 4096},
        "redis": extra.get("redis", {}),
        "latency": extra.get("latency", []),
        "scale": extra.get("scale", {}),
    }


def print_report(report: dict) -> None:
    rows = [[r["name"], f"{r['events_per_second']:,.0f}", f"{r['cpu_seconds_per_million']:,.0f}",
             f"{r['peak_rss_mb']:,.0f}", r["note"]] for r in report["results"]]
    if rows:
        print()
        print(format_table(["contender", "events/s", "CPU s per 1M events", "peak RSS MB", ""], rows,
                           title=f"== throughput: {report['events']:,} events, {report['partitions']} partitions, "
                                 f"{report['machine']['cpus']} CPUs =="))
    targets = report["targets"]
    rows = [[name, f"{value:.2f}x", f">= {targets[name]}x", "yes" if value >= targets[name] else "NO"]
            for name, value in report["ratios"].items()]
    redis_fig = report["redis"]
    if redis_fig:
        rows.append(["redis profile read p99", f"{redis_fig['read_p99_ms']:.2f} ms", "<= 2 ms",
                     "yes" if redis_fig["read_p99_ms"] <= 2 else "NO"])
        rows.append(["redis bytes per customer", f"{redis_fig['bytes_per_customer']:,.0f}", "<= 2048",
                     "yes" if redis_fig["bytes_per_customer"] <= 2048 else "NO"])
        for name, label in (("bytes_per_customer_listpack", "  the same, hash-max-listpack-value 16384"),
                            ("bytes_per_customer_zlib", "  json as REDIS_JSON_CODEC=zlib stores it"),
                            ("bytes_per_customer_zlib_listpack", "  zlib and hash-max-listpack-value 1024")):
            if name in redis_fig:
                value = redis_fig[name]
                rows.append([label, f"{value:,.0f}", "<= 2048", "yes" if value <= 2048 else "NO"])
    scale = report.get("scale") or {}
    if scale:
        met = scale["rss_mb"] <= 4096 and scale["customers"] >= 1_000_000 and scale["peak_rss_mb"] <= 4096
        rows.append([f"worker RSS after {scale['customers']:,} customers", f"{scale['rss_mb']:,.0f} MB",
                     "<= 4096 MB at 1,000,000", "yes" if met else "NO"])
    latency = report.get("latency") or []
    if latency and latency[0].get("load") == 0.5:
        rows.append(["p99 latency at 50% load", f"{latency[0]['p99_ms']:,.0f} ms", "<= 100 ms",
                     "yes" if latency[0]["p99_ms"] <= 100 else "NO"])
    if latency:
        def share(row: dict, name: str) -> str:
            return f"{100 * row[name]:.0f}%" if name in row else "-"

        lat_rows = [[f"{r['rate']:,.0f}", f"{r['events']:,}", f"{r['p50_ms']:,.1f}", f"{r['p99_ms']:,.1f}",
                     f"{r['p999_ms']:,.1f}", share(r, "worker_cpu"), share(r, "broker_cpu"), share(r, "driver_cpu")]
                    for r in latency]
        print()
        print(format_table(["events/s", "events", "p50 ms", "p99 ms", "p999 ms", "worker CPU", "broker CPU",
                            "driver CPU"], lat_rows,
                           title="== publish to ProfileUpdate latency, one worker, single-event messages "
                           "(CPU: share of one core, first event sent to last update) =="))
    if scale.get("curve"):
        curve_rows = [[f"{c['customers']:,}", f"{c['seconds']:,.0f}", f"{c['customers'] / max(c['seconds'], 1e-9):,.0f}",
                       f"{c['rss_mb']:,.0f}"] for c in scale["curve"]]
        print()
        print(format_table(["customers", "seconds", "customers/s", "worker RSS MB"], curve_rows,
                           title=f"== scale: one worker, rocksdict store, peak RSS {scale['peak_rss_mb']:,.0f} MB =="))
    if rows:
        print()
        print(format_table(["ratio (same run)", "measured", "target", "met"], rows, title="== against the targets =="))


def add_commands(benches: argparse._SubParsersAction) -> None:
    p = benches.add_parser("throughput", help="the worker against the raw consumer and a naive Faust agent")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per contender")
    p.add_argument("--workers2", action="store_true", help="also run two workers (scale-out ratio)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    p.add_argument("--scale", type=int, default=0, metavar="CUSTOMERS",
                   help="also measure worker RSS (rocksdict store) after this many customers, e.g. 1000000")
    p.add_argument("--latency-rates", default="", metavar="R1,R2",
                   help="latency at these events/s instead of 50%% and 90%% of the single-event rate")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="seconds of traffic at each latency rate")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a worker setting for the omniprofile contenders, e.g. --set BATCH_WAIT_MS=50 (repeatable)")
    p.add_argument("--only", default="", help=f"a comma-separated subset of: {', '.join(CONTENDERS)}")
    p.set_defaults(func=cmd_bench_throughput)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))

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
    from streams.settings import load_settings

    settings = load_settings(**{k.removeprefix("OMNIPROFILE_").lower(): v for k, v in settings_env.items()})
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


def redis_figures(url: str, prefix: str, sample: int = 2000) -> dict[str, float]:
    """Profile read latency (HGETALL, one round trip each) and memory per customer, sampled."""
    import redis

    from streams.sinks import RedisLayout

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=RedisLayout(prefix).profile("*"), count=1000))
    chosen = random.Random(1).sample(keys, min(sample, len(keys)))
    timings = []
    for key in chosen:
        t = time.perf_counter()
        client.hgetall(key)
        timings.append((time.perf_counter() - t) * 1000)
    sizes = [client.memory_usage(key) or 0 for key in chosen[:500]]
    client.close()
    timings.sort()
    return {
        "profiles": len(keys),
        "read_p50_ms": timings[len(timings) // 2],
        "read_p99_ms": timings[int(len(timings) * 0.99)],
        "bytes_per_customer": statistics.mean(sizes) if sizes else 0.0,
    }


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from models.synthetic import generate
    from streams.admin import ensure_topics
    from streams.commands import default_start, publish_dataset
    from streams.local import RedisServer, Tansu
    from streams.settings import load_settings

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
        def stack(prefix: str, batch: int) -> dict[str, str]:
            env = {
                "OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "OMNIPROFILE_REDIS_URL": redis_server.url,
                "OMNIPROFILE_TOPIC_PREFIX": prefix,
                "OMNIPROFILE_APP_ID": f"bench-{prefix.rstrip('.')}",
                "OMNIPROFILE_REDIS_KEY_PREFIX": prefix.replace(".", ":"),
                "OMNIPROFILE_PARTITIONS": str(args.partitions),
                "OMNIPROFILE_KAFKA_SESSION_TIMEOUT": "6",
                "OMNIPROFILE_RECOVERY_CONSISTENCY_CHECK": "false",
                "OMNIPROFILE_LOG_LEVEL": "info",  # the bench waits for "Worker ready"
            }
            settings = load_settings(**{k.removeprefix("OMNIPROFILE_").lower(): v for k, v in env.items()})
            names = TopicNames(prefix)
            ensure_topics(settings, names.public + (names.by_customer,))
            publish_dataset(settings, dataset, batch, label=f"publishing to {prefix}*")
            return env

        single = stack("single.", 1)
        topics = list(TopicNames("single.").inputs)
        say("raw aiokafka consumer (the ceiling) ...")
        results.append(run_child("raw", broker.bootstrap, topics, events, workdir, args.timeout, args.partitions))
        say("naive Faust agent (one table update per event) ...")
        results.append(run_child("naive", broker.bootstrap, topics, events, workdir, args.timeout, args.partitions))
        say("omniprofile worker, single-event messages ...")
        results.append(run_worker(single, events, workdir, "omniprofile-single", args.timeout))
        extra["redis"] = redis_figures(redis_server.url, "single:")
        batched = stack("batched.", 100)
        say("omniprofile worker, arrays of 100 events ...")
        results.append(run_worker(batched, events, workdir, "omniprofile-batched", args.timeout))
        if args.workers2:
            two = stack("two.", 1)
            say("omniprofile, 2 workers, single-event messages ...")
            results.append(run_worker(two, events, workdir, "omniprofile-single-2w", args.timeout, workers=2))
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
    if "naive" in by:
        ratios["single_vs_naive"] = by["omniprofile-single"].rate / by["naive"].rate
    if "raw" in by and "omniprofile-batched" in by:
        ratios["batched_vs_raw"] = by["omniprofile-batched"].rate / by["raw"].rate
    if "omniprofile-single-2w" in by:
        ratios["two_workers_vs_one"] = by["omniprofile-single-2w"].rate / by["omniprofile-single"].rate
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "events": events,
        "partitions": args.partitions,
        "results": [dict(asdict(r), events_per_second=r.rate, cpu_seconds_per_million=r.cpu_per_million)
                    for r in results],
        "ratios": ratios,
        "targets": {"single_vs_naive": 3.0, "batched_vs_raw": 0.25, "two_workers_vs_one": 1.6,
                    "redis_read_p99_ms": 2.0, "bytes_per_customer": 2048},
        "redis": extra.get("redis", {}),
    }


def print_report(report: dict) -> None:
    rows = [[r["name"], f"{r['events_per_second']:,.0f}", f"{r['cpu_seconds_per_million']:,.0f}",
             f"{r['peak_rss_mb']:,.0f}", r["note"]] for r in report["results"]]
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
    p.set_defaults(func=cmd_bench_throughput)


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))

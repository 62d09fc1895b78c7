"""The cost of the serving view's catch-up at a worker start, and what a clean handover saves
(docs/reliability.md).

One worker on the rocksdict store takes one event from each of N customers (the scale run of
``bench throughput``) and stops cleanly, leaving its clean-handover marks. A worker started again on
the same data should skip the scan of every partition. Then the marks and 1% of the profile hashes
are deleted from Redis (what a ``kill -9`` leaves: no mark that matches, profiles it had not flushed),
and a third worker must find and write those hashes again. Prints each start, the catch-up time per
partition (from the worker's log) and the worker's CPU seconds.

    .venv/bin/python scripts/catchup_cost.py N
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import redis

from streams.admin import ensure_topics
from streams.commands import Worker, worker_env
from streams.local import RedisServer, Tansu
from streams.settings import settings_from_env
from streams.sinks import RedisLayout
from streams.throughput import embedded_env, proc_cpu, run_scale, scale_env
from streams.topics import TopicNames

CAUGHT_UP = "Redis was behind the table on"  # streams.resync logs these per partition caught up
HANDED_OVER = "was handed over cleanly"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    customers = int(argv[0])
    broker, redis_server = Tansu().start(), RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix="omniprofile-catchup-"))
    try:
        env = embedded_env(broker.bootstrap, redis_server.url, "scale.")
        settings = settings_from_env(env)
        names = TopicNames(settings.topic_prefix)
        ensure_topics(settings, names.public + (names.by_customer,))
        scale = run_scale(env, customers, workdir, 900)
        print("scale run:", {k: v for k, v in scale.items() if k != "curve"})
        time.sleep(3)  # the last Redis flush of the stopped worker
        layout = RedisLayout(settings.redis_key_prefix)
        client = redis.Redis.from_url(redis_server.url)
        try:
            print(f"clean-handover marks left by the scale run's worker: {client.hlen(layout.serving_clean())}")
            restart(env, workdir, "clean.log", HANDED_OVER, settings.partitions)
            gone = [layout.profile(f"s-{i}") for i in range(0, customers, 100)]
            client.delete(*gone, layout.serving_clean())
            print(f"deleted the marks and {len(gone):,} profile hashes")
            restart(env, workdir, "scan.log", CAUGHT_UP, settings.partitions)
            print("still missing:", sum(1 for key in gone if client.exists(key) == 0))
        finally:
            client.close()
    finally:
        broker.stop()
        redis_server.stop()
    return 0


def restart(env: dict[str, str], workdir: Path, log_name: str, done: str, partitions: int) -> None:
    """Start a worker on the scale run's data, wait until ``done`` is logged for every partition, stop it."""
    worker = Worker(worker_env(scale_env(env, workdir)), workdir / log_name)
    try:
        started = time.perf_counter()
        worker.wait_ready(300)
        print(f"{log_name}: ready in {time.perf_counter() - started:.1f} s, worker CPU {proc_cpu(worker.proc.pid):.1f} s")
        deadline = time.monotonic() + 300
        while worker.log_path.read_text().count(done) < partitions and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"{log_name}: caught up after {time.perf_counter() - started:.1f} s, "
              f"worker CPU {proc_cpu(worker.proc.pid):.1f} s")
        for line in worker.log_path.read_text().splitlines():
            if done in line:
                print("  ", re.search(rf"(profiles:\d+ )?{done}.*", line).group(0))
    finally:
        worker.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

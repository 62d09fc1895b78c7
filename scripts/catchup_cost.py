"""The cost of the serving view's catch-up at a worker start (docs/reliability.md).

One worker on the rocksdict store takes one event from each of N customers (the scale run of
``bench throughput``); then 1% of the profile hashes are deleted from Redis and a worker is started
again on the same data: it must find and write them again. Prints the start, the catch-up time per
partition (from the worker's log) and the worker's CPU seconds.

    .venv/bin/python scripts/catchup_cost.py N
"""

from __future__ import annotations

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

CAUGHT_UP = "Redis was behind the table on"  # streams.resync logs it per partition caught up


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
        gone = [layout.profile(f"s-{i}") for i in range(0, customers, 100)]
        client = redis.Redis.from_url(redis_server.url)
        client.delete(*gone)
        print(f"deleted {len(gone):,} profile hashes")
        worker = Worker(worker_env(scale_env(env, workdir)), workdir / "restart.log")
        try:
            started = time.perf_counter()
            worker.wait_ready(300)
            print(f"ready in {time.perf_counter() - started:.1f} s, worker CPU {proc_cpu(worker.proc.pid):.1f} s")
            deadline = time.monotonic() + 300
            while worker.log_path.read_text().count(CAUGHT_UP) < settings.partitions and time.monotonic() < deadline:
                time.sleep(1)
            print(f"caught up after {time.perf_counter() - started:.1f} s, worker CPU {proc_cpu(worker.proc.pid):.1f} s")
            for line in worker.log_path.read_text().splitlines():
                if CAUGHT_UP in line:
                    print(line[line.index(CAUGHT_UP):])
            print("still missing:", sum(1 for key in gone if not client.exists(key)))
        finally:
            worker.stop()
            client.close()
    finally:
        broker.stop()
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The cost of the serving view's catch-up at a worker start (docs/reliability.md).

One worker on the rocksdict store takes one event from each of N customers (the scale run of
``bench throughput``); then 1% of the profile hashes are deleted from Redis and a worker is started
again on the same data: it must find and write them again. Prints the start, the catch-up time per
partition (from the worker's log) and the worker's CPU seconds.

    .venv/bin/python scripts/catchup_cost.py N
"""
import re
import sys
import tempfile
import time
from pathlib import Path

import redis
from streams.local import RedisServer, Tansu
from streams.settings import load_settings
from streams.topics import TopicNames
from streams.admin import ensure_topics
from streams.throughput import run_scale, proc_cpu
from streams.commands import Worker, worker_env

if len(sys.argv) != 2:
    sys.exit(__doc__)
n = int(sys.argv[1])
broker, rs = Tansu().start(), RedisServer().start()
workdir = Path(tempfile.mkdtemp(prefix="catchup-"))
env = {"OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "OMNIPROFILE_REDIS_URL": rs.url,
       "OMNIPROFILE_TOPIC_PREFIX": "scale.", "OMNIPROFILE_APP_ID": "catchup", "OMNIPROFILE_REDIS_KEY_PREFIX": "scale:",
       "OMNIPROFILE_PARTITIONS": "4", "OMNIPROFILE_KAFKA_SESSION_TIMEOUT": "6", "OMNIPROFILE_KAFKA_FETCH_MAX_WAIT_MS": "20",
       "OMNIPROFILE_WEB_PORT": "0", "OMNIPROFILE_RECOVERY_CONSISTENCY_CHECK": "false", "OMNIPROFILE_LOG_LEVEL": "info"}
try:
    settings = load_settings(**{k.removeprefix("OMNIPROFILE_").lower(): v for k, v in env.items()})
    names = TopicNames("scale.")
    ensure_topics(settings, names.public + (names.by_customer,))
    r = run_scale(env, n, workdir, 900)
    print("scale:", {k: v for k, v in r.items() if k != "curve"})
    time.sleep(3)
    c = redis.Redis.from_url(rs.url)
    gone = [f"scale:profile:s-{i}" for i in range(0, n, 100)]
    c.delete(*gone)
    print("deleted", len(gone), "hashes")
    env2 = dict(env, OMNIPROFILE_TABLE_STORE="rocksdict://", OMNIPROFILE_DATA_DIR=str(workdir / "scale-data"))
    w = Worker(worker_env(env2), workdir / "restart.log")
    t0 = time.perf_counter()
    w.wait_ready(300)
    print(f"ready in {time.perf_counter()-t0:.1f} s, cpu {proc_cpu(w.proc.pid):.1f} s")
    deadline = time.time() + 300
    while time.time() < deadline:
        text = w.log_path.read_text()
        if len(re.findall(r"Redis was behind the table on", text)) >= 4:
            break
        time.sleep(1)
    print(f"catch-up lines after {time.perf_counter()-t0:.1f} s, worker cpu {proc_cpu(w.proc.pid):.1f} s")
    for line in w.log_path.read_text().splitlines():
        if "behind the table" in line or "rewrote" in line: print(line[-160:])
    missing = sum(1 for k in gone if not c.exists(k))
    print("still missing:", missing)
    w.stop()
finally:
    broker.stop(); rs.stop()

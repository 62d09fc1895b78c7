"""What bad input costs the worker, by kind (docs/reliability.md, "Poison ratio").

The fault suite's poison scenario times a clean backlog against a poisoned one and reports one
ratio. This script splits that figure: one worker drains, in rounds, backlogs of the same valid
events (seed 25, retagged each time so nothing is deduplicated) mixed with

- ``clean``: no bad input;
- ``poisoned``: the scenario's own bad input (``tests.integration.test_faults.poison_messages``, 10%
  of the valid messages' count, every kind, inserted at random places);
- ``small``: the same without the 1.2 MB oversized messages;
- ``oversized``: only the oversized messages.

Each backlog is published while the worker is stopped and timed from the restarted worker's
readiness to the update that completed it, as in the scenario. The order of the mixes turns each
round, so none is always first after the warm-up. Prints, per backlog, valid events per second of
wall clock and per worker CPU second, each as a ratio to the clean backlog of the same round, and how
many batches the validation stage handed to identity resolution per 1,000 valid events.

    .venv/bin/python scripts/poison_cost.py [CUSTOMERS [ROUNDS [NAME=VALUE ...]]]

Defaults: 1200 customers, 3 rounds; ``NAME=VALUE`` sets an ``OMNIPROFILE_NAME`` worker setting
(``BATCH_WAIT_MS=100``).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from streams.admin import client_options, producer
from streams.local import RedisServer, Tansu
from streams.throughput import proc_cpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scenario's own helpers, from tests/
from tests.integration.conftest import Stack, make_stack  # noqa: E402
from tests.integration.test_faults import dataset, drain, keyed, poison_messages, retag  # noqa: E402

MIXES = ("clean", "poisoned", "small", "oversized")
OVERSIZED = 1_000_000  # the scenario's oversized messages are 1.2 MB, every other bad input is < 2 KB


def end_offsets(stack: Stack, topics: list[str]) -> dict[str, int]:
    consumer = KafkaConsumer(**client_options(stack.settings))
    try:
        out = {}
        for topic in topics:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            out[topic] = sum(consumer.end_offsets(parts).values()) if parts else 0
        return out
    finally:
        consumer.close()


def backlog(valid: list[tuple[str, dict]], mix: str) -> list[tuple[str, bytes | None, bytes]]:
    messages = [keyed(source, event) for source, event in valid]
    bad = [] if mix == "clean" else poison_messages(valid, 0.10, seed=25)
    if mix == "small":
        bad = [m for m in bad if len(m[2]) < OVERSIZED]
    elif mix == "oversized":
        bad = [m for m in bad if len(m[2]) >= OVERSIZED]
    rng = random.Random(25)
    for message in bad:
        messages.insert(rng.randrange(len(messages) + 1), message)
    return messages


def drain_backlog(stack: Stack, messages, valid: int, total: int, label: str) -> dict[str, float]:
    """Publish ``messages`` with the worker stopped, restart it, wait for ``total`` applied events."""
    assert stack.worker.stop() == 0, stack.worker.tail()
    prod = producer(stack.settings, max_request_size=8 * 1024 * 1024)
    for source, key, value in messages:
        prod.send(stack.names.source(source), key=key, value=value)
    prod.flush()
    prod.close()
    topics = [stack.names.identity_events]
    before = end_offsets(stack, topics)
    worker = stack.start_worker(f"worker-{label}.log")
    ready, cpu_ready = time.time(), proc_cpu(worker.proc.pid)
    at_end: list[float] = []
    done = drain(stack, total, reached_hook=lambda: at_end.append(proc_cpu(worker.proc.pid)))
    after = end_offsets(stack, topics)
    return {
        "rate": valid / (done - ready),
        "per_cpu": valid / (at_end[0] - cpu_ready),
        "batches": (after[topics[0]] - before[topics[0]]) * 1000 / valid,
        "bad": len(messages) - valid,
    }


def main(argv: list[str]) -> int:
    customers = int(argv[0]) if argv else 1200
    rounds = int(argv[1]) if len(argv) > 1 else 3
    settings = {f"OMNIPROFILE_{name}": value for name, _, value in (a.partition("=") for a in argv[2:])}
    tansu, redis_server = Tansu().start(), RedisServer().start()
    try:
        stack = make_stack(tansu, redis_server, Path(tempfile.mkdtemp(prefix="poison-cost-")), **settings)
        base = dataset(customers, seed=25)
        warm = retag(dataset(max(customers // 10, 10), seed=30), "warm-")
        total = len(warm)
        drain_backlog(stack, [keyed(s, e) for s, e in warm], len(warm), total, "warm-up")
        print(f"{len(base):,} valid events per backlog, {customers:,} customers, {rounds} rounds",
              " ".join(f"{k}={v}" for k, v in settings.items()))
        print(f"{'round':>5}  {'mix':<9} {'bad':>5} {'events/s':>9} {'ratio':>6} {'per CPU s':>9} {'ratio':>6} "
              f"{'batches/1k':>10}")
        ratios: dict[str, list[tuple[float, float]]] = {mix: [] for mix in MIXES[1:]}
        for n in range(rounds):
            order = MIXES[n % len(MIXES):] + MIXES[:n % len(MIXES)]
            results = {}
            for mix in order:
                valid = retag(base, f"r{n}{mix}-")
                total += len(valid)
                results[mix] = drain_backlog(stack, backlog(valid, mix), len(valid), total, f"{n}-{mix}")
            clean = results["clean"]
            for mix in MIXES:
                r = results[mix]
                rate_x, cpu_x = r["rate"] / clean["rate"], r["per_cpu"] / clean["per_cpu"]
                if mix != "clean":
                    ratios[mix].append((rate_x, cpu_x))
                print(f"{n:>5}  {mix:<9} {r['bad']:>5,.0f} {r['rate']:>9,.0f} {rate_x:>5.2f}x {r['per_cpu']:>9,.0f} "
                      f"{cpu_x:>5.2f}x {r['batches']:>10.1f}", flush=True)
        print("\nmedian ratio to the clean backlog of the same round (wall clock, per worker CPU second):")
        for mix, pairs in ratios.items():
            print(f"  {mix:<9} {statistics.median(p[0] for p in pairs):.2f}x  {statistics.median(p[1] for p in pairs):.2f}x")
        stack.worker.stop()
    finally:
        redis_server.stop()
        tansu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

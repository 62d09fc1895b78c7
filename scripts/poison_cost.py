"""What bad input costs the worker, by kind (docs/reliability.md, "Poison", "What the cost is made of").

The fault suite's poison scenario times a clean backlog against a poisoned one and reports one
ratio. This script splits that figure: one worker drains, in rounds, backlogs of the same valid
events (seed 25, retagged each time so nothing is deduplicated) mixed with

- ``clean``: no bad input;
- ``poisoned``: the scenario's own bad input (``tests.integration.test_faults.poison_messages``, 10%
  of the valid messages' count, every kind, inserted at random places);
- ``small``: the same bad input without its 1.2 MB oversized messages;
- ``oversized``: only those oversized messages.

Each round makes the bad input once and splits it, so ``small`` and ``oversized`` add up to
``poisoned``. The helpers are the fault scenario's own (``tests/integration``, imported from the
source tree, so this runs from a checkout with the dev dependencies), and the worker's settings are
the scenario's (``OMNIPROFILE_REDIS_RESYNC_CHECK_SECONDS=1``).

Each backlog is published while the worker is stopped and timed from the restarted worker's
readiness to the update that completed it, as in the scenario. The order of the mixes turns each
round, so none is always first after the warm-up. Prints, per backlog, valid events per second of
wall clock and per worker CPU second, each as a ratio to the clean backlog of the same round, and how
many messages the validation stage handed to identity resolution per 1,000 valid events (one per
validation batch, more when a batch is over ``OMNIPROFILE_INTERNAL_MESSAGE_BYTES``).

    .venv/bin/python scripts/poison_cost.py [CUSTOMERS [ROUNDS [NAME=VALUE ...]]]

Defaults: 1200 customers, 3 rounds; ``NAME=VALUE`` sets an ``OMNIPROFILE_NAME`` worker setting
(``BATCH_WAIT_MS=100``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.endoffsets import FetchedEnds
from streams.local import RedisServer, Tansu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scenario's own helpers, from tests/
from tests.integration.conftest import Stack, make_stack  # noqa: E402
from tests.integration.test_faults import (  # noqa: E402
    Message, dataset, drain_backlog, keyed, poison_messages, retag,
)

MIXES = ("clean", "poisoned", "small", "oversized")
OVERSIZED = 1_000_000  # the scenario's oversized messages are 1.2 MB, every other bad input is < 2 KB


def end_offset(stack: Stack, topic: str) -> int:
    """The sum of ``topic``'s partitions' end offsets, as a fetch reports them (Tansu lists the end
    of a multi-record batch short: :mod:`streams.endoffsets`)."""
    return asyncio.run(fetched_end(stack.settings.kafka_bootstrap_servers, topic))


async def fetched_end(bootstrap: str, topic: str) -> int:
    lister = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await lister.start()
    ends = FetchedEnds(lambda *tps: lister.end_offsets(list(tps)),
                       lambda: AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=20))
    try:
        await lister.topics()  # metadata, for the partitions
        parts = [TopicPartition(topic, p) for p in sorted(lister.partitions_for_topic(topic) or ())]
        return sum((await ends.highwaters(*parts)).values()) if parts else 0
    finally:
        await ends.close()
        await lister.stop()


def backlog(valid: list[tuple[str, dict]], bad: list[Message], mix: str) -> list[Message]:
    """The valid events' messages with the part of ``bad`` that ``mix`` takes, at random places."""
    messages = [keyed(source, event) for source, event in valid]
    bad = {"clean": [], "poisoned": bad, "small": [m for m in bad if len(m[2]) < OVERSIZED],
           "oversized": [m for m in bad if len(m[2]) >= OVERSIZED]}[mix]
    rng = random.Random(25)
    for message in bad:
        messages.insert(rng.randrange(len(messages) + 1), message)
    return messages


def measure(stack: Stack, messages: list[Message], valid: int, total: int, label: str) -> dict[str, float]:
    """One backlog drained as in the scenario (:func:`drain_backlog`), with the messages the
    validation stage sent to identity resolution meanwhile (nothing else writes that topic, and
    the previous backlog was drained before this one is published)."""
    before = end_offset(stack, stack.names.identity_events)
    wall, cpu = drain_backlog(stack, messages, total, f"worker-{label}.log")
    return {
        "rate": valid / wall,
        "per_cpu": valid / cpu,
        "batches": (end_offset(stack, stack.names.identity_events) - before) * 1000 / valid,
        "bad": len(messages) - valid,
    }


def parse(argv: list[str]) -> tuple[int, int, dict[str, str]] | None:
    """Customers, rounds and worker settings from the command line, or None (print the usage)."""
    numbers, pairs = argv[:2], argv[2:]
    if not all(n.isdigit() and int(n) > 0 for n in numbers):
        return None
    settings = {"OMNIPROFILE_REDIS_RESYNC_CHECK_SECONDS": "1"}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            return None
        settings["OMNIPROFILE_" + name.upper().removeprefix("OMNIPROFILE_")] = value
    return (int(numbers[0]) if numbers else 1200), (int(numbers[1]) if len(numbers) > 1 else 3), settings


def main(argv: list[str]) -> int:
    parsed = parse(argv)
    if parsed is None:
        print(__doc__)
        return 2
    customers, rounds, settings = parsed
    run(customers, rounds, settings)
    return 0


def run(customers: int, rounds: int, settings: dict[str, str]) -> None:
    tansu, redis_server = Tansu().start(), RedisServer().start()
    stack = None
    try:
        stack = make_stack(tansu, redis_server, Path(tempfile.mkdtemp(prefix="poison-cost-")), **settings)
        base = dataset(customers, seed=25)
        warm = retag(dataset(max(customers // 10, 10), seed=30), "warm-")
        total = len(warm)
        drain_backlog(stack, [keyed(s, e) for s, e in warm], total, "worker-warm-up.log")
        print(f"{len(base):,} valid events per backlog, {customers:,} customers, {rounds} rounds",
              " ".join(f"{k}={v}" for k, v in settings.items()))
        print(f"{'round':>5}  {'mix':<9} {'bad':>5} {'events/s':>9} {'ratio':>6} {'per CPU s':>9} {'ratio':>6} "
              f"{'batches/1k':>10}")
        ratios: dict[str, list[tuple[float, float]]] = {mix: [] for mix in MIXES[1:]}
        for n in range(rounds):
            order = MIXES[n % len(MIXES):] + MIXES[:n % len(MIXES)]
            results = {}
            # The bad input once a round, split between the mixes (all of it is refused, so whose
            # identifiers it carries does not matter).
            bad = poison_messages(retag(base, f"r{n}bad-"), 0.10, seed=25)
            for mix in order:
                valid = retag(base, f"r{n}{mix}-")
                total += len(valid)
                results[mix] = measure(stack, backlog(valid, bad, mix), len(valid), total, f"{n}-{mix}")
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
            wall, per_cpu = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            print(f"  {mix:<9} {wall:.2f}x  {per_cpu:.2f}x")
    finally:
        if stack is not None:
            stack.worker.stop()
        redis_server.stop()
        tansu.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

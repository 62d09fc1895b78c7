"""Channel journeys through a real worker: customers walk a Markov chain of channels with known
transition probabilities; their events arrive shuffled. The hops on ``profiles.hops``, the
transition, conversion and attribution counters in Redis (all-time and per event-time day)
must equal a plain-Python recomputation from the events; deltas older than the windows kept
are counted as late."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict

import orjson
import pytest
import redis
from models.outputs import ChannelHop
from streams.admin import producer, read_topic
from streams.sinks import RedisLayout
from tests.unit.test_journeys import oracle

DAY = 86_400_000
CHANNELS = ["web", "amazon", "ebay", "instagram", "app", "store"]
# Known transition probabilities: the next channel given the current one.
TRANSITIONS = {
    "web": {"web": 0.5, "amazon": 0.1, "instagram": 0.1, "app": 0.2, "store": 0.1},
    "amazon": {"amazon": 0.4, "ebay": 0.3, "web": 0.3},
    "ebay": {"amazon": 0.6, "ebay": 0.2, "web": 0.2},
    "instagram": {"web": 0.6, "app": 0.3, "instagram": 0.1},
    "app": {"app": 0.6, "web": 0.3, "store": 0.1},
    "store": {"store": 0.5, "web": 0.5},
}
BUY = {"web": 0.15, "amazon": 0.2, "ebay": 0.05, "instagram": 0.0, "app": 0.2, "store": 0.3}


def walk(customer: int, rng: random.Random, start_ms: int) -> list[dict]:
    channel = rng.choice(CHANNELS)
    ts = start_ms + rng.randrange(0, 3 * DAY)
    events = []
    for i in range(rng.randrange(6, 16)):
        purchase = rng.random() < BUY[channel]
        props: dict = {"revenue": round(rng.uniform(5, 250), 2)} if purchase else {}
        if channel == "web" and rng.random() < 0.2:
            props["utm_source"] = rng.choice(["instagram", "amazon", "newsletter"])
        source = {"store": "offline", "app": "app", "instagram": "social"}.get(channel, "clickstream")
        etype = {
            ("offline", True): "pos_purchase", ("offline", False): "store_visit",
            ("app", True): "purchase", ("app", False): "app_open",
            ("social", False): "like", ("clickstream", True): "purchase", ("clickstream", False): "page_view",
        }[(source, purchase)]
        events.append({
            "event_id": f"j{customer}-{i}", "source": source, "type": etype, "ts": ts,
            "customer_id": f"walker-{customer}", "channel": channel, "properties": props,
        })
        ts += rng.randrange(60_000, 2 * DAY)
        nxt = TRANSITIONS[channel]
        channel = rng.choices(list(nxt), weights=list(nxt.values()))[0]
    return events


def publish(stack, events: list[dict]) -> None:
    prod = producer(stack.settings)
    for e in events:
        body = {k: v for k, v in e.items() if k != "source"}
        prod.send(stack.names.source(e["source"]), key=e["customer_id"].encode(), value=orjson.dumps(body))
    prod.flush()
    prod.close()


def day_of(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts / 1000))


@pytest.fixture(scope="module")
def journeys(stack):
    rng = random.Random(42)
    now = int(time.time() * 1000)
    start = now - 25 * DAY
    by_customer = {c: walk(c, rng, start) for c in range(120)}
    events = [e for evs in by_customer.values() for e in evs]
    # Two touches far older than the windows kept (35 days): a late hop, in the totals only.
    old = now - 60 * DAY
    late = [
        {"event_id": "late-1", "source": "clickstream", "type": "page_view", "ts": old, "customer_id": "late-walker",
         "channel": "amazon", "properties": {}},
        {"event_id": "late-2", "source": "clickstream", "type": "page_view", "ts": old + 60_000,
         "customer_id": "late-walker", "channel": "ebay", "properties": {}},
    ]
    shuffled = events + late
    rng.shuffle(shuffled)
    publish(stack, shuffled)
    by_customer["late"] = late
    return by_customer


def expected_counters(by_customer: dict) -> tuple[Counter, Counter, dict, dict, dict]:
    hops, conv = Counter(), Counter()
    credit: dict = defaultdict(float)
    revenue: dict = defaultdict(float)
    daily: dict = defaultdict(Counter)
    for events in by_customer.values():
        touches, h, c, cr, rv = oracle(events)
        hops.update(h)
        conv.update(c)
        for k, v in cr.items():
            credit[k] += v
        for k, v in rv.items():
            revenue[k] += v
        for prev, cur in zip(touches, touches[1:]):
            if prev[2] != cur[2]:
                daily[day_of(cur[0])][f"hop|{prev[2]}>{cur[2]}"] += 1
    return hops, conv, credit, revenue, daily


def read_counters(stack) -> dict[str, float]:
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        return {k.decode(): float(v) for k, v in client.hgetall(RedisLayout(stack.settings.redis_key_prefix).journeys()).items()}
    finally:
        client.close()


def wait_for(stack, want_hops: Counter, timeout: float = 180.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        assert stack.worker.proc.poll() is None, stack.worker.tail()
        got = read_counters(stack)
        if {k[4:]: v for k, v in got.items() if k.startswith("hop|") and v} == {k: float(v) for k, v in want_hops.items()}:
            time.sleep(3)  # conversions and credit travel in the same flushes; let the last ones land
            return read_counters(stack)
        assert time.monotonic() < deadline, f"hop counters did not converge: {sorted(got.items())[:20]}"
        time.sleep(1)


def test_transitions_conversions_and_attribution_equal_the_recomputation(stack, journeys):
    hops, conv, credit, revenue, _ = expected_counters(journeys)
    got = wait_for(stack, hops)
    assert {k[5:]: v for k, v in got.items() if k.startswith("conv|") and v} == {k: float(v) for k, v in (+conv).items()}
    purchases = sum(1 for evs in journeys.values() for e in evs if "revenue" in e["properties"])
    for (model, channel), value in credit.items():
        assert got.get(f"credit|{model}|{channel}", 0.0) == pytest.approx(value, abs=1e-4 * purchases + 1e-6), (model, channel)
        if model != "assists":
            assert got.get(f"revenue|{model}|{channel}", 0.0) == pytest.approx(revenue[(model, channel)], abs=0.01 * purchases)
    assert not [k for k in got if k.startswith("credit|") and (k.split("|")[1], k.split("|")[2]) not in credit and got[k]]
    # The contract's hops hash holds the same transition counts.
    client = redis.Redis.from_url(stack.settings.redis_url)
    contract = {k.decode(): float(v) for k, v in client.hgetall(RedisLayout(stack.settings.redis_key_prefix).hops()).items()}
    client.close()
    assert {k: v for k, v in contract.items() if v} == {k: float(v) for k, v in hops.items()}


def test_daily_windows_hold_the_hops_of_their_event_time_day_and_late_ones_are_counted(stack, journeys):
    hops, _, _, _, daily = expected_counters(journeys)
    got = wait_for(stack, hops)
    layout = RedisLayout(stack.settings.redis_key_prefix)
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        for day, want in daily.items():
            window = {k.decode(): float(v) for k, v in client.hgetall(layout.journey_window("day", day)).items()}
            got_hops = {k: v for k, v in window.items() if k.startswith("hop|") and v}
            if day == day_of(journeys["late"][1]["ts"]):
                assert got_hops == {}, "a late hop must not land in a window"
            else:
                assert got_hops == {k: float(v) for k, v in want.items()}, day
        # The 7-day window starting on a day holds the sum of that day and the next six.
        first = min(d for d in daily if d != day_of(journeys["late"][1]["ts"]))
        week = {k.decode(): float(v) for k, v in client.hgetall(layout.journey_window("7d", first)).items()}
        start = time.mktime(time.strptime(first, "%Y-%m-%d")) * 1000
        expected_week: Counter = Counter()
        for d in range(7):
            expected_week.update(daily.get(day_of(int(start + d * DAY)), Counter()))
        assert {k: v for k, v in week.items() if k.startswith("hop|") and v} == {k: float(v) for k, v in expected_week.items()}
    finally:
        client.close()
    assert got.get("late|hop|amazon>ebay") == 1.0


def test_hops_on_the_topic_fold_into_the_recomputed_hops(stack, journeys):
    hops, *_ = expected_counters(journeys)
    wait_for(stack, hops)
    latest: dict[tuple, dict] = {}
    for _, value in read_topic(stack.settings, stack.names.hops, idle_ms=3000):
        hop = ChannelHop.model_validate_json(value)
        latest[(hop.customer_id, hop.from_channel, hop.to_channel, hop.from_ts, hop.ts)] = hop.model_dump()
    live = Counter(f"{k[1]}>{k[2]}" for k, h in latest.items() if not h["withdrawn"])
    assert live == hops

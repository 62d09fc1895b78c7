"""Segments (issue 3) on real parts: a Tansu broker, redis-server and real worker processes.

One stack for the module, configured so that models seed within seconds (3 segments, a
warm-up of 60 vectors, every eligible profile version teaches, snapshots every 4 vectors,
a sweep every 2 s, persona summaries every 2 s). The population is hand-made and seeded:
three clearly different behaviours (web browsers on desktop who never buy, app buyers on
mobile, email readers), a few customers on small channels (etsy, instagram) whose models
only exist because the sweep seeds them early, drifters who browse the web first and then
turn into app buyers, and "young" customers (too few events to teach any model) whose
twins are sent later: after a ``kill -9`` restart and to two workers at once.

What is expected is recomputed here from what the test sent and from the published
profiles (plain Python), never taken from the production code for the same thing.
The tests run in file order on the shared stack: the restart and the second worker come
last, after the checks of the quiet state.
"""

from __future__ import annotations

import collections
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from models.outputs import ProfileUpdate, SegmentChange, SegmentSummaries
from streams.admin import client_options, producer
from streams.app import SEGMENT_MODELS_TABLE
from streams.commands import Worker, worker_env
from streams.settings import Settings
from streams.topics import TopicNames, partition_of
from tests.integration.conftest import Stack, make_stack

SEGMENTS = 3
WARMUP = 60
MIN_EVENTS = 8  # 'all' teaches from 8 events, a channel from 4
CHANNEL_MIN_EVENTS = MIN_EVENTS // 2
SNAPSHOT_EVERY = 4
SWEEP_SECONDS = 2.0
SUMMARY_SECONDS = 2.0
PARTITIONS = 4
ENV = {
    "OMNIPROFILE_SEGMENTS": str(SEGMENTS),
    "OMNIPROFILE_SEGMENT_WARMUP": str(WARMUP),
    "OMNIPROFILE_SEGMENT_LEARN_RATE": "1.0",
    "OMNIPROFILE_SEGMENT_MIN_EVENTS": str(MIN_EVENTS),
    "OMNIPROFILE_SEGMENT_SNAPSHOT_EVERY": str(SNAPSHOT_EVERY),
    "OMNIPROFILE_SEGMENT_SWEEP_SECONDS": str(SWEEP_SECONDS),
    "OMNIPROFILE_SEGMENT_SUMMARY_SECONDS": str(SUMMARY_SECONDS),
    "OMNIPROFILE_PARTITIONS": str(PARTITIONS),
}
# No profile update or segment change for this long: every sweep after the last model
# snapshot has re-scored everyone and moved nobody (a sweep re-scores within about
# SWEEP_SECONDS + SWEEP_SECONDS / 4 of a snapshot).
QUIET_SECONDS = 2 * SWEEP_SECONDS + 2.0

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def at(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- hand-made behaviours ---------------------------------------------------------------------

Sent = tuple[str, dict]  # (source, event)


def event(source: str, cid: str, tag: str, etype: str, ts: str, channel: str | None = None,
          device: str | None = None, **props: Any) -> Sent:
    e: dict[str, Any] = {"event_id": f"{cid}/{tag}", "type": etype, "ts": ts, "customer_id": cid}
    if channel:
        e["channel"] = channel
    if device:
        e["device"] = device
    if props:
        e["properties"] = props
    return source, e


def web_browsing(
    cid: str, rng: random.Random, n: int, tag: str = "w", days: tuple[float, float] = (0.5, 20)
) -> list[Sent]:
    """Browses the own website on a desktop and never buys."""
    return [
        event("clickstream", cid, f"{tag}{i}", rng.choice(["page_view", "page_view", "product_view", "search"]),
              at(rng.uniform(*days)), "web", "desktop", url="https://shop.example/")
        for i in range(n)
    ]


def app_buying(
    cid: str, rng: random.Random, n: int, tag: str = "a", days: tuple[float, float] = (0.5, 20)
) -> list[Sent]:
    """Opens the app on a phone often and buys in it."""
    out = []
    for i in range(n):
        kinds = ["app_open"] * 5 + ["screen_view"] * 2 + ["push_open", "purchase", "purchase"]
        etype = "purchase" if i < 2 else rng.choice(kinds)
        props = {"revenue": round(rng.uniform(20, 90), 2), "order_id": f"{cid}-{tag}{i}"} if etype == "purchase" else {}
        out.append(event("app", cid, f"{tag}{i}", etype, at(rng.uniform(*days)), device="mobile", **props))
    return out


def email_reading(cid: str, rng: random.Random, n: int) -> list[Sent]:
    """Receives, opens and clicks newsletters; no shopping channel."""
    return [
        event("email", cid, f"e{i}", rng.choice(["sent", "sent", "open", "open", "click"]), at(rng.uniform(0.5, 20)),
              campaign_id=f"cmp-{i % 4}", campaign_type="newsletter")
        for i in range(n)
    ]


# Young customers: fewer than MIN_EVENTS events in all and fewer than CHANNEL_MIN_EVENTS on
# every channel, so they never teach a model; their twins are sent later.
YOUNG: dict[str, Callable[[str], list[Sent]]] = {
    "app": lambda cid: [
        event("app", cid, "y0", "app_open", at(2.0), device="mobile"),
        event("app", cid, "y1", "app_open", at(1.5), device="mobile"),
        event("app", cid, "y2", "purchase", at(1.0), device="mobile", revenue=35.5, order_id=f"{cid}-o1"),
    ],
    "web": lambda cid: [
        event("clickstream", cid, "y0", "page_view", at(3.0), "web", "desktop", url="https://shop.example/"),
        event("clickstream", cid, "y1", "product_view", at(2.5), "web", "desktop"),
        event("clickstream", cid, "y2", "page_view", at(2.0), "web", "desktop", url="https://shop.example/"),
    ],
    "email": lambda cid: [
        event("email", cid, "y0", "sent", at(3.0), campaign_type="newsletter"),
        event("email", cid, "y1", "open", at(2.9), campaign_type="newsletter"),
        event("email", cid, "y2", "click", at(2.8), campaign_type="newsletter"),
    ],
}


def chunked(events: list[Sent], rng: random.Random) -> list[list[Sent]]:
    """A customer's events in messages of 1-4 events of one source (an array when more than one)."""
    by_source: dict[str, list[Sent]] = collections.defaultdict(list)
    for s in events:
        by_source[s[0]].append(s)
    out = []
    for items in by_source.values():
        i = 0
        while i < len(items):
            size = rng.randint(1, 4)
            out.append(items[i : i + size])
            i += size
    return out


def publish(stack: Stack, messages: Iterable[list[Sent]]) -> None:
    prod = producer(stack.settings)
    for message in messages:
        source, first = message[0]
        assert all(s == source for s, _ in message)
        value = orjson.dumps(first) if len(message) == 1 else orjson.dumps([e for _, e in message])
        prod.send(stack.names.source(source), key=first["customer_id"].encode(), value=value)
    prod.flush()
    prod.close()


# --- reading the outputs ----------------------------------------------------------------------


class Outputs:
    """Follows profiles.updates, profiles.segments and profiles.segment-summaries from the
    beginning, and the changelog of the segment models' global table (the snapshots the
    learner shares with every worker)."""

    def __init__(self, settings: Settings) -> None:
        names = TopicNames(settings.topic_prefix)
        self.kinds = {
            names.updates: "update",
            names.segments: "change",
            names.segment_summaries: "summary",
            f"{settings.app_id}-{SEGMENT_MODELS_TABLE}-changelog": "model",
        }
        self.consumer = KafkaConsumer(
            **client_options(settings), auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        parts = [TopicPartition(t, p) for t in self.kinds for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning()
        self.updates: dict[str, list[dict]] = collections.defaultdict(list)  # per customer, in order
        self.changes: dict[str, list[dict]] = collections.defaultdict(list)  # per customer, in order
        self.summaries: list[dict] = []
        self.snapshots: list[tuple[str, dict]] = []  # (scope, snapshot) in the order written
        self.last_activity = time.monotonic()  # of an update or a segment change

    def poll(self, timeout_ms: int = 300) -> int:
        count = 0
        for tp, records in self.consumer.poll(timeout_ms=timeout_ms, max_records=50_000).items():
            kind = self.kinds[tp.topic]
            for record in records:
                count += 1
                value = orjson.loads(record.value)
                if kind == "update":
                    self.updates[record.key.decode()].append(value)
                elif kind == "change":
                    self.changes[record.key.decode()].append(value)
                elif kind == "summary":
                    self.summaries.append(value)
                else:
                    key = record.key.decode()
                    self.snapshots.append((orjson.loads(key) if key.startswith('"') else key, value))
                if kind in ("update", "change"):
                    self.last_activity = time.monotonic()
        return count

    def profiles(self) -> dict[str, dict]:
        """The latest profile per customer (highest version)."""
        return {cid: max(ups, key=lambda u: u["version"])["profile"] for cid, ups in self.updates.items()}

    def latest_summaries(self) -> dict[str, dict]:
        """The latest SegmentSummaries per scope (one partition per scope, so arrival order is publish order)."""
        out = {}
        for doc in self.summaries:
            out[doc["scope"]] = doc
        return out

    def close(self) -> None:
        self.consumer.close()


@dataclass
class World:
    stack: Stack
    outputs: Outputs
    workers: list[Worker] = field(default_factory=list)  # every worker process the tests started
    sent: dict[str, list[Sent]] = field(default_factory=lambda: collections.defaultdict(list))

    def alive(self) -> None:
        for worker in [self.stack.worker, *self.workers]:
            if worker.proc.poll() is not None:
                pytest.fail(f"a worker died (exit {worker.proc.returncode}):\n{worker.tail(40)}")

    def wait(self, done: Callable[[], bool], what: Callable[[], str], timeout: float) -> None:
        """Poll the outputs until ``done()``; fail with ``what()`` at the deadline or when a worker dies."""
        deadline = time.monotonic() + timeout
        while True:
            self.outputs.poll(300)
            if done():
                return
            self.alive()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what()}")

    def send(self, customers: dict[str, list[Sent]], rng: random.Random, whole: bool = False) -> None:
        """Publish customers' events, shuffled across customers (one message per customer and source if whole)."""
        messages = []
        for cid, events in customers.items():
            self.sent[cid].extend(events)
            if whole:
                by_source: dict[str, list[Sent]] = collections.defaultdict(list)
                for s in events:
                    by_source[s[0]].append(s)
                messages.extend(by_source.values())
            else:
                messages.extend(chunked(events, rng))
        rng.shuffle(messages)
        publish(self.stack, messages)

    def expected_scopes(self, cid: str) -> set[str]:
        """'all' and every channel the customer's events happened on (defaults as in the contract)."""
        defaults = {"app": "app", "email": "email", "offline": "store"}
        return {"all"} | {e.get("channel") or defaults[source] for source, e in self.sent[cid]}

    def settle(self, customers: Iterable[str], timeout: float = 90.0) -> None:
        """Until every event sent is in its profile, every scope of these customers has a segment,
        and nothing changed for QUIET_SECONDS."""
        customers = sorted(customers)

        def missing() -> list[str]:
            profiles = self.outputs.profiles()
            out = []
            for cid in customers:
                p = profiles.get(cid)
                if p is None or p["events"] != len({e["event_id"] for _, e in self.sent[cid]}):
                    out.append(f"{cid}: events")
                elif not self.expected_scopes(cid) <= set(p["segments"]):
                    out.append(f"{cid}: no segment in {sorted(self.expected_scopes(cid) - set(p['segments']))}")
            return out

        def done() -> bool:
            return not missing() and time.monotonic() - self.outputs.last_activity >= QUIET_SECONDS

        def what() -> str:
            gaps = missing()
            return (f"{len(gaps)} customers not done, e.g. {gaps[:6]}" if gaps
                    else f"a quiet stream (last change {time.monotonic() - self.outputs.last_activity:.1f} s ago)")

        self.wait(done, what, timeout)


def majority(segments: Iterable[str | None]) -> tuple[str | None, float]:
    counts = collections.Counter(segments)
    seg, n = counts.most_common(1)[0]
    return seg, n / sum(counts.values())


# --- the population -------------------------------------------------------------------------

PER_PERSONA = 30
DRIFTERS = 8


@dataclass
class Population:
    personas: dict[str, str]  # customer -> web | app | email
    drifters: list[str]
    young: dict[str, str]  # template -> customer sent before the restart
    small_channels: dict[str, list[str]]  # channel -> its customers
    after_phase_1: dict[str, dict]  # profiles when the drifters had only browsed the web
    changes_after_phase_1: dict[str, int]  # per drifter: segment changes seen by then


@pytest.fixture(scope="module")
def world(broker, redis_server, tmp_path_factory):
    stack = make_stack(broker, redis_server, tmp_path_factory.mktemp("segments"), **ENV)
    outputs = Outputs(stack.settings)
    w = World(stack, outputs)
    yield w
    running = [worker for worker in (*w.workers, stack.worker) if worker.proc.poll() is None]
    for worker in running:  # stop them together: each takes a few seconds
        worker.proc.send_signal(signal.SIGTERM)
    for worker in running:
        try:
            worker.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        worker.stop()
    outputs.close()


@pytest.fixture(scope="module")
def population(world: World) -> Population:
    rng = random.Random(20261123)
    personas: dict[str, str] = {}
    customers: dict[str, list[Sent]] = {}
    for persona, make in (("web", web_browsing), ("app", app_buying), ("email", email_reading)):
        for i in range(PER_PERSONA):
            cid = f"{persona}-{i:02d}"
            personas[cid] = persona
            customers[cid] = make(cid, rng, rng.randint(6, 30))
    # Small channels: four web browsers also shop on etsy, two email readers like posts on
    # instagram (one message each: exactly one vector per customer for the channel's model).
    small = {"etsy": ["web-00", "web-01", "web-02", "web-03"], "instagram": ["email-00", "email-01"]}
    extra: dict[str, list[Sent]] = {}
    for cid in small["etsy"]:
        extra[cid] = [event("clickstream", cid, f"etsy{i}", "product_view", at(rng.uniform(1, 10)), "etsy", "desktop")
                      for i in range(4)]
        extra[cid].append(event("clickstream", cid, "etsy-buy", "purchase", at(rng.uniform(1, 10)), "etsy", "desktop",
                                revenue=round(rng.uniform(10, 40), 2), order_id=f"{cid}-etsy"))
    for cid in small["instagram"]:
        extra[cid] = [event("social", cid, f"ig{i}", "like", at(rng.uniform(1, 10)), "instagram", "mobile")
                      for i in range(4)]
    # Drifters: first only a little web browsing on a desktop (phase 1) ...
    drifters = [f"drift-{i}" for i in range(DRIFTERS)]
    for cid in drifters:
        customers[cid] = web_browsing(cid, rng, 6, tag="p1-", days=(12, 25))
    young = {name: f"young-{name}" for name in YOUNG}
    young_events = {cid: YOUNG[name](cid) for name, cid in young.items()}
    for cid, events in young_events.items():  # too young to teach 'all' or any channel
        per_channel = collections.Counter(e.get("channel") or source for source, e in events)
        assert len(events) < MIN_EVENTS and max(per_channel.values()) < CHANNEL_MIN_EVENTS, cid

    world.send(customers, rng)
    world.send(extra, rng, whole=True)
    world.send(young_events, rng, whole=True)
    everyone = [*customers, *young_events]
    world.settle(everyone)
    after_phase_1 = world.outputs.profiles()
    changes_after_phase_1 = {cid: len(world.outputs.changes[cid]) for cid in drifters}

    # ... then (phase 2) they open the app on their phones often and buy in it.
    world.send({cid: app_buying(cid, rng, 18, tag="p2-", days=(0.5, 10)) for cid in drifters}, rng)
    world.settle(everyone)
    return Population(personas, drifters, young, small, after_phase_1, changes_after_phase_1)


# --- 1. segments per scope, Redis sets and sizes, SegmentChange records ------------------------


def redis_segment_sets(client: redis.Redis, prefix: str) -> dict[tuple[str, str], set[str]]:
    out = {}
    head = f"{prefix}segment:"
    for key in client.scan_iter(match=f"{head}*", count=1000):
        scope, segment = key.decode()[len(head):].rsplit(":", 1)
        members = {m.decode() for m in client.smembers(key)}
        if members:
            out[(scope, segment)] = members
    return out


def check_redis_segments(world: World, profiles: dict[str, dict]) -> None:
    """The Redis segment sets hold exactly the customers whose latest profile is in that
    segment, and the sizes hashes equal the sets' cardinalities."""
    prefix = world.stack.settings.redis_key_prefix
    expected: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for cid, p in profiles.items():
        for scope, segment in p["segments"].items():
            expected[(scope, segment)].add(cid)
    client = redis.Redis.from_url(world.stack.settings.redis_url)
    try:
        actual = redis_segment_sets(client, prefix)
        assert sorted(actual) == sorted(expected)
        for key, members in expected.items():
            assert actual[key] == members, (
                f"set {key}: missing {sorted(members - actual[key])[:5]}, extra {sorted(actual[key] - members)[:5]}")
        scopes = {scope for scope, _ in expected}
        for scope in scopes:
            sizes = {k.decode(): int(v) for k, v in client.hgetall(f"{prefix}segments:{scope}").items()}
            for segment, size in sizes.items():
                assert size == client.scard(f"{prefix}segment:{scope}:{segment}"), (scope, segment)
            assert {s for s, n in sizes.items() if n} == {seg for sc, seg in expected if sc == scope}, scope
        for cid, p in profiles.items():
            assert client.hget(f"{prefix}profile:{cid}", "segment").decode() == (p["segment"] or ""), cid
    finally:
        client.close()


def test_every_channel_seen_has_segments_and_redis_agrees_with_the_profiles(world, population):
    profiles = world.outputs.profiles()
    # Every customer has a segment in 'all' and in every channel their events happened on,
    # small channels included (seeded early by the sweep).
    channels_seen = set()
    for cid in world.sent:
        scopes = world.expected_scopes(cid)
        channels_seen |= scopes - {"all"}
        assert set(profiles[cid]["segments"]) == scopes, cid
        assert profiles[cid]["segment"] == profiles[cid]["segments"]["all"], cid
    assert {"web", "app", "email", "etsy", "instagram"} <= channels_seen
    for channel, members in population.small_channels.items():
        assert all(channel in profiles[cid]["segments"] for cid in members), channel

    check_redis_segments(world, profiles)

    # SegmentChange records: valid, chained per (customer, scope), ending where the profile is.
    pairs_with_changes = set()
    for cid, changes in world.outputs.changes.items():
        previous: dict[str, str | None] = {}
        for change in changes:
            SegmentChange.model_validate(change)
            assert change["customer_id"] == cid
            scope = change["scope"]
            assert change["from_segment"] == previous.get(scope), (cid, change)
            assert change["to_segment"] != change["from_segment"], (cid, change)
            assert re.fullmatch(r"s\d+", change["to_segment"]) and int(change["to_segment"][1:]) < SEGMENTS
            previous[scope] = change["to_segment"]
            pairs_with_changes.add((cid, scope))
        for scope, last in previous.items():
            assert profiles[cid]["segments"][scope] == last, (cid, scope)
    assert pairs_with_changes == {(cid, scope) for cid, p in profiles.items() for scope in p["segments"]}
    for ups in world.outputs.updates.values():
        for update in ups[:3]:
            ProfileUpdate.model_validate(update)


# --- 2. persona summaries ---------------------------------------------------------------------


def membership(profiles: dict[str, dict]) -> dict[str, dict[str, list[str]]]:
    """scope -> segment -> customers, from the profiles."""
    out: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for cid, p in profiles.items():
        for scope, segment in p["segments"].items():
            out[scope][segment].append(cid)
    return out


def check_summary(doc: dict, members: dict[str, list[str]], profiles: dict[str, dict]) -> None:
    """A scope's SegmentSummaries against the members recomputed from the profiles."""
    SegmentSummaries.model_validate(doc)
    scope = doc["scope"]
    total = sum(len(m) for m in members.values())
    assert doc["customers"] == total, scope
    assert doc["partitions"] == PARTITIONS and doc["partitions_reported"] == PARTITIONS, scope
    assert {row["segment"]: row["size"] for row in doc["segments"]} == {s: len(m) for s, m in members.items()}, scope
    assert [row["size"] for row in doc["segments"]] == sorted((row["size"] for row in doc["segments"]), reverse=True)
    assert len({row["label"] for row in doc["segments"]}) == len(doc["segments"]), f"labels not unique in {scope}"
    for row in doc["segments"]:
        blocks = [profiles[c]["summary"] if scope == "all" else profiles[c]["channels"][scope]
                  for c in members[row["segment"]]]
        n = len(blocks)
        assert row["share"] == round(n / total, 4), (scope, row["segment"])
        cents = sum(round(b["revenue"] * 100) for b in blocks)
        assert row["avg_spend"] == round(cents / n / 100, 2), (scope, row["segment"])
        assert row["avg_orders"] == round(sum(b["orders"] for b in blocks) / n, 4), (scope, row["segment"])
        assert row["buyer_share"] == round(sum(b["orders"] > 0 for b in blocks) / n, 4), (scope, row["segment"])
        assert row["avg_events"] == round(sum(b["events"] for b in blocks) / n, 4), (scope, row["segment"])


def test_persona_summaries_match_the_profiles_on_the_topic_in_redis_and_in_the_cli(world, population):
    profiles = world.outputs.profiles()
    # The stream is quiet (population fixture); a summary published a few periods after the
    # last profile update merges tallies all taken after it, so its sizes are exact.
    last_update = max(u["ts"] for ups in world.outputs.updates.values() for u in ups)
    cutoff = (datetime.fromisoformat(last_update.replace("Z", "+00:00")) + timedelta(seconds=2 * SUMMARY_SECONDS + 1))
    cutoff_iso = cutoff.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    scopes = {scope for p in profiles.values() for scope in p["segments"]}
    # Customers who hopped between channels are summarised per channel pair, under scope 'movers'.
    movers: dict[str, int] = {}
    for p in profiles.values():
        for pair, n in p["journey"]["hops"].items():
            if n > 0:
                movers[pair] = movers.get(pair, 0) + 1
    if movers:
        scopes = scopes | {"movers"}

    def fresh() -> dict[str, dict]:
        return {s: d for s, d in world.outputs.latest_summaries().items() if d["ts"] > cutoff_iso}

    world.wait(lambda: set(fresh()) >= scopes, lambda: f"summaries of {sorted(scopes)} after {cutoff_iso}, "
               f"have {sorted(fresh())}", timeout=30)
    groups = membership(profiles)
    latest = world.outputs.latest_summaries()
    assert set(latest) == scopes  # 'all', every channel with segments, and the movers, nothing else
    if movers:
        assert {r["segment"]: r["size"] for r in latest["movers"]["segments"]} == movers
    scopes.discard("movers")
    for scope in scopes:
        check_summary(latest[scope], groups[scope], profiles)

    # The Redis hash holds the documents published on the topic (matched by their time).
    client = redis.Redis.from_url(world.stack.settings.redis_url)
    try:
        in_redis = {k.decode(): orjson.loads(v) for k, v in
                    client.hgetall(f"{world.stack.settings.redis_key_prefix}segment-summaries").items()}
    finally:
        client.close()
    in_redis.pop("movers", None)
    assert set(in_redis) == scopes
    assert len({d["ts"] for d in in_redis.values()}) == 1, "the hash mixes publications"

    def on_topic(docs: dict[str, dict]) -> bool:
        seen = {(d["scope"], d["ts"]) for d in world.outputs.summaries}
        return all((s, d["ts"]) in seen for s, d in docs.items())

    world.wait(lambda: on_topic(in_redis), lambda: "the Redis summaries on the topic", timeout=20)
    published = {(d["scope"], d["ts"]): d for d in world.outputs.summaries}
    for scope, doc in in_redis.items():
        assert doc == published[(scope, doc["ts"])], scope
        check_summary(doc, groups[scope], profiles)

    # omniprofile segments --json --scope '*' prints them (whichever publication it read).
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "segments", "--json", "--scope", "*"],
        env=worker_env(world.stack.env), capture_output=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    printed = orjson.loads(out.stdout)
    assert set(printed) == scopes | ({"movers"} if movers else set())
    printed.pop("movers", None)
    world.wait(lambda: on_topic(printed), lambda: "the printed summaries on the topic", timeout=20)
    published = {(d["scope"], d["ts"]): d for d in world.outputs.summaries}
    for scope, doc in printed.items():
        assert doc == published[(scope, doc["ts"])], scope
        check_summary(doc, groups[scope], profiles)
    # Nothing moved while the summaries were checked.
    assert world.outputs.profiles() == profiles


# --- 5. drift --------------------------------------------------------------------------------


def test_drifting_customers_move_to_the_segment_of_their_new_behaviour(world, population):
    before = population.after_phase_1
    web = [c for c, p in population.personas.items() if p == "web"]
    app = [c for c, p in population.personas.items() if p == "app"]
    web_segment, web_share = majority(before[c]["segment"] for c in web)
    app_segment_before, _ = majority(before[c]["segment"] for c in app)
    assert web_segment != app_segment_before, "web browsers and app buyers share a segment: nothing to drift between"
    assert web_share >= 0.8, f"web browsers are spread over segments ({web_share:.0%} in {web_segment})"
    for cid in population.drifters:
        assert before[cid]["segment"] == web_segment, f"{cid} did not start among the web browsers"

    profiles = world.outputs.profiles()
    # The drifters' vectors teach the model on their way (the web segment's centroid follows
    # them a little), so a few small app buyers may end elsewhere; most stay together.
    app_segment, app_share = majority(profiles[c]["segment"] for c in app)
    assert app_share >= 0.8, f"app buyers are spread over segments ({app_share:.0%} in {app_segment})"
    assert app_segment != web_segment
    for cid in population.drifters:
        assert profiles[cid]["segment"] == app_segment, cid
        later = [c for c in world.outputs.changes[cid][population.changes_after_phase_1[cid]:] if c["scope"] == "all"]
        assert later, f"{cid}: no SegmentChange after the drift"
        assert later[0]["from_segment"] == web_segment and later[-1]["to_segment"] == app_segment, (cid, later)
        # The drifters now also have an app sub-profile with its own segment.
        assert "app" in profiles[cid]["segments"]


# --- 3. model state survives a kill -9 --------------------------------------------------------


def first_update(world: World, cid: str) -> dict | None:
    ups = [u for u in world.outputs.updates.get(cid, []) if u["version"] == 1]
    return ups[0]["profile"] if ups else None


def all_snapshots(world: World, scope: str) -> list[dict]:
    return [snap for name, snap in world.outputs.snapshots if name == scope]


def describe_moves(world: World, moved: dict[str, list[dict]]) -> str:
    """The first moves, with the snapshots shared of their scopes' models (n_learned, version),
    to tell a model that changed from two scorers that disagree."""
    scopes = {c["scope"] for changes in moved.values() for c in changes}
    stamps = {scope: [(s["n_learned"], s["version"]) for s in all_snapshots(world, scope)][-6:] for scope in scopes}
    return f"{dict(list(moved.items())[:3])}; last snapshots of their models: {stamps}"


def test_models_survive_a_worker_restart(world, population):
    stack = world.stack
    profiles = world.outputs.profiles()
    model_before: dict[str, int] = {}
    for changes in world.outputs.changes.values():
        for c in changes:
            model_before[c["scope"]] = max(model_before.get(c["scope"], 0), c["model_version"])
    shared = all_snapshots(world, "all")
    stamps = [(s["n_learned"], s["version"], s["provisional"], s.get("position")) for s in shared]
    assert model_before["all"] >= WARMUP, (  # the 'all' model was seeded for good from a full buffer
        f"the last move in 'all' was made by a model of {model_before['all']} vectors; "
        f"snapshots of 'all' (n_learned, version, provisional, position): {stamps}")
    assert shared and shared[-1]["seeded"] and not shared[-1]["provisional"]
    learned_before = shared[-1]["n_learned"]
    changes_before = {cid: len(c) for cid, c in world.outputs.changes.items()}

    stack.worker.proc.send_signal(signal.SIGKILL)
    stack.worker.proc.wait(30)
    stack.start_worker("worker-2.log")
    restarted_at = time.monotonic()

    # Twins of the young customers scored before the restart: same events, new ids. They
    # are too young to teach, so nothing changes the models while they are scored.
    rng = random.Random(3)
    twins = {f"restart-twin-{name}": name for name in YOUNG}
    world.send({cid: YOUNG[name](cid) for cid, name in twins.items()}, rng, whole=True)
    world.wait(lambda: all(first_update(world, cid) for cid in twins), lambda: "the twins' first updates", timeout=60)
    for cid, name in twins.items():
        original = profiles[population.young[name]]
        assert first_update(world, cid)["segments"] == original["segments"], (
            f"{cid}: no segment at once, or another than its twin's")
        for change in world.outputs.changes[cid]:
            assert change["model_version"] >= model_before[change["scope"]], change

    # With the same models, the sweeps after the restart move nobody who was there before.
    world.wait(lambda: time.monotonic() - restarted_at > 2 * SWEEP_SECONDS + 1.5, lambda: "two sweeps", timeout=30)
    moved = {cid: world.outputs.changes[cid][n:] for cid, n in changes_before.items()
             if len(world.outputs.changes[cid]) > n}
    assert not moved, f"customers moved after the restart: {describe_moves(world, moved)}"

    # The learner goes on from the recovered model: eight app buyers old enough to teach
    # send one message each (one vector for 'all'), so two more snapshots of 'all' follow
    # from the last one (SNAPSHOT_EVERY = 4), never from a model that starts over.
    adults = {f"restart-adult-{i}": app_buying(f"restart-adult-{i}", rng, 10) for i in range(2 * SNAPSHOT_EVERY)}
    world.send(adults, rng, whole=True)
    world.wait(lambda: all_snapshots(world, "all")[-1]["n_learned"] >= learned_before + len(adults),
               lambda: f"the learner to snapshot {len(adults)} more vectors after {learned_before}: "
                       f"{[s['n_learned'] for s in all_snapshots(world, 'all')[-4:]]}", timeout=30)
    for scope in {name for name, _ in world.outputs.snapshots}:
        learned = [s["n_learned"] for s in all_snapshots(world, scope)]
        assert learned == sorted(learned), f"the {scope} model went back: {learned}"
    world.settle([*world.sent])
    for cid in adults:
        for change in world.outputs.changes[cid]:
            assert change["model_version"] >= model_before[change["scope"]], change


# --- 4. two workers, same segments ------------------------------------------------------------


def by_customer_partitions(log_text: str, topic: str) -> set[int] | None:
    """The partitions of ``topic`` in the latest assignment a worker logged (None before any)."""
    tables = log_text.split("Setting newly assigned partitions")
    if len(tables) < 2:
        return None
    latest = tables[-1].split(" for group ")[0]
    for line in latest.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] == topic:
            out = set()
            for part in cells[1].strip("{}").split(","):
                lo, _, hi = part.strip().partition("-")
                out.update(range(int(lo), int(hi or lo) + 1))
            return out
    return set()


def test_two_workers_give_the_same_segment_for_the_same_features(world, population, tmp_path):
    stack = world.stack
    profiles = world.outputs.profiles()
    changes_before = {cid: len(c) for cid, c in world.outputs.changes.items()}
    env = {**stack.env, "OMNIPROFILE_DATA_DIR": str(tmp_path / "data-b")}
    second = Worker(worker_env(env), stack.datadir / "worker-b.log")
    world.workers.append(second)
    second.wait_ready()

    topic = stack.names.by_customer
    owned: dict[str, set[int] | None] = {}

    def split() -> bool:
        for name, worker in (("first", stack.worker), ("second", second)):
            owned[name] = by_customer_partitions(worker.log_path.read_text(errors="replace"), topic)
        a, b = owned["first"], owned["second"]
        return bool(a) and bool(b) and not (a & b) and (a | b) == set(range(PARTITIONS))

    world.wait(split, lambda: f"both workers to own partitions of {topic}: {owned}", timeout=60)
    split_at = time.monotonic()

    # Twins of every young customer on every partition, so both workers score some.
    twins: dict[str, str] = {}
    for name in YOUNG:
        per_partition = collections.Counter()
        j = 0
        while min(per_partition[p] for p in range(PARTITIONS)) < 2:
            cid = f"pair-twin-{name}-{j}"
            j += 1
            per_partition[partition_of(cid.encode(), PARTITIONS)] += 1
            twins[cid] = name
    assert {partition_of(c.encode(), PARTITIONS) for c in twins} == set(range(PARTITIONS))
    world.send({cid: YOUNG[name](cid) for cid, name in twins.items()}, random.Random(4), whole=True)
    world.wait(lambda: all(first_update(world, cid) for cid in twins),
               lambda: f"{sum(1 for c in twins if not first_update(world, c))} twins' first updates", timeout=60)

    for name in YOUNG:
        original = profiles[population.young[name]]["segments"]
        got = {cid: first_update(world, cid)["segments"] for cid, n in twins.items() if n == name}
        by_worker = collections.defaultdict(set)
        for cid, segments in got.items():
            who = "first" if partition_of(cid.encode(), PARTITIONS) in owned["first"] else "second"
            by_worker[who].add(tuple(sorted(segments.items())))
        assert all(segments == original for segments in got.values()), (name, original, dict(by_worker))

    for name, worker in (("first", stack.worker), ("second", second)):
        assert by_customer_partitions(worker.log_path.read_text(errors="replace"), topic) == owned[name], (
            "a rebalance happened while the twins were scored: not sure both workers scored some")
    # Both workers' sweeps re-score the customers of their partitions with the same
    # models: nobody who was there before moves.
    world.wait(lambda: time.monotonic() - split_at > 2 * SWEEP_SECONDS + 1.5
               and time.monotonic() - world.outputs.last_activity > 1.0, lambda: "two sweeps", timeout=30)
    moved = {cid: world.outputs.changes[cid][n:] for cid, n in changes_before.items()
             if len(world.outputs.changes[cid]) > n}
    scorers = {cid: "first" if partition_of(cid.encode(), PARTITIONS) in owned["first"] else "second" for cid in moved}
    assert not moved, f"customers moved once two workers scored them: {describe_moves(world, moved)}, scored by {scorers}"
    # The serving view is still consistent with the profiles, with two workers writing it.
    check_redis_segments(world, world.outputs.profiles())

"""Fault injection: kill, freeze, cut off and flood the worker, then prove nothing was lost and
nothing counted twice.

Every scenario feeds synthetic customers (models.synthetic, with aliases and so merges) to a real
worker at a steady rate, injects its fault mid-stream, waits until the stream is drained, and then
compares three views with the oracle (tests/integration/oracle.py, plain Python over the events the test
sent, never models/):

- the last record per key on ``profiles.updates``,
- the worker's profile table, read back from its changelog topic (last record per key),
- the Redis profile hashes.

``pytest -m faults`` runs the full scenarios (5 kills, a 20 s broker freeze, a 30 s Redis
outage, ...); the normal suite runs each one short. Each scenario adds a row of figures (events,
kills, outages, bad inputs, lost, duplicated, recovery times) to the table printed at the end of
the run and written to ``.omniprofile/faults-report.json``.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from models.synthetic import generate
from streams.admin import OutputFollower, client_options, producer, read_records, read_topic
from streams.commands import Worker, worker_env
from streams.local import RedisServer, Tansu
from streams.throughput import proc_cpu
from tests.integration.conftest import Stack, make_stack
from tests.integration.faults_report import FIGURES, Figures
from tests.integration.oracle import compare, expected_profiles

pytestmark = pytest.mark.faults


@dataclass(frozen=True)
class Intensity:
    full: bool
    customers: int  # synthetic customers (about 13 events each)
    rate: int  # messages per second fed to the worker
    kills: int
    freeze_s: float
    outage_s: float


FULL = Intensity(True, customers=400, rate=100, kills=5, freeze_s=20.0, outage_s=30.0)
SHORT = Intensity(False, customers=60, rate=250, kills=1, freeze_s=4.0, outage_s=5.0)


@pytest.fixture(scope="module")
def intensity(request: pytest.FixtureRequest) -> Intensity:
    """Full scenarios when the run selects the ``faults`` marker (``pytest -m faults``)."""
    return FULL if "faults" in (request.config.option.markexpr or "") else SHORT


@pytest.fixture(scope="module")
def own_broker() -> Iterator[Tansu]:
    """A broker of this module's own: the freeze scenario stops it."""
    tansu = Tansu().start()
    yield tansu
    os.kill(tansu.proc.pid, signal.SIGCONT)  # in case a failed test left it frozen
    tansu.stop()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own: the outage scenario stops it and starts an empty one."""
    server = RedisServer().start()
    yield server
    server.stop()


def scenario_stack(broker: Tansu, redis_server: RedisServer, tmp_path, **extra: str) -> Iterator[Stack]:
    """A fresh worker (own topic prefix, group and Redis prefix), stopped after the scenario."""
    s = make_stack(broker, redis_server, tmp_path, OMNIPROFILE_REDIS_RESYNC_CHECK_SECONDS="1", **extra)
    yield s
    s.worker.stop()


@pytest.fixture()
def stack(own_broker, own_redis, tmp_path) -> Iterator[Stack]:
    yield from scenario_stack(own_broker, own_redis, tmp_path)


@pytest.fixture()
def segmented_stack(own_broker, own_redis, tmp_path) -> Iterator[Stack]:
    """With segment models small enough to be seeded by this many customers, so the Redis segment
    sets have members to lose and to rewrite."""
    yield from scenario_stack(own_broker, own_redis, tmp_path, OMNIPROFILE_SEGMENTS="3",
                              OMNIPROFILE_SEGMENT_WARMUP="20", OMNIPROFILE_SEGMENT_SWEEP_SECONDS="2")


# --- feeding ------------------------------------------------------------------------------------


def dataset(customers: int, seed: int) -> list[tuple[str, dict]]:
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=20)
    return [(ge.source, ge.event) for ge in generate(customers, seed=seed, start=start, days=14).events]


def retag(events: list[tuple[str, dict]], tag: str) -> list[tuple[str, dict]]:
    """The same events for other people: every identifier and event id gets ``tag`` in front."""
    out = []
    for source, event in events:
        event = {**event, "event_id": tag + event["event_id"]}
        for name in ("customer_id", "anonymous_id", "email", "device_id"):
            if event.get(name):
                event[name] = tag + event[name]
        if event["type"] == "alias":
            event["properties"] = {**event["properties"], "previous_id": tag + event["properties"]["previous_id"]}
        out.append((source, event))
    return out


def event_ms(event: dict) -> int:
    ts = event["ts"]
    return ts if isinstance(ts, int) else int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def keyed(source: str, event: dict) -> tuple[str, bytes | None, bytes]:
    key = event.get("customer_id") or event.get("anonymous_id")
    return source, key.encode() if key else None, orjson.dumps(event)


class Feeder(threading.Thread):
    """Publishes (source, key, value) messages at a steady rate; ``sent`` says how far it got.

    The producer retries, so a broker that is frozen for a while delays messages but loses none.
    """

    def __init__(self, stack: Stack, messages: list[tuple[str, bytes | None, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.messages, self.rate = stack, messages, rate
        self.sent = 0
        self.error: BaseException | None = None
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset written

    def run(self) -> None:
        try:
            prod = producer(self.stack.settings, retries=2_147_483_647, request_timeout_ms=90_000,
                            max_block_ms=120_000, max_request_size=8 * 1024 * 1024,
                            max_in_flight_requests_per_connection=1)
            started = time.monotonic()
            futures = []
            for i, (source, key, value) in enumerate(self.messages):
                ahead = started + i / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                futures.append(prod.send(self.stack.names.source(source), key=key, value=value))
                self.sent = i + 1
            prod.flush(timeout=180)
            for future in futures:
                meta = future.get(timeout=60)
                tp = (meta.topic, meta.partition)
                self.offsets[tp] = max(self.offsets.get(tp, -1), meta.offset)
            prod.close()
        except BaseException as exc:  # reported by wait_sent
            self.error = exc

    def wait_until(self, share: float, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < share * len(self.messages):
            assert self.error is None, f"the feeder failed: {self.error!r}"
            assert time.monotonic() < deadline, f"the feeder sent only {self.sent} messages"
            time.sleep(0.05)

    def wait_sent(self, timeout: float = 300.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the feeder did not finish"
        assert self.error is None, f"the feeder failed: {self.error!r}"


# --- the oracle's three views ---------------------------------------------------------------------


def last_by_key(stack: Stack, topic: str) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for key, value in read_topic(stack.settings, topic, idle_ms=600, timeout_s=120):
        if key is not None:
            out[key.decode()] = value
    return out


def redis_profiles(stack: Stack, keys) -> dict[str, dict]:
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        prefix = stack.settings.redis_key_prefix
        pipe = client.pipeline(transaction=False)
        keys = sorted(keys)
        for key in keys:
            pipe.hget(f"{prefix}profile:{key}", "json")
        return {key: orjson.loads(raw) for key, raw in zip(keys, pipe.execute()) if raw is not None}
    finally:
        client.close()


def profiles_changelog(stack: Stack) -> dict[str, bytes | None]:
    return last_by_key(stack, f"{stack.settings.app_id}-profiles-changelog")


def rewritten_problems(stack: Stack, changelog: dict[str, bytes | None]) -> list[str]:
    """Journey totals, identity entries and segment sets in Redis against the worker's tables (their
    changelogs; the profiles' one as read for the same verdict): the parts of the serving view
    besides profiles that a rewrite must bring back."""
    app_id, prefix = stack.settings.app_id, stack.settings.redis_key_prefix
    members: dict[tuple[str, str], set[str]] = {}
    for key, value in changelog.items():
        state = orjson.loads(value) if value is not None else {}
        if "merged_into" in state or not state.get("events"):
            continue
        for scope, segment in (state.get("segments") or {}).items():
            members.setdefault((scope, segment), set()).add(key)
    totals = {orjson.loads(k): orjson.loads(v)
              for k, v in last_by_key(stack, f"{app_id}-journeys-total-changelog").items() if v is not None}
    identities = {k[2:]: orjson.loads(v)
                  for k, v in last_by_key(stack, f"{app_id}-identity-graph-changelog").items()
                  if v is not None and k.startswith("i|")}
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        in_redis = {k.decode(): float(v) for k, v in client.hgetall(f"{prefix}journeys").items()}
        pipe = client.pipeline(transaction=False)
        for ident in identities:
            pipe.get(f"{prefix}identity:{ident}")
        canonical = dict(zip(identities, (v.decode() if v else None for v in pipe.execute())))
        sets = {}
        for raw in client.scan_iter(match=f"{prefix}segment:*", count=1000):
            scope, _, segment = raw.decode().removeprefix(f"{prefix}segment:").partition(":")
            sets[(scope, segment)] = {m.decode() for m in client.smembers(raw)}
        sizes = {(scope, k.decode()): int(v) for scope in {sc for sc, _ in members.keys() | sets.keys()}
                 for k, v in client.hgetall(f"{prefix}segments:{scope}").items()}
    finally:
        client.close()
    problems = [f"journeys {k}: table {v}, Redis {in_redis.get(k)}" for k, v in totals.items()
                if in_redis.get(k) is None or abs(in_redis[k] - round(v, 6)) > 1e-6]
    problems += [f"identity {k}: table {v}, Redis {canonical[k]}" for k, v in identities.items() if canonical[k] != v]
    for where in sorted(members.keys() | sets.keys()):
        want, got = members.get(where, set()), sets.get(where, set())
        if want != got:
            problems.append(f"segment set {where}: missing {sorted(want - got)[:3]}, extra {sorted(got - want)[:3]}")
        if sizes.get(where, 0) != len(want):
            problems.append(f"segment size {where}: table {len(want)}, Redis {sizes.get(where, 0)}")
    assert totals and identities and members, "nothing to compare: no journey totals, identities or segments in the tables"
    return problems


@dataclass
class Verdict:
    lost: int = 0
    duplicated: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)

    def add(self, view: str, key: str, lines: list[str]) -> None:
        if lines:
            self.problems.setdefault(f"{view} {key}", []).extend(lines)


def table_problems(want: dict, state: dict) -> list[str]:
    """The table state's own counters against the oracle (the state is read as stored)."""
    lines = []
    if state.get("events") != want["events"]:
        lines.append(f"events: expected {want['events']}, got {state.get('events')}")
    summary = want.get("summary")
    if summary:
        got = state["all"]
        if got["events"] != summary["events"]:
            lines.append(f"all.events: expected {summary['events']}, got {got['events']}")
        if got["types"] != summary["event_types"]:
            lines.append(f"all.types: expected {summary['event_types']}, got {got['types']}")
        if got["orders"] != summary["orders"] or got["revenue_cents"] != round(summary["revenue"] * 100):
            lines.append(f"orders/revenue: expected {summary['orders']}/{summary['revenue']}, "
                         f"got {got['orders']}/{got['revenue_cents'] / 100}")
    return lines


def judge(stack: Stack, sent: list[tuple[str, dict]], changelog: dict[str, bytes | None] | None = None) -> Verdict:
    """Compare the updates topic, the table changelog (read here unless given) and Redis with the oracle."""
    expected = expected_profiles(sent)
    verdict = Verdict()
    updates = {k: orjson.loads(v) for k, v in last_by_key(stack, stack.names.updates).items() if v is not None}
    if changelog is None:
        changelog = profiles_changelog(stack)
    tables = {k: orjson.loads(v) for k, v in changelog.items() if v is not None}
    tables = {k: v for k, v in tables.items() if "merged_into" not in v}  # forwarding stubs of merged keys
    in_redis = redis_profiles(stack, set(expected) | set(updates))
    for key, want in expected.items():
        got = updates.get(key)
        count = got["profile"]["events"] if got else 0
        verdict.lost += max(0, want["events"] - count)
        verdict.duplicated += max(0, count - want["events"])
        verdict.add("updates", key, ["no ProfileUpdate"] if got is None else compare(want, got["profile"]))
        verdict.add("table", key, ["no table entry"] if key not in tables else table_problems(want, tables[key]))
        if key not in in_redis:
            verdict.add("redis", key, ["no Redis hash"])
        else:
            verdict.add("redis", key, compare(want, in_redis[key]))
            if got is not None and in_redis[key]["version"] != got["profile"]["version"]:
                verdict.add("redis", key, [f"version {in_redis[key]['version']}, last update {got['version']}"])
    for key in sorted(set(updates) - set(expected)):
        verdict.duplicated += updates[key]["profile"]["events"]
        verdict.add("updates", key, ["a profile the oracle does not know"])
    for key in sorted(set(tables) - set(expected)):
        if tables[key].get("events"):
            verdict.add("table", key, ["a table entry the oracle does not know"])
    return verdict


def drain(stack: Stack, total: int, alive: Callable[[], bool] | None = None, timeout: float = 300.0,
          reached_hook: Callable[[], None] | None = None) -> float:
    """Wait until the published profiles hold ``total`` events and stay there.

    Returns when (epoch seconds, the worker's producer timestamp) the last update needed to reach
    ``total`` was published: unlike the time this follower took to read it, it does not include the
    follower's own catch-up on everything published earlier. ``reached_hook`` runs as soon as the
    follower has seen that update (before the wait for the last writes)."""
    follower = OutputFollower(stack.settings)
    try:
        deadline = time.monotonic() + timeout
        while follower.events_applied < total:
            assert (alive or (lambda: stack.worker.proc.poll() is None))(), stack.worker.tail()
            if time.monotonic() >= deadline:
                pytest.fail(f"only {follower.events_applied} of {total} events applied\n{stall_diagnosis(stack)}")
            follower.poll(500)
        reached = follower.last_update_ms / 1000
        if reached_hook is not None:
            reached_hook()
        time.sleep(2.0)  # the last Redis flush and changelog writes
        return reached
    finally:
        follower.close()


def stall_diagnosis(stack: Stack) -> str:
    """What a stalled scenario's failure should show: the profiles holding events for a merge (and
    what they wait for) as the table changelog has them, and the worker's last warnings."""
    tables = {k: orjson.loads(v) for k, v in profiles_changelog(stack).items() if v is not None}
    holds = [f"  {key} waits for {state['pending']['from']} since {state['pending']['since']}, holding "
             f"{[r.get('event_id') for r in state['pending']['held']][:5]}"
             for key, state in sorted(tables.items()) if state.get("pending")]
    lines = stack.worker.log_path.read_text(errors="replace").splitlines()
    warnings = [line for line in lines if "[WARNING]" in line or "[ERROR]" in line][-15:]
    return "\n".join(["merge holds in the table:", *(holds or ["  none"]),
                      "events on the internal topics that no profile applied:", *(unapplied_trail(stack, tables) or ["  none"]),
                      "last warnings of the worker:", *(warnings or ["  none"])])


def unapplied_trail(stack: Stack, tables: dict[str, dict]) -> list[str]:
    """Events that passed validation (on ``identity-events``) but are in no profile's window of
    applied event ids, each with where it was last seen: on ``events-by-customer`` (under which
    customer, at which partition and offset) or not past the identity stage."""
    applied = {event_id for state in tables.values() for event_id in state.get("seen", ())}
    validated = [record["event_id"] for _, value in read_topic(stack.settings, stack.names.identity_events, idle_ms=600)
                 if value for record in orjson.loads(value).get("records", ())]
    routed: dict[str, str] = {}
    for message in read_records(stack.settings, stack.names.by_customer, idle_ms=600):
        batch = (orjson.loads(message.value) if message.value else {}).get("batch") or {}
        for customer, records in batch.items():
            state = tables.get(customer) or {}
            for record in records:
                routed[record["event_id"]] = (
                    f"on events-by-customer[{message.partition}]@{message.offset} for {customer} "
                    f"(the message's customers: {sorted(batch)[:6]}; "
                    f"{customer} in the table: events {state.get('events')}, version {state.get('version')})")
    lines = [f"  {event_id}: {routed.get(event_id, 'not past the identity stage')}"
             for event_id in dict.fromkeys(validated) if event_id not in applied][:20]
    if lines:
        committed = {p: o for (t, p), o in committed_offsets(stack).items() if t == stack.names.by_customer}
        lines.append(f"  the group's committed offsets on events-by-customer: {dict(sorted(committed.items()))}")
    return lines


def finish(stack: Stack, feeder: Feeder, sent: list[tuple[str, dict]], figures: Figures, started: float) -> None:
    """The common end of a fed scenario: everything sent, drained, timed and judged."""
    feeder.wait_sent()
    drain(stack, len(sent))
    figures.seconds = time.monotonic() - started
    record(figures, judge(stack, sent))


def record(figures: Figures, verdict: Verdict) -> None:
    figures.lost, figures.duplicated, figures.differing = verdict.lost, verdict.duplicated, len(verdict.problems)
    FIGURES.append(figures)
    first = list(verdict.problems.items())[:5]
    assert not verdict.problems, f"{len(verdict.problems)} views differ from the oracle, e.g. {first}"
    assert verdict.lost == 0 and verdict.duplicated == 0


class Watch:
    """Follows ``profiles.updates`` through a scenario: how many records so far, and waiting for more
    (the worker producing again after a fault)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.follower = OutputFollower(stack.settings)

    def mark(self) -> int:
        """Records seen up to now (whatever has arrived; it does not wait for the topic to go quiet)."""
        while self.follower.poll(100):
            pass
        return self.follower.updates_seen

    def wait_new(self, since: int, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while self.follower.updates_seen <= since:
            assert time.monotonic() < deadline, f"no new ProfileUpdate within {timeout:.0f} s after the fault"
            self.follower.poll(100)

    def close(self) -> None:
        self.follower.close()


# --- scenarios ------------------------------------------------------------------------------------


def test_kill_9_mid_stream_again_and_again(stack, intensity):
    sent = dataset(intensity.customers, seed=21)
    feeder = Feeder(stack, [keyed(s, e) for s, e in sent], intensity.rate)
    figures = Figures("kill -9 the worker", events=len(sent), kills=intensity.kills)
    watch = Watch(stack)
    started = time.monotonic()
    feeder.start()
    for n in range(intensity.kills):
        feeder.wait_until((n + 1) / (intensity.kills + 1))
        before = watch.mark()
        stack.worker.proc.send_signal(signal.SIGKILL)
        stack.worker.stop()  # reaps it and closes its log
        killed = time.monotonic()
        stack.start_worker(f"worker-{n + 2}.log")
        watch.wait_new(before)
        figures.recovery_s.append(time.monotonic() - killed)
    watch.close()
    finish(stack, feeder, sent, figures, started)


def redis_behind(stack: Stack) -> list[str]:
    """Profiles whose Redis hash is missing or holds an older ``version`` than the table."""
    tables = {k: orjson.loads(v) for k, v in profiles_changelog(stack).items() if v is not None}
    tables = {k: v for k, v in tables.items() if "merged_into" not in v and v.get("events")}
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        prefix = stack.settings.redis_key_prefix
        pipe = client.pipeline(transaction=False)
        for key in sorted(tables):
            pipe.hget(f"{prefix}profile:{key}", "version")
        held = dict(zip(sorted(tables), pipe.execute()))
    finally:
        client.close()
    return [f"{k}: table {v['version']}, Redis {held[k]}" for k, v in sorted(tables.items())
            if held[k] is None or int(held[k]) < v["version"]]


def test_kill_9_with_redis_writes_staged(own_broker, own_redis, tmp_path):
    """Profiles staged for Redis but not flushed when the worker is killed are on the table changelog
    and ``profiles.updates`` already (and their input offsets committed): the restarted worker must
    write them from its recovered table. The flush interval is stretched so that the kill falls
    inside one: nothing reaches Redis but what the first serving-view check flushed.

    Before that, a clean stop: the worker flushes everything staged and leaves a clean-handover mark
    per partition, and the next start skips its catch-up scan; the table then changes, so those marks
    must not spare the scan after the kill."""
    stack = next(scenario_stack(own_broker, own_redis, tmp_path, OMNIPROFILE_REDIS_FLUSH_INTERVAL_MS="60000"))
    n = stack.settings.partitions
    client = redis.Redis.from_url(stack.settings.redis_url)
    try:
        deadline = time.monotonic() + 60
        while client.hlen(f"{stack.settings.redis_key_prefix}serving-synced") < n:
            assert time.monotonic() < deadline, "the worker's first serving-view check did not run"
            time.sleep(0.2)  # its rewrite of the empty tables flushes the sink: let it pass first
        before, sent = retag(dataset(8, seed=24), "pre-"), dataset(20, seed=25)
        drained, _ = feed_and_drain(stack, before, 0)
        assert redis_behind(stack), "every profile reached Redis before the stop: the scenario tests nothing"
        assert stack.worker.stop() == 0, stack.worker.tail()
        marks = client.hgetall(f"{stack.settings.redis_key_prefix}serving-clean")
        expected = sorted([f"profiles:{p}".encode() for p in range(n)] + [b"identity"])
        assert sorted(marks) == expected, (marks, stack.worker.tail())
        assert not redis_behind(stack), "the clean stop left staged profiles unwritten"
        stack.start_worker("worker-2.log")
        deadline = time.monotonic() + 30
        while (skipped := stack.worker.log_path.read_text().count("was handed over cleanly")) < n + 1:
            assert time.monotonic() < deadline, f"{skipped} of {n} partitions and the identity graph skipped " \
                                                "their catch-up"
            time.sleep(0.5)
        assert "Redis was behind the table" not in stack.worker.log_path.read_text()
        assert "Identity graph taken over without a clean handover" not in stack.worker.log_path.read_text()

        drained, feeder = feed_and_drain(stack, sent, drained)
        wait_committed(stack, feeder.offsets)  # nothing is delivered again after the restart
        behind = redis_behind(stack)
        assert behind, "every profile reached Redis before the kill: the scenario tests nothing"
        stack.worker.proc.send_signal(signal.SIGKILL)
        stack.worker.stop()
        stack.env["OMNIPROFILE_REDIS_FLUSH_INTERVAL_MS"] = "200"
        stack.start_worker("worker-3.log")
        deadline = time.monotonic() + 30
        while (left := redis_behind(stack)) and time.monotonic() < deadline:
            time.sleep(1.0)
        assert not left, f"{len(left)} of {len(behind)} profiles still behind in Redis, e.g. {left[:3]}"
        # The identity graph changed after the clean mark too: the kill leaves no mark to trust.
        wait_logged(stack.worker, "Identity graph taken over without a clean handover", 30)
        verdict = judge(stack, before + sent)
        assert not verdict.problems, list(verdict.problems.items())[:5]
    finally:
        client.close()
        stack.worker.stop()


def feed_and_drain(stack: Stack, events: list[tuple[str, dict]], drained: int) -> tuple[int, Feeder]:
    feeder = Feeder(stack, [keyed(s, e) for s, e in events], 400)
    feeder.start()
    feeder.wait_sent()
    drain(stack, drained + len(events))
    return drained + len(events), feeder


def test_two_workers_one_killed(stack, intensity):
    sent = dataset(intensity.customers, seed=22)
    second = Worker(worker_env(stack.env), stack.datadir / "worker-b.log")
    second.wait_ready()
    feeder = Feeder(stack, [keyed(s, e) for s, e in sent], intensity.rate)
    figures = Figures("2 workers, kill -9 one", events=len(sent), kills=1)
    watch = Watch(stack)
    started = time.monotonic()
    feeder.start()
    try:
        feeder.wait_until(0.4)
        before = watch.mark()
        stack.worker.proc.send_signal(signal.SIGKILL)
        stack.worker.stop()  # reaps it and closes its log
        killed = time.monotonic()
        stack.worker = second  # the survivor takes every partition
        watch.wait_new(before)
        figures.recovery_s.append(time.monotonic() - killed)
        feeder.wait_sent()
        drain(stack, len(sent))
    finally:
        stack.worker = second
        watch.close()
    figures.seconds = time.monotonic() - started
    record(figures, judge(stack, sent))


def test_broker_frozen(stack, own_broker, intensity):
    sent = dataset(intensity.customers, seed=23)
    feeder = Feeder(stack, [keyed(s, e) for s, e in sent], intensity.rate)
    figures = Figures(f"broker frozen {intensity.freeze_s:.0f} s (SIGSTOP)", events=len(sent),
                      outages=f"broker {intensity.freeze_s:.0f} s")
    watch = Watch(stack)
    started = time.monotonic()
    feeder.start()
    feeder.wait_until(0.4)
    before = watch.mark()
    os.kill(own_broker.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(intensity.freeze_s)
    finally:
        os.kill(own_broker.proc.pid, signal.SIGCONT)
    resumed = time.monotonic()
    watch.wait_new(before)
    watch.close()
    figures.recovery_s.append(time.monotonic() - resumed)
    finish(stack, feeder, sent, figures, started)
    assert stack.worker.proc.poll() is None, "the worker died while the broker was frozen"


def test_redis_down_then_back_empty(segmented_stack, own_redis, intensity):
    stack = segmented_stack
    sent = dataset(intensity.customers, seed=24)
    feeder = Feeder(stack, [keyed(s, e) for s, e in sent], intensity.rate)
    figures = Figures(f"Redis down {intensity.outage_s:.0f} s, back empty", events=len(sent),
                      outages=f"Redis {intensity.outage_s:.0f} s")
    started = time.monotonic()
    feeder.start()
    feeder.wait_until(0.3)
    port = own_redis.port
    own_redis.stop()
    applied_during = OutputFollower(stack.settings)
    applied_during.poll(500)
    before = applied_during.events_applied
    time.sleep(intensity.outage_s)
    applied_during.poll(500)
    progressed = applied_during.events_applied - before
    applied_during.close()
    restarted = RedisServer(port=port).start()  # same port, no data
    own_redis.proc, own_redis.workdir = restarted.proc, restarted.workdir
    back = time.monotonic()
    feeder.wait_sent()
    drain(stack, len(sent))
    # Redis converges to the table state: poll until the serving view equals the updates.
    deadline = time.monotonic() + 120
    while True:
        changelog = profiles_changelog(stack)
        verdict = judge(stack, sent, changelog)
        for line in rewritten_problems(stack, changelog):
            verdict.add("redis", "(journeys, identity)", [line])
        if not verdict.problems or time.monotonic() > deadline:
            break
        time.sleep(2)
    figures.recovery_s.append(time.monotonic() - back)
    figures.seconds = time.monotonic() - started
    figures.note = f"{progressed} events applied while Redis was down"
    assert progressed > 0, "processing stopped while Redis was down"
    record(figures, verdict)


POISON = {
    "oversized": lambda ev: orjson.dumps({**ev, "properties": {"blob": "x" * 1_200_000}}),
    "JSON null": lambda ev: b"null",
    "a number": lambda ev: b"42",
    "placeholder id": lambda ev: orjson.dumps({**{k: v for k, v in ev.items()
                                                  if k not in ("email", "anonymous_id", "device_id")},
                                                 "customer_id": "undefined"}),
    "unknown source field type": lambda ev: orjson.dumps({**ev, "ts": {"nested": True}}),
}


def poison_messages(sent: list[tuple[str, dict]], share: float, seed: int) -> list[tuple[str, bytes | None, bytes]]:
    """About ``share`` of the valid messages' count in bad input of every kind: the synthetic
    generator's kinds, plus the ones above and a JSON array with one bad element."""
    rng = random.Random(seed)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=20)
    count = round(share * len(sent))
    kinds = list(POISON)
    data = generate(len({e.get("customer_id") for _, e in sent}), seed=seed, start=start, days=14,
                    invalid_rate=share / 2)
    bad = [(b.source, None, b.payload) for b in data.invalid]
    while len(bad) < count:
        source, event = rng.choice(sent)
        kind = kinds[len(bad) % len(kinds)]
        if kind == "placeholder id" and source != "clickstream":
            continue
        bad.append((source, None, POISON[kind]({**event, "event_id": f"poison-{len(bad)}"})))
    return bad[:count]


def test_poison_and_invalid_input(stack, intensity):
    # The full run times each backlog half from a restart: with 400 customers a half took about 4 s,
    # and a hiccup of a second or two swung the ratio between 0.5x and 1.1x. Three times the
    # customers here make the halves long enough to measure.
    customers = intensity.customers * (3 if intensity.full else 1)
    sent = dataset(customers, seed=25)
    good = [keyed(s, e) for s, e in sent]
    bad = poison_messages(sent, 0.10, seed=25)
    # One array mixing a valid event with a bad one: the valid one counts, the bad one is dead-lettered.
    extra_source, extra_event = sent[0]
    extra = {**extra_event, "event_id": "array-valid-1"}
    array = (extra_source, None, orjson.dumps([extra, {"event_id": "array-bad-1"}]))
    # The bad inputs go in at random places; the valid events keep the order the clean backlog has
    # (shuffling them would make the poisoned run slower for another reason: its batches would fold
    # fewer events per customer).
    mixed = [(m, 1) for m in good]
    rng = random.Random(25)
    for item in [(m, 0) for m in bad] + [(array, 1)]:
        mixed.insert(rng.randrange(len(mixed) + 1), item)
    all_sent = sent + [(extra_source, extra)]
    figures = Figures("10% poison and invalid input", events=len(all_sent), bad_inputs=len(bad) + 1)

    clean = retag(dataset(customers, seed=26), "clean-")
    warm_up = retag(dataset(intensity.customers // 10, seed=30), "warm-") if intensity.full else []
    started = time.monotonic()
    figures.note = throughput_note(stack, [(keyed(s, e), 1) for s, e in clean], mixed,
                                   [(keyed(s, e), 1) for s, e in warm_up], intensity)
    figures.seconds = time.monotonic() - started
    letters = [orjson.loads(v) for _, v in read_topic(stack.settings, stack.names.deadletter, idle_ms=600)]
    # Every bad input is dead-lettered, and nothing else is. A producer retry can deliver an input
    # message twice (at least once), and then its dead letter comes twice too: counted, not failed.
    # But one input message (topic, partition, offset, index in an array) is dead-lettered once: the
    # worker only stops cleanly here, and a restart must not process again what it had committed
    # (it did, until the stream partitions waited for the seek at the end of recovery).
    wanted = Counter(fingerprint(value) for _, _, value in bad) + Counter([fingerprint(b'{"event_id":"array-bad-1"}')])
    got = Counter(fingerprint(letter_bytes(letter), letter["value_size"]) for letter in letters)
    figures.note += f"; {len(letters)} dead letters for {len(bad) + 1} bad inputs"
    record(figures, judge(stack, all_sent + clean + warm_up))
    assert not wanted - got, f"bad inputs without a dead letter: {list((wanted - got).items())[:3]}"
    assert set(got) <= set(wanted), f"dead letters of inputs that were not bad: {list(set(got) - set(wanted))[:3]}"
    assert all(letter["error"] for letter in letters), "a dead letter without a reason"
    where = Counter((letter["source_topic"], letter["partition"], letter["offset"], letter["index"]) for letter in letters)
    twice = [(key, count) for key, count in where.items() if count > 1]
    assert not twice, f"{len(twice)} input messages dead-lettered more than once, e.g. {twice[:3]}"


def letter_bytes(letter: dict) -> bytes:
    value = letter["value"]
    return base64.b64decode(value) if letter["value_encoding"] == "base64" else value.encode()


def fingerprint(value: bytes, size: int | None = None) -> tuple[bytes, int] | str:
    """A bad input by its event id when it has one (a dead letter may hold the validated record
    rather than the original bytes), else by its first 100 bytes and its size (dead letters keep only
    the first 64 KiB)."""
    full = len(value) if size is None else size
    if full > 65_536:  # kept only in part: by prefix and size
        return value[:100], full
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("event_id"), str):
        return parsed["event_id"]
    return value[:100], full


Message = tuple[str, bytes | None, bytes]  # source, key, value
Backlog = list[tuple[Message, int]]  # each message with the number of valid events it holds


def throughput_note(stack: Stack, clean: Backlog, poisoned: Backlog, warm_up: Backlog, intensity: Intensity) -> str:
    """Valid events per second of a clean backlog and of the poisoned one, same worker (a figure, not
    an assertion: timings belong in reports), and per CPU second of the worker process (what the
    worker itself spends; unlike the wall clock, not moved by what else runs on the machine).

    Each backlog is published while the worker is stopped, and timed from the restarted worker's
    readiness to the publish time of the update that completed it. A worker's first start has no
    tables to recover and none of the re-processing that follows a recovery's seek, and a later
    restart restores more state; so the full run first drains ``warm_up`` (not timed), then halves
    of both backlogs in the order clean, poisoned, poisoned, clean."""
    runs = [("clean", clean), ("poisoned", poisoned)]
    if intensity.full:
        (c1, c2), (p1, p2) = (halves(backlog) for _, backlog in runs)
        runs = [("warm-up", warm_up), ("clean", c1), ("poisoned", p1), ("poisoned", p2), ("clean", c2)]
    events = Counter[str]()
    seconds = Counter[str]()
    cpu = Counter[str]()
    total = 0
    for n, (label, backlog) in enumerate(runs):
        valid = sum(count for _, count in backlog)
        total += valid
        wall, used = drain_backlog(stack, [message for message, _ in backlog], total, f"worker-backlog-{n}.log")
        seconds[label] += wall
        cpu[label] += used
        events[label] += valid
    clean_rate, poisoned_rate = (events[label] / seconds[label] for label in ("clean", "poisoned"))
    clean_cpu, poisoned_cpu = (events[label] / cpu[label] for label in ("clean", "poisoned"))
    order = ", ".join(label for label, _ in runs)
    return (f"valid events/s: clean {clean_rate:,.0f}, with poison {poisoned_rate:,.0f} "
            f"({poisoned_rate / clean_rate:.2f}x; {order}); per worker CPU second: clean {clean_cpu:,.0f}, "
            f"with poison {poisoned_cpu:,.0f} ({poisoned_cpu / clean_cpu:.2f}x)")


def drain_backlog(stack: Stack, messages: list[Message], total: int, log_name: str) -> tuple[float, float]:
    """Publish ``messages`` while the worker is stopped, restart it, and wait until the published
    profiles hold ``total`` events: the seconds and the worker's CPU seconds from its readiness to
    the update that completed them (:func:`drain`)."""
    assert stack.worker.stop() == 0, stack.worker.tail()
    prod = producer(stack.settings, max_request_size=8 * 1024 * 1024)
    for source, key, value in messages:
        prod.send(stack.names.source(source), key=key, value=value)
    prod.flush()
    prod.close()
    worker = stack.start_worker(log_name)
    ready, cpu_ready = time.time(), proc_cpu(worker.proc.pid)
    at_end: list[float] = []
    done = drain(stack, total, reached_hook=lambda: at_end.append(proc_cpu(worker.proc.pid)))
    return done - ready, at_end[0] - cpu_ready


def halves(backlog: Backlog) -> tuple[Backlog, Backlog]:
    middle = len(backlog) // 2
    return backlog[:middle], backlog[middle:]


def test_duplicates_shuffled_and_late_events(stack, intensity):
    sent = dataset(intensity.customers, seed=27)
    rng = random.Random(27)
    by_time = sorted(sent, key=lambda se: event_ms(se[1]))
    # Shuffled within each hour of event time.
    hours: dict[int, list] = {}
    for source, event in by_time:
        hours.setdefault(event_ms(event) // 3_600_000, []).append((source, event))
    order = []
    for hour in sorted(hours):
        chunk = hours[hour]
        rng.shuffle(chunk)
        order.extend(chunk)
    # 5% held back and sent last (days late), 10% sent again at a random later point.
    late = set(rng.sample(range(len(order)), len(order) // 20))
    stream = [m for i, m in enumerate(order) if i not in late] + [order[i] for i in sorted(late)]
    for item in rng.sample(stream, len(stream) // 10):
        stream.insert(rng.randrange(stream.index(item) + 1, len(stream) + 1), item)
    feeder = Feeder(stack, [keyed(s, e) for s, e in stream], intensity.rate * 2)
    figures = Figures("10% duplicates, shuffled, late", events=len(sent),
                      note=f"{len(stream) - len(sent)} duplicates, {len(late)} late")
    started = time.monotonic()
    feeder.start()
    finish(stack, feeder, sent, figures, started)


def test_scale_one_two_one_under_load(stack, intensity):
    sent = dataset(intensity.customers, seed=28)
    feeder = Feeder(stack, [keyed(s, e) for s, e in sent], intensity.rate)
    figures = Figures("1 -> 2 -> 1 workers under load", events=len(sent))
    started = time.monotonic()
    feeder.start()
    feeder.wait_until(0.25)
    second = Worker(worker_env(stack.env), stack.datadir / "worker-b.log")
    second.wait_ready()
    # Each handover is clean (the giving worker's streams idle, its writes flushed): the taking worker
    # trusts Redis instead of scanning its new partitions, both ways; the oracle below judges Redis.
    wait_logged(second, "was handed over cleanly", 30)
    feeder.wait_until(0.6)
    assert second.stop() == 0, second.tail()
    wait_logged(stack.worker, "was handed over cleanly", 30)
    finish(stack, feeder, sent, figures, started)


def wait_logged(worker: Worker, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log_path.read_text():
        assert time.monotonic() < deadline, f"not logged in {timeout:.0f} s: {text!r}\n{worker.tail()}"
        time.sleep(0.2)


def updates_count(stack: Stack) -> int:
    """Records on ``profiles.updates``, read until the topic is quiet (only where nothing runs)."""
    return sum(1 for _ in read_topic(stack.settings, stack.names.updates, idle_ms=600))


def committed_offsets(stack: Stack) -> dict[tuple[str, int], int]:
    admin = KafkaAdminClient(**client_options(stack.settings))
    try:
        offsets = admin.list_group_offsets({stack.settings.app_id: None})[stack.settings.app_id]
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


def wait_committed(stack: Stack, fed: dict[tuple[str, int], int], timeout: float = 30.0) -> None:
    """Wait until the worker's group has committed what feeds the profiles: every input partition
    past ``fed`` (the feeder's last offsets), the identity records and by-customer stream up to
    their end offsets as the broker reports them (Tansu's can fall short of a last multi-record
    batch, never beyond it)."""
    want = {tp: last + 1 for tp, last in fed.items()}
    consumer = KafkaConsumer(**client_options(stack.settings))
    try:
        internal = (stack.names.identity_events, stack.names.by_customer)
        tps = [TopicPartition(t, p) for t in internal for p in consumer.partitions_for_topic(t) or ()]
        want.update({(tp.topic, tp.partition): end for tp, end in consumer.end_offsets(tps).items() if end})
    finally:
        consumer.close()
    deadline = time.monotonic() + timeout
    while short := {tp: (got, end) for tp, end in want.items() if (got := committed_offsets(stack).get(tp, -1)) < end}:
        assert time.monotonic() < deadline, f"offsets not committed in {timeout:.0f} s (got, end): {short}"
        time.sleep(0.5)


def test_sigterm_flushes_and_a_restart_resumes_from_committed_offsets(stack, intensity):
    sent = dataset(intensity.customers, seed=29)
    half = len(sent) // 2
    first = Feeder(stack, [keyed(s, e) for s, e in sent[:half]], intensity.rate * 2)
    figures = Figures("SIGTERM, restart", events=len(sent))
    started = time.monotonic()
    first.start()
    first.wait_sent()
    drain(stack, half)
    assert stack.worker.stop() == 0, stack.worker.tail()
    # Everything the stopped worker published is in Redis, at the same version.
    updates = {k: orjson.loads(v) for k, v in last_by_key(stack, stack.names.updates).items() if v is not None}
    in_redis = redis_profiles(stack, updates)
    stale = [k for k, u in updates.items() if in_redis.get(k, {}).get("version") != u["version"]]
    assert not stale, f"{len(stale)} profiles not flushed to Redis at SIGTERM, e.g. {stale[:5]}"
    # Every input message it read was committed: the offsets are the ends the producer saw.
    committed = committed_offsets(stack)
    behind = {tp: (committed.get(tp), last + 1) for tp, last in first.offsets.items() if committed.get(tp) != last + 1}
    assert not behind, f"committed offsets short of what was processed: {behind}"
    count = updates_count(stack)
    restarted = time.monotonic()
    stack.start_worker("worker-2.log")
    figures.recovery_s.append(time.monotonic() - restarted)
    time.sleep(3)
    assert updates_count(stack) == count, "the restarted worker published again what it had done"
    second = Feeder(stack, [keyed(s, e) for s, e in sent[half:]], intensity.rate)
    second.start()
    second.wait_sent()
    drain(stack, len(sent))
    figures.seconds = time.monotonic() - started
    record(figures, judge(stack, sent))

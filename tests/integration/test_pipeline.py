"""The whole path on real parts: kafka-python producer -> Tansu -> worker -> profiles.updates and Redis.

Expected profiles come from tests/integration/oracle.py (plain Python over the raw events),
never from models/. This module's worker stores the Redis ``json`` field compressed
(``OMNIPROFILE_REDIS_JSON_CODEC=zlib``) on a Redis set up as the README advises for it; the other
modules keep the default, plain JSON.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import time
import zlib
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import redis

from models.outputs import DeadLetter, ProfileUpdate
from models.synthetic import generate
from streams.admin import OutputFollower, producer
from streams.commands import worker_env
from tests.integration.conftest import make_stack
from tests.integration.oracle import compare, expected_profiles

CUSTOMERS = 2000


def wait_for(follower: OutputFollower, done, stack, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if stack.worker.proc.poll() is not None:
            pytest.fail(f"the worker died:\n{stack.worker.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out: {follower.events_applied} events applied, {len(follower.dead_letters)} dead letters"
            )
        follower.poll(1000)


@pytest.fixture(scope="module")
def stack(broker, redis_server, tmp_path_factory):
    client = redis.Redis.from_url(redis_server.url)
    old = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    client.config_set("hash-max-listpack-value", 1024)
    s = make_stack(broker, redis_server, tmp_path_factory.mktemp("pipeline"), OMNIPROFILE_REDIS_JSON_CODEC="zlib")
    yield s
    s.worker.stop()
    client.config_set("hash-max-listpack-value", old)
    client.close()


@pytest.fixture(scope="module")
def published(stack):
    """2,000 customers' events, shuffled (out of order), 5% sent twice, a quarter as single-event
    messages (the costly path: one Faust message per event) and the rest in JSON arrays of 50;
    waits until every event is in a profile."""
    start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=28)
    dataset = generate(CUSTOMERS, seed=11, start=start, days=28)
    rng = random.Random(5)
    messages = [(ge.source, ge.event) for ge in dataset.events]
    rng.shuffle(messages)
    duplicates = rng.sample(messages, len(messages) // 20)
    single = len(messages) // 4
    prod = producer(stack.settings)
    for source, event in messages[:single] + duplicates:
        key = (event.get("customer_id") or event.get("anonymous_id")).encode()
        prod.send(stack.names.source(source), key=key, value=orjson.dumps(event))
    by_source: dict[str, list[dict]] = {}
    for source, event in messages[single:]:
        by_source.setdefault(source, []).append(event)
    for source, events in by_source.items():
        for i in range(0, len(events), 50):
            prod.send(stack.names.source(source), value=orjson.dumps(events[i : i + 50]))
    prod.flush()
    prod.close()

    follower = OutputFollower(stack.settings)
    wait_for(follower, lambda: follower.events_applied >= len(messages), stack)
    time.sleep(1.5)  # the last Redis flush (every 200 ms) and any stray extra update
    follower.poll(1000)
    yield dataset, messages + duplicates, follower
    follower.close()


def test_at_least_20000_events_over_2000_customers(published):
    dataset, sent, _ = published
    assert len(dataset.events) >= 20_000
    assert len({c.customer_id for c in dataset.customers}) == CUSTOMERS
    assert len(sent) > len(dataset.events)  # duplicates were sent too


def test_profiles_equal_independent_recomputation(published):
    _, sent, follower = published
    expected = expected_profiles(sent)
    assert sorted(follower.latest) == sorted(expected)
    problems = {}
    for key, want in expected.items():
        diff = compare(want, follower.latest[key]["profile"])
        if diff:
            problems[key] = diff
    assert not problems, f"{len(problems)} profiles differ, e.g. {list(problems.items())[:3]}"


def test_updates_follow_the_contract(published):
    _, _, follower = published
    for update in list(follower.latest.values())[:200]:
        ProfileUpdate.model_validate(update)
        assert update["profile"]["customer_id"] == update["customer_id"]
        assert update["version"] == update["profile"]["version"]


def test_duplicates_changed_nothing(published):
    dataset, _, follower = published
    # Every distinct event counted exactly once, even though 5% were delivered twice.
    assert follower.events_applied == len(dataset.events)


def test_redis_holds_the_latest_profile_of_everyone(published, stack):
    _, _, follower = published
    client = redis.Redis.from_url(stack.settings.redis_url)
    prefix = stack.settings.redis_key_prefix
    mismatched = []
    for key, update in follower.latest.items():
        fields = client.hgetall(f"{prefix}profile:{key}")
        profile = update["profile"]
        if (
            int(fields[b"version"]) != update["version"]
            or orjson.loads(zlib.decompress(fields[b"json"])) != profile
            or int(fields[b"orders"]) != profile["summary"]["orders"]
            or int(fields[b"events"]) != profile["summary"]["events"]
            or float(fields[b"revenue"]) != round(profile["summary"]["revenue"], 2)
        ):
            mismatched.append(key)
    client.close()
    assert not mismatched, f"{len(mismatched)} Redis hashes differ from the latest update, e.g. {mismatched[:5]}"


def test_the_profile_command_reads_the_compressed_json(published, stack):
    _, _, follower = published
    key, update = sorted(follower.latest.items())[0]
    client = redis.Redis.from_url(stack.settings.redis_url)
    stored = client.hget(f"{stack.settings.redis_key_prefix}profile:{key}", "json")
    client.close()
    assert stored[:1] == b"x"  # a zlib stream, not JSON text
    for extra in ([], ["--compact"]):
        out = subprocess.run([sys.executable, "-m", "streams.cli", "profile", key, *extra], env=worker_env(stack.env),
                             capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert orjson.loads(out.stdout) == update["profile"]


def test_the_worker_says_when_redis_keeps_compressed_profiles_in_the_large_encoding(stack, caplog):
    from streams.cli import listpack_hint

    client = redis.Redis.from_url(stack.settings.redis_url)
    old = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    try:
        with caplog.at_level(logging.WARNING, logger="omniprofile"):
            listpack_hint(client)  # 1024, as this module's Redis is set up
            assert not caplog.records
            client.config_set("hash-max-listpack-value", 64)
            listpack_hint(client)
        assert "hash-max-listpack-value is 64" in caplog.text and "'hash-max-listpack-value 1024'" in caplog.text
    finally:
        client.config_set("hash-max-listpack-value", old)
        client.close()
    assert "hash-max-listpack-value" not in stack.worker.log_path.read_text()  # started on 1024: no warning


def test_redis_never_takes_an_older_version(published, stack):
    """A stale write (lower version) arriving late must not replace the newer hash."""
    from streams.sinks import RedisLayout, RedisProfileSink
    import asyncio

    _, _, follower = published
    key, update = next((k, u) for k, u in follower.latest.items() if u["version"] > 1)
    sink = RedisProfileSink(stack.settings.redis_url, RedisLayout(stack.settings.redis_key_prefix))
    sink.stage(key, update["version"] - 1, {"version": str(update["version"] - 1), "orders": "-1"})
    written = asyncio.run(sink.close())
    client = redis.Redis.from_url(stack.settings.redis_url)
    fields = client.hgetall(f"{stack.settings.redis_key_prefix}profile:{key}")
    client.close()
    assert written is None
    assert sink.stats.skipped_stale == 1 and sink.stats.written == 0
    assert int(fields[b"version"]) == update["version"]
    assert fields[b"orders"] != b"-1"


def test_profile_command_prints_the_redis_profile(published, stack):
    import subprocess
    import sys

    from streams.commands import worker_env

    _, _, follower = published
    key = sorted(k for k in follower.latest if not k.startswith("anon:"))[0]
    out = subprocess.run(
        [sys.executable, "-m", "streams.cli", "profile", key, "--compact"],
        env=worker_env(stack.env), capture_output=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout) == follower.latest[key]["profile"]
    missing = subprocess.run(
        [sys.executable, "-m", "streams.cli", "profile", "no-such-customer"],
        env=worker_env(stack.env), capture_output=True, timeout=60,
    )
    assert missing.returncode == 1 and b"no profile" in missing.stderr


# --- bad input ----------------------------------------------------------------------------------


def _valid(event_id: str, ts: str, **extra) -> dict:
    return {"event_id": event_id, "type": "page_view", "ts": ts, "customer_id": "bad-input-c1",
            "channel": "web", "properties": {"url": "https://shop.example/"}, **extra}


def test_bad_input_is_dead_lettered_and_the_worker_goes_on(published, stack):
    _, _, follower = published
    before = len(follower.dead_letters)
    now = datetime.now(timezone.utc)
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    big = orjson.dumps(_valid("bad-big", ts, properties={"text": "x" * 2_000_000}))
    bad = {
        "truncated JSON": (orjson.dumps(_valid("bad-trunc", ts))[:-7], "invalid JSON"),
        "non-UTF-8": (b'{"event_id": "bad-\xe9\xff", "type": "page_view"}', "not UTF-8"),
        "empty value": (b"", "empty message value"),
        "wrong types": (
            orjson.dumps({**_valid("bad-types", ts), "type": "purchase", "properties": {"revenue": "abc"}}),
            "properties.revenue",
        ),
        "no identifier": (
            orjson.dumps({k: v for k, v in _valid("bad-noid", ts).items() if k != "customer_id"}),
            "no identifier",
        ),
        "unknown type": (orjson.dumps({**_valid("bad-type", ts), "type": "teleport"}), "not a clickstream event type"),
        "2 MB payload": (big, "over the limit"),
        "far future": (orjson.dumps(_valid("bad-future", "2099-01-01T00:00:00Z")), "in the future"),
        "far past": (orjson.dumps(_valid("bad-past", 86_400_000)), "before 2000-01-01"),
    }
    prod = producer(stack.settings, max_request_size=8 * 1024 * 1024)
    topic = stack.names.source("clickstream")
    prod.send(topic, value=orjson.dumps(_valid("good-1", ts)))
    for value, _ in bad.values():
        prod.send(topic, value=value)
    prod.send(topic, value=orjson.dumps(_valid("good-2", ts)))
    prod.send(topic, value=orjson.dumps([_valid("good-3", ts), {"event_id": "bad-in-array"}]))
    prod.flush()
    prod.close()

    def processed() -> bool:
        profile = follower.latest.get("bad-input-c1")
        return profile is not None and profile["profile"]["events"] >= 3 and len(follower.dead_letters) >= before + len(bad) + 1

    wait_for(follower, processed, stack, timeout=120)
    letters = follower.dead_letters[before:]
    assert len(letters) == len(bad) + 1
    for letter in letters:
        DeadLetter.model_validate(letter)
        assert letter["source_topic"] == topic
    reasons = [letter["error"] for letter in letters]
    for name, (_, expected_reason) in bad.items():
        assert any(expected_reason in r for r in reasons), f"{name}: no dead letter says {expected_reason!r} in {reasons}"
    in_array = [lt for lt in letters if lt["index"] is not None]
    assert len(in_array) == 1 and in_array[0]["index"] == 1 and "bad-in-array" in in_array[0]["value"]
    large = next(lt for lt in letters if "over the limit" in lt["error"])
    assert large["value_truncated"] and large["value_size"] == len(big) and len(large["value"]) <= 65_536
    binary = next(lt for lt in letters if "not UTF-8" in lt["error"])
    assert binary["value_encoding"] == "base64"
    # The valid events around the bad ones all made it, and the worker is still running.
    assert follower.latest["bad-input-c1"]["profile"]["events"] == 3
    assert stack.worker.proc.poll() is None

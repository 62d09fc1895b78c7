"""Identity stitching, merges and erasure through a real worker (Tansu, Redis, Faust).

The story runs in phases, each waiting for the worker: anonymous browsing, then a login;
two devices and an email that link up; two known customers sharing a device (never merged);
redelivered events after a merge (counted once); placeholder ids; an erasure, after which
late events for the person are dropped. Expected counts come from the events in the test.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import orjson
import pytest
import redis

from models.events import hash_identifier
from models.outputs import ErasureAudit, IdentityChange
from streams.admin import OutputFollower, producer, read_topic
from streams.commands import worker_env
from streams.sinks import RedisLayout
from tests.integration.conftest import make_stack

HOUR = 3_600_000
KEY = b"integration-test-key"  # OMNIPROFILE_HASH_KEY of make_stack
T0 = int(time.time() * 1000) - 5 * 24 * HOUR


def event(eid: str, source: str, etype: str, hours: float, **fields) -> tuple[str, dict]:
    body = {"event_id": eid, "type": etype, "ts": T0 + int(hours * HOUR), **fields}
    if etype == "purchase":
        body.setdefault("properties", {})["revenue"] = 20.0
    return source, body


def browse(prefix: str, n: int, start: float, **ids) -> list[tuple[str, dict]]:
    return [event(f"{prefix}-{i}", "clickstream", "page_view", start + i * 0.1, channel=ch, **ids)
            for i, ch in zip(range(n), ["web", "amazon", "web", "ebay"] * n)]


def publish(stack, events: list[tuple[str, dict]]) -> None:
    prod = producer(stack.settings)
    for source, body in events:
        prod.send(stack.names.source(source), value=orjson.dumps(body))
    prod.flush()
    prod.close()


def wait_for(what: str, check: Callable[[], bool], follower: OutputFollower, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        follower.poll(200)
        if check():
            return
    raise AssertionError(f"timed out waiting for {what}")


def events_of(follower: OutputFollower, key: str) -> int | None:
    update = follower.latest.get(key)
    return update["profile"]["events"] if update else None


def cli(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=worker_env(stack.env),
                          capture_output=True, timeout=timeout)


def latest_by_key(stack, topic: str) -> dict[bytes, bytes | None]:
    return {k: v for k, v in read_topic(stack.settings, topic)}


@pytest.fixture(scope="module")
def stack(broker, redis_server, tmp_path_factory):
    s = make_stack(broker, redis_server, tmp_path_factory.mktemp("identity"),
                   OMNIPROFILE_SEGMENT_SWEEP_SECONDS="4", OMNIPROFILE_SEGMENT_MIN_EVENTS="2")
    yield s
    s.worker.stop()


@pytest.fixture(scope="module")
def story(stack):
    follower = OutputFollower(stack.settings)
    sent: dict[str, list[tuple[str, dict]]] = {}

    # 1. Anonymous browsing, then a login that names the cookie id.
    sent["anon"] = browse("a1", 6, 0, anonymous_id="cookie-1")
    publish(stack, sent["anon"])
    wait_for("the anonymous profile", lambda: events_of(follower, "anon:cookie-1") == 6, follower)
    sent["login"] = [event("login-1", "clickstream", "purchase", 1, customer_id="ann", anonymous_id="cookie-1",
                           channel="web")]
    publish(stack, sent["login"])
    wait_for("the login merge", lambda: events_of(follower, "ann") == 7, follower)

    # 2. Two devices and an email link up, in three steps.
    sent["devices"] = (browse("d1", 5, 2, anonymous_id="cookie-2", device_id="phone-9")
                       + [event(f"d2-{i}", "app", "app_open", 3 + i * 0.1, anonymous_id="cookie-3",
                                device_id="tablet-4") for i in range(4)]
                       + [event("mail-1", "email", "open", 4, anonymous_id="cookie-3", email="Bo@Example.org")])
    publish(stack, sent["devices"])
    sent["bo"] = [event("bo-id", "identify", "identify", 5, customer_id="bo", email="bo@example.org",
                        device_id="phone-9", properties={"traits": {"age": 41}})]
    publish(stack, sent["bo"])
    wait_for("two devices and an email", lambda: events_of(follower, "bo") == 11, follower)

    # 3. Two known customers on one shared device.
    sent["shared"] = (browse("cy", 4, 6, customer_id="cy", device_id="family-pc")
                      + browse("di", 3, 7, customer_id="di", device_id="family-pc"))
    publish(stack, sent["shared"])
    wait_for("the shared device", lambda: events_of(follower, "cy") == 4 and events_of(follower, "di") == 3,
             follower)

    # 4. Placeholder ids that must not link; then anonymous events redelivered after the merge,
    #    in one message (so in order) with a marker after them.
    sent["placeholders"] = (browse("ed", 3, 8, customer_id="ed", anonymous_id="undefined")
                            + browse("fay", 3, 8, customer_id="fay", anonymous_id="undefined")
                            + [event("nobody-1", "clickstream", "page_view", 8, anonymous_id="null", channel="web")])
    publish(stack, sent["placeholders"])
    wait_for("the placeholders", lambda: events_of(follower, "ed") == 3 and events_of(follower, "fay") == 3
             and len(follower.dead_letters) == 1, follower)
    again = [body for _, body in sent["anon"][:3] + sent["login"]]
    marker = event("ann-marker", "clickstream", "page_view", 9, customer_id="ann", channel="web")[1]
    prod = producer(stack.settings)
    prod.send(stack.names.source("clickstream"), value=orjson.dumps([*again, marker]))
    prod.flush()
    prod.close()
    # The batch is folded at once: the first update that has the marker shows what the redeliveries did.
    wait_for("ann's marker", lambda: events_of(follower, "ann") >= 8, follower)
    return follower, sent


def test_anonymous_history_joins_the_profile_at_login(stack, story):
    follower, sent = story
    profile = follower.latest["ann"]["profile"]
    history = sent["anon"] + sent["login"]
    assert profile["events"] == len(history) + 1  # and the marker
    assert profile["summary"]["first_seen"].startswith(time.strftime("%Y-%m-%d", time.gmtime(T0 / 1000)))
    assert sorted(profile["channels"]) == ["amazon", "ebay", "web"]
    assert profile["summary"]["orders"] == 1
    assert profile["identifiers"]["merged_from"] == ["anon:cookie-1"]
    assert "anon:cookie-1" in follower.tombstones and "anon:cookie-1" not in follower.latest
    client = redis.Redis.from_url(stack.settings.redis_url)
    layout = RedisLayout(stack.settings.redis_key_prefix)
    assert not client.exists(layout.profile("anon:cookie-1"))
    assert client.get(layout.identity("anon:cookie-1")) == b"ann"
    out = cli(stack, "profile", "anon:cookie-1", "--compact")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["customer_id"] == "ann"


def test_the_merge_is_on_the_identity_topic_with_its_cause(stack, story):
    records = [orjson.loads(v) for _, v in read_topic(stack.settings, stack.names.identity) if v]
    for r in records:
        IdentityChange.model_validate(r)
    merges = {(r["old_id"], r["canonical_id"], r["event_id"]) for r in records if r["kind"] == "merge"}
    assert ("anon:cookie-1", "ann", "login-1") in merges
    conflicts = [r for r in records if r["kind"] == "conflict"]
    assert conflicts and all(r["identifier"] == "device:family-pc" for r in conflicts)
    # cy's and di's events are spread over the source topic's partitions (no key): whichever reached the graph first
    # holds the device, and the other one's event is the refused one.
    assert {frozenset((r["old_id"], r["canonical_id"])) for r in conflicts} == {frozenset(("cy", "di"))}


def test_two_devices_and_an_email_are_one_customer(story, stack):
    follower, sent = story
    profile = follower.latest["bo"]["profile"]
    assert profile["events"] == len(sent["devices"]) + len(sent["bo"])
    assert profile["demographics"]["age"] == 41
    assert sorted(profile["channels"]) == ["amazon", "app", "ebay", "email", "web"]
    for gone in ("anon:cookie-2", "anon:cookie-3"):
        assert gone not in follower.latest
    client = redis.Redis.from_url(stack.settings.redis_url)
    layout = RedisLayout(stack.settings.redis_key_prefix)
    group = orjson.loads(client.get(layout.identity_group("bo")))
    email = "email:" + hash_identifier("bo@example.org", KEY)
    assert sorted(group["members"]) == sorted(["cid:bo", "anon:cookie-2", "anon:cookie-3", "device:phone-9",
                                               "device:tablet-4", email])
    # no email in clear anywhere in the serving view
    for key in client.scan_iter(f"{stack.settings.redis_key_prefix}*"):
        kind = client.type(key)
        blob = client.get(key) if kind == b"string" else repr(client.hgetall(key)).encode() if kind == b"hash" else b""
        assert b"example.org" not in key + blob


def test_two_known_customers_never_merge(story):
    follower, sent = story
    assert follower.latest["cy"]["profile"]["events"] == 4
    assert follower.latest["di"]["profile"]["events"] == 3


def test_events_seen_under_both_ids_count_once(story):
    follower, _ = story
    assert follower.latest["ann"]["profile"]["events"] == 8  # 6 anonymous + login + marker, redeliveries not


def test_placeholder_ids_link_nobody_and_alone_are_rejected(story):
    follower, _ = story
    assert follower.latest["ed"]["profile"]["events"] == 3 and follower.latest["fay"]["profile"]["events"] == 3
    assert "anon:undefined" not in follower.latest and "anon:null" not in follower.latest
    (letter,) = follower.dead_letters
    assert "no usable identifier" in letter["error"]


def test_export_prints_what_is_stored(stack, story):
    out = cli(stack, "export", "Bo@Example.org", "--email", "--compact")
    assert out.returncode == 0, out.stderr
    document = orjson.loads(out.stdout)
    assert document["profile_id"] == "bo" and document["erased"] is False
    assert document["profile"]["events"] == 11
    assert "device:phone-9" in document["identity"]["members"]


def test_erasure_removes_the_person_and_late_events_stay_out(stack, story):
    follower, sent = story
    client = redis.Redis.from_url(stack.settings.redis_url)
    layout = RedisLayout(stack.settings.redis_key_prefix)
    wait_for("bo in a segment", lambda: bool(client.hget(layout.profile("bo"), "segment")), follower, timeout=60)
    out = cli(stack, "forget", "bo", "--request-id", "req-1", "--wait", "90")
    assert out.returncode == 0, out.stderr
    audit = ErasureAudit.model_validate_json(out.stdout)
    assert (audit.found, audit.identifiers, audit.request_id) == (True, 6, "req-1")
    assert "bo" not in audit.model_dump_json() and "example" not in audit.model_dump_json()
    wait_for("the tombstone", lambda: "bo" in follower.tombstones, follower)

    # Late events under every identifier the person had: dropped and counted, never stored.
    late = [event("late-1", "clickstream", "page_view", 20, customer_id="bo", channel="web"),
            event("late-2", "app", "app_open", 20, device_id="tablet-4", anonymous_id="cookie-9"),
            event("late-3", "email", "click", 20, email="bo@example.org")]
    publish(stack, late)
    wait_for("the suppressed events", lambda: int(client.hget(layout.stats(), "suppressed_events") or 0) == 3,
             follower)
    publish(stack, [event("cy-marker", "clickstream", "page_view", 21, customer_id="cy", channel="web")])
    wait_for("a later marker", lambda: events_of(follower, "cy") == 5, follower)
    assert "bo" not in follower.latest
    assert not any(k.startswith("anon:cookie-9") for k in follower.latest)

    # Redis: no profile, no identity entries, no segment membership; only hashed suppressions.
    assert not client.exists(layout.profile("bo"))
    for member in ("cid:bo", "anon:cookie-2", "anon:cookie-3", "device:phone-9", "device:tablet-4"):
        assert not client.exists(layout.identity(member))
    assert not client.exists(layout.identity_group("bo"))
    for key in client.scan_iter(f"{layout.prefix}segment:*"):
        assert b"bo" not in client.smembers(key)
    assert hash_identifier("cid:bo", KEY).encode() in client.smembers(layout.suppressed())

    # Tables: the latest changelog record of every profile key the person had is a tombstone.
    # Which keys had a profile depends on the order the source partitions were read in (a device's
    # events that reach the graph after the login go straight to "bo"), so the person's keys are all the
    # keys their identifiers could lead: "bo" always had one.
    app_id = stack.settings.app_id
    email = "email:" + hash_identifier("bo@example.org", KEY)
    candidates = {b"bo", b"anon:cookie-2", b"anon:cookie-3", b"device:phone-9", b"device:tablet-4", email.encode()}
    changelog = f"{app_id}-profiles-changelog"

    def theirs() -> dict[bytes, bytes | None]:
        return {k: v for k, v in latest_by_key(stack, changelog).items() if k in candidates}

    # (the forget of each key is processed on its own partition: wait until the last one is written)
    wait_for("the profile changelog tombstones", lambda: all(v is None for v in theirs().values()), follower)
    profiles = theirs()
    assert b"bo" in profiles and all(v is None for v in profiles.values()), profiles
    graph = latest_by_key(stack, f"{app_id}-identity-graph-changelog")
    for key, value in graph.items():
        if value is not None:
            assert b"bo" not in key and b"phone-9" not in key and b"tablet-4" not in key, (key, value)
            assert b'"bo"' not in value and b"cid:bo" not in value, (key, value)
    # Outputs: the compacted topics end in tombstones for the person's keys.
    updates = {k: v for k, v in latest_by_key(stack, stack.names.updates).items() if k in candidates}
    assert b"bo" in updates and all(v is None for v in updates.values()), updates

    out = cli(stack, "export", "bo")
    assert orjson.loads(out.stdout)["erased"] is True and orjson.loads(out.stdout)["profile"] is None

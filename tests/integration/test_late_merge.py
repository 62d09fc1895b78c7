"""A merge whose survivor stopped waiting, through a real worker (Tansu, Redis, Faust).

The absorbed profile's partition being far behind cannot be arranged on one worker, so the test
plays the identity stage's part on the profile topic: it tells ``cas`` to expect ``anon:late``,
lets the merge wait (3 s) pass, and hands ``anon:late``'s history over only after ``cas`` has
given up and folded its held events. Two of those events reached ``anon:late`` too. The profile
that ends up in ``profiles.updates``, in Redis and on /metrics must count every distinct event
once; the expected figures are counted from the events in the test.
"""

from __future__ import annotations

import time
import urllib.request

import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from models.ingest import decode_message
from models.profile import apply_events
from streams.admin import OutputFollower, producer
from streams.local import free_port
from streams.sinks import RedisLayout
from streams.topics import partition_of
from tests.integration.conftest import make_stack
from tests.integration.test_identity import KEY, T0, HOUR, publish, wait_for

WAIT_SECONDS = 3


@pytest.fixture(scope="module")
def stack(broker, redis_server, tmp_path_factory):
    s = make_stack(broker, redis_server, tmp_path_factory.mktemp("late-merge"),
                   OMNIPROFILE_IDENTITY_MERGE_WAIT_SECONDS=str(WAIT_SECONDS), OMNIPROFILE_WEB_PORT=str(free_port()))
    yield s
    s.worker.stop()


def body(eid: str, hours: float, etype: str = "page_view", **ids) -> dict:
    out = {"event_id": eid, "type": etype, "ts": T0 + int(hours * HOUR), "channel": "web", **ids}
    if etype == "purchase":
        out["properties"] = {"revenue": 15.0}
    return out


def to_profile_topic(stack, key: str, message: dict) -> None:
    prod = producer(stack.settings)
    prod.send(stack.names.by_customer, key=key.encode(), value=orjson.dumps(message),
              partition=partition_of(key.encode(), stack.settings.partitions))
    prod.flush()
    prod.close()


def metric(stack, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.env['OMNIPROFILE_WEB_PORT']}/metrics", timeout=5) as r:
        families = text_string_to_metric_families(r.read().decode())
    return next(s.value for f in families for s in f.samples if s.name == name)


def test_a_history_that_comes_after_the_survivor_gave_up_counts_every_event_once(stack):
    follower = OutputFollower(stack.settings)
    shared = [body("shared-1", 1, "purchase"), body("shared-2", 2)]
    absorbed_only = [body("late-1", 0.5), body("late-2", 0.6, "purchase")]
    held = [body("own-1", 3, customer_id="cas"), {**shared[0], "customer_id": "cas"}]
    after = [{**shared[1], "customer_id": "cas"}, body("own-2", 4, "purchase", customer_id="cas")]

    to_profile_topic(stack, "cas", {"op": "expect", "from": "anon:late", "cause": "test"})
    publish(stack, [("clickstream", b) for b in held])
    time.sleep(WAIT_SECONDS + 0.5)
    follower.poll(500)
    assert "cas" not in follower.latest, "cas published its held events before the wait was over"
    publish(stack, [("clickstream", b) for b in after])
    wait_for("cas to give up and fold", lambda: (follower.latest.get("cas") or {}).get("profile", {})
             .get("events") == 4, follower)
    assert b"waited too long for the merge of anon:late" in stack.worker.log_path.read_bytes()

    # anon:late's own history (the two shared events included), handed over late
    records = [r for b in [*absorbed_only, *shared]
               for r in decode_message("clickstream", orjson.dumps({**b, "anonymous_id": "late"}), None, KEY).records]
    assert len(records) == 4
    state = apply_events(None, "anon:late", records).state
    to_profile_topic(stack, "cas", {"op": "absorb", "from": "anon:late", "cause": "test", "state": state,
                                    "pending": [], "held": []})
    wait_for("the late merge", lambda: "anon:late" in (follower.latest.get("cas") or {}).get("profile", {})
             .get("identifiers", {}).get("merged_from", []), follower)

    distinct = {b["event_id"]: b for b in [*shared, *absorbed_only, *held, *after]}
    purchases = [b for b in distinct.values() if b["type"] == "purchase"]
    profile = follower.latest["cas"]["profile"]
    assert profile["events"] == len(distinct) == 6
    assert profile["summary"]["orders"] == len(purchases) == 3
    assert profile["summary"]["revenue"] == pytest.approx(15.0 * len(purchases))
    client = redis.Redis.from_url(stack.settings.redis_url)
    key = RedisLayout(stack.settings.redis_key_prefix).profile("cas")
    deadline = time.monotonic() + 30  # the Redis flush runs every 200 ms
    while int(client.hget(key, "version") or 0) < profile["version"]:
        assert time.monotonic() < deadline, "Redis did not get the merged profile"
        time.sleep(0.2)
    stored = orjson.loads(client.hget(key, "json"))
    assert stored["events"] == 6 and stored["version"] == profile["version"]
    assert metric(stack, "omniprofile_merge_recounted_total") == len(shared)
    assert metric(stack, "omniprofile_merge_double_counted_total") == 0

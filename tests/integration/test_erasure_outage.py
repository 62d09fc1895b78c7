"""Erasure while Redis is unreachable, then ``kill -9`` before it is back (Tansu, Redis, Faust).

Redis stops taking writes (``CLIENT PAUSE ... WRITE``: a write hangs until the client's socket
timeout and is dropped with its client, the data stays; a frozen process would still carry out
what sits in its socket buffers once it thaws, so the writes would not be lost). Two
erasures go out: one through the erasure topic (the identity stage must put it off, since the
identity graph's entries in Redis could not be found again once the table forgot them), and one
``forget`` sent straight to a profile (the profile stage must leave an erased marker for the same
reason). A third person first shows up during the outage: the identity stage links their
identifiers in its table while the flush to Redis fails. The worker is killed before Redis comes
back, so nothing it kept in memory survives. After Redis takes writes again and a new worker starts,
both erased people must be gone from Redis, the tables and the outputs, and the new person's
identity entries must be in Redis (only the table has them: the restarted worker reads the event
again, finds the link known and writes nothing); the expected keys come from the identifiers in the
test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from models.events import hash_identifier
from streams.admin import client_options, producer, read_topic
from streams.local import RedisServer
from streams.sinks import RedisLayout
from streams.topics import partition_of
from tests.integration.conftest import Stack, make_stack
from tests.integration.test_faults import wait_committed
from tests.integration.test_identity import HOUR, KEY, T0, cli

EVE = {"customer_id": "eve", "anonymous_id": "cookie-e", "email": "eve@example.org"}
GUS = {"customer_id": "gus", "anonymous_id": "cookie-g"}


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()  # paused by the test: not the session's shared server
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(broker, own_redis, tmp_path_factory) -> Iterator[Stack]:
    s = make_stack(broker, own_redis, tmp_path_factory.mktemp("erasure-outage"), OMNIPROFILE_REDIS_SOCKET_TIMEOUT="2")
    yield s
    s.worker.stop()


def until(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def logged(stack: Stack, text: bytes) -> bool:
    return text in stack.worker.log_path.read_bytes()


def last_offsets(stack: Stack, topic: str) -> dict[tuple[str, int], int]:
    """The offset of the last record of each non-empty partition of ``topic``."""
    consumer = KafkaConsumer(**client_options(stack.settings))
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {(tp.topic, tp.partition): end - 1 for tp, end in consumer.end_offsets(tps).items() if end}
    finally:
        consumer.close()


def latest(stack: Stack, topic: str) -> dict[bytes, bytes | None]:
    return {k: v for k, v in read_topic(stack.settings, topic, idle_ms=800)}


def test_erasures_survive_a_redis_outage_and_a_kill(stack, own_redis):
    client = redis.Redis.from_url(stack.settings.redis_url)
    layout = RedisLayout(stack.settings.redis_key_prefix)
    events = [("clickstream", {"event_id": f"eve-{i}", "type": "page_view", "ts": T0 + i * HOUR, "channel": "web",
                               **EVE}) for i in range(3)]
    events += [("clickstream", {"event_id": f"fay-{i}", "type": "page_view", "ts": T0 + i * HOUR, "channel": "web",
                                "customer_id": "fay"}) for i in range(2)]
    prod = producer(stack.settings)
    fed: dict[tuple[str, int], int] = {}
    for source, body in events:
        meta = prod.send(stack.names.source(source), value=orjson.dumps(body)).get(timeout=30)
        fed[(meta.topic, meta.partition)] = max(fed.get((meta.topic, meta.partition), -1), meta.offset)
    prod.close()
    email = "email:" + hash_identifier("eve@example.org", KEY)
    eve_ids = ["cid:eve", "anon:cookie-e", email]
    until("both profiles and eve's identifiers in Redis",
          lambda: client.exists(layout.profile("eve"), layout.profile("fay")) == 2
          and client.exists(*(layout.identity(i) for i in eve_ids)) == 3)
    # Committed, so that the restarted worker does not read these events again: fay's erasure is sent
    # straight to her profile, so no suppression in the identity stage would keep them out.
    wait_committed(stack, fed)

    # The first serving-view check has marked the graph as in Redis: after the kill, only the
    # catch-up of a graph taken over (not the rewrite of one Redis has no mark for) can bring gus back.
    until("the identity graph's serving-view mark", lambda: client.hexists(layout.serving_synced(), "identity"))
    admin = redis.Redis.from_url(stack.settings.redis_url)
    admin.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
    try:
        out = cli(stack, "forget", "eve", "--request-id", "req-eve", "--wait", "0")
        assert out.returncode == 0, out.stderr
        prod = producer(stack.settings)  # fay's forget as the identity stage sends it
        prod.send(stack.names.by_customer, key=b"fay", value=orjson.dumps({"op": "forget"}),
                  partition=partition_of(b"fay", stack.settings.partitions))
        prod.flush()
        prod.close()
        until("the identity stage to put eve's erasure off", lambda: logged(stack, b"Erasure req-eve put off"))
        prod = producer(stack.settings)
        prod.send(stack.names.source("clickstream"), value=orjson.dumps(
            {"event_id": "gus-0", "type": "page_view", "ts": T0, "channel": "web", **GUS})).get(timeout=30)
        prod.close()
        graph_changelog = f"{stack.settings.app_id}-identity-graph-changelog"
        until("gus linked in the identity table", lambda: b"i|cid:gus" in latest(stack, graph_changelog))
        until("fay's erased marker", lambda: logged(stack, b"stays in the table as a marker"))
        # Both messages committed: the restarted worker does not read them again, so only what the
        # tables hold can bring the two erasures to an end.
        wait_committed(stack, {**fed, **last_offsets(stack, stack.names.erasure_requests)})
        stack.worker.proc.kill()
        stack.worker.proc.wait()
        stack.worker.stop()
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    # Redis has everything it had: the deletes died with the killed worker's connections.
    assert client.exists(layout.profile("eve"), layout.profile("fay")) == 2
    assert client.exists(*(layout.identity(i) for i in eve_ids)) == 3
    gus_ids = [layout.identity("cid:gus"), layout.identity("anon:cookie-g")]
    assert client.exists(*gus_ids, layout.identity_group("gus")) == 0, "gus reached Redis during the outage"

    stack.start_worker("worker-after-kill.log")
    audits = {}
    until("eve's erasure audit", lambda: audits.update(latest(stack, stack.names.audit)) or b"req-eve" in audits)
    until("both profiles gone from Redis", lambda: client.exists(layout.profile("eve"), layout.profile("fay")) == 0)
    assert client.exists(*(layout.identity(i) for i in eve_ids)) == 0
    assert not client.exists(layout.identity_group("eve"))
    assert hash_identifier("cid:eve", KEY).encode() in client.smembers(layout.suppressed())
    # gus: the identity graph was rewritten from the table (no clean handover after a kill).
    until("gus's identity entries in Redis", lambda: client.exists(*gus_ids) == 2)
    assert client.mget(gus_ids) == [b"gus", b"gus"]
    group = orjson.loads(client.get(layout.identity_group("gus")))
    assert sorted(group["members"]) == ["anon:cookie-g", "cid:gus"], group
    assert logged(stack, b"Identity graph taken over without a clean handover")
    audit = orjson.loads(audits[b"req-eve"])
    assert audit["found"] is True and audit["identifiers"] == 3

    # Tables: fay's marker and the put-off request are gone; eve's profile key ends in a tombstone.
    app_id = stack.settings.app_id
    profiles = f"{app_id}-profiles-changelog"
    until("the profile tombstones", lambda: (lambda t: t.get(b"eve", 1) is None and t.get(b"fay", 1) is None)(
        latest(stack, profiles)))
    graph = latest(stack, f"{app_id}-identity-graph-changelog")
    assert graph.get(b"e|deferred") is None, "the put-off request is still in the identity table"
    assert not [k for k, v in graph.items() if v is not None and (b"eve" in k or b"cookie-e" in k)]
    updates = latest(stack, stack.names.updates)
    assert updates.get(b"eve", 1) is None and updates.get(b"fay", 1) is None

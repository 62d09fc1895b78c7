"""The serving view against a real redis-server, through the real sinks: the catch-up of partitions
a worker takes over, the clean-handover marks that spare it, and the writes that must reach Redis
before the table because no catch-up could find them afterwards (the identity graph, erasures).
Faust's side (assignment, recovery, producer, consumer, topics) is a stand-in."""

from __future__ import annotations

import asyncio
import itertools
from collections import UserDict
from types import SimpleNamespace

import pytest
import orjson
import redis
from faust.types import TP

from streams import resync
from streams.resync import ServingView, behind
from streams.sinks import RedisIdentitySink, RedisLayout, RedisProfileSink
from streams.topics import TopicNames

_prefixes = itertools.count(1)
CHANGELOG = "t.profiles-changelog"
IDENTITY_CHANGELOG = "t.identity-graph-changelog"


def test_behind():
    assert behind(None, 1)
    assert behind(b"2", 3)
    assert not behind(b"3", 3)
    assert not behind("4", 3)  # newer in Redis: the write-if-newer script would refuse it anyway


class Table(dict):
    """The profile table: its items, and the name of its changelog topic."""

    changelog_topic = SimpleNamespace(get_topic_name=lambda: CHANGELOG)


class IdentityTable(dict):
    changelog_topic = SimpleNamespace(get_topic_name=lambda: IDENTITY_CHANGELOG)


class Producer:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


def on_changelogs(offsets: dict[int | TP, int] | None) -> dict[TP, int]:
    """Offsets by changelog partition: an int is a partition of the profile table's changelog."""
    return {TP(CHANGELOG, k) if isinstance(k, int) else k: v for k, v in (offsets or {}).items()}


class Consumer:
    def __init__(self, ends: dict[int | TP, int]) -> None:
        self.ends = on_changelogs(ends)  # changelog partition -> end offset

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps if tp in self.ends}


@pytest.fixture()
def layout() -> RedisLayout:
    return RedisLayout(f"resync{next(_prefixes)}:")


@pytest.fixture()
def client(redis_server):
    c = redis.Redis.from_url(redis_server.url)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def plain_render(monkeypatch):
    monkeypatch.setattr(resync, "render_profile", lambda s: {"customer_id": s["customer_id"], "version": s["version"]})
    monkeypatch.setattr(resync, "redis_fields", lambda profile, raw: {"version": str(profile["version"])})


def serving_view(redis_server, layout: RedisLayout, table: dict[bytes, dict], owned: set[int],
                 partitions: int = 1, recovered: dict[int | TP, int] | None = None,
                 ends: dict[int | TP, int] | None = None, identity: dict[bytes, object] | None = None) -> ServingView:
    """A worker holding the profile partitions ``owned``, and the identity graph if ``identity`` is given."""
    names = TopicNames("t.")
    sink = RedisProfileSink(redis_server.url, layout)
    recovery = SimpleNamespace(completed=SimpleNamespace(is_set=lambda: True), active_highwaters=on_changelogs(recovered))

    def actives() -> set[TP]:
        return {TP(names.by_customer, p) for p in owned} | ({TP(names.identity_events, 0)} if identity is not None
                                                             else set())

    app = SimpleNamespace(rebalancing=False, in_recovery=False, rebalancing_count=1,
                          tables=SimpleNamespace(recovery=recovery), producer=Producer(), consumer=Consumer(ends),
                          assignor=SimpleNamespace(assigned_actives=actives))
    wiring = SimpleNamespace(names=names, sink=sink, profiles=Table(table), erasing=set(),
                             identity=IdentityTable(identity or {}), deferred_erasures={},
                             identity_sink=RedisIdentitySink(redis_server.url, layout),
                             settings=SimpleNamespace(partitions=partitions))
    return ServingView(app, wiring)  # type: ignore[arg-type]


def state(customer_id: str, version: int, events: int = 1) -> dict:
    return {"customer_id": customer_id, "version": version, "events": events}


def versions(client: redis.Redis, layout: RedisLayout, *ids: str) -> dict[str, int | None]:
    held = [client.hget(layout.profile(i), "version") for i in ids]
    return {i: None if v is None else int(v) for i, v in zip(ids, held)}


def hget_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_hget", {}).get("calls", 0)


def run(view: ServingView, coroutine):
    async def go():
        try:
            return await coroutine
        finally:
            await view.wiring.sink.close()
            await view.wiring.identity_sink.close()
    return asyncio.run(go())


def synced(client: redis.Redis, layout: RedisLayout, *parts: str) -> None:
    """Redis did not lose data: the parts have their marks, so nothing is rewritten in full."""
    client.hset(layout.serving_synced(), mapping={part: "earlier" for part in parts})


def test_catch_up_writes_only_what_redis_is_behind_on(redis_server, layout, client):
    table = {b"a": state("a", 3), b"b": state("b", 2), b"c": state("c", 1), b"d": state("d", 0, events=0),
             b"e": {"merged_into": "a", "ts": 0}}
    client.hset(layout.profile("a"), "version", 3)
    client.hset(layout.profile("b"), "version", 1)
    synced(client, layout, "profiles:0")
    view = serving_view(redis_server, layout, table, {0})
    assert run(view, view.check()) == []  # nothing rewritten in full
    # b older, c missing: written; a the same, d empty, e a stub: left alone
    assert versions(client, layout, "a", "b", "c", "d", "e") == {"a": 3, "b": 2, "c": 1, "d": None, "e": None}
    assert view.caught_up == {"profiles:0"} and view.restaged == 2
    assert view.catch_ups == {"scanned": 1, "clean_handover": 0, "identity_rewritten": 0, "identity_clean_handover": 0}
    calls = hget_calls(client)
    run(view, view.check())  # caught up: no second pass while the worker keeps the partition
    assert hget_calls(client) == calls


def test_the_scan_also_mends_segment_sets_and_deletes_a_merged_profile_left_behind(redis_server, layout, client):
    # What a worker killed with this flush staged leaves: a moved from all-0 to all-1 at version 2 (the
    # hash and the sets still at version 1), and e merged into a (its stub in the table, its hash and
    # membership still in Redis).
    table = {b"a": {**state("a", 2), "segments": {"all": "all-1"}}, b"e": {"merged_into": "a", "ts": 0}}
    client.hset(layout.profile("a"), mapping={"version": 1, "json": b'{"segments": {"all": "all-0"}}'})
    client.hset(layout.profile("e"), mapping={"version": 4, "json": b'{"segments": {"all": "all-0"}}'})
    client.sadd(layout.segment("all", "all-0"), "a", "e")
    client.hset(layout.segment_sizes("all"), mapping={"all-0": 2, "all-1": 0})
    synced(client, layout, "profiles:0")
    view = serving_view(redis_server, layout, table, {0})
    run(view, view.check())
    assert versions(client, layout, "a", "e") == {"a": 2, "e": None}
    assert client.smembers(layout.segment("all", "all-0")) == set()
    assert client.smembers(layout.segment("all", "all-1")) == {b"a"}
    assert client.hgetall(layout.segment_sizes("all")) == {b"all-0": b"0", b"all-1": b"1"}
    assert view.restaged == 1 and view.deleted == 1


def test_a_partition_given_away_and_back_is_caught_up_again(redis_server, layout, client):
    table = {b"a": state("a", 3)}
    owned = {0}
    synced(client, layout, "profiles:0")
    view = serving_view(redis_server, layout, table, owned)
    run(view, view.check())
    assert versions(client, layout, "a") == {"a": 3}
    view.assigned()  # a rebalance that keeps it: nothing to do
    assert view.caught_up == {"profiles:0"}
    owned.clear()
    view.assigned()  # taken away: another worker may die with a write of it staged
    assert view.caught_up == set()
    owned.add(0)
    view.assigned()
    view.wiring.profiles[b"a"] = state("a", 4)  # what the other owner wrote to the table, not to Redis
    run(view, view.check())
    assert versions(client, layout, "a") == {"a": 4}


def test_a_clean_mark_at_the_recovered_offset_spares_the_scan_and_any_other_does_not(redis_server, layout, client):
    table = {b"a": state("a", 3), b"d": state("d", 5)}
    assert [resync.partition_of(key, 2) for key in table] == [0, 1]
    synced(client, layout, "profiles:0", "profiles:1")
    client.hset(layout.serving_clean(), mapping={"profiles:0": 41, "profiles:1": 41})
    view = serving_view(redis_server, layout, table, {0, 1}, partitions=2, recovered={0: 41, 1: 57})
    run(view, view.check())
    # Partition 0's table ends where its previous owner left Redis complete: trusted, not scanned
    # (the missing hash of a shows it). Partition 1's table moved on since its mark: scanned.
    assert versions(client, layout, "a", "d") == {"a": None, "d": 5}
    assert view.catch_ups == {"scanned": 1, "clean_handover": 1, "identity_rewritten": 0, "identity_clean_handover": 0}
    assert view.caught_up == {"profiles:0", "profiles:1"}


def test_a_clean_stop_marks_what_it_flushed_completely(redis_server, layout, client):
    table = {b"a": state("a", 3)}
    synced(client, layout, "profiles:0", "profiles:1")  # profiles:2 not: Redis lost it, the rewrite decides
    view = serving_view(redis_server, layout, table, {0, 1, 2, 3}, partitions=4, ends={0: 42, 1: 0, 2: 7, 3: 9})
    view.caught_up = {"profiles:0", "profiles:1", "profiles:2", "journeys:0"}  # profiles:3 not caught up
    view.wiring.sink.stage("a", 3, {"version": "3"})  # staged, not flushed yet

    assert run(view, view.mark_clean()) == ["profiles:0", "profiles:1"]
    assert client.hgetall(layout.serving_clean()) == {b"profiles:0": b"41", b"profiles:1": b"-1"}
    assert versions(client, layout, "a") == {"a": 3}  # flushed before the mark
    assert view.app.producer.flushes == 1  # the changelog sent before its end was read


def test_a_clean_stop_whose_flush_fails_marks_nothing(redis_server, layout, client):
    synced(client, layout, "profiles:0")
    client.set(layout.profile("a"), "not a hash")  # the write-if-newer script fails on it: WRONGTYPE
    view = serving_view(redis_server, layout, {}, {0}, ends={0: 42})
    view.caught_up = {"profiles:0"}
    view.wiring.sink.stage("a", 3, {"version": "3"})

    assert run(view, view.mark_clean()) == []
    assert client.hgetall(layout.serving_clean()) == {}
    assert view.wiring.sink.pending == 1  # kept for a later flush, as any failed flush does


IDENTITY_TP = TP(IDENTITY_CHANGELOG, 0)


def graph_of(*people: tuple[str, list[str]], suppressed: tuple[str, ...] = ()) -> dict[bytes, object]:
    """An identity table as the identity stage keeps it: identifier -> group, group -> members, suppressions."""
    table: dict[bytes, object] = {}
    for group, members in people:
        table.update({f"i|{m}".encode(): group for m in members})
        table[f"g|{group}".encode()] = {"members": sorted(members), "customer_id": group, "first_ts": 1}
    table.update({f"s|{digest}".encode(): {"ts": "2026-12-01T00:00:00+00:00"} for digest in suppressed})
    return table


def identity_in_redis(client: redis.Redis, layout: RedisLayout) -> dict[str, object]:
    """Every identity key in Redis under the layout's prefix, decoded, and the suppression list."""
    held: dict[str, object] = {}
    for key in client.scan_iter(match=resync.glob_escape(layout.identity("")) + "*"):
        held[key.decode()[len(layout.identity("")):]] = client.get(key).decode()
    for key in client.scan_iter(match=resync.glob_escape(layout.identity_group("")) + "*"):
        held["group " + key.decode()[len(layout.identity_group("")):]] = orjson.loads(client.get(key))
    held["suppressed"] = sorted(d.decode() for d in client.smembers(layout.suppressed()))
    return held


def expected_identity(table: dict[bytes, object]) -> dict[str, object]:
    """What Redis should hold for ``table``, worked out from the table's keys alone."""
    out: dict[str, object] = {"suppressed": []}
    for raw, value in table.items():
        kind, _, name = raw.decode().partition("|")
        if kind == "i":
            out[name] = value
        elif kind == "g":
            out["group " + name] = value
        elif kind == "s":
            out["suppressed"].append(name)  # type: ignore[union-attr]
    out["suppressed"] = sorted(out["suppressed"])  # type: ignore[arg-type]
    return out


def test_the_identity_graph_taken_over_without_a_clean_mark_is_written_again(redis_server, layout, client):
    """A killed owner loses the identity writes it kept after a failed flush (the table and its
    changelog hold them): the graph has no versions to compare, so the next owner writes all of it."""
    table = graph_of(("ann", ["cid:ann", "anon:a1"]), ("bob", ["cid:bob"]), suppressed=("d1", "d2"))
    table[b"e|deferred"] = {"r-1": {"request_id": "r-1", "identifier": "cid:zed"}}
    client.set(layout.identity("cid:ann"), "someone-else")  # a stale entry the table has moved on from
    synced(client, layout, "profiles:0", "identity")  # Redis did not lose data: no rewrite in full
    client.hset(layout.serving_clean(), "identity", 40)  # a mark from before the table moved on
    view = serving_view(redis_server, layout, {}, {0}, identity=table, recovered={IDENTITY_TP: 57})
    view.chunk = 2  # several chunks, each flushed
    run(view, view.check())
    assert identity_in_redis(client, layout) == expected_identity(table)
    assert view.catch_ups["identity_rewritten"] == 1 and view.catch_ups["identity_clean_handover"] == 0
    assert view.caught_up == {"profiles:0", "identity"} and view.backlog == 0
    assert set(view.wiring.deferred_erasures) == {"r-1"}  # the put-off erasure goes on after the flush


def test_a_clean_identity_mark_at_the_recovered_offset_spares_the_rewrite(redis_server, layout, client):
    table = graph_of(("ann", ["cid:ann"]))
    synced(client, layout, "identity")
    client.hset(layout.serving_clean(), "identity", 57)
    view = serving_view(redis_server, layout, {}, set(), identity=table, recovered={IDENTITY_TP: 57})
    sets = client.info("commandstats").get("cmdstat_set", {}).get("calls", 0)
    run(view, view.check())
    assert identity_in_redis(client, layout) == {"suppressed": []}  # trusted: nothing written
    assert client.info("commandstats").get("cmdstat_set", {}).get("calls", 0) == sets
    assert view.catch_ups["identity_clean_handover"] == 1 and view.catch_ups["identity_rewritten"] == 0
    assert view.caught_up == {"identity"}


def test_a_clean_stop_marks_the_identity_graph_after_flushing_it(redis_server, layout, client):
    synced(client, layout, "profiles:0", "identity")
    view = serving_view(redis_server, layout, {}, {0}, identity={}, ends={0: 10, IDENTITY_TP: 58})
    view.caught_up = {"profiles:0", "identity"}
    view.wiring.identity_sink.stage_id("cid:cy", "cy")  # staged, not flushed yet

    assert run(view, view.mark_clean()) == ["profiles:0", "identity"]
    assert client.hgetall(layout.serving_clean()) == {b"profiles:0": b"9", b"identity": b"57"}
    assert client.get(layout.identity("cid:cy")) == b"cy"  # flushed before the mark


def test_a_rebalance_that_takes_only_the_identity_graph_marks_only_it(redis_server, layout, client):
    synced(client, layout, "profiles:0", "identity")
    view = serving_view(redis_server, layout, {}, {0}, identity={}, ends={0: 10, IDENTITY_TP: 58})
    view.caught_up = {"profiles:0", "identity"}
    revoked = [TP(view.wiring.names.identity_events, 0)]
    assert run(view, view.mark_clean(revoked)) == ["identity"]
    assert client.hgetall(layout.serving_clean()) == {b"identity": b"57"}


def test_a_clean_identity_mark_with_erasures_put_off_after_their_deletes_are_flushed(redis_server, layout, client):
    """A put-off erasure's deletes are staged in the sink: the stop flushes them before the mark,
    and the next owner reads the request from the table (test below) and sends it again."""
    synced(client, layout, "profiles:0", "identity")
    client.set(layout.identity("cid:zed"), "zed")
    view = serving_view(redis_server, layout, {}, {0}, identity={}, ends={0: 10, IDENTITY_TP: 58})
    view.caught_up = {"profiles:0", "identity"}
    view.wiring.deferred_erasures["r-1"] = {"request_id": "r-1", "identifier": "cid:zed"}
    view.wiring.identity_sink.stage_id("cid:zed", None)  # what the put-off erasure staged
    assert run(view, view.mark_clean()) == ["profiles:0", "identity"]
    assert client.exists(layout.identity("cid:zed")) == 0


def test_a_clean_identity_handover_still_picks_up_the_erasures_put_off(redis_server, layout, client):
    table = graph_of(("zed", ["cid:zed"]))
    table[b"e|deferred"] = {"r-1": {"request_id": "r-1", "identifier": "cid:zed"}}
    synced(client, layout, "identity")
    client.hset(layout.serving_clean(), "identity", 57)
    view = serving_view(redis_server, layout, {}, set(), identity=table, recovered={IDENTITY_TP: 57})
    run(view, view.check())
    assert view.catch_ups["identity_clean_handover"] == 1 and set(view.wiring.deferred_erasures) == {"r-1"}


def test_the_rewrite_deletes_a_person_whose_erasure_is_put_off_instead_of_writing_them_back(
        redis_server, layout, client):
    """The table keeps the person until the erasure is carried out (Redis was unreachable); their
    deletes may already have reached Redis, or may not: either way the rewrite must not bring
    them back, and it removes what is left."""
    table = graph_of(("zed", ["cid:zed", "anon:z1"]), ("bob", ["cid:bob"]))
    table[b"e|deferred"] = {"r-1": {"request_id": "r-1", "identifier": "anon:z1"}}
    client.set(layout.identity("cid:zed"), "zed")  # this delete never reached Redis
    synced(client, layout, "identity")
    view = serving_view(redis_server, layout, {}, set(), identity=table)
    run(view, view.check())
    assert identity_in_redis(client, layout) == expected_identity(graph_of(("bob", ["cid:bob"])))
    assert view.catch_ups["identity_rewritten"] == 1
    assert view.wiring.deferred_erasures == {"r-1": {"request_id": "r-1", "identifier": "anon:z1"}}


def test_the_rewrite_deletes_identity_keys_the_table_no_longer_holds(redis_server, layout, client):
    """A merge deletes the absorbed group's document; a killed worker whose flush of that delete
    failed leaves the document in Redis, and only a rewrite that looks at Redis can find it."""
    table = graph_of(("ann", ["cid:ann", "anon:a1"]))
    # A prefix with a glob character, and another deployment on the same Redis whose keys an
    # unescaped pattern would match: not ours to touch.
    layout, other = RedisLayout(layout.prefix + "*"), RedisLayout(layout.prefix + "x")
    client.set(layout.identity_group("anon:a1"), b'{"members": ["anon:a1"]}')  # the group merged into ann
    client.set(layout.identity("anon:gone"), "x")
    client.set(other.identity("anon:gone"), "x")
    synced(client, layout, "identity")
    view = serving_view(redis_server, layout, {}, set(), identity=table)
    view.chunk = 1
    run(view, view.check())
    assert identity_in_redis(client, layout) == expected_identity(table)
    assert client.get(other.identity("anon:gone")) == b"x"


def test_a_failed_identity_flush_at_a_clean_stop_marks_nothing(redis_server, layout, client):
    synced(client, layout, "profiles:0", "identity")
    client.set(layout.suppressed(), "not a set")  # SADD fails on it: WRONGTYPE
    view = serving_view(redis_server, layout, {}, {0}, identity={}, ends={0: 10, IDENTITY_TP: 58})
    view.caught_up = {"profiles:0", "identity"}
    view.wiring.identity_sink.stage_suppressed("d9")
    assert run(view, view.mark_clean()) == []
    assert client.hgetall(layout.serving_clean()) == {}
    assert view.wiring.identity_sink.pending == 1  # kept for a later flush


def test_the_identity_rewrite_never_writes_over_a_change_under_way(redis_server, layout, client):
    """The identity stage stages a change, flushes it and writes its table, all under the sink's
    lock (streams.resolver). A rewrite chunk read while that flush is under way would find the old
    value in the table and write it over the change; a change staged and not yet flushed (a failed
    flush left it) must not be replaced by the table's value."""
    table = graph_of(("ann", ["cid:ann", "anon:a1"]), ("bob", ["cid:bob"]))
    synced(client, layout, "identity")
    view = serving_view(redis_server, layout, {}, set(), identity=table)
    sink = view.wiring.identity_sink

    async def change(ident: str, group: str) -> None:  # what streams.resolver does for a link
        async with sink.lock:
            sink.stage_id(ident, group)
            await sink.flush_locked()
            view.wiring.identity[f"i|{ident}".encode()] = group

    async def scenario() -> None:
        sink.stage_id("cid:bob", "ann")  # left staged by a failed flush; the table has it too by now
        view.wiring.identity[b"i|cid:bob"] = "ann"
        client.set(layout.identity("cid:bob"), "bob")
        await view._identity()
        assert client.get(layout.identity("cid:bob")) == b"bob"  # left to its own flush
        await sink.flush()
        table_moving = asyncio.create_task(change("anon:a1", "bob"))
        await asyncio.sleep(0)  # the change's flush is now under way (its pipeline awaits Redis)
        await view._identity()
        await table_moving

    run(view, scenario())
    assert client.get(layout.identity("anon:a1")) == b"bob"
    assert client.get(layout.identity("cid:bob")) == b"ann"


def test_the_orphan_pass_never_deletes_a_change_another_flush_sent_early(redis_server, layout, client):
    """A killed owner flushed anon:new -> ann, but its table write never reached the changelog; the
    message is read again and the stage links anon:new again while the new owner's orphan pass runs
    and the flush timer is queued. Were the stage to stage outside the sink's lock, the timer's flush
    would send the change, the pass would find it in Redis and not in the table, and delete it."""
    table = graph_of(("ann", ["cid:ann"]))
    client.set(layout.identity("anon:new"), "ann")
    synced(client, layout, "identity")
    view = serving_view(redis_server, layout, {}, set(), identity=table)
    sink = view.wiring.identity_sink

    async def scenario() -> None:
        release = asyncio.Event()

        async def a_flush_under_way() -> None:
            async with sink.lock:
                await release.wait()

        async def stage() -> None:  # streams.resolver._resolve
            async with sink.lock:
                sink.stage_id("anon:new", "ann")
                await sink.flush_locked()
                view.wiring.identity[b"i|anon:new"] = "ann"

        holder = asyncio.create_task(a_flush_under_way())
        await asyncio.sleep(0)
        timer = asyncio.create_task(sink.flush())
        orphans = asyncio.create_task(view._identity_orphans(view.app.rebalancing_count))
        while len(sink.lock._waiters or ()) < 2:  # the pass has scanned and waits for the lock
            await asyncio.sleep(0.001)
        stager = asyncio.create_task(stage())
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, timer, orphans, stager)

    run(view, scenario())
    assert client.get(layout.identity("anon:new")) == b"ann"


def test_the_identity_rewrite_stops_when_the_graph_moves_and_leaves_nothing_staged(redis_server, layout, client):
    """A rebalance takes the graph away during the orphan pass (a rocksdb store closes the
    partition's database: every read then finds nothing). The pass must stop, not delete the graph."""
    table = graph_of(("ann", ["cid:ann", "anon:a1"]), ("bob", ["cid:bob"]))
    view = serving_view(redis_server, layout, {}, set(), identity=table)
    for raw, value in table.items():
        kind, _, name = raw.decode().partition("|")
        client.set(layout.identity(name) if kind == "i" else layout.identity_group(name),
                   value if kind == "i" else orjson.dumps(value))
    client.set(layout.identity("anon:gone"), "x")
    view.chunk = 1  # SCAN ... COUNT 1: about a key per page
    redis_client = view.wiring.identity_sink.connection()
    real_scan = redis_client.scan
    pages = 0

    async def scan(*args, **kwargs):  # after the first page, a rebalance takes the graph away
        nonlocal pages
        pages += 1
        if pages == 2:
            view.app.rebalancing_count += 1
            view.wiring.identity.clear()
        return await real_scan(*args, **kwargs)

    redis_client.scan = scan
    with pytest.raises(resync.ResyncAborted):
        run(view, view._identity_orphans(view.app.rebalancing_count))
    held = identity_in_redis(client, layout)
    held.pop("anon:gone", None)  # a true orphan: deleted if the first page held it
    assert held == expected_identity(table) and view.wiring.identity_sink.pending == 0


def test_an_erasure_leaves_redis_before_the_table(redis_server, layout, client):
    """Once the table has no trace of an erased profile no catch-up can find its hash, so the delete
    must reach Redis before the table delete, not at the next timed flush."""
    from streams.agents import forget

    class Topic:
        def __init__(self) -> None:
            self.sent: list[tuple[bytes, bytes | None]] = []

        async def send(self, key: bytes, value: bytes | None) -> None:
            self.sent.append((key, value))

    sink = RedisProfileSink(redis_server.url, layout)
    wiring = SimpleNamespace(profiles={b"c-9": {**state("c-9", 3), "segments": {"all": "all-2"}}}, sink=sink,
                             updates_topic=Topic(), erasing=set())
    client.hset(layout.profile("c-9"), mapping={"version": 3, "email": "bo@example.com"})
    client.sadd(layout.segment("all", "all-2"), "c-9", "c-1")

    async def erase() -> None:
        try:
            await forget(wiring, b"c-9", wiring.profiles[b"c-9"])
            # no flush here: what forget() itself wrote
            assert client.exists(layout.profile("c-9")) == 0
            assert client.smembers(layout.segment("all", "all-2")) == {b"c-1"}
        finally:
            await sink.close()

    asyncio.run(erase())
    assert wiring.profiles == {} and wiring.updates_topic.sent == [(b"c-9", None)]


def test_the_catch_up_deletes_the_hash_of_an_erased_marker_and_queues_its_forget(redis_server, layout, client):
    """A worker killed while Redis was unreachable left an erased profile as a marker (no data) and
    its delete unsent: the next owner's catch-up deletes the hash and its memberships, and queues
    the ``forget`` that removes the marker (streams.agents.resend_erasures)."""
    from models.stitching import erased

    table = {b"a": state("a", 3), b"gone": erased(1, {"all": "all-1"})}
    client.hset(layout.profile("gone"), mapping={"version": 2, "email": "x@example.com"})
    client.sadd(layout.segment("all", "all-1"), "gone", "a")
    synced(client, layout, "profiles:0")
    view = serving_view(redis_server, layout, table, {0})
    run(view, view.check())
    assert client.exists(layout.profile("gone")) == 0
    assert client.smembers(layout.segment("all", "all-1")) == {b"a"}
    assert view.wiring.erasing == {b"gone"}
    assert versions(client, layout, "a") == {"a": 3}


def test_an_erasure_while_redis_is_unreachable_leaves_a_marker_without_data(layout):
    from streams.agents import forget
    from streams.local import free_port

    sink = RedisProfileSink(f"redis://127.0.0.1:{free_port()}/0", layout, socket_timeout=0.5)  # nothing listens
    updates = Topic()
    profile = {**state("c-9", 3), "segments": {"all": "all-2"}, "traits": {"email": "bo@example.com"}}
    wiring = SimpleNamespace(profiles={b"c-9": profile}, sink=sink, updates_topic=updates, erasing=set())

    async def erase() -> None:
        await forget(wiring, b"c-9", profile)
        assert sink.deleting("c-9")  # kept for the next flush

    asyncio.run(erase())
    marker = wiring.profiles[b"c-9"]
    assert set(marker) == {"erased", "segments", "events"} and marker["segments"] == {"all": "all-2"}
    assert wiring.erasing == {b"c-9"}
    assert [d.value for d in updates.sent] == [None]  # the output is gone at once


class Delivery:
    """What faust's send returns: awaiting it waits for the broker's ack (here: notes that it was)."""

    def __init__(self, value: bytes | None) -> None:
        self.value, self.awaited = value, False

    def __await__(self):
        self.awaited = True
        return iter(())


class Topic:
    def __init__(self) -> None:
        self.sent: list[Delivery] = []

    async def send(self, key: bytes | None = None, value: bytes | None = None, partition: int | None = None):
        self.sent.append(Delivery(value))
        return self.sent[-1]


def resolver_on(redis_server, layout: RedisLayout, table: dict):
    from pydantic import SecretStr

    from streams.resolver import Resolver

    settings = SimpleNamespace(blocked_values=frozenset(), identity_max_identifiers=50, partitions=1,
                               internal_message_bytes=1_000_000, hash_key=SecretStr("k" * 32))
    store = UserDict()  # a Faust table is a UserDict over its store (.data); this one shares ``table``
    store.data = table
    wiring = SimpleNamespace(identity=store, identity_sink=RedisIdentitySink(redis_server.url, layout),
                             settings=settings, by_customer_topic=Topic(), identity_topic=Topic(),
                             audit_topic=Topic(), deferred_erasures={})
    return Resolver(wiring)  # type: ignore[arg-type]


def test_the_identity_graph_reaches_redis_before_the_table(redis_server, layout, client):
    """A message read again after a crash finds its links in the table and writes nothing, so each
    identity entry must be in Redis, and each merge message on the broker, before the table holds
    the link: the table here checks both at every write."""
    import orjson

    checked = []

    class Table(dict):
        def __setitem__(self, key: bytes, value: object) -> None:
            if key.startswith(b"i|"):
                assert client.get(layout.identity(key[2:].decode())) == str(value).encode(), key
                # and from staging to here under the sink's lock (streams.resync reads under it)
                assert resolver.sink.lock.locked(), key
                checked.append(key)
            assert all(d.awaited for d in resolver.wiring.by_customer_topic.sent), "a merge not yet delivered"
            super().__setitem__(key, value)

    resolver = resolver_on(redis_server, layout, Table())
    records = [{"event_id": f"e{i}", "ts": 1_700_000_000_000 + i, "source": "clickstream", "channel": "web",
                "type": "page_view", "customer_id": cid, "anonymous_id": anon, "properties": {}}
               for i, (cid, anon) in enumerate([(None, "a1"), ("c-9", "a1"), ("c-9", "a2"), (None, "a3")])]

    async def scenario() -> None:
        try:
            await resolver.handle(orjson.dumps({"records": records}))
        finally:
            await resolver.sink.close()

    asyncio.run(scenario())
    # c-9 and its two anonymous ids are one person; a3 another (before the table held any of them).
    assert len(checked) == 4 and {client.get(layout.identity(i)) for i in ("cid:c-9", "anon:a1", "anon:a2")} == {b"c-9"}
    assert client.get(layout.identity("anon:a3")) is not None
    merges = [orjson.loads(d.value) for d in resolver.wiring.by_customer_topic.sent if b'"op"' in d.value]
    assert [m["op"] for m in merges] == ["expect", "merge_into"]  # anon:a1's profile joins c-9's


def test_an_erasure_leaves_the_identity_graph_in_redis_before_the_table(redis_server, layout, client):
    """A request read again after a crash finds nothing left in the table to delete, so the Redis
    copy of the person's identifiers must be gone before the table forgets them."""
    from models.identity import SUPPRESSED_PREFIX, link, parse_identifier, store_changes, store_graph

    class Table(dict):
        def __delitem__(self, key: bytes) -> None:
            assert not key.startswith((b"i|", b"g|")) or resolver.sink.lock.locked(), key
            super().__delitem__(key)

    resolver = resolver_on(redis_server, layout, Table())
    sink, wiring = resolver.sink, resolver.wiring
    person = [parse_identifier("c-9"), "email:9f0e", "device:d-1"]

    async def scenario() -> None:
        try:
            graph, ids, groups = store_graph(resolver._get)
            link(graph, person, 1_700_000_000_000)
            resolver._write(store_changes(ids, groups))
            await sink.flush()
            assert client.get(layout.identity("email:9f0e")) is not None  # the graph's copy is there
            await resolver.erase({"identifier": parse_identifier("c-9"), "request_id": "r-1"})
            # no flush here: what erase() itself wrote
            assert [client.get(layout.identity(i)) for i in person] == [None, None, None]
            assert client.keys(layout.identity_group("*")) == []
            assert client.scard(layout.suppressed()) == 3
        finally:
            await sink.close()

    asyncio.run(scenario())
    # The table forgot the graph too and keeps only the three suppressions.
    assert sorted(k.decode().split(SUPPRESSED_PREFIX)[0] for k in wiring.identity) == ["", "", ""]


def test_an_erasure_read_again_after_it_was_carried_out_writes_no_second_audit(redis_server, layout, client):
    """A request read again (redelivered after a crash, or sent again both by a restarted worker and by
    the one that had put it off) finds the person erased: its first audit record stands."""
    from models.identity import link, parse_identifier, store_changes, store_graph

    resolver = resolver_on(redis_server, layout, {})
    sink, wiring = resolver.sink, resolver.wiring
    request = {"identifier": parse_identifier("c-9"), "request_id": "r-1"}

    async def scenario() -> None:
        try:
            graph, ids, groups = store_graph(resolver._get)
            link(graph, [parse_identifier("c-9"), "device:d-1"], 1_700_000_000_000)
            resolver._write(store_changes(ids, groups))
            await sink.flush()
            await resolver.erase(request)
            await resolver.erase(request)
        finally:
            await sink.close()

    asyncio.run(scenario())
    audits = [orjson.loads(d.value) for d in wiring.audit_topic.sent]
    assert [(a["request_id"], a["found"], a["identifiers"]) for a in audits] == [("r-1", True, 2)]


def test_an_erasure_put_off_drops_the_persons_events_until_it_is_carried_out(redis_server, layout, client):
    """While Redis cannot take an erasure's deletes, the person stays in the table. An event naming
    one of their identifiers together with another customer's must not link the two: the erasure,
    carried out later, erases the whole group it finds, and would take the other customer with it."""
    from models.identity import link, parse_identifier, store_changes, store_graph
    from streams.local import free_port
    from streams.sinks import RedisIdentitySink

    resolver = resolver_on(redis_server, layout, {})
    wiring = resolver.wiring
    person = [parse_identifier("p-1"), "anon:a1"]

    def event(event_id: str, customer_id: str, anonymous_id: str | None) -> dict:
        return {"event_id": event_id, "ts": 1_700_000_000_000, "source": "clickstream", "channel": "web",
                "type": "page_view", "customer_id": customer_id, "anonymous_id": anonymous_id, "properties": {}}

    async def scenario() -> None:
        graph, ids, groups = store_graph(resolver._get)
        link(graph, person, 1_700_000_000_000)
        resolver._write(store_changes(ids, groups), stage=False)
        unreachable = RedisIdentitySink(f"redis://127.0.0.1:{free_port()}/0", layout, socket_timeout=0.5)
        resolver.sink = wiring.identity_sink = unreachable
        try:
            await resolver.erase({"identifier": "anon:a1", "request_id": "r-1"})
            assert set(wiring.deferred_erasures) == {"r-1"}
            await resolver.handle(orjson.dumps({"records": [event("e1", "c-9", "a1"), event("e2", "c-8", None)]}))
        finally:
            await unreachable.close()

    asyncio.run(scenario())
    table = wiring.identity.data
    assert table[b"i|cid:c-8"] == "c-8"  # another customer's event goes on
    assert b"i|cid:c-9" not in table  # e1 named the person: dropped, not linked
    assert table[b"g|p-1"]["members"] == sorted(person)
    routed = [r["event_id"] for d in wiring.by_customer_topic.sent
              for batch in orjson.loads(d.value).get("batch", {}).values() for r in batch]
    assert routed == ["e2"]


def test_an_erasure_put_off_drops_every_identifier_of_the_person(redis_server, layout, client):
    """A request names one of the person's identifiers: the others are worked out from the graph,
    which still holds the person."""
    from models.identity import link, parse_identifier, store_changes, store_graph

    resolver = resolver_on(redis_server, layout, {})
    wiring = resolver.wiring
    event = {"event_id": "e1", "ts": 1_700_000_000_000, "source": "clickstream", "channel": "web",
             "type": "page_view", "customer_id": "c-8", "anonymous_id": "a1", "properties": {}}

    async def scenario() -> None:
        try:
            graph, ids, groups = store_graph(resolver._get)
            link(graph, [parse_identifier("p-1"), "anon:a1"], 1_700_000_000_000)
            resolver._write(store_changes(ids, groups), stage=False)
            wiring.identity.data[b"e|deferred"] = {"r-0": {"identifier": "cid:p-1", "request_id": "r-0"}}
            await resolver.handle(orjson.dumps({"records": [event]}))
        finally:
            await resolver.sink.close()

    asyncio.run(scenario())
    assert b"i|cid:c-8" not in wiring.identity.data and wiring.by_customer_topic.sent == []


def test_a_second_erasure_of_an_unknown_identifier_is_put_off_too(redis_server, layout, client):
    """The first request is put off (its identifier known to nobody); the second must not pass for
    "already carried out" because the identifier is being erased: it waits, and gets its audit."""
    from streams.local import free_port
    from streams.sinks import RedisIdentitySink

    resolver = resolver_on(redis_server, layout, {})
    wiring = resolver.wiring

    async def scenario() -> None:
        unreachable = RedisIdentitySink(f"redis://127.0.0.1:{free_port()}/0", layout, socket_timeout=0.5)
        resolver.sink = wiring.identity_sink = unreachable
        try:
            for request_id in ("r-1", "r-2"):
                await resolver.erase({"identifier": "anon:zz", "request_id": request_id})
        finally:
            await unreachable.close()

    asyncio.run(scenario())
    assert set(wiring.deferred_erasures) == {"r-1", "r-2"}
    assert set(wiring.identity.data[b"e|deferred"]) == {"r-1", "r-2"}


def test_identity_writes_left_staged_are_dropped_when_a_rebalance_takes_the_graph(redis_server, layout, client):
    """A failed flush left identity writes staged; a rebalance takes the graph away. Sent later by
    this worker's flush timer they could overwrite what the next owner writes, so they are dropped,
    and the graph is caught up again (from the table) if it comes back here."""
    table = graph_of(("ann", ["cid:ann"]))
    synced(client, layout, "identity")
    view = serving_view(redis_server, layout, {}, {0}, identity=table)
    view.caught_up = {"profiles:0", "identity"}
    sink = view.wiring.identity_sink
    sink.stage_id("cid:ann", "ann")
    sink.count("identity_merges")
    names = view.wiring.names

    async def scenario() -> None:
        assert await view.release_identity([TP(names.by_customer, 0)]) == 0  # the graph stays
        assert sink.pending == 1
        assert await view.release_identity([TP(names.by_customer, 0), TP(names.identity_events, 0)]) == 1
        assert sink.pending == 0 and view.caught_up == {"profiles:0"}
        await view.check()  # it came back: written again from the table

    run(view, scenario())
    assert client.get(layout.identity("cid:ann")) == b"ann"
    assert view.catch_ups["identity_rewritten"] == 1
    assert client.hget(layout.stats(), "identity_merges") == b"1"  # counters are kept

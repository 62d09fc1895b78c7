"""The serving view's catch-up of partitions a worker takes over (streams.resync), on a fake Redis:
what a killed owner had staged and not flushed is written again from the table, and only that."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from streams import resync
from streams.resync import ServingView, behind
from streams.sinks import RedisLayout, FlushStats
from streams.topics import TopicNames


def test_behind():
    assert behind(None, 1)
    assert behind(b"2", 3)
    assert not behind(b"3", 3)
    assert not behind("4", 3)  # newer in Redis: the write-if-newer script would refuse it anyway


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis, self.calls = redis, []

    def hget(self, key: str, field: str) -> None:
        self.calls.append((key, field))

    async def execute(self) -> list:
        self.redis.hgets += len(self.calls)
        return [self.redis.versions.get(key) for key, _ in self.calls]


class FakeRedis:
    def __init__(self, versions: dict[str, bytes]) -> None:
        self.versions, self.hgets = versions, 0
        self.marks: dict[str, bytes] = {}

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)

    async def hmget(self, key: str, fields: list[str]) -> list:
        return [self.marks.get(f) for f in fields]


class FakeSink:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis, self.layout, self.stats = redis, RedisLayout("p:"), FlushStats()
        self.staged: dict[str, int] = {}
        self.flushed: dict[str, int] = {}

    def connection(self) -> FakeRedis:
        return self.redis

    def stage(self, customer_id: str, version: int, fields: dict) -> None:
        self.staged[customer_id] = version

    def stage_move(self, *args: object) -> None:
        pass

    async def flush(self) -> None:
        self.flushed.update(self.staged)
        for customer_id, version in self.staged.items():
            self.redis.versions[self.layout.profile(customer_id)] = str(version).encode()
        self.staged = {}


def serving_view(table: dict[bytes, dict], versions: dict[str, bytes], partitions: set[int]):
    names = TopicNames("t.")
    redis = FakeRedis(versions)
    sink = FakeSink(redis)
    app = SimpleNamespace(rebalancing=False, in_recovery=False, rebalancing_count=1,
                          tables=SimpleNamespace(recovery=SimpleNamespace(completed=SimpleNamespace(is_set=lambda: True))))
    app.assignor = SimpleNamespace(assigned_actives=lambda: {TP(names.by_customer, p) for p in partitions})
    wiring = SimpleNamespace(names=names, sink=sink, profiles=table, settings=SimpleNamespace(partitions=1))
    view = ServingView(app, wiring)  # type: ignore[arg-type]
    redis.marks = {"profiles:0": b"earlier"}  # Redis did not lose data: no part is rewritten in full
    return view, redis, sink


@pytest.fixture(autouse=True)
def plain_render(monkeypatch):
    monkeypatch.setattr(resync, "render_profile", lambda s: {"customer_id": s["customer_id"], "version": s["version"]})
    monkeypatch.setattr(resync, "redis_fields", lambda profile, raw: {"version": str(profile["version"])})


def state(customer_id: str, version: int, events: int = 1) -> dict:
    return {"customer_id": customer_id, "version": version, "events": events}


def test_catch_up_writes_only_what_redis_is_behind_on():
    table = {b"a": state("a", 3), b"b": state("b", 2), b"c": state("c", 1), b"d": state("d", 0, events=0),
             b"e": {"merged_into": "a", "ts": 0}}
    view, redis, sink = serving_view(table, {"p:profile:a": b"3", "p:profile:b": b"1"}, {0})
    assert asyncio.run(view.check()) == []  # nothing rewritten in full
    assert sink.flushed == {"b": 2, "c": 1}  # b older, c missing; not a (same), d (empty), e (stub)
    assert view.caught_up == {"profiles:0"} and view.restaged == 2
    hgets = redis.hgets
    asyncio.run(view.check())  # caught up: no second pass while the worker keeps the partition
    assert redis.hgets == hgets


def test_a_partition_given_away_and_back_is_caught_up_again():
    table = {b"a": state("a", 3)}
    owned = {0}
    view, redis, sink = serving_view(table, {}, owned)
    view.app.assignor = SimpleNamespace(
        assigned_actives=lambda: {TP(view.wiring.names.by_customer, p) for p in owned})
    asyncio.run(view.check())
    assert sink.flushed == {"a": 3}
    view.assigned()  # a rebalance that keeps it: nothing to do
    assert view.caught_up == {"profiles:0"}
    owned.clear()
    view.assigned()  # taken away: another worker may die with a write of it staged
    assert view.caught_up == set()
    owned.add(0)
    view.assigned()
    table[b"a"] = state("a", 4)  # what the other owner wrote to the table, not to Redis
    asyncio.run(view.check())
    assert sink.flushed == {"a": 4}

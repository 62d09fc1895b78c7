"""The health verdict, the Prometheus collector and the status tables, on plain inputs."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

from faust.types import TP
from prometheus_client.parser import text_string_to_metric_families

from streams.metrics import WorkerMetrics, WorkerStats, judge_health
from streams.redelivery import RedeliveryGuard
from streams.status import format_status
from streams.topics import TopicNames


def verdict(**kw):
    base = dict(started=True, recovering=False, rebalancing=False, input_lag=0, idle_seconds=0.0, stall_seconds=60)
    return judge_health(**{**base, **kw})


def test_health_states():
    assert verdict().status == "ok"
    assert verdict(started=False).status == "starting"
    assert verdict(recovering=True).status == "starting"
    assert verdict(rebalancing=True).status == "rebalancing"
    # Idle with nothing to read is healthy; idle with input waiting is a stall (503).
    assert verdict(idle_seconds=3600).http_status == 200
    assert verdict(input_lag=1, idle_seconds=59).status == "ok"
    stalled = verdict(input_lag=1, idle_seconds=60)
    assert (stalled.status, stalled.http_status) == ("stalled", 503)


class FakeEvent:
    def is_set(self) -> bool:
        return True


def fake_worker(lag_committed: dict, ends: dict):
    names = TopicNames("p.")
    tps = {key: TP(key[0], key[1]) for key in ends}

    async def highwaters(*parts):
        return {p: ends[(p.topic, p.partition)] for p in parts}

    monitor = SimpleNamespace(
        messages_received_total=10,
        messages_received_by_topic=Counter({"p.events.clickstream": 7}),
        messages_sent_by_topic=Counter({"p.profiles.updates": 4}),
        tp_committed_offsets={tps[k]: v for k, v in lag_committed.items()},
    )
    app = SimpleNamespace(
        monitor=monitor,
        consumer=SimpleNamespace(assignment=lambda: set(tps.values()), highwaters=highwaters),
        assignor=SimpleNamespace(assigned_actives=lambda: set(tps.values())),
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=FakeEvent())),
        rebalancing=False, in_recovery=False, rebalancing_count=3, started=True,
        redelivery=RedeliveryGuard(commits_held=4, reseeks=2),
        flush_guard=SimpleNamespace(overtaken=8), fetched_ends=SimpleNamespace(raised=9),
    )
    sink = SimpleNamespace(pending=2, stats=SimpleNamespace(failed_flushes=1))
    other = SimpleNamespace(pending=0, failed_flushes=0)
    wiring = SimpleNamespace(names=names, sink=sink, journey_sink=other, identity_sink=other,
                             stats=WorkerStats(events_valid=Counter({"clickstream": 6}),
                                               dead_letters=Counter({"invalid_json": 1}), merge_double_counted=5,
                                               merge_recounted=4),
                             settings=SimpleNamespace(stall_seconds=60))
    catch_ups = {"scanned": 3, "clean_handover": 1, "identity_rewritten": 2, "identity_clean_handover": 0}
    serving = SimpleNamespace(backlog=5, rewritten=2, restaged=7, catch_ups=catch_ups)
    learner = SimpleNamespace(core=SimpleNamespace(replays_skipped=6))
    return WorkerMetrics(app, wiring, serving, learner)


def scrape(metrics: WorkerMetrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(metrics.prometheus_text().decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_collector_reports_lag_from_end_minus_committed():
    metrics = fake_worker({("p.events.clickstream", 0): 40, ("p.events.clickstream", 1): 12},
                          {("p.events.clickstream", 0): 50, ("p.events.clickstream", 1): 12,
                           ("p.events.email", 0): 3})
    asyncio.run(metrics.refresh())
    m = scrape(metrics)
    lag = {(lv["topic"], lv["partition"]): v for lv, v in m["omniprofile_consumer_lag"]}
    # Never committed: the whole partition is behind.
    assert lag == {("p.events.clickstream", "0"): 10, ("p.events.clickstream", "1"): 0, ("p.events.email", "0"): 3}
    assert metrics.input_lag() == 13
    assert m["omniprofile_events_valid_total"] == [({"source": "clickstream"}, 6.0)]
    assert m["omniprofile_dead_letters_total"] == [({"reason": "invalid_json"}, 1.0)]
    assert ({"sink": "profiles"}, 1.0) in m["omniprofile_redis_errors_total"]
    assert m["omniprofile_redis_resync_backlog"] == [({}, 5.0)]
    assert m["omniprofile_redis_catchups_total"] == [
        ({"how": "clean_handover"}, 1.0), ({"how": "identity_clean_handover"}, 0.0),
        ({"how": "identity_rewritten"}, 2.0), ({"how": "scanned"}, 3.0)]
    assert m["omniprofile_redis_restaged_total"] == [({}, 7.0)]
    assert m["omniprofile_rebalances_total"] == [({}, 3.0)]
    assert m["omniprofile_commits_held_total"] == [({}, 4.0)]
    assert m["omniprofile_reseeks_total"] == [({}, 2.0)]
    assert m["omniprofile_flush_overtaken_total"] == [({}, 8.0)]
    assert m["omniprofile_end_offsets_raised_total"] == [({}, 9.0)]
    assert m["omniprofile_merge_double_counted_total"] == [({}, 5.0)]
    assert m["omniprofile_merge_recounted_total"] == [({}, 4.0)]
    assert m["omniprofile_segment_replays_skipped_total"] == [({}, 6.0)]
    doc = metrics.health_document()
    assert doc["status"] == "ok" and doc["input_lag"] == 13 and doc["redis_pending"] == 2


def test_status_tables_show_the_figures():
    metrics = fake_worker({("p.events.clickstream", 0): 40}, {("p.events.clickstream", 0): 50})
    asyncio.run(metrics.refresh())
    text = format_status("http://w1:6066", metrics.health_document(), scrape(metrics))
    lines = text.splitlines()
    assert lines[2].split()[:2] == ["http://w1:6066", "ok"]
    assert any(line.split() == ["clickstream", "6"] for line in lines)
    assert any(line.split() == ["dead-lettered:", "invalid_json", "1"] for line in lines)
    assert any(line.split() == ["p.events.clickstream", "0", "10"] for line in lines)
    assert any("partitions taken over: 3 scanned, 1 handed over cleanly, 7 profiles re-written; identity graph "
               "taken over: 2 rewritten, 0 handed over cleanly" in line for line in lines)

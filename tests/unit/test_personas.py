"""Segment personas: tallies merge exactly, the figures match a pandas recomputation from the
raw profile states, and labels follow what sets a segment apart."""

from __future__ import annotations

import random
from collections import Counter

import orjson
import pandas as pd
import pytest

from models.events import Limits
from models.ingest import decode_message, group_by_profile

from models.outputs import SegmentSummaries
from models.personas import age_band, merge_tallies, summarize, tally_members
from models.profile import DAY_MS, apply_events
from models.synthetic import generate


def records_by_profile(dataset) -> dict[str, list]:
    limits = Limits(now_ms=2**62, max_future_ms=0, min_ts_ms=0)
    out: dict[str, list] = {}
    for generated in dataset.events:
        decoded = decode_message(generated.source, orjson.dumps(generated.event), limits, b"k", 1 << 20)
        for key, recs in group_by_profile(decoded.records).items():
            out.setdefault(key, []).extend(recs)
    return out


@pytest.fixture(scope="module")
def states() -> list[dict]:
    dataset = generate(300, seed=11)
    by_key = records_by_profile(dataset)
    rng = random.Random(5)
    out = []
    for key, recs in sorted(by_key.items()):
        state = apply_events(None, key, recs, 256).state
        # Segments drawn at random: the summaries must describe whatever the members are.
        state["segments"] = {"all": f"s{rng.randrange(4)}"}
        for channel in state["channels"]:
            if rng.random() < 0.8:
                state["segments"][channel] = f"s{rng.randrange(3)}"
        out.append(state)
    return out


@pytest.fixture(scope="module")
def as_of(states) -> int:
    return max(s["all"]["last_ts"] for s in states) + DAY_MS


def test_tallies_of_disjoint_parts_merge_into_the_tally_of_the_whole(states, as_of):
    rng = random.Random(2)
    parts: list[list[dict]] = [[], [], []]
    for state in states:
        parts[rng.randrange(3)].append(state)
    merged = merge_tallies(tally_members(part, as_of) for part in parts)
    assert summarize(merged) == summarize(tally_members(states, as_of))


def member_frame(states: list[dict], scope: str, as_of: int) -> pd.DataFrame:
    rows = []
    for s in states:
        segment = s["segments"].get(scope)
        if segment is None:
            continue
        act = s["all"] if scope == "all" else s["channels"][scope]
        age = s["traits"].get("age")
        devices = act["devices"]
        rows.append({
            "segment": segment,
            "revenue": act["revenue_cents"] / 100,
            "orders": act["orders"],
            "discounted": act["discounted_orders"],
            "sent": act.get("email", {}).get("sent", 0),
            "opens": act.get("email", {}).get("open", 0),
            "app_opens": act.get("app", {}).get("opens", 0) + act.get("app", {}).get("push_opens", 0),
            "active": as_of - act["last_ts"] <= 30 * DAY_MS,
            "age": age,
            "main_device": min(devices, key=lambda d: (-devices[d], d)) if devices else None,
            "channel_events": {scope: act["events"]} if scope != "all"
            else {c: b["events"] for c, b in s["channels"].items()},
        })
    return pd.DataFrame(rows)


def expected_band(age: float | None) -> str | None:
    if age is None:
        return None
    edges = [(18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"), (65, "55-64")]
    return next((name for edge, name in edges if age < edge), "65+")


@pytest.mark.parametrize("scope", ["all", "web", "amazon"])
def test_summary_figures_match_a_pandas_recomputation(states, as_of, scope):
    summaries = {row["segment"]: row for row in summarize(tally_members(states, as_of))[scope]}
    frame = member_frame(states, scope, as_of)
    assert set(summaries) == set(frame["segment"])
    total = len(frame)
    for segment, g in frame.groupby("segment"):
        got = summaries[segment]
        n = len(g)
        assert got["size"] == n
        assert got["share"] == pytest.approx(n / total, abs=1e-4)
        assert got["avg_spend"] == pytest.approx(g["revenue"].sum() / n, abs=0.01)
        assert got["avg_orders"] == pytest.approx(g["orders"].sum() / n, abs=1e-4)
        assert got["buyer_share"] == pytest.approx((g["orders"] > 0).mean(), abs=1e-4)
        orders = g["orders"].sum()
        assert got["discount_share"] == pytest.approx(g["discounted"].sum() / orders if orders else 0, abs=1e-4)
        sent = g["sent"].sum()
        assert got["email_open_rate"] == pytest.approx(g["opens"].sum() / sent if sent else 0, abs=1e-4)
        assert got["app_user_share"] == pytest.approx((g["app_opens"] > 0).mean(), abs=1e-4)
        assert got["active_share"] == pytest.approx(g["active"].mean(), abs=1e-4)
        channel_events: Counter = Counter()
        for events in g["channel_events"]:
            channel_events.update(events)
        top = sorted(channel_events.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        assert [c["name"] for c in got["top_channels"]] == [name for name, _ in top]
        assert got["top_channels"][0]["share"] == pytest.approx(top[0][1] / sum(channel_events.values()), abs=1e-4)
        bands = Counter(expected_band(a) for a in g["age"] if pd.notna(a))
        if bands:
            best = max(bands.values())
            assert got["age_band"] == min(b for b, c in bands.items() if c == best)
        else:
            assert got["age_band"] is None
        devices = Counter(d for d in g["main_device"] if d)
        assert got["devices"][0]["share"] == pytest.approx(max(devices.values()) / n, abs=1e-4)


def test_summaries_validate_against_the_published_schema(states, as_of):
    for scope, rows in summarize(tally_members(states, as_of)).items():
        SegmentSummaries(scope=scope, ts="2026-11-23T00:00:00.000Z", customers=sum(r["size"] for r in rows),
                         partitions_reported=1, partitions=1, segments=rows)


def test_labels_are_unique_within_a_scope(states, as_of):
    for scope, rows in summarize(tally_members(states, as_of)).items():
        labels = [r["label"] for r in rows]
        assert len(labels) == len(set(labels)), (scope, labels)


def counts(members: int, **kw) -> dict:
    base = {"members": members, "orders": members, "buyers": members, "revenue_cents": members * 5000,
            "active_recently": members, "groups": {"web": 10 * members}}
    base.update(kw)
    return base


def test_labels_name_what_sets_a_segment_apart():
    tally = {"all": {
        "s0": counts(50),  # the plain web majority
        "s1": counts(10, groups={"app": 90, "web": 10}, orders=40, buyers=10),
        "s2": counts(10, groups={"marketplace": 80, "web": 20}, discounted_orders=9),
        "s3": counts(10, groups={"store": 60, "web": 40}, revenue_cents=10 * 60000),
        "s4": counts(10, active_recently=0),
        "s5": counts(10, buyers=0, orders=0, revenue_cents=0),
    }}
    labels = {r["segment"]: r["label"] for r in summarize(tally)["all"]}
    assert labels["s0"] == "web shoppers"
    assert labels["s1"] == "frequent app loyalists"
    assert labels["s2"] == "bargain-hunting marketplace shoppers"
    assert labels["s3"] == "big-spending store regulars"
    assert labels["s4"] == "lapsed web shoppers"
    assert labels["s5"] == "window-shopping web shoppers"


def test_twin_labels_are_told_apart_by_interest():
    tally = {"amazon": {
        "s0": counts(10, interests={"toys": 9, "books": 1}),
        "s1": counts(10, interests={"garden": 8, "books": 2}),
    }}
    labels = sorted(r["label"] for r in summarize(tally)["amazon"])
    assert labels == ["buyers, into garden", "buyers, into toys"]


def test_age_bands():
    assert [age_band(a) for a in (0, 18, 24.9, 25, 64, 65, 120)] == [
        "under 18", "18-24", "18-24", "25-34", "55-64", "65+", "65+"]
    assert age_band("40") is None and age_band(True) is None and age_band(-1) is None


def test_movers_are_grouped_by_the_channel_pairs_they_moved_through():
    from models.journeys import record_journey
    from models.personas import MOVERS

    def visit(cid, i, ts, channel, revenue=None):
        etype = "purchase" if revenue else "page_view"
        return {"event_id": f"{cid}-{i}", "source": "clickstream", "type": etype, "ts": ts, "customer_id": cid,
                "anonymous_id": None, "email_hash": None, "channel": channel, "device": "desktop",
                "properties": {"revenue": revenue} if revenue else {}}

    paths = {"a": ["amazon", "web"], "b": ["amazon", "web", "amazon"], "c": ["web"], "d": ["ebay", "amazon"]}
    states = []
    for cid, channels in paths.items():
        recs = [visit(cid, i, 1_795_000_000_000 + i * 60_000, ch, 30.0 if i == len(channels) - 1 else None)
                for i, ch in enumerate(channels)]
        state = apply_events(None, cid, recs).state
        record_journey(state, recs)
        state["segments"] = {"all": "s1" if cid in "ab" else "s0"}
        states.append(state)
    movers = {r["segment"]: r for r in summarize(tally_members(states, 1_795_000_600_000))[MOVERS]}
    # Pairs by hand: a amazon>web; b amazon>web, web>amazon; d ebay>amazon; c never moved.
    assert {pair: row["size"] for pair, row in movers.items()} == {"amazon>web": 2, "web>amazon": 1, "ebay>amazon": 1}
    assert movers["amazon>web"]["segments"] == [{"name": "s1", "share": 1.0}]
    assert movers["amazon>web"]["avg_spend"] == 30.0

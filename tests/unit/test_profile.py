"""The profile step (:func:`models.profile.apply_events`): folds, order independence, dedup, bounds.

Expected values are recomputed in the test from the records (plain Python, and pandas for a
cross-check), with only the documented constants imported from the code under test.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter

import orjson
import pandas as pd
import pytest

from models.ingest import decode_message
from models.profile import (
    CATEGORY_WEIGHTS,
    DEFAULT_DEDUP_WINDOW,
    INTEREST_WEIGHTS,
    MAX_CHANNELS,
    MAX_DAYS,
    MAX_RECENT_ORDERS,
    MAX_SESSIONS,
    OTHER_CHANNEL,
    SESSION_GAP_MS,
    TOP_CAP,
    apply_events,
)
from models.view import render_profile

BOOKKEEPING = ("seen", "last_event_id")  # arrival-order bookkeeping, the only order-dependent parts


def without(state: dict, *keys: str) -> dict:
    return {k: v for k, v in state.items() if k not in keys}


def apply_in_batches(records: list[dict], batches: list[list[dict]] | None = None, key: str = "c-1"):
    state = None
    for batch in batches if batches is not None else [records]:
        state = apply_events(state, key, batch).state
    return state


def random_split(rng: random.Random, records: list[dict], parts: int) -> list[list[dict]]:
    cuts = sorted(rng.sample(range(1, len(records)), parts - 1))
    return [records[a:b] for a, b in zip([0, *cuts], [*cuts, len(records)], strict=True)]


# --- the fold against an independent recount -----------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_activity_state_matches_an_independent_recount(seed, ref):
    records = ref.random_records(seed)
    step = apply_events(None, "c-1", records)
    state = step.state
    behaviour = [r for r in records if r["source"] != "identify"]

    def check(act: dict, recs: list[dict]) -> None:
        times = [r["ts"] for r in recs]
        orders = [r for r in recs if r["type"] in ("purchase", "pos_purchase")]
        assert act["events"] == len(recs)
        assert act["types"] == dict(Counter(r["type"] for r in recs))
        assert (act["first_ts"], act["last_ts"]) == (min(times), max(times))
        assert act["days"] == sorted({t // ref.DAY for t in times}) and act["days_dropped"] == 0
        assert act["sessions"] == ref.sessions(times) and act["sessions_dropped"] == 0
        assert act["orders"] == len(orders)
        assert act["revenue_cents"] == sum(round(r["properties"]["revenue"] * 100) for r in orders)
        assert act["discounted_orders"] == sum(1 for r in orders if r["properties"].get("discount", 0) > 0)
        expected_categories = Counter()
        for r in recs:
            if r["properties"].get("category") and r["type"] in CATEGORY_WEIGHTS:
                expected_categories[r["properties"]["category"]] += CATEGORY_WEIGHTS[r["type"]]
        assert act["categories"] == dict(expected_categories)

    check(state["all"], behaviour)
    channels = sorted({r["channel"] for r in behaviour})
    assert sorted(state["channels"]) == channels
    for channel in channels:
        check(state["channels"][channel], [r for r in behaviour if r["channel"] == channel])
    assert state["events"] == len(records)
    assert state["version"] == 1 and step.applied == len(records) and step.duplicates == 0


@pytest.mark.parametrize("seed", range(3))
def test_per_channel_aggregates_match_pandas(seed, ref):
    records = ref.random_records(seed, n=220)
    state = apply_events(None, "c-1", records).state
    df = pd.DataFrame(
        [
            {
                "channel": r["channel"],
                "ts": r["ts"],
                "is_order": r["type"] in ("purchase", "pos_purchase"),
                "cents": round(r["properties"]["revenue"] * 100) if "revenue" in r["properties"] else 0,
            }
            for r in records
            if r["source"] != "identify"
        ]
    ).sort_values(["channel", "ts"])
    df["day"] = df["ts"] // ref.DAY
    df["new_session"] = df.groupby("channel")["ts"].diff().fillna(SESSION_GAP_MS + 1) > SESSION_GAP_MS
    agg = df.groupby("channel").agg(
        events=("ts", "size"),
        orders=("is_order", "sum"),
        cents=("cents", "sum"),
        days=("day", "nunique"),
        sessions=("new_session", "sum"),
        first=("ts", "min"),
        last=("ts", "max"),
    )
    got = pd.DataFrame(
        {
            c: {
                "events": b["events"],
                "orders": b["orders"],
                "cents": b["revenue_cents"],
                "days": len(b["days"]) + b["days_dropped"],
                "sessions": len(b["sessions"]) + b["sessions_dropped"],
                "first": b["first_ts"],
                "last": b["last_ts"],
            }
            for c, b in state["channels"].items()
        }
    ).T.sort_index()
    pd.testing.assert_frame_equal(got.astype("int64"), agg[got.columns].astype("int64"), check_names=False)


def test_session_gap_rule_boundary(ref):
    t = ref.T0
    r = ref.record
    exactly = apply_events(None, "c-1", [r("a", "page_view", t), r("b", "page_view", t + SESSION_GAP_MS)]).state
    assert exactly["all"]["sessions"] == [[t, t + SESSION_GAP_MS]]
    beyond = apply_events(None, "c-1", [r("a", "page_view", t), r("b", "page_view", t + SESSION_GAP_MS + 1)]).state
    assert beyond["all"]["sessions"] == [[t, t], [t + SESSION_GAP_MS + 1, t + SESSION_GAP_MS + 1]]
    # A late event between two sessions joins them when it is within the gap of both.
    bridged = apply_events(beyond, "c-1", [r("c", "page_view", t + SESSION_GAP_MS // 2)]).state
    assert bridged["all"]["sessions"] == [[t, t + SESSION_GAP_MS + 1]]


def test_active_days_are_utc_days(ref):
    midnight = (ref.T0 // ref.DAY + 1) * ref.DAY
    r = ref.record
    recs = [
        r("a", "page_view", midnight - 1),
        r("b", "page_view", midnight),
        r("c", "page_view", midnight + ref.DAY - 1),
    ]
    state = apply_events(None, "c-1", recs).state
    assert state["all"]["days"] == [midnight // ref.DAY - 1, midnight // ref.DAY]
    assert render_profile(state)["summary"]["active_days"] == 2


@pytest.mark.parametrize(
    "revenues",
    [(19.99, 0.1, 0.2), (0.01,) * 7, (1234.565, 0.0, 99.999), (1e6, 2.5)],
)
def test_revenue_is_summed_in_cents(revenues, ref):
    recs = [ref.record(f"o{i}", "purchase", ref.T0 + i, revenue=v) for i, v in enumerate(revenues)]
    state = apply_events(None, "c-1", recs).state
    assert state["all"]["revenue_cents"] == sum(round(v * 100) for v in revenues)
    assert isinstance(state["all"]["revenue_cents"], int)
    assert state["all"]["orders"] == len(revenues)


def test_traits_newest_by_event_time(ref):
    r = ref.record
    newer = r("n", "identify", ref.T0 + 10, source="identify", traits={"gender": "female", "age": 41})
    older = r("o", "identify", ref.T0, source="identify", traits={"gender": "male", "country": "DE"})
    for batches in ([[newer, older]], [[older, newer]], [[newer], [older]], [[older], [newer]]):
        state = apply_in_batches([], batches)
        assert state["traits"] == {"gender": "female", "age": 41, "country": "DE"}
        assert state["all"]["events"] == 0 and state["channels"] == {}  # identify is no channel behaviour


def test_trait_tie_on_event_time_does_not_depend_on_order(ref):
    r = ref.record
    a = r("a", "identify", ref.T0, source="identify", traits={"gender": "female"})
    b = r("b", "identify", ref.T0, source="identify", traits={"gender": "male"})
    one = apply_in_batches([], [[a], [b]])
    two = apply_in_batches([], [[b], [a]])
    assert one["traits"] == two["traits"] and one["traits"]["gender"] in ("female", "male")


def test_interest_weights(ref):
    r = ref.record
    recs = [
        r("1", "identify", ref.T0, source="identify", traits={"interests": ["Yoga", "books"]}),
        r("2", "like", ref.T0 + 1, source="social", channel="instagram", topic="Yoga "),
        r("3", "purchase", ref.T0 + 2, revenue=10.0, category="Books"),
        r("4", "add_to_cart", ref.T0 + 3, category="garden"),
        r("5", "product_view", ref.T0 + 4, category="garden"),
        r("6", "checkout", ref.T0 + 5, category="toys"),  # checkout: no interest weight
        r("7", "page_view", ref.T0 + 6, category="toys"),
    ]
    state = apply_events(None, "c-1", recs).state
    w = INTEREST_WEIGHTS
    assert state["interests"] == {
        "yoga": w["declared"] + w["social"],
        "books": w["declared"] + w["purchase"],
        "garden": w["cart"] + w["view"],
    }
    assert state["all"]["categories"] == {
        "Books": CATEGORY_WEIGHTS["purchase"],
        "garden": CATEGORY_WEIGHTS["add_to_cart"] + CATEGORY_WEIGHTS["product_view"],
        "toys": CATEGORY_WEIGHTS["checkout"],
    }


@pytest.mark.parametrize(
    ("source", "etype", "channel", "part"),
    [
        ("email", "open", "email", "email"),
        ("app", "app_open", "app", "app"),
        ("social", "like", "tiktok", "social"),
        ("offline", "store_visit", "store", "offline"),
        ("clickstream", "purchase", "amazon", "orders"),
    ],
)
def test_changed_names_the_parts(source, etype, channel, part, ref):
    rec = ref.record("e", etype, ref.T0, source=source, channel=channel, revenue=1.0 if etype == "purchase" else None)
    changed = apply_events(None, "c-1", [rec]).changed
    assert {"activity", f"channels.{channel}", part} <= set(changed)
    assert changed == sorted(changed)
    identify = ref.record("i", "identify", ref.T0, source="identify", traits={"age": 30})
    assert "traits" in apply_events(None, "c-1", [identify]).changed
    assert "activity" not in apply_events(None, "c-1", [identify]).changed


# --- order independence -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_shuffled_orders_give_identical_state_and_view(seed, ref):
    records = ref.random_records(seed)
    reference = apply_events(None, "c-1", records)
    rng = random.Random(seed)
    for _ in range(5):
        shuffled = records[:]
        rng.shuffle(shuffled)
        step = apply_events(None, "c-1", shuffled)
        assert without(step.state, *BOOKKEEPING) == without(reference.state, *BOOKKEEPING)
        assert sorted(step.state["seen"]) == sorted(reference.state["seen"])
        assert step.changed == reference.changed
        assert render_profile(step.state) == render_profile(reference.state)


@pytest.mark.parametrize("seed", range(4))
def test_batch_splits_give_identical_state_and_view(seed, ref):
    records = ref.random_records(seed)
    reference = apply_events(None, "c-1", records).state
    rng = random.Random(100 + seed)
    for parts in (2, 5, 17, len(records)):
        shuffled = records[:]
        rng.shuffle(shuffled)
        state = apply_in_batches(shuffled, random_split(rng, shuffled, parts))
        assert state["version"] == parts  # one per batch that applied something
        assert without(state, *BOOKKEEPING, "version") == without(reference, *BOOKKEEPING, "version")
        assert without(render_profile(state), "version") == without(render_profile(reference), "version")


def test_identifier_lists_do_not_depend_on_arrival_order(ref):
    records = ref.random_records(11, anonymous_ids=("anon-1", "anon-2", "anon-3"), email_hashes=("a" * 32, "b" * 32))
    reference = apply_events(None, "c-1", records).state
    rng = random.Random(11)
    for _ in range(5):
        shuffled = records[:]
        rng.shuffle(shuffled)
        state = apply_events(None, "c-1", shuffled).state
        assert state["identifiers"] == reference["identifiers"]
        assert render_profile(state)["identifiers"] == render_profile(reference)["identifiers"]


def test_recent_orders_with_equal_time_and_order_id_do_not_depend_on_order(ref):
    r = ref.record
    items = [r(f"line-{i}", "purchase", ref.T0, order_id="o-1", revenue=float(v)) for i, v in enumerate((10, 25, 7))]
    reference = apply_events(None, "c-1", items).state
    for perm in ([2, 1, 0], [1, 0, 2], [0, 2, 1]):
        state = apply_events(None, "c-1", [items[i] for i in perm]).state
        assert without(state, *BOOKKEEPING) == without(reference, *BOOKKEEPING)
        assert (
            render_profile(state)["summary"]["recent_orders"] == render_profile(reference)["summary"]["recent_orders"]
        )


# --- duplicates, replays, versions, purity ---------------------------------------------------------------------


def test_duplicates_change_nothing(ref):
    records = ref.random_records(3)
    first = apply_events(None, "c-1", records)
    rng = random.Random(3)
    replay = [copy.deepcopy(r) for r in rng.sample(records, 60)]
    for rec in replay:  # same id, other content: still a duplicate
        rec["ts"] += ref.DAY
        rec["properties"]["revenue"] = 999.0
    replay += replay[:10]
    again = apply_events(first.state, "c-1", replay)
    assert again.state == first.state  # everything, version and bookkeeping included
    assert (again.applied, again.duplicates, again.changed) == (0, 70, [])


def test_duplicates_within_one_batch_count_once(ref):
    records = ref.random_records(4, n=40)
    doubled = [rec for pair in zip(records, records, strict=True) for rec in pair]
    step = apply_events(None, "c-1", doubled)
    single = apply_events(None, "c-1", records)
    assert (step.applied, step.duplicates) == (40, 40)
    assert step.state == single.state


def test_duplicates_mixed_with_new_events(ref):
    records = ref.random_records(5, n=120)
    old, new = records[:80], records[80:]
    state = apply_events(None, "c-1", old).state
    rng = random.Random(5)
    batch = old[:30] + new
    rng.shuffle(batch)
    step = apply_events(state, "c-1", batch)
    assert (step.applied, step.duplicates) == (40, 30)
    expected = apply_events(state, "c-1", new).state
    assert without(step.state, *BOOKKEEPING) == without(expected, *BOOKKEEPING)
    assert step.state["version"] == 2


def test_duplicate_within_the_dedup_window_across_many_batches(ref):
    r = ref.record
    state = apply_events(None, "c-1", [r("target", "page_view", ref.T0)]).state
    for i in range(DEFAULT_DEDUP_WINDOW - 1):
        state = apply_events(state, "c-1", [r(f"e{i}", "page_view", ref.T0 + i + 1)]).state
    step = apply_events(state, "c-1", [r("target", "page_view", ref.T0)])
    assert step.applied == 0 and step.state == state


def test_an_id_older_than_the_dedup_window_is_applied_again(ref):
    r = ref.record
    state = apply_events(None, "c-1", [r("old", "page_view", ref.T0)], dedup_window=5).state
    for i in range(5):
        state = apply_events(state, "c-1", [r(f"e{i}", "page_view", ref.T0 + i + 1)], dedup_window=5).state
    assert "old" not in state["seen"] and len(state["seen"]) == 5
    assert apply_events(state, "c-1", [r("old", "page_view", ref.T0)], dedup_window=5).applied == 1
    assert apply_events(state, "c-1", [r("e0", "page_view", ref.T0 + 1)], dedup_window=5).applied == 0


@pytest.mark.parametrize(
    ("batch_ids", "replayed", "applied"),
    [
        (["e2"], True, 0),  # the last applied event again: re-publish
        (["e0"], False, 0),  # an older duplicate
        (["e0", "e2", "e1"], True, 0),
        (["e2", "new"], False, 1),  # something applied: the normal publish covers it
        (["new", "new"], False, 1),
        ([], False, 0),
    ],
)
def test_replayed_last_only_for_a_duplicate_of_the_last_applied_event(batch_ids, replayed, applied, ref):
    r = ref.record
    state = apply_events(None, "c-1", [r(f"e{i}", "page_view", ref.T0 + (2 - i) * 1000) for i in range(3)]).state
    assert state["last_event_id"] == "e2"
    step = apply_events(state, "c-1", [r(i, "page_view", ref.T0 + 99) for i in batch_ids])
    assert (step.replayed_last, step.applied) == (replayed, applied)
    assert step.state["version"] == 1 + (applied > 0)


def test_input_state_and_records_are_not_mutated(ref):
    records = ref.random_records(6)
    state = apply_events(None, "c-1", records[:100]).state
    state_before = copy.deepcopy(state)
    records_before = copy.deepcopy(records)
    step = apply_events(state, "c-1", records[100:] + records[:5])
    assert state == state_before
    assert records == records_before
    assert step.state is not state and step.state != state


def test_version_rises_by_one_per_batch_that_applied_something(ref):
    records = ref.random_records(7, n=90)
    rng = random.Random(7)
    state, expected_version = None, 0
    for batch in random_split(rng, records, 9):
        batch = batch + rng.sample(records, 3)  # some duplicates, maybe of this very batch
        fresh = {r["event_id"] for r in batch} - set(state["seen"] if state else ())
        step = apply_events(state, "c-1", batch)
        expected_version += 1 if fresh else 0
        assert step.state["version"] == expected_version
        assert step.applied == len(fresh)
        state = step.state
    only_dups = apply_events(state, "c-1", records[:5])
    assert only_dups.state["version"] == expected_version and only_dups.changed == []


# --- bounded memory -----------------------------------------------------------------------------------------------


def test_top_counters_stay_within_the_cap(ref):
    r = ref.record
    recs = [r(f"b{i}", "product_view", ref.T0 + i, category="books") for i in range(50)]
    recs += [
        r(f"c{i}", "product_view", ref.T0 + 100 + i, category=f"cat-{i:03d}", search_query=None) for i in range(200)
    ]
    recs += [r(f"s{i}", "search", ref.T0 + 400 + i, search_query=f"query {i}") for i in range(200)]
    state = apply_events(None, "c-1", recs).state
    for act in (state["all"], state["channels"]["web"]):
        assert len(act["categories"]) <= TOP_CAP and len(act["searches"]) <= TOP_CAP
        assert act["categories"]["books"] == 50 * CATEGORY_WEIGHTS["product_view"]
        assert act["events"] == 450
    assert len(state["interests"]) <= TOP_CAP and state["interests"]["books"] == 50 * INTEREST_WEIGHTS["view"]
    assert render_profile(state)["summary"]["top_categories"][0] == "books"


@pytest.mark.parametrize("batch_size", [1000, 50])
def test_sessions_stay_bounded_and_counted_for_in_order_input(batch_size, ref):
    rng = random.Random(batch_size)
    recs, t = [], ref.T0
    for s in range(1000):
        for j in range(rng.randint(1, 3)):
            recs.append(ref.record(f"e{s}-{j}", "page_view", t))
            t += rng.randint(1, SESSION_GAP_MS)
        t += SESSION_GAP_MS + rng.randint(1, 3 * ref.DAY)
    expected_sessions = len(ref.sessions([x["ts"] for x in recs]))
    expected_days = len({x["ts"] // ref.DAY for x in recs})
    assert expected_sessions == 1000 and expected_days > MAX_DAYS
    state = apply_in_batches(recs, [recs[i : i + batch_size] for i in range(0, len(recs), batch_size)])
    act = state["all"]
    assert len(act["sessions"]) <= MAX_SESSIONS and len(act["days"]) <= MAX_DAYS
    assert len(act["sessions"]) + act["sessions_dropped"] == 1000
    assert len(act["days"]) + act["days_dropped"] == expected_days
    assert act["sessions"] == ref.sessions([x["ts"] for x in recs])[-len(act["sessions"]) :]
    summary = render_profile(state)["summary"]
    assert (summary["sessions"], summary["active_days"], summary["events"]) == (1000, expected_days, len(recs))


def test_600_distinct_days_in_order(ref):
    rng = random.Random(600)
    recs = [ref.record(f"d{d}", "page_view", ref.T0 + d * ref.DAY + rng.randint(0, ref.DAY // 2)) for d in range(600)]
    expected_days = len({x["ts"] // ref.DAY for x in recs})
    state = apply_in_batches(recs, [recs[i : i + 37] for i in range(0, 600, 37)])
    assert len(state["all"]["days"]) <= MAX_DAYS and len(state["channels"]["web"]["days"]) <= MAX_DAYS
    assert render_profile(state)["summary"]["active_days"] == expected_days
    assert render_profile(state)["channels"]["web"]["active_days"] == expected_days
    assert state["all"]["days"][-1] == max(x["ts"] for x in recs) // ref.DAY


def test_dedup_window_keeps_the_last_ids(ref):
    recs = [ref.record(f"e{i}", "page_view", ref.T0 + i) for i in range(500)]
    state = apply_in_batches(recs, [recs[i : i + 64] for i in range(0, 500, 64)])
    assert state["seen"] == [f"e{i}" for i in range(500 - DEFAULT_DEDUP_WINDOW, 500)]
    one_batch = apply_events(None, "c-1", recs).state
    assert len(one_batch["seen"]) == DEFAULT_DEDUP_WINDOW
    replay = apply_events(state, "c-1", recs[-DEFAULT_DEDUP_WINDOW:])
    assert replay.applied == 0 and replay.state == state


def test_recent_orders_are_the_latest_and_bounded(ref):
    rng = random.Random(8)
    recs = [
        ref.record(f"o{i}", "purchase", ref.T0 + i * 1000, order_id=f"ord-{i:03d}", revenue=float(i)) for i in range(60)
    ]
    rng.shuffle(recs)
    state = apply_events(None, "c-1", recs).state
    assert len(state["all"]["recent_orders"]) == MAX_RECENT_ORDERS
    view = render_profile(state)["summary"]["recent_orders"]
    assert [o["order_id"] for o in view] == [f"ord-{i:03d}" for i in range(59, 59 - MAX_RECENT_ORDERS, -1)]
    assert state["all"]["orders"] == 60


def test_channels_are_bounded_and_overflow_to_other(ref):
    recs = [ref.record(f"e{i}", "page_view", ref.T0 + i * 1000, channel=f"shop-{i:02d}") for i in range(50)]
    state = apply_events(None, "c-1", recs).state
    assert len(state["channels"]) <= MAX_CHANNELS + 1
    assert OTHER_CHANNEL in state["channels"]
    assert sum(b["events"] for b in state["channels"].values()) == state["all"]["events"] == 50


def test_identifier_lists_stay_bounded(ref):
    recs = [
        ref.record(f"e{i}", "page_view", ref.T0 + i, anonymous_id=f"anon-{i}", email_hash=f"{i:032x}")
        for i in range(500)
    ]
    half = apply_events(None, "c-1", recs[:250]).state["identifiers"]
    full = apply_events(None, "c-1", recs).state["identifiers"]
    for name in ("anonymous_ids", "email_hashes"):
        assert 0 < len(full[name]) == len(half[name]) < 250
        # Sorted and capped: the smallest values are kept, whatever the arrival order.
        values = sorted(r["anonymous_id"] if name == "anonymous_ids" else r["email_hash"] for r in recs)
        assert full[name] == values[: len(full[name])]


def test_state_size_stops_growing(ref):
    """A long in-order history of mixed events: the serialised state saturates."""
    rng = random.Random(9)
    recs = []
    for i in range(4000):
        ts = ref.T0 + i * (ref.DAY // 4) + rng.randint(0, 1000)
        kind = rng.random()
        if kind < 0.2:
            recs.append(
                ref.record(
                    f"e{i}",
                    "purchase",
                    ts,
                    revenue=round(rng.uniform(1, 99), 2),
                    category=f"cat-{rng.randint(0, 199)}",
                    order_id=f"o{i}",
                )
            )
        elif kind < 0.4:
            recs.append(
                ref.record(
                    f"e{i}",
                    "search",
                    ts,
                    search_query=f"q {rng.randint(0, 999)}",
                    utm_campaign=f"c{rng.randint(0, 99)}",
                )
            )
        else:
            recs.append(
                ref.record(
                    f"e{i}",
                    "product_view",
                    ts,
                    category=f"cat-{rng.randint(0, 199)}",
                    referrer=f"https://r{rng.randint(0, 99)}.example/",
                )
            )
    state, sizes = None, {}
    for start in range(0, 4000, 200):
        state = apply_events(state, "c-1", recs[start : start + 200]).state
        sizes[start + 200] = len(orjson.dumps(state))
    assert sizes[4000] <= sizes[2000] * 1.1, sizes
    assert render_profile(state)["summary"]["events"] == 4000
    assert render_profile(state)["summary"]["orders"] == sum(1 for r in recs if r["type"] == "purchase")


# --- values the state must survive ---------------------------------------------------------------------------------


@pytest.mark.parametrize("revenue", [1e18, 1.7e308])
def test_an_accepted_event_keeps_the_state_serialisable(revenue, limits, ref):
    event = {
        "event_id": "big",
        "type": "purchase",
        "ts": ref.T0,
        "customer_id": "c-1",
        "channel": "web",
        "properties": {"revenue": revenue},
    }
    decoded = decode_message("clickstream", json.dumps(event).encode(), limits, ref.HASH_KEY)
    if decoded.rejections:  # refusing an absurd revenue is fine, with a reason naming it
        assert decoded.rejections[0].reason.startswith("properties.revenue")
        return
    state = apply_events(None, "c-1", decoded.records).state
    orjson.dumps(state)
    nxt = apply_events(state, "c-1", [ref.record("next", "page_view", ref.T0 + 1)])
    assert nxt.state["version"] == 2

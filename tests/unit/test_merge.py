"""Stitching two profiles: merging the folds of two halves of a history gives the fold of the
whole (and the recount of it), for the profile and for the journey with its global counters."""

from __future__ import annotations

import random
import pytest

from models.identity import Overlay, erase, link, new_graph, store_changes, store_graph
from models.journeys import merge_journey, record_journey
from models.profile import apply_events, merge_states
from tests.unit.test_journeys import HALFLIFE, WINDOW, journey_events, oracle, sum_deltas

ORDER_DEPENDENT = ("seen", "last_event_id", "version", "merged_from", "customer_id")


def without(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ORDER_DEPENDENT}


def halves(records: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
    a, b = [], []
    for r in records:
        (a if rng.random() < 0.5 else b).append(r)
    return a, b


@pytest.mark.parametrize("seed", range(8))
def test_merging_two_halves_equals_the_fold_of_the_whole(seed, ref):
    records = ref.random_records(seed, anonymous_ids=("anon-1", "anon-2"))
    a, b = halves(records, random.Random(seed))
    whole = apply_events(None, "c-1", records).state
    left = apply_events(None, "c-1", a).state
    right = apply_events(None, "anon:anon-2", b).state
    merged = merge_states(left, right)
    assert without(merged) == without(whole)
    # and against a plain recount of the whole history
    revenue = sum(round(r["properties"]["revenue"] * 100) for r in records if "revenue" in r["properties"])
    behaviour = [r for r in records if r["source"] != "identify"]
    assert merged["events"] == len(records)
    assert merged["all"]["events"] == len(behaviour)
    assert merged["all"]["revenue_cents"] == revenue
    assert merged["all"]["first_ts"] == min(r["ts"] for r in behaviour)
    assert merged["all"]["last_ts"] == max(r["ts"] for r in behaviour)
    assert merged["customer_id"] == "c-1"
    assert merged["merged_from"] == ["anon:anon-2"]
    assert merged["version"] == max(left["version"], right["version"]) + 1
    assert set(merged["seen"]) == {r["event_id"] for r in records}


def test_merge_does_not_touch_its_inputs(ref):
    records = ref.random_records(3)
    left = apply_events(None, "c-1", records[:50]).state
    right = apply_events(None, "anon:x", records[50:]).state
    before = (repr(left), repr(right))
    merge_states(left, right)
    assert (repr(left), repr(right)) == before


def test_traits_keep_the_newest_by_event_time_across_the_merge(ref):
    old = ref.record("i1", "identify", 1_000, source="identify", traits={"region": "north", "age": 30})
    new = ref.record("i2", "identify", 2_000, source="identify", traits={"region": "south"})
    for first, second in ((old, new), (new, old)):
        merged = merge_states(apply_events(None, "c-1", [first]).state, apply_events(None, "anon:x", [second]).state)
        assert merged["traits"] == {"region": "south", "age": 30}


@pytest.mark.parametrize("customer", range(10))
def test_journey_counters_after_a_merge_equal_one_customer_who_made_every_touch(customer):
    events = journey_events(customer, seed=4)
    _, hops, converted, credit, _ = oracle(events)
    a, b = halves(events, random.Random(customer))
    left, right = {"journey": None}, {"journey": None}
    deltas = [record_journey(left, a, WINDOW, HALFLIFE), record_journey(right, b, WINDOW, HALFLIFE)]
    whole = {"journey": None}
    record_journey(whole, events, WINDOW, HALFLIFE)
    withdrawn, added = merge_journey(left, right["journey"], WINDOW, HALFLIFE)
    assert all(h.sign == -1 for h in withdrawn.hops)
    got_hops, got_converted, got_credit, _ = sum_deltas([*deltas, withdrawn, added])
    assert got_hops == hops
    assert got_converted == +converted
    for key in set(credit) | set(got_credit):
        assert got_credit[key] == pytest.approx(credit[key], abs=2e-3), key
    assert left["journey"]["touches"] == whole["journey"]["touches"]
    assert left["journey"]["hops"] == dict(hops)


def test_merging_an_empty_journey_changes_nothing():
    state = {"journey": None}
    record_journey(state, journey_events(1, seed=1), WINDOW, HALFLIFE)
    before = repr(state)
    withdrawn, added = merge_journey(state, None, WINDOW, HALFLIFE)
    assert not withdrawn.changed and not added.changed and repr(state) == before


# --- the graph over a key-value store --------------------------------------------------------------


def test_the_store_graph_writes_only_what_changed_and_agrees_with_the_plain_graph():
    rng = random.Random(5)
    store: dict = {}
    plain = new_graph()
    for ts in range(300):
        ids = [f"anon:a{rng.randrange(60)}" for _ in range(rng.choice([1, 1, 2]))]
        if rng.random() < 0.2:
            ids.append(f"cid:c{rng.randrange(10)}")
        graph, id_view, group_view = store_graph(store.get)
        expected = link(plain, ids, ts)
        got = link(graph, ids, ts)
        assert (got.canonical, got.merges, got.conflicts) == (expected.canonical, expected.merges, expected.conflicts)
        for key, value in store_changes(id_view, group_view).items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
    assert {k[2:]: v for k, v in store.items() if k.startswith("i|")} == plain["ids"]
    assert {k[2:]: v for k, v in store.items() if k.startswith("g|")} == plain["groups"]
    # a known customer's event writes nothing
    graph, id_view, group_view = store_graph(store.get)
    known = next(i for i in plain["ids"])
    link(graph, [known], 999)
    assert {k: v for k, v in store_changes(id_view, group_view).items() if not k.startswith("g|")} == {}


def apply(store: dict, changes: dict) -> None:
    for key, value in changes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


@pytest.mark.parametrize("torn", ["group record lost", "member left out"])
def test_a_graph_torn_by_a_crash_between_its_writes_heals_on_the_next_event(torn):
    store: dict = {}
    graph, ids, groups = store_graph(store.get)
    link(graph, ["cid:x", "anon:a", "device:d"], 1)
    apply(store, store_changes(ids, groups))
    # The crash: the identifier writes reached the changelog, the group write did not (or an older
    # group record without one of the members survived).
    if torn == "group record lost":
        del store["g|x"]
    else:
        store["g|x"] = dict(store["g|x"], members=["cid:x"])
    for names in (["cid:x"], ["anon:a"], ["device:d", "anon:a"]):
        graph, ids, groups = store_graph(store.get)
        result = link(graph, names, 2)
        apply(store, store_changes(ids, groups))
        assert result.canonical == "x" and not result.merges and not result.conflicts
    # healed: every identifier points at the group, and the group lists each of them once
    assert {k: v for k, v in store.items() if k.startswith("i|")} == {
        "i|cid:x": "x", "i|anon:a": "x", "i|device:d": "x"}
    assert sorted(store["g|x"]["members"]) == ["anon:a", "cid:x", "device:d"]
    assert store["g|x"]["customer_id"] == "x"


def test_erasing_a_group_removes_every_identifier():
    graph = new_graph()
    link(graph, ["anon:a1"], 1)
    link(graph, ["anon:a1", "device:d1"], 2)
    link(graph, ["cid:c-1", "anon:a1", "email:h"], 3)
    canonical, members = erase(graph, "email:h")
    assert canonical == "c-1"
    assert members == ["anon:a1", "cid:c-1", "device:d1", "email:h"]
    assert graph == {"ids": {}, "groups": {}}
    assert erase(graph, "anon:zz") == (None, ["anon:zz"])


def test_overlay_reports_deletes_and_ignores_rewrites_of_the_same_value():
    store = {"a": {"x": 1}, "b": 2}
    view = Overlay(store.get)
    view["b"] = 2
    del view["a"]
    view["c"] = 3
    assert view.changes() == {"a": None, "c": 3}
    assert store == {"a": {"x": 1}, "b": 2}

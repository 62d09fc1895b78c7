"""The profile side of a merge: held events, hand-over, absorb, chained merges, giving up.

Expected results are recounted from the events in the test (distinct event ids, their
revenue), not taken from the code under test."""

from __future__ import annotations

import random

import pytest

from models.profile import MAX_MERGED_FROM, apply_events
from models.stitching import absorb, expect, handover, is_stub, receive, stub
from tests.unit.test_merge import without

WAIT = 30_000


def fold(received_state, records):
    return apply_events(received_state, "c-1", records).state if records else received_state


def recount(*batches):
    distinct = {r["event_id"]: r for batch in batches for r in batch}
    revenue = sum(round(r["properties"].get("revenue", 0) * 100) for r in distinct.values())
    return len(distinct), revenue


def test_an_event_seen_under_both_ids_counts_once(ref):
    anon = [ref.record(f"a{i}", "page_view", 1_000 + i, customer_id=None, anonymous_id="x") for i in range(5)]
    anon.append(ref.record("buy", "purchase", 2_000, customer_id=None, anonymous_id="x", revenue=30.0))
    absorbed = apply_events(None, "anon:x", anon).state
    # the survivor expects the merge, then receives the redelivered events and a new one
    survivor = expect(None, "c-1", "anon:x", now_ms=0)
    again = [*anon[:3], anon[-1], ref.record("new", "page_view", 3_000)]
    r = receive(survivor, again, now_ms=10, wait_ms=WAIT)
    assert r.waiting and r.records == []
    a = absorb(r.state, handover("anon:x", absorbed, cause="login"), now_ms=20)
    assert not a.waiting and a.merged and "pending" not in a.state
    state = fold(a.state, a.records)
    events, revenue = recount(anon, again)
    assert state["events"] == events == 7
    assert state["all"]["revenue_cents"] == revenue == 3000
    assert state["merged_from"] == ["anon:x"]


def test_without_a_pending_merge_events_are_folded_at_once(ref):
    held = apply_events(None, "c-1", [ref.record("e1", "page_view", 1)]).state
    r = receive(held, [ref.record("e2", "page_view", 2)], now_ms=0, wait_ms=WAIT)
    assert not r.waiting and [x["event_id"] for x in r.records] == ["e2"] and r.state is held


def test_a_merge_that_never_arrives_is_given_up_and_the_held_events_applied(ref):
    survivor = expect(None, "c-1", "anon:x", now_ms=0)
    first = receive(survivor, [ref.record("e1", "page_view", 1)], now_ms=10, wait_ms=WAIT)
    late = receive(first.state, [ref.record("e2", "page_view", 2)], now_ms=WAIT + 1, wait_ms=WAIT)
    assert not late.waiting and late.gave_up == ["anon:x"]
    assert [x["event_id"] for x in late.records] == ["e1", "e2"] and "pending" not in late.state


def test_chained_merges_wait_for_every_history(ref):
    """y is merged into x while x is being merged into c-1: c-1 waits for both histories."""
    y_events = [ref.record(f"y{i}", "page_view", 10 + i, customer_id=None, anonymous_id="y") for i in range(3)]
    x_events = [ref.record(f"x{i}", "page_view", 20 + i, customer_id=None, anonymous_id="x") for i in range(2)]
    y = apply_events(None, "anon:y", y_events).state
    x = expect(apply_events(None, "anon:x", x_events).state, "anon:x", "anon:y", now_ms=0)
    x = receive(x, [ref.record("x-held", "page_view", 30, customer_id=None, anonymous_id="x")], 1, WAIT).state
    survivor = expect(None, "c-1", "anon:x", now_ms=2)
    # x is merged away first, still waiting for y: its hand-over carries that wait and its held event
    step = absorb(survivor, handover("anon:x", x, cause="login"), now_ms=3)
    assert step.waiting and step.records == [] and step.state["pending"]["from"] == ["anon:y"]
    # y's hand-over reaches c-1 through x's stub
    assert is_stub(stub("c-1", 4))
    done = absorb(step.state, handover("anon:y", y, cause="link"), now_ms=5)
    assert not done.waiting
    state = fold(done.state, done.records)
    events, _ = recount(y_events, x_events, [{"event_id": "x-held", "properties": {}}])
    assert state["events"] == events == 6
    assert sorted(state["merged_from"]) == ["anon:x", "anon:y"]


def test_a_profile_without_events_hands_over_nothing_but_its_wait():
    x = expect(None, "anon:x", "anon:y", now_ms=0)
    message = handover("anon:x", x, cause="e")
    assert message["state"] is None and message["pending"] == ["anon:y"]
    assert handover("anon:z", None, cause="e")["state"] is None


def test_a_replayed_expect_and_handover_count_the_absorbed_history_once(ref):
    """A worker killed between sending the handover and storing its stub sends the same
    handover again on restart, and a restarted identity stage repeats ``expect``."""
    anon = [ref.record(f"a{i}", "page_view", 1_000 + i, customer_id=None, anonymous_id="x") for i in range(3)]
    absorbed = apply_events(None, "anon:x", anon).state
    own = [ref.record("c0", "purchase", 500, revenue=12.5)]
    survivor = expect(apply_events(None, "c-1", own).state, "c-1", "anon:x", now_ms=0)
    message = handover("anon:x", absorbed, cause="login")
    once = absorb(survivor, message, now_ms=10)
    state = fold(once.state, once.records)

    again = expect(state, "c-1", "anon:x", now_ms=20)
    assert "pending" not in again, "the survivor would hold its new events for a merge it has done"
    later = [ref.record("new", "page_view", 3_000)]
    r = receive(again, later, now_ms=21, wait_ms=WAIT)
    assert not r.waiting
    twice = absorb(fold(r.state, r.records), message, now_ms=30)
    assert not twice.merged
    final = fold(twice.state, twice.records)
    events, revenue = recount(anon, own, later)
    assert final["events"] == events == 5
    assert final["all"]["revenue_cents"] == revenue == 1250
    assert final["merged_from"] == ["anon:x"]


def test_a_replayed_expect_of_a_profile_that_had_no_events_opens_no_hold(ref):
    """An absorbed id without events hands over no history; its ``expect`` read again (a restarted
    identity stage) must still be recognised, or the survivor holds every new event for a
    handover that never comes (the absorbed key is a stub that ignores a second merge)."""
    own = [ref.record("c0", "page_view", 500)]
    survivor = expect(apply_events(None, "c-1", own).state, "c-1", "anon:x", now_ms=0)
    done = absorb(survivor, handover("anon:x", None, cause="login"), now_ms=10)
    assert not done.waiting and not done.merged and "pending" not in done.state
    again = expect(done.state, "c-1", "anon:x", now_ms=20)
    assert "pending" not in again
    r = receive(again, [ref.record("new", "page_view", 3_000)], now_ms=21, wait_ms=WAIT)
    assert not r.waiting and [x["event_id"] for x in r.records] == ["new"]


def test_a_replay_is_recognised_past_the_cap_on_merged_from(ref):
    """merged_from keeps the first MAX_MERGED_FROM ids; later ones are recognised by their mark."""
    state = apply_events(None, "c-1", [ref.record("c0", "page_view", 1)]).state
    sent = 0
    for i in range(MAX_MERGED_FROM + 3):
        other = apply_events(None, f"anon:{i}", [ref.record(f"x{i}", "page_view", 10 + i, customer_id=None,
                                                            anonymous_id=str(i))]).state
        message = handover(f"anon:{i}", other, cause=f"e{i}")
        for _ in range(2):  # each handover delivered twice
            state = fold(*(lambda a: (a.state, a.records))(absorb(state, message, now_ms=i)))
        sent += 1
    assert f"anon:{MAX_MERGED_FROM + 2}" not in state["merged_from"]
    assert state["events"] == 1 + sent


def test_a_hold_is_kept_while_the_stream_is_behind_and_given_up_once_caught_up(ref):
    # A backlog delays the absorbed profile's handover as much as the survivor's own messages:
    # a hold older than the wait is kept while the message that carries new events is older still.
    survivor = expect(None, "c-1", "anon:x", now_ms=0)
    behind = receive(survivor, [ref.record("e1", "page_view", 1)], now_ms=WAIT * 3, wait_ms=WAIT, behind_ms=WAIT * 2)
    assert behind.waiting and behind.records == [] and not behind.gave_up
    assert [x["event_id"] for x in behind.state["pending"]["held"]] == ["e1"]
    caught_up = receive(behind.state, [ref.record("e2", "page_view", 2)], now_ms=WAIT * 3 + 5, wait_ms=WAIT,
                        behind_ms=WAIT - 1)
    assert not caught_up.waiting and caught_up.gave_up == ["anon:x"]
    assert [x["event_id"] for x in caught_up.records] == ["e1", "e2"]


def test_a_late_handover_after_giving_up_is_recounted_from_the_rewind(ref):
    """An event redelivered to the survivor after it reached the absorbed profile, held, then
    folded when the survivor gave up waiting: the late handover rewinds and counts it once."""
    anon = [ref.record(f"a{i}", "page_view", 1_000 + i, customer_id=None, anonymous_id="x") for i in range(4)]
    anon.append(ref.record("a-buy", "purchase", 1_500, customer_id=None, anonymous_id="x", revenue=20.0))
    absorbed = apply_events(None, "anon:x", anon).state
    own = [ref.record("c0", "purchase", 500, revenue=12.5)]
    survivor = expect(apply_events(None, "c-1", own).state, "c-1", "anon:x", now_ms=0)
    again = [anon[1], anon[-1], ref.record("new", "page_view", 3_000)]
    held = receive(survivor, again, now_ms=10, wait_ms=WAIT)
    late = receive(held.state, [], now_ms=WAIT + 11, wait_ms=WAIT)  # caught up, the wait is over
    assert late.gave_up == ["anon:x"] and late.state["rewind"]["from"] == ["anon:x"]
    folded = fold(late.state, late.records)
    after = [anon[3], ref.record("later", "add_to_cart", 4_000)]  # folded after giving up, one shared
    r = receive(folded, after, now_ms=WAIT + 12, wait_ms=WAIT)
    assert not r.waiting and [x["event_id"] for x in r.state["rewind"]["records"]] == ["a1", "a-buy", "new", "a3", "later"]
    folded = fold(r.state, r.records)
    events_before, revenue_before = recount(own, again, after)
    assert folded["events"] == events_before and folded["all"]["revenue_cents"] == revenue_before
    folded["segments"], folded["segment_history"] = {"all": 2}, [[3_000, "all", None, 2]]  # scored since

    a = absorb(folded, handover("anon:x", absorbed, cause="login"), now_ms=WAIT + 20)
    shared = {x["event_id"] for x in anon} & {x["event_id"] for x in again + after}
    assert a.recounted == len(shared) == 3 and a.double_counted == 0
    assert not a.waiting and a.merged and a.records == [] and "rewind" not in a.state
    events, revenue = recount(anon, own, again, after)
    assert a.state["events"] == events == 8
    assert a.state["all"]["revenue_cents"] == revenue == 3250
    assert a.state["all"]["types"] == {"page_view": 5, "purchase": 2, "add_to_cart": 1}
    assert a.state["merged_from"] == ["anon:x"] and a.state["version"] > folded["version"]
    assert a.state["segments"] == {"all": 2} and a.state["segment_history"] == [[3_000, "all", None, 2]]
    # a replayed handover (a restart before the stub was stored) recounts nothing again
    replay = absorb(a.state, handover("anon:x", absorbed, cause="login"), now_ms=WAIT + 30)
    assert not replay.merged and replay.state["events"] == events


@pytest.mark.parametrize("seed", range(6))
def test_giving_up_and_rewinding_equals_one_customer_who_made_every_event(seed, ref):
    """Random histories: some of the absorbed profile's events are redelivered to the survivor
    during the hold and after it was given up; two merges given up, their handovers late, in either
    order. The result is the fold of the distinct events (test_merge: merging equals folding)."""
    rng = random.Random(seed)
    records = ref.random_records(seed, n=120, anonymous_ids=("x", "y"))
    x_part, y_part, own, later = [], [], [], []
    for r in records:
        [x_part, y_part, own, later][rng.randrange(4)].append(r)
    redelivered = rng.sample(x_part, len(x_part) // 3) + rng.sample(y_part, len(y_part) // 3)
    during = own + redelivered[: len(redelivered) // 2]
    since = later + redelivered[len(redelivered) // 2:]
    rng.shuffle(during)
    rng.shuffle(since)
    x = apply_events(None, "anon:x", x_part).state
    y = apply_events(None, "anon:y", y_part).state

    state = expect(expect(None, "c-1", "anon:x", now_ms=0), "c-1", "anon:y", now_ms=0)
    state = receive(state, during, now_ms=1, wait_ms=WAIT).state
    given_up = receive(state, since[:5], now_ms=WAIT + 1, wait_ms=WAIT)
    assert sorted(given_up.gave_up) == ["anon:x", "anon:y"] and not given_up.unrewound
    state = fold(given_up.state, given_up.records)
    for i in range(5, len(since), 7):
        r = receive(state, since[i:i + 7], now_ms=WAIT + 2 + i, wait_ms=WAIT)
        state = fold(r.state, r.records)
    for name, history in rng.sample([("anon:x", x), ("anon:y", y)], 2):
        a = absorb(state, handover(name, history, cause="login"), now_ms=2 * WAIT)
        assert a.double_counted == 0
        state = fold(a.state, a.records)
    assert "rewind" not in state
    whole = apply_events(None, "c-1", records).state
    state.pop("journey")  # an empty timeline here: the worker records touches outside apply_events
    assert without(state) == without(whole)
    revenue = sum(round(r["properties"]["revenue"] * 100) for r in records if "revenue" in r["properties"])
    assert state["events"] == len(records) and state["all"]["revenue_cents"] == revenue
    assert sorted(state["merged_from"]) == ["anon:x", "anon:y"]


def test_a_merge_done_while_rewinding_joins_the_rewind(ref):
    """z's handover comes in time (a plain merge) while the survivor keeps a rewind for x: the
    late x then rewinds over a base that has z's history too, and loses none of it."""
    x_events = [ref.record(f"x{i}", "page_view", 100 + i, customer_id=None, anonymous_id="x") for i in range(3)]
    z_events = [ref.record(f"z{i}", "page_view", 200 + i, customer_id=None, anonymous_id="z") for i in range(4)]
    x = apply_events(None, "anon:x", x_events).state
    z = apply_events(None, "anon:z", z_events).state
    state = receive(expect(None, "c-1", "anon:x", now_ms=0), [x_events[0]], now_ms=1, wait_ms=WAIT).state
    r = receive(state, [ref.record("own", "page_view", 300)], now_ms=WAIT + 1, wait_ms=WAIT)
    state = fold(r.state, r.records)
    state = expect(state, "c-1", "anon:z", now_ms=WAIT + 2)
    state = receive(state, [z_events[2], ref.record("held", "page_view", 400)], WAIT + 3, WAIT).state
    a = absorb(state, handover("anon:z", z, cause="link"), now_ms=WAIT + 4)
    assert a.state["rewind"]["from"] == ["anon:x"] and a.double_counted == 0
    # z2, held, came with z's history: it is not folded again (nor kept for the recount)
    assert [e["event_id"] for e in a.state["rewind"]["records"]] == ["x0", "own", "held"]
    state = fold(a.state, a.records)
    a = absorb(state, handover("anon:x", x, cause="login"), now_ms=WAIT + 5)
    assert a.recounted == 1 and "rewind" not in a.state
    state = fold(a.state, a.records)
    events, _ = recount(x_events, z_events, [{"event_id": "own", "properties": {}}, {"event_id": "held", "properties": {}}])
    assert state["events"] == events == 9
    assert sorted(state["merged_from"]) == ["anon:x", "anon:z"]


def test_a_rewind_past_its_limit_is_dropped_and_the_late_merge_says_what_it_counts_twice(ref):
    """The rewind keeps at most ``keep`` events; past that a late handover counts the shared
    events twice, and absorb says how many (omniprofile_merge_double_counted_total)."""
    anon = [ref.record(f"a{i}", "page_view", 1_000 + i, customer_id=None, anonymous_id="x") for i in range(4)]
    absorbed = apply_events(None, "anon:x", anon).state
    held = receive(expect(None, "c-1", "anon:x", now_ms=0), [anon[1], anon[3]], now_ms=10, wait_ms=WAIT)
    late = receive(held.state, [ref.record("new", "page_view", 3_000)], now_ms=WAIT + 11, wait_ms=WAIT, keep=3)
    assert late.gave_up == ["anon:x"] and not late.unrewound and len(late.state["rewind"]["records"]) == 3
    folded = fold(late.state, late.records)
    more = receive(folded, [ref.record("more", "page_view", 3_001)], now_ms=WAIT + 12, wait_ms=WAIT, keep=3)
    assert more.unrewound == ["anon:x"] and "rewind" not in more.state
    folded = fold(more.state, more.records)
    a = absorb(folded, handover("anon:x", absorbed, cause="login"), now_ms=WAIT + 20)
    assert a.double_counted == 2 and a.recounted == 0
    events, _ = recount(anon, [{"event_id": "new", "properties": {}}, {"event_id": "more", "properties": {}}])
    assert a.state["events"] == events + 2  # what the metric reports: counted twice


def test_a_profile_merged_away_while_rewinding_hands_its_rewind_over(ref):
    held = receive(expect(None, "anon:s", "anon:x", now_ms=0), [ref.record("e1", "page_view", 1)], 1, WAIT)
    late = receive(held.state, [], now_ms=WAIT + 2, wait_ms=WAIT)
    state = fold(late.state, late.records)
    assert "rewind" in state
    message = handover("anon:s", state, cause="login")
    assert "rewind" not in message["state"] and message["state"]["events"] == 1
    assert message["rewind"]["from"] == ["anon:x"]
    assert [r["event_id"] for r in message["rewind"]["records"]] == ["e1"]


@pytest.mark.parametrize("seed", range(6))
def test_a_rewind_handed_over_is_recounted_where_the_late_merge_arrives(seed, ref):
    """anon:s gave up waiting for anon:x and folded x's redelivered events; then anon:s itself is
    merged into c-1, and x's handover arrives late, forwarded to c-1. c-1 must end as one customer
    who made every event once: the rewind went with the handover. Some of c-1's own events were
    also redelivered to anon:s after its hold (in both, and among the rewind's events)."""
    rng = random.Random(seed)
    records = ref.random_records(seed, n=120, anonymous_ids=("s", "x"))
    x_part, s_part, c_part, since = [], [], [], []
    for r in records:
        [x_part, s_part, c_part, since][rng.randrange(4)].append(r)
    during = rng.sample(x_part, len(x_part) // 3)  # redelivered to anon:s during its hold
    after = since + rng.sample(x_part, len(x_part) // 4) + rng.sample(c_part, len(c_part) // 4)
    rng.shuffle(after)
    x = apply_events(None, "anon:x", x_part).state
    c = apply_events(None, "c-1", c_part).state

    s = expect(apply_events(None, "anon:s", s_part).state, "anon:s", "anon:x", now_ms=0)
    s = receive(s, during, now_ms=1, wait_ms=WAIT).state
    for i in range(0, len(after), 9):  # the hold given up; each later message joins the rewind
        r = receive(s, after[i:i + 9], now_ms=WAIT + 2 + i, wait_ms=WAIT)
        assert not r.unrewound
        s = fold(r.state, r.records)
    assert s["rewind"]["from"] == ["anon:x"]

    c = expect(c, "c-1", "anon:s", now_ms=2 * WAIT)
    a = absorb(c, handover("anon:s", s, cause="login"), now_ms=2 * WAIT + 1)
    assert a.double_counted == 0 and a.state["rewind"]["from"] == ["anon:x"]
    c = fold(a.state, a.records)
    a = absorb(c, handover("anon:x", x, cause="login"), now_ms=2 * WAIT + 2)
    assert a.double_counted == 0 and "rewind" not in a.state
    c = fold(a.state, a.records)

    whole = apply_events(None, "c-1", records).state
    c.pop("journey")
    assert without(c) == without(whole)
    revenue = sum(round(r["properties"]["revenue"] * 100) for r in records if "revenue" in r["properties"])
    assert c["events"] == len(records) and c["all"]["revenue_cents"] == revenue
    assert sorted(c["merged_from"]) == ["anon:s", "anon:x"]


def test_a_plain_merge_while_rewinding_reports_only_what_no_recount_undoes(ref):
    """c-1 keeps a rewind for anon:x when anon:z merges in plainly. z holds one event c-1 had
    before it gave up (in the rewind's base: counted twice for good) and one it folded after
    (among the rewind's events: the recount counts it once). Only the first is reported; the
    second only if the rewind is dropped before x comes."""
    before = ref.record("b", "page_view", 10)
    folded_after = ref.record("f", "page_view", 20)
    z_events = [before, folded_after, ref.record("z", "page_view", 30, customer_id=None, anonymous_id="z")]
    x_events = [ref.record("x", "page_view", 40, customer_id=None, anonymous_id="x")]
    z = apply_events(None, "anon:z", z_events).state
    x = apply_events(None, "anon:x", x_events).state

    def rewinding(keep: int):
        state = expect(apply_events(None, "c-1", [before]).state, "c-1", "anon:x", now_ms=0)
        r = receive(state, [folded_after], now_ms=WAIT + 1, wait_ms=WAIT, keep=keep)
        return fold(r.state, r.records)

    a = absorb(rewinding(5), handover("anon:z", z, cause="link"), now_ms=WAIT + 2, dedup_window=5)
    assert a.double_counted == 1 and a.state["rewind"]["doubled"] == 1
    state = fold(a.state, a.records)
    a = absorb(state, handover("anon:x", x, cause="login"), now_ms=WAIT + 3, dedup_window=5)
    assert a.recounted == 1 and a.double_counted == 0 and "rewind" not in a.state
    distinct, _ = recount(z_events, x_events)
    assert a.state["events"] == distinct + 1  # "b" twice, as reported

    a = absorb(rewinding(1), handover("anon:z", z, cause="link"), now_ms=WAIT + 2, dedup_window=5)
    assert a.double_counted == 1
    state = fold(a.state, a.records)
    assert a.state["rewind"]["records"] == []  # "f" is in the base now, with z's history
    later = [ref.record("m", "page_view", 50), ref.record("n", "page_view", 51)]
    more = receive(state, later, now_ms=WAIT + 3, wait_ms=WAIT, keep=1)
    assert more.unrewound == ["anon:x"] and more.double_counted == 1  # "f" now stays counted twice
    state = fold(more.state, more.records)
    distinct, _ = recount(z_events, later)
    assert state["events"] == distinct + a.double_counted + more.double_counted == distinct + 2


def test_a_recount_reports_what_the_late_history_shares_with_the_rewinds_base(ref):
    """An event counted before the hold and also by the late profile is in the rewind's base and in
    the late history: the recount cannot undo that one, so it is reported."""
    shared = ref.record("b", "page_view", 10)
    x_events = [shared, ref.record("x", "page_view", 40, customer_id=None, anonymous_id="x")]
    x = apply_events(None, "anon:x", x_events).state
    state = expect(apply_events(None, "c-1", [shared]).state, "c-1", "anon:x", now_ms=0)
    r = receive(state, [ref.record("f", "page_view", 20)], now_ms=WAIT + 1, wait_ms=WAIT)
    a = absorb(fold(r.state, r.records), handover("anon:x", x, cause="login"), now_ms=WAIT + 2)
    assert a.double_counted == 1 and "rewind" not in a.state
    distinct, _ = recount(x_events, [{"event_id": "f", "properties": {}}])
    assert a.state["events"] == distinct + a.double_counted


def test_a_rewind_ended_by_a_late_profile_without_events_reports_what_it_deferred(ref):
    """A plain merge while rewinding deferred one double count to the recount; the late profile
    then hands over no history (it had no events), so there is no recount and the count stands."""
    folded_after = ref.record("f", "page_view", 20)
    z_events = [folded_after, ref.record("z", "page_view", 30, customer_id=None, anonymous_id="z")]
    state = expect(apply_events(None, "c-1", [ref.record("b", "page_view", 10)]).state, "c-1", "anon:x", now_ms=0)
    r = receive(state, [folded_after], now_ms=WAIT + 1, wait_ms=WAIT)
    a = absorb(fold(r.state, r.records), handover("anon:z", apply_events(None, "anon:z", z_events).state, "link"),
               now_ms=WAIT + 2)
    assert a.double_counted == 0 and a.state["rewind"]["doubled"] == 1
    a = absorb(fold(a.state, a.records), handover("anon:x", None, cause="login"), now_ms=WAIT + 3)
    assert a.double_counted == 1 and "rewind" not in a.state
    assert a.state["events"] == len({"b", "f", "z"}) + 1


def test_a_rewind_handed_to_a_profile_that_keeps_none_is_reported_lost(ref):
    held = receive(expect(None, "anon:s", "anon:x", now_ms=0), [ref.record("e1", "page_view", 1)], 1, WAIT)
    late = receive(held.state, [], now_ms=WAIT + 2, wait_ms=WAIT)
    s = fold(late.state, late.records)
    a = absorb(apply_events(None, "c-1", [ref.record("c", "page_view", 2)]).state,
               handover("anon:s", s, cause="login"), now_ms=WAIT + 3, dedup_window=0)
    assert a.unrewound == ["anon:x"] and "rewind" not in a.state


@pytest.mark.parametrize("gave_up", [False, True])
def test_events_the_late_profile_counted_count_once_past_a_full_window(gave_up, ref):
    """The survivor's window (5 ids here) is full, so the joined window keeps only its own newest
    ids: events redelivered to it from the absorbed profile, held (or folded after giving up), must
    still count once, because the absorbed profile counted them."""
    window = 5
    own = [ref.record(f"c{i}", "page_view", 100 + i) for i in range(8)]
    x_events = [ref.record(f"x{i}", "page_view", 10 + i, customer_id=None, anonymous_id="x") for i in range(3)]
    x = apply_events(None, "anon:x", x_events, window).state
    state = expect(apply_events(None, "c-1", own, window).state, "c-1", "anon:x", now_ms=0)
    r = receive(state, x_events[:2], now_ms=WAIT + 1 if gave_up else 1, wait_ms=WAIT, keep=window)
    assert r.waiting != gave_up
    if gave_up:
        state = apply_events(r.state, "c-1", r.records, window).state
    else:
        state = r.state
    a = absorb(state, handover("anon:x", x, cause="login"), now_ms=WAIT + 2, dedup_window=window)
    state = apply_events(a.state, "c-1", a.records, window).state
    distinct, _ = recount(own, x_events)
    assert state["events"] == distinct == 11 and a.double_counted == 0


def full_window_survivor(ref, *late: str, window: int = 5):
    """c-1 with a full window of its own events, given up on the ``late`` profiles, then folding d."""
    d = ref.record("d", "page_view", 500)
    state = apply_events(None, "c-1", [ref.record(f"c{i}", "page_view", 100 + i) for i in range(8)], window).state
    for name in late:
        state = expect(state, "c-1", name, now_ms=0)
    r = receive(state, [d], now_ms=WAIT + 1, wait_ms=WAIT, keep=window)
    return apply_events(r.state, "c-1", r.records, window).state, d


def profile_of(ref, name: str, n: int, *also, window: int = 5):
    events = [ref.record(f"{name}{i}", "page_view", 10 + i, customer_id=None, anonymous_id=name) for i in range(n)]
    events += also
    return apply_events(None, f"anon:{name}", events, window).state, events


def test_a_second_recount_of_one_rewind_counts_once_past_a_full_window(ref):
    """Given up on x and y; d, which x counted, folded since. x comes late (d once), the rewind goes
    on for y, and y's recount must not count d again (nor report a negative recount)."""
    state, d = full_window_survivor(ref, "anon:x", "anon:y")
    x, x_events = profile_of(ref, "x", 2, d)
    y, y_events = profile_of(ref, "y", 2)
    reported = 0
    for name, history in (("anon:x", x), ("anon:y", y)):
        a = absorb(state, handover(name, history, cause="late"), now_ms=WAIT + 2, dedup_window=5)
        assert a.recounted >= 0
        reported += a.double_counted
        state = fold(a.state, a.records)
    own = [{"event_id": f"c{i}", "properties": {}} for i in range(8)]
    assert state["events"] == recount(own, x_events, y_events)[0] + reported and reported == 0


def test_a_history_merged_while_rewinding_counts_once_at_the_recount_past_a_full_window(ref):
    state, d = full_window_survivor(ref, "anon:x")
    z, z_events = profile_of(ref, "z", 2, d)  # z counted d too, and merges in plainly
    x, x_events = profile_of(ref, "x", 2)
    a = absorb(state, handover("anon:z", z, cause="link"), now_ms=WAIT + 2, dedup_window=5)
    reported = a.double_counted
    a = absorb(fold(a.state, a.records), handover("anon:x", x, cause="late"), now_ms=WAIT + 3, dedup_window=5)
    reported += a.double_counted
    state = fold(a.state, a.records)
    own = [{"event_id": f"c{i}", "properties": {}} for i in range(8)]
    assert state["events"] == recount(own, z_events, x_events)[0] + reported and reported == 0


def test_a_replayed_handover_does_not_count_its_held_events_again(ref):
    """anon:x held one of its own events (redelivered while it waited for anon:q); the survivor
    drops it at the merge, since x counted it, and must drop it again when the handover is replayed."""
    window = 5
    x, x_events = profile_of(ref, "x", 3)
    x = expect(x, "anon:x", "anon:q", now_ms=0)
    x = receive(x, [x_events[1]], now_ms=1, wait_ms=WAIT, keep=window).state
    message = handover("anon:x", x, cause="login")
    message["pending"] = []  # anon:q's own handover is not this test's concern
    assert message["held"] == [x_events[1]]
    own = [ref.record(f"c{i}", "page_view", 100 + i) for i in range(8)]
    state = expect(apply_events(None, "c-1", own, window).state, "c-1", "anon:x", now_ms=0)
    for _ in range(2):
        a = absorb(state, message, now_ms=2, dedup_window=window)
        state = apply_events(a.state, "c-1", a.records, window).state
        assert state["events"] == recount(own, x_events)[0] == 11


def test_a_hold_kept_until_the_handover_counts_nothing_twice(ref):
    anon = [ref.record(f"a{i}", "page_view", 1_000 + i, customer_id=None, anonymous_id="x") for i in range(4)]
    absorbed = apply_events(None, "anon:x", anon).state
    survivor = expect(None, "c-1", "anon:x", now_ms=0)
    r = receive(survivor, [anon[1], anon[3]], now_ms=10, wait_ms=WAIT)
    a = absorb(r.state, handover("anon:x", absorbed, cause="login"), now_ms=20)
    assert a.double_counted == 0 and fold(a.state, a.records)["events"] == 4


def test_an_erased_marker_holds_no_profile_and_is_neither_scored_nor_forwarded(ref):
    from models.stitching import erased, is_erased, is_placeholder

    marker = erased(5, {"all": "2"})
    assert marker == {"erased": 5, "segments": {"all": "2"}, "events": 0}  # nothing of the person but the key
    assert is_erased(marker) and is_placeholder(marker) and not is_stub(marker)
    assert is_placeholder(stub("c-1", 4)) and not is_erased(stub("c-1", 4))
    profile = apply_events(None, "c-1", [ref.record("e1", "page_view", 1)]).state
    assert not is_placeholder(profile) and not is_placeholder(None)


def test_a_rewind_is_dropped_past_its_size_in_bytes(ref):
    """Every table write of a rewinding profile carries what it keeps: large events end it early."""
    from models.stitching import REWIND_MAX_BYTES

    held = receive(expect(None, "c-1", "anon:x", now_ms=0), [ref.record("e1", "page_view", 1)], 10, WAIT)
    big = [ref.record(f"big{i}", "page_view", 2 + i, search="x" * (REWIND_MAX_BYTES // 3)) for i in range(4)]
    late = receive(held.state, big[:2], now_ms=WAIT + 11, wait_ms=WAIT)
    assert late.gave_up == ["anon:x"] and not late.unrewound and "rewind" in late.state
    more = receive(fold(late.state, late.records), big[2:], now_ms=WAIT + 12, wait_ms=WAIT)
    assert more.unrewound == ["anon:x"] and "rewind" not in more.state

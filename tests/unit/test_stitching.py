"""The profile side of a merge: held events, hand-over, absorb, chained merges, giving up.

Expected results are recounted from the events in the test (distinct event ids, their
revenue), not taken from the code under test."""

from __future__ import annotations

from models.profile import MAX_MERGED_FROM, apply_events
from models.stitching import absorb, expect, handover, is_stub, receive, stub

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


def test_a_hold_given_up_before_the_handover_counts_the_shared_events_twice_and_says_so(ref):
    """The known limit of giving up (docs/reliability.md): an event redelivered to the survivor
    after it reached the absorbed profile is folded in both; absorb counts how many."""
    anon = [ref.record(f"a{i}", "page_view", 1_000 + i, customer_id=None, anonymous_id="x") for i in range(4)]
    absorbed = apply_events(None, "anon:x", anon).state
    survivor = expect(None, "c-1", "anon:x", now_ms=0)
    again = [anon[1], anon[3], ref.record("new", "page_view", 3_000)]
    held = receive(survivor, again, now_ms=10, wait_ms=WAIT)
    late = receive(held.state, [], now_ms=WAIT + 11, wait_ms=WAIT)  # caught up, the wait is over
    assert late.gave_up == ["anon:x"]
    folded = fold(late.state, late.records)
    a = absorb(folded, handover("anon:x", absorbed, cause="login"), now_ms=WAIT + 20)
    shared = {r["event_id"] for r in anon} & {r["event_id"] for r in again}
    assert a.double_counted == len(shared) == 2
    events, _ = recount(anon, again)
    assert a.state["events"] == events + len(shared)  # what the metric reports: counted twice


def test_a_hold_kept_until_the_handover_counts_nothing_twice(ref):
    anon = [ref.record(f"a{i}", "page_view", 1_000 + i, customer_id=None, anonymous_id="x") for i in range(4)]
    absorbed = apply_events(None, "anon:x", anon).state
    survivor = expect(None, "c-1", "anon:x", now_ms=0)
    r = receive(survivor, [anon[1], anon[3]], now_ms=10, wait_ms=WAIT)
    a = absorb(r.state, handover("anon:x", absorbed, cause="login"), now_ms=20)
    assert a.double_counted == 0 and fold(a.state, a.records)["events"] == 4

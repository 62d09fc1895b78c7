"""The profile side of a merge, as pure steps over profile states (plumbing: streams.agents).

When the identity graph joins two groups, the surviving profile is told to :func:`expect` the
absorbed one and holds its new events (:func:`receive`) until the absorbed profile's
:func:`handover` arrives and is merged in (:func:`absorb`). Holding is what makes an event
seen under both ids count once: the held events are folded after the absorbed history, so
the joined deduplication window recognises them. A hold that outlives ``wait_ms`` while the
stream is caught up is given up; the survivor then keeps a *rewind* (its state before the held
events, and every event it folds after them) until the late handover comes, and recounts from it
(:func:`absorb`), so that the late history counts nothing twice either.

Examples
--------
>>> s = expect(None, "c-7", "anon:a1", now_ms=0)
>>> r = receive(s, [{"event_id": "e1"}], now_ms=10, wait_ms=1000)
>>> r.waiting, r.state["pending"]["held"]
(True, [{'event_id': 'e1'}])
>>> a = absorb(r.state, handover("anon:a1", None, cause="e1"), now_ms=20)
>>> a.waiting, a.records, a.merged, "pending" in a.state
(False, [{'event_id': 'e1'}], False, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from models.journeys import JourneyDelta, merge_journey
from models.profile import (
    DAY_MS, DEFAULT_DEDUP_WINDOW, MAX_MERGED_FROM, State, apply_events, copy_state, merge_states, new_state,
)


def is_stub(state: State | None) -> bool:
    """A key merged away: it only forwards what still arrives to the profile that absorbed it."""
    return state is not None and "merged_into" in state


def stub(into: str, now_ms: int) -> State:
    return {"merged_into": into, "ts": now_ms}


def erased(now_ms: int, segments: dict[str, str]) -> State:
    """What an erased profile leaves in the table while Redis has not confirmed its delete (Redis
    unreachable): no personal data, only the key and the segment sets to take it out of, so that a
    worker that takes the partition over (after a crash) deletes it from Redis all the same.
    ``events`` 0: a worker of an older version skips it like an empty profile."""
    return {"erased": now_ms, "segments": dict(segments), "events": 0}


def is_erased(state: State | None) -> bool:
    return state is not None and "erased" in state


def is_placeholder(state: State | None) -> bool:
    """A key that holds no profile: merged away (a stub) or erased (see :func:`erased`)."""
    return state is not None and ("merged_into" in state or "erased" in state)


def already_absorbed(held: State | None, absorbed: str) -> bool:
    """``held`` has merged ``absorbed`` in before: a merge message seen again is a replay.

    Delivery is at-least-once: a worker killed after the absorbed profile sent its
    :func:`handover` but before its forwarding stub reached the changelog sends the same
    handover again on restart (and a restarted identity stage repeats ``expect``). Folding it
    twice would count the absorbed history twice, so the survivor remembers every id it
    absorbed, in ``merged_from`` and, past that list's cap, as an ``absorbed:<id>`` mark in
    its deduplication window.
    """
    return held is not None and (
        absorbed in held.get("merged_from", ()) or absorbed_mark(absorbed) in held.get("seen", ())
    )


def absorbed_mark(absorbed: str) -> str:
    return f"absorbed:{absorbed}"


def expect(held: State | None, key: str, absorbed: str, now_ms: int) -> State:
    """The state of ``key`` once told that ``absorbed`` is on its way to be merged in
    (unchanged when it was merged in before: see :func:`already_absorbed`)."""
    if already_absorbed(held, absorbed):
        assert held is not None
        return held
    state = copy_state(held) if held is not None else new_state(key)
    pending = state.setdefault("pending", {"from": [], "held": [], "since": now_ms})
    if absorbed not in pending["from"]:
        pending["from"].append(absorbed)
    pending["since"] = now_ms
    return state


@dataclass(slots=True)
class Received:
    state: State | None  # the state to store (waiting) or to fold the records into
    records: list[dict[str, Any]]  # what to fold now
    waiting: bool = False
    gave_up: list[str] = field(default_factory=list)  # merges no longer waited for
    unrewound: list[str] = field(default_factory=list)  # given-up merges that can no longer be recounted
    double_counted: int = 0  # events a dropped rewind would have counted once (see Absorbed.double_counted)


def receive(
    held: State | None,
    records: list[dict[str, Any]],
    now_ms: int,
    wait_ms: int,
    behind_ms: int = 0,
    keep: int = DEFAULT_DEDUP_WINDOW,
) -> Received:
    """New events for a profile: hold them while a merge into it is pending, else fold them.

    A hold is given up once it is older than ``wait_ms`` while the stream is caught up:
    ``behind_ms`` is how long ago the message carrying ``records`` was sent. A worker working
    through a backlog is behind on the absorbed profile's partition too, so its handover may
    still be on the way. Giving up starts a rewind (see :func:`absorb`): the state before the
    held events, and up to ``keep`` events folded since; past that the rewind is dropped
    (``unrewound``) and a late handover can only report what it counts twice.

    >>> s = expect(None, "c-7", "anon:a1", now_ms=0)
    >>> receive(s, [{"event_id": "e1"}], now_ms=60_000, wait_ms=30_000, behind_ms=45_000).waiting
    True
    >>> r = receive(s, [{"event_id": "e1"}], now_ms=60_000, wait_ms=30_000, behind_ms=10)
    >>> r.gave_up, r.state["rewind"]["from"], r.state["rewind"]["records"]
    (['anon:a1'], ['anon:a1'], [{'event_id': 'e1'}])
    """
    pending = held.get("pending") if held else None
    if not pending:
        if held is None or "rewind" not in held:
            return Received(held, records)
        state = copy_state(held)
        unrewound, doubled = _log(state, records, keep)
        return Received(state, records, unrewound=unrewound, double_counted=doubled)
    state = copy_state(held)
    if now_ms - pending["since"] < wait_ms or behind_ms >= wait_ms:
        state["pending"]["held"].extend(records)
        return Received(state, [], waiting=True)
    given_up = state.pop("pending")
    folded = given_up["held"] + records
    if keep and "rewind" not in state:
        state["rewind"] = _new_rewind(state)
    if "rewind" in state:
        state["rewind"]["from"] += [x for x in given_up["from"] if x not in state["rewind"]["from"]]
    unrewound, doubled = _log(state, folded, keep)
    return Received(state, folded, gave_up=given_up["from"], unrewound=unrewound, double_counted=doubled)


def _new_rewind(state: State) -> dict[str, Any]:
    """A rewind whose base is ``state`` as it is now (see :func:`receive`)."""
    base = copy_state(state)
    for name in ("journey", "segments", "segment_history", "rewind"):  # not recounted (see _recount)
        base.pop(name, None)
    return {"from": [], "base": base, "records": []}


REWIND_MAX_BYTES = 256 * 1024  # of kept events: every table write of the profile carries them


def _log(state: State, records: list[dict[str, Any]], keep: int) -> tuple[list[str], int]:
    """Add ``records`` (about to be folded) to ``state``'s rewind; drop the rewind once it would
    hold more than ``keep`` events or :data:`REWIND_MAX_BYTES` of them, and return the merges it
    was kept for and the double counts it would have undone (``doubled``, see :func:`absorb`)."""
    rewind = state.get("rewind")
    if rewind is None:
        return [], 0
    rewind["records"].extend(records)
    rewind["bytes"] = rewind.get("bytes", 0) + sum(len(orjson.dumps(r)) for r in records)
    if len(rewind["records"]) <= keep and rewind["bytes"] <= REWIND_MAX_BYTES:
        return [], 0
    del state["rewind"]
    return rewind["from"], rewind.get("doubled", 0)


def handover(key: str, held: State | None, cause: str | None) -> dict[str, Any]:
    """What a profile merged away sends to the survivor: its state (None when it has no events),
    whatever it was itself still waiting for, and its rewind if it keeps one (the merges it gave up
    on arrive later at the survivor, which recounts them from it)."""
    state = copy_state(held) if held is not None else None
    pending = state.pop("pending", None) if state is not None else None
    rewind = state.pop("rewind", None) if state is not None else None
    message = {
        "op": "absorb",
        "from": key,
        "cause": cause,
        "state": state if state is not None and state["events"] else None,
        "pending": pending["from"] if pending else [],
        "held": pending["held"] if pending else [],
    }
    if rewind is not None and message["state"] is not None:
        message["rewind"] = rewind
    return message


@dataclass(slots=True)
class Absorbed:
    state: State
    records: list[dict[str, Any]]  # held events to fold now (none while still waiting)
    waiting: bool  # other merges are still pending: store the state, fold nothing yet
    merged: bool  # a history was merged in (score and publish even if no event is new)
    withdrawn: JourneyDelta = field(default_factory=JourneyDelta)  # the absorbed timeline's counters, reversed
    added: JourneyDelta = field(default_factory=JourneyDelta)  # what its touches add to this timeline
    double_counted: int = 0  # events in both histories' deduplication windows (see overlap)
    recounted: int = 0  # as many, counted once thanks to the rewind (a given-up hold's late handover)
    unrewound: list[str] = field(default_factory=list)  # see Received.unrewound


def overlap(held: State, other: State) -> int:
    """Events applied to both profiles, as far as their deduplication windows tell (a lower bound).

    A survivor that gave up waiting for a merge (:func:`receive`) folded its held events; if one
    of them had reached the absorbed profile too (a redelivered event, first routed there), the
    merge would count it twice. The rewind recounts such a merge (:func:`absorb`); without one
    (given up on too many events ago) counters cannot take one event back out, so it is counted
    and reported instead (``omniprofile_merge_double_counted_total``).

    >>> overlap({"seen": ["e1", "e2", "absorbed:anon:z"]}, {"seen": ["e2", "e3", "absorbed:anon:z"]})
    1
    """
    ours = {e for e in held.get("seen", ()) if not e.startswith("absorbed:")}
    return len(ours.intersection(other.get("seen", ())))


def _mark(state: State, absorbed: str, dedup_window: int) -> None:
    """Remember in ``state``'s deduplication window that ``absorbed`` was merged in."""
    if dedup_window:
        state["seen"] = [*state.get("seen", []), absorbed_mark(absorbed)][-dedup_window:]


def _merge_in(state: State, other: State, absorbed: str, dedup_window: int) -> State:
    out = merge_states(state, other, dedup_window)
    _mark(out, absorbed, dedup_window)
    return out


def _recount(state: State, base: State, records: list[dict[str, Any]], dedup_window: int) -> State:
    """``state`` had given up waiting for a merge: its profile as if it had waited. ``base`` is the
    rewind's base (the state before the held events) with the late history merged in; the events
    folded since (``records``) are folded again, so the deduplication window skips those the late
    history had counted already. The timeline and the segments are ``state``'s own (touches are kept once per event by
    :func:`models.journeys.merge_journey`; segments follow the next scoring)."""
    out = apply_events(base, state["customer_id"], records, dedup_window).state
    for name in ("journey", "segments", "segment_history"):
        out.pop(name, None)
        if name in state:
            out[name] = state[name]
    merged = [*out.get("merged_from", []), *state.get("merged_from", [])]
    out["merged_from"] = list(dict.fromkeys(merged))[:MAX_MERGED_FROM]
    out["version"] = max(out["version"], state["version"]) + 1
    return out


def absorb(
    held: State,
    message: dict[str, Any],
    now_ms: int,
    dedup_window: int = DEFAULT_DEDUP_WINDOW,
    window_ms: int = 7 * DAY_MS,
    halflife_ms: int = DAY_MS,
) -> Absorbed:
    """Merge a :func:`handover` into ``held`` (rules: :func:`models.profile.merge_states`);
    a handover merged in before (a replay, :func:`already_absorbed`) adds no history again.

    The late handover of a hold given up (:func:`receive`) is merged in by rewinding
    (:func:`_recount`). While a rewind is kept, every other history merged in joins its base
    too, and every event folded after a merge joins its events. A handover that brings a rewind
    of its own (the absorbed profile had given up a hold too) joins it: its base to the base,
    its events to the events, the merges it waits for to those waited for here.

    A plain merge counts the events both histories hold twice (:func:`overlap`). While a rewind
    is kept, only those in both bases stay counted twice (``double_counted``); the others are
    among the rewind's events, which its recount counts once, so they are reported only if the
    rewind is dropped first (its ``doubled``, returned by :func:`_log`)."""
    state = copy_state(held)
    pending = state.pop("pending", None) or {"from": [], "held": [], "since": now_ms}
    rewind = state.pop("rewind", None)
    waiting = [x for x in pending["from"] if x != message["from"]] + list(message["pending"])
    records = pending["held"] + message["held"]
    other = message["state"]
    absorbed = message["from"]
    if other is not None and already_absorbed(held, absorbed):
        other = None  # a replayed handover: its history is in already (its held events dedup)
    incoming = message.get("rewind") if other is not None else None
    if message["state"] is not None:  # a replay too: the first absorb dropped the same events
        # Held events the absorbed profile counted already. The joined window would skip them
        # too, but only those it still holds: it keeps the newest ``dedup_window`` ids of both.
        counted = set(message["state"].get("seen", ()))
        records = [r for r in records if r["event_id"] not in counted]
    result = Absorbed(state, [], bool(waiting), other is not None)
    if incoming is not None and not dedup_window:  # no rewinds kept here: what it was kept for is lost
        result.unrewound = list(incoming["from"])
        result.double_counted += incoming.get("doubled", 0)
        incoming = None
    if other is not None:
        if incoming is not None and rewind is None:
            rewind = _new_rewind(state)
        final = 0  # double counts no recount can undo (both in the rewind's base)
        if rewind is not None:  # every history merged in joins the base too
            other_base = incoming["base"] if incoming is not None else other
            final = overlap(rewind["base"], other_base)
            rewind["base"] = _merge_in(rewind["base"], other_base, absorbed, dedup_window)
            if incoming is not None:
                rewind["records"] = rewind["records"] + incoming["records"]
                rewind["from"] += [x for x in incoming["from"]
                                   if x not in rewind["from"] and x != state["customer_id"]]
                rewind["doubled"] = rewind.get("doubled", 0) + incoming.get("doubled", 0)
            # The base counts what the joined history counted: those events are not folded again
            # at a recount (the joined window may not hold their ids, as for held events above).
            counted = set(other_base.get("seen", ()))
            rewind["records"] = [r for r in rewind["records"] if r["event_id"] not in counted]
            rewind["bytes"] = sum(len(orjson.dumps(r)) for r in rewind["records"])
        if rewind is not None and absorbed in rewind["from"]:
            result.state = _recount(state, rewind["base"], rewind["records"], dedup_window)
            # what plain merging would have counted twice (the events both hold)
            result.recounted = max(0, state["events"] + other["events"] - result.state["events"])
            result.double_counted = final  # both bases held them: the recount cannot undo those
            rewind.pop("doubled", None)  # the recount counted the rewind's events once
        else:
            result.state = _merge_in(state, other, absorbed, dedup_window)
            both = overlap(state, other)
            result.double_counted = both if rewind is None else min(final, both)
            if rewind is not None and both > result.double_counted:
                rewind["doubled"] = rewind.get("doubled", 0) + both - result.double_counted
        result.withdrawn, result.added = merge_journey(result.state, other.get("journey"), window_ms, halflife_ms)
    elif not already_absorbed(held, absorbed):
        # A profile without events handed over nothing, but it is merged in all the same: a
        # replayed ``expect`` must not open a hold that no handover will ever end.
        _mark(result.state, absorbed, dedup_window)
        if rewind is not None:
            _mark(rewind["base"], absorbed, dedup_window)
    if rewind is not None:
        rewind["from"] = [x for x in rewind["from"] if x != absorbed]
        if rewind["from"]:
            result.state["rewind"] = rewind
        else:  # ended without a recount (the late profile had no events): what it deferred stays
            result.double_counted += rewind.get("doubled", 0)
    if waiting:
        result.state["pending"] = {"from": waiting, "held": records, "since": pending["since"]}
    else:
        result.records = records
    # the events folded next join the rewind; a rewind that grew past its limits is dropped
    unrewound, doubled = _log(result.state, result.records, dedup_window)
    result.unrewound += unrewound
    result.double_counted += doubled
    return result

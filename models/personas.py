"""Segment personas: what the members of each segment have in common, and a short label.

The members of a segment are spread over every partition (and worker), so a summary is
built in two steps that merge exactly:

1. :func:`tally_members` folds profile states into *counts* per scope and segment (sums
   of spend, orders, events per channel, members per age band, ...). Counts from disjoint
   sets of profiles add up (:func:`merge_tallies`), so every partition tallies its own
   profiles and one place merges the partials.
2. :func:`summarize` turns merged counts into a :data:`SegmentSummary` per segment (size,
   share, top channels and interests, age band, devices, spend, email and app engagement)
   and :func:`label_segment` names each segment by what sets it apart from its scope
   (a channel family that dominates it, spend, discounts, engagement, lapsing).

Examples
--------
>>> from models.profile import apply_events
>>> def buy(cid, i, channel, revenue, discount=0.0):
...     return {"event_id": f"{cid}-{i}", "source": "clickstream", "type": "purchase",
...             "ts": 1_795_341_600_000 + i, "customer_id": cid, "anonymous_id": None,
...             "email_hash": None, "channel": channel, "device": "desktop",
...             "properties": {"revenue": revenue, "discount": discount, "category": "toys"}}
>>> a = apply_events(None, "a", [buy("a", 1, "amazon", 20.0, 5.0)]).state
>>> b = apply_events(None, "b", [buy("b", 2, "web", 300.0)]).state
>>> a["segments"], b["segments"] = {"all": "s0"}, {"all": "s1"}
>>> tally = tally_members([a, b], as_of_ms=1_795_341_600_000)
>>> [(s["segment"], s["size"], s["avg_spend"]) for s in summarize(tally)["all"]]
[('s0', 1, 20.0), ('s1', 1, 300.0)]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from models.features import CHANNEL_GROUPS, channel_group
from models.profile import DAY_MS, State

Tally = dict[str, dict[str, dict[str, Any]]]  # scope -> segment -> counts
SegmentSummary = dict[str, Any]

AGE_BANDS = ((18, "under 18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"), (65, "55-64"))
ACTIVE_DAYS = 30
TOP_N = 3
# Open vocabularies (channels, interests) are cut to this many keys per segment in a tally;
# merged tallies are then exact for every key that was kept by every partial.
TALLY_KEY_CAP = 100

# Counters of one segment's members: plain sums, so tallies merge by addition.
_SUMS = (
    "members", "events", "orders", "buyers", "revenue_cents", "discounted_orders", "active_recently",
    "email_sent", "email_open", "email_click", "email_reached", "app_users", "app_opens",
    "store_visitors", "social_users",
)
_COUNTERS = ("channels", "groups", "interests", "age_bands", "devices", "segments")

GROUP_NOUNS = {
    "web": "web shoppers",
    "marketplace": "marketplace shoppers",
    "app": "app loyalists",
    "email": "email responders",
    "social": "social followers",
    "store": "store regulars",
}


def age_band(age: Any) -> str | None:
    """The band of an age trait (None when unknown).

    >>> age_band(17), age_band(34), age_band(70), age_band(None)
    ('under 18', '25-34', '65+', None)
    """
    if not isinstance(age, (int, float)) or isinstance(age, bool) or age < 0:
        return None
    for upper, name in AGE_BANDS:
        if age < upper:
            return name
    return "65+"


def _new_counts() -> dict[str, Any]:
    counts: dict[str, Any] = dict.fromkeys(_SUMS, 0)
    counts.update({name: {} for name in _COUNTERS})
    return counts


def _add(counter: dict[str, int], key: str, by: int = 1) -> None:
    counter[key] = counter.get(key, 0) + by


def _top_keys(weights: Mapping[str, float], n: int) -> list[str]:
    return [k for k, _ in sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def tally_member(counts: dict[str, Any], state: State, scope: str, as_of_ms: int) -> None:
    """Add one profile's activity in ``scope`` to a segment's ``counts`` (in place)."""
    act = state["all"] if scope == "all" else state["channels"].get(scope)
    if act is None:
        return
    counts["members"] += 1
    counts["events"] += act["events"]
    counts["orders"] += act["orders"]
    counts["buyers"] += act["orders"] > 0
    counts["revenue_cents"] += act["revenue_cents"]
    counts["discounted_orders"] += act["discounted_orders"]
    counts["active_recently"] += bool(act["last_ts"]) and as_of_ms - act["last_ts"] <= ACTIVE_DAYS * DAY_MS
    mail = act.get("email", {})
    counts["email_sent"] += mail.get("sent", 0)
    counts["email_open"] += mail.get("open", 0)
    counts["email_click"] += mail.get("click", 0)
    counts["email_reached"] += mail.get("sent", 0) > 0
    app = act.get("app", {})
    opens = app.get("opens", 0) + app.get("push_opens", 0)
    counts["app_users"] += opens > 0
    counts["app_opens"] += opens
    counts["store_visitors"] += act.get("offline", {}).get("store_visits", 0) > 0
    counts["social_users"] += sum((act.get("social", {}).get("interactions") or {}).values()) > 0
    channels = {scope: act["events"]} if scope != "all" else {n: b["events"] for n, b in state["channels"].items()}
    for name, events in channels.items():
        _add(counts["channels"], name, events)
        _add(counts["groups"], channel_group(name), events)
    # A member's own top interests (merged scope: declared and behavioural; a channel: its categories).
    interests = state["interests"] if scope == "all" else act["categories"]
    for name in _top_keys(interests, TOP_N):
        _add(counts["interests"], name)
    band = age_band(state["traits"].get("age"))
    if band:
        _add(counts["age_bands"], band)
    if act["devices"]:
        _add(counts["devices"], _top_keys(act["devices"], 1)[0])


MOVERS = "movers"


def tally_members(states: Iterable[State], as_of_ms: int) -> Tally:
    """Counts per scope and segment over ``states`` (each profile counts in every scope it has a segment in).

    Scope :data:`MOVERS` groups customers by the channel pairs they hopped between
    (``journey.hops``; a customer counts once in every pair they moved through), with their
    merged activity and the segment they fall in.
    """
    tally: Tally = {}
    for state in states:
        for scope, segment in (state.get("segments") or {}).items():
            counts = tally.setdefault(scope, {}).setdefault(segment, _new_counts())
            tally_member(counts, state, scope, as_of_ms)
        for pair, n in ((state.get("journey") or {}).get("hops") or {}).items():
            if n > 0:
                counts = tally.setdefault(MOVERS, {}).setdefault(pair, _new_counts())
                tally_member(counts, state, "all", as_of_ms)
                segment = (state.get("segments") or {}).get("all")
                if segment:
                    _add(counts["segments"], segment)
    for segments in tally.values():
        for counts in segments.values():
            _cap_counters(counts)
    return tally


def _cap_counters(counts: dict[str, Any]) -> None:
    for name in ("channels", "interests"):
        if len(counts[name]) > TALLY_KEY_CAP:
            counts[name] = {k: counts[name][k] for k in _top_keys(counts[name], TALLY_KEY_CAP)}


def merge_tallies(tallies: Iterable[Tally]) -> Tally:
    """The sum of tallies over disjoint sets of profiles.

    >>> merge_tallies([{"all": {"s0": {"members": 2, "channels": {"web": 3}}}},
    ...                {"all": {"s0": {"members": 1, "channels": {"web": 1, "app": 2}}}}])
    {'all': {'s0': {'members': 3, 'channels': {'web': 4, 'app': 2}}}}
    """
    out: Tally = {}
    for tally in tallies:
        for scope, segments in tally.items():
            for segment, counts in segments.items():
                into = out.setdefault(scope, {}).setdefault(segment, {})
                for name, value in counts.items():
                    if isinstance(value, dict):
                        target = into.setdefault(name, {})
                        for key, n in value.items():
                            _add(target, key, n)
                    else:
                        into[name] = into.get(name, 0) + value
    return out


# --- summaries and labels -------------------------------------------------------------------


def _ratio(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def _shares(counter: Mapping[str, int], whole: int, n: int = TOP_N) -> list[dict[str, Any]]:
    return [{"name": k, "share": _ratio(counter[k], whole)} for k in _top_keys(counter, n)]


def describe(counts: Mapping[str, Any], scope_members: int) -> SegmentSummary:
    """The readable figures of one segment from its counts."""
    c = {**_new_counts(), **counts}
    members = c["members"]
    return {
        "size": members,
        "share": _ratio(members, scope_members),
        "top_channels": _shares(c["channels"], sum(c["channels"].values())),
        "top_interests": _shares(c["interests"], members),
        "age_band": _top_keys(c["age_bands"], 1)[0] if c["age_bands"] else None,
        "age_known": _ratio(sum(c["age_bands"].values()), members),
        "devices": _shares(c["devices"], members),
        "avg_spend": round(c["revenue_cents"] / members / 100, 2) if members else 0.0,
        "avg_orders": _ratio(c["orders"], members),
        "buyer_share": _ratio(c["buyers"], members),
        "discount_share": _ratio(c["discounted_orders"], c["orders"]),
        "avg_events": _ratio(c["events"], members),
        "active_share": _ratio(c["active_recently"], members),
        "email_open_rate": _ratio(c["email_open"], c["email_sent"]),
        "email_click_rate": _ratio(c["email_click"], c["email_sent"]),
        "email_reached_share": _ratio(c["email_reached"], members),
        "app_user_share": _ratio(c["app_users"], members),
        "avg_app_opens": _ratio(c["app_opens"], members),
        "store_visitor_share": _ratio(c["store_visitors"], members),
        "social_share": _ratio(c["social_users"], members),
        "group_shares": {g: _ratio(c["groups"].get(g, 0), sum(c["groups"].values())) for g in CHANNEL_GROUPS},
        "segments": _shares(c["segments"], members),
    }


# Adjectives, tried strongest first: (name, figure, direction, lift needed, floor on the figure).
_ADJECTIVES = (
    ("big-spending", "avg_spend", +1, 1.6, 1.0),
    ("bargain-hunting", "discount_share", +1, 1.4, 0.3),
    ("frequent", "avg_orders", +1, 1.6, 1.0),
    ("lapsed", "active_share", -1, 0.5, 0.0),
    ("window-shopping", "buyer_share", -1, 0.6, 0.0),
    ("engaged", "email_open_rate", +1, 1.5, 0.3),
)


def _lift(value: float, base: float) -> float:
    if base <= 0:
        return float("inf") if value > 0 else 1.0
    return value / base


def label_segment(segment: SegmentSummary, base: SegmentSummary, scope: str) -> str:
    """A short label from what sets ``segment`` apart from the whole ``scope`` (``base``).

    The noun comes from the channel family that dominates the segment, in the merged scope
    (or, in a channel's scope, from engagement outside shopping); the adjective from the
    figure that differs most from the scope as a whole.

    >>> base = describe({"members": 10, "orders": 10, "buyers": 8, "revenue_cents": 50000,
    ...                  "discounted_orders": 2, "active_recently": 8,
    ...                  "groups": {"web": 50, "marketplace": 50}}, 10)
    >>> seg = describe({"members": 4, "orders": 4, "buyers": 4, "revenue_cents": 8000,
    ...                 "discounted_orders": 3, "active_recently": 4,
    ...                 "groups": {"marketplace": 40, "web": 2}}, 10)
    >>> label_segment(seg, base, "all")
    'bargain-hunting marketplace shoppers'
    """
    noun = _noun(segment, base, scope)
    best, best_strength = None, 1.0
    for name, figure, direction, needed, floor in _ADJECTIVES:
        lift = _lift(segment[figure], base[figure])
        if direction > 0 and lift >= needed and segment[figure] >= floor:
            strength = lift / needed
        elif direction < 0 and lift <= needed:
            strength = needed / max(lift, 1e-9)
        else:
            continue
        if strength > best_strength:
            best, best_strength = name, strength
    return f"{best} {noun}" if best else noun


def _noun(segment: SegmentSummary, base: SegmentSummary, scope: str) -> str:
    if scope in ("all", MOVERS):
        shares = segment["group_shares"]
        # The family this segment leans on most, relative to the whole base.
        group = max(
            CHANNEL_GROUPS,
            key=lambda g: (shares[g] >= 0.2, shares[g] * min(_lift(shares[g], base["group_shares"][g]), 5.0), g),
        )
        return GROUP_NOUNS[group]
    for figure, noun in (
        ("app_user_share", "app users"),
        ("store_visitor_share", "store visitors"),
        ("email_reached_share", "subscribers"),
        ("social_share", "social followers"),
    ):
        if segment[figure] >= 0.5 and _lift(segment[figure], base[figure]) >= 1.5:
            return noun
    return "buyers" if segment["buyer_share"] >= 0.5 else "browsers"


def summarize(tally: Tally) -> dict[str, list[SegmentSummary]]:
    """Per scope, one summary per segment (largest first), each with a label.

    Labels are unique within a scope: segments that would share one are told apart by
    their most distinctive interest, main device or age band, else by their id.
    """
    out = {}
    for scope, segments in sorted(tally.items()):
        members = sum(c.get("members", 0) for c in segments.values())
        pooled = merge_tallies([{scope: {"": counts}} for counts in segments.values()])[scope][""]
        base = describe(pooled, members)
        rows = []
        for segment, counts in segments.items():
            row = {"segment": segment, **describe(counts, members)}
            row["label"] = label_segment(row, base, scope)
            row["_qualifiers"] = _qualifiers(row, counts, pooled, members)
            rows.append(row)
        rows.sort(key=lambda r: (-r["size"], r["segment"]))
        _make_unique(rows)
        out[scope] = rows
    return out


def _qualifiers(row: SegmentSummary, counts: Mapping[str, Any], pooled: Mapping[str, Any], members: int) -> list[str]:
    """Ways to tell this segment apart, best first: its most over-represented interest, main device, age band."""
    size = row["size"] or 1
    interests = counts.get("interests", {})
    lifts = {
        name: (n / size) / (pooled["interests"][name] / members)
        for name, n in interests.items()
        if n / size >= 0.25 and pooled["interests"].get(name)
    }
    out = []
    if lifts:
        out.append("into " + _top_keys(lifts, 1)[0])
    if row["devices"]:
        out.append("on " + row["devices"][0]["name"])
    if row["age_band"]:
        out.append("aged " + row["age_band"])
    return out


def _make_unique(rows: list[SegmentSummary]) -> None:
    groups: dict[str, list[SegmentSummary]] = {}
    for row in rows:
        groups.setdefault(row["label"], []).append(row)
    for label, group in groups.items():
        if len(group) > 1:
            for kind in range(3):
                names = [r["_qualifiers"][kind] if len(r["_qualifiers"]) > kind else None for r in group]
                if None not in names and len(set(names)) == len(names):
                    for row, name in zip(group, names):
                        row["label"] = f"{label}, {name}"
                    break
            else:
                for row in group:
                    row["label"] = f"{label} ({row['segment']})"
    for row in rows:
        del row["_qualifiers"]

"""Profile state and the pure step that folds events into it.

The state of one customer is a JSON-ready dict (it is the Faust table value):

``customer_id``, ``version``, ``events``
    The profile key, a counter raised by one on every change, and the number of
    distinct events applied (identify and alias included).
``all`` and ``channels[channel]``
    An *activity* block each (:func:`new_activity`): the merged behaviour and one
    sub-profile per shopping channel, folded by the same code.
``traits`` / ``trait_ts``
    Identify traits, newest by event time per trait.
``interests``
    Weighted interest counts (declared interests, social topics, viewed and bought categories).
``seen`` / ``last_event_id``
    The ids of the last :data:`DEFAULT_DEDUP_WINDOW` applied events, for deduplication.

Every block is order-independent: counts add, first/last follow event time, sessions
and active days are kept as sorted intervals, and "latest" values carry their event
time. So events applied in any order give the same state, as long as bounded parts
(top-N counters, the last sessions and days) do not overflow; then the oldest or the
smallest entries are dropped and counted.

Examples
--------
>>> rec = {"event_id": "e1", "source": "clickstream", "type": "purchase",
...        "ts": 1_795_341_600_000, "customer_id": "c-1", "anonymous_id": None,
...        "email_hash": None, "channel": "amazon", "device": "desktop",
...        "properties": {"revenue": 30.0, "category": "books", "discount": 5.0}}
>>> step = apply_events(None, "c-1", [rec])
>>> step.state["version"], step.state["all"]["orders"], step.state["channels"]["amazon"]["revenue_cents"]
(1, 1, 3000)
>>> sorted(step.changed)
['activity', 'channels.amazon', 'identifiers', 'interests', 'orders']
>>> apply_events(step.state, "c-1", [rec]).changed   # the same event again changes nothing
[]
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from models.events import PURCHASE_TYPES, EventRecord

State = dict[str, Any]

SESSION_GAP_MS = 30 * 60 * 1000
DAY_MS = 86_400_000

DEFAULT_DEDUP_WINDOW = 256
MAX_CHANNELS = 32
MAX_SESSIONS = 64
MAX_DAYS = 400
MAX_RECENT_ORDERS = 10
TOP_CAP = 40  # entries kept per top-N counter

# Weights of the interest score (see README: "interests").
INTEREST_WEIGHTS = {"declared": 5, "purchase": 3, "cart": 2, "view": 1, "social": 1}
CATEGORY_WEIGHTS = {"product_view": 1, "add_to_cart": 2, "checkout": 2, "purchase": 5, "pos_purchase": 5}

OTHER_CHANNEL = "other"


@dataclass(slots=True)
class Step:
    """The result of :func:`apply_events`: the new state and what changed."""

    state: State
    changed: list[str] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    replayed_last: bool = False  # a duplicate of the last applied event: re-publish (crash recovery)
    new_records: list[EventRecord] = field(default_factory=list)  # the records applied (not duplicates)


def new_state(key: str) -> State:
    return {
        "customer_id": key,
        "version": 0,
        "events": 0,
        "all": new_activity(),
        "channels": {},
        "traits": {},
        "trait_ts": {},
        "interests": {},
        "identifiers": {"customer_ids": [], "anonymous_ids": [], "email_hashes": []},
        "seen": [],
        "last_event_id": None,
    }


def new_activity() -> dict[str, Any]:
    return {
        "events": 0,
        "types": {},
        "first_ts": None,
        "last_ts": None,
        "days": [],
        "days_dropped": 0,
        "sessions": [],
        "sessions_dropped": 0,
        "orders": 0,
        "revenue_cents": 0,
        "discounted_orders": 0,
        "first_order_ts": None,
        "last_order_ts": None,
        "recent_orders": [],
        "categories": {},
        "devices": {},
        "referrers": {},
        "searches": {},
    }


# --- small order-independent building blocks -------------------------------------------


def bump(counter: dict[str, int], key: str, by: int = 1, cap: int = TOP_CAP) -> None:
    """Add ``by`` to ``counter[key]``; past ``cap`` keys drop the smallest.

    Ties drop the alphabetically last key, so the survivors do not depend on the order
    of arrival.

    >>> c = {"a": 3, "b": 1}
    >>> bump(c, "c", cap=2); c
    {'a': 3, 'b': 1}
    """
    counter[key] = counter.get(key, 0) + by
    if len(counter) > cap:
        smallest = min(counter.values())
        del counter[max(k for k, v in counter.items() if v == smallest)]


def add_session(sessions: list[list[int]], ts: int, gap: int = SESSION_GAP_MS) -> bool:
    """Insert an event time into sorted ``[start, end]`` sessions; True if they changed.

    A session is a maximal run of events no more than ``gap`` apart, so the result
    depends only on the set of times, not on their order.

    >>> s = []
    >>> for t in (0, 100, 10_000_000, 5_000_000): _ = add_session(s, t, gap=3_000_000)
    >>> s
    [[0, 100], [5000000, 5000000], [10000000, 10000000]]
    >>> add_session(s, 7_500_000, gap=3_000_000), s
    (True, [[0, 100], [5000000, 10000000]])
    """
    i = bisect.bisect_right(sessions, [ts, float("inf")])  # sessions[:i] start <= ts
    prev = sessions[i - 1] if i > 0 else None
    nxt = sessions[i] if i < len(sessions) else None
    if prev is not None and ts <= prev[1]:
        return False  # inside an existing session
    joins_prev = prev is not None and ts - prev[1] <= gap
    joins_next = nxt is not None and nxt[0] - ts <= gap
    if joins_prev and joins_next:
        prev[1] = nxt[1]
        del sessions[i]
    elif joins_prev:
        prev[1] = ts
    elif joins_next:
        nxt[0] = ts
    else:
        sessions.insert(i, [ts, ts])
    return True


def _add_bounded_session(act: dict[str, Any], ts: int) -> None:
    sessions = act["sessions"]
    if act["sessions_dropped"] and sessions and ts < sessions[0][0] - SESSION_GAP_MS:
        return  # older than the kept history: it fell into sessions already counted
    add_session(sessions, ts)
    while len(sessions) > MAX_SESSIONS:
        sessions.pop(0)
        act["sessions_dropped"] += 1


def _add_day(act: dict[str, Any], ts: int) -> None:
    day = ts // DAY_MS
    days = act["days"]
    if act["days_dropped"] and days and day < days[0]:
        return
    i = bisect.bisect_left(days, day)
    if i < len(days) and days[i] == day:
        return
    days.insert(i, day)
    while len(days) > MAX_DAYS:
        days.pop(0)
        act["days_dropped"] += 1


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _max(a: int | None, b: int) -> int:
    return b if a is None or b > a else a


def referrer_domain(url: str) -> str | None:
    """The host of a referrer URL without ``www.``.

    >>> referrer_domain("https://www.instagram.com/p/abc")
    'instagram.com'
    """
    try:
        host = urlsplit(url if "//" in url else f"//{url}").hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.removeprefix("www.")


# --- the activity fold (merged profile and each channel sub-profile) ------------------------


def fold_activity(act: dict[str, Any], rec: EventRecord) -> set[str]:
    """Fold one event into an activity block; return the names of the parts touched."""
    etype = rec["type"]
    ts = rec["ts"]
    props = rec["properties"]
    touched = {"activity"}

    act["events"] += 1
    bump(act["types"], etype, cap=64)
    act["first_ts"] = _min(act["first_ts"], ts)
    act["last_ts"] = _max(act["last_ts"], ts)
    _add_day(act, ts)
    _add_bounded_session(act, ts)

    if rec["device"]:
        bump(act["devices"], rec["device"])

    category = props.get("category")
    if category and etype in CATEGORY_WEIGHTS:
        bump(act["categories"], category, CATEGORY_WEIGHTS[etype])
    if etype == "search" and props.get("search_query"):
        bump(act["searches"], props["search_query"].strip().lower()[:100])
    _fold_referral(act, props)

    if etype in PURCHASE_TYPES:
        touched.add("orders")
        revenue_cents = round(props["revenue"] * 100)
        act["orders"] += 1
        act["revenue_cents"] += revenue_cents
        if props.get("discount", 0) > 0:
            act["discounted_orders"] += 1
        act["first_order_ts"] = _min(act["first_order_ts"], ts)
        act["last_order_ts"] = _max(act["last_order_ts"], ts)
        _remember_order(act, [ts, props.get("order_id") or rec["event_id"], revenue_cents, rec["channel"]])

    source = rec["source"]
    if source == "email":
        touched.add("email")
        _fold_email(act.setdefault("email", {}), etype, ts, props)
    elif source == "app" and etype != "purchase":
        touched.add("app")
        _fold_app(act.setdefault("app", {}), etype, ts, props)
    elif source == "social":
        touched.add("social")
        _fold_social(act.setdefault("social", {}), rec)
    elif source == "offline":
        touched.add("offline")
        _fold_offline(act.setdefault("offline", {}), etype, props)
    return touched


def _remember_order(act: dict[str, Any], order: list[Any]) -> None:
    recent = act["recent_orders"]
    bisect.insort(recent, order, key=lambda o: (o[0], str(o[1]), o[2], o[3]))
    if len(recent) > MAX_RECENT_ORDERS:
        recent.pop(0)


def _fold_referral(act: dict[str, Any], props: dict[str, Any]) -> None:
    refs = act["referrers"]
    for name in ("utm_source", "utm_medium", "utm_campaign"):
        value = props.get(name)
        if value:
            bump(refs.setdefault(name, {}), value.strip().lower()[:100])
    if props.get("referrer"):
        domain = referrer_domain(props["referrer"])
        if domain:
            bump(refs.setdefault("referrer_domain", {}), domain)


def _fold_email(mail: dict[str, Any], etype: str, ts: int, props: dict[str, Any]) -> None:
    mail[etype] = mail.get(etype, 0) + 1
    if etype in ("open", "click"):
        mail[f"last_{etype}_ts"] = _max(mail.get(f"last_{etype}_ts"), ts)
        if props.get("campaign_type"):
            bump(mail.setdefault("engaged_campaign_types", {}), props["campaign_type"])
    elif etype == "unsubscribe":
        mail["unsubscribed_ts"] = _max(mail.get("unsubscribed_ts"), ts)
    elif etype == "sent" and props.get("campaign_type"):
        bump(mail.setdefault("sent_campaign_types", {}), props["campaign_type"])


def _fold_app(app: dict[str, Any], etype: str, ts: int, props: dict[str, Any]) -> None:
    key = {"app_open": "opens", "push_open": "push_opens", "screen_view": "screen_views"}.get(etype, etype + "s")
    app[key] = app.get(key, 0) + 1
    if etype != "uninstall":
        app["last_use_ts"] = _max(app.get("last_use_ts"), ts)
    if etype == "install":
        app["install_ts"] = _max(app.get("install_ts"), ts)
    elif etype == "uninstall":
        app["uninstall_ts"] = _max(app.get("uninstall_ts"), ts)
    elif etype in ("app_open", "push_open"):
        app["last_open_ts"] = _max(app.get("last_open_ts"), ts)
    if etype == "screen_view" and props.get("screen"):
        bump(app.setdefault("screens", {}), props["screen"])
    if props.get("os"):
        bump(app.setdefault("os", {}), props["os"].lower(), cap=8)


def _fold_social(social: dict[str, Any], rec: EventRecord) -> None:
    bump(social.setdefault("platforms", {}), rec["channel"])
    bump(social.setdefault("interactions", {}), rec["type"])
    topic = rec["properties"].get("topic")
    if topic:
        bump(social.setdefault("topics", {}), topic.strip().lower())


def _fold_offline(off: dict[str, Any], etype: str, props: dict[str, Any]) -> None:
    name = {"store_visit": "store_visits", "event_attended": "events_attended", "pos_purchase": "store_purchases"}[
        etype
    ]
    off[name] = off.get(name, 0) + 1
    if etype == "pos_purchase":
        off["store_revenue_cents"] = off.get("store_revenue_cents", 0) + round(props["revenue"] * 100)
    if props.get("store_id"):
        bump(off.setdefault("stores", {}), props["store_id"])


# --- customer-level parts -------------------------------------------------------------------


def _fold_traits(state: State, rec: EventRecord) -> bool:
    traits = rec["properties"].get("traits") or {}
    changed = False
    ts = rec["ts"]
    for name, value in traits.items():
        if name == "interests" or value is None:
            continue
        seen_ts = state["trait_ts"].get(name)
        # Newest by event time wins; on a tie the larger value, so order never matters.
        if seen_ts is None or ts > seen_ts or (ts == seen_ts and repr(value) > repr(state["traits"].get(name))):
            state["traits"][name] = value
            state["trait_ts"][name] = ts
            changed = True
    return changed


def _fold_interests(state: State, rec: EventRecord) -> bool:
    props = rec["properties"]
    interests = state["interests"]
    before = dict(interests)
    etype = rec["type"]
    if etype == "identify":
        for name in (props.get("traits") or {}).get("interests") or ():
            bump(interests, name.strip().lower(), INTEREST_WEIGHTS["declared"])
    if rec["source"] == "social" and props.get("topic"):
        bump(interests, props["topic"].strip().lower(), INTEREST_WEIGHTS["social"])
    category = props.get("category")
    if category:
        weight = (
            INTEREST_WEIGHTS["purchase"]
            if etype in PURCHASE_TYPES
            else INTEREST_WEIGHTS["cart"]
            if etype == "add_to_cart"
            else INTEREST_WEIGHTS["view"]
            if etype == "product_view"
            else 0
        )
        if weight:
            bump(interests, category.strip().lower(), weight)
    return interests != before


def _fold_identifiers(state: State, rec: EventRecord) -> bool:
    ids = state["identifiers"]
    changed = False
    for field_name, list_name in (
        ("customer_id", "customer_ids"),
        ("anonymous_id", "anonymous_ids"),
        ("email_hash", "email_hashes"),
    ):
        value = rec[field_name]
        known = ids[list_name]
        if value and value not in known:
            bisect.insort(known, value)  # sorted, so arrival order does not matter
            del known[16:]  # bounded; the identity graph (issue 5) keeps the full set
            changed = changed or value in known
    return changed


def _channel_block(state: State, channel: str) -> tuple[str, dict[str, Any]]:
    channels = state["channels"]
    if channel not in channels and len(channels) >= MAX_CHANNELS:
        channel = OTHER_CHANNEL
    block = channels.get(channel)
    if block is None:
        block = channels[channel] = new_activity()
    return channel, block


def apply_event(state: State, rec: EventRecord) -> set[str]:
    """Fold one (not yet seen) event into ``state`` in place; return the parts changed."""
    changed: set[str] = set()
    if _fold_identifiers(state, rec):
        changed.add("identifiers")
    if rec["source"] == "identify":
        if _fold_traits(state, rec):
            changed.add("traits")
        if _fold_interests(state, rec):
            changed.add("interests")
        return changed  # identify/alias describe the person, not channel behaviour
    changed |= fold_activity(state["all"], rec)
    channel, block = _channel_block(state, rec["channel"])
    fold_activity(block, rec)
    changed.add(f"channels.{channel}")
    if _fold_interests(state, rec):
        changed.add("interests")
    return changed


def apply_events(
    state: State | None, key: str, records: list[EventRecord], dedup_window: int = DEFAULT_DEDUP_WINDOW
) -> Step:
    """Fold a batch of one customer's events into their state.

    The input state is not modified: the step works on a copy and returns it. Events
    whose ``event_id`` is among the last ``dedup_window`` applied are skipped; if the
    very last applied event comes again (a replay after a crash between the table write
    and the outputs), ``replayed_last`` asks the caller to publish the profile again.
    """
    current = copy_state(state) if state is not None else new_state(key)
    step = Step(current)
    seen = current["seen"]
    seen_set = set(seen)
    changed: set[str] = set()
    for rec in records:
        event_id = rec["event_id"]
        if event_id in seen_set:
            step.duplicates += 1
            if event_id == current["last_event_id"]:
                step.replayed_last = True
            continue
        changed |= apply_event(current, rec)
        current["events"] += 1
        step.applied += 1
        step.new_records.append(rec)
        seen_set.add(event_id)
        seen.append(event_id)
        current["last_event_id"] = event_id
    if dedup_window and len(seen) > dedup_window:
        del seen[:-dedup_window]
    elif not dedup_window:
        seen.clear()
    if step.applied:
        current["version"] += 1
        step.changed = sorted(changed)
        step.replayed_last = False
    return step


def copy_state(state: State) -> State:
    """A deep copy of a JSON-ready state (faster than :func:`copy.deepcopy`)."""
    return orjson.loads(orjson.dumps(state))


# --- merging two profiles (identity stitching) ------------------------------------------------------

MAX_MERGED_FROM = 20
COUNTER_CAPS = {"types": 64, "os": 8}


def _add_counters(into: dict[str, Any], other: dict[str, Any], cap: int = TOP_CAP) -> None:
    for key, count in sorted(other.items()):
        bump(into, key, count, cap=cap)


def _merge_block(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Email, app, social and offline blocks: counts add, times keep the latest, counters add."""
    for key, value in other.items():
        if key.endswith("_ts"):
            into[key] = _max(into.get(key), value) if value is not None else into.get(key)
        elif isinstance(value, dict):
            _add_counters(into.setdefault(key, {}), value, COUNTER_CAPS.get(key, TOP_CAP))
        else:
            into[key] = into.get(key, 0) + value


def merge_sessions(a: list[list[int]], b: list[list[int]], gap: int = SESSION_GAP_MS) -> list[list[int]]:
    """The sessions of the union of two customers' event times.

    >>> merge_sessions([[0, 10], [100_000, 100_000]], [[20, 30]], gap=50)
    [[0, 30], [100000, 100000]]
    """
    out: list[list[int]] = []
    for start, end in sorted([*a, *b]):
        if out and start - out[-1][1] <= gap:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def merge_activity(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Fold the activity block ``other`` into ``into`` (in place), as if its events had come here."""
    into["events"] += other["events"]
    _add_counters(into["types"], other["types"], 64)
    if other["first_ts"] is not None:
        into["first_ts"] = _min(into["first_ts"], other["first_ts"])
        into["last_ts"] = _max(into["last_ts"], other["last_ts"])
    days = sorted(set(into["days"]) | set(other["days"]))
    cut = max(0, len(days) - MAX_DAYS)
    into["days"] = days[cut:]
    into["days_dropped"] += other["days_dropped"] + cut
    sessions = merge_sessions(into["sessions"], other["sessions"])
    cut = max(0, len(sessions) - MAX_SESSIONS)
    into["sessions"] = sessions[cut:]
    into["sessions_dropped"] += other["sessions_dropped"] + cut
    for name in ("orders", "revenue_cents", "discounted_orders"):
        into[name] += other[name]
    if other["first_order_ts"] is not None:
        into["first_order_ts"] = _min(into["first_order_ts"], other["first_order_ts"])
        into["last_order_ts"] = _max(into["last_order_ts"], other["last_order_ts"])
    for order in other["recent_orders"]:
        _remember_order(into, list(order))
    for name in ("categories", "devices", "searches"):
        _add_counters(into[name], other[name])
    for name, counter in other["referrers"].items():
        _add_counters(into["referrers"].setdefault(name, {}), counter)
    for name in ("email", "app", "social", "offline"):
        if name in other:
            _merge_block(into.setdefault(name, {}), other[name])


def merge_states(into: State, other: State, dedup_window: int = DEFAULT_DEDUP_WINDOW) -> State:
    """The profile of ``into``'s customer after absorbing ``other`` (a profile stitched to it).

    Per-field rules (README: "Identity"): counts and money add; first seen is the earliest,
    last seen the latest; sessions and active days are recomputed over both; traits are the
    newest by event time; interests, categories, devices and other counters add; identifiers
    are the union. The segments stay ``into``'s until the merged profile is scored again.
    Neither input is modified.

    >>> a = apply_events(None, "c-1", [{"event_id": "e1", "source": "email", "type": "open", "ts": 5,
    ...     "customer_id": "c-1", "anonymous_id": None, "email_hash": None, "channel": "email",
    ...     "device": None, "properties": {}}]).state
    >>> b = apply_events(None, "anon:x", [{"event_id": "e2", "source": "email", "type": "click", "ts": 2,
    ...     "customer_id": None, "anonymous_id": "x", "email_hash": None, "channel": "email",
    ...     "device": None, "properties": {}}]).state
    >>> m = merge_states(a, b)
    >>> m["events"], m["all"]["first_ts"], m["all"]["email"], m["merged_from"], m["version"]
    (2, 2, {'open': 1, 'last_open_ts': 5, 'click': 1, 'last_click_ts': 2}, ['anon:x'], 2)
    """
    out = copy_state(into)
    other = copy_state(other)
    out["events"] += other["events"]
    merge_activity(out["all"], other["all"])
    for channel, block in other["channels"].items():
        _, target = _channel_block(out, channel)
        merge_activity(target, block)
    for name, value in other["traits"].items():
        ts = other["trait_ts"][name]
        seen_ts = out["trait_ts"].get(name)
        if seen_ts is None or ts > seen_ts or (ts == seen_ts and repr(value) > repr(out["traits"].get(name))):
            out["traits"][name] = value
            out["trait_ts"][name] = ts
    _add_counters(out["interests"], other["interests"])
    for name, values in other["identifiers"].items():
        out["identifiers"][name] = sorted(set(out["identifiers"].get(name, [])) | set(values))[:16]
    seen = list(dict.fromkeys([*other["seen"], *out["seen"]]))
    out["seen"] = seen[-dedup_window:] if dedup_window else []
    out["last_event_id"] = out["last_event_id"] or other["last_event_id"]
    merged = [*out.get("merged_from", []), other["customer_id"], *other.get("merged_from", [])]
    out["merged_from"] = list(dict.fromkeys(merged))[:MAX_MERGED_FROM]
    out["version"] = max(out["version"], other["version"]) + 1
    return out

"""Channel journeys: the touches of a customer in event time, their hops and attribution.

A *touch* is an interaction the customer made on a channel (a page or product view, an
email open or click, an app open, a social reaction, a store visit, a purchase; not an
email the shop sent). A *hop* is two consecutive touches, by event time, on different
channels. A referral that names another channel (``utm_source`` or the ``referrer`` of a
known platform) adds a touch on that channel just before the event, so "clicked an
Instagram ad, landed on the website" is one hop instagram > web, counted once.

:func:`record_journey` inserts a customer's new touches into their bounded timeline
(``state["journey"]``) and returns what changed as deltas: hops added or withdrawn (a
late touch can split a hop already seen), conversions, and the attribution credit of
every purchase whose look-back window the new touches fall into. Summing the deltas
gives the same totals whatever the arrival order, so the global views (transition
matrix, attribution) can be plain counters.

Examples
--------
>>> def touch(eid, ts, channel, etype="page_view", revenue=None, **props):
...     p = dict(props, **({"revenue": revenue} if revenue else {}))
...     return {"event_id": eid, "source": "clickstream", "type": etype, "ts": ts,
...             "channel": channel, "properties": p}
>>> state = {"journey": None}
>>> d = record_journey(state, [touch("a", 1_000, "amazon"), touch("b", 60_000, "web")])
>>> [(h.from_channel, h.to_channel, h.gap_ms, h.sign) for h in d.hops]
[('amazon', 'web', 59000, 1)]
>>> d = record_journey(state, [touch("c", 120_000, "web", "purchase", revenue=40.0)])
>>> [(h.from_channel, h.to_channel, h.converted, h.sign) for h in d.hops]   # the hop converts
[('amazon', 'web', True, 0)]
>>> sorted((c.model, c.channel, c.credit) for c in d.credits if c.model in ("first_touch", "last_touch"))
[('first_touch', 'amazon', 1.0), ('last_touch', 'web', 1.0)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from models.features import MARKETPLACES, channel_group
from models.profile import DAY_MS, PURCHASE_TYPES, State

MAX_TOUCHES = 200  # touches kept per customer; older ones leave hop counts and totals as they were
MAX_PURCHASE_PATHS = 10
PATH_SHOWN = 20
ATTRIBUTION_MODELS = ("first_touch", "last_touch", "linear", "time_decay")

# Events the shop did to the customer, or that end a relationship: not touches.
PASSIVE = frozenset({("email", "sent"), ("email", "bounce"), ("email", "unsubscribe"), ("app", "uninstall"),
                     ("identify", "identify"), ("identify", "alias")})

# Platforms a referral can name (utm_source values, referrer domains): marketplaces and social
# platforms, the channels a customer can come from. Search engines and ad networks are not channels.
REFERRAL_CHANNELS = frozenset(
    MARKETPLACES | {"instagram", "facebook", "tiktok", "pinterest", "youtube", "twitter", "x", "snapchat"}
)


@dataclass(frozen=True, slots=True)
class Hop:
    """A hop, added (``sign`` +1), withdrawn (-1) or with a changed ``converted`` (0)."""

    from_channel: str
    to_channel: str
    from_ts: int
    ts: int  # event time of the touch on the destination channel
    gap_ms: int
    converted: bool
    sign: int


@dataclass(frozen=True, slots=True)
class Credit:
    """A change of a channel's attribution credit for one purchase under one model."""

    model: str
    channel: str
    purchase_ts: int
    credit: float  # share of one conversion (negative when a late touch takes credit away)
    revenue: float


@dataclass(slots=True)
class JourneyDelta:
    hops: list[Hop] = field(default_factory=list)
    credits: list[Credit] = field(default_factory=list)
    late: int = 0  # touches older than the kept timeline: counted, not placed

    @property
    def changed(self) -> bool:
        return bool(self.hops or self.credits)


def new_journey() -> dict[str, Any]:
    return {"touches": [], "horizon": None, "dropped": 0, "late": 0, "first": None, "hops": {}, "converted": {}}


# --- touches ------------------------------------------------------------------------------------


def referral_channel(props: dict[str, Any]) -> str | None:
    """The platform a referral names, if it is a known one.

    >>> referral_channel({"utm_source": "Instagram"}), referral_channel({"referrer": "https://www.ebay.de/itm/1"})
    ('instagram', 'ebay')
    >>> referral_channel({"referrer": "https://example.org/"}) is None
    True
    """
    source = str(props.get("utm_source") or "").strip().lower()
    if source in REFERRAL_CHANNELS:
        return source
    referrer = props.get("referrer")
    if referrer:
        host = urlsplit(referrer if "//" in str(referrer) else f"//{referrer}").hostname or ""
        labels = [x for x in host.split(".") if x and x not in ("www", "m", "l", "lm", "co", "com")]
        for label in labels:
            if label in REFERRAL_CHANNELS:
                return label
    return None


def touches_of(records: Iterable[dict[str, Any]]) -> list[list]:
    """Touches ``[ts, rank, channel, purchase, revenue_cents, event_id]`` of event records.

    ``rank`` orders touches of the same millisecond (a referral before the event it led to).
    """
    out = []
    for rec in records:
        if (rec["source"], rec["type"]) in PASSIVE or not rec.get("channel"):
            continue
        props = rec.get("properties") or {}
        channel = rec["channel"]
        referral = referral_channel(props)
        if referral and referral != channel:
            out.append([rec["ts"], 0, referral, 0, 0, f"{rec['event_id']}/referral"])
        purchase = rec["type"] in PURCHASE_TYPES
        revenue = round(float(props.get("revenue") or 0) * 100) if purchase else 0
        out.append([rec["ts"], 1, channel, int(purchase), revenue, rec["event_id"]])
    return out


def _key(t: list) -> tuple:
    return (t[0], t[1], t[2], t[5])


def hops_of(touches: list[list], window_ms: int) -> dict[tuple, bool]:
    """Hops of a sorted timeline: (from, to, from_ts, ts) -> converted.

    A hop converts when a purchase on its destination channel follows within ``window_ms``.
    """
    hops = {}
    for i in range(1, len(touches)):
        a, b = touches[i - 1], touches[i]
        if a[2] == b[2]:
            continue
        converted = False
        for t in touches[i:]:
            if t[0] - b[0] > window_ms:
                break
            if t[3] and t[2] == b[2]:
                converted = True
                break
        hops[(a[2], b[2], a[0], b[0])] = converted
    return hops


def purchase_paths(touches: list[list], window_ms: int) -> dict[str, tuple[list[list], list]]:
    """For each purchase (by event id): the touches of its look-back window (ending with it)."""
    out = {}
    for i, t in enumerate(touches):
        if t[3]:
            start = i
            while start > 0 and t[0] - touches[start - 1][0] <= window_ms:
                start -= 1
            out[t[5]] = (touches[start : i + 1], t)
    return out


def attribute(path: list[list], purchase: list, halflife_ms: int) -> dict[tuple[str, str], float]:
    """Credit per (model, channel) for one purchase; each model's credits sum to 1.

    >>> p = [[0, 1, "instagram", 0, 0, "a"], [DAY_MS, 1, "web", 0, 0, "b"], [DAY_MS, 1, "web", 1, 5000, "c"]]
    >>> credit = attribute(p, p[-1], halflife_ms=DAY_MS)
    >>> credit[("linear", "web")], credit[("first_touch", "instagram")], credit[("assists", "instagram")]
    (0.6667, 1.0, 1.0)
    >>> credit[("time_decay", "instagram")]   # a day older, half the weight: 0.5 / (0.5 + 1 + 1)
    0.2
    """
    credit: dict[tuple[str, str], float] = {}

    def add(model: str, channel: str, value: float) -> None:
        credit[(model, channel)] = credit.get((model, channel), 0.0) + value

    add("first_touch", path[0][2], 1.0)
    add("last_touch", purchase[2], 1.0)
    for t in path:
        add("linear", t[2], 1.0 / len(path))
    weights = [0.5 ** ((purchase[0] - t[0]) / halflife_ms) for t in path]
    total = sum(weights)
    for t, w in zip(path, weights):
        add("time_decay", t[2], w / total)
    for channel in {t[2] for t in path} - {purchase[2]}:
        add("assists", channel, 1.0)  # touched before a purchase made on another channel
    return {k: round(v, 4) for k, v in credit.items()}


# --- the step -------------------------------------------------------------------------------


def record_journey(
    state: State, records: Iterable[dict[str, Any]], window_ms: int = 7 * DAY_MS, halflife_ms: int = DAY_MS
) -> JourneyDelta:
    """Insert the touches of ``records`` into ``state["journey"]`` (in place); return the deltas."""
    journey = state.get("journey") or new_journey()
    state["journey"] = journey
    return _insert(journey, touches_of(records), window_ms, halflife_ms)


def _insert(journey: dict[str, Any], touches: list[list], window_ms: int, halflife_ms: int) -> JourneyDelta:
    journey["window_ms"] = window_ms  # the view shows purchase paths over the same window
    delta = JourneyDelta()
    known = {t[5] for t in journey["touches"]}
    fresh = []
    for t in touches:
        if t[5] in known:
            continue
        if journey["horizon"] is not None and _key(t) <= tuple(journey["horizon"]):
            delta.late += 1
            continue
        fresh.append(t)
        known.add(t[5])
    journey["late"] += delta.late
    if not fresh:
        return delta
    before = journey["touches"]
    after = sorted(before + fresh, key=_key)
    old_hops, new_hops = hops_of(before, window_ms), hops_of(after, window_ms)
    for hop, converted in new_hops.items():
        if hop not in old_hops:
            delta.hops.append(_hop(hop, converted, +1))
        elif old_hops[hop] != converted:
            delta.hops.append(_hop(hop, converted, 0))
    for hop, converted in old_hops.items():
        if hop not in new_hops:
            delta.hops.append(_hop(hop, converted, -1))
    delta.credits = _credit_changes(before, after, fresh, window_ms, halflife_ms)
    _count(journey, delta)
    first = min(after[0][:3], journey["first"] or after[0][:3])
    journey["first"] = first
    if len(after) > MAX_TOUCHES:
        cut = len(after) - MAX_TOUCHES
        journey["horizon"] = list(_key(after[cut - 1]))
        journey["dropped"] += cut
        after = after[cut:]
    journey["touches"] = after
    return delta


def merge_journey(
    state: State, other: dict[str, Any] | None, window_ms: int = 7 * DAY_MS, halflife_ms: int = DAY_MS
) -> tuple[JourneyDelta, JourneyDelta]:
    """Absorb the journey ``other`` (of a profile stitched to this one) into ``state["journey"]``.

    Returns two deltas for the global counters: ``withdrawn`` takes back everything the
    absorbed timeline had counted (its hops and purchase credit, signs reversed) and
    ``added`` is what its touches add to this timeline (their own hops again, plus the hops
    and credit across the two). Summed, the counters equal those of one customer who made
    every touch.
    """
    journey = state.get("journey") or new_journey()
    state["journey"] = journey
    if not other or not other["touches"]:
        if other:
            journey["late"] += other["late"]
            journey["dropped"] += other["dropped"]
        return JourneyDelta(), JourneyDelta()
    touches = [list(t) for t in other["touches"]]
    withdrawn = JourneyDelta(
        hops=[_hop(hop, converted, -1) for hop, converted in hops_of(touches, window_ms).items()],
        credits=[
            Credit(c.model, c.channel, c.purchase_ts, c.credit, c.revenue)
            for c in _credit_changes(touches, [], touches, window_ms, halflife_ms)
        ],
    )
    if other["horizon"] is not None and (journey["horizon"] is None or other["horizon"] > journey["horizon"]):
        journey["horizon"] = other["horizon"]  # below the absorbed timeline's horizon nothing is known
    added = _insert(journey, touches, window_ms, halflife_ms)
    journey["late"] += other["late"]
    journey["dropped"] += other["dropped"]
    if other["first"] is not None:
        journey["first"] = min(journey["first"] or other["first"], other["first"])
    return withdrawn, added


def _hop(hop: tuple, converted: bool, sign: int) -> Hop:
    a, b, ta, tb = hop
    return Hop(a, b, ta, tb, tb - ta, converted, sign)


def _credit_changes(before: list, after: list, fresh: list, window_ms: int, halflife_ms: int) -> list[Credit]:
    lo = min(t[0] for t in fresh)
    hi = max(t[0] for t in fresh) + window_ms
    old_paths = {k: v for k, v in purchase_paths(before, window_ms).items() if lo <= v[1][0] <= hi}
    new_paths = {k: v for k, v in purchase_paths(after, window_ms).items() if lo <= v[1][0] <= hi}
    changes: dict[tuple[str, str, int], list[float]] = {}
    for paths, sign in ((old_paths, -1), (new_paths, +1)):
        for path, purchase in paths.values():
            revenue = purchase[4] / 100
            for (model, channel), value in attribute(path, purchase, halflife_ms).items():
                c = changes.setdefault((model, channel, purchase[0]), [0.0, 0.0])
                c[0] += sign * value
                c[1] += sign * value * revenue if model != "assists" else 0.0
            # The converting path itself: the channels of the window, in order, repeats collapsed.
            c = changes.setdefault(("path", ">".join(_collapse([t[2] for t in path])), purchase[0]), [0.0, 0.0])
            c[0] += sign
            c[1] += sign * revenue
    return [
        Credit(model, channel, ts, round(credit, 4), round(revenue, 2))
        for (model, channel, ts), (credit, revenue) in sorted(changes.items())
        if abs(credit) > 1e-9 or abs(revenue) > 1e-9
    ]


def _count(journey: dict[str, Any], delta: JourneyDelta) -> None:
    """Keep the customer's hop and converted-hop counts by pair in step with the deltas."""
    hops, converted = journey["hops"], journey["converted"]
    for h in delta.hops:
        pair = f"{h.from_channel}>{h.to_channel}"
        hops[pair] = hops.get(pair, 0) + h.sign
        change = (1 if h.converted else -1) if h.sign == 0 else (h.sign if h.converted else 0)
        converted[pair] = converted.get(pair, 0) + change
    for counter in (hops, converted):
        for pair in [p for p, n in counter.items() if n == 0]:
            del counter[pair]


# --- the customer's view --------------------------------------------------------------------------


def mover_type(purchases: list[dict[str, Any]]) -> str | None:
    """What kind of mover the purchase paths show, or None when every purchase stayed on one channel.

    >>> mover_type([{"channel": "web", "path": ["amazon", "web"]}])
    'marketplace browser, web buyer'
    >>> mover_type([{"channel": "amazon", "path": ["amazon", "ebay", "amazon"]}])
    'multi-marketplace price checker'
    >>> mover_type([{"channel": "app", "path": ["instagram", "app"]}])
    'social to app'
    >>> mover_type([{"channel": "web", "path": ["web"]}]) is None
    True
    """
    kinds: dict[str, int] = {}
    for p in purchases:
        others = [c for c in p["path"] if c != p["channel"]]
        if not others:
            continue
        markets = {c for c in p["path"] if c in MARKETPLACES}
        buy_group = channel_group(p["channel"])
        if len(markets) >= 2:
            kind = "multi-marketplace price checker"
        elif markets and buy_group == "web":
            kind = "marketplace browser, web buyer"
        elif buy_group == "store" and any(channel_group(c) in ("web", "app") for c in others):
            kind = "researches online, buys in store"
        else:
            source = channel_group(others[-1])
            kind = f"{source} to {buy_group}" if source != buy_group else f"{source} to {p['channel']}"
        kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return None
    return min(kinds, key=lambda k: (-kinds[k], k))


def render_journey(journey: dict[str, Any] | None) -> dict[str, Any]:
    """The journey part of the published profile."""
    if not journey or not journey["touches"]:
        return {"path": [], "hops": {}, "converted_hops": {}, "first_touch": None, "last_touch": None,
                "purchases": [], "mover": False, "mover_type": None, "late_touches": 0}
    touches = journey["touches"]
    path: list[str] = []
    for t in touches:
        if not path or path[-1] != t[2]:
            path.append(t[2])
    purchases = [
        {"ts": purchase[0], "channel": purchase[2], "revenue": purchase[4] / 100,
         "path": _collapse([t[2] for t in p])}
        for p, purchase in purchase_paths(touches, journey.get("window_ms", 7 * DAY_MS)).values()
    ][-MAX_PURCHASE_PATHS:]
    kind = mover_type(purchases)
    return {
        "path": path[-PATH_SHOWN:],
        "hops": dict(sorted(journey["hops"].items())),
        "converted_hops": dict(sorted(journey["converted"].items())),
        "first_touch": journey["first"][2] if journey["first"] else None,
        "last_touch": touches[-1][2],
        "purchases": purchases,
        "mover": kind is not None,
        "mover_type": kind,
        "late_touches": journey["late"],
    }


def _collapse(channels: list[str]) -> list[str]:
    out: list[str] = []
    for c in channels:
        if not out or out[-1] != c:
            out.append(c)
    return out


# --- global views ---------------------------------------------------------------------------------
# The deltas of every customer, flattened into (key, event time, value) entries that plain
# counters can sum: hops and conversions by pair, credit and revenue by model and channel.


def journey_entries(delta: JourneyDelta) -> list[tuple[str, int, float]]:
    """Counter entries of a delta: ``hop|a>b``, ``conv|a>b``, ``credit|model|channel``,
    ``revenue|model|channel`` (``assists`` is a model with credit 1 per assisted purchase;
    ``path`` counts purchases by their converting path, ``credit|path|a>b>c``).

    >>> d = JourneyDelta(hops=[Hop("amazon", "web", 0, 5, 5, True, 1)],
    ...                  credits=[Credit("linear", "web", 9, 0.5, 10.0)])
    >>> journey_entries(d)
    [('hop|amazon>web', 5, 1.0), ('conv|amazon>web', 5, 1.0), ('credit|linear|web', 9, 0.5), ('revenue|linear|web', 9, 10.0)]
    """
    out: list[tuple[str, int, float]] = []
    for h in delta.hops:
        pair = f"{h.from_channel}>{h.to_channel}"
        if h.sign:
            out.append((f"hop|{pair}", h.ts, float(h.sign)))
        change = (1 if h.converted else -1) if h.sign == 0 else (h.sign if h.converted else 0)
        if change:
            out.append((f"conv|{pair}", h.ts, float(change)))
    for c in delta.credits:
        if c.credit:
            out.append((f"credit|{c.model}|{c.channel}", c.purchase_ts, c.credit))
        if c.revenue:
            out.append((f"revenue|{c.model}|{c.channel}", c.purchase_ts, c.revenue))
    return out


def split_totals(totals: dict[str, float]) -> dict[str, Any]:
    """Counter totals by kind: transitions, conversions, credit and revenue per model and channel.

    >>> split_totals({"hop|a>b": 3.0, "conv|a>b": 1.0, "credit|linear|b": 0.5})["transitions"]
    {('a', 'b'): 3.0}
    """
    out: dict[str, Any] = {"transitions": {}, "conversions": {}, "credit": {}, "revenue": {}}
    for key, value in totals.items():
        kind, _, rest = key.partition("|")
        if kind in ("hop", "conv"):
            a, _, b = rest.partition(">")
            out["transitions" if kind == "hop" else "conversions"][(a, b)] = value
        elif kind in ("credit", "revenue"):
            model, _, channel = rest.partition("|")
            out[kind].setdefault(model, {})[channel] = value
    return out


def week_windows(day_ms: int, daily: Any) -> list[tuple[int, float]]:
    """The 7-day windows (sliding by a day) that hold ``day_ms``: (first day's start in ms, the sum of
    its 7 daily values), where ``daily(start_ms)`` is the value of the day starting then.

    >>> vals = {0: 1.0, DAY_MS: 2.0, 7 * DAY_MS: 4.0}
    >>> week_windows(DAY_MS + 5, lambda d: vals.get(d, 0.0))[:3]
    [(-432000000, 3.0), (-345600000, 3.0), (-259200000, 3.0)]
    >>> week_windows(DAY_MS + 5, lambda d: vals.get(d, 0.0))[-1]
    (86400000, 6.0)
    """
    day = day_ms - day_ms % DAY_MS
    values = {d: daily(d) for d in range(day - 6 * DAY_MS, day + 7 * DAY_MS, DAY_MS)}
    return [(start, sum(values[start + i * DAY_MS] for i in range(7)))
            for start in range(day - 6 * DAY_MS, day + DAY_MS, DAY_MS)]



def week_windows_of(days: dict[int, float]) -> list[tuple[int, float]]:
    """Every 7-day window (by its first day's start) that holds one of ``days`` (day start in ms ->
    value), with its sum: what the 7-day windows in Redis must hold for these daily values.

    >>> week_windows_of({0: 1.0, 2 * DAY_MS: 2.0})[:3]
    [(-518400000, 1.0), (-432000000, 1.0), (-345600000, 3.0)]
    >>> len(week_windows_of({0: 1.0, 2 * DAY_MS: 2.0}))
    9
    """
    windows: dict[int, float] = {}
    for day in days:
        for start, total in week_windows(day, lambda d: days.get(d, 0.0)):
            windows[start] = total
    return sorted(windows.items())

class JourneyBuffer:
    """Counter entries of many deltas merged by key and day until they are flushed.

    Windows are whole UTC days (daily, and 7 days sliding by a day), so the
    day an entry falls on decides all its windows; entries of days older than
    ``retention_ms`` before now are *late*: they still count in the all-time totals, not
    in any window.

    >>> buf = JourneyBuffer(retention_ms=35 * DAY_MS)
    >>> buf.add([("hop|a>b", DAY_MS + 5, 1.0), ("hop|a>b", DAY_MS + 9, 1.0), ("hop|a>b", 5, 1.0)])
    >>> buf.drain(now_ms=2 * DAY_MS)
    [('hop|a>b', 0, 1.0, False), ('hop|a>b', 86400000, 2.0, False)]
    >>> buf.add([("hop|a>b", 5, 1.0)]); buf.drain(now_ms=40 * DAY_MS)
    [('hop|a>b', 0, 1.0, True)]
    """

    def __init__(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms
        self.pending: dict[tuple[str, int], float] = {}

    def add(self, entries: Iterable[tuple[str, int, float]]) -> None:
        for key, ts, value in entries:
            day = ts - ts % DAY_MS
            self.pending[(key, day)] = self.pending.get((key, day), 0.0) + value

    def drain(self, now_ms: int) -> list[tuple[str, int, float, bool]]:
        """Everything buffered as (key, day start, value, late); empties the buffer."""
        pending, self.pending = self.pending, {}
        oldest = now_ms - self.retention_ms
        return [
            (key, day, round(value, 6), day + DAY_MS <= oldest)
            for (key, day), value in sorted(pending.items())
            if abs(value) > 1e-9
        ]

    def __len__(self) -> int:
        return len(self.pending)

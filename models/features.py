"""Feature vectors for segmentation, from a profile state (:mod:`models.profile`).

One vector per scope: ``all`` (the merged profile) and each channel (its sub-profile).
Every feature is a float, documented in :data:`FEATURES`; counts and money are
``log1p``-compressed so that a few heavy customers do not dominate, shares and rates are
in [0, 1]. Scaling to zero mean and unit variance happens online in the model
(:mod:`models.segments`), not here.

Examples
--------
>>> from models.profile import apply_events
>>> rec = {"event_id": "e1", "source": "clickstream", "type": "purchase",
...        "ts": 1_795_341_600_000, "customer_id": "c-1", "anonymous_id": None,
...        "email_hash": None, "channel": "amazon", "device": "desktop",
...        "properties": {"revenue": 30.0, "category": "books"}}
>>> state = apply_events(None, "c-1", [rec]).state
>>> x = extract_features(state, "all", as_of_ms=1_795_341_600_000)
>>> x["orders"], x["share_marketplace"], x["share_desktop"]
(0.6931, 1.0, 1.0)
>>> sorted(x) == sorted(FEATURES)
True
>>> extract_features(state, "email", as_of_ms=0) is None   # no activity on that channel
True
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache
from typing import Any

from models.profile import DAY_MS, State

MARKETPLACES = frozenset({"amazon", "ebay", "etsy", "walmart", "zalando", "otto", "aliexpress", "bol", "allegro"})
STORE_CHANNELS = frozenset({"store"})
CHANNEL_GROUPS = ("web", "marketplace", "app", "email", "social", "store")
CATEGORY_BUCKETS = 6

FEATURES: dict[str, str] = {
    "recency": "log1p(days from the last event to the reference time)",
    "events": "log1p(events)",
    "sessions": "log1p(sessions)",
    "active_days": "log1p(active days)",
    "orders": "log1p(orders)",
    "revenue": "log1p(revenue)",
    "average_order_value": "log1p(revenue / orders), 0 without orders",
    "discount_share": "share of orders with a discount",
    "email_open_rate": "opens / sent (0 without email)",
    "email_click_rate": "clicks / sent (0 without email)",
    "app_opens": "log1p(app opens + push opens)",
    "social_interactions": "log1p(social interactions)",
    "store_visits": "log1p(store visits + events attended)",
    **{f"share_{g}": f"share of events on {g} channels (merged scope; the channel's own group otherwise)"
       for g in CHANNEL_GROUPS},
    **{f"share_{d}": f"share of events from {d} devices" for d in ("mobile", "desktop", "tablet")},
    **{f"category_{i}": f"share of category interest in hash bucket {i} of {CATEGORY_BUCKETS}"
       for i in range(CATEGORY_BUCKETS)},
}


@lru_cache(maxsize=1024)
def channel_group(channel: str) -> str:
    """The channel group a channel belongs to (for the channel-mix features).

    >>> channel_group("ebay"), channel_group("instagram"), channel_group("web")
    ('marketplace', 'social', 'web')
    """
    if channel in MARKETPLACES:
        return "marketplace"
    if channel in STORE_CHANNELS:
        return "store"
    if channel in ("web", "app", "email"):
        return channel
    return "social"


@lru_cache(maxsize=4096)
def category_bucket(category: str) -> int:
    """A stable bucket for a category (crc32, the same in every process)."""
    return zlib.crc32(category.encode("utf-8")) % CATEGORY_BUCKETS


def _l(value: float) -> float:
    """``round(log1p(max(0, value)), 4)``; 0.0 for a count of nothing (most of them)."""
    return round(math.log1p(value), 4) if value > 0 else 0.0


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if part else 0.0


_GROUP_KEYS = tuple((g, f"share_{g}") for g in CHANNEL_GROUPS)
_DEVICE_KEYS = tuple((d, f"share_{d}") for d in ("mobile", "desktop", "tablet"))
_CATEGORY_KEYS = tuple(f"category_{i}" for i in range(CATEGORY_BUCKETS))


def extract_features(state: State, scope: str, as_of_ms: int) -> dict[str, float] | None:
    """The feature vector of ``state`` for ``scope`` (``all`` or a channel); None without activity.

    Called once per scope on every profile update: the zero cases skip ``round`` and ``log1p``
    (same values), and channel groups and category buckets are looked up once per name.
    """
    act: dict[str, Any] | None = state["all"] if scope == "all" else state["channels"].get(scope)
    if act is None or not act["events"]:
        return None
    events = act["events"]
    orders = act["orders"]
    revenue = act["revenue_cents"] / 100
    mail = act.get("email", {})
    sent = mail.get("sent", 0)
    app = act.get("app", {})
    off = act.get("offline", {})
    social = act.get("social", {})
    x = {
        "recency": _l(max(0, as_of_ms - act["last_ts"]) / DAY_MS),
        "events": _l(events),
        "sessions": _l(len(act["sessions"]) + act["sessions_dropped"]),
        "active_days": _l(len(act["days"]) + act["days_dropped"]),
        "orders": _l(orders),
        "revenue": _l(revenue),
        "average_order_value": _l(revenue / orders) if orders else 0.0,
        "discount_share": _share(act["discounted_orders"], orders) if orders else 0.0,
        "email_open_rate": round(min(1.0, mail.get("open", 0) / sent), 4) if sent else 0.0,
        "email_click_rate": round(min(1.0, mail.get("click", 0) / sent), 4) if sent else 0.0,
        "app_opens": _l(app.get("opens", 0) + app.get("push_opens", 0)),
        "social_interactions": _l(sum((social.get("interactions") or {}).values())),
        "store_visits": _l(off.get("store_visits", 0) + off.get("events_attended", 0)),
    }
    groups = dict.fromkeys(CHANNEL_GROUPS, 0)
    if scope == "all":
        for name, block in state["channels"].items():
            groups[channel_group(name)] += block["events"]
    else:
        groups[channel_group(scope)] = events
    total = sum(groups.values()) or 1
    for g, key in _GROUP_KEYS:
        x[key] = _share(groups[g], total)
    devices = act["devices"]
    dev_total = sum(devices.values()) or 1
    for d, key in _DEVICE_KEYS:
        x[key] = _share(devices.get(d, 0), dev_total)
    buckets = [0] * CATEGORY_BUCKETS
    for category, weight in act["categories"].items():
        buckets[category_bucket(category)] += weight
    cat_total = sum(buckets) or 1
    for key, weight in zip(_CATEGORY_KEYS, buckets):
        x[key] = _share(weight, cat_total)
    return x

"""Shared helpers of the unit tests of the pure core (``models/``).

Two things live here, offered through the ``ref`` fixture (and ``limits``):

* ``ref.record`` / ``ref.random_records``: event records in the :data:`models.events.EventRecord`
  shape, built by hand (seeded ``random.Random``), without going through the production code;
* ``ref.profile`` / ``ref.activity``: an independent, plain-Python recomputation of the public profile
  (:func:`models.view.render_profile`) from a list of records. It uses only the documented
  constants (session gap, category and interest weights, RFM thresholds) and the rules written
  in the contract and the module docstrings; it never calls the code under test.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from models.events import Limits
from models.profile import CATEGORY_WEIGHTS, INTEREST_WEIGHTS, SESSION_GAP_MS
from models.view import FREQUENCY_ORDERS, MONETARY_EUR, RECENCY_DAYS

T0 = 1_795_000_000_000  # 2026-11-18T03:06:40Z
NOW_MS = 1_795_400_000_000  # 2026-11-23, the "wall clock" of every test
DAY = 86_400_000
MINUTE = 60_000
HASH_KEY = b"unit-test-key"

# The contract's demographic traits (identify ``traits``), rendered under ``demographics``.
DEMOGRAPHICS = ("age", "gender", "region", "country", "income_band", "marital_status", "employment_status")
PURCHASES = ("purchase", "pos_purchase")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ref_iso(ms: int | None) -> str | None:
    """Epoch ms as ISO-8601 UTC with milliseconds and a Z, by integer arithmetic only."""
    if ms is None:
        return None
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def ref_top(counter: dict[str, int], n: int) -> list[str]:
    """Largest counts first, ties alphabetically."""
    return [k for k, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))][:n]


def ref_rate(part: int, whole: int) -> float | None:
    return None if not whole else round(min(1.0, part / whole), 4)


def ref_sessions(times: list[int]) -> list[list[int]]:
    """Sessions as [start, end]: a new one starts when the gap to the previous event is > 30 min."""
    out: list[list[int]] = []
    for t in sorted(times):
        if out and t - out[-1][1] <= SESSION_GAP_MS:
            out[-1][1] = t
        else:
            out.append([t, t])
    return out


def ref_rfm(orders: int, cents: int, last_order_ts: int | None, as_of: int | None) -> dict[str, Any]:
    if not orders:
        return {"recency_days": None, "frequency": 0, "monetary": 0.0, "r": 0, "f": 0, "m": 0, "score": "000"}
    days = (as_of - last_order_ts) // DAY
    d1, d2, d3, d4 = RECENCY_DAYS
    r = 5 if days <= d1 else 4 if days <= d2 else 3 if days <= d3 else 2 if days <= d4 else 1
    o1, o2, o3, o4 = FREQUENCY_ORDERS
    f = 1 if orders < o1 else 2 if orders < o2 else 3 if orders < o3 else 4 if orders < o4 else 5
    eur = cents / 100
    m1, m2, m3, m4 = MONETARY_EUR
    m = 1 if eur < m1 else 2 if eur < m2 else 3 if eur < m3 else 4 if eur < m4 else 5
    return {"recency_days": days, "frequency": orders, "monetary": eur, "r": r, "f": f, "m": m, "score": f"{r}{f}{m}"}


def make_record(
    event_id: str,
    etype: str,
    ts: int,
    *,
    source: str = "clickstream",
    channel: str = "web",
    customer_id: str | None = "c-1",
    anonymous_id: str | None = None,
    email_hash: str | None = None,
    device: str | None = None,
    **properties: Any,
) -> dict[str, Any]:
    """One record in the EventRecord shape (properties without None values)."""
    return {
        "event_id": event_id,
        "source": source,
        "type": etype,
        "ts": ts,
        "customer_id": customer_id,
        "anonymous_id": anonymous_id,
        "email_hash": email_hash,
        "channel": channel,
        "device": device,
        "properties": {k: v for k, v in properties.items() if v is not None},
    }


# --- a seeded stream of one customer's events ---------------------------------------------------

CLICK_CHANNELS = ("web", "amazon", "ebay", "etsy")
SOCIAL_CHANNELS = ("facebook", "instagram", "tiktok")
CATEGORIES = ("books", "shoes", "garden", "toys", "Kitchen ", "audio")
SEARCHES = ("Red Shoes", "red shoes ", "garden hose", "lego", "LEGO")
REFERRERS = (  # (referrer url, its domain without www.)
    ("https://www.instagram.com/p/abc", "instagram.com"),
    ("https://news.example.org/x?y=1", "news.example.org"),
    ("google.com/search?q=x", "google.com"),
)
UTM = {"utm_source": ("Newsletter", "newsletter", "google"), "utm_medium": ("email", "cpc"), "utm_campaign": ("bf26",)}
TOPICS = ("Hiking", "hiking ", "cooking", "gaming")
INTERESTS = ("Hiking", "books", "cooking", "yoga")
SCREENS = ("home", "cart", "product")
STORES = ("s-berlin", "s-paris", "s-rome")
SOURCE_TYPES = {
    "clickstream": ("page_view", "product_view", "search", "add_to_cart", "checkout", "purchase"),
    "email": ("sent", "sent", "open", "click", "unsubscribe", "bounce"),
    "app": ("install", "uninstall", "app_open", "screen_view", "push_open", "purchase"),
    "social": ("follow", "like", "comment", "share", "message", "mention", "ad_click"),
    "offline": ("store_visit", "event_attended", "pos_purchase"),
    "identify": ("identify", "identify", "alias"),
}
SOURCE_WEIGHTS = {"clickstream": 10, "email": 4, "app": 4, "social": 3, "offline": 2, "identify": 2}


def _timeline(rng: random.Random, n: int) -> list[int]:
    """n strictly increasing times: runs of close events, gaps around 30 min, and long breaks."""
    out, t = [], T0
    for _ in range(n):
        kind = rng.random()
        if kind < 0.6:
            t += rng.randint(1, 20 * MINUTE)
        elif kind < 0.7:
            t += rng.choice((SESSION_GAP_MS, SESSION_GAP_MS + 1))  # the boundary of the gap rule
        elif kind < 0.8:
            t += rng.randint(25 * MINUTE, 35 * MINUTE)
        else:
            t += rng.randint(2 * 3_600_000, 3 * DAY)
        out.append(t)
    return out


def _properties(rng: random.Random, source: str, etype: str, i: int) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if source == "clickstream":
        if etype in ("product_view", "add_to_cart", "checkout", "purchase"):
            p["category"] = rng.choice(CATEGORIES)
            p["product_id"] = f"p-{rng.randint(1, 30)}"
        if etype == "search":
            p["search_query"] = rng.choice(SEARCHES)
        if rng.random() < 0.3:
            url, _ = rng.choice(REFERRERS)
            p["referrer"] = url
        for name, values in UTM.items():
            if rng.random() < 0.2:
                p[name] = rng.choice(values)
    elif source == "email":
        if rng.random() < 0.8:
            p["campaign_type"] = rng.choice(("newsletter", "promotion", "transactional"))
            p["campaign_id"] = f"cmp-{rng.randint(1, 5)}"
    elif source == "app":
        if etype == "screen_view":
            p["screen"] = rng.choice(SCREENS)
        if etype == "app_open" and rng.random() < 0.7:
            p["os"] = rng.choice(("iOS", "ios", "android"))
        if etype == "purchase":
            p["category"] = rng.choice(CATEGORIES)
    elif source == "social":
        if rng.random() < 0.7:
            p["topic"] = rng.choice(TOPICS)
        p["post_id"] = f"post-{rng.randint(1, 9)}"
    elif source == "offline":
        p["store_id"] = rng.choice(STORES)
        if etype == "pos_purchase" and rng.random() < 0.5:
            p["category"] = rng.choice(CATEGORIES)
    elif source == "identify":
        if etype == "alias":
            p["previous_id"] = f"anon-old-{i}"
        else:
            traits: dict[str, Any] = {}
            for name, values in (
                ("age", (23, 31, 47)),
                ("gender", ("female", "male", "diverse")),
                ("country", ("DE", "FR")),
                ("region", ("eu-west", "eu-central")),
                ("income_band", ("low", "middle", "high")),
                ("loyalty_tier", ("gold", "silver")),  # an unknown trait: kept under traits
            ):
                if rng.random() < 0.6:
                    traits[name] = rng.choice(values)
            if rng.random() < 0.6:
                traits["interests"] = rng.sample(INTERESTS, rng.randint(1, 3))
            p["traits"] = traits
    if etype in PURCHASES:
        p["revenue"] = round(rng.uniform(1, 400), 2)
        if rng.random() < 0.5:
            p["discount"] = rng.choice((0.0, 0.0, 5.0, 12.5))
        if rng.random() < 0.7:
            p["order_id"] = f"o-{i:04d}"
    return p


def random_records(
    seed: int,
    n: int = 160,
    *,
    anonymous_ids: tuple[str, ...] = ("anon-1",),
    email_hashes: tuple[str, ...] = ("h" * 32,),
    key: str = "c-1",
) -> list[dict[str, Any]]:
    """A seeded, shuffled stream of one customer's events from every source.

    Times are distinct, event ids unique, order ids unique, and the distinct values of
    every top-N counter stay far below the caps, so the expected profile is exact.
    """
    rng = random.Random(seed)
    times = _timeline(rng, n)
    sources = list(SOURCE_WEIGHTS)
    weights = [SOURCE_WEIGHTS[s] for s in sources]
    records = []
    for i, ts in enumerate(times):
        source = rng.choices(sources, weights)[0]
        if i == 0:
            source, etype = "app", "install"  # the app state always has evidence
        else:
            etype = rng.choice(SOURCE_TYPES[source])
        channel = {
            "clickstream": rng.choice(CLICK_CHANNELS),
            "email": "email",
            "app": "app",
            "social": rng.choice(SOCIAL_CHANNELS),
            "offline": "store",
            "identify": "web",
        }[source]
        records.append(
            make_record(
                f"ev-{seed}-{i:04d}",
                etype,
                ts,
                source=source,
                channel=channel,
                customer_id=key,
                anonymous_id=rng.choice((*anonymous_ids, None)),
                email_hash=rng.choice((*email_hashes, None)),
                device=rng.choice(("mobile", "desktop", "tablet", "other", None)),
                **_properties(rng, source, etype, i),
            )
        )
    rng.shuffle(records)
    return records


# --- the independent recomputation of the public profile ----------------------------------------


def _cents(rec: dict[str, Any]) -> int:
    return round(rec["properties"]["revenue"] * 100)


def expected_activity(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rendered activity block (merged or one channel) of behaviour records."""
    times = [r["ts"] for r in recs]
    first, last = min(times), max(times)
    orders = [r for r in recs if r["type"] in PURCHASES]
    cents = sum(_cents(r) for r in orders)
    last_order = max((r["ts"] for r in orders), default=None)
    order_rows = sorted(
        ((r["ts"], r["properties"].get("order_id") or r["event_id"], _cents(r), r["channel"]) for r in orders),
        key=lambda o: (o[0], str(o[1])),
    )[-10:]

    categories: Counter[str] = Counter()
    searches: Counter[str] = Counter()
    referrers: dict[str, Counter[str]] = {}
    domains = dict(REFERRERS)
    for r in recs:
        p = r["properties"]
        if p.get("category") and r["type"] in CATEGORY_WEIGHTS:
            categories[p["category"]] += CATEGORY_WEIGHTS[r["type"]]
        if r["type"] == "search" and p.get("search_query"):
            searches[p["search_query"].strip().lower()[:100]] += 1
        for name in ("utm_source", "utm_medium", "utm_campaign"):
            if p.get(name):
                referrers.setdefault(name, Counter())[p[name].strip().lower()] += 1
        if p.get("referrer"):
            referrers.setdefault("referrer_domain", Counter())[domains[p["referrer"]]] += 1

    view: dict[str, Any] = {
        "events": len(recs),
        "event_types": dict(Counter(r["type"] for r in recs)),
        "first_seen": ref_iso(first),
        "last_seen": ref_iso(last),
        "active_days": len({t // DAY for t in times}),
        "sessions": len(ref_sessions(times)),
        "orders": len(orders),
        "revenue": cents / 100,
        "average_order_value": round(cents / len(orders) / 100, 2) if orders else None,
        "discounted_order_share": ref_rate(
            sum(1 for r in orders if r["properties"].get("discount", 0) > 0), len(orders)
        ),
        "last_order_at": ref_iso(last_order),
        "rfm": ref_rfm(len(orders), cents, last_order, last),
        "recent_orders": [
            {"ts": ref_iso(ts), "order_id": oid, "revenue": c / 100, "channel": ch}
            for ts, oid, c, ch in reversed(order_rows)
        ],
        "top_categories": ref_top(categories, 5),
        "devices": dict(Counter(r["device"] for r in recs if r["device"])),
        "referrers": {name: {k: c[k] for k in ref_top(c, 5)} for name, c in referrers.items()},
        "search_terms": ref_top(searches, 10),
    }

    mails = [r for r in recs if r["source"] == "email"]
    if mails:
        n = Counter(r["type"] for r in mails)
        engaged = Counter(
            r["properties"]["campaign_type"]
            for r in mails
            if r["type"] in ("open", "click") and r["properties"].get("campaign_type")
        )
        view["email"] = {
            "sent": n["sent"],
            "opens": n["open"],
            "clicks": n["click"],
            "unsubscribes": n["unsubscribe"],
            "bounces": n["bounce"],
            "open_rate": ref_rate(n["open"], n["sent"]),
            "click_rate": ref_rate(n["click"], n["sent"]),
            "subscribed": n["unsubscribe"] == 0,
            "last_open": ref_iso(max((r["ts"] for r in mails if r["type"] == "open"), default=None)),
            "last_click": ref_iso(max((r["ts"] for r in mails if r["type"] == "click"), default=None)),
            "engaging_campaign_types": ref_top(engaged, 5),
        }

    apps = [r for r in recs if r["source"] == "app" and r["type"] != "purchase"]
    if apps:
        n = Counter(r["type"] for r in apps)
        # Installed unless the latest app event by event time is an uninstall (an uninstall
        # wins a tie: the app cannot be used at the moment it is removed).
        latest = max(apps, key=lambda r: (r["ts"], r["type"] == "uninstall")) if apps else None
        opens = [r["ts"] for r in apps if r["type"] in ("app_open", "push_open")]
        os_counts = Counter(r["properties"]["os"].lower() for r in apps if r["properties"].get("os"))
        view["app"] = {
            "installed": latest is not None and latest["type"] != "uninstall",
            "installs": n["install"],
            "uninstalls": n["uninstall"],
            "opens": n["app_open"],
            "push_opens": n["push_open"],
            "screen_views": n["screen_view"],
            "last_open": ref_iso(max(opens, default=None)),
            "top_screens": ref_top(
                Counter(r["properties"]["screen"] for r in apps if r["properties"].get("screen")), 5
            ),
            "os": ref_top(os_counts, 1)[0] if os_counts else None,
        }

    socials = [r for r in recs if r["source"] == "social"]
    if socials:
        platforms = Counter(r["channel"] for r in socials)
        topics = Counter(r["properties"]["topic"].strip().lower() for r in socials if r["properties"].get("topic"))
        view["social"] = {
            "platforms": {k: platforms[k] for k in ref_top(platforms, 10)},
            "interactions": dict(Counter(r["type"] for r in socials)),
            "topics": ref_top(topics, 5),
        }

    stores = [r for r in recs if r["source"] == "offline"]
    if stores:
        n = Counter(r["type"] for r in stores)
        view["offline"] = {
            "store_visits": n["store_visit"],
            "events_attended": n["event_attended"],
            "store_purchases": n["pos_purchase"],
            "store_revenue": sum(_cents(r) for r in stores if r["type"] == "pos_purchase") / 100,
            "top_stores": ref_top(Counter(r["properties"]["store_id"] for r in stores), 5),
        }
    return view


def expected_profile(records: list[dict[str, Any]], key: str, version: int = 1) -> dict[str, Any]:
    """The rendered profile of one customer's (distinct-id) records, recomputed independently."""
    behaviour = [r for r in records if r["source"] != "identify"]
    identifies = [r for r in records if r["source"] == "identify"]

    traits: dict[str, Any] = {}
    for rec in sorted(identifies, key=lambda r: r["ts"]):  # distinct times: newest wins
        for name, value in (rec["properties"].get("traits") or {}).items():
            if name != "interests":
                traits[name] = value

    interests: Counter[str] = Counter()
    for rec in records:
        p = rec["properties"]
        if rec["type"] == "identify":
            for name in (p.get("traits") or {}).get("interests") or ():
                interests[name.strip().lower()] += INTEREST_WEIGHTS["declared"]
        if rec["source"] == "social" and p.get("topic"):
            interests[p["topic"].strip().lower()] += INTEREST_WEIGHTS["social"]
        if p.get("category"):
            weight = {"purchase": "purchase", "pos_purchase": "purchase", "add_to_cart": "cart", "product_view": "view"}
            if rec["type"] in weight:
                interests[p["category"].strip().lower()] += INTEREST_WEIGHTS[weight[rec["type"]]]

    by_channel: dict[str, list[dict[str, Any]]] = {}
    for rec in behaviour:
        by_channel.setdefault(rec["channel"], []).append(rec)
    first_ts = {c: min(r["ts"] for r in rs) for c, rs in by_channel.items()}
    last_ts = {c: max(r["ts"] for r in rs) for c, rs in by_channel.items()}
    journey = sorted(by_channel, key=lambda c: (first_ts[c], c))

    if behaviour:
        summary = expected_activity(behaviour)
    else:
        summary = {
            "events": 0, "event_types": {}, "first_seen": None, "last_seen": None, "active_days": 0, "sessions": 0,
            "orders": 0, "revenue": 0.0, "average_order_value": None, "discounted_order_share": None,
            "last_order_at": None, "rfm": ref_rfm(0, 0, None, None), "recent_orders": [], "top_categories": [],
            "devices": {}, "referrers": {}, "search_terms": [],
        }  # fmt: skip
    return {
        "customer_id": key,
        "version": version,
        "events": len(records),  # distinct events applied, identify and alias included
        "demographics": {k: v for k, v in traits.items() if k in DEMOGRAPHICS},
        "traits": {k: v for k, v in traits.items() if k not in DEMOGRAPHICS},
        "interests": ref_top(interests, 10),
        "summary": summary,
        "channels": {c: expected_activity(rs) for c, rs in by_channel.items()},
        "journey": {
            "channels": journey,
            "first_channel": journey[0] if journey else None,
            "last_channel": max(by_channel, key=lambda c: (last_ts[c], c)) if by_channel else None,
            # Touches, hops and purchase paths come from models.journeys (tests/unit/test_journeys.py),
            # a separate step the profile step does not take.
            "path": [], "hops": {}, "converted_hops": {}, "first_touch": None, "last_touch": None,
            "purchases": [], "mover": False, "mover_type": None, "late_touches": 0,
        },
        "segment": None,
        "segments": {},
        "segment_changes": [],
        "identifiers": {
            "anonymous_ids": len({r["anonymous_id"] for r in records if r["anonymous_id"]}),
            "email_hashes": sorted({r["email_hash"] for r in records if r["email_hash"]}),
            "merged_from": [],
        },
    }


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture()
def limits() -> Limits:
    """Plausibility limits relative to a fixed "now", so no test reads the wall clock."""
    return Limits(now_ms=NOW_MS)


@pytest.fixture()
def ref() -> SimpleNamespace:
    """The helpers and reference recomputations of this module, for the test modules."""
    return SimpleNamespace(
        T0=T0,
        NOW_MS=NOW_MS,
        DAY=DAY,
        MINUTE=MINUTE,
        HASH_KEY=HASH_KEY,
        DEMOGRAPHICS=DEMOGRAPHICS,
        iso=ref_iso,
        top=ref_top,
        rate=ref_rate,
        sessions=ref_sessions,
        rfm=ref_rfm,
        record=make_record,
        random_records=random_records,
        activity=expected_activity,
        profile=expected_profile,
    )

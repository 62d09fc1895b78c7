"""The public face of a profile: the ``ProfileUpdate.profile`` document and the flat Redis hash.

:func:`render_profile` turns the internal state (:mod:`models.profile`) into the merged
profile with per-channel sub-profiles: derived figures (rates, average order value,
recency/frequency/monetary scores), top-N lists sorted, times as ISO-8601, and none of
the bookkeeping (dedup ids, session intervals, day lists).
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import orjson

from models.journeys import render_journey
from models.profile import DAY_MS, State

TOP_N = 5
DEMOGRAPHIC_TRAITS = ("age", "gender", "region", "country", "income_band", "marital_status", "employment_status")

# Recency / frequency / monetary scores, 1 (low) to 5 (high); 0 means "no order yet".
# Fixed, documented thresholds so that a score means the same on every worker.
RECENCY_DAYS = (7, 30, 90, 180)  # <= 7 days -> 5, <= 30 -> 4, <= 90 -> 3, <= 180 -> 2, else 1
FREQUENCY_ORDERS = (2, 3, 5, 10)  # 1 -> 1, 2 -> 2, 3-4 -> 3, 5-9 -> 4, >= 10 -> 5
MONETARY_EUR = (50, 150, 500, 1500)  # < 50 -> 1, < 150 -> 2, < 500 -> 3, < 1500 -> 4, else 5


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@lru_cache(maxsize=4096)
def _date_text(day: int) -> str:
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")


def iso_text(ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC text, with millisecond precision.

    The date part is looked up per day and the time of day is plain integer arithmetic: about
    1.5 µs against 3.5 µs for ``datetime.fromtimestamp(...).strftime(...)``. The two give the same
    text from 1697 to 2242 (tests/unit/test_view.py compares them over 2000-2100); outside that
    range the datetime path, through a float of seconds, loses milliseconds and this one is exact.

    >>> iso_text(1_795_341_600_123), iso_text(0), iso_text(-1)
    ('2026-11-22T10:00:00.123Z', '1970-01-01T00:00:00.000Z', '1969-12-31T23:59:59.999Z')
    """
    if type(ms) is not int:  # a float or int subclass from elsewhere: the general path
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    day, rest = divmod(ms, 86_400_000)
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{_date_text(day)}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


@lru_cache(maxsize=65_536)
def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as ISO-8601 UTC text (None stays None).

    Cached: a profile is rendered again on each update with mostly the same times in it
    (first and last event of every channel).

    >>> iso(1_795_341_600_000)
    '2026-11-22T10:00:00.000Z'
    """
    if ms is None:
        return None
    return iso_text(ms)


def top(counter: dict[str, int] | None, n: int = TOP_N) -> list[str]:
    """The ``n`` largest keys, ties alphabetically.

    >>> top({"b": 2, "a": 2, "c": 5}, 2)
    ['c', 'a']
    """
    if not counter:
        return []
    # Alphabetical, then a stable sort by count (descending keeps ties in order): both keys in C.
    names = sorted(counter)
    names.sort(key=counter.__getitem__, reverse=True)
    return names[:n]


def top_counts(counter: dict[str, int] | None, n: int = TOP_N) -> dict[str, int]:
    return {k: counter[k] for k in top(counter, n)} if counter else {}


def rate(part: int, whole: int) -> float | None:
    """``part / whole`` rounded to 4 places, capped at 1; None when ``whole`` is 0."""
    if not whole:
        return None
    return round(min(1.0, part / whole), 4)


def _score_up(value: float, thresholds: tuple[float, ...]) -> int:
    return 1 + sum(value >= t for t in thresholds)


def rfm(orders: int, revenue_cents: int, last_order_ts: int | None, as_of_ts: int | None) -> dict[str, Any]:
    """Recency, frequency and monetary value with 1-5 scores (0 without orders).

    Recency is measured to ``as_of_ts``: the customer's latest activity in the profile.

    >>> rfm(3, 25_000, 0, 10 * 86_400_000)["score"]
    '433'
    >>> rfm(0, 0, None, None)["score"]
    '000'
    """
    if not orders or last_order_ts is None:
        return {"recency_days": None, "frequency": 0, "monetary": 0.0, "r": 0, "f": 0, "m": 0, "score": "000"}
    days = max(0, (as_of_ts or last_order_ts) - last_order_ts) // DAY_MS
    r = 5 - sum(days > t for t in RECENCY_DAYS)
    f = _score_up(orders, FREQUENCY_ORDERS)
    m = _score_up(revenue_cents / 100, MONETARY_EUR)
    return {
        "recency_days": days,
        "frequency": orders,
        "monetary": revenue_cents / 100,
        "r": r,
        "f": f,
        "m": m,
        "score": f"{r}{f}{m}",
    }


def render_activity(act: dict[str, Any]) -> dict[str, Any]:
    """The public view of one activity block (merged or per channel)."""
    orders = act["orders"]
    revenue = act["revenue_cents"]
    view: dict[str, Any] = {
        "events": act["events"],
        "event_types": dict(sorted(act["types"].items())),
        "first_seen": iso(act["first_ts"]),
        "last_seen": iso(act["last_ts"]),
        "active_days": len(act["days"]) + act["days_dropped"],
        "sessions": len(act["sessions"]) + act["sessions_dropped"],
        "orders": orders,
        "revenue": revenue / 100,
        "average_order_value": round(revenue / orders / 100, 2) if orders else None,
        "discounted_order_share": rate(act["discounted_orders"], orders),
        "last_order_at": iso(act["last_order_ts"]),
        "rfm": rfm(orders, revenue, act["last_order_ts"], act["last_ts"]),
        "recent_orders": [
            {"ts": iso(ts), "order_id": oid, "revenue": cents / 100, "channel": ch}
            for ts, oid, cents, ch in reversed(act["recent_orders"])
        ],
        "top_categories": top(act["categories"]),
        "devices": dict(sorted(act["devices"].items())),
        "referrers": {name: top_counts(c) for name, c in sorted(act["referrers"].items())},
        "search_terms": top(act["searches"], 10),
    }
    if "email" in act:
        view["email"] = render_email(act["email"])
    if "app" in act:
        view["app"] = render_app(act["app"])
    if "social" in act:
        s = act["social"]
        view["social"] = {
            "platforms": top_counts(s.get("platforms"), 10),
            "interactions": dict(sorted((s.get("interactions") or {}).items())),
            "topics": top(s.get("topics")),
        }
    if "offline" in act:
        o = act["offline"]
        view["offline"] = {
            "store_visits": o.get("store_visits", 0),
            "events_attended": o.get("events_attended", 0),
            "store_purchases": o.get("store_purchases", 0),
            "store_revenue": o.get("store_revenue_cents", 0) / 100,
            "top_stores": top(o.get("stores")),
        }
    return view


def render_email(mail: dict[str, Any]) -> dict[str, Any]:
    sent = mail.get("sent", 0)
    return {
        "sent": sent,
        "opens": mail.get("open", 0),
        "clicks": mail.get("click", 0),
        "unsubscribes": mail.get("unsubscribe", 0),
        "bounces": mail.get("bounce", 0),
        "open_rate": rate(mail.get("open", 0), sent),
        "click_rate": rate(mail.get("click", 0), sent),
        "subscribed": "unsubscribed_ts" not in mail,
        "last_open": iso(mail.get("last_open_ts")),
        "last_click": iso(mail.get("last_click_ts")),
        "engaging_campaign_types": top(mail.get("engaged_campaign_types")),
    }


def render_app(app: dict[str, Any]) -> dict[str, Any]:
    installed_ts = app.get("install_ts")
    removed_ts = app.get("uninstall_ts")
    # Installed unless the latest app event by event time is an uninstall.
    evidence = max(filter(None, (installed_ts, app.get("last_use_ts"))), default=None)
    installed = evidence is not None and (removed_ts is None or evidence > removed_ts)
    return {
        "installed": installed,
        "installs": app.get("installs", 0),
        "uninstalls": app.get("uninstalls", 0),
        "opens": app.get("opens", 0),
        "push_opens": app.get("push_opens", 0),
        "screen_views": app.get("screen_views", 0),
        "last_open": iso(app.get("last_open_ts")),
        "top_screens": top(app.get("screens")),
        "os": top(app.get("os"), 1)[0] if app.get("os") else None,
    }


def render_profile(state: State) -> dict[str, Any]:
    """The merged profile with per-channel sub-profiles, as published and stored."""
    traits = state["traits"]
    channels = state["channels"]
    first_channel = min(channels, key=lambda c: (channels[c]["first_ts"], c)) if channels else None
    last_channel = max(channels, key=lambda c: (channels[c]["last_ts"], c)) if channels else None
    return {
        "customer_id": state["customer_id"],
        "version": state["version"],
        "events": state["events"],
        "demographics": {k: traits[k] for k in DEMOGRAPHIC_TRAITS if k in traits},
        "traits": {k: v for k, v in sorted(traits.items()) if k not in DEMOGRAPHIC_TRAITS},
        "interests": top(state["interests"], 10),
        "summary": render_activity(state["all"]),
        "channels": {name: render_activity(block) for name, block in sorted(channels.items())},
        "journey": {
            "channels": sorted(channels, key=lambda c: (channels[c]["first_ts"], c)),
            "first_channel": first_channel,
            "last_channel": last_channel,
            **render_journey(state.get("journey")),
        },
        "segment": state.get("segments", {}).get("all"),
        "segments": dict(sorted(state.get("segments", {}).items())),
        "segment_changes": [
            {"ts": iso(ts), "scope": scope, "from": old, "to": new}
            for ts, scope, old, new in reversed(state.get("segment_history", []))
        ],
        "identifiers": {
            "anonymous_ids": len(state["identifiers"]["anonymous_ids"]),
            "email_hashes": list(state["identifiers"]["email_hashes"]),
            "merged_from": list(state.get("merged_from", [])),
        },
    }


def redis_fields(profile: dict[str, Any], profile_json: bytes) -> dict[str, str | bytes]:
    """The flat hash stored at ``{prefix}profile:{customer_id}`` (documented in the README)."""
    s = profile["summary"]
    demo = profile["demographics"]
    channels = profile["channels"]
    top_channel = max(channels, key=lambda c: (channels[c]["events"], c)) if channels else ""
    fields: dict[str, str | bytes] = {
        "customer_id": profile["customer_id"],
        "version": str(profile["version"]),
        "first_seen": s["first_seen"] or "",
        "last_seen": s["last_seen"] or "",
        "events": str(s["events"]),
        "sessions": str(s["sessions"]),
        "active_days": str(s["active_days"]),
        "orders": str(s["orders"]),
        "revenue": f"{s['revenue']:.2f}",
        "average_order_value": "" if s["average_order_value"] is None else f"{s['average_order_value']:.2f}",
        "rfm": s["rfm"]["score"],
        "channels": ",".join(sorted(channels)),
        "top_channel": top_channel,
        "first_channel": profile["journey"]["first_channel"] or "",
        "last_channel": profile["journey"]["last_channel"] or "",
        "top_category": (s["top_categories"] or [""])[0],
        "interests": ",".join(profile["interests"]),
        "email_open_rate": "" if "email" not in s or s["email"]["open_rate"] is None else str(s["email"]["open_rate"]),
        "app_installed": "" if "app" not in s else str(int(s["app"]["installed"])),
        "segment": str(profile["segment"] or ""),
        "json": profile_json,
    }
    for name in ("age", "gender", "country", "region"):
        fields[name] = "" if demo.get(name) is None else str(demo[name])
    return fields


# The ``json`` field of a Redis profile hash: the profile JSON as it is (``plain``, the default) or
# its zlib stream (RFC 1950; ``OMNIPROFILE_REDIS_JSON_CODEC=zlib``), about a third of the bytes.
# A zlib stream of this kind starts with the byte 0x78 and a JSON object with ``{``, so a reader
# tells the two apart without knowing the worker's setting (decode_profile_json).
JSON_CODECS = ("plain", "zlib")
ZLIB_LEVEL = 6  # 806 bytes at 33 µs against 876 at 25 µs for level 1 (a 2.6 KB profile; docs/performance.md)
# The Redis server setting ``hash-max-listpack-value`` that keeps a hash with a zlib ``json`` field
# (about 800 bytes) in the compact listpack encoding: about 1.5 KB a customer against 2.5 KB.
LISTPACK_VALUE_HINT = 1024


def encode_profile_json(profile_json: bytes, codec: str) -> bytes:
    """The ``json`` field's value for ``codec`` (one of :data:`JSON_CODECS`).

    >>> encode_profile_json(b'{"a":1}', "plain")
    b'{"a":1}'
    >>> encode_profile_json(b'{"a":1}', "zlib")[:1]
    b'x'
    """
    if codec == "plain":
        return profile_json
    if codec == "zlib":
        return zlib.compress(profile_json, ZLIB_LEVEL)
    raise ValueError(f"unknown profile JSON codec {codec!r}; expected one of {', '.join(JSON_CODECS)}")


def profile_json_text(raw: bytes) -> bytes:
    """The profile JSON in a Redis ``json`` field, whichever codec wrote it.

    >>> profile_json_text(encode_profile_json(b'{"a":1}', "zlib"))
    b'{"a":1}'
    >>> profile_json_text(b'not a profile')
    Traceback (most recent call last):
    ...
    ValueError: a profile's json field holds neither JSON nor a zlib stream (starts with b'no')
    """
    if raw[:1] == b"{":
        return raw
    if raw[:1] == b"x":
        try:
            return zlib.decompress(raw)
        except zlib.error as exc:
            raise ValueError(f"a profile's json field is a broken zlib stream ({exc})") from None
    raise ValueError(f"a profile's json field holds neither JSON nor a zlib stream (starts with {raw[:2]!r})")


def decode_profile_json(raw: bytes) -> dict[str, Any]:
    """The profile in a Redis ``json`` field, whichever codec wrote it (ValueError if neither)."""
    return orjson.loads(profile_json_text(raw))

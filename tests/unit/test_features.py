"""Feature vectors against a plain recomputation from the profile state (models.features.FEATURES)."""

from __future__ import annotations

import math
import zlib

import orjson
import pytest

from models.features import CATEGORY_BUCKETS, CHANNEL_GROUPS, FEATURES, extract_features
from models.ingest import decode_message
from models.profile import DAY_MS, apply_events
from models.synthetic import generate

GROUPS = {"amazon": "marketplace", "ebay": "marketplace", "etsy": "marketplace", "walmart": "marketplace",
          "zalando": "marketplace", "otto": "marketplace", "aliexpress": "marketplace", "bol": "marketplace",
          "allegro": "marketplace", "store": "store", "web": "web", "app": "app", "email": "email"}


def expected(state: dict, scope: str, as_of: int) -> dict[str, float] | None:
    act = state["all"] if scope == "all" else state["channels"].get(scope)
    if act is None or act["events"] == 0:
        return None

    def squash(v: float) -> float:
        return round(math.log1p(v if v > 0 else 0.0), 4)

    def share(part: float, whole: float) -> float:
        return round(part / whole, 4) if whole else 0.0

    mail, app, off, social = (act.get(k, {}) for k in ("email", "app", "offline", "social"))
    orders, revenue = act["orders"], act["revenue_cents"] / 100
    out = {
        "recency": squash((as_of - act["last_ts"]) / DAY_MS),
        "events": squash(act["events"]),
        "sessions": squash(len(act["sessions"]) + act["sessions_dropped"]),
        "active_days": squash(len(act["days"]) + act["days_dropped"]),
        "orders": squash(orders),
        "revenue": squash(revenue),
        "average_order_value": squash(revenue / orders) if orders else 0.0,
        "discount_share": share(act["discounted_orders"], orders),
        "email_open_rate": min(1.0, share(mail.get("open", 0), mail.get("sent", 0))),
        "email_click_rate": min(1.0, share(mail.get("click", 0), mail.get("sent", 0))),
        "app_opens": squash(app.get("opens", 0) + app.get("push_opens", 0)),
        "social_interactions": squash(sum((social.get("interactions") or {}).values())),
        "store_visits": squash(off.get("store_visits", 0) + off.get("events_attended", 0)),
    }
    per_group = {g: 0 for g in CHANNEL_GROUPS}
    blocks = state["channels"].items() if scope == "all" else [(scope, act)]
    for name, block in blocks:
        per_group[GROUPS.get(name, "social")] += block["events"]
    for g in CHANNEL_GROUPS:
        out[f"share_{g}"] = share(per_group[g], sum(per_group.values()))
    for d in ("mobile", "desktop", "tablet"):
        out[f"share_{d}"] = share(act["devices"].get(d, 0), sum(act["devices"].values()))
    buckets = [0] * CATEGORY_BUCKETS
    for category, weight in act["categories"].items():
        buckets[zlib.crc32(category.encode()) % CATEGORY_BUCKETS] += weight
    for i in range(CATEGORY_BUCKETS):
        out[f"category_{i}"] = share(buckets[i], sum(buckets))
    return out


@pytest.mark.parametrize("seed", [3, 11])
def test_features_of_every_scope_match_the_recomputation(seed):
    data = generate(150, seed=seed)
    by_customer: dict[str, list[dict]] = {}
    for e in data.events:
        if e.event.get("customer_id"):
            by_customer.setdefault(e.event["customer_id"], []).append(e)
    checked = 0
    for cid, events in sorted(by_customer.items()):
        records = [r for e in events
                   for r in decode_message(e.source, orjson.dumps(e.event), None, b"k" * 32).records]
        state = apply_events(None, cid, records).state
        as_of = max(r["ts"] for r in records) + 3 * DAY_MS
        for scope in ["all", *state["channels"], "nowhere"]:
            got = extract_features(state, scope, as_of)
            want = expected(state, scope, as_of)
            assert got == want, (cid, scope)
            if got is not None:
                assert list(got) == list(FEATURES)  # the model's column order
                checked += 1
    assert checked > 300

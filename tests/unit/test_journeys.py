"""Journeys: hop and attribution deltas summed over any arrival order equal an independent
recomputation from the whole, sorted history."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from models.journeys import MAX_TOUCHES, record_journey, render_journey

DAY = 86_400_000
WINDOW = 7 * DAY
HALFLIFE = DAY
CHANNELS = ["web", "amazon", "ebay", "instagram", "app", "store"]
KNOWN_REFERRERS = {"amazon", "ebay", "instagram"}


def journey_events(customer: int, seed: int, n: int = 40) -> list[dict]:
    rng = random.Random(seed * 1000 + customer)
    events = []
    for i in range(n):
        channel = rng.choice(CHANNELS)
        purchase = rng.random() < 0.15
        props: dict = {}
        if purchase:
            props["revenue"] = round(rng.uniform(5, 300), 2)
        if channel == "web" and rng.random() < 0.3:
            props["utm_source"] = rng.choice(["instagram", "amazon", "newsletter"])
        events.append({
            "event_id": f"c{customer}-e{i}",
            "source": "offline" if channel == "store" else "app" if channel == "app" else "clickstream",
            "type": ("pos_purchase" if channel == "store" else "purchase") if purchase
            else ("store_visit" if channel == "store" else "app_open" if channel == "app" else "page_view"),
            "ts": rng.randrange(0, 30 * DAY) // 1000 * 1000,  # whole seconds: ties happen
            "channel": channel,
            "properties": props,
        })
    # An email the shop sent is not a touch.
    events.append({"event_id": f"c{customer}-sent", "source": "email", "type": "sent", "ts": 5 * DAY,
                   "channel": "email", "properties": {}})
    return events


def oracle(events: list[dict]):
    """Touches, hops, conversions and attribution from the full history, by plain loops."""
    touches = []
    for e in events:
        if e["type"] == "sent":
            continue
        src = e["properties"].get("utm_source")
        if src in KNOWN_REFERRERS and src != e["channel"]:
            touches.append((e["ts"], 0, src, False, 0.0, e["event_id"] + "/referral"))
        purchase = e["type"] in ("purchase", "pos_purchase")
        touches.append((e["ts"], 1, e["channel"], purchase, e["properties"].get("revenue", 0.0), e["event_id"]))
    touches.sort(key=lambda t: (t[0], t[1], t[2], t[5]))
    hops, converted = Counter(), Counter()
    for prev, cur in zip(touches, touches[1:]):
        if prev[2] != cur[2]:
            pair = f"{prev[2]}>{cur[2]}"
            hops[pair] += 1
            if any(t[3] and t[2] == cur[2] and 0 <= t[0] - cur[0] <= WINDOW
                   for t in touches[touches.index(cur):]):
                converted[pair] += 1
    credit: dict[tuple[str, str], float] = defaultdict(float)
    revenue: dict[tuple[str, str], float] = defaultdict(float)
    for i, p in enumerate(touches):
        if not p[3]:
            continue
        path = [t for t in touches[: i + 1] if p[0] - t[0] <= WINDOW]
        shares: dict[tuple[str, str], float] = defaultdict(float)
        shares[("first_touch", path[0][2])] += 1
        shares[("last_touch", p[2])] += 1
        for t in path:
            shares[("linear", t[2])] += 1 / len(path)
        w = [2 ** (-(p[0] - t[0]) / HALFLIFE) for t in path]
        for t, wt in zip(path, w):
            shares[("time_decay", t[2])] += wt / sum(w)
        for c in {t[2] for t in path} - {p[2]}:
            shares[("assists", c)] += 1
        channels = [t[2] for t in path]
        collapsed = [c for i, c in enumerate(channels) if i == 0 or channels[i - 1] != c]
        shares[("path", ">".join(collapsed))] += 1
        for k, v in shares.items():
            credit[k] += v
            if k[0] != "assists":
                revenue[k] += v * p[4]
    return touches, hops, converted, credit, revenue


def sum_deltas(deltas):
    """The global counters (transitions, conversions, credit, revenue) that a stream of deltas adds up to."""
    hops, converted = Counter(), Counter()
    credit: dict[tuple[str, str], float] = defaultdict(float)
    revenue: dict[tuple[str, str], float] = defaultdict(float)
    for delta in deltas:
        for h in delta.hops:
            pair = f"{h.from_channel}>{h.to_channel}"
            hops[pair] += h.sign
            converted[pair] += (1 if h.converted else -1) if h.sign == 0 else (h.sign if h.converted else 0)
        for c in delta.credits:
            credit[(c.model, c.channel)] += c.credit
            revenue[(c.model, c.channel)] += c.revenue
    return +hops, +converted, credit, revenue


def replay(events: list[dict], batches: list[list[dict]]):
    state: dict = {"journey": None}
    deltas = [record_journey(state, batch, WINDOW, HALFLIFE) for batch in batches]
    return (state, *sum_deltas(deltas))


def batches_of(events: list[dict], rng: random.Random) -> list[list[dict]]:
    out, i = [], 0
    while i < len(events):
        size = rng.choice([1, 1, 2, 5])
        out.append(events[i : i + size])
        i += size
    return out


@pytest.mark.parametrize("customer", range(12))
def test_deltas_in_any_order_sum_to_the_recomputation(customer):
    events = journey_events(customer, seed=1)
    touches, hops, converted, credit, revenue = oracle(events)
    rng = random.Random(customer)
    in_order = sorted(events, key=lambda e: e["ts"])
    shuffled = events[:]
    rng.shuffle(shuffled)
    results = [replay(events, batches_of(order, rng)) for order in (in_order, shuffled)]
    for state, got_hops, got_converted, got_credit, got_revenue in results:
        assert got_hops == hops
        assert got_converted == +converted
        assert state["journey"]["hops"] == dict(hops)
        assert state["journey"]["converted"] == dict(+converted)
        for key in set(credit) | set(got_credit):
            assert got_credit[key] == pytest.approx(credit[key], abs=2e-3), key
            if key[0] != "assists":
                assert got_revenue[key] == pytest.approx(revenue[key], abs=0.1), key
    assert results[0][0]["journey"]["touches"] == results[1][0]["journey"]["touches"]


def test_every_purchase_hands_out_exactly_one_credit_per_model():
    events = journey_events(3, seed=2)
    _, _, _, credit, _ = replay(events, [events])
    purchases = sum(1 for e in events if e["type"] in ("purchase", "pos_purchase"))
    for model in ("first_touch", "last_touch", "linear", "time_decay"):
        assert sum(v for (m, _), v in credit.items() if m == model) == pytest.approx(purchases, abs=1e-3)


def test_a_late_touch_splits_a_hop_and_withdraws_it():
    state: dict = {"journey": None}
    ev = lambda i, ts, ch: {"event_id": f"e{i}", "source": "clickstream", "type": "page_view",  # noqa: E731
                            "ts": ts, "channel": ch, "properties": {}}
    record_journey(state, [ev(1, 1000, "amazon"), ev(2, 3000, "web")])
    delta = record_journey(state, [ev(3, 2000, "ebay")])
    assert sorted((h.from_channel, h.to_channel, h.sign) for h in delta.hops) == [
        ("amazon", "ebay", 1), ("amazon", "web", -1), ("ebay", "web", 1)]
    assert state["journey"]["hops"] == {"amazon>ebay": 1, "ebay>web": 1}
    assert record_journey(state, [ev(3, 2000, "ebay")]).hops == []  # the same touch again: nothing


def test_touches_beyond_the_kept_timeline_are_counted_as_late():
    state: dict = {"journey": None}
    events = [{"event_id": f"e{i}", "source": "clickstream", "type": "page_view", "ts": 10_000 + i * 1000,
               "channel": CHANNELS[i % 2], "properties": {}} for i in range(MAX_TOUCHES + 30)]
    record_journey(state, events)
    hops_before = dict(state["journey"]["hops"])
    assert len(state["journey"]["touches"]) == MAX_TOUCHES and state["journey"]["dropped"] == 30
    delta = record_journey(state, [{"event_id": "old", "source": "clickstream", "type": "page_view",
                                    "ts": 10_500, "channel": "store", "properties": {}}])
    assert delta.late == 1 and delta.hops == [] and state["journey"]["late"] == 1
    pairs = Counter(f"{a['channel']}>{b['channel']}" for a, b in zip(events, events[1:]))
    assert state["journey"]["hops"] == hops_before == dict(pairs)


def test_the_view_names_movers():
    state: dict = {"journey": None}
    record_journey(state, [
        {"event_id": "a", "source": "clickstream", "type": "product_view", "ts": 1000, "channel": "amazon",
         "properties": {}},
        {"event_id": "b", "source": "clickstream", "type": "purchase", "ts": 5000, "channel": "web",
         "properties": {"revenue": 20.0}},
    ])
    view = render_journey(state["journey"])
    assert view["mover"] and view["mover_type"] == "marketplace browser, web buyer"
    assert view["path"] == ["amazon", "web"] and view["first_touch"] == "amazon" and view["last_touch"] == "web"
    assert view["purchases"] == [{"ts": 5000, "channel": "web", "revenue": 20.0, "path": ["amazon", "web"]}]


def test_week_windows_are_the_sums_of_their_seven_days():
    from models.journeys import week_windows
    from models.profile import DAY_MS

    rnd = random.Random(5)
    daily = {d * DAY_MS: float(rnd.randint(0, 9)) for d in range(40)}
    for day in (10, 17, 23):
        got = week_windows(day * DAY_MS + 12_345, lambda d: daily.get(d, 0.0))
        # every window that covers the day, one per start day, each a plain sum of its 7 days
        want = [(s * DAY_MS, sum(daily[(s + i) * DAY_MS] for i in range(7))) for s in range(day - 6, day + 1)]
        assert got == want

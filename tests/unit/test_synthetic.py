"""The synthetic generator: deterministic, contract-shaped events whose truth holds."""

from __future__ import annotations

import ast
import json
import re
import statistics
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from models import synthetic
from models.synthetic import INVALID_KINDS, PERSONAS, SOURCES, Dataset, generate

# The contract, written out again here rather than read from the module under test.
TYPES = {
    "clickstream": {"page_view", "product_view", "search", "add_to_cart", "checkout", "purchase"},
    "email": {"sent", "open", "click", "unsubscribe", "bounce"},
    "app": {"install", "uninstall", "app_open", "screen_view", "push_open", "purchase"},
    "social": {"follow", "like", "comment", "share", "message", "mention", "ad_click"},
    "offline": {"store_visit", "event_attended", "pos_purchase"},
    "identify": {"identify", "alias"},
}
CHANNELS = {
    "clickstream": {"web", "amazon", "ebay", "etsy"},
    "email": {"email"},
    "app": {"app"},
    "social": {"facebook", "instagram", "pinterest", "tiktok", "x"},
    "offline": {"store"},
    "identify": {"web"},
}
ENVELOPE = {"event_id", "type", "ts", "customer_id", "anonymous_id", "email", "channel", "device", "properties"}
DEVICES = {"mobile", "desktop", "tablet", "other"}
BROWSING = {"page_view", "product_view", "search"}
PURCHASES = {"purchase", "pos_purchase"}
TRAITS = {"age", "gender", "region", "country", "income_band", "marital_status", "employment_status", "interests"}
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
START_MS = int(START.timestamp() * 1000)


def ts_ms(ts: int | str) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return generate(2_000, seed=11, invalid_rate=0.02)


@pytest.fixture(scope="module")
def owner(data):
    """customer_id of every event, through the anonymous id where that is all it carries."""
    by_anon = {c.anonymous_id: c.customer_id for c in data.customers}
    return [e.event.get("customer_id") or by_anon[e.event["anonymous_id"]] for e in data.events]


@pytest.fixture(scope="module")
def persona_of(data):
    return {c.customer_id: c.persona for c in data.customers}


# -- determinism -----------------------------------------------------------------------


def test_same_arguments_give_the_same_dataset(data):
    assert generate(2_000, seed=11, invalid_rate=0.02) == data


def test_another_seed_gives_another_dataset(data):
    other = generate(2_000, seed=12, invalid_rate=0.02)
    assert other.events != data.events
    assert [c.persona for c in other.customers] != [c.persona for c in data.customers]


def test_invalid_messages_leave_the_valid_events_alone(data):
    assert generate(2_000, seed=11).events == data.events


def test_sort_without_numpy_is_the_same(monkeypatch):
    with_numpy = generate(300, seed=3)
    monkeypatch.setattr(synthetic, "_np", None)
    assert generate(300, seed=3) == with_numpy


def test_module_imports_only_the_standard_library_and_numpy():
    tree = ast.parse(Path(synthetic.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "bisect", "dataclasses", "datetime", "functools", "gc", "itertools", "json",
                        "random", "numpy"}


# -- envelope --------------------------------------------------------------------------


def test_every_event_follows_the_envelope(data):
    for generated in data.events:
        source, event = generated.source, generated.event
        assert source in SOURCES
        assert {"event_id", "type", "ts", "channel", "properties"} <= event.keys() <= ENVELOPE
        assert event["type"] in TYPES[source], event
        assert event["channel"] in CHANNELS[source], event
        assert event.get("customer_id") or event.get("anonymous_id") or event.get("email"), event
        assert event.get("device", "mobile") in DEVICES
        assert isinstance(event["properties"], dict)
        if source in ("app", "offline"):
            assert event.get("device") in (None, "mobile", "other")


def test_events_are_json_ready(data):
    events = [e.event for e in data.events[:5_000]]
    assert json.loads(json.dumps(events)) == events


def test_timestamps_are_iso_with_ms_or_epoch_ms_inside_the_window(data):
    end_ms = START_MS + 28 * 86_400_000
    kinds = Counter()
    for generated in data.events:
        ts = generated.event["ts"]
        if isinstance(ts, str):
            assert ISO_MS.match(ts), ts
            kinds["iso"] += 1
        else:
            assert type(ts) is int
            kinds["epoch"] += 1
        assert START_MS <= ts_ms(ts) < end_ms
    assert 0.15 < kinds["epoch"] / len(data.events) < 0.25


def test_events_are_sorted_by_time(data):
    times = [ts_ms(e.event["ts"]) for e in data.events]
    assert times == sorted(times)


def test_event_ids_are_unique_32_hex(data):
    ids = [e.event["event_id"] for e in data.events]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_custom_window_is_respected():
    start = datetime(2025, 3, 30, 22, 15, 0, 500, tzinfo=timezone(timedelta(hours=2)))
    data = generate(300, seed=5, start=start, days=3)
    low, high = start.timestamp() * 1000, (start + timedelta(days=3)).timestamp() * 1000
    assert data.events
    assert all(low <= ts_ms(e.event["ts"]) < high for e in data.events)


def test_a_one_day_window_still_keeps_every_journey():
    data = generate(200, seed=9, days=1)
    end_ms = START_MS + 86_400_000
    assert all(START_MS <= ts_ms(e.event["ts"]) < end_ms for e in data.events)
    walked = _walked_journeys(data)
    assert all(walked[c.customer_id] == c.journey for c in data.customers)


def test_no_customers_no_events():
    assert generate(0, invalid_rate=0.5) == Dataset((), (), ())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"customers": -1},
        {"customers": 10, "days": 0},
        {"customers": 10, "anonymous_share": 1.5},
        {"customers": 10, "invalid_rate": -0.1},
        {"customers": 10, "start": datetime(2026, 11, 1)},
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        generate(**kwargs)


# -- properties per type ---------------------------------------------------------------


def test_properties_per_type(data):
    seen = Counter()
    for generated in data.events:
        kind, props = generated.event["type"], generated.event["properties"]
        seen[kind] += 1
        if kind in ("product_view", "add_to_cart"):
            assert {"product_id", "category", "price"} <= props.keys()
            assert isinstance(props["price"], float) and props["price"] > 0
        elif kind == "search":
            assert props["search_query"]
        elif kind == "page_view":
            assert props["url"].startswith("https://")
        elif generated.source == "email":
            assert props["campaign_id"] and props["campaign_type"] in ("newsletter", "promotion", "transactional")
            assert generated.event["customer_id"] and generated.event["email"]
        elif generated.source == "app":
            assert props["app_version"] and props["os"] in ("ios", "android")
            if kind == "screen_view":
                assert props["screen"]
        elif generated.source == "social":
            assert props["post_id"] and props["topic"]
            if kind in ("comment", "message"):
                assert props["text"]
        elif generated.source == "offline":
            assert props["store_id"] and props["region"]
    assert set(seen) >= set().union(*TYPES.values()) - {"uninstall", "unsubscribe", "bounce", "mention"}


def test_purchases_carry_an_order_with_positive_revenue(data):
    purchases = [e.event for e in data.events if e.event["type"] in PURCHASES]
    assert len(purchases) > 100
    for event in purchases:
        props = event["properties"]
        assert "anonymous_id" not in event and event["customer_id"]
        assert isinstance(props["revenue"], float) and props["revenue"] > 0
        assert round(props["revenue"], 2) == props["revenue"]
        assert props["currency"] == "EUR"
        assert isinstance(props["quantity"], int) and props["quantity"] >= 1
        assert isinstance(props["discount"], float) and props["discount"] >= 0
        assert props["product_id"] and props["category"]
    orders = [e["properties"]["order_id"] for e in purchases]
    assert len(set(orders)) == len(orders)


# -- identities ------------------------------------------------------------------------


def test_customer_ids_emails_and_anonymous_ids(data):
    assert [c.customer_id for c in data.customers][:3] == ["c-000001", "c-000002", "c-000003"]
    for field in ("customer_id", "anonymous_id", "email"):
        values = [getattr(c, field) for c in data.customers]
        assert len(set(values)) == len(values)
    for customer in data.customers:
        assert customer.anonymous_id.startswith("anon-")
        assert re.fullmatch(r"[a-z0-9.]+@[a-z]+\.example", customer.email)


def test_one_identify_per_customer_with_its_traits(data):
    identifies = [e.event for e in data.events if e.event["type"] == "identify"]
    by_customer = {e["customer_id"]: e for e in identifies}
    assert len(identifies) == len(by_customer) == len(data.customers)
    for customer in data.customers:
        traits = by_customer[customer.customer_id]["properties"]["traits"]
        assert traits == customer.traits
        assert set(traits) == TRAITS
        assert isinstance(traits["age"], int) and 16 <= traits["age"] <= 90
        assert 1 <= len(traits["interests"]) <= 3 and len(set(traits["interests"])) == len(traits["interests"])


def test_aliases_link_the_cookie_id_of_about_five_percent(data):
    aliases = [e.event for e in data.events if e.event["type"] == "alias"]
    anon = {c.customer_id: c.anonymous_id for c in data.customers}
    assert 0.02 < len(aliases) / len(data.customers) < 0.08
    assert all(a["properties"]["previous_id"] == anon[a["customer_id"]] for a in aliases)


def test_anonymous_events_are_pre_login_browsing_only(data):
    browsing = [e for e in data.events if e.source == "clickstream" and e.event["type"] in BROWSING]
    anonymous = [e for e in data.events if "customer_id" not in e.event]
    assert anonymous and all(e.source == "clickstream" and e.event["type"] in BROWSING for e in anonymous)
    assert all(set(e.event) & {"customer_id", "anonymous_id", "email"} == {"anonymous_id"} for e in anonymous)
    assert 0.07 < len(anonymous) / len(browsing) < 0.13


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_anonymous_share_extremes(share):
    events = generate(200, seed=2, anonymous_share=share).events
    browsing = [e.event for e in events if e.source == "clickstream" and e.event["type"] in BROWSING]
    anonymous = [e for e in browsing if "customer_id" not in e]
    assert len(anonymous) == share * len(browsing)


# -- personas and journeys -------------------------------------------------------------


def test_personas_are_described_and_all_appear(data):
    assert len(PERSONAS) >= 5
    names = [p.name for p in PERSONAS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", n) for n in names)
    assert all(p.label and p.description.endswith(".") for p in PERSONAS)
    assert {c.persona for c in data.customers} == set(names)


def test_personas_differ_in_their_channel_mix(data, owner, persona_of):
    mix = defaultdict(Counter)
    for generated, cid in zip(data.events, owner):
        if generated.source != "identify":
            mix[persona_of[cid]][generated.event["channel"]] += 1
    shares = {p: {ch: n / sum(c.values()) for ch, n in c.items()} for p, c in mix.items()}
    for a in shares:
        for b in shares:
            if a < b:
                channels = shares[a].keys() | shares[b].keys()
                distance = sum(abs(shares[a].get(ch, 0) - shares[b].get(ch, 0)) for ch in channels) / 2
                assert distance > 0.25, (a, b, distance)
    top = {p: c.most_common(1)[0][0] for p, c in mix.items()}
    assert top["marketplace_bargain_hunter"] == "amazon"
    assert top["app_loyalist"] == "app"
    assert top["store_regular"] == "store"


def test_personas_differ_in_where_and_how_they_buy(data, persona_of):
    channels = defaultdict(Counter)
    discounted = defaultdict(list)
    for generated in data.events:
        event = generated.event
        if event["type"] in PURCHASES:
            persona = persona_of[event["customer_id"]]
            channels[persona][event["channel"]] += 1
            discounted[persona].append(event["properties"]["discount"] > 0)
    assert channels["marketplace_bargain_hunter"].most_common(1)[0][0] == "amazon"
    assert channels["app_loyalist"].most_common(1)[0][0] == "app"
    assert channels["social_discoverer"].most_common(1)[0][0] == "web"
    assert channels["store_regular"].most_common(1)[0][0] == "store"
    share = {p: sum(d) / len(d) for p, d in discounted.items()}
    assert share["marketplace_bargain_hunter"] == max(share.values()) > 0.5
    buyers = {p: sum(1 for c in data.customers if c.persona == p and c.purchase_channels) for p in persona_of.values()}
    customers = Counter(persona_of.values())
    rate = {p: buyers[p] / customers[p] for p in customers}
    assert rate["web_window_shopper"] == min(rate.values()) < 0.2


def test_personas_differ_in_age_and_device(data, owner, persona_of):
    ages = defaultdict(list)
    for customer in data.customers:
        ages[customer.persona].append(customer.traits["age"])
    mean_age = {p: statistics.mean(a) for p, a in ages.items()}
    assert mean_age["social_discoverer"] == min(mean_age.values())
    assert mean_age["email_responder"] == max(mean_age.values())
    devices = defaultdict(Counter)
    for generated, cid in zip(data.events, owner):
        if "device" in generated.event and generated.source in ("clickstream", "social"):
            devices[persona_of[cid]][generated.event["device"]] += 1
    assert devices["marketplace_bargain_hunter"].most_common(1)[0][0] == "desktop"
    assert devices["social_discoverer"].most_common(1)[0][0] == "mobile"
    assert devices["web_window_shopper"].most_common(1)[0][0] == "tablet"


def _walked_journeys(data: Dataset) -> dict[str, tuple[str, ...]]:
    by_anon = {c.anonymous_id: c.customer_id for c in data.customers}
    walked = defaultdict(list)
    for generated in data.events:
        if generated.source == "identify":
            continue
        event = generated.event
        path = walked[event.get("customer_id") or by_anon[event["anonymous_id"]]]
        if not path or path[-1] != event["channel"]:
            path.append(event["channel"])
    return {cid: tuple(path) for cid, path in walked.items()}


def test_every_customer_walks_their_journey(data):
    walked = _walked_journeys(data)
    for customer in data.customers:
        assert customer.journey, customer
        assert all(a != b for a, b in zip(customer.journey, customer.journey[1:]))
        assert walked[customer.customer_id] == customer.journey
    assert len({c.journey for c in data.customers}) >= 15
    assert sum(len(c.journey) > 1 for c in data.customers) > len(data.customers) / 3


def test_purchase_channels_are_where_the_purchases_are(data):
    bought = defaultdict(list)
    for generated in data.events:
        event = generated.event
        if event["type"] in PURCHASES and event["channel"] not in bought[event["customer_id"]]:
            bought[event["customer_id"]].append(event["channel"])
    for customer in data.customers:
        assert customer.purchase_channels == tuple(bought[customer.customer_id])


def test_hops_to_the_web_shop_carry_their_origin(data, owner):
    last_ad = {}  # customer -> (platform, post) of their latest ad click
    social = email = 0
    for generated, cid in zip(data.events, owner):
        event = generated.event
        if event["type"] == "ad_click":
            last_ad[cid] = (event["channel"], event["properties"]["post_id"])
        props = event["properties"]
        if event["type"] == "page_view" and props.get("utm_medium") == "social":
            social += 1
            platform, post = last_ad[cid]
            assert props["utm_source"] == platform and props["referrer"].endswith(post)
        if event["type"] == "page_view" and props.get("utm_medium") == "email":
            email += 1
            assert props["utm_source"] == "newsletter" and props["utm_campaign"].startswith("cmp-")
    assert social > 50 and email > 50


def test_about_ten_to_fifteen_events_per_customer(data):
    assert 10 <= len(data.events) / len(data.customers) <= 15


# -- invalid messages ------------------------------------------------------------------


def test_invalid_count_follows_the_rate_and_every_kind_appears(data):
    assert len(data.invalid) == round(0.02 * len(data.events))
    assert Counter(i.kind for i in data.invalid).keys() == set(INVALID_KINDS)
    assert all(i.source in SOURCES and isinstance(i.payload, bytes) for i in data.invalid)
    assert generate(100, invalid_rate=0).invalid == ()


def test_each_invalid_message_is_broken_in_its_stated_way(data):
    valid_ids = {e.event["event_id"] for e in data.events}
    all_types = set().union(*TYPES.values())
    for invalid in data.invalid:
        kind, payload = invalid.kind, invalid.payload
        if kind == "empty":
            assert payload == b""
            continue
        if kind == "not_utf8":
            with pytest.raises(UnicodeDecodeError):
                payload.decode("utf-8")
            continue
        if kind == "truncated_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(payload)
            continue
        value = json.loads(payload)
        if kind == "wrong_type":
            assert (not isinstance(value, dict) or not isinstance(value["properties"], dict)
                    or not isinstance(value["ts"], (int, str)) or not isinstance(value.get("customer_id", ""), str))
            continue
        assert value["event_id"] not in valid_ids
        if kind == "no_identifier":
            assert not value.keys() & {"customer_id", "anonymous_id", "email"}
        elif kind == "unknown_type":
            assert value["type"] not in all_types
        elif kind == "future_ts":
            assert ts_ms(value["ts"]) > START_MS + 10 * 365 * 86_400_000
        elif kind == "past_ts":
            assert 2 * 10**10 < ts_ms(value["ts"]) < int(datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
        elif kind == "missing_revenue":
            assert value["type"] in PURCHASES and "revenue" not in value["properties"]
        else:
            pytest.fail(f"unexpected kind {kind}")


def test_a_tiny_dataset_still_gets_every_kind():
    invalid = generate(1, seed=4, invalid_rate=9.0).invalid
    assert [i.kind for i in invalid[: len(INVALID_KINDS)]] == list(INVALID_KINDS)


def test_the_engine_validator_agrees(data):
    """Valid events pass the contract's validator and invalid messages fail (when it is there)."""
    events = pytest.importorskip("models.events")
    limits = events.Limits(now_ms=START_MS + 60 * 86_400_000)
    for generated in data.events[::7]:
        events.validate_event(generated.source, generated.event, limits)
    for invalid in data.invalid:
        try:
            value = json.loads(invalid.payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        with pytest.raises(events.InvalidEvent):
            events.validate_event(invalid.source, value, limits)

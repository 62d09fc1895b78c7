"""The event envelope (contract, "The event envelope"): validation per source, to_record, profile_key.

Expectations come from the contract and the docstrings of :mod:`models.events`; times are
recomputed with integer datetime arithmetic, hashes with :mod:`hmac`, never with the code
under test.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from models.events import InvalidEvent, Limits, hash_identifier, profile_key, to_record, validate_event
from models.ingest import decode_message
from models.profile import apply_events
from models.view import render_profile

NOW = 1_795_400_000_000
TS = 1_795_341_600_000  # 2026-11-22T10:00:00Z
KEY = b"unit-test-key"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# The contract's input table: source -> its event types.
CONTRACT_TYPES = {
    "clickstream": ("page_view", "product_view", "search", "add_to_cart", "checkout", "purchase"),
    "email": ("sent", "open", "click", "unsubscribe", "bounce"),
    "app": ("install", "uninstall", "app_open", "screen_view", "push_open", "purchase"),
    "social": ("follow", "like", "comment", "share", "message", "mention", "ad_click"),
    "offline": ("store_visit", "event_attended", "pos_purchase"),
    "identify": ("identify", "alias"),
}
REQUIRED_PROPS = {
    "purchase": {"revenue": 12.5},
    "pos_purchase": {"revenue": 12.5},
    "identify": {"traits": {"age": 30}},
    "alias": {"previous_id": "anon-9"},
}
RECORD_KEYS = {
    "event_id",
    "source",
    "type",
    "device_id",
    "ts",
    "customer_id",
    "anonymous_id",
    "email_hash",
    "channel",
    "device",
    "properties",
}


def ms_of(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def event(source: str = "clickstream", etype: str | None = None, **fields: object) -> dict:
    """A valid raw event of ``source`` (channel given where the contract requires one).

    A field passed as ``...`` is left out, to test missing fields.
    """
    etype = etype or CONTRACT_TYPES[source][0]
    data: dict = {"event_id": "e-1", "type": etype, "ts": TS, "customer_id": "c-1"}
    if source in ("clickstream", "social"):
        data["channel"] = "web" if source == "clickstream" else "instagram"
    if etype in REQUIRED_PROPS:
        data["properties"] = dict(REQUIRED_PROPS[etype])
    data.update(fields)
    return {k: v for k, v in data.items() if v is not ...}


def reason_of(source: str, data: object, limits: Limits) -> str:
    with pytest.raises(InvalidEvent) as info:
        validate_event(source, data, limits)
    return str(info.value)


# --- valid events ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "etype"), [(s, t) for s, types in CONTRACT_TYPES.items() for t in types])
def test_every_contract_type_is_accepted_by_its_source(source, etype, limits):
    record = to_record(validate_event(source, event(source, etype), limits), KEY)
    assert set(record) == RECORD_KEYS
    assert (record["source"], record["type"], record["ts"], record["customer_id"]) == (source, etype, TS, "c-1")
    assert None not in record["properties"].values()
    assert orjson.loads(orjson.dumps(record)) == record  # JSON-ready


@pytest.mark.parametrize(("source", "channel"), [("email", "email"), ("app", "app"), ("offline", "store")])
def test_default_channel_of_email_app_and_offline(source, channel, limits):
    data = event(source)
    assert "channel" not in data
    assert to_record(validate_event(source, data, limits), KEY)["channel"] == channel


@pytest.mark.parametrize("source", ["email", "app", "offline"])
def test_an_explicit_channel_wins_over_the_default(source, limits):
    assert (
        to_record(validate_event(source, event(source, channel="partner-shop"), limits), KEY)["channel"]
        == "partner-shop"
    )


def test_unknown_top_level_fields_are_kept_in_properties(limits):
    data = event(
        "clickstream", "product_view", loyalty_tier="gold", experiment={"arm": "b"}, properties={"category": "books"}
    )
    record = to_record(validate_event("clickstream", data, limits), KEY)
    assert set(record) == RECORD_KEYS
    assert record["properties"] == {"category": "books", "loyalty_tier": "gold", "experiment": {"arm": "b"}}


def test_unknown_fields_are_ignored_by_the_profile(limits):
    plain = to_record(validate_event("clickstream", event("clickstream", "page_view"), limits), KEY)
    extra = to_record(
        validate_event("clickstream", event("clickstream", "page_view", loyalty_tier="gold", score=7), limits), KEY
    )
    assert extra["properties"] != plain["properties"]
    assert render_profile(apply_events(None, "c-1", [extra]).state) == render_profile(
        apply_events(None, "c-1", [plain]).state
    )


# --- timestamps -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-22T10:00:00Z", ms_of(datetime(2026, 11, 22, 10, tzinfo=timezone.utc))),
        ("2026-11-22T10:00:00.123Z", ms_of(datetime(2026, 11, 22, 10, 0, 0, 123_000, tzinfo=timezone.utc))),
        ("2026-11-22T11:00:00.5+01:00", ms_of(datetime(2026, 11, 22, 10, 0, 0, 500_000, tzinfo=timezone.utc))),
        ("2026-11-22T04:30:00-05:30", ms_of(datetime(2026, 11, 22, 10, tzinfo=timezone.utc))),
        (TS, TS),
        (TS + 1, TS + 1),
    ],
)
def test_ts_iso_with_zone_or_epoch_ms(ts, expected, limits):
    assert validate_event("clickstream", event(ts=ts), limits).ts == expected


def test_iso_milliseconds_are_exact_for_random_times(limits):
    rng = random.Random(7)
    for _ in range(300):
        ms = rng.randrange(1_700_000_000_000, NOW)
        text = (EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
        assert validate_event("clickstream", event(ts=text), limits).ts == ms, text


@pytest.mark.parametrize(
    ("ts", "words"),
    [
        ("2026-11-22T10:00:00", ("no time zone",)),
        ("2026-11-22", ("no time zone",)),
        ("yesterday", ("not an ISO-8601",)),
        ("", ("not an ISO-8601",)),
        (True, ("boolean",)),
        (1_795_341_600_000.5, ("float",)),
        (None, ("NoneType",)),
        ([TS], ("list",)),
        (..., ("Field required",)),
    ],
)
def test_bad_ts_is_rejected_naming_the_field(ts, words, limits):
    reason = reason_of("clickstream", event(ts=ts), limits)
    assert reason.startswith("ts:"), reason
    for word in words:
        assert word in reason


def test_far_future_and_far_past(limits):
    assert validate_event("clickstream", event(ts=NOW + limits.max_future_ms), limits).ts == NOW + limits.max_future_ms
    future = reason_of("clickstream", event(ts=NOW + limits.max_future_ms + 1), limits)
    assert future.startswith("ts:") and "in the future" in future

    assert validate_event("clickstream", event(ts=limits.min_ts_ms), limits).ts == limits.min_ts_ms
    past = reason_of("clickstream", event(ts=limits.min_ts_ms - 1), limits)
    assert past.startswith("ts:") and "before" in past
    seconds = reason_of("clickstream", event(ts=TS // 1000), limits)  # seconds taken for milliseconds
    assert seconds.startswith("ts:") and "before 2000-01-01" in seconds


def test_limits_are_configurable(limits):
    tight = Limits(now_ms=NOW, max_future_ms=1_000, min_ts_ms=NOW - 1_000)
    assert validate_event("clickstream", event(ts=NOW + 1_000), tight).ts == NOW + 1_000
    assert reason_of("clickstream", event(ts=NOW + 1_001), tight).startswith("ts:")
    assert reason_of("clickstream", event(ts=NOW - 1_001), tight).startswith("ts:")
    assert validate_event("clickstream", event(ts=NOW - 1_001), limits).ts == NOW - 1_001


# --- invalid envelopes: every reason names the field ----------------------------------------------


@pytest.mark.parametrize(
    ("source", "data", "field", "words"),
    [
        ("clickstream", event(event_id=...), "event_id", ("Field required",)),
        ("clickstream", event(event_id=""), "event_id", ()),
        ("clickstream", event(type=...), "type", ("Field required",)),
        ("clickstream", event(type="teleport"), "type", ("'teleport'", "clickstream")),
        (
            "email",
            event("email", "purchase", properties={"revenue": 1.0}),
            "type",
            ("'purchase'", "not an email event type"),
        ),
        ("clickstream", event(type="open"), "type", ("'open'", "not a clickstream event type")),
        ("offline", event("offline", "purchase", properties={"revenue": 1.0}), "type", ("'purchase'", "offline")),
        ("social", event("social", "page_view"), "type", ("'page_view'", "social")),
        ("identify", event("identify", "purchase", properties={"revenue": 1.0}), "type", ("identify",)),
        ("clickstream", event(channel=...), "channel", ("Field required",)),
        ("social", event("social", channel=...), "channel", ("Field required",)),
        ("clickstream", event(channel=""), "channel", ()),
        ("clickstream", event(customer_id=1029), "customer_id", ("string",)),
        ("clickstream", event(anonymous_id=["a"]), "anonymous_id", ("string",)),
        ("clickstream", event(email="not-an-email"), "email", ("not an email address",)),
        ("clickstream", event(device="phone"), "device", ()),
        (
            "clickstream",
            event("clickstream", "purchase", properties={"revenue": "abc"}),
            "properties.revenue",
            ("number",),
        ),
        ("clickstream", event("clickstream", "purchase", properties={"revenue": -1.0}), "properties.revenue", ()),
        ("clickstream", event(properties={"price": "12.50"}), "properties.price", ("number",)),
        ("clickstream", event(properties={"quantity": 1.5}), "properties.quantity", ("integer",)),
        ("clickstream", event(properties={"currency": "EURO"}), "properties.currency", ()),
        ("email", event("email", properties={"campaign_type": "spam"}), "properties.campaign_type", ()),
        ("identify", event("identify", "identify", properties={"traits": {"age": "30"}}), "properties.traits.age", ()),
        (
            "identify",
            event("identify", "identify", properties={"traits": {"interests": "yoga"}}),
            "properties.traits.interests",
            (),
        ),
        ("clickstream", event(properties="oops"), "properties", ("dictionary",)),
    ],
)
def test_invalid_field_reason_names_the_field(source, data, field, words, limits):
    reason = reason_of(source, data, limits)
    assert reason.startswith(f"{field}:") or f"; {field}:" in reason, reason
    for word in words:
        assert word in reason, reason


@pytest.mark.parametrize(
    ("source", "etype", "props", "field"),
    [
        ("clickstream", "purchase", {"category": "books"}, "properties.revenue"),
        ("app", "purchase", {}, "properties.revenue"),
        ("offline", "pos_purchase", {"store_id": "s-1"}, "properties.revenue"),
        ("identify", "alias", {}, "properties.previous_id"),
    ],
)
def test_missing_required_property(source, etype, props, field, limits):
    reason = reason_of(source, event(source, etype, properties=props), limits)
    assert field in reason and etype in reason, reason


@pytest.mark.parametrize(
    "ids",
    [
        {},
        {"customer_id": None},
        {"customer_id": ""},
        {"customer_id": "   ", "anonymous_id": "\t", "email": " "},
        {"customer_id": None, "anonymous_id": None, "email": None},
    ],
)
def test_no_identifier_is_rejected(ids, limits):
    data = event()
    del data["customer_id"]
    data.update(ids)
    reason = reason_of("clickstream", data, limits)
    assert "no identifier" in reason and "customer_id" in reason and "anonymous_id" in reason and "email" in reason


@pytest.mark.parametrize(
    ("ids", "key"),
    [
        ({"customer_id": "c-7"}, "c-7"),
        ({"customer_id": "", "anonymous_id": "anon-3"}, "anon:anon-3"),
        ({"customer_id": "  ", "anonymous_id": "anon-3", "email": "x@y.example"}, "anon:anon-3"),
    ],
)
def test_blank_identifiers_carry_no_identity(ids, key, limits):
    data = event()
    del data["customer_id"]
    data.update(ids)
    record = to_record(validate_event("clickstream", data, limits), KEY)
    assert profile_key(record) == key
    for name, value in ids.items():  # a blank identifier is stored as None, a real one as given
        stored = record["email_hash" if name == "email" else name]
        assert (stored is None) == (not value.strip()), name


@pytest.mark.parametrize("data", [42, "event", None, [event()], True])
def test_a_non_object_is_rejected(data, limits):
    assert "expected a JSON object" in reason_of("clickstream", data, limits)


def test_unknown_source_is_rejected(limits):
    assert "unknown source" in reason_of("carrier-pigeon", event(), limits)


# --- email hashing --------------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["ann.smith@mail.example", "Ann.Smith@Mail.Example", "  ann.smith@mail.example "])
def test_email_is_hashed_and_never_stored_in_clear(email, limits):
    record = to_record(validate_event("email", event("email", customer_id=None, email=email), limits), KEY)
    expected = hmac.new(KEY, b"ann.smith@mail.example", hashlib.sha256).hexdigest()[:32]
    assert record["email_hash"] == expected
    blob = orjson.dumps(record).lower()
    assert b"ann.smith" not in blob and b"mail.example" not in blob
    assert "email" not in record
    assert profile_key(record) == f"email:{expected}"


def test_email_hash_depends_on_the_key(limits):
    data = event("email", email="ann@mail.example")
    one = to_record(validate_event("email", data, limits), b"key-one")["email_hash"]
    two = to_record(validate_event("email", data, limits), b"key-two")["email_hash"]
    assert one != two and len(one) == len(two) == 32


def test_record_without_email_has_no_hash(limits):
    assert to_record(validate_event("clickstream", event(), limits), KEY)["email_hash"] is None


# --- profile_key ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "key"),
    [
        ({"customer_id": "c-1", "anonymous_id": "x1", "email_hash": "h1"}, "c-1"),
        ({"customer_id": None, "anonymous_id": "x1", "email_hash": "h1"}, "anon:x1"),
        ({"customer_id": None, "anonymous_id": None, "email_hash": "h1"}, "email:h1"),
    ],
)
def test_profile_key_namespaces(record, key):
    assert profile_key(record) == key


def test_anonymous_and_email_namespaces_do_not_collide():
    same = "abc123"
    keys = {
        profile_key({"customer_id": None, "anonymous_id": same, "email_hash": None}),
        profile_key({"customer_id": None, "anonymous_id": None, "email_hash": same}),
        profile_key({"customer_id": same, "anonymous_id": None, "email_hash": None}),
    }
    assert len(keys) == 3


@pytest.mark.parametrize("kind", ["anon", "email"])
def test_a_customer_id_cannot_take_over_another_namespace(kind, limits):
    other = {"anonymous_id": "x1"} if kind == "anon" else {"email": "ann@mail.example"}
    victim = decode_message("clickstream", orjson.dumps(event(customer_id=None, **other)), limits, KEY).records[0]
    forged = decode_message("clickstream", orjson.dumps(event(customer_id=profile_key(victim))), limits, KEY)
    # Either the forged id is refused, or it gets a profile of its own.
    assert forged.rejections or profile_key(forged.records[0]) != profile_key(victim)


# --- contract gaps found by these tests -----------------------------------------------------------


def test_non_object_properties_is_rejected_even_with_unknown_fields(limits):
    reason = reason_of("clickstream", event(properties="oops", loyalty_tier="gold"), limits)
    assert reason.startswith("properties:")


@pytest.mark.parametrize("source", ["clickstream", "social"])
def test_blank_channel_is_rejected_where_channel_is_required(source, limits):
    reason = reason_of(source, event(source, channel="   "), limits)
    assert reason.startswith("channel:")


def test_email_and_phone_traits_are_hashed_and_never_kept_in_clear():
    limits = Limits(now_ms=1_795_400_000_000)
    event = validate_event("identify", {
        "event_id": "i1", "type": "identify", "ts": 1_795_300_000_000, "customer_id": "c-9",
        "properties": {"traits": {"age": 30, "email": " Ann@Shop.Example ", "phone": "+49 (170) 123-4567"}},
    }, limits)
    record = to_record(event, b"key")
    serialised = orjson.dumps(record)
    assert b"ann@shop.example" not in serialised.lower() and b"123-4567" not in serialised
    traits = record["properties"]["traits"]
    assert "email" not in traits and "phone" not in traits
    assert traits["email_hash"] == hmac.new(b"key", b"ann@shop.example", hashlib.sha256).hexdigest()[:32]
    assert traits["phone_hash"] == hmac.new(b"key", b"+491701234567", hashlib.sha256).hexdigest()[:32]
    # The trait email identifies the person when the envelope carries none.
    assert record["email_hash"] == traits["email_hash"]


def test_unknown_top_level_fields_that_shadow_properties_go_under_extra():
    limits = Limits(now_ms=1_795_400_000_000)
    event = validate_event("clickstream", {
        "event_id": "x1", "type": "page_view", "ts": 1_795_300_000_000, "customer_id": "c-9", "channel": "web",
        "revenue": 99.0, "url": "https://top.example", "loyalty_tier": "gold",
        "properties": {"url": "https://inner.example"},
    }, limits)
    props = to_record(event, b"k")["properties"]
    assert props["url"] == "https://inner.example"  # the producer's property is not overwritten
    assert "revenue" not in props  # a stray top-level revenue is not read as one
    assert props["extra"] == {"revenue": 99.0, "url": "https://top.example"}
    assert props["loyalty_tier"] == "gold"


def test_identifier_hash_is_hmac_sha256_truncated_to_128_bits():
    for value, key in [("a@b.example", b"k"), ("", b"k" * 80), ("zoë@b.example", bytes(range(40)))]:
        assert hash_identifier(value, key) == hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]

"""The public profile (:func:`models.view.render_profile`), RFM scores and the Redis hash.

The whole rendered profile is compared with an independent recomputation from the records
(``ref.profile`` in conftest.py); the RFM thresholds are the documented tables of
:mod:`models.view`.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import orjson
import pandas as pd
import pytest

from models.outputs import ProfileUpdate
from models.profile import SESSION_GAP_MS, apply_events
from models.view import iso, iso_text, rate, redis_fields, render_profile, rfm, top

BOOKKEEPING_KEYS = {
    "seen",
    "last_event_id",
    "trait_ts",
    "days",
    "days_dropped",
    "sessions_dropped",
    "types",
    "first_ts",
    "last_ts",
}


def walk_keys(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from walk_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk_keys(v)


@pytest.mark.parametrize("seed", range(10))
def test_render_matches_an_independent_recomputation(seed, ref):
    records = ref.random_records(seed)
    got = render_profile(apply_events(None, "c-1", records).state)
    expected = ref.profile(records, "c-1")
    assert got["summary"] == expected["summary"]
    assert got["channels"] == expected["channels"]
    assert list(got["channels"]) == sorted(expected["channels"])
    assert got == expected


@pytest.mark.parametrize("seed", range(3))
def test_render_after_many_batches_matches_the_recomputation(seed, ref):
    records = ref.random_records(50 + seed, n=200)
    rng = random.Random(seed)
    state, batches = None, 0
    i = 0
    while i < len(records):
        size = rng.randint(1, 30)
        state = apply_events(state, "c-1", records[i : i + size]).state
        i, batches = i + size, batches + 1
    assert render_profile(state) == ref.profile(records, "c-1", version=batches)


def test_channel_sub_profiles_match_pandas(ref):
    records = [r for r in ref.random_records(77, n=250) if r["source"] != "identify"]
    view = render_profile(apply_events(None, "c-1", records).state)
    df = pd.DataFrame({"channel": [r["channel"] for r in records], "ts": [r["ts"] for r in records]})
    df["revenue"] = [
        round(r["properties"].get("revenue", 0) * 100) if r["type"] in ("purchase", "pos_purchase") else 0
        for r in records
    ]
    df = df.sort_values(["channel", "ts"])
    df["gap"] = df.groupby("channel")["ts"].diff()
    for channel, g in df.groupby("channel"):
        sub = view["channels"][channel]
        assert sub["events"] == len(g)
        assert sub["sessions"] == int((g["gap"].isna() | (g["gap"] > SESSION_GAP_MS)).sum())
        assert sub["active_days"] == (g["ts"] // ref.DAY).nunique()
        assert sub["revenue"] == g["revenue"].sum() / 100
        assert (
            sub["first_seen"]
            == pd.to_datetime(g["ts"].min(), unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        )


def test_render_is_json_and_a_valid_profile_update(ref):
    records = ref.random_records(5)
    step = apply_events(None, "c-1", records)
    profile = render_profile(step.state)
    text = json.dumps(profile, allow_nan=False)
    assert json.loads(text) == profile
    update = ProfileUpdate(
        customer_id="c-1",
        version=step.state["version"],
        ts="2026-11-23T00:00:00.000Z",
        changed=step.changed,
        profile=profile,
    )
    assert ProfileUpdate.model_validate_json(update.model_dump_json()) == update


def test_render_has_no_bookkeeping(ref):
    profile = render_profile(apply_events(None, "c-1", ref.random_records(6)).state)
    assert not BOOKKEEPING_KEYS & set(walk_keys(profile))
    assert isinstance(profile["summary"]["sessions"], int)
    assert all(
        isinstance(c["sessions"], int) and isinstance(c["active_days"], int) for c in profile["channels"].values()
    )


def test_render_of_an_identify_only_profile(ref):
    identify = ref.record(
        "i",
        "identify",
        ref.T0,
        source="identify",
        traits={"age": 30, "country": "DE", "loyalty_tier": "gold", "interests": ["Yoga"]},
    )
    step = apply_events(None, "c-9", [identify])
    profile = render_profile(step.state)
    assert profile == ref.profile([identify], "c-9")
    assert profile["summary"]["events"] == 0 and profile["summary"]["rfm"]["score"] == "000"
    journey = profile["journey"]
    assert (journey["channels"], journey["first_channel"], journey["last_channel"]) == ([], None, None)
    assert profile["demographics"] == {"age": 30, "country": "DE"} and profile["traits"] == {"loyalty_tier": "gold"}
    ProfileUpdate(customer_id="c-9", version=1, ts="t", changed=step.changed, profile=profile)
    json.dumps(profile, allow_nan=False)


def test_journey_orders_channels_by_first_event(ref):
    r = ref.record
    recs = [
        r("a", "page_view", ref.T0 + 5_000, channel="amazon"),
        r("b", "open", ref.T0 + 1_000, source="email", channel="email"),
        r("c", "like", ref.T0 + 9_000, source="social", channel="tiktok"),
        r("d", "page_view", ref.T0 + 2_000, channel="web"),
        r("e", "open", ref.T0 + 3_000, source="email", channel="email"),
    ]
    journey = render_profile(apply_events(None, "c-1", recs).state)["journey"]
    assert {k: journey[k] for k in ("channels", "first_channel", "last_channel")} == {
        "channels": ["email", "web", "amazon", "tiktok"],
        "first_channel": "email",
        "last_channel": "tiktok",
    }


# --- RFM: the documented thresholds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "r"),
    [(0, 5), (7, 5), (8, 4), (30, 4), (31, 3), (90, 3), (91, 2), (180, 2), (181, 1), (2000, 1)],
)
def test_recency_score(days, r, ref):
    last_order = ref.T0
    assert rfm(1, 100, last_order, last_order + days * ref.DAY + ref.DAY - 1)["r"] == r
    assert rfm(1, 100, last_order, last_order + days * ref.DAY)["recency_days"] == days


@pytest.mark.parametrize(("orders", "f"), [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (9, 4), (10, 5), (250, 5)])
def test_frequency_score(orders, f, ref):
    assert rfm(orders, 100, ref.T0, ref.T0)["f"] == f


@pytest.mark.parametrize(
    ("cents", "m"),
    [
        (0, 1),
        (4_999, 1),
        (5_000, 2),
        (14_999, 2),
        (15_000, 3),
        (49_999, 3),
        (50_000, 4),
        (149_999, 4),
        (150_000, 5),
        (10**9, 5),
    ],
)
def test_monetary_score(cents, m, ref):
    result = rfm(1, cents, ref.T0, ref.T0)
    assert result["m"] == m and result["monetary"] == cents / 100


def test_rfm_without_orders():
    assert rfm(0, 0, None, None) == {
        "recency_days": None,
        "frequency": 0,
        "monetary": 0.0,
        "r": 0,
        "f": 0,
        "m": 0,
        "score": "000",
    }


def test_rfm_through_render_is_measured_to_the_latest_activity(ref):
    r = ref.record
    recs = [r(f"o{i}", "purchase", ref.T0 + i * ref.DAY, revenue=60.0) for i in range(3)]
    recs.append(r("late", "page_view", ref.T0 + 2 * ref.DAY + 45 * ref.DAY))
    summary = render_profile(apply_events(None, "c-1", recs).state)["summary"]
    assert summary["rfm"] == {
        "recency_days": 45,
        "frequency": 3,
        "monetary": 180.0,
        "r": 3,
        "f": 3,
        "m": 3,
        "score": "333",
    }
    assert summary["average_order_value"] == 60.0 and summary["revenue"] == 180.0


# --- sub-blocks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "installed"),
    [
        (["install"], True),
        (["install", "uninstall"], False),
        (["install", "uninstall", "app_open"], True),
        (["install", "uninstall", "push_open"], True),
        (["uninstall"], False),
        (["app_open"], True),
        (["install", "app_open", "uninstall", "screen_view"], True),  # used after the uninstall: back
        (["app_open", "uninstall"], False),
        (["screen_view"], True),
        (["uninstall", "install"], True),
    ],
)
def test_app_installed_unless_the_latest_app_event_is_an_uninstall(events, installed, ref):
    """``events`` in event-time order; applied in reverse to show that arrival order does not matter."""
    recs = [ref.record(f"e{i}", t, ref.T0 + i * 1000, source="app", channel="app") for i, t in enumerate(events)]
    app = render_profile(apply_events(None, "c-1", recs[::-1]).state)["summary"]["app"]
    assert app["installed"] is installed
    assert app["installs"] == events.count("install") and app["uninstalls"] == events.count("uninstall")


def test_email_rates(ref):
    r = ref.record
    recs = [r(f"s{i}", "sent", ref.T0 + i, source="email", channel="email") for i in range(8)]
    recs += [
        r(f"o{i}", "open", ref.T0 + 100 + i, source="email", channel="email", campaign_type="promotion")
        for i in range(3)
    ]
    recs += [r("c0", "click", ref.T0 + 200, source="email", channel="email", campaign_type="newsletter")]
    mail = render_profile(apply_events(None, "c-1", recs).state)["summary"]["email"]
    assert (mail["sent"], mail["opens"], mail["clicks"]) == (8, 3, 1)
    assert mail["open_rate"] == round(3 / 8, 4) and mail["click_rate"] == round(1 / 8, 4)
    assert mail["subscribed"] is True and mail["last_open"] == ref.iso(ref.T0 + 102)
    assert mail["engaging_campaign_types"] == ["promotion", "newsletter"]

    unsub = r("u", "unsubscribe", ref.T0 + 300, source="email", channel="email")
    more_opens = [r(f"x{i}", "open", ref.T0 + 400 + i, source="email", channel="email") for i in range(10)]
    mail = render_profile(apply_events(None, "c-1", recs + [unsub] + more_opens).state)["summary"]["email"]
    assert mail["open_rate"] == 1.0  # capped
    assert mail["subscribed"] is False

    only_opens = render_profile(apply_events(None, "c-1", more_opens).state)["summary"]["email"]
    assert only_opens["open_rate"] is None and only_opens["click_rate"] is None


def test_social_and_offline_blocks(ref):
    r = ref.record
    recs = [
        r("1", "like", ref.T0, source="social", channel="instagram", topic="Hiking"),
        r("2", "comment", ref.T0 + 1, source="social", channel="instagram", topic="hiking "),
        r("3", "follow", ref.T0 + 2, source="social", channel="tiktok", topic="Cooking"),
        r("4", "store_visit", ref.T0 + 3, source="offline", channel="store", store_id="s-2"),
        r("5", "pos_purchase", ref.T0 + 4, source="offline", channel="store", store_id="s-1", revenue=19.99),
        r("6", "pos_purchase", ref.T0 + 5, source="offline", channel="store", store_id="s-1", revenue=0.01),
        r("7", "event_attended", ref.T0 + 6, source="offline", channel="store"),
    ]
    summary = render_profile(apply_events(None, "c-1", recs).state)["summary"]
    assert summary["social"] == {
        "platforms": {"instagram": 2, "tiktok": 1},
        "interactions": {"comment": 1, "follow": 1, "like": 1},
        "topics": ["hiking", "cooking"],
    }
    assert summary["offline"] == {
        "store_visits": 1,
        "events_attended": 1,
        "store_purchases": 2,
        "store_revenue": 20.0,
        "top_stores": ["s-1", "s-2"],
    }
    assert summary["orders"] == 2 and summary["revenue"] == 20.0


# --- small helpers ---------------------------------------------------------------------------------------------------


def test_iso_is_utc_with_milliseconds(ref):
    rng = random.Random(1)
    for _ in range(2_000):
        ms = rng.randrange(946_684_800_000, 4_102_444_800_000)
        assert iso(ms) == ref.iso(ms)
    assert iso(None) is None
    for ms in (0, -1, 86_399_999, 86_400_000, 951_782_400_000, 4_107_542_399_999, 1_795_341_600_123):
        assert iso(ms) == ref.iso(ms)  # epoch, before it, day and leap-day boundaries
    assert iso(1_795_341_600_123.0) == ref.iso(1_795_341_600_123)  # a float takes the general path
    for _ in range(2_000):  # and the datetime formatting it replaced, over the times the validator admits
        ms = rng.randrange(946_684_800_000, 4_102_444_800_000)
        assert iso_text(ms) == datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert (
        datetime.strptime(iso(ref.T0), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000
        == ref.T0
    )


def test_top_ties_are_alphabetical_and_rate_is_capped():
    assert top({"b": 2, "a": 2, "c": 5, "d": 1}, 3) == ["c", "a", "b"]
    assert top({}, 3) == [] and top(None) == []
    assert (rate(3, 8), rate(9, 8), rate(1, 0)) == (0.375, 1.0, None)
    assert rate(1, 3) == 0.3333


# --- the Redis hash ---------------------------------------------------------------------------------------------


def test_redis_fields_are_flat_strings_matching_the_profile(ref):
    r = ref.record
    recs = [
        r(
            "i",
            "identify",
            ref.T0,
            source="identify",
            traits={"age": 35, "gender": "female", "country": "FR", "interests": ["Yoga"]},
        ),
        r("a1", "product_view", ref.T0 + 1_000, channel="amazon", category="shoes"),
        r("a2", "purchase", ref.T0 + 2_000, channel="amazon", category="shoes", revenue=80.5),
        r("a3", "purchase", ref.T0 + 3_000, channel="amazon", category="books", revenue=19.25),
        r("a4", "page_view", ref.T0 + 3_500, channel="amazon"),
        r("w1", "page_view", ref.T0 - 5_000, channel="web"),
        r("m1", "sent", ref.T0 + 4_000, source="email", channel="email"),
        r("m2", "sent", ref.T0 + 5_000, source="email", channel="email"),
        r("m3", "open", ref.T0 + 6_000, source="email", channel="email"),
        r("p1", "install", ref.T0 + 7_000, source="app", channel="app"),
    ]
    profile = render_profile(apply_events(None, "c-1", recs).state)
    blob = orjson.dumps(profile)
    fields = redis_fields(profile, blob)
    assert fields["json"] is blob
    assert all(isinstance(v, str) for k, v in fields.items() if k != "json")
    assert {k: fields[k] for k in fields if k != "json"} == {
        "customer_id": "c-1",
        "version": "1",
        "first_seen": ref.iso(ref.T0 - 5_000),
        "last_seen": ref.iso(ref.T0 + 7_000),
        "events": "9",
        "sessions": "1",
        "active_days": "1",
        "orders": "2",
        "revenue": "99.75",
        "average_order_value": "49.88",  # 99.75 / 2 = 49.875, half to even
        "rfm": "522",
        "channels": "amazon,app,email,web",
        "top_channel": "amazon",
        "first_channel": "web",
        "last_channel": "app",
        "top_category": "shoes",
        "interests": "yoga,shoes,books",
        "email_open_rate": "0.5",
        "app_installed": "1",
        "segment": "",
        "age": "35",
        "gender": "female",
        "country": "FR",
        "region": "",
    }


def test_redis_fields_of_an_empty_profile(ref):
    identify = ref.record("i", "identify", ref.T0, source="identify", traits={"region": "eu-west"})
    profile = render_profile(apply_events(None, "c-2", [identify]).state)
    fields = redis_fields(profile, b"{}")
    assert all(isinstance(v, (str, bytes)) for v in fields.values())
    for name in (
        "first_seen",
        "last_seen",
        "average_order_value",
        "channels",
        "top_channel",
        "first_channel",
        "last_channel",
        "top_category",
        "email_open_rate",
        "app_installed",
        "age",
    ):
        assert fields[name] == "", name
    assert (fields["rfm"], fields["orders"], fields["revenue"], fields["region"]) == ("000", "0", "0.00", "eu-west")


def test_top_matches_the_reference_on_random_counters(ref):
    rng = random.Random(4)
    for _ in range(500):
        counter = {f"k{rng.randrange(40)}": rng.randrange(1, 6) for _ in range(rng.randrange(1, 30))}
        n = rng.randrange(1, 12)
        assert top(counter, n) == ref.top(counter, n)


def test_the_profile_sink_takes_the_redis_fields_and_refuses_other_values(ref):
    from streams.sinks import RedisLayout, RedisProfileSink

    sink = RedisProfileSink("redis://127.0.0.1:1", RedisLayout("t:"))  # never connects: staging only
    profile = render_profile(apply_events(None, "c-1", [ref.record("e1", "page_view", ref.T0)]).state)
    sink.stage("c-1", 1, redis_fields(profile, orjson.dumps(profile)))
    with pytest.raises(TypeError, match="'orders' must be text, not int"):
        sink.stage("c-2", 1, {"orders": 3, "json": b"{}"})
    assert sink.pending == 1


def test_the_json_field_codecs_give_back_the_profile_json(ref):
    """Both codecs of the Redis ``json`` field hold exactly the rendered profile; the zlib one is a
    standard zlib stream that any reader can inflate (checked with zlib itself, not our decoder)."""
    import zlib

    from models.view import decode_profile_json, encode_profile_json, profile_json_text

    for seed in range(6):
        profile = render_profile(apply_events(None, "c-1", ref.random_records(seed, n=120)).state)
        blob = orjson.dumps(profile)
        plain = encode_profile_json(blob, "plain")
        packed = encode_profile_json(blob, "zlib")
        assert plain == blob
        assert zlib.decompress(packed) == blob
        assert packed[:1] == b"x" and blob[:1] == b"{"  # what tells a reader which one it holds
        assert profile_json_text(plain) == profile_json_text(packed) == blob
        assert decode_profile_json(plain) == decode_profile_json(packed) == json.loads(blob)


def test_an_unreadable_json_field_or_an_unknown_codec_is_a_clear_error():
    from models.view import decode_profile_json, encode_profile_json

    with pytest.raises(ValueError, match="neither JSON nor a zlib stream"):
        decode_profile_json(b"")
    with pytest.raises(ValueError, match="neither JSON nor a zlib stream"):
        decode_profile_json(b"[1, 2]")
    with pytest.raises(ValueError, match="broken zlib stream"):
        decode_profile_json(b"x\x9c not deflate")
    with pytest.raises(ValueError, match="expected one of plain, zlib"):
        encode_profile_json(b"{}", "gzip")


def test_the_json_codec_setting_is_checked_at_start():
    from streams.resync import memberships
    from streams.settings import ConfigError, load_settings
    from streams.sinks import RedisLayout, RedisProfileSink

    assert load_settings().redis_json_codec == "plain"
    assert load_settings(redis_json_codec="ZLIB").redis_json_codec == "zlib"
    with pytest.raises(ConfigError, match="OMNIPROFILE_REDIS_JSON_CODEC: Input should be 'plain' or 'zlib'"):
        load_settings(redis_json_codec="gzip")
    with pytest.raises(ValueError, match="unknown profile JSON codec 'lz4'"):
        RedisProfileSink("redis://127.0.0.1:1", RedisLayout("t:"), json_codec="lz4")
    # The resync reads a merged-away profile's segments from what Redis holds, in either codec.
    import zlib

    held = b'{"customer_id": "c-1", "segments": {"all": "all-2"}}'
    assert memberships(held) == memberships(zlib.compress(held)) == {"all": "all-2"}

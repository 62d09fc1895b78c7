"""Raw message values -> records and rejections (:mod:`models.ingest`); dead letters; grouping.

"Errors are data": whatever bytes arrive, decode_message returns records and rejections and
never raises; every rejection carries a reason that says what is wrong and where.
"""

from __future__ import annotations

import base64
import json
import random

import orjson
import pytest

from models.ingest import Rejection, dead_letter, decode_message, group_by_profile
from models.outputs import DeadLetter

TS = 1_795_341_600_000  # 2026-11-22T10:00:00Z
KEY = b"unit-test-key"
DL_LIMIT = 64 * 1024  # "Large values keep their first 64 KiB" (dead_letter docstring)


def ev(event_id: str = "e-1", **fields: object) -> dict:
    data = {"event_id": event_id, "type": "page_view", "ts": TS, "customer_id": "c-1", "channel": "web"}
    data.update(fields)
    return data


def raw(value: object) -> bytes:
    return json.dumps(value).encode()


def decode(value: bytes | None, limits, source: str = "clickstream", **kw):
    return decode_message(source, value, limits, KEY, **kw)


def only_rejection(result) -> Rejection:
    assert result.records == []
    assert len(result.rejections) == 1
    return result.rejections[0]


# --- whole-message problems ------------------------------------------------------------------------


def test_a_valid_event_becomes_one_record(limits):
    result = decode(raw(ev()), limits)
    assert result.rejections == []
    assert [(r["event_id"], r["ts"], r["channel"], r["source"]) for r in result.records] == [
        ("e-1", TS, "web", "clickstream")
    ]


@pytest.mark.parametrize("value", [b"", None])
def test_empty_or_null_value(value, limits):
    rejection = only_rejection(decode(value, limits))
    assert "empty message value" in rejection.reason
    assert rejection.payload == b"" and rejection.index is None


@pytest.mark.parametrize(
    "value", [b'{"event_id": "e-1", "type":', b"{", b'[{"event_id": "e-1"}', b"{'single': 'quotes'}"]
)
def test_truncated_or_broken_json(value, limits):
    rejection = only_rejection(decode(value, limits))
    assert rejection.reason.startswith("invalid JSON"), rejection.reason
    assert rejection.payload == value and rejection.index is None


@pytest.mark.parametrize(("value", "position"), [(b"\xff\xfe{}", 0), (b'{"event_id": "caf\xe9"}', 17)])
def test_non_utf8_bytes(value, position, limits):
    rejection = only_rejection(decode(value, limits))
    assert "not UTF-8" in rejection.reason and f"position {position}" in rejection.reason, rejection.reason
    assert rejection.payload == value


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"42", "int"), (b"3.5", "float"), (b'"event"', "str"), (b"true", "bool"), (b"null", "NoneType")],
)
def test_json_that_is_not_an_object(value, kind, limits):
    rejection = only_rejection(decode(value, limits))
    assert "expected a JSON object" in rejection.reason and kind in rejection.reason
    assert rejection.payload == value


def test_empty_array(limits):
    rejection = only_rejection(decode(b"[]", limits))
    assert "empty JSON array" in rejection.reason


def test_message_over_max_bytes(limits):
    message = raw(ev())
    padded = message + b" " * (300 - len(message))  # still valid JSON
    assert len(padded) == 300
    assert decode(padded, limits, max_bytes=300).records[0]["event_id"] == "e-1"
    rejection = only_rejection(decode(padded + b" ", limits, max_bytes=300))
    assert "301 bytes" in rejection.reason and "limit of 300" in rejection.reason
    assert rejection.payload == padded + b" "


# --- arrays: each element on its own --------------------------------------------------------------


def test_array_keeps_valid_elements_and_rejects_each_invalid_one_with_its_index(limits):
    no_id = ev("e-2")
    del no_id["customer_id"]
    elements = [
        ev("e-0"),
        42,
        no_id,
        ev("e-3", anonymous_id="anon-3"),
        ev("e-4", type="open"),
        ev("e-5", properties={"price": "12"}),
        ev("e-6", ts="2026-11-22T10:00:00"),
        ev("e-7", customer_id="c-2"),
    ]
    result = decode(raw(elements), limits)
    assert [r["event_id"] for r in result.records] == ["e-0", "e-3", "e-7"]
    assert [r.index for r in result.rejections] == [1, 2, 4, 5, 6]
    reasons = {r.index: r.reason for r in result.rejections}
    assert "expected a JSON object" in reasons[1]
    assert "no identifier" in reasons[2]
    assert reasons[4].startswith("type:")
    assert reasons[5].startswith("properties.price:")
    assert reasons[6].startswith("ts:")
    for rejection in result.rejections:  # the payload is that element, not the whole message
        assert orjson.loads(rejection.payload) == elements[rejection.index]


def test_records_keep_message_order(limits):
    elements = [ev(f"e-{i}", customer_id=f"c-{i % 3}") for i in range(20)]
    assert [r["event_id"] for r in decode(raw(elements), limits).records] == [f"e-{i}" for i in range(20)]


_FUZZ_VALUES = (
    None,
    0,
    -1,
    1,
    2**31,
    TS,
    1.5,
    "",
    " ",
    "x",
    "2026-11-22",
    "2026-11-22T10:00:00+02:00",
    [],
    [1],
    {},
    {"a": 1},
    True,
    "é",
    "http://[::1",
    "a" * 300,
)


def test_decode_never_raises_and_accounts_for_every_element(limits):
    """Seeded random damage to valid events: every element is a record or a rejection."""
    rng = random.Random(20261122)
    base = {
        "clickstream": ev(
            type="purchase", properties={"revenue": 10.0, "category": "books", "referrer": "https://a.example/x"}
        ),
        "email": {
            "event_id": "e",
            "type": "open",
            "ts": TS,
            "email": "a@b.example",
            "properties": {"campaign_type": "newsletter"},
        },
        "identify": {
            "event_id": "e",
            "type": "identify",
            "ts": TS,
            "customer_id": "c",
            "properties": {"traits": {"age": 30}},
        },
        "offline": {
            "event_id": "e",
            "type": "pos_purchase",
            "ts": TS,
            "anonymous_id": "a",
            "properties": {"revenue": 5, "store_id": "s"},
        },
    }
    seen_records = seen_rejections = 0
    for source, good in base.items():
        elements = []
        for i in range(150):
            element = json.loads(json.dumps(good))
            element["event_id"] = f"{source}-{i}"
            for _ in range(rng.randint(0, 3)):
                target = (
                    element
                    if rng.random() < 0.5 or not isinstance(element.get("properties"), dict)
                    else element["properties"]
                )
                target[rng.choice([*target, "device", "extra"])] = rng.choice(_FUZZ_VALUES)
            elements.append(element)
        result = decode(raw(elements), limits, source=source)
        assert len(result.records) + len(result.rejections) == len(elements)
        rejected = [r.index for r in result.rejections]
        assert rejected == sorted(set(rejected)) and all(0 <= i < len(elements) for i in rejected)
        kept = [e["event_id"] for i, e in enumerate(elements) if i not in set(rejected)]
        assert [r["event_id"] for r in result.records] == kept
        assert all(r.reason for r in result.rejections)
        seen_records += len(result.records)
        seen_rejections += len(result.rejections)
    assert seen_records > 50 and seen_rejections > 50  # the damage produced both kinds


@pytest.mark.parametrize(
    ("ts", "word"),
    [
        (TS * 1000, "future"),  # microseconds sent as milliseconds
        (TS * 1_000_000, "future"),  # nanoseconds
        (10**20, "future"),
        (1e30, "future"),
        (-(10**20), "before"),
    ],
)
def test_an_absurd_ts_is_a_rejection_not_an_exception(ts, word, limits):
    rejection = only_rejection(decode(raw(ev(ts=ts)), limits))
    assert rejection.reason.startswith("ts:") and word in rejection.reason, rejection.reason


# --- dead letters -----------------------------------------------------------------------------------


def test_dead_letter_of_a_whole_message(limits):
    message = b'{"event_id": "e-1", "type":'
    rejection = only_rejection(decode(message, limits))
    letter = dead_letter("events.clickstream", 3, 1041, rejection, "2026-11-23T00:00:00.000Z")
    DeadLetter.model_validate(letter)
    assert letter == {
        "source_topic": "events.clickstream",
        "partition": 3,
        "offset": 1041,
        "index": None,
        "error": rejection.reason,
        "value": message.decode(),
        "value_encoding": "utf-8",
        "value_size": len(message),
        "value_truncated": False,
        "ts": "2026-11-23T00:00:00.000Z",
    }
    json.dumps(letter)


def test_dead_letter_of_an_array_element_keeps_the_index(limits):
    result = decode(raw([ev("e-0"), ev("e-1", type="teleport")]), limits)
    letter = dead_letter("events.clickstream", 0, 7, result.rejections[0], "t")
    DeadLetter.model_validate(letter)
    assert letter["index"] == 1
    assert json.loads(letter["value"]) == ev("e-1", type="teleport")


def test_dead_letter_base64_for_non_utf8(limits):
    message = b"\x00\xff\xfe\xfdnot text\x80"
    letter = dead_letter("events.app", 1, 2, only_rejection(decode(message, limits, source="app")), "t")
    DeadLetter.model_validate(letter)
    assert letter["value_encoding"] == "base64"
    assert base64.b64decode(letter["value"]) == message
    assert letter["value_size"] == len(message) and letter["value_truncated"] is False


def test_dead_letter_truncates_large_values(limits):
    message = raw(ev(properties={"text": "x" * 200_000}))
    rejection = only_rejection(decode(message, limits, max_bytes=100_000))
    letter = dead_letter("events.clickstream", 0, 0, rejection, "t")
    DeadLetter.model_validate(letter)
    assert letter["value_truncated"] is True
    assert letter["value_size"] == len(message)
    assert letter["value_encoding"] == "utf-8"
    assert letter["value"] == message[:DL_LIMIT].decode()
    assert len(orjson.dumps(letter)) < DL_LIMIT + 1_000


def test_dead_letter_truncates_large_non_utf8_values():
    payload = bytes(range(256)) * 1_000
    letter = dead_letter("events.app", 0, 0, Rejection("bad", payload), "t")
    assert letter["value_encoding"] == "base64" and letter["value_truncated"] is True
    assert base64.b64decode(letter["value"]) == payload[:DL_LIMIT]


def test_dead_letter_at_the_limit_is_not_truncated():
    payload = b"y" * DL_LIMIT
    letter = dead_letter("t", 0, 0, Rejection("bad", payload), "t")
    assert letter["value_truncated"] is False and letter["value"] == payload.decode()


def test_dead_letter_truncation_keeps_utf8_text_as_text():
    payload = b"a" * (DL_LIMIT - 1) + "é".encode() * 50  # 'é' is 2 bytes: one straddles the cut
    letter = dead_letter("events.clickstream", 0, 0, Rejection("too large", payload), "t")
    assert letter["value_truncated"] is True
    assert letter["value_encoding"] == "utf-8"
    assert payload.decode().startswith(letter["value"])
    assert DL_LIMIT - 4 < len(letter["value"].encode()) <= DL_LIMIT


# --- grouping -----------------------------------------------------------------------------------------


def test_group_by_profile_namespaces_and_order(limits):
    elements = [
        ev("e-0", customer_id="c-1"),
        ev("e-1", customer_id=None, anonymous_id="a-1"),
        ev("e-2", customer_id=None, email="ann@mail.example"),
        ev("e-3", customer_id="c-1", anonymous_id="a-1"),
        ev("e-4", customer_id=None, anonymous_id="a-1", email="ann@mail.example"),
        ev("e-5", customer_id="c-2"),
        ev("e-6", customer_id=None, email="ANN@mail.example"),
    ]
    records = decode(raw(elements), limits).records
    groups = group_by_profile(records)
    email_keys = [k for k in groups if k.startswith("email:")]
    assert len(email_keys) == 1 and "ann" not in email_keys[0]
    assert {k: [r["event_id"] for r in rs] for k, rs in groups.items()} == {
        "c-1": ["e-0", "e-3"],
        "anon:a-1": ["e-1", "e-4"],
        email_keys[0]: ["e-2", "e-6"],
        "c-2": ["e-5"],
    }
    assert list(groups) == ["c-1", "anon:a-1", email_keys[0], "c-2"]  # first appearance


def test_group_by_profile_of_nothing():
    assert group_by_profile([]) == {}

"""From raw Kafka message values to validated records and dead-letter rejections.

Bad input flows on as data (:class:`Rejection`), never as an exception: a message is
one JSON event or a JSON array of events, and each element is judged on its own, so
one bad element of an array does not cost the good ones.

Examples
--------
>>> limits = Limits(now_ms=1_795_400_000_000)
>>> good = b'{"event_id":"e1","type":"open","ts":1795341600000,"customer_id":"c-1"}'
>>> result = decode_message("email", good, limits, hash_key=b"k")
>>> [r["event_id"] for r in result.records], result.rejections
(['e1'], [])
>>> decode_message("email", b'{"event_id":', limits, hash_key=b"k").rejections[0].reason[:30]
'invalid JSON: unexpected end o'
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import orjson

from models.events import EventRecord, InvalidEvent, Limits, profile_key, to_record, validate_event

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why (part of) a message cannot be used.

    ``index`` is the element's position when the message was a JSON array (then
    ``payload`` is that element re-encoded as JSON), None for the whole message (then
    ``payload`` is the original bytes).
    """

    reason: str
    payload: bytes
    index: int | None = None


@dataclass(slots=True)
class Decoded:
    records: list[EventRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"value is not UTF-8 text (byte 0x{raw[bad.start]:02x} at position {bad.start})"
    return f"invalid JSON: {exc}"


def decode_message(
    source: str,
    raw: bytes | None,
    limits: Limits | None,
    hash_key: bytes,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Decoded:
    """Decode one message value of an input topic of ``source``."""
    out = Decoded()
    if not raw:
        out.rejections.append(Rejection("empty message value: expected a JSON event or array of events", b""))
        return out
    if len(raw) > max_bytes:
        out.rejections.append(
            Rejection(
                f"message is {len(raw):,} bytes, over the limit of {max_bytes:,} "
                "(OMNIPROFILE_MAX_EVENT_BYTES); split it into smaller messages",
                raw,
            )
        )
        return out
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        out.rejections.append(Rejection(_json_error(raw, exc), raw))
        return out

    if isinstance(value, dict):
        _decode_one(source, value, raw, None, limits, hash_key, out)
    elif isinstance(value, list):
        if not value:
            out.rejections.append(Rejection("empty JSON array: no events in the message", raw))
        for index, element in enumerate(value):
            _decode_one(source, element, None, index, limits, hash_key, out)
    else:
        out.rejections.append(
            Rejection(f"expected a JSON object or an array of objects, got {type(value).__name__}", raw)
        )
    return out


def _decode_one(
    source: str,
    value: object,
    raw: bytes | None,
    index: int | None,
    limits: Limits | None,
    hash_key: bytes,
    out: Decoded,
) -> None:
    try:
        event = validate_event(source, value, limits)
    except InvalidEvent as exc:
        payload = raw if raw is not None else orjson.dumps(value)
        out.rejections.append(Rejection(str(exc), payload, index))
        return
    out.records.append(to_record(event, hash_key))


DEADLETTER_VALUE_LIMIT = 65_536


def dead_letter(topic: str, partition: int, offset: int, rejection: Rejection, ts: str) -> dict[str, object]:
    """The ``profiles.deadletter`` record of a rejection (contract; :class:`models.outputs.DeadLetter`).

    Large values keep their first 64 KiB, so a dead letter never breaks the broker's
    message size limit; ``value_size`` tells the original size.

    >>> d = dead_letter("events.app", 2, 41, Rejection("empty message value", b""), "2026-11-23T00:00:00.000Z")
    >>> d["error"], d["value"], d["value_encoding"]
    ('empty message value', '', 'utf-8')
    >>> dead_letter("events.app", 0, 1, Rejection("bad", b"\\xff\\xfe"), "t")["value"]
    '//4='
    """
    payload = rejection.payload
    truncated = len(payload) > DEADLETTER_VALUE_LIMIT
    shown = payload[:DEADLETTER_VALUE_LIMIT]
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(shown).decode("ascii"), "base64"
    else:  # UTF-8 text stays text, cut at a character boundary
        value, encoding = shown.decode("utf-8", errors="ignore"), "utf-8"
    return {
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "index": rejection.index,
        "error": rejection.reason,
        "value": value,
        "value_encoding": encoding,
        "value_size": len(payload),
        "value_truncated": truncated,
        "ts": ts,
    }


def group_by_profile(records: list[EventRecord]) -> dict[str, list[EventRecord]]:
    """Records of one message grouped by the profile they update, order kept."""
    groups: dict[str, list[EventRecord]] = {}
    for record in records:
        groups.setdefault(profile_key(record), []).append(record)
    return groups


# Dead-letter reasons grouped into a few kinds (a metric label must not take free text).
_REASON_KINDS = (
    ("empty message value", "empty"),
    ("empty JSON array", "empty"),
    ("not UTF-8", "not_utf8"),
    ("over the limit", "too_large"),
    ("invalid JSON", "invalid_json"),
    ("expected a JSON object", "not_an_object"),
    ("no usable identifier", "no_identifier"),
    ("unexpected topic", "unexpected_topic"),
    ("internal error", "processing_failed"),
)


def reason_kind(reason: str) -> str:
    """The kind of a dead-letter reason, for counting (``invalid_event`` is any schema error).

    >>> reason_kind("message is 2,000,000 bytes, over the limit of 1,048,576 (...)")
    'too_large'
    >>> reason_kind("properties.revenue: Input should be a valid number")
    'invalid_event'
    >>> reason_kind("internal error after 4 attempts: KafkaTimeoutError: ")
    'processing_failed'
    """
    for text, kind in _REASON_KINDS:
        if text in reason:
            return kind
    return "invalid_event"

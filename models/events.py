"""The event envelope of the contract, one pydantic model per source.

An input event is validated into a model of its source (:func:`validate_event`), then
flattened into an :data:`EventRecord`: a plain JSON-ready dict with the email replaced
by a keyed hash and the time as epoch milliseconds. Records are what travel on the
internal topic and what :mod:`models.profile` consumes.

Examples
--------
>>> limits = Limits(now_ms=1_795_400_000_000)  # 2026-11-23
>>> event = validate_event("email", {"event_id": "e1", "type": "open",
...     "ts": "2026-11-22T10:00:00Z", "customer_id": "c-1"}, limits)
>>> event.channel, event.ts
('email', 1795341600000)
>>> validate_event("email", {"event_id": "e2", "type": "purchase", "ts": 1_795_341_600_000,
...     "customer_id": "c-1"}, limits)
Traceback (most recent call last):
...
models.events.InvalidEvent: type: 'purchase' is not an email event type (expected one of: sent, open, click, unsubscribe, bounce)
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

SOURCE_TYPES: dict[str, tuple[str, ...]] = {
    "clickstream": ("page_view", "product_view", "search", "add_to_cart", "checkout", "purchase"),
    "email": ("sent", "open", "click", "unsubscribe", "bounce"),
    "app": ("install", "uninstall", "app_open", "screen_view", "push_open", "purchase"),
    "social": ("follow", "like", "comment", "share", "message", "mention", "ad_click"),
    "offline": ("store_visit", "event_attended", "pos_purchase"),
    "identify": ("identify", "alias"),
}

# The channel a source's events happen on when the producer names none.
DEFAULT_CHANNEL: dict[str, str | None] = {
    "clickstream": None,  # required: the website or marketplace
    "email": "email",
    "app": "app",
    "social": None,  # required: the platform
    "offline": "store",
    "identify": "web",
}

PURCHASE_TYPES = frozenset({"purchase", "pos_purchase"})

# Properties a type cannot do without.
REQUIRED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "purchase": ("revenue",),
    "pos_purchase": ("revenue",),
    "identify": ("traits",),
    "alias": ("previous_id",),
}

# Profile keys of events without a customer_id live in these namespaces (profile_key).
RESERVED_KEY_PREFIXES = ("anon:", "email:")

ENVELOPE_FIELDS = frozenset(
    {"event_id", "type", "ts", "customer_id", "anonymous_id", "email", "device_id", "channel", "device",
     "properties"}
)

EventRecord = dict[str, Any]
"""A validated event as a JSON-ready dict: ``event_id``, ``source``, ``type``, ``ts``
(epoch ms), ``customer_id``, ``anonymous_id``, ``email_hash``, ``device_id`` (each identifier
may be None), ``channel``, ``device`` (or None) and ``properties`` (None-free dict)."""


class InvalidEvent(ValueError):
    """An event that breaks the contract; the message is the dead-letter reason."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What counts as a plausible event time, relative to ``now_ms`` (wall clock).

    Events more than ``max_future_ms`` ahead of now (clock skew, unit mistakes) or
    before ``min_ts_ms`` (epoch zero, seconds taken for milliseconds) are invalid.
    """

    now_ms: int
    max_future_ms: int = 86_400_000
    min_ts_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z

    @classmethod
    def from_clock(cls, max_future_seconds: int = 86_400, min_year: int = 2000) -> Limits:
        now = datetime.now(timezone.utc)
        floor = datetime(min_year, 1, 1, tzinfo=timezone.utc)
        return cls(
            now_ms=int(now.timestamp() * 1000),
            max_future_ms=max_future_seconds * 1000,
            min_ts_ms=int(floor.timestamp() * 1000),
        )


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms after the epoch"


class Traits(BaseModel):
    """Identify traits. Unknown traits are kept (they reach the profile's ``traits``)."""

    model_config = ConfigDict(extra="allow", strict=True)

    age: int | None = Field(default=None, ge=0, le=130)
    gender: str | None = None
    region: str | None = None
    country: str | None = None
    income_band: str | None = None
    marital_status: str | None = None
    employment_status: str | None = None
    interests: list[str] | None = Field(default=None, max_length=100)


class Properties(BaseModel):
    """Type-specific properties of the contract; unknown keys are kept, untyped."""

    model_config = ConfigDict(extra="allow", strict=True)

    url: str | None = None
    referrer: str | None = None
    utm_source: str | None = None
    utm_medium: str | None = None
    utm_campaign: str | None = None
    search_query: str | None = None
    product_id: str | None = None
    category: str | None = None
    # Upper bounds keep sums exact and JSON-safe; no single order is worth a billion.
    price: float | None = Field(default=None, ge=0, le=1e9)
    quantity: int | None = Field(default=None, ge=0, le=1_000_000)
    order_id: str | None = None
    revenue: float | None = Field(default=None, ge=0, le=1e9)
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    discount: float | None = Field(default=None, ge=0, le=1e9)
    campaign_id: str | None = None
    campaign_type: Literal["newsletter", "promotion", "transactional"] | None = None
    screen: str | None = None
    app_version: str | None = None
    os: str | None = None
    post_id: str | None = None
    handle: str | None = Field(default=None, max_length=200, description="the author's handle on a social platform")
    topic: str | None = None
    text: str | None = None
    store_id: str | None = None
    region: str | None = None
    traits: Traits | None = None
    previous_id: str | None = None


class Envelope(BaseModel):
    """The envelope shared by every source. Subclasses fix ``source`` and the types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: ClassVar[str]

    event_id: str = Field(min_length=1, max_length=200)
    type: str
    ts: int = Field(description="event time, epoch milliseconds (ISO-8601 with zone accepted on input)")
    customer_id: str | None = Field(default=None, max_length=200)
    anonymous_id: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    device_id: str | None = Field(default=None, max_length=200, description="a device identifier (links identities)")
    channel: str = Field(min_length=1, max_length=64, pattern=r"\S")
    device: Literal["mobile", "desktop", "tablet", "other"] | None = None
    properties: Properties = Field(default_factory=Properties)

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        # Unknown top-level fields are kept in properties (contract), never lost. One that
        # would shadow a typed property or an existing key goes under properties.extra, so
        # the profile never reads it by accident.
        extra = [k for k in data if k not in ENVELOPE_FIELDS]
        props = data.get("properties")
        if extra and (props is None or isinstance(props, dict)):
            props = dict(props or {})
            for key in extra:
                if key in props or key in Properties.model_fields:
                    props.setdefault("extra", {})
                    if isinstance(props["extra"], dict):
                        props["extra"][key] = data.pop(key)
                        continue
                props[key] = data.pop(key)
            data["properties"] = props
        # Blank identifiers carry no identity; a blank channel is no channel.
        for key in ("customer_id", "anonymous_id", "email", "device_id", "channel"):
            value = data.get(key)
            if isinstance(value, str) and not value.strip():
                data[key] = None
        if data.get("channel") is None and DEFAULT_CHANNEL.get(cls.source):
            data["channel"] = DEFAULT_CHANNEL[cls.source]
        return data

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        allowed = SOURCE_TYPES[cls.source]
        if value not in allowed:
            raise ValueError(
                f"{value!r} is not an {cls.source} event type (expected one of: {', '.join(allowed)})"
                if cls.source[0] in "aeiou"
                else f"{value!r} is not a {cls.source} event type (expected one of: {', '.join(allowed)})"
            )
        return value

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: Any, info: ValidationInfo) -> int:
        if isinstance(value, bool):
            raise ValueError("expected ISO-8601 text with a zone or epoch milliseconds, got a boolean")
        if isinstance(value, int):
            ms = value
        elif isinstance(value, float) and value.is_integer():
            ms = int(value)
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            except (ValueError, OverflowError):
                raise ValueError(f"{value[:60]!r} is not an ISO-8601 timestamp") from None
            if parsed.tzinfo is None:
                raise ValueError(f"{value!r} has no time zone; add 'Z' or an offset such as +01:00")
            ms = int(parsed.timestamp() * 1000)
        else:
            raise ValueError(
                f"expected ISO-8601 text with a zone or epoch milliseconds, got {type(value).__name__}"
            )
        limits: Limits | None = (info.context or {}).get("limits")
        if limits is not None:
            if ms > limits.now_ms + limits.max_future_ms:
                raise ValueError(
                    f"{_iso(ms)} is more than {limits.max_future_ms // 1000} s in the future "
                    "(clock skew, or seconds/microseconds sent as milliseconds?)"
                )
            if ms < limits.min_ts_ms:
                raise ValueError(f"{_iso(ms)} is before {_iso(limits.min_ts_ms)} (seconds sent as milliseconds?)")
        return ms

    @field_validator("customer_id")
    @classmethod
    def _not_a_reserved_namespace(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(RESERVED_KEY_PREFIXES):
            raise ValueError(
                f"must not start with {' or '.join(RESERVED_KEY_PREFIXES)} (reserved for profiles of "
                "anonymous ids and emails)"
            )
        return value

    @field_validator("email")
    @classmethod
    def _plausible_email(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.strip().lower()
            local, at, domain = value.partition("@")
            if not (local and at and "." in domain):
                raise ValueError("is not an email address")
        return value

    @model_validator(mode="after")
    def _check_type_and_identity(self) -> Envelope:
        if not (self.customer_id or self.anonymous_id or self.email):
            raise ValueError("no identifier: at least one of customer_id, anonymous_id, email is required")
        for name in REQUIRED_PROPERTIES.get(self.type, ()):
            if getattr(self.properties, name) is None:
                article = "an" if self.type[0] in "aeiou" else "a"
                raise ValueError(f"{article} {self.type} event needs properties.{name}")
        return self


class ClickstreamEvent(Envelope):
    source: ClassVar[str] = "clickstream"


class EmailEvent(Envelope):
    source: ClassVar[str] = "email"


class AppEvent(Envelope):
    source: ClassVar[str] = "app"


class SocialEvent(Envelope):
    source: ClassVar[str] = "social"


class OfflineEvent(Envelope):
    source: ClassVar[str] = "offline"


class IdentifyEvent(Envelope):
    source: ClassVar[str] = "identify"


EVENT_MODELS: dict[str, type[Envelope]] = {
    m.source: m for m in (ClickstreamEvent, EmailEvent, AppEvent, SocialEvent, OfflineEvent, IdentifyEvent)
}


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, ``location: message``, for a dead-letter reason."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unexpected field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate_event(source: str, data: Any, limits: Limits | None = None) -> Envelope:
    """Validate one decoded JSON value as an event of ``source``; raise :class:`InvalidEvent`."""
    model = EVENT_MODELS.get(source)
    if model is None:
        raise InvalidEvent(f"unknown source {source!r}")
    try:
        return model.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        raise InvalidEvent(describe_errors(exc)) from None


def hash_identifier(value: str, key: bytes) -> str:
    """Keyed hash of a personal identifier (HMAC-SHA256, 128 bits as hex).

    >>> hash_identifier("a@b.example", b"k") == hash_identifier("a@b.example", b"k")
    True
    >>> len(hash_identifier("a@b.example", b"k"))
    32
    """
    return hmac.digest(key, value.encode("utf-8"), "sha256").hex()[:32]  # one-shot C HMAC: same digest


PII_TRAITS = ("email", "phone")


def to_record(event: Envelope, hash_key: bytes) -> EventRecord:
    """Flatten a validated event for the profile step; no clear email or phone leaves here.

    An ``email`` or ``phone`` trait (where Segment-style producers put them) is replaced
    by its keyed hash (``email_hash`` / ``phone_hash``); a trait email also serves as the
    event's email when the envelope has none.
    """
    properties = event.properties.model_dump(exclude_none=True)
    email = event.email
    traits = properties.get("traits")
    if traits:
        for name in PII_TRAITS:
            value = traits.pop(name, None)
            if isinstance(value, str) and value.strip():
                normalised = value.strip().lower() if name == "email" else "".join(ch for ch in value if ch.isdigit() or ch == "+")
                traits[f"{name}_hash"] = hash_identifier(normalised, hash_key)
                if name == "email" and email is None and "@" in normalised:
                    email = normalised
    return {
        "event_id": event.event_id,
        "source": event.source,
        "type": event.type,
        "ts": event.ts,
        "customer_id": event.customer_id,
        "anonymous_id": event.anonymous_id,
        "email_hash": hash_identifier(email, hash_key) if email else None,
        "device_id": event.device_id,
        "channel": event.channel.strip().lower(),
        "device": event.device,
        "properties": properties,
    }


def profile_key(record: EventRecord) -> str:
    """The profile an event belongs to until identities are stitched.

    A known ``customer_id`` wins; otherwise the anonymous id, then the email hash,
    each in its own namespace so that values cannot collide.

    >>> profile_key({"customer_id": None, "anonymous_id": "x1", "email_hash": None})
    'anon:x1'
    """
    if record["customer_id"]:
        return record["customer_id"]
    if record["anonymous_id"]:
        return f"anon:{record['anonymous_id']}"
    return f"email:{record['email_hash']}"

"""Output records of the contract, and the JSON Schemas shipped with the package.

The worker builds these as plain dicts on the hot path; the models here are the
documented shape (their JSON Schemas are in ``models/schemas``) and the tests validate
real output against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from models.events import DEFAULT_CHANNEL, EVENT_MODELS, SOURCE_TYPES

SCHEMA_VERSION = 1


def update_json(head: dict[str, Any], profile_json: bytes) -> bytes:
    """A ``ProfileUpdate`` as JSON: ``head`` (every field but the profile) with ``"profile"`` last,
    spliced from the profile's JSON already made (for Redis), the same bytes as dumping it whole.

    >>> update_json({"customer_id": "c-1", "version": 2}, b'{"events":3}')
    b'{"customer_id":"c-1","version":2,"profile":{"events":3}}'
    """
    if not head:
        return b'{"profile":' + profile_json + b"}"
    return orjson.dumps(head)[:-1] + b',"profile":' + profile_json + b"}"


SCHEMA_DIR = Path(__file__).parent / "schemas"


class ProfileUpdate(BaseModel):
    """On ``profiles.updates``, keyed by customer id, after every change of a profile."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    customer_id: str
    version: int = Field(ge=1, description="raised by one on every change of this customer's profile")
    ts: str = Field(description="when the worker published it (ISO-8601 UTC)")
    changed: list[str] = Field(description="the parts of the profile that changed; empty on a re-publish")
    profile: dict[str, Any] = Field(description="the merged profile with per-channel sub-profiles")


class SegmentChange(BaseModel):
    """On ``profiles.segments`` when a customer moves between segments (issue 3)."""

    customer_id: str
    scope: str = Field(description="'all' or a channel")
    from_segment: str | None
    to_segment: str
    model_version: int
    ts: str


class NamedShare(BaseModel):
    name: str
    share: float = Field(ge=0, le=1)


class SegmentPersona(BaseModel):
    """What the members of one segment have in common (:mod:`models.personas`)."""

    model_config = ConfigDict(extra="forbid")

    segment: str
    label: str = Field(description="derived from what sets the segment apart, e.g. 'bargain-hunting marketplace shoppers'")
    size: int = Field(ge=0, description="members")
    share: float = Field(ge=0, le=1, description="of the customers with a segment in this scope")
    top_channels: list[NamedShare] = Field(description="channels by share of the members' events")
    top_interests: list[NamedShare] = Field(description="interests by share of members having them in their top 3")
    age_band: str | None = Field(description="the most common age band among members with a known age")
    age_known: float = Field(ge=0, le=1, description="share of members with a known age")
    devices: list[NamedShare] = Field(description="members' main device")
    avg_spend: float = Field(description="revenue per member")
    avg_orders: float
    buyer_share: float = Field(ge=0, le=1)
    discount_share: float = Field(ge=0, le=1, description="share of orders with a discount")
    avg_events: float
    active_share: float = Field(ge=0, le=1, description="members active in the last 30 days")
    email_open_rate: float = Field(ge=0, description="opens / emails sent")
    email_click_rate: float = Field(ge=0, description="clicks / emails sent")
    email_reached_share: float = Field(ge=0, le=1, description="members who were sent email")
    app_user_share: float = Field(ge=0, le=1, description="members who opened the app")
    avg_app_opens: float
    store_visitor_share: float = Field(ge=0, le=1)
    social_share: float = Field(ge=0, le=1, description="members with social interactions")
    group_shares: dict[str, float] = Field(description="share of events per channel family")
    segments: list[NamedShare] = Field(
        default_factory=list, description="scope 'movers': the members' segments in the merged scope"
    )


class SegmentSummaries(BaseModel):
    """On ``profiles.segment-summaries`` (compacted), keyed by scope: the personas of its segments.

    Scope ``movers`` holds the customers who moved between channels, one entry per channel pair
    (``segment`` is the pair, ``from>to``); a customer counts in every pair they moved through.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    scope: str = Field(description="'all' or a channel")
    ts: str
    customers: int = Field(ge=0, description="customers with a segment in this scope")
    partitions_reported: int = Field(ge=0, description="partitions whose tallies are included")
    partitions: int = Field(ge=1)
    segments: list[SegmentPersona] = Field(description="largest first")


class ChannelHop(BaseModel):
    """On ``profiles.hops`` when a customer's next interaction, by event time, is on another channel.

    A hop is identified by (``customer_id``, ``from_channel``, ``to_channel``, ``from_ts``, ``ts``).
    It is published again when it converts (``converted`` turns true: a purchase on the
    destination channel within the attribution window), and with ``withdrawn`` when a late
    event lands between its two touches (the late event's own hops are published instead).
    """

    model_config = ConfigDict(extra="forbid")

    customer_id: str
    from_channel: str
    to_channel: str
    gap_seconds: float = Field(ge=0, description="event time between the two touches")
    from_ts: str = Field(description="event time of the touch on from_channel (ISO-8601 UTC)")
    ts: str = Field(description="event time of the touch on to_channel (ISO-8601 UTC)")
    converted: bool
    withdrawn: bool = False


class DeadLetter(BaseModel):
    """On ``profiles.deadletter``, keyed like the source message."""

    model_config = ConfigDict(extra="forbid")

    source_topic: str
    partition: int
    offset: int
    index: int | None = Field(description="position in a JSON-array message; None for the whole message")
    error: str
    value: str = Field(description="the original value: UTF-8 text, or base64 when value_encoding says so")
    value_encoding: Literal["utf-8", "base64"]
    value_size: int = Field(description="size of the original value in bytes")
    value_truncated: bool = Field(description="True when value holds only the first bytes of a large message")
    ts: str


class IdentityChange(BaseModel):
    """On ``profiles.identity``, keyed by ``old_id``: the lineage of stitched profiles.

    ``merge``: the profile ``old_id`` was absorbed into ``canonical_id`` (its key gets a
    tombstone on ``profiles.updates``). ``conflict``: the event linked identifiers of two
    known customers; nothing was merged, the event went to ``canonical_id``. ``capped``: the
    group reached the identifier cap; ``identifier`` was not added.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["merge", "conflict", "capped"]
    old_id: str = Field(description="merge: the absorbed profile; conflict/capped: the identifier's current group")
    canonical_id: str = Field(description="the profile the event (and, for a merge, old_id's history) went to")
    identifier: str | None = Field(default=None, description="conflict/capped: the identifier concerned "
                                   "(emails and phones as keyed hashes)")
    event_id: str = Field(description="the event that caused it")
    event_ts: str = Field(description="that event's time (ISO-8601 UTC)")
    ts: str = Field(description="when the worker published it (ISO-8601 UTC)")


class ErasureAudit(BaseModel):
    """On ``profiles.audit``, keyed by ``request_id``: an erasure request and what it removed.

    It names the person only by keyed hashes, so the audit trail holds no personal data.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["erasure"] = "erasure"
    request_id: str
    subject_hash: str = Field(description="keyed hash of the identifier the request named")
    found: bool = Field(description="whether the identity graph knew the identifier")
    identifiers: int = Field(description="identifiers removed from the graph and suppressed")
    profiles: int = Field(description="profile keys (the canonical one and any merged into it) deleted")
    requested_by: str = Field(description="who asked: 'cli', or what the request on the topic said")
    requested_ts: str
    ts: str = Field(description="when the identity stage carried it out")


def schemas() -> dict[str, dict[str, Any]]:
    """Every input and output JSON Schema, by file name."""
    out = {f"event.{source}.json": _event_schema(source, model) for source, model in EVENT_MODELS.items()}
    for model in (ProfileUpdate, SegmentChange, SegmentSummaries, ChannelHop, IdentityChange, ErasureAudit,
                  DeadLetter):
        out[f"{model.__name__}.json"] = model.model_json_schema()
    return out


def _event_schema(source: str, model: type) -> dict[str, Any]:
    schema = model.model_json_schema()
    props = schema["properties"]
    # The model stores what validation produces; on the wire the contract allows more.
    props["type"] = {"title": "Type", "enum": list(SOURCE_TYPES[source])}
    props["ts"] = {
        "title": "Ts",
        "description": "event time: ISO-8601 with a zone, or epoch milliseconds",
        "anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer"}],
    }
    if DEFAULT_CHANNEL[source]:
        schema["required"] = [r for r in schema["required"] if r != "channel"]
        props["channel"]["default"] = DEFAULT_CHANNEL[source]
    schema["additionalProperties"] = True  # unknown top-level fields are moved into properties
    schema["description"] = f"An event on the events.{source} topic (schema_version {SCHEMA_VERSION})."
    return schema


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write the schemas into ``directory`` (``omniprofile schemas`` calls this)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render_schema(schema))
        written.append(path)
    return written

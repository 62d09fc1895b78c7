"""The agents: decode, call the pure step, write the table, emit. Nothing raises out of them.

``validate_events`` reads the six input topics as raw bytes, validates every event
(:func:`models.ingest.decode_message`), dead-letters what is invalid and re-keys the rest
by profile onto the internal ``omniprofile.events-by-customer`` topic, which is
co-partitioned with the ``profiles`` table. ``update_profiles`` folds each customer's
events into their profile (:func:`models.profile.apply_events`), writes the table,
publishes a ``ProfileUpdate`` and stages the Redis hash.

Faust acks a message even when the agent raises (the event would be lost), so every
message is handled inside :func:`guarded`: failures of the broker or Redis are retried a
bounded number of times, then the message goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

import faust
import orjson

from models.events import Limits
from models.ingest import Rejection, dead_letter, decode_message, group_by_profile
from models.outputs import SCHEMA_VERSION
from models.profile import Step, apply_events
from models.view import redis_fields, render_profile
from streams.app import Wiring

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.2, 1.0, 3.0)


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def guarded(
    wiring: Wiring, event: faust.EventT, handle: Callable[[faust.EventT], Awaitable[None]]
) -> None:
    """Run ``handle(event)``; retry, then dead-letter the message. Never raises."""
    message = event.message
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            await handle(event)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the agent must survive any input
            if delay is None:
                reason = f"internal error after {attempt} attempts: {type(exc).__name__}: {exc}"
                log.exception("Dead-lettering %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
                await send_dead_letter(wiring, message, Rejection(reason, event.value or b""))
                return
            log.warning(
                "Processing %s[%d]@%d failed (%s: %s); retrying in %.1f s",
                message.topic, message.partition, message.offset, type(exc).__name__, exc, delay,
            )
            await asyncio.sleep(delay)


async def send_dead_letter(wiring: Wiring, message: faust.types.Message, rejection: Rejection) -> None:
    record = dead_letter(message.topic, message.partition, message.offset, rejection, now_iso())
    try:
        await wiring.deadletter_topic.send(key=message.key, value=orjson.dumps(record))
    except Exception:  # noqa: BLE001
        log.exception("Could not dead-letter %s[%d]@%d", message.topic, message.partition, message.offset)


async def route_message(wiring: Wiring, event: faust.EventT) -> None:
    """Validate one input message; dead-letter the invalid part, re-key the rest by profile."""
    message = event.message
    settings = wiring.settings
    source = wiring.names.source_of(message.topic)
    if source is None:
        raise RuntimeError(f"message from unexpected topic {message.topic!r}")
    decoded = decode_message(
        source,
        event.value,
        Limits.from_clock(settings.max_future_seconds, settings.min_event_year),
        settings.hash_key.get_secret_value().encode(),
        settings.max_event_bytes,
    )
    for rejection in decoded.rejections:
        await send_dead_letter(wiring, message, rejection)
    for key, records in group_by_profile(decoded.records).items():
        await wiring.by_customer_topic.send(key=key.encode(), value=orjson.dumps(records))


async def update_profile(wiring: Wiring, event: faust.EventT) -> None:
    """Fold one customer's batch of events into their profile and emit what changed."""
    key: bytes = event.key
    records = orjson.loads(event.value)
    step = apply_events(wiring.profiles.get(key), key.decode(), records, wiring.settings.dedup_window)
    if step.applied:
        wiring.profiles[key] = step.state  # reassigned, so the changelog gets it
    if step.applied or step.replayed_last:
        await publish(wiring, step)


async def publish(wiring: Wiring, step: Step) -> None:
    profile = render_profile(step.state)
    profile_json = orjson.dumps(profile)
    customer_id = profile["customer_id"]
    update = {
        "schema_version": SCHEMA_VERSION,
        "customer_id": customer_id,
        "version": profile["version"],
        "ts": now_iso(),
        "changed": step.changed,
        "profile": profile,
    }
    await wiring.updates_topic.send(key=customer_id.encode(), value=orjson.dumps(update))
    wiring.sink.stage(customer_id, profile["version"], redis_fields(profile, profile_json))
    if wiring.sink.full:
        await wiring.sink.flush()


def register_agents(app: faust.App, wiring: Wiring) -> None:
    @app.agent(wiring.input_topic, name="validate_events")
    async def validate_events(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await guarded(wiring, event, lambda e: route_message(wiring, e))

    @app.agent(wiring.by_customer_topic, name="update_profiles")
    async def update_profiles(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await guarded(wiring, event, lambda e: update_profile(wiring, e))

    @app.timer(wiring.settings.redis_flush_interval_ms / 1000, name="flush_redis")
    async def flush_redis() -> None:
        await wiring.sink.flush()

    @app.on_before_shutdown.connect
    async def close_redis(app: faust.App, **kwargs: object) -> None:
        await wiring.sink.close()

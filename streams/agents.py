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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import faust
import orjson

from models.events import Limits
from models.identity import event_identifiers
from models.ingest import Rejection, dead_letter, decode_message, reason_kind
from models import stitching
from models.journeys import Hop, JourneyBuffer, journey_entries, record_journey, week_windows
from models.outputs import SCHEMA_VERSION, update_json
from models.personas import merge_tallies, summarize, tally_members
from models.profile import Step, apply_events, copy_state
from models.segmentation import (
    ModelCache,
    SegmentLearner,
    SegmentMove,
    assign_segments,
    feature_vectors,
    model_factory,
    scopes_of,
    scoring_time,
    teaching_scopes,
)
from models.view import iso_text, redis_fields, render_profile
from streams.app import Wiring
from streams.batching import take_batches
from streams.shutdown import SendGate
from streams.topics import partition_of

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.2, 1.0, 3.0)


CHANGELOG_BACKLOG = 1000


async def drain_changelog(app: faust.App, limit: int = CHANGELOG_BACKLOG) -> None:
    """Wait until Faust's changelog buffer holds at most ``limit`` messages.

    Table writes queue their changelog records in Faust's producer buffer, which one task drains a
    record per turn of the event loop; Faust's own back-pressure drains 100 per consumed message.
    A message of a batch writes hundreds of keys, so the buffer grew without bound (111,000
    records, and the worker's memory with them, after 32,000 new customers in the scale bench).
    The table-writing agents call this after each message.
    """
    buffer = app.producer.buffer
    while buffer.size > limit:
        try:
            sent = await buffer.flush_atmost(buffer.size - limit)
        except RuntimeError:  # stopping: the flush before the last commit sent what it covers (streams.flushing)
            return
        if not sent:
            await asyncio.sleep(0.01)  # nothing went out in 0.1 s (the broker is slow or away): wait, bounded


def now_iso() -> str:
    return iso_text(time.time_ns() // 1_000_000)


async def retried(what: str, handle: Callable[[], Awaitable[None]]) -> str | None:
    """Run ``handle()``, retrying failures a bounded number of times.

    Returns None when it succeeded, else the reason it finally failed (for the dead letter).
    """
    for attempt, delay in enumerate((*RETRY_DELAYS, None), start=1):
        try:
            await handle()
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the agent must survive any input
            if delay is None:
                reason = f"internal error after {attempt} attempts: {type(exc).__name__}: {exc}"
                log.exception("Giving up on %s: %s", what, reason)
                return reason
            log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
    return None  # pragma: no cover - the loop always returns


async def guarded(
    wiring: Wiring, event: faust.EventT, handle: Callable[[faust.EventT], Awaitable[None]]
) -> None:
    """Run ``handle(event)``; retry, then dead-letter the message. Never raises."""
    message = event.message
    where = f"{message.topic}[{message.partition}]@{message.offset}"
    reason = await retried(f"processing {where}", lambda: handle(event))
    if reason is not None:
        await send_dead_letter(wiring, message, Rejection(reason, event.value or b""))


async def send_dead_letter(wiring: Wiring, message: faust.types.Message, rejection: Rejection) -> None:
    wiring.stats.dead_letters[reason_kind(rejection.reason)] += 1
    record = dead_letter(message.topic, message.partition, message.offset, rejection, now_iso())
    try:
        await wiring.deadletter_topic.send(key=message.key, value=orjson.dumps(record))
    except Exception:  # noqa: BLE001
        log.exception("Could not dead-letter %s[%d]@%d", message.topic, message.partition, message.offset)


def validate_message(wiring: Wiring, event: faust.EventT) -> tuple[list[dict], list[Rejection]]:
    """One input message: its valid records, and a rejection for each invalid part."""
    message = event.message
    settings = wiring.settings
    source = wiring.names.source_of(message.topic)
    if source is None:
        return [], [Rejection(f"message from unexpected topic {message.topic!r}", event.value or b"")]
    decoded = decode_message(
        source,
        event.value,
        Limits.from_clock(settings.max_future_seconds, settings.min_event_year),
        settings.hash_key.get_secret_value().encode(),
        settings.max_event_bytes,
    )
    rejections = list(decoded.rejections)
    records = []
    for index, record in enumerate(decoded.records):
        if event_identifiers(record, settings.blocked_values):
            records.append(record)
            continue
        rejections.append(Rejection(
            "no usable identifier: customer_id, anonymous_id and email are missing or placeholder values "
            "(OMNIPROFILE_IDENTITY_BLOCKED_VALUES); send a real id",
            orjson.dumps(record), index if len(decoded.records) > 1 else None,
        ))
    return records, rejections


def split_by_size(entries: list[bytes], max_bytes: int) -> list[list[bytes]]:
    """Consecutive runs of ``entries`` of at most about ``max_bytes`` each (one entry may exceed it)."""
    out: list[list[bytes]] = []
    part: list[bytes] = []
    size = 0
    for entry in entries:
        if part and size + len(entry) > max_bytes:
            out.append(part)
            part, size = [], 0
        part.append(entry)
        size += len(entry) + 1
    if part:
        out.append(part)
    return out


def chunks(records: list, max_bytes: int) -> list[bytes]:
    """JSON arrays of ``records``, each at most about ``max_bytes`` (one record may exceed it)."""
    return [b"[" + b",".join(part) + b"]" for part in split_by_size([orjson.dumps(r) for r in records], max_bytes)]


async def dead_letter_all(wiring: Wiring, events: list[faust.EventT], reason: str) -> None:
    """Every message of a batch to the dead letters with ``reason``, to be replayed."""
    for event in events:
        await send_dead_letter(wiring, event.message, Rejection(reason, event.value or b""))


async def route_batch(wiring: Wiring, events: list[faust.EventT]) -> None:
    """Validate a batch of input messages: dead-letter the invalid parts, and pass every valid
    record on to identity resolution in as few messages as the size limit allows.

    Never raises: a failure (a bug, not input) dead-letters the whole batch instead of stopping
    the stage on it again at each restart."""
    try:
        await pass_on(wiring, events)
    except Exception as exc:  # noqa: BLE001
        log.exception("Passing on a batch of %d input messages failed", len(events))
        await dead_letter_all(wiring, events, f"internal error: {type(exc).__name__}: {exc}")


async def pass_on(wiring: Wiring, events: list[faust.EventT]) -> None:
    records: list[dict] = []
    for event in events:
        try:
            valid, rejections = validate_message(wiring, event)
        except Exception as exc:  # noqa: BLE001 - validation is pure; a bug must not stop the batch
            log.exception("Validating %s[%d]@%d failed", event.message.topic, event.message.partition,
                          event.message.offset)
            valid, rejections = [], [Rejection(f"internal error: {type(exc).__name__}: {exc}", event.value or b"")]
        for rejection in rejections:
            await send_dead_letter(wiring, event.message, rejection)
        if valid:
            wiring.stats.events_valid[valid[0]["source"]] += len(valid)
        records.extend(valid)
    if not records:
        return
    parts = chunks(records, wiring.settings.internal_message_bytes)

    async def send() -> None:
        # One partition: identity resolution sees every event, in order (streams.resolver).
        for part in parts:
            await wiring.identity_events_topic.send(key=b"records", value=b'{"records":' + part + b"}")

    reason = await retried(f"passing {len(records)} events to identity resolution", send)
    if reason is not None:
        await dead_letter_all(wiring, events, reason)


async def send_by_customer(wiring: Wiring, key: bytes, value: bytes) -> faust.types.FutureMessage:
    # The partition is set explicitly (Kafka's default murmur2) so that the tally timer can
    # tell which of the table's keys live in the partitions this worker owns.
    partition = partition_of(key, wiring.settings.partitions)
    return await wiring.by_customer_topic.send(key=key, value=value, partition=partition)


RESCORE = b'{"rescore":true}'
SEED = b'{"seed":true}'


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sent_ms(event: faust.EventT) -> int | None:
    """When a message was sent (its Kafka timestamp), in epoch milliseconds."""
    timestamp = event.message.timestamp
    return int(timestamp * 1000) if timestamp else None


async def update_profile(
    wiring: Wiring, models: ModelCache, event: faust.EventT, journeys: JourneyBuffer | None = None
) -> None:
    """One message of a profile's partition: events, a re-score, or a step of a merge or erasure."""
    key: bytes = event.key
    if event.value == RESCORE:
        await rescore_profile(wiring, models, key)
        return
    message = orjson.loads(event.value)
    if isinstance(message, dict) and "batch" in message:
        await update_batch(wiring, models, event, message["batch"], journeys)
        return
    held = wiring.profiles.get(key)
    if stitching.is_stub(held):
        await forward_from_stub(wiring, key, held, message, event.value)
        return
    if stitching.is_erased(held):
        await to_erased(wiring, key, held, message)
        return
    if isinstance(message, list):
        await receive_records(wiring, models, key, held, message, journeys, sent_ms(event))
        return
    op = message.get("op")
    if op == "expect":
        wiring.profiles[key] = stitching.expect(held, key.decode(), message["from"], now_ms())
    elif op == "merge_into":
        await merge_away(wiring, key, held, message)
    elif op == "absorb":
        await absorb(wiring, models, key, held, message, journeys)
    elif op == "forget":
        await forget(wiring, key, held)
    else:
        raise ValueError(f"unknown message on the profile topic: {str(message)[:80]}")


async def update_batch(
    wiring: Wiring, models: ModelCache, event: faust.EventT, batch: dict[str, list], journeys: JourneyBuffer | None
) -> None:
    """The events of several customers of this partition (one message from the identity stage);
    each customer is retried, and dead-lettered, on its own."""
    sent = sent_ms(event)
    for customer, records in batch.items():
        key = customer.encode()

        async def handle() -> None:
            held = wiring.profiles.get(key)
            if stitching.is_stub(held):
                await forward_from_stub(wiring, key, held, records, orjson.dumps(records))
            elif stitching.is_erased(held):
                await to_erased(wiring, key, held, records)
            else:
                await receive_records(wiring, models, key, held, records, journeys, sent)

        reason = await retried(f"the events of profile {customer}", handle)
        if reason is not None:
            await send_dead_letter(wiring, event.message, Rejection(reason, orjson.dumps(records)))


def partition_batches(routed: dict[str, list[dict]], partitions: int, max_bytes: int) -> list[tuple[int, bytes]]:
    """Customer -> records as ``{"batch": {customer: records}}`` messages, one per partition of the
    profile topic, split when one would pass ``max_bytes`` (a customer's records stay together)."""
    by_partition: dict[int, list[bytes]] = {}
    for customer, records in routed.items():
        entry = orjson.dumps(customer) + b":" + orjson.dumps(records)
        by_partition.setdefault(partition_of(customer.encode(), partitions), []).append(entry)
    return [(partition, b'{"batch":{' + b",".join(part) + b"}}")
            for partition, entries in by_partition.items() for part in split_by_size(entries, max_bytes)]


async def send_batches(wiring: Wiring, routed: dict[str, list[dict]]) -> None:
    """Pass routed records on to the profile topic: one message per partition (see partition_batches)."""
    s = wiring.settings
    for partition, value in partition_batches(routed, s.partitions, s.internal_message_bytes):
        await wiring.by_customer_topic.send(value=value, partition=partition)


async def receive_records(
    wiring: Wiring, models: ModelCache, key: bytes, held: dict | None, records: list, journeys: JourneyBuffer | None,
    sent_at_ms: int | None = None,
) -> None:
    """``sent_at_ms``: when the message carrying ``records`` was sent (how far behind this stream is)."""
    now = now_ms()
    behind = max(0, now - sent_at_ms) if sent_at_ms is not None else 0
    s = wiring.settings
    received = stitching.receive(held, records, now, int(s.identity_merge_wait_seconds * 1000), behind, s.dedup_window)
    if received.waiting:
        wiring.profiles[key] = received.state
        return
    if received.gave_up:
        log.warning("Profile %s waited too long for the merge of %s; applying its held events (and keeping "
                    "what it folds until that merge comes, to recount it)", key.decode(), ", ".join(received.gave_up))
    warn_unrewound(key, received.unrewound, s.dedup_window)
    if received.double_counted:
        wiring.stats.merge_double_counted += received.double_counted
        log.warning("Profile %s dropped the rewind that would have counted %d event(s) of a merge once: they "
                    "stay counted twice", key.decode(), received.double_counted)
    await fold_records(wiring, models, key, received.state, received.records, journeys)


def warn_unrewound(key: bytes, merges: list[str], kept: int) -> None:
    if merges:
        log.warning("Profile %s folded more than %d events since it gave up waiting for the merge of %s; it no "
                    "longer keeps them, so that merge, when it comes, can count an event twice "
                    "(omniprofile_merge_double_counted_total)", key.decode(), kept, ", ".join(merges))


async def fold_records(
    wiring: Wiring,
    models: ModelCache,
    key: bytes,
    held: dict | None,
    records: list,
    journeys: JourneyBuffer | None,
    merged: list[Hop] | None = None,
) -> None:
    """Fold events into the profile, re-score its segments, write the table, emit.

    ``merged`` (the hops a merge just added) says the profile absorbed another one: then it is
    written, scored and published even when no event is new.
    """
    step = apply_events(held, key.decode(), records, wiring.settings.dedup_window)
    moves: list[SegmentMove] = []
    hops: list[Hop] = list(merged or [])
    if merged is not None:
        step.changed = sorted({*step.changed, "identity"})
    if step.applied or merged is not None:
        settings = wiring.settings
        journey = record_journey(step.state, step.new_records, settings.journey_window_ms, settings.journey_halflife_ms)
        if journey.changed or hops:
            step.changed = sorted({*step.changed, "journey"})
        hops += journey.hops
        if journeys is not None:
            journeys.add(journey_entries(journey))
            if journey.late:
                journeys.add([("late|touches", now_ms(), float(journey.late))])
        as_of = scoring_time(step.state, now_ms())
        channels = None if merged is not None else {r["channel"] for r in records if r["source"] != "identify"}
        scopes = scopes_of(step.state, channels)
        vectors = feature_vectors(step.state, scopes, as_of)
        moves = assign_segments(step.state, scopes, models.models_for(scopes), as_of, vectors)
        if moves:
            step.changed = sorted({*step.changed, "segments"})
        wiring.profiles[key] = step.state  # reassigned, so the changelog gets it
        teach(wiring, step.state, scopes, vectors)
    if step.applied or step.replayed_last or merged is not None:
        await publish(wiring, step, moves)
    for hop in hops:
        await wiring.hops_topic.send(key=key, value=orjson.dumps(hop_record(key.decode(), hop)))


# --- identity: the profile side of merges and erasure (streams.resolver sends these) ----------------


async def send_handover(wiring: Wiring, key: bytes, held: dict | None, message: dict) -> dict:
    """Send this profile's handover (models.stitching.handover) to ``message["into"]``."""
    handover = stitching.handover(key.decode(), held, message.get("cause"))
    await send_by_customer(wiring, message["into"].encode(), orjson.dumps(handover))
    return handover


async def merge_away(wiring: Wiring, key: bytes, held: dict | None, message: dict) -> None:
    """This profile joins ``message["into"]``: send it there, leave a forwarding stub, tombstone it."""
    handover = await send_handover(wiring, key, held, message)
    # Messages still on their way here (events routed before the merge, a merge that was
    # waiting on this profile) follow it through the stub.
    wiring.profiles[key] = stitching.stub(message["into"], now_ms())
    if handover["state"] is not None:
        await wiring.updates_topic.send(key=key, value=None)
        wiring.sink.stage_delete(key.decode(), handover["state"].get("segments", {}))


async def absorb(
    wiring: Wiring, models: ModelCache, key: bytes, held: dict | None, message: dict, journeys: JourneyBuffer | None
) -> None:
    """Merge another profile's history into this one (models.stitching.absorb)."""
    if held is None:
        log.warning("Dropped the merge of %s into %s: that profile no longer exists (erased)",
                    message["from"], key.decode())
        return
    s = wiring.settings
    result = stitching.absorb(held, message, now_ms(), s.dedup_window, s.journey_window_ms, s.journey_halflife_ms)
    if result.double_counted:
        wiring.stats.merge_double_counted += result.double_counted
        log.warning("Profile %s absorbed %s after it had stopped waiting for it: %d event(s) of both are "
                    "counted twice (OMNIPROFILE_IDENTITY_MERGE_WAIT_SECONDS longer would have held them)",
                    key.decode(), message["from"], result.double_counted)
    if result.recounted:
        wiring.stats.merge_recounted += result.recounted
        log.info("Profile %s absorbed %s after it had stopped waiting for it and recounted from what it kept: "
                 "%d event(s) of both counted once", key.decode(), message["from"], result.recounted)
    warn_unrewound(key, result.unrewound, s.dedup_window)
    if journeys is not None:
        journeys.add(journey_entries(result.withdrawn))
        journeys.add(journey_entries(result.added))
    for hop in result.withdrawn.hops:  # the absorbed id's hops, withdrawn under its own key
        await wiring.hops_topic.send(key=message["from"].encode(), value=orjson.dumps(hop_record(message["from"], hop)))
    if result.waiting:
        wiring.profiles[key] = result.state
        for hop in result.added.hops:
            await wiring.hops_topic.send(key=key, value=orjson.dumps(hop_record(key.decode(), hop)))
        return
    if not result.merged:  # the fold writes a merged state; otherwise record that nothing is pending
        wiring.profiles[key] = result.state
    await fold_records(wiring, models, key, result.state, result.records, journeys,
                       merged=result.added.hops if result.merged else None)


async def forget(wiring: Wiring, key: bytes, held: dict | None) -> None:
    """Erasure: the profile leaves Redis, then the table (a changelog tombstone) and the topic.

    Redis first, flushed at once: once the table has no trace of the profile, nothing could find
    its hash again (a catch-up only compares what the table holds). If Redis is unreachable, the
    table keeps an erased marker (:func:`models.stitching.erased`: no personal data) instead:
    a worker that takes the partition over after a crash deletes the hash from it, and once the
    delete has reached Redis the marker goes too (:func:`resend_erasures` sends ``forget`` again)."""
    segments = held.get("segments", {}) if held is not None and not stitching.is_stub(held) else {}
    customer = key.decode()
    wiring.sink.stage_delete(customer, segments)
    await wiring.sink.flush()
    if wiring.sink.deleting(customer):
        if not stitching.is_erased(held):
            log.warning("Redis is unreachable: the erasure of a profile stays in the table as a marker "
                        "without its data until Redis has the delete")
        wiring.profiles[key] = stitching.erased(now_ms(), segments)
        wiring.erasing.add(key)
    elif held is not None:
        del wiring.profiles[key]
        wiring.erasing.discard(key)
    if not stitching.is_erased(held):
        await wiring.updates_topic.send(key=key, value=None)


async def to_erased(wiring: Wiring, key: bytes, held: dict, message: object) -> None:
    """A message for an erased profile whose Redis delete is still to be confirmed: ``forget``
    tries again; events (routed before the identity stage suppressed the person) are dropped."""
    if isinstance(message, dict) and message.get("op") == "forget":
        await forget(wiring, key, held)
    elif isinstance(message, dict) and message.get("op") == "merge_into":  # nothing to hand over
        await send_handover(wiring, key, None, message)
    else:
        log.info("Dropped a message for an erased profile (%s)",
                 message.get("op") if isinstance(message, dict) else "events")


FORGET = orjson.dumps({"op": "forget"})


async def resend_erasures(wiring: Wiring, identity_flushed: bool) -> None:
    """After a flush: erasures that waited for Redis go on. An erased marker whose delete has
    reached Redis gets ``forget`` again (which removes it); erasure requests the identity stage
    put off go back to it once a flush of the identity writes went through (``identity_flushed``)."""
    for key in [k for k in wiring.erasing if not wiring.sink.deleting(k.decode())]:
        wiring.erasing.discard(key)
        await send_by_customer(wiring, key, FORGET)
    if wiring.deferred_erasures and identity_flushed and not wiring.identity_sink.pending:
        for request_id in list(wiring.deferred_erasures):
            request = wiring.deferred_erasures.pop(request_id)
            await wiring.identity_events_topic.send(key=b"erase", value=orjson.dumps({"erase": request}))


async def forward_from_stub(wiring: Wiring, key: bytes, stub: dict, message: object, raw: bytes) -> None:
    """A merged-away key: late events and merges go on to the profile that absorbed it."""
    if isinstance(message, dict) and message.get("op") == "forget":
        await forget(wiring, key, stub)  # the merge's delete of its hash may not have reached Redis either
        return
    if isinstance(message, dict) and message.get("op") == "merge_into":
        log.warning("Ignored a second merge of %s (already merged into %s)", key.decode(), stub["merged_into"])
        return
    await send_by_customer(wiring, stub["merged_into"].encode(), raw)


def hop_record(customer_id: str, hop: Hop) -> dict:
    """A ``ChannelHop`` (models.outputs): new (sign +1), converted since (0) or withdrawn (-1)."""
    return {
        "customer_id": customer_id,
        "from_channel": hop.from_channel,
        "to_channel": hop.to_channel,
        "gap_seconds": hop.gap_ms / 1000,
        "from_ts": iso_text(hop.from_ts),
        "ts": iso_text(hop.ts),
        "converted": hop.converted,
        "withdrawn": hop.sign < 0,
    }


async def send_journey_entries(wiring: Wiring, journeys: JourneyBuffer) -> int:
    """Flush the merged journey deltas: one message per counter and day, timestamped with the day."""
    entries = journeys.drain(now_ms())
    for key, day, value, late in entries:
        raw = key.encode()
        await wiring.journey_topic.send(
            key=raw,
            value=orjson.dumps({"v": value, "late": late}),
            timestamp=day / 1000,
            partition=partition_of(raw, wiring.settings.partitions),
        )
    return len(entries)


async def aggregate_journey(wiring: Wiring, event: faust.EventT) -> None:
    """Add one counter delta to its windows (by the message's event-time day) and its total."""
    key = event.key.decode()
    message = orjson.loads(event.value)
    value = message["v"]
    totals = wiring.journey_totals
    totals[key] += value
    sink = wiring.journey_sink
    sink.stage_total(key, totals[key])
    if message["late"]:
        # Older than the windows kept: in the totals, and counted, but in no window.
        totals[f"late|{key}"] += 1
        sink.stage_total(f"late|{key}", totals[f"late|{key}"])
        return
    day_ms = int(event.message.timestamp * 1000)
    daily = wiring.journey_daily
    daily[key] += value
    sink.stage_window("day", day_ms - day_ms % 86_400_000, key, daily[key].value())
    # The 7-day windows are sums of daily ones (models.journeys.week_windows), not a hopping table
    # of their own: that table wrote 7 changelog records per delta.
    table = daily.table
    for start, total in week_windows(day_ms, lambda d: table.data.get((key, table.window.ranges(d / 1000)[0]), 0.0)):
        sink.stage_window("7d", start, key, total)


async def rescore_profile(wiring: Wiring, models: ModelCache, key: bytes) -> None:
    """The sweep: re-score every scope of a (possibly silent) profile against today's models."""
    held = wiring.profiles.get(key)
    if held is None or stitching.is_placeholder(held) or not held["events"]:
        return
    state = copy_state(held)
    scopes = scopes_of(state)
    moves = assign_segments(state, scopes, models.models_for(scopes), scoring_time(state, now_ms()))
    if moves:
        state["version"] += 1
        wiring.profiles[key] = state
        await publish(wiring, Step(state, ["segments"]), moves)


def teach(wiring: Wiring, state: dict, scopes: list[str], vectors: dict) -> None:
    """Queue a sample of this profile's feature vectors for the single segment learner
    (:func:`flush_teaching` sends them in batches: at ``OMNIPROFILE_SEGMENT_TEACH_BATCH`` queued,
    every ``OMNIPROFILE_SEGMENT_TEACH_FLUSH_SECONDS``, and at shutdown)."""
    settings = wiring.settings
    for scope in teaching_scopes(state, scopes, settings.segment_learn_rate, settings.segment_min_events):
        if vectors[scope] is not None:
            wiring.teaching.append({"scope": scope, "x": vectors[scope]})


async def flush_teaching(wiring: Wiring) -> None:
    """Send the queued feature vectors to the learner. A failure loses only training samples."""
    if not wiring.teaching:
        return
    pending = list(wiring.teaching)
    wiring.teaching.clear()
    try:
        for part in chunks(pending, wiring.settings.internal_message_bytes):
            await wiring.learn_topic.send(key=b"batch", value=b'{"batch":' + part + b"}")
    except Exception as exc:  # noqa: BLE001 - samples for learning, never worth a profile
        log.warning("Dropped %d feature vectors meant for the segment learner (%s: %s)",
                    len(pending), type(exc).__name__, exc)


class Learner:
    """The single learner agent's side of :class:`SegmentLearner`: snapshots go to the global table."""

    def __init__(self, wiring: Wiring) -> None:
        s = wiring.settings
        self.table = wiring.segment_models
        self.core = SegmentLearner(
            model_factory(s.segments, s.segment_halflife, s.segment_warmup),
            lambda scope: self.table.get(scope.encode()),
            s.segment_snapshot_every,
        )

    def at(self, position: int) -> None:
        """The next message of the learning topic is at ``position`` (exactly-once learning)."""
        self.core.at(position)

    def learn(self, scope: str, x: dict, position: int | None = None) -> None:
        snapshot = self.core.learn(scope, x, position)
        if snapshot is not None:
            # Written inside the learner's stream iteration: the table needs the current event.
            self.table[scope.encode()] = snapshot

    def seed_small_scopes(self) -> list[str]:
        """Seed, provisionally, every model still warming up (a channel with a small audience)."""
        seeded = self.core.seed_small_scopes(key.decode() for key in self.table.keys())
        for scope, snapshot in seeded.items():
            self.table[scope.encode()] = snapshot
        if seeded:
            log.info("Seeded the segment models of %s early (buffers not full yet)", ", ".join(seeded))
        return sorted(seeded)


async def publish(wiring: Wiring, step: Step, moves: list[SegmentMove] = ()) -> None:
    profile = render_profile(step.state)
    profile_json = orjson.dumps(profile)
    customer_id = profile["customer_id"]
    update = {
        "schema_version": SCHEMA_VERSION,
        "customer_id": customer_id,
        "version": profile["version"],
        "ts": now_iso(),
        "changed": step.changed,
    }
    # Spliced from the JSON made for Redis: the profile is serialised once.
    await wiring.updates_topic.send(key=customer_id.encode(), value=update_json(update, profile_json))
    wiring.sink.stage(customer_id, profile["version"], redis_fields(profile, profile_json))
    for move in moves:
        change = {
            "customer_id": customer_id,
            "scope": move.scope,
            "from_segment": move.from_segment,
            "to_segment": move.to_segment,
            "model_version": move.model_version,
            "ts": update["ts"],
        }
        await wiring.segments_topic.send(key=customer_id.encode(), value=orjson.dumps(change))
        wiring.sink.stage_move(customer_id, move.scope, move.from_segment, move.to_segment)
    if wiring.sink.full:
        await wiring.sink.flush()


async def learn_vector(learner: Learner, event: faust.EventT) -> None:
    position = event.message.offset
    learner.at(position)
    if event.value == SEED:
        learner.seed_small_scopes()
        return
    message = orjson.loads(event.value)
    for item in message["batch"] if "batch" in message else [message]:
        learner.learn(item["scope"], item["x"], position)


def active_partitions(app: faust.App, wiring: Wiring) -> set[int]:
    """The partitions of the profile table this worker owns now (standbys excluded)."""
    topic = wiring.names.by_customer
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}


async def owned_keys(app: faust.App, wiring: Wiring) -> dict[int, list[bytes]]:
    """The profile keys of this worker's active partitions, by partition (keys only: with a
    million profiles, holding every state at once took gigabytes)."""
    owned: dict[int, list[bytes]] = {p: [] for p in active_partitions(app, wiring)}
    if not owned:
        return owned
    n = wiring.settings.partitions
    for i, key in enumerate(list(wiring.profiles.keys())):
        bucket = owned.get(partition_of(key, n))
        if bucket is not None:
            bucket.append(key)
        if i % 10_000 == 9_999:
            await asyncio.sleep(0)  # let the agents run between chunks of a large table
    return owned


async def tally_partition(wiring: Wiring, keys: list[bytes], as_of: int, chunk: int = 1000) -> dict:
    """The segment tally of these profiles, read and counted a chunk at a time."""
    parts = []
    for start in range(0, len(keys), chunk):
        states = []
        for key in keys[start:start + chunk]:
            state = wiring.profiles.get(key)
            if state is not None and not stitching.is_placeholder(state) and state["events"]:
                states.append(state)
        parts.append(tally_members(states, as_of))
        await asyncio.sleep(0)
    return merge_tallies(parts)


class Summarizer:
    """Merges the latest tally of every partition into persona summaries and publishes them."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        self.latest: dict[int, dict] = {}
        self.reported: set[int] = set()
        self.published_at = 0.0

    async def receive(self, message: dict) -> None:
        n = message["partitions"]
        self.latest[message["partition"]] = message
        self.reported.add(message["partition"])
        for stale in [p for p in self.latest if p >= n]:  # the partition count changed
            del self.latest[stale]
        period = self.wiring.settings.segment_summary_seconds
        overdue = asyncio.get_running_loop().time() - self.published_at > 2 * period
        if self.reported >= set(range(n)) or (self.published_at and overdue):
            await self.publish(n)

    async def publish(self, partitions: int) -> None:
        merged = merge_tallies(m["tally"] for m in self.latest.values())
        ts = now_iso()
        documents = {}
        for scope, rows in summarize(merged).items():
            document = {
                "schema_version": SCHEMA_VERSION,
                "scope": scope,
                "ts": ts,
                "customers": sum(r["size"] for r in rows),
                "partitions_reported": len(self.latest),
                "partitions": partitions,
                "segments": rows,
            }
            documents[scope] = orjson.dumps(document)
            await self.wiring.summaries_topic.send(key=scope.encode(), value=documents[scope])
        await self.wiring.sink.write_summaries(documents)
        self.reported = set()
        self.published_at = asyncio.get_running_loop().time()


def register_agents(app: faust.App, wiring: Wiring) -> None:
    settings = wiring.settings

    def behind(event: faust.EventT) -> int:
        """Messages after ``event`` in its partition, as far as the consumer knows (0 if it does not)."""
        message = event.message
        try:
            return app.consumer.highwater(message.tp) - message.offset - 1
        except Exception:  # noqa: BLE001 - no high-water mark yet: treat the input as caught up
            return 0

    @app.agent(wiring.input_topic, name="validate_events")
    async def validate_events(stream: faust.StreamT) -> None:
        # Batches of input messages (acked after the batch is passed on): one message to the
        # identity stage per batch instead of one per event; the longer window while the input
        # lags keeps a backlog's batches full (streams.batching).
        batches = take_batches(stream, settings.batch_max_messages, settings.batch_wait_ms / 1000,
                               settings.backlog_wait_ms / 1000, behind, app.consumer.suspend_flow)
        async with contextlib.aclosing(batches):
            async for events in batches:
                await route_batch(wiring, events)

    from streams.resolver import register_identity
    from streams.metrics import LAG_INTERVAL, MetricsServer, WorkerMetrics
    from streams.resync import ServingView

    register_identity(app, wiring)
    models = ModelCache(lambda scope: wiring.segment_models.get(scope.encode()))
    learner = Learner(wiring)
    summarizer = Summarizer(wiring)
    journeys = JourneyBuffer(wiring.settings.journey_retention_ms)
    gate = SendGate()  # sending timers finish before the producer stops (streams.shutdown)

    @app.agent(wiring.by_customer_topic, name="update_profiles")
    async def update_profiles(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await guarded(wiring, event, lambda e: update_profile(wiring, models, e, journeys))
            if len(wiring.teaching) >= settings.segment_teach_batch:
                await flush_teaching(wiring)
            await drain_changelog(app)

    @app.timer(settings.segment_teach_flush_seconds, name="flush_teaching")
    async def flush_teaching_timer() -> None:
        # Live traffic hands over small batches: one learner message per batch cost the learner
        # agent Faust's per-message work for a few vectors each. Samples wait up to this long.
        async with gate.sending() as allowed:
            if allowed:
                await flush_teaching(wiring)

    @app.agent(wiring.journey_topic, name="aggregate_journeys")
    async def aggregate_journeys(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await guarded(wiring, event, lambda e: aggregate_journey(wiring, e))
            await drain_changelog(app)

    @app.timer(wiring.settings.journey_flush_seconds, name="flush_journeys")
    async def flush_journeys() -> None:
        async with gate.sending() as allowed:  # the stop sends what is left (close_redis)
            if allowed:
                await send_journey_entries(wiring, journeys)

    @app.agent(wiring.learn_topic, name="learn_segments")
    async def learn_segments(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await guarded(wiring, event, lambda e: learn_vector(learner, e))

    @app.agent(wiring.tallies_topic, name="summarize_segments")
    async def summarize_segments(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await guarded(wiring, event, lambda e: summarizer.receive(orjson.loads(e.value)))

    @app.timer(wiring.settings.segment_sweep_seconds, name="sweep_segments")
    async def sweep_segments() -> None:
        # Models of small audiences are seeded early, then every profile is re-scored
        # through its own partition's stream (tables are only written inside stream
        # iteration). The pause lets the learner's snapshots reach this worker first;
        # a profile that misses them is re-scored on its next event or the next sweep.
        async with gate.sending() as allowed:
            if not allowed:
                return
            await wiring.learn_topic.send(key=b"seed", value=SEED)
        await asyncio.sleep(min(5.0, wiring.settings.segment_sweep_seconds / 4))
        async with gate.sending() as allowed:
            if not allowed:
                return
            for partition, keys in (await owned_keys(app, wiring)).items():
                for key in keys:  # stubs and empty profiles are skipped where the message is handled
                    if gate.closing:
                        return  # a stop: the next sweep re-scores them
                    await wiring.by_customer_topic.send(key=key, value=RESCORE, partition=partition)

    @app.timer(wiring.settings.segment_summary_seconds, name="tally_segments")
    async def tally_segments() -> None:
        as_of = now_ms()
        async with gate.sending() as allowed:
            if not allowed:
                return
            for partition, keys in (await owned_keys(app, wiring)).items():
                tally = await tally_partition(wiring, keys, as_of)
                if gate.closing:
                    return  # a stop: the next worker tallies again
                message = {"partition": partition, "partitions": wiring.settings.partitions, "tally": tally}
                await wiring.tallies_topic.send(key=str(partition).encode(), value=orjson.dumps(message))

    @app.timer(wiring.settings.redis_flush_interval_ms / 1000, name="flush_redis")
    async def flush_redis() -> None:
        async with gate.sending() as allowed:  # the stop flushes and closes the sinks (close_redis)
            if allowed:
                await wiring.sink.flush()
                await wiring.journey_sink.flush()
                failed = wiring.identity_sink.failed_flushes
                await wiring.identity_sink.flush()
                await resend_erasures(wiring, identity_flushed=wiring.identity_sink.failed_flushes == failed)

    serving = ServingView(app, wiring)
    metrics = WorkerMetrics(app, wiring, serving, learner)
    server = MetricsServer(metrics, settings.web_host, settings.web_port)

    if settings.web_port:
        @app.task
        async def serve_metrics() -> None:
            await server.start()  # a port in use stops the worker with the fix in the message

    @app.timer(LAG_INTERVAL, name="refresh_metrics")
    async def refresh_metrics() -> None:
        await metrics.refresh()

    @app.timer(wiring.settings.redis_resync_check_seconds, name="check_serving_view")
    async def check_serving_view() -> None:
        # Redis lost data (restarted empty, flushed): rewrite this worker's partitions from the tables.
        # Partitions just taken over: write again what a killed owner had staged and not flushed.
        async with gate.sending() as allowed:
            if allowed:
                await serving.check()

    @app.on_partitions_revoked.connect
    async def mark_given_parts_clean(sender: faust.App, revoked: set, **kwargs: object) -> None:
        # Inside the rebalance, where an exception crashes the worker (faust): the marks only spare
        # the next owner a scan, so nothing here may fail the rebalance or hold it past 2 s.
        try:
            await serving.mark_clean(revoked, timeout=2.0)
        except Exception:  # noqa: BLE001 - an optimisation must not take the worker down
            log.exception("Leaving clean-handover marks failed; the next owners will scan")
        try:
            await asyncio.wait_for(serving.release_identity(revoked), timeout=2.0)
        except Exception:  # noqa: BLE001 - nothing in a rebalance may take the worker down
            log.exception("Dropping the identity writes left staged failed (a flush held the sink past 2 s?)")

    @app.on_partitions_assigned.connect
    async def forget_caught_up_parts(sender: faust.App, assigned: object, **kwargs: object) -> None:
        serving.assigned()

    @app.on_before_shutdown.connect
    async def close_redis(app: faust.App, **kwargs: object) -> None:
        if not await gate.close():
            log.warning("A timer was still sending 10 s into the stop; what it sends after the producer stops is lost")
        await server.stop()
        await send_journey_entries(wiring, journeys)
        await flush_teaching(wiring)
        await serving.mark_clean()  # the next owner of a partition Redis holds completely skips its catch-up
        await wiring.sink.close()
        await wiring.journey_sink.close()
        await wiring.identity_sink.close()

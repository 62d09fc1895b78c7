"""Identity resolution in the stream: every validated event passes the identity graph, which
names the profile it belongs to, before it reaches the profile agents.

The graph (:mod:`models.identity`) lives in a Faust table on a one-partition topic: a
connected group can span any identifiers, so it is resolved in one place, in order. The
profile agents never read another partition: a merge travels as messages on the
co-partitioned ``events-by-customer`` topic (README: "Identity"):

1. ``expect`` to the surviving profile: hold new events until the absorbed history arrives;
2. ``merge_into`` to the absorbed profile: it sends its state on (``absorb``), leaves a
   forwarding stub and becomes a tombstone on ``profiles.updates``;
3. the events, keyed by the surviving canonical id.

An erasure request removes the person's group from the graph, keeps keyed hashes of their
identifiers as suppressions (later events are dropped and counted), sends ``forget`` to
every profile key of the group and writes an audit record.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import faust
import orjson

from models.events import hash_identifier
from models.identity import (
    ERASING_KEY,
    SUPPRESSED_PREFIX,
    LinkResult,
    canonical_key,
    erase,
    event_identifiers,
    known_canonical,
    link,
    parse_identifier,
    put_off_erasures,
    store_changes,
    store_graph,
)
from models.ingest import Rejection
from models.outputs import SCHEMA_VERSION
from models.view import iso_text
from streams.agents import (
    FORGET, drain_changelog, guarded, now_iso, send_batches, send_by_customer, send_dead_letter,
)
from streams.app import Wiring

log = logging.getLogger(__name__)


class Resolver:
    """The identity stage: the graph, the suppression list and their Redis copy."""

    def __init__(self, wiring: Wiring) -> None:
        s = wiring.settings
        self.wiring = wiring
        self.table = wiring.identity
        self.sink = wiring.identity_sink
        self.blocked = s.blocked_values
        self.max_identifiers = s.identity_max_identifiers
        self.hash_key = s.hash_key.get_secret_value().encode()
        self._unwritten: dict[str, object] = {}  # graph changes of the message under way (None: delete)

    def _get(self, key: str) -> object:
        if key in self._unwritten:
            return self._unwritten[key]
        # The table's store directly: Faust's own get adds a sensor call, a membership test and
        # its __missing__ to every read, and every suppression check is a miss.
        return self.table.data.get(key.encode())

    def digest(self, ident: str) -> str:
        return hash_identifier(ident, self.hash_key)

    def suppressed(self, idents: list[str]) -> bool:
        """Whether an identifier was erased (its keyed hash is on the suppression list)."""
        return any(self._get(SUPPRESSED_PREFIX + self.digest(i)) is not None for i in idents)

    def being_erased(self) -> frozenset[str]:
        """The identifiers of the people whose erasure is put off: their events are dropped as
        they will be after it, so that none links the person to someone else first (the erasure,
        carried out later, would then erase that other person too)."""
        return put_off_erasures(self._get)[0]

    async def handle(self, value: bytes) -> None:
        message = orjson.loads(value)
        if "erase" in message:
            await self.erase(message["erase"])
            return
        await self._resolve(message)

    async def _resolve(self, message: dict) -> None:
        routed: list[tuple[str, dict]] = []
        renamed: dict[str, str] = {}
        # The message's graph changes reach Redis before the table: a message read again after a
        # crash finds them in the table already and writes nothing, so Redis must not be the one
        # behind (a failed flush keeps them staged, lost only if the worker dies before Redis is back).
        self._unwritten = {}
        deliveries: list[Awaitable[object]] = []
        erasing = self.being_erased()  # once per message: only an erase message changes it
        try:
            for record in message["records"]:
                idents = event_identifiers(record, self.blocked)
                if self.suppressed(idents) or (erasing and not erasing.isdisjoint(idents)):
                    # An erased person: the event is dropped and counted, never stored.
                    self.sink.count("suppressed_events")
                    continue
                known = known_canonical(self._get, idents, record["ts"])
                if known is not None:  # a known person: link would change nothing
                    routed.append((known, record))
                    continue
                graph, ids, groups = store_graph(self._get)
                result = link(graph, idents, record["ts"], self.max_identifiers)
                self._unwritten.update(store_changes(ids, groups))
                for absorbed, survivor in result.merges:
                    deliveries.append(await self._merge(absorbed, survivor, record))
                    renamed[absorbed] = survivor
                await self._report(result, record)
                routed.append((result.canonical, record))
            # The graph is written only once every merge_into is on the broker: a crash before
            # that makes this message read again, link again and send again; a graph holding a
            # link whose merge_into was lost would leave the survivor holding its events for a
            # handover that never comes.
            for delivery in deliveries:
                await delivery
            if self._unwritten:
                # Under the sink's lock from staging to the table write: no other flush (the
                # timer's) sends the change before the table holds it, and the serving-view
                # rewrite, which reads the table under the same lock, never sees one without the other.
                async with self.sink.lock:
                    self._stage(self._unwritten)
                    await self.sink.flush_locked()
                    self._write(self._unwritten, stage=False)
        finally:
            self._unwritten = {}
        batches: dict[str, list[dict]] = {}
        for canonical, record in routed:
            while canonical in renamed:  # merged by a later event of the same message
                canonical = renamed[canonical]
            batches.setdefault(canonical, []).append(record)
        await send_batches(self.wiring, batches)

    def _write(self, changes: dict[str, object], stage: bool = True) -> None:
        for key, value in changes.items():
            raw = key.encode()
            if value is None:
                if raw in self.table:
                    del self.table[raw]
            else:
                self.table[raw] = value
        if stage:
            self._stage(changes)

    def _stage(self, changes: dict[str, object]) -> None:
        for key, value in changes.items():
            kind, _, name = key.partition("|")
            if kind == "i":
                self.sink.stage_id(name, value)  # type: ignore[arg-type]
            elif kind == "g":
                self.sink.stage_group(name, None if value is None else orjson.dumps(value))

    async def _merge(self, absorbed: str, survivor: str, record: dict) -> Awaitable[object]:
        """Tell the survivor to expect the absorbed profile, then the absorbed profile to merge
        into it; returns the delivery of ``merge_into``, which the caller awaits before it writes
        the graph."""
        cause = record["event_id"]
        expect = {"op": "expect", "from": absorbed, "cause": cause}
        # The survivor must hear "expect" before the absorbed profile's state can reach it.
        await (await send_by_customer(self.wiring, survivor.encode(), orjson.dumps(expect)))
        merge = {"op": "merge_into", "into": survivor, "cause": cause}
        delivered = await send_by_customer(self.wiring, absorbed.encode(), orjson.dumps(merge))
        await self._lineage("merge", absorbed, survivor, None, record)
        self.sink.count("identity_merges")
        log.info("Merged profile %s into %s (event %s)", absorbed, survivor, cause)
        return delivered

    async def _report(self, result: LinkResult, record: dict) -> None:
        for ident, group, target in result.conflicts:
            await self._lineage("conflict", group, target, ident, record)
            self.sink.count("identity_conflicts")
            log.warning("Identity conflict: %s belongs to %s; event %s names %s; not merged",
                        ident, group, record["event_id"], target)
        for ident in result.capped:
            await self._lineage("capped", result.canonical or "", result.canonical or "", ident, record)
            self.sink.count("identity_capped")

    async def _lineage(self, kind: str, old: str, canonical: str, ident: str | None, record: dict) -> None:
        change = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "old_id": old,
            "canonical_id": canonical,
            "identifier": ident,
            "event_id": record["event_id"],
            "event_ts": iso_text(record["ts"]),
            "ts": now_iso(),
        }
        await self.wiring.identity_topic.send(key=old.encode(), value=orjson.dumps(change))

    async def erase(self, request: dict) -> None:
        ident = request["identifier"]
        graph, ids, groups = store_graph(self._get)
        canonical, members = erase(graph, ident)
        deferred = dict(self.table.get(ERASING_KEY.encode()) or {})
        if canonical is None and self.suppressed([ident]) and request["request_id"] not in deferred:
            # Read again (a redelivery after a crash, or both a restarted worker and the one that
            # put it off sent it): it was carried out, and its audit record stands.
            log.info("Erasure %s: already carried out", request["request_id"])
            return
        changes = store_changes(ids, groups)
        digests = [self.digest(member) for member in members]
        # Redis first, flushed at once: once the table has forgotten the person, a request read
        # again after a crash finds nothing to delete, and nothing else would find these entries.
        # Under the sink's lock through the table writes, as in _resolve.
        async with self.sink.lock:
            self._stage(changes)
            for digest in digests:
                self.sink.stage_suppressed(digest)
            failed = self.sink.failed_flushes
            await self.sink.flush_locked()
            if self.sink.failed_flushes != failed:
                # Redis is unreachable: the table keeps the graph, and the request, until it is back
                # (streams.agents.resend_erasures sends it again; a worker that restarts finds it here).
                deferred[request["request_id"]] = request
                self.table[ERASING_KEY.encode()] = deferred
                self.wiring.deferred_erasures[request["request_id"]] = request
                log.warning("Erasure %s put off: Redis is unreachable (it goes on once Redis has the deletes)",
                            request["request_id"])
                return
            if deferred.pop(request["request_id"], None) is not None:
                if deferred:
                    self.table[ERASING_KEY.encode()] = deferred
                else:
                    del self.table[ERASING_KEY.encode()]
            self._write(changes, stage=False)
            for digest in digests:
                self.table[(SUPPRESSED_PREFIX + digest).encode()] = {"ts": now_iso()}
        keys = sorted({canonical_key(m) for m in members} | ({canonical} if canonical else set()))
        for key in keys:
            await send_by_customer(self.wiring, key.encode(), FORGET)
            await self.wiring.identity_topic.send(key=key.encode(), value=None)  # lineage tombstone
        audit = {
            "schema_version": SCHEMA_VERSION,
            "kind": "erasure",
            "request_id": request["request_id"],
            "subject_hash": self.digest(ident),
            "found": canonical is not None,
            "identifiers": len(members),
            "profiles": len(keys),
            "requested_by": request.get("requested_by") or "unknown",
            "requested_ts": request.get("requested_ts") or now_iso(),
            "ts": now_iso(),
        }
        await self.wiring.audit_topic.send(key=request["request_id"].encode(), value=orjson.dumps(audit))
        self.sink.count("erasures")
        log.info("Erasure %s: %d identifiers, %d profile keys", request["request_id"], len(members), len(keys))


def erasure_request(value: bytes | None, hash_key: bytes, where: str) -> dict:
    """Validate an erasure request from the public topic; raise ValueError naming the fix.

    ``{"identifier": "c-7" | "anon:..." | "device:..." | "social:<platform>:<handle>"}`` or
    ``{"email": "a@b.example"}`` / ``{"phone": "+44..."}`` (hashed here, never kept in clear),
    with optional ``request_id`` and ``requested_by``.
    """
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"erasure request is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("erasure request must be a JSON object")
    ident = None
    if isinstance(body.get("email"), str) and "@" in body["email"]:
        ident = "email:" + hash_identifier(body["email"].strip().lower(), hash_key)
    elif isinstance(body.get("phone"), str) and any(ch.isdigit() for ch in body["phone"]):
        digits = "".join(ch for ch in body["phone"] if ch.isdigit() or ch == "+")
        ident = "phone:" + hash_identifier(digits, hash_key)
    elif isinstance(body.get("identifier"), str):
        ident = parse_identifier(body["identifier"])
    if ident is None:
        raise ValueError('erasure request needs "identifier" (a customer id, or anon:/device:/social:... form), '
                         '"email" or "phone"')
    return {
        "identifier": ident,
        "request_id": str(body.get("request_id") or where),
        "requested_by": str(body.get("requested_by") or "topic"),
        "requested_ts": str(body.get("requested_ts") or now_iso()),
    }


def register_identity(app: faust.App, wiring: Wiring) -> None:
    resolver = Resolver(wiring)
    hash_key = wiring.settings.hash_key.get_secret_value().encode()

    @app.agent(wiring.identity_events_topic, name="resolve_identities")
    async def resolve_identities(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await guarded(wiring, event, lambda e: resolver.handle(e.value))
            await drain_changelog(app)

    @app.agent(wiring.erasure_topic, name="erasure_requests")
    async def erasure_requests(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            where = f"{message.topic}/{message.partition}/{message.offset}"
            try:
                request = erasure_request(event.value, hash_key, where)
            except ValueError as exc:
                await send_dead_letter(wiring, message, Rejection(str(exc), event.value or b""))
                continue
            await guarded(wiring, event, lambda e: wiring.identity_events_topic.send(
                key=b"erase", value=orjson.dumps({"erase": request})))

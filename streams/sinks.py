"""The Redis serving view: coalesced, pipelined, never older than what is there.

The profile agent stages the latest profile of a customer (:meth:`RedisProfileSink.stage`);
a flush writes every staged profile in one pipeline, through a Lua script that leaves a
hash alone when it already holds the same or a newer ``version``. A customer updated a
hundred times between flushes costs one write. Failed flushes keep what they could not
write and try again on the next one; the Faust table stays the source of truth.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from models.view import encode_profile_json

log = logging.getLogger(__name__)

# KEYS[1] profile hash; ARGV[1] version; ARGV[2] the flat fields as one JSON object of strings;
# ARGV[3] the ``json`` field, if any. One JSON argument instead of ~60 field and value arguments:
# redis-py packs every argument of a command in Python; orjson and Redis's cjson do it in C.
WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
local args, n = {}, 0
for name, value in pairs(cjson.decode(ARGV[2])) do
  args[n + 1], args[n + 2], n = name, value, n + 2
end
if ARGV[3] then
  args[n + 1], args[n + 2] = 'json', ARGV[3]
end
redis.call('HSET', KEYS[1], unpack(args))
return 1
"""


@dataclass(frozen=True, slots=True)
class RedisLayout:
    """Key names of the serving view (contract: Redis)."""

    prefix: str = "omniprofile:"

    def profile(self, customer_id: str) -> str:
        return f"{self.prefix}profile:{customer_id}"

    def segment(self, scope: str, segment: str) -> str:
        return f"{self.prefix}segment:{scope}:{segment}"

    def segment_sizes(self, scope: str) -> str:
        return f"{self.prefix}segments:{scope}"

    def hops(self) -> str:
        """Hash ``from>to`` -> hops counted since the start (the contract's transition counts)."""
        return f"{self.prefix}hops"

    def journeys(self) -> str:
        """Hash counter -> total since the start: ``hop|a>b``, ``conv|a>b``, ``credit|model|channel``,
        ``revenue|model|channel``, ``late|...``."""
        return f"{self.prefix}journeys"

    def journey_window(self, kind: str, day: str) -> str:
        """Hash counter -> value in the window ``kind`` (``day`` or ``7d``) starting on ``day`` (YYYY-MM-DD)."""
        return f"{self.prefix}journeys:{kind}:{day}"

    def segment_summaries(self) -> str:
        """Hash scope -> the scope's ``SegmentSummaries`` JSON (the latest published)."""
        return f"{self.prefix}segment-summaries"

    def identity(self, ident: str) -> str:
        """String: the canonical profile id of an identifier (``anon:a1`` -> ``c-7``)."""
        return f"{self.prefix}identity:{ident}"

    def identity_group(self, canonical: str) -> str:
        """String: JSON ``{"members": [...], "customer_id": ..., "first_ts": ...}`` of a group."""
        return f"{self.prefix}identity-group:{canonical}"

    def suppressed(self) -> str:
        """Set of keyed hashes of erased identifiers (their later events are dropped)."""
        return f"{self.prefix}suppressed"

    def stats(self) -> str:
        """Hash of counters: ``suppressed_events``, ``identity_merges``, ``identity_conflicts``, ..."""
        return f"{self.prefix}stats"

    def serving_synced(self) -> str:
        """Hash part -> time it was last rewritten from the tables (``profiles:3``, ``journeys:0``,
        ``identity``); a missing part is rewritten (streams.resync)."""
        return f"{self.prefix}serving-synced"

    def serving_epoch(self) -> str:
        """String: a random token set once per Redis data set; it vanishes when Redis loses its data."""
        return f"{self.prefix}serving-epoch"

    def serving_clean(self) -> str:
        """Hash part -> the part's table changelog offset when a worker stopped cleanly with every
        write of the part in Redis (``profiles:3``); the next owner skips its catch-up when its
        recovered table ends at the same offset (streams.resync)."""
        return f"{self.prefix}serving-clean"


@dataclass(slots=True)
class FlushStats:
    written: int = 0
    skipped_stale: int = 0
    failed_flushes: int = 0
    last_error: str | None = None


def connect(url: str, socket_timeout: float) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )


class RedisProfileSink:
    """Stage profiles per customer and write them to Redis in pipelined flushes.

    ``json_codec``: how the ``json`` field is stored (models.view.JSON_CODECS). It is encoded at the
    flush, so a customer updated many times between two flushes is compressed once.
    """

    def __init__(self, url: str, layout: RedisLayout, socket_timeout: float = 5.0, flush_max: int = 1000,
                 json_codec: str = "plain") -> None:
        encode_profile_json(b"{}", json_codec)  # an unknown codec fails here, not at the first flush
        self.url = url
        self.layout = layout
        self.socket_timeout = socket_timeout
        self.flush_max = flush_max
        self.json_codec = json_codec
        self.stats = FlushStats()
        self._pending: dict[str, tuple[int, dict]] = {}
        self._moves: list[tuple[str, str, str | None, str]] = []
        self._deletes: dict[str, list[tuple[str, str]]] = {}
        self._client: aioredis.Redis | None = None
        self._script = None
        self._lock = asyncio.Lock()

    def connection(self) -> aioredis.Redis:
        """The sink's Redis client, created on first use (the serving-view resync shares it)."""
        if self._client is None:
            self._client = connect(self.url, self.socket_timeout)
            self._script = self._client.register_script(WRITE_IF_NEWER)
        return self._client

    def stage(self, customer_id: str, version: int, fields: dict) -> None:
        """Remember the latest fields of a customer until the next flush.

        ``fields``: text values (models.view.redis_fields), plus the ``json`` document as bytes.
        Anything else would reach Redis changed (the flush sends the fields as one JSON object), so
        it is refused here, where the mistake is.
        """
        for name, value in fields.items():
            if type(value) is not str and name != "json":
                raise TypeError(f"Redis profile field {name!r} must be text, not {type(value).__name__}")
        staged = self._pending.get(customer_id)
        if staged is None or staged[0] <= version:
            self._pending[customer_id] = (version, fields)

    def stage_move(self, customer_id: str, scope: str, from_segment: str | None, to_segment: str) -> None:
        """Move a customer between the segment sets of a scope at the next flush."""
        self._moves.append((customer_id, scope, from_segment, to_segment))

    def stage_delete(self, customer_id: str, segments: dict[str, str]) -> None:
        """Remove a profile (merged away or erased) and its segment memberships at the next flush.

        Anything staged for it before is dropped; the delete runs after this flush's moves.
        """
        self._pending.pop(customer_id, None)
        self._deletes.setdefault(customer_id, []).extend(sorted(segments.items()))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def deleting(self, customer_id: str) -> bool:
        """A delete of this profile is staged and has not reached Redis yet."""
        return customer_id in self._deletes

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.flush_max

    @property
    def empty(self) -> bool:
        """Nothing staged: every profile, move and delete handed to the sink reached Redis."""
        return not self._pending and not self._moves and not self._deletes

    async def flush(self) -> int:
        """Write everything staged; return how many hashes were written."""
        async with self._lock:
            if self.empty:
                return 0
            batch, self._pending = self._pending, {}
            moves, self._moves = self._moves, []
            deletes, self._deletes = self._deletes, {}
            try:
                pipe = self.connection().pipeline(transaction=False)
                for customer_id, (version, fields) in batch.items():
                    flat = dict(fields)
                    document = flat.pop("json", None)
                    args = [version, orjson.dumps(flat)]
                    if document is not None:
                        args.append(encode_profile_json(document, self.json_codec))
                    await self._script(keys=[self.layout.profile(customer_id)], args=args, client=pipe)
                touched: set[tuple[str, str]] = set()
                for customer_id, scope, old, new in moves:
                    if old is not None:
                        pipe.srem(self.layout.segment(scope, old), customer_id)
                        touched.add((scope, old))
                    pipe.sadd(self.layout.segment(scope, new), customer_id)
                    touched.add((scope, new))
                for customer_id, memberships in deletes.items():
                    pipe.delete(self.layout.profile(customer_id))
                    for scope, segment in memberships:
                        pipe.srem(self.layout.segment(scope, segment), customer_id)
                        touched.add((scope, segment))
                started = time.perf_counter()
                results = (await pipe.execute())[: len(batch)]
                if touched:
                    await self._refresh_sizes(sorted(touched))
            except (RedisError, OSError) as exc:
                # Keep what was not written, unless a newer version was staged meanwhile.
                for customer_id, (version, fields) in batch.items():
                    self.stage(customer_id, version, fields)
                self._moves[:0] = moves
                for customer_id, memberships in deletes.items():
                    self.stage_delete(customer_id, dict(memberships))
                self.stats.failed_flushes += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "Redis flush of %d profiles failed (%s); keeping them for the next flush",
                    len(batch),
                    self.stats.last_error,
                )
                return 0
            written = sum(1 for r in results if r == 1)
            self.stats.written += written
            self.stats.skipped_stale += len(results) - written
            log.debug("Redis flush: %d written, %d stale in %.1f ms", written, len(results) - written,
                      (time.perf_counter() - started) * 1000)
            return written

    async def _refresh_sizes(self, touched: list[tuple[str, str]]) -> None:
        """Sizes come from the sets themselves (SCARD), so a replayed move cannot skew them."""
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        for scope, segment in touched:
            pipe.scard(self.layout.segment(scope, segment))
        sizes = await pipe.execute()
        pipe = self._client.pipeline(transaction=False)
        for (scope, segment), size in zip(touched, sizes):
            pipe.hset(self.layout.segment_sizes(scope), segment, size)
        await pipe.execute()

    async def write_summaries(self, documents: dict[str, bytes]) -> None:
        """Replace the persona summaries (scope -> JSON); scopes no longer summarised are dropped."""
        client = self.connection()
        key = self.layout.segment_summaries()
        gone = {name.decode() for name in await client.hkeys(key)} - set(documents)
        pipe = client.pipeline(transaction=True)
        if documents:
            pipe.hset(key, mapping=documents)
        if gone:
            pipe.hdel(key, *sorted(gone))
        await pipe.execute()

    async def close(self) -> None:
        await self.flush()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class RedisJourneySink:
    """Stages the journey counters the aggregator has just updated; one pipeline per flush.

    Values are the tables' current values (HSET, not HINCRBY), so a replayed delta rewrites the
    same number. Window hashes expire with the retention of the windowed tables.
    """

    def __init__(self, url: str, layout: RedisLayout, retention_days: int, socket_timeout: float = 5.0) -> None:
        self.url = url
        self.layout = layout
        self.retention_s = retention_days * 86_400
        self.socket_timeout = socket_timeout
        self._totals: dict[str, float] = {}
        self._windows: dict[tuple[str, str], dict[str, float]] = {}
        self._client: aioredis.Redis | None = None
        self._lock = asyncio.Lock()
        self.failed_flushes = 0

    @property
    def pending(self) -> int:
        return len(self._totals) + sum(len(values) for values in self._windows.values())

    def stage_total(self, key: str, value: float) -> None:
        self._totals[key] = value

    def stage_window(self, kind: str, start_ms: int, key: str, value: float) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime(start_ms / 1000))
        self._windows.setdefault((kind, day), {})[key] = value

    async def flush(self) -> None:
        async with self._lock:
            if not self._totals and not self._windows:
                return
            totals, self._totals = self._totals, {}
            windows, self._windows = self._windows, {}
            try:
                if self._client is None:
                    self._client = connect(self.url, self.socket_timeout)
                pipe = self._client.pipeline(transaction=False)
                if totals:
                    pipe.hset(self.layout.journeys(), mapping={k: repr(round(v, 6)) for k, v in totals.items()})
                    hops = {k[4:]: repr(round(v, 6)) for k, v in totals.items() if k.startswith("hop|")}
                    if hops:
                        pipe.hset(self.layout.hops(), mapping=hops)
                for (kind, day), values in windows.items():
                    name = self.layout.journey_window(kind, day)
                    pipe.hset(name, mapping={k: repr(round(v, 6)) for k, v in values.items()})
                    pipe.expire(name, self.retention_s)
                await pipe.execute()
            except (RedisError, OSError) as exc:
                for key, value in totals.items():
                    self._totals.setdefault(key, value)
                for window, values in windows.items():
                    held = self._windows.setdefault(window, {})
                    for key, value in values.items():
                        held.setdefault(key, value)
                self.failed_flushes += 1
                log.warning("Redis flush of journey counters failed (%s: %s); keeping them", type(exc).__name__, exc)

    async def close(self) -> None:
        await self.flush()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class RedisIdentitySink:
    """The identity graph's serving copy (lookups by any identifier, ``omniprofile export``),
    the suppression list of erased identifiers and the identity counters; one pipeline per flush."""

    def __init__(self, url: str, layout: RedisLayout, socket_timeout: float = 5.0) -> None:
        self.url = url
        self.layout = layout
        self.socket_timeout = socket_timeout
        self._ids: dict[str, str | None] = {}
        self._groups: dict[str, bytes | None] = {}
        self._suppressed: set[str] = set()
        self._counts: dict[str, int] = {}
        self._client: aioredis.Redis | None = None
        self._lock = asyncio.Lock()
        self.failed_flushes = 0

    @property
    def pending(self) -> int:
        return len(self._ids) + len(self._groups) + len(self._suppressed)

    def stage_id(self, ident: str, canonical: str | None) -> None:
        self._ids[ident] = canonical

    def stage_group(self, canonical: str, document: bytes | None) -> None:
        self._groups[canonical] = document

    def stage_suppressed(self, digest: str) -> None:
        self._suppressed.add(digest)

    def count(self, name: str, by: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + by

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every flush. The identity stage holds it from staging a change through its
        flush to its table write (:meth:`flush_locked`), so no other flush sends the change before
        the table holds it; the serving-view rewrite reads the table under it too
        (streams.resync), so it never sees a change in Redis and not in the table, or the reverse."""
        return self._lock

    def is_staged(self, kind: str, name: str) -> bool:
        """Whether a change of ``name`` (``kind`` as its table key prefix: ``i`` or ``g``) waits
        for a flush: left by a failed one, and newer than anything read from the table."""
        return name in (self._ids if kind == "i" else self._groups)

    async def flush(self) -> None:
        async with self._lock:
            await self.flush_locked()

    async def discard_staged(self) -> int:
        """Drop the identity writes waiting for a flush (not the counters); returns how many."""
        async with self._lock:
            dropped = self.pending
            self._ids, self._groups, self._suppressed = {}, {}, set()
            return dropped

    async def flush_locked(self) -> None:
        """:meth:`flush`, for a caller that holds :attr:`lock`."""
        if not (self._ids or self._groups or self._suppressed or self._counts):
            return
        ids, self._ids = self._ids, {}
        groups, self._groups = self._groups, {}
        suppressed, self._suppressed = self._suppressed, set()
        counts, self._counts = self._counts, {}
        try:
            pipe = self.connection().pipeline(transaction=False)
            self.queue(pipe, ids, groups, suppressed)
            for name, by in counts.items():
                pipe.hincrby(self.layout.stats(), name, by)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            for ident, canonical in ids.items():
                self._ids.setdefault(ident, canonical)
            for canonical, document in groups.items():
                self._groups.setdefault(canonical, document)
            self._suppressed |= suppressed
            for name, by in counts.items():
                self.count(name, by)
            self.failed_flushes += 1
            log.warning("Redis flush of identities failed (%s: %s); keeping them", type(exc).__name__, exc)

    def connection(self) -> aioredis.Redis:
        if self._client is None:
            self._client = connect(self.url, self.socket_timeout)
        return self._client

    def queue(self, pipe, ids: dict[str, str | None], groups: dict[str, bytes | None],
              suppressed: set[str] | list[str]) -> None:
        """Add the writes of identity entries (None: delete) to a Redis pipeline."""
        for ident, canonical in ids.items():
            if canonical is None:
                pipe.delete(self.layout.identity(ident))
            else:
                pipe.set(self.layout.identity(ident), canonical)
        for canonical, document in groups.items():
            if document is None:
                pipe.delete(self.layout.identity_group(canonical))
            else:
                pipe.set(self.layout.identity_group(canonical), document)
        if suppressed:
            pipe.sadd(self.layout.suppressed(), *sorted(suppressed))

    async def close(self) -> None:
        await self.flush()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

"""Bring the Redis serving view back after Redis lost data (a restart without persistence, a
flush, an eviction): the Faust tables are the source of truth, so every worker rewrites what its
active partitions hold.

Each worker keeps, per part it serves (``profiles:<p>``, ``journeys:<p>``, ``identity``), a field
in the hash ``{prefix}serving-synced``. A part whose field is missing is rewritten from the table,
a chunk at a time, and its field is set only if every write of the rewrite reached the same Redis:
the rewrite starts by reading (or creating) the token ``{prefix}serving-epoch``, and the field is set
by a script that checks the token is unchanged. A Redis that restarts empty during a rewrite has
no token, so the part is rewritten again on the next check. A fresh Redis therefore gets every
profile written once when the worker starts, and a worker that takes over a partition finds its
field already set by the previous owner.

A worker killed (``kill -9``, OOM) between two Redis flushes loses what it had staged, while the
table changelog and ``profiles.updates`` already hold it and the input offsets may be committed: no
message will bring those profiles back, and Redis did not lose data, so the marks are all there. So a
worker also *catches up* every part it takes over (at its start, or when a rebalance gives it a
partition it did not hold): it reads the ``version`` of each profile of the partition in Redis
(pipelined, a chunk at a time) and writes again those that are missing or older than the table's,
and rewrites the partition's journey counters (current values, a few hundred at most). The identity
graph has no versions to compare, so a worker that takes it over writes all of it again. A part
stays caught up as long as this worker keeps it; a rebalance that takes it away forgets it.

The scan costs one ``HGET`` per profile (about 70 us each on rocksdict, docs/reliability.md), at
every start. A worker that stops cleanly (SIGTERM) therefore leaves, per profile partition it had
caught up and then flushed completely, the offset its table's changelog ended at in
``{prefix}serving-clean`` (so does the identity graph); the next owner
skips the scan (the rewrite) when its own recovered table ends at the same offset (nothing changed
the table since Redis was complete). Any write to the table after the
mark moves the end, so a later crash is caught up as before.

Rewrites go through the same sinks as live updates, so a profile that changes during its rewrite
is never overwritten by an older version (the write-if-newer script).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timezone

import faust
import orjson
from aiokafka.errors import KafkaError
from faust.types import TP
from redis.exceptions import RedisError

from models import stitching
from models.identity import (
    ERASING_KEY, GROUP_PREFIX, ID_PREFIX, SUPPRESSED_PREFIX, put_off_erasures,
)
from models.journeys import week_windows_of
from models.view import decode_profile_json, redis_fields, render_profile
from streams.app import Wiring
from streams.topics import partition_of

log = logging.getLogger(__name__)

# KEYS[1] epoch token, KEYS[2] synced hash; ARGV[1] expected token, ARGV[2] field, ARGV[3] value.
MARK_IF_SAME_EPOCH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""


# KEYS[1] synced hash, KEYS[2] clean hash; ARGV part, offset, part, offset, ... A part gets its clean
# mark only while it has its synced mark: after Redis lost data, the rewrite decides, not the mark.
MARK_CLEAN = """
local marked = {}
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    marked[#marked + 1] = ARGV[i]
  end
end
return marked
"""


def clean_handover(mark: bytes | str | None, recovered: int | None) -> bool:
    """Whether a part's previous owner stopped with Redis complete at the changelog offset ``mark``
    and this worker's table was recovered to the same offset (``recovered``), so the catch-up scan
    can be skipped.

    >>> clean_handover(b"41", 41), clean_handover(b"41", 57), clean_handover(None, 41), clean_handover(b"-1", None)
    (True, False, False, False)
    """
    return mark is not None and recovered is not None and int(mark) == recovered


def memberships(profile_json: bytes) -> dict[str, str]:
    """The segment of each scope in a profile's JSON as Redis holds it (``{}`` if unreadable).

    >>> memberships(b'{"customer_id": "c-1", "segments": {"all": "all-2", "web": "web-0"}}')
    {'all': 'all-2', 'web': 'web-0'}
    >>> memberships(b'not json')
    {}
    """
    try:
        segments = decode_profile_json(profile_json).get("segments")
    except (ValueError, AttributeError):  # orjson.JSONDecodeError is a ValueError
        return {}
    return {str(k): str(v) for k, v in segments.items() if v is not None} if isinstance(segments, dict) else {}


def memberships_to_write(segments: dict[str, str], known: dict[str, list[str]]) -> list[tuple[str, str, str | None]]:
    """(scope, segment, old) moves that put a customer in its segment of each scope and take it out
    of every other segment Redis knows for that scope (``old`` None: only the add).

    >>> memberships_to_write({"all": "all-1"}, {"all": ["all-0", "all-1", "all-2"]})
    [('all', 'all-1', 'all-0'), ('all', 'all-1', 'all-2')]
    >>> memberships_to_write({"all": "all-1", "web": "web-0"}, {})
    [('all', 'all-1', None), ('web', 'web-0', None)]
    """
    moves: list[tuple[str, str, str | None]] = []
    for scope, segment in sorted(segments.items()):
        others = [name for name in known.get(scope, []) if name != segment]
        moves += [(scope, segment, old) for old in others] or [(scope, segment, None)]
    return moves


def behind(in_redis: bytes | str | None, version: int) -> bool:
    """Whether a profile hash whose ``version`` field reads ``in_redis`` (None: no hash) is older than
    the table's ``version``."""
    return in_redis is None or int(in_redis) < version


class ResyncAborted(RuntimeError):
    """A write of the rewrite failed; the part stays unmarked and is tried again."""


class ServingView:
    """Checks this worker's parts of the serving view and rewrites the missing ones."""

    def __init__(self, app: faust.App, wiring: Wiring, chunk: int = 500) -> None:
        self.app = app
        self.wiring = wiring
        self.chunk = chunk
        self.layout = wiring.sink.layout
        self.backlog = 0  # keys left in the rewrite under way (a metric)
        self.rewritten = 0  # parts rewritten since the start
        self.caught_up: set[str] = set()  # parts checked against Redis since this worker took them
        self.restaged = 0  # profiles written again by catch-ups since the start (Redis was behind)
        # Parts caught up, by how: profile partitions scanned or handed over cleanly; the identity
        # graph rewritten or handed over cleanly.
        self.catch_ups = {"scanned": 0, "clean_handover": 0, "identity_rewritten": 0, "identity_clean_handover": 0}
        self.deleted = 0  # hashes of merged-away profiles deleted by catch-ups (their delete was lost)
        self._lock = asyncio.Lock()

    def assigned(self) -> None:
        """After a rebalance: forget the catch-up of the parts this worker no longer serves (another
        worker may hold them, and die with writes staged, before they come back)."""
        self.caught_up &= set(self.parts())

    def settled(self) -> bool:
        """No rebalance or table recovery under way: the tables hold every owned key."""
        app = self.app
        return (not getattr(app, "rebalancing", False) and not getattr(app, "in_recovery", False)
                and app.tables.recovery.completed.is_set())

    def parts(self) -> list[str]:
        """The parts this worker serves now: its active partitions of each table."""
        names = self.wiring.names
        actives = self.app.assignor.assigned_actives()
        parts = [f"profiles:{tp.partition}" for tp in actives if tp.topic == names.by_customer]
        parts += [f"journeys:{tp.partition}" for tp in actives if tp.topic == names.journey_deltas]
        if any(tp.topic == names.identity_events for tp in actives):
            parts.append("identity")
        return sorted(parts)

    async def check(self) -> list[str]:
        """Rewrite every part of this worker that Redis has no mark for; return the parts rewritten."""
        if self._lock.locked():
            return []
        async with self._lock:
            parts = self.parts() if self.settled() else []
            if not parts:
                return []
            try:
                client = self.wiring.sink.connection()
                marks = await client.hmget(self.layout.serving_synced(), parts)
                missing = [part for part, mark in zip(parts, marks) if mark is None]
                token = None
                if missing:
                    await client.set(self.layout.serving_epoch(), secrets.token_hex(8), nx=True)
                    token = await client.get(self.layout.serving_epoch())
            except (RedisError, OSError) as exc:
                log.debug("Serving view check skipped: Redis unavailable (%s)", exc)
                return []
            done = await self._rewrite_missing(client, missing, token)
            if len(done) == len(missing):
                await self._catch_up([part for part in parts if part not in self.caught_up])
            return done

    async def _rewrite_missing(self, client, missing: list[str], token: bytes | None) -> list[str]:
        done: list[str] = []
        for part in missing:
            generation = self.app.rebalancing_count
            if not self.settled() or part not in self.parts():  # the partition moved while we worked
                break
            try:
                started = asyncio.get_running_loop().time()
                count = await self.rewrite(part)
                if self.app.rebalancing_count != generation or not self.settled():
                    raise ResyncAborted("a rebalance started during the rewrite")
                mark = datetime.now(timezone.utc).isoformat(timespec="seconds")
                marked = await client.eval(MARK_IF_SAME_EPOCH, 2, self.layout.serving_epoch(),
                                           self.layout.serving_synced(), token, part, mark)
            except (ResyncAborted, RedisError, OSError) as exc:
                log.warning("Rewrite of %s in Redis stopped (%s); trying again at the next check", part, exc)
                break
            finally:
                self.backlog = 0
            if marked:
                self.rewritten += 1
                self.caught_up.add(part)
                done.append(part)
                log.info("Redis had no %s: rewrote %d entries from the table in %.1f s", part, count,
                         asyncio.get_running_loop().time() - started)
        return done

    async def _catch_up(self, parts: list[str]) -> None:
        """Write again what Redis is behind the table on, in the parts this worker has just taken."""
        for part in parts:
            generation = self.app.rebalancing_count
            if not self.settled() or part not in self.parts():
                break
            kind, _, partition = part.partition(":")
            rewrote_identity = False
            try:
                started = asyncio.get_running_loop().time()
                if kind == "profiles" and await self._handed_over_clean(part, self._changelog(int(partition))):
                    self.catch_ups["clean_handover"] += 1
                    count = 0
                elif kind == "profiles":
                    count = await self._profiles(int(partition), only_behind=True)
                    self.restaged += count
                    self.catch_ups["scanned"] += 1
                elif kind == "journeys":
                    count = await self._journeys(int(partition))
                elif await self._handed_over_clean(part, self._identity_changelog()):
                    self.catch_ups["identity_clean_handover"] += 1
                    count = self._deferred_erasures()
                else:
                    # The graph has no versions to compare: a killed owner may have lost a flush
                    # (the table and its changelog hold it), so the whole graph is written again.
                    count = await self._identity()
                    self.catch_ups["identity_rewritten"] += 1
                    rewrote_identity = True
                if self.app.rebalancing_count != generation or not self.settled():
                    raise ResyncAborted("a rebalance started during the catch-up")
            except (ResyncAborted, RedisError, OSError) as exc:
                log.warning("Catch-up of %s in Redis stopped (%s); trying again at the next check", part, exc)
                break
            finally:
                self.backlog = 0
            self.caught_up.add(part)
            if count and kind == "profiles":
                log.info("Redis was behind the table on %d profiles of %s: wrote them again in %.1f s", count,
                         part, asyncio.get_running_loop().time() - started)
            elif rewrote_identity:
                log.info("Identity graph taken over without a clean handover: wrote its %d entries again in %.1f s",
                         count, asyncio.get_running_loop().time() - started)

    def _changelog(self, partition: int) -> TP:
        return TP(self.wiring.profiles.changelog_topic.get_topic_name(), partition)

    def _identity_changelog(self) -> TP:
        return TP(self.wiring.identity.changelog_topic.get_topic_name(), 0)

    async def _handed_over_clean(self, part: str, changelog: TP) -> bool:
        """Whether the previous owner's clean mark for ``part`` matches the offset this worker
        recovered the part's table changelog to (faust's recovery keeps it, last offset = end offset - 1)."""
        mark = await self.wiring.sink.connection().hget(self.layout.serving_clean(), part)
        recovered = self.app.tables.recovery.active_highwaters.get(changelog)
        if not clean_handover(mark, recovered):
            return False
        log.info("%s was handed over cleanly at changelog offset %d: no catch-up needed", part, recovered)
        return True

    async def mark_clean(self, revoked: Iterable[TP] | None = None, timeout: float = 10.0) -> list[str]:
        """When this worker gives parts up with its streams idle (a clean stop: the consumer
        stopped; a rebalance: faust has waited for the streams and flushed the producer before its
        ``on_partitions_revoked`` signal): flush the producer, read where the table changelog of
        each part given up (``revoked``; None: all it serves) that it had caught up ends, flush the
        sinks of those parts, and if nothing is left staged, mark those parts clean at those
        offsets. Parts: profile partitions, and the identity graph. Returns the parts marked; any
        failure marks nothing (the next owner then scans or rewrites, as after a crash). A table
        write after the offsets were read moves the changelog's end past the mark, so it can only
        cost a catch-up, never skip one that was needed."""
        names = self.wiring.names
        if revoked is None:
            given = self.caught_up & set(self.parts())
        else:
            revoked = list(revoked)
            given = self.caught_up & ({f"profiles:{tp.partition}" for tp in revoked if tp.topic == names.by_customer}
                                      | {"identity" for tp in revoked if tp.topic == names.identity_events})
        # A partition with an erased marker still to remove is left to the next owner's scan (it
        # finds the marker there; ``erasing`` lives in this worker's memory only). Erasures the
        # identity stage put off need no such care: their deletes are staged (flushed below), and
        # the next owner reads the requests from the table either way (_catch_up).
        erasing = {partition_of(key, self.wiring.settings.partitions) for key in self.wiring.erasing}
        parts = {f"profiles:{p}": self._changelog(p)
                 for p in sorted(int(part.partition(":")[2]) for part in given if part.startswith("profiles:"))
                 if p not in erasing}
        if "identity" in given:
            parts["identity"] = self._identity_changelog()
        if not parts:
            return []
        sink, identity_sink = self.wiring.sink, self.wiring.identity_sink
        try:
            await self.app.producer.flush()
            ends = await asyncio.wait_for(self.app.consumer.highwaters(*parts.values()), timeout=timeout)
            failures = sink.stats.failed_flushes
            await sink.flush()
            if sink.stats.failed_flushes != failures or not sink.empty:
                raise ResyncAborted(sink.stats.last_error or "profile writes left staged")
            if "identity" in parts:
                failures = identity_sink.failed_flushes
                await identity_sink.flush()
                if identity_sink.failed_flushes != failures or identity_sink.pending:
                    raise ResyncAborted("identity writes left staged")
            args: list = []
            for part, tp in parts.items():
                if ends.get(tp) is not None:
                    args += [part, ends[tp] - 1]
            marked = await sink.connection().eval(MARK_CLEAN, 2, self.layout.serving_synced(),
                                                  self.layout.serving_clean(), *args) if args else []
        except (ResyncAborted, RedisError, OSError, asyncio.TimeoutError, KafkaError) as exc:
            log.warning("No clean-handover marks left in Redis (%s: %s); the next owner will catch its "
                        "parts up against the tables", type(exc).__name__, exc)
            return []
        marked = [part.decode() if isinstance(part, bytes) else part for part in marked]
        log.info("Left clean-handover marks in Redis for %d of %d parts (%s)", len(marked), len(parts),
                 ", ".join(marked) or "none")
        return marked

    async def release_identity(self, revoked: Iterable[TP]) -> int:
        """A rebalance takes the identity graph away (faust revokes every partition at each
        rebalance, so it may come back): drop the identity writes a failed flush left staged, and
        catch the graph up again if it comes back. Sent later by this worker's flush timer, they
        could overwrite what the graph's next owner wrote meanwhile. Whoever owns it next writes it
        from the table: a staged write means the table moved past any clean mark (the identity
        stage writes its table whether the flush went through or not), and mark_clean left none."""
        if not any(tp.topic == self.wiring.names.identity_events for tp in revoked):
            return 0
        dropped = await self.wiring.identity_sink.discard_staged()
        if dropped:
            self.caught_up.discard("identity")
            log.warning("Dropped %d identity writes Redis had not taken: the identity graph's next owner "
                        "writes it again from the table", dropped)
        return dropped

    async def rewrite(self, part: str) -> int:
        kind, _, partition = part.partition(":")
        if kind == "profiles":
            return await self._profiles(int(partition))
        if kind == "journeys":
            return await self._journeys(int(partition))
        return await self._identity()

    @staticmethod
    async def _flush(flush: Callable[[], Awaitable[None]], failures: Callable[[], int], what: str,
                     error: Callable[[], str | None] = lambda: None) -> None:
        """Flush a sink; a failed flush aborts the rewrite (the sinks keep what they could not write)."""
        before = failures()
        await flush()
        if failures() != before:
            raise ResyncAborted(error() or f"a flush of {what} failed")

    async def _flush_profiles(self) -> None:
        sink = self.wiring.sink
        await self._flush(sink.flush, lambda: sink.stats.failed_flushes, "profiles", lambda: sink.stats.last_error)

    async def _profiles(self, partition: int, only_behind: bool = False) -> int:
        """Stage every profile of the partition, or (``only_behind``) those whose Redis hash is
        missing or holds an older ``version`` (read in one pipeline per chunk).

        ``only_behind`` also repairs what else a lost flush leaves: a profile written again leaves
        the other segment sets of each scope (a lost move left it in its old one too), and the hash
        of a profile merged away (a stub in the table) is deleted with its memberships. The hash of
        an erased profile whose delete never reached Redis (an erased marker) is deleted either way,
        and the marker goes once it is (streams.agents.resend_erasures)."""
        wiring, sink = self.wiring, self.wiring.sink
        n = wiring.settings.partitions
        keys = [key for key in list(wiring.profiles.keys()) if partition_of(key, n) == partition]
        self.backlog = len(keys)
        written = 0
        for start in range(0, len(keys), self.chunk):
            items = [(key, wiring.profiles.get(key)) for key in keys[start:start + self.chunk]]
            for key, s in items:
                if stitching.is_erased(s):
                    sink.stage_delete(key.decode(), s["segments"])
                    wiring.erasing.add(key)
            states = [s for _, s in items if s is not None and not stitching.is_placeholder(s) and s["events"]]
            known: dict[str, list[str]] = {}
            if only_behind and items:
                stubs = [key.decode() for key, s in items if stitching.is_stub(s)]
                pipe = sink.connection().pipeline(transaction=False)
                for state in states:
                    pipe.hget(self.layout.profile(state["customer_id"]), "version")
                for customer_id in stubs:
                    pipe.hget(self.layout.profile(customer_id), "json")
                held = await pipe.execute()
                for customer_id, left in zip(stubs, held[len(states):]):
                    if left is not None:  # merged away, and the delete never reached Redis
                        sink.stage_delete(customer_id, memberships(left))
                        self.deleted += 1
                states = [s for s, version in zip(states, held) if behind(version, s["version"])]
                known = await self._segments_known({scope for s in states for scope in s.get("segments") or {}})
            for state in states:
                profile = render_profile(state)
                sink.stage(profile["customer_id"], profile["version"], redis_fields(profile, orjson.dumps(profile)))
                for scope, segment, old in memberships_to_write(state.get("segments") or {}, known):
                    sink.stage_move(profile["customer_id"], scope, old, segment)
                written += 1
            await self._flush_profiles()
            self.backlog = max(0, len(keys) - start - self.chunk)
            await asyncio.sleep(0)
        return written

    async def _segments_known(self, scopes: set[str]) -> dict[str, list[str]]:
        """The segments Redis has a size for, per scope (every segment a customer can be in)."""
        if not scopes:
            return {}
        pipe = self.wiring.sink.connection().pipeline(transaction=False)
        ordered = sorted(scopes)
        for scope in ordered:
            pipe.hkeys(self.layout.segment_sizes(scope))
        names = await pipe.execute()
        return {scope: sorted(n.decode() for n in found) for scope, found in zip(ordered, names)}

    async def _journeys(self, partition: int) -> int:
        wiring, sink = self.wiring, self.wiring.journey_sink
        n = wiring.settings.partitions

        def mine(counter: str) -> bool:
            return partition_of(counter.encode(), n) == partition

        totals = [(k, v) for k, v in list(wiring.journey_totals.items()) if mine(k)]
        daily: dict[str, dict[int, float]] = {}
        for (counter, (start, _end)), value in list(wiring.journey_daily.table.data.items()):
            if mine(counter):
                daily.setdefault(counter, {})[int(round(start * 1000))] = value
        self.backlog = len(totals) + len(daily)
        for counter, value in totals:
            sink.stage_total(counter, value)
        for counter, days in daily.items():
            for day, value in days.items():
                sink.stage_window("day", day, counter, value)
            for start, total in week_windows_of(days):
                sink.stage_window("7d", start, counter, total)
        await self._flush(sink.flush, lambda: sink.failed_flushes, "the journey counters")
        return len(totals) + sum(len(days) for days in daily.values())

    def _deferred_erasures(self) -> int:
        """Erasure requests the identity stage put off while Redis was unreachable (a worker killed
        before Redis came back did not send them again): they go on after the next flush."""
        deferred = self.wiring.identity.get(ERASING_KEY.encode()) or {}
        self.wiring.deferred_erasures.update(deferred)
        return len(deferred)

    async def _identity(self) -> int:
        """Write the whole identity graph again (identifier -> group, group -> members, the
        suppression list), a chunk at a time while the identity stage goes on, then delete the
        identity keys Redis holds and the table does not.

        Each chunk reads the table and writes Redis (its own pipeline, nothing staged that could
        outlive the rewrite) under the sink's lock, which the identity stage holds from staging a
        change to its table write: a chunk sees the change in both or in neither. A change staged
        and not yet flushed (after a failed flush) is newer than the table, so it is left to its
        flush. The entries of a person whose erasure is put off (still in the table until it is
        carried out) are deleted, not written back. A chunk stops the rewrite once the graph is
        no longer this worker's (a rebalance started: its table may be closed or stale)."""
        self._deferred_erasures()
        table, sink = self.wiring.identity, self.wiring.identity_sink
        generation = self.app.rebalancing_count
        prefixes = (ID_PREFIX, GROUP_PREFIX, SUPPRESSED_PREFIX)
        keys = [raw for raw in list(table.keys()) if raw.decode().startswith(prefixes)]
        self.backlog = len(keys)
        for start in range(0, len(keys), self.chunk):
            async with sink.lock:
                self._check_identity_owned(generation)
                erasing = erasing_keys(table)
                ids: dict[str, str | None] = {}
                groups: dict[str, bytes | None] = {}
                suppressed: list[str] = []
                for raw in keys[start:start + self.chunk]:
                    kind, _, name = raw.decode().partition("|")
                    value = table.get(raw)
                    if kind == "s":
                        if value is not None:
                            suppressed.append(name)
                    elif value is not None and not sink.is_staged(kind, name):
                        erased = raw in erasing
                        if kind == "i":
                            ids[name] = None if erased else value  # type: ignore[assignment]
                        else:
                            groups[name] = None if erased else orjson.dumps(value)
                pipe = sink.connection().pipeline(transaction=False)
                sink.queue(pipe, ids, groups, suppressed)
                await pipe.execute()
            self.backlog = max(0, len(keys) - start - self.chunk)
        return len(keys) + await self._identity_orphans(generation)

    def _check_identity_owned(self, generation: int) -> None:
        if self.app.rebalancing_count != generation or not self.settled() or "identity" not in self.parts():
            raise ResyncAborted("the identity graph moved during its rewrite")

    async def _identity_orphans(self, generation: int) -> int:
        """Delete the identifiers and groups Redis holds and the table does not: deletes a killed
        worker kept after a failed flush (the group a merge absorbed, an erased person's entries).
        One ``SCAN`` of Redis's keyspace; each page is decided and deleted under the sink's lock,
        as in :meth:`_identity` (a key a page repeats is deleted again, which changes nothing)."""
        table, sink = self.wiring.identity, self.wiring.identity_sink
        heads = {"i": self.layout.identity(""), "g": self.layout.identity_group("")}
        match = glob_escape(self.layout.identity("")[:-1]) + "*"  # "{prefix}identity", which both start with
        client = sink.connection()
        cursor, deleted = None, 0
        while cursor != 0:
            cursor, keys = await client.scan(cursor or 0, match=match, count=self.chunk)
            found = []
            for key in keys:
                try:
                    text = key.decode() if isinstance(key, bytes) else key
                except UnicodeDecodeError:  # not a key this layout writes
                    continue
                found += [(kind, text[len(head):]) for kind, head in heads.items() if text.startswith(head)]
            if not found:
                continue
            async with sink.lock:
                self._check_identity_owned(generation)
                gone = [(kind, name) for kind, name in found
                        if table.get(f"{kind}|{name}".encode()) is None and not sink.is_staged(kind, name)]
                if gone:
                    pipe = client.pipeline(transaction=False)
                    sink.queue(pipe, {n: None for k, n in gone if k == "i"}, {n: None for k, n in gone if k == "g"}, [])
                    await pipe.execute()
                    deleted += len(gone)
        if deleted:
            log.info("Deleted %d identity entries from Redis that the table no longer holds", deleted)
        return deleted


def erasing_keys(table) -> set[bytes]:
    """The identity table keys (``i|…``, ``g|…``) of the people whose erasure is put off."""
    return {key.encode() for key in put_off_erasures(lambda k: table.get(k.encode()))[1]}


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)

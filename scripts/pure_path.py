"""Where a worker's per-event CPU goes outside Faust, Kafka and Redis (docs/performance.md).

Replays the synthetic events of ``bench throughput`` (seed 7, the first N) through the worker's
pure steps, in process, one event per message, in the order ``streams.agents.fold_records`` runs
them: validation (``decode_message``), identity resolution (``link`` on an in-memory graph), the
fold (``apply_events``), the journey, feature vectors, scoring, the learner (one segment learner,
as the learn agent), rendering, and the JSON of what is sent (the changelog state, the
``ProfileUpdate``, the Redis fields). Prints microseconds per event per stage, best of R runs,
and a digest of everything produced: a change meant to be faster only must leave it as it was.

    .venv/bin/python scripts/pure_path.py [N=20000] [R=3]
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter

import orjson

from models.identity import event_identifiers, link, store_changes, store_graph
from models.ingest import decode_message
from models.journeys import journey_entries, record_journey
from models.profile import apply_events
from models.segmentation import (ModelCache, SegmentLearner, assign_segments, feature_vectors, model_factory,
                                 scopes_of, scoring_time, teaching_scopes)
from models.synthetic import generate
from models.view import redis_fields, render_profile
from streams.settings import Settings

try:  # an older checkout (an A/B run against it) has no shortcut
    from models.identity import known_canonical
    fast_identity = True
except ImportError:
    fast_identity = False
try:
    from models.outputs import update_json
except ImportError:  # an older checkout: the whole update dumped, the same bytes
    def update_json(head: dict, profile_json: bytes) -> bytes:
        return orjson.dumps({**head, "profile": orjson.loads(profile_json)})

STAGES = ("validation", "identity", "fold", "journey", "features", "scoring", "learner", "render", "json out")


def replay(messages: list[tuple[str, bytes]], s: Settings) -> tuple[Counter, str]:
    """One pass over ``messages``: seconds per stage and the digest of the outputs."""
    spent: Counter = Counter()
    digest = hashlib.sha256()
    graph_store: dict = {}
    profiles: dict = {}
    snapshots: dict = {}
    learner = SegmentLearner(model_factory(s.segments, s.segment_halflife, s.segment_warmup), snapshots.get,
                             s.segment_snapshot_every)
    models = ModelCache(snapshots.get)
    key_bytes = s.hash_key.get_secret_value().encode()
    clock = time.perf_counter
    for source, raw in messages:
        t0 = clock()
        records = decode_message(source, raw, None, key_bytes, s.max_event_bytes).records
        t1 = clock()
        spent["validation"] += t1 - t0
        for record in records:
            t0 = clock()
            idents = event_identifiers(record, s.blocked_values)
            canonical = known_canonical(graph_store.get, idents, record["ts"]) if fast_identity else None
            if canonical is None:  # as streams.resolver: link only when the shortcut does not answer
                graph, ids, groups = store_graph(graph_store.get)
                canonical = link(graph, idents, record["ts"], s.identity_max_identifiers).canonical
                graph_store.update(store_changes(ids, groups))
            t1 = clock()
            step = apply_events(profiles.get(canonical), canonical, [record], s.dedup_window)
            t2 = clock()
            spent["identity"] += t1 - t0
            spent["fold"] += t2 - t1
            if not step.applied:
                continue
            entries = journey_entries(record_journey(step.state, step.new_records, s.journey_window_ms,
                                                     s.journey_halflife_ms))
            t3 = clock()
            as_of = scoring_time(step.state, record["ts"])
            scopes = scopes_of(step.state, {record["channel"]})
            vectors = feature_vectors(step.state, scopes, as_of)
            t4 = clock()
            moves = assign_segments(step.state, scopes, models.models_for(scopes), as_of, vectors)
            t5 = clock()
            for scope in teaching_scopes(step.state, scopes, s.segment_learn_rate, s.segment_min_events):
                if vectors[scope] is not None:
                    snapshot = learner.learn(scope, vectors[scope])
                    if snapshot is not None:
                        snapshots[scope] = snapshot
            t6 = clock()
            profile = render_profile(step.state)
            t7 = clock()
            profiles[canonical] = step.state
            state_json = orjson.dumps(step.state)
            profile_json = orjson.dumps(profile)
            update = update_json({"customer_id": canonical, "changed": step.changed}, profile_json)
            fields = redis_fields(profile, profile_json)
            t8 = clock()
            spent["journey"] += t3 - t2
            spent["features"] += t4 - t3
            spent["scoring"] += t5 - t4
            spent["learner"] += t6 - t5
            spent["render"] += t7 - t6
            spent["json out"] += t8 - t7
            digest.update(state_json)
            digest.update(update)
            digest.update(repr(sorted(fields.items())).encode())
            digest.update(repr([(m.scope, m.from_segment, m.to_segment) for m in moves]).encode())
            digest.update(orjson.dumps(entries))
    return spent, digest.hexdigest()[:16]


def main(argv: list[str]) -> int:
    events = int(argv[0]) if argv else 20_000
    runs = int(argv[1]) if len(argv) > 1 else 3
    data = generate(max(20, events // 9), seed=7)
    messages = [(e.source, orjson.dumps(e.event)) for e in data.events[:events]]
    settings = Settings()
    best: Counter = Counter()
    digests = set()
    for run in range(runs):
        spent, digest = replay(messages, settings)
        digests.add(digest)
        total = sum(spent.values())
        if not best or total < sum(best.values()):
            best = spent
        print(f"run {run + 1}/{runs}: {total / len(messages) * 1e6:.1f} µs/event", file=sys.stderr)
    total = sum(best.values())
    print(f"{len(messages):,} events, one per message, best of {runs} runs; output digest {', '.join(sorted(digests))}")
    print(f"{'stage':<12} {'µs/event':>9} {'share':>6}")
    for stage in STAGES:
        print(f"{stage:<12} {best[stage] / len(messages) * 1e6:>9.1f} {best[stage] / total:>6.0%}")
    print(f"{'total':<12} {total / len(messages) * 1e6:>9.1f} {1:>6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

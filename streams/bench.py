"""``omniprofile bench``: measurements that need no broker. ``bench segments`` is the first.

``bench segments`` generates a seeded dataset with ground-truth personas
(:func:`models.synthetic.generate`) and replays its valid events, one event per message in
event-time order, through the same pure functions the worker's agents call
(:mod:`streams.agents`): :func:`models.ingest.decode_message` and
:func:`models.ingest.group_by_profile` (``validate_events``), then
:func:`models.profile.apply_events`, :func:`models.segmentation.assign_segments` and the
teaching sample (``update_profiles``), and a learner :class:`models.segments.SegmentModel`
per scope (``learn_segments``). Scoring uses snapshots of the learner's models, taken when
the learner's ``Learner.learn`` would write them to the global table; at the end the
periodic sweep's work is done once (models still warming up are seeded early, then every
profile is re-scored). It all runs in this process: there is no
broker, no Faust table and no Redis, so the snapshot lag is the snapshot interval alone
(in the worker the global table's changelog adds its delay). The demo reports the ARI of
the real worker.

It reports the adjusted Rand index (ARI) of the online segments against the personas and
against a batch KMeans on the same final feature vectors, the cost of the segment path
next to the profile step alone, and with ``--algorithms`` a comparison of river's
clusterers on the same teaching stream (docs/segments.md).

Nothing here imports Faust, a Kafka client or Redis; scikit-learn (an extra) is imported
when the benchmark runs.

Examples
--------
>>> share_changed([0, 1, 2, 2], [0, 1, 1, 2])
0.25
>>> ratio(0.76, 0.8), ratio(0.5, 0.0)
(0.95, None)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from streams.console import Progress, format_table
from streams.settings import ConfigError, Settings, load_settings

ARI_TARGET = 0.8  # online segments against the true personas, scope "all"
RATIO_TARGET = 0.95  # online ARI / batch KMeans ARI, scope "all"
CHANNEL_MIN_CUSTOMERS = 200  # channels with fewer customers get no quality row
BATCH_RANDOM_STATE = 0  # scikit-learn KMeans seed (n_init=10 restarts from it)
STABILITY_AT = 0.9  # labels of the model after this share of the stream vs after all of it
CLUSTREAM_MAX_VECTORS = 12_000  # CluStream learns ~200 vectors/s here: about a minute at most
NOTE = (
    "The worker's pure path run in this process (decode_message -> group_by_profile -> apply_events -> "
    "assign_segments -> teaching sample -> learner), one event per message in event-time order; no broker, "
    "no Faust table, no Redis. `omniprofile demo` reports the ARI through the real worker."
)


# --- replay ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Message:
    """One input message after ``validate_events``: the profile key and its records."""

    key: str
    records: list[dict[str, Any]]


def decode_dataset(dataset: Any, settings: Settings) -> tuple[list[Message], int, float]:
    """Every valid event as its own message, validated and re-keyed as the worker does.

    Returns the messages, "now" (just after the last event) and the decoding time in seconds.
    The records go through JSON once more, as they do on the internal by-customer topic.
    """
    from models.events import Limits
    from models.ingest import decode_message, group_by_profile

    hash_key = settings.hash_key.get_secret_value().encode()
    raws = [(ge.source, orjson.dumps(ge.event)) for ge in dataset.events]
    # Event times are checked against "now"; here now is just after the dataset's last event.
    last = max((r["ts"] for src, raw in raws[-50:] for r in decode_message(src, raw, None, hash_key).records),
               default=0)
    now_ms = last + 1
    floor = datetime(settings.min_event_year, 1, 1, tzinfo=timezone.utc)
    limits = Limits(
        now_ms=now_ms, max_future_ms=settings.max_future_seconds * 1000, min_ts_ms=int(floor.timestamp() * 1000)
    )
    messages: list[Message] = []
    rejected = 0
    started = time.perf_counter()
    for source, raw in raws:
        decoded = decode_message(source, raw, limits, hash_key, settings.max_event_bytes)
        rejected += len(decoded.rejections)
        for key, records in group_by_profile(decoded.records).items():
            messages.append(Message(key, orjson.loads(orjson.dumps(records))))
    elapsed = time.perf_counter() - started
    if rejected:
        raise RuntimeError(f"{rejected} generated events were rejected; the generator and the validation disagree")
    now_ms = max(now_ms, max((r["ts"] for m in messages for r in m.records), default=0) + 1)
    return messages, now_ms, elapsed


class SnapshotLearner:
    """``streams.agents.Learner`` without Faust: the same :class:`models.segmentation.SegmentLearner`,
    its snapshots kept in a dict (as JSON, like the global table), timed.

    ``teaching`` keeps every vector learned, per scope, in order.
    """

    def __init__(self, settings: Settings) -> None:
        from models.segmentation import SegmentLearner, model_factory

        self.snapshots: dict[str, dict[str, Any]] = {}  # the global table
        self.core = SegmentLearner(
            model_factory(settings.segments, settings.segment_halflife, settings.segment_warmup),
            self.snapshots.get,
            settings.segment_snapshot_every,
        )
        self.teaching: dict[str, list[dict[str, float]]] = {}
        self.n_snapshots = 0
        self.seconds = 0.0

    @property
    def models(self) -> dict[str, Any]:
        return self.core.models

    def _share(self, scope: str, snapshot: dict[str, Any]) -> None:
        self.snapshots[scope] = orjson.loads(orjson.dumps(snapshot))  # as stored in the table
        self.n_snapshots += 1

    def learn(self, scope: str, x: dict[str, float]) -> None:
        t0 = time.perf_counter()
        snapshot = self.core.learn(scope, x)
        if snapshot is not None:
            self._share(scope, snapshot)
        self.seconds += time.perf_counter() - t0
        self.teaching.setdefault(scope, []).append(x)

    def seed_small_scopes(self) -> list[str]:
        """``Learner.seed_small_scopes``: seed every model still warming up, provisionally."""
        seeded = self.core.seed_small_scopes(self.snapshots)
        for scope, snapshot in seeded.items():
            self._share(scope, snapshot)
        return sorted(seeded)


@dataclass(slots=True)
class Replay:
    """What the segment replay leaves: profiles, models and where the time went (seconds)."""

    profiles: dict[str, dict]
    learner: SnapshotLearner
    cache: Any  # models.segmentation.ModelCache over learner.snapshots
    now_ms: int
    baseline: float = 0.0  # the profile step alone, on a table of its own
    apply: float = 0.0
    assign: float = 0.0
    teach: float = 0.0  # sampling and feature extraction; the learner's own time is in learner.seconds
    moves: int = 0
    sweep_moves: int = 0
    sweep_seconds: float = 0.0
    seeded_early: list[str] = field(default_factory=list)

    @property
    def segmentation(self) -> float:
        return self.assign + self.teach + self.learner.seconds


def replay_segments(
    messages: Sequence[Message], settings: Settings, now_ms: int, progress: Progress | None = None
) -> Replay:
    """The profile step plus segments, as ``update_profile`` + ``teach`` + ``Learner.learn`` do it.

    Each message is also folded by the profile step alone into a second table, right before
    the full path handles it: the baseline and the full path are timed on the same events,
    interleaved, so that load from other processes weighs on both alike.
    """
    from models.profile import apply_events
    from models.segmentation import assign_segments, feature_vectors, scopes_of, scoring_time, teaching_scopes

    from models.segmentation import ModelCache

    learner = SnapshotLearner(settings)
    run = Replay({}, learner, ModelCache(learner.snapshots.get), now_ms)
    profiles = run.profiles
    alone: dict[str, dict] = {}
    clock = time.perf_counter
    rate, min_events, dedup = settings.segment_learn_rate, settings.segment_min_events, settings.dedup_window
    for i, m in enumerate(messages):
        t = clock()
        only = apply_events(alone.get(m.key), m.key, m.records, dedup)
        if only.applied:
            alone[m.key] = only.state
        t0 = clock()
        run.baseline += t0 - t
        step = apply_events(profiles.get(m.key), m.key, m.records, dedup)
        t1 = clock()
        run.apply += t1 - t0
        if step.applied:
            state = step.state
            as_of = scoring_time(state, now_ms)
            scopes = scopes_of(state, {r["channel"] for r in m.records if r["source"] != "identify"})
            vectors = feature_vectors(state, scopes, as_of)
            run.moves += len(assign_segments(state, scopes, run.cache.models_for(scopes), as_of, vectors))
            profiles[m.key] = state
            t2 = clock()
            run.assign += t2 - t1
            # teach(): the worker sends these vectors to the learner's topic
            for scope in teaching_scopes(state, scopes, rate, min_events):
                if vectors[scope] is not None:
                    t3 = clock()
                    learner.learn(scope, vectors[scope])
                    run.teach -= clock() - t3  # the learner times itself
            run.teach += clock() - t2
        if progress is not None and i % 2000 == 0:
            progress.update(i)
    if progress is not None:
        progress.finish(len(messages))
    sweep(run)
    return run


def sweep(run: Replay) -> None:
    """The periodic sweep: models still warming up are seeded early, then ``rescore_profile``
    re-scores every scope of every profile against the last snapshots."""
    from models.profile import copy_state
    from models.segmentation import assign_segments, scopes_of, scoring_time

    started = time.perf_counter()
    run.seeded_early = run.learner.seed_small_scopes()
    for key, held in list(run.profiles.items()):
        state = copy_state(held)
        scopes = scopes_of(state)
        moves = assign_segments(state, scopes, run.cache.models_for(scopes), scoring_time(state, run.now_ms))
        if moves:
            state["version"] += 1
            run.profiles[key] = state
            run.sweep_moves += len(moves)
    run.sweep_seconds = time.perf_counter() - started


# --- quality ----------------------------------------------------------------------------------------


def ratio(online: float | None, batch: float | None) -> float | None:
    if online is None or not batch or batch <= 0:
        return None
    return round(online / batch, 4)


def share_changed(before: Sequence[Any], after: Sequence[Any]) -> float:
    """Share of positions whose label differs (labels compared as they are, not up to renaming)."""
    if not after:
        return 0.0
    return sum(a != b for a, b in zip(before, after)) / len(after)


def batch_kmeans(vectors: Sequence[Mapping[str, float]], features: Sequence[str], k: int) -> list[int]:
    """scikit-learn's batch KMeans on standardised vectors: the offline reference."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    x = np.array([[v[f] for f in features] for v in vectors], dtype=float)
    z = StandardScaler().fit_transform(x)
    km = KMeans(n_clusters=min(k, len(x)), n_init=10, random_state=BATCH_RANDOM_STATE)
    return [int(c) for c in km.fit_predict(z)]


@dataclass(slots=True)
class ScopeData:
    """The customers (with a known persona) of one scope: ids, personas, segments, final features."""

    scope: str
    customers: list[str]
    personas: list[str]
    segments: list[str | None]
    features: list[dict[str, float]]


def scope_data(run: Replay, truth: Mapping[str, str], scope: str) -> ScopeData:
    from models.features import extract_features
    from models.segmentation import scoring_time

    data = ScopeData(scope, [], [], [], [])
    for cid in sorted(truth):
        state = run.profiles.get(cid)
        if state is None or (scope != "all" and scope not in state["channels"]):
            continue
        x = extract_features(state, scope, scoring_time(state, run.now_ms))
        if x is None:
            continue
        data.customers.append(cid)
        data.personas.append(truth[cid])
        data.segments.append(state.get("segments", {}).get(scope))
        data.features.append(x)
    return data


def quality_row(data: ScopeData, k: int) -> tuple[dict[str, Any], list[int]]:
    """ARI of the online segments and of batch KMeans against the personas for one scope.

    Customers without a segment count as one more label (``-``). A channel whose customers
    all share one persona gets no ARI: against a single true class it is 0 or 1 by definition.
    """
    from sklearn.metrics import adjusted_rand_score

    from models.features import FEATURES

    online_labels = [s if s is not None else "-" for s in data.segments]
    batch_labels = batch_kmeans(data.features, tuple(FEATURES), k) if data.features else []
    comparable = len(set(data.personas)) >= 2
    online = round(float(adjusted_rand_score(data.personas, online_labels)), 4) if comparable else None
    batch = round(float(adjusted_rand_score(data.personas, batch_labels)), 4) if comparable else None
    row: dict[str, Any] = {
        "scope": data.scope,
        "customers": len(data.customers),
        "with_segment": sum(s is not None for s in data.segments),
        "personas": len(set(data.personas)),
        "online_ari": online,
        "batch_ari": batch,
        "ratio": ratio(online, batch),
    }
    if data.scope == "all":
        row["ari_target_met"] = online is not None and online >= ARI_TARGET
        row["ratio_target_met"] = row["ratio"] is not None and row["ratio"] >= RATIO_TARGET
    return row, batch_labels


# --- the algorithm comparison ------------------------------------------------------------------------


class Standardised:
    """A river clusterer behind river's online StandardScaler (learned on the same stream)."""

    def __init__(self, clusterer: Any) -> None:
        from river import preprocessing

        self.scaler = preprocessing.StandardScaler()
        self.clusterer = clusterer

    def learn_one(self, x: dict[str, float]) -> None:
        self.scaler.learn_one(x)
        self.clusterer.learn_one(self.scaler.transform_one(x))

    def predict_one(self, x: dict[str, float]) -> int:
        return self.clusterer.predict_one(self.scaler.transform_one(x))

    def n_clusters(self) -> int:
        """Clusters the model holds (DBSTREAM's macro clusters; the centres of the others)."""
        from river import cluster

        c = self.clusterer
        return c.n_clusters if isinstance(c, cluster.DBSTREAM) else len(c.centers)


@dataclass(frozen=True, slots=True)
class Algorithm:
    name: str
    setting: str
    build: Callable[[], Any]
    max_vectors: int | None = None  # learn only the first N vectors (too slow otherwise)


def river_kmeans(k: int, halflife: float, features: Sequence[str], seed: int = 42) -> Any:
    """river's KMeans with its random initial centres drawn in feature order.

    river draws a centre's coordinates lazily, in the iteration order of a set of feature
    names, which changes with the string hash seed (PYTHONHASHSEED); drawing them up front
    makes the row reproducible. The draws themselves are river's (Gaussian, seeded).
    """
    from river import cluster

    km = cluster.KMeans(n_clusters=k, halflife=halflife, seed=seed)
    for i in range(k):
        for f in features:
            _ = km.centers[i][f]
    return km


def algorithms(k: int, halflife: float, warmup: int, features: Sequence[str]) -> list[Algorithm]:
    """The clusterers compared on a teaching stream; ``k`` clusters where the algorithm asks.

    The river clusterers see the vectors through river's online StandardScaler; our
    :class:`models.segments.SegmentModel` standardises inside. Settings that are not the
    defaults were chosen on seed 7 (docs/segments.md), which favours them.
    """
    other = 0.05 if halflife != 0.05 else 0.01  # the step the default replaced, or the smaller one
    from river import cluster

    from models.segments import SegmentModel

    features = tuple(features)
    return [
        Algorithm(
            "SegmentModel (ours)",
            f"k-means++ (best of 8) on {warmup:,} buffered vectors, then river KMeans, halflife {halflife}",
            lambda: SegmentModel(n_segments=k, features=features, halflife=halflife, warmup=warmup),
        ),
        Algorithm(
            f"SegmentModel, halflife {other}",
            f"what-if: ours with another step (OMNIPROFILE_SEGMENT_HALFLIFE={other})",
            lambda: SegmentModel(n_segments=k, features=features, halflife=other, warmup=warmup),
        ),
        Algorithm(
            "river KMeans",
            f"random init (seed 42), halflife {halflife}",
            lambda: Standardised(river_kmeans(k, halflife, features)),
        ),
        Algorithm(
            "river KMeans",
            "random init (seed 42), halflife 0.5 (river's default)",
            lambda: Standardised(river_kmeans(k, 0.5, features)),
        ),
        Algorithm(
            "river STREAMKMeans",
            "chunk_size 500, halflife 0.5, seed 42 (random inits vary with PYTHONHASHSEED)",
            lambda: Standardised(cluster.STREAMKMeans(chunk_size=500, n_clusters=k, halflife=0.5, seed=42)),
        ),
        Algorithm(
            "river DBSTREAM",
            "defaults (clustering_threshold 1, fading_factor 0.01, cleanup_interval 2, minimum_weight 1)",
            lambda: Standardised(cluster.DBSTREAM()),
        ),
        Algorithm(
            "river DBSTREAM",
            "tuned: clustering_threshold 4, fading_factor 0.001, cleanup_interval 100, minimum_weight 5, "
            "intersection_factor 0.3",
            lambda: Standardised(
                cluster.DBSTREAM(
                    clustering_threshold=4.0,
                    fading_factor=0.001,
                    cleanup_interval=100,
                    minimum_weight=5.0,
                    intersection_factor=0.3,
                )
            ),
        ),
        Algorithm(
            "river CluStream",
            "100 micro-clusters, time_gap 500, macro KMeans halflife 0.5, seed 42 (varies with PYTHONHASHSEED)",
            lambda: Standardised(
                cluster.CluStream(n_macro_clusters=k, max_micro_clusters=100, time_gap=500, seed=42, halflife=0.5)
            ),
            max_vectors=CLUSTREAM_MAX_VECTORS,
        ),
    ]


def compare_algorithms(
    stream: Sequence[dict[str, float]],
    personas: Sequence[str],
    final: Sequence[dict[str, float]],
    candidates: Sequence[Algorithm],
    status: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Learn each candidate on ``stream``, then label the ``final`` vectors with it (and with its
    state after 90 % of the stream) and compare the labels with ``personas``.

    Labels are compared as they are for stability: a segment id must keep its meaning.
    """
    from sklearn.metrics import adjusted_rand_score

    rows = []
    clock = time.perf_counter
    for algo in candidates:
        status(f"{algo.name}: {algo.setting}")
        vectors = stream if algo.max_vectors is None else stream[: algo.max_vectors]
        model = algo.build()
        cut = int(len(vectors) * STABILITY_AT)
        at_cut = None
        learning = 0.0
        for i, x in enumerate(vectors):
            if i == cut:
                at_cut = copy.deepcopy(model)
            t0 = clock()
            model.learn_one(x)
            learning += clock() - t0
        if at_cut is None:
            at_cut = copy.deepcopy(model)
        t0 = clock()
        labels = [model.predict_one(x) for x in final]
        predicting = clock() - t0
        earlier = [at_cut.predict_one(x) for x in final]
        shown = ["-" if c is None else c for c in labels]
        rows.append(
            {
                "algorithm": algo.name,
                "setting": algo.setting,
                "vectors": len(vectors),
                "capped": len(vectors) < len(stream),
                "ari": round(float(adjusted_rand_score(list(personas), shown)), 4),
                "learn_vectors_per_s": round(len(vectors) / learning) if learning else None,
                "predict_us": round(1e6 * predicting / max(1, len(labels)), 1),
                "clusters_used": len(set(shown)),
                "clusters_reported": model.n_clusters() if isinstance(model, Standardised) else model.n_segments,
                "label_changes_90_to_100": round(share_changed(earlier, labels), 4),
            }
        )
    return rows


# --- the benchmark ----------------------------------------------------------------------------------------


def predict_cost(cache: Any, data: ScopeData) -> tuple[float, float] | None:
    """Microseconds per profile of scoring one feature vector, scope ``all``: ``predict_one``
    (what the profile agent calls) and, as the baseline, numpy's ``predict_many`` of one row."""
    model = cache.models_for(["all"]).get("all")
    if model is None or not model.ready or not data.features:
        return None
    clock = time.perf_counter
    t0 = clock()
    for x in data.features:
        model.predict_one(x)
    t1 = clock()
    for x in data.features:
        model.predict_many([x])
    t2 = clock()
    return 1e6 * (t1 - t0) / len(data.features), 1e6 * (t2 - t1) / len(data.features)


def run_segments_bench(
    customers: int = 3000,
    seed: int = 7,
    segments: int | None = None,
    with_algorithms: bool = False,
    status: Callable[[str], None] = lambda _: None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the whole benchmark; the result is JSON-ready (what ``--json`` prints)."""
    from models.synthetic import PERSONAS, generate

    k = segments if segments is not None else len(PERSONAS)
    settings = load_settings(segments=k)
    started = time.perf_counter()
    status(f"generating {customers:,} customers (seed {seed}) ...")
    dataset = generate(customers, seed=seed)
    truth = {c.customer_id: c.persona for c in dataset.customers}
    messages, now_ms, decode_seconds = decode_dataset(dataset, settings)
    n = len(messages)

    run = replay_segments(messages, settings, now_ms, None if quiet else Progress("replaying events", n))
    baseline = run.baseline
    status(f"swept {len(run.profiles):,} profiles in {run.sweep_seconds:.1f} s; scoring the results ...")

    everything = scope_data(run, truth, "all")
    predict = predict_cost(run.cache, everything)
    quality = []
    row, batch_labels = quality_row(everything, k)
    learner_model = run.learner.models.get("all")
    if learner_model is not None and learner_model.ready and row["online_ari"] is not None:
        # The learner's model itself, without the snapshot lag the sweep sees.
        from sklearn.metrics import adjusted_rand_score

        labels = learner_model.predict_many(everything.features)
        row["learner_ari"] = round(float(adjusted_rand_score(everything.personas, labels)), 4)
    quality.append(row)
    audience = Counter(ch for cid in truth if cid in run.profiles for ch in run.profiles[cid]["channels"])
    for channel in sorted(c for c, count in audience.items() if count >= CHANNEL_MIN_CUSTOMERS):
        quality.append(quality_row(scope_data(run, truth, channel), k)[0])

    full = run.apply + run.segmentation
    vectors = {scope: len(v) for scope, v in sorted(run.learner.teaching.items())}
    learned = sum(vectors.values())
    cost = {
        "messages": n,
        "profile_step_us_per_event": round(1e6 * baseline / n, 2),
        "with_segments_us_per_event": round(1e6 * full / n, 2),
        "ratio": round(full / baseline, 3) if baseline else None,
        "parts_us_per_event": {
            "apply_events": round(1e6 * run.apply / n, 2),
            "assign_segments": round(1e6 * run.assign / n, 2),
            "teaching_sample": round(1e6 * run.teach / n, 2),
            "learner": round(1e6 * run.learner.seconds / n, 2),
        },
        "decode_us_per_event": round(1e6 * decode_seconds / n, 2),
        "predict_us_per_profile": _round(predict[0], 2) if predict else None,
        "predict_many_one_row_us": _round(predict[1], 2) if predict else None,
        "learner_vectors_per_s": round(learned / run.learner.seconds) if run.learner.seconds else None,
        "vectors_learned": vectors,
        "snapshots": run.learner.n_snapshots,
        "segment_changes_during_replay": run.moves,
        "segment_changes_in_sweep": run.sweep_moves,
        "sweep_seconds": round(run.sweep_seconds, 3),
        "seeded_early_in_sweep": run.seeded_early,
    }
    result: dict[str, Any] = {
        "benchmark": "segments",
        "note": NOTE,
        "config": {
            "customers": customers,
            "seed": seed,
            "segments": k,
            "personas": len(PERSONAS),
            "events": len(dataset.events),
            "profiles": len(run.profiles),
            "now_ms": now_ms,
            "settings": {
                "segment_learn_rate": settings.segment_learn_rate,
                "segment_min_events": settings.segment_min_events,
                "segment_warmup": settings.segment_warmup,
                "segment_halflife": settings.segment_halflife,
                "segment_snapshot_every": settings.segment_snapshot_every,
                "dedup_window": settings.dedup_window,
            },
            "batch": {"scaler": "StandardScaler", "n_init": 10, "random_state": BATCH_RANDOM_STATE},
            "targets": {"ari": ARI_TARGET, "ratio": RATIO_TARGET},
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "python_hash_seed": os.environ.get("PYTHONHASHSEED", "random"),
        },
        "quality": quality,
        "cost": cost,
        "assignments": {
            "scope": "all",
            "customers": everything.customers,
            "personas": everything.personas,
            "online": everything.segments,
            "batch": batch_labels,
        },
        "models": {"all": run.learner.snapshots.get("all")},
        "algorithms": None,
    }
    if with_algorithms:
        status("comparing clusterers on the teaching stream of scope all ...")
        from models.features import FEATURES
        from models.segmentation import scope_warmup

        candidates = algorithms(k, settings.segment_halflife, scope_warmup("all", settings.segment_warmup, k), FEATURES)
        result["algorithms"] = compare_algorithms(
            run.learner.teaching.get("all", []), everything.personas, everything.features, candidates, status
        )
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def render(result: dict[str, Any]) -> str:
    """The readable report of :func:`run_segments_bench`'s result."""
    cfg, cost = result["config"], result["cost"]
    s = cfg["settings"]
    out = [
        f"omniprofile bench segments: {cfg['customers']:,} customers (seed {cfg['seed']}), {cfg['events']:,} events, "
        f"{cfg['profiles']:,} profiles, {cfg['segments']} segments per scope, {cfg['personas']} personas",
        f"settings: learn rate {s['segment_learn_rate']}, min events {s['segment_min_events']}, warmup "
        f"{s['segment_warmup']:,}, halflife {s['segment_halflife']}, snapshot every {s['segment_snapshot_every']}",
        result["note"],
        "",
    ]

    def verdict(met: bool | None) -> str:
        return "-" if met is None else "pass" if met else "FAIL"

    rows = [
        [
            q["scope"], q["customers"], q["with_segment"], q["personas"], _f3(q["online_ari"]), _f3(q["batch_ari"]),
            _f3(q["ratio"]), verdict(q.get("ari_target_met")), verdict(q.get("ratio_target_met")),
        ]
        for q in result["quality"]
    ]
    out.append(
        format_table(
            ["scope", "customers", "with segment", "personas", "online ARI", "batch KMeans ARI", "online/batch",
             f"ARI >= {ARI_TARGET}", f"ratio >= {RATIO_TARGET}"],
            rows,
            title="== segments against the true personas (adjusted Rand index; the targets are for scope all; "
            f"channels with >= {CHANNEL_MIN_CUSTOMERS} customers, no ARI where they all share one persona) ==",
        )
    )
    first = result["quality"][0]
    if first.get("learner_ari") is not None:
        out.append(
            f"the learner's own final model (no snapshot lag) scores {_f3(first['learner_ari'])} on scope all; "
            f"the sweep used the last snapshot ({_f3(first['online_ari'])})"
        )
    p = cost["parts_us_per_event"]
    out += [
        "",
        format_table(
            ["path", "µs/event"],
            [
                ["profile step alone (apply_events)", cost["profile_step_us_per_event"]],
                ["profile step + segments", cost["with_segments_us_per_event"]],
                ["  of which apply_events", p["apply_events"]],
                ["  of which assign_segments (incl. snapshot parsing)", p["assign_segments"]],
                ["  of which teaching sample (should_learn, extract_features)", p["teaching_sample"]],
                ["  of which learner (learn_one, snapshots)", p["learner"]],
            ],
            title=f"== cost, {cost['messages']:,} messages of one event, both paths interleaved in one process "
            f"(with segments / alone = {cost['ratio']:.2f}) ==",
        ),
        "",
        f"scoring (predict_one, scope all): {cost['predict_us_per_profile']:.1f} µs/profile "
        f"(numpy predict_many of one row: {cost['predict_many_one_row_us']:.1f}); learner: "
        f"{cost['learner_vectors_per_s']:,} vectors/s ("
        + ", ".join(f"{scope} {n:,}" for scope, n in cost["vectors_learned"].items())
        + f"), {cost['snapshots']:,} snapshots",
        f"segment changes: {cost['segment_changes_during_replay']:,} during the replay, "
        f"{cost['segment_changes_in_sweep']:,} in the final sweep ({cost['sweep_seconds']:.1f} s"
        + (f"; seeded early: {', '.join(cost['seeded_early_in_sweep'])}" if cost["seeded_early_in_sweep"] else "")
        + ")",
    ]
    if result["algorithms"]:
        out += [
            "",
            format_table(
                ["algorithm", "ARI", "learn vectors/s", "predict µs", "clusters used", "labels changed 90%->100%",
                 "setting"],
                [
                    [a["algorithm"], _f3(a["ari"]), a["learn_vectors_per_s"], a["predict_us"],
                     a["clusters_used"], f"{100 * a['label_changes_90_to_100']:.1f}%",
                     a["setting"] + (f" (capped at {a['vectors']:,} vectors)" if a["capped"] else "")]
                    for a in result["algorithms"]
                ],
                title=f"== clusterers on the teaching stream of scope all "
                f"({result['algorithms'][0]['vectors']:,} vectors; ARI of all customers' final features) ==",
            ),
        ]
    out += ["", f"took {result['seconds']:.0f} s"]
    return "\n".join(out)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _f3(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def cmd_bench_segments(args: argparse.Namespace) -> int:
    """Measure the online segments against the personas, batch KMeans and their cost."""
    if args.customers < 10:
        raise ConfigError(f"--customers must be at least 10, got {args.customers}")
    if args.segments is not None and not 2 <= args.segments <= 64:
        raise ConfigError(f"--segments must be within 2..64, got {args.segments}")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ConfigError("the benchmark needs scikit-learn: pip install -e '.[bench]'") from None

    def status(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = run_segments_bench(args.customers, args.seed, args.segments, args.algorithms, status)
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print(render(result))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: segments (in-process), throughput (embedded broker)")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")

    p = benches.add_parser(
        "segments",
        help="online segments vs true personas and batch KMeans, and their cost (in-process, no broker)",
    )
    p.add_argument("--customers", type=int, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--segments", type=int, default=None, help="segments per scope (default: the 6 personas)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document, nothing else")
    p.add_argument("--algorithms", action="store_true", help="also compare river clusterers on the teaching stream")
    p.set_defaults(func=cmd_bench_segments)

    from streams.throughput import add_commands as add_throughput

    add_throughput(benches)

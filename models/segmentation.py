"""Assigning segments to a profile, per scope: the pure step the profile agent calls.

``assign_segments(state, scopes, models, as_of_ms)`` scores the profile's feature vector
of each scope (``all`` and channels) with that scope's current model, writes the segment
into ``state["segments"]`` and returns the moves (:class:`SegmentMove`), from which the
caller emits ``SegmentChange`` records and updates the Redis segment sets.

Which vectors teach the models is decided here too (:func:`should_learn`): profiles with
at least ``min_events`` events (younger ones are mostly noise), sampled by a hash of the
customer and profile version so that the choice is the same on every replay.

Examples
--------
>>> from models.segments import SegmentModel
>>> from models.features import FEATURES
>>> state = {"channels": {}, "all": None, "segments": {}}
>>> assign_segments(state, ["all"], {}, as_of_ms=0)   # no model yet: nothing to assign
[]
>>> segment_id(3)
's3'
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from models.features import FEATURES, extract_features
from models.profile import State
from models.segments import SegmentModel

MAX_SEGMENT_HISTORY = 10


@dataclass(frozen=True, slots=True)
class SegmentMove:
    scope: str
    from_segment: str | None
    to_segment: str
    model_version: int


def segment_id(index: int) -> str:
    return f"s{index}"


def scopes_of(state: State, channels: Iterable[str] | None = None) -> list[str]:
    """``all`` plus the given channels (all the profile's channels when None), known ones only."""
    names = state["channels"] if channels is None else [c for c in channels if c in state["channels"]]
    return ["all", *sorted(set(names))]


def feature_vectors(state: State, scopes: Iterable[str], as_of_ms: int) -> dict[str, dict[str, float] | None]:
    """The feature vector of each scope, computed once for scoring and teaching alike."""
    return {scope: extract_features(state, scope, as_of_ms) for scope in scopes}


def assign_segments(
    state: State,
    scopes: Iterable[str],
    models: Mapping[str, SegmentModel],
    as_of_ms: int,
    vectors: Mapping[str, dict[str, float] | None] | None = None,
) -> list[SegmentMove]:
    """Score ``scopes`` and record the segments in ``state`` (in place); return the moves.

    ``vectors`` are the scopes' features at ``as_of_ms`` when the caller has them already.
    """
    segments = state.setdefault("segments", {})
    moves = []
    for scope in scopes:
        model = models.get(scope)
        if model is None or not model.ready:
            continue
        x = vectors[scope] if vectors is not None and scope in vectors else extract_features(state, scope, as_of_ms)
        if x is None:
            continue
        index = model.predict_one(x)
        if index is None:
            continue
        new = segment_id(index)
        old = segments.get(scope)
        if new != old:
            segments[scope] = new
            moves.append(SegmentMove(scope, old, new, model.n_learned))
    if moves:
        history = state.setdefault("segment_history", [])
        history.extend([as_of_ms, m.scope, m.from_segment, m.to_segment] for m in moves)
        del history[:-MAX_SEGMENT_HISTORY]
    return moves


def scope_min_events(scope: str, min_events: int) -> int:
    """Events a sub-profile needs before it teaches its scope's model.

    A channel sees a slice of a customer's behaviour, so channel scopes ask for half.

    >>> scope_min_events("all", 5), scope_min_events("ebay", 5)
    (5, 2)
    """
    return min_events if scope == "all" else max(1, min_events // 2)


def scope_warmup(scope: str, warmup: int, n_segments: int) -> int:
    """Vectors a scope's model buffers before seeding: a channel's audience is a fraction
    of the base, so it seeds on a tenth (at least four per segment).

    >>> scope_warmup("all", 1000, 8), scope_warmup("web", 1000, 8), scope_warmup("etsy", 100, 8)
    (1000, 100, 32)
    """
    return warmup if scope == "all" else max(4 * n_segments, warmup // 10)


def scoring_time(state: State, now_ms: int) -> int:
    """The reference time of the features: now, or the latest event if its clock runs ahead."""
    return max(now_ms, state["all"]["last_ts"] or 0)


def teaching_scopes(state: State, scopes: Iterable[str], rate: float, min_events: int) -> list[str]:
    """The scopes whose current vector of this profile version teaches its model (:func:`should_learn`)."""
    key = state["customer_id"]
    out = []
    for scope in scopes:
        block = state["all"] if scope == "all" else state["channels"][scope]
        if should_learn(f"{key}/{scope}", state["version"], block["events"], rate, scope_min_events(scope, min_events)):
            out.append(scope)
    return out


def should_learn(key: str, version: int, events: int, rate: float, min_events: int) -> bool:
    """Deterministic sample of the profile versions that teach the model.

    >>> should_learn("c-1", 7, events=2, rate=1.0, min_events=5)
    False
    >>> should_learn("c-1", 7, events=9, rate=1.0, min_events=5)
    True
    """
    if events < min_events or rate <= 0:
        return False
    return zlib.crc32(f"{key}:{version}".encode()) < rate * 0x1_0000_0000


# --- sharing models: one learner, many scorers -------------------------------------------------


def model_factory(n_segments: int, halflife: float, warmup: int) -> Callable[[str], SegmentModel]:
    """A new, empty model for a scope (its warmup from :func:`scope_warmup`)."""
    return lambda scope: SegmentModel(
        n_segments=n_segments, features=tuple(FEATURES), halflife=halflife,
        warmup=scope_warmup(scope, warmup, n_segments),
    )


class SegmentLearner:
    """The one learner: a model per scope, and when a snapshot of it is due for the scorers.

    A snapshot (:meth:`SegmentModel.to_json`) is due when a model is (re)seeded, and after
    ``snapshot_every`` more vectors. :meth:`learn` and :meth:`seed_small_scopes` return the
    snapshots to share; where they are kept (a global table, a dict) is the caller's business.
    ``stored`` gives the last shared snapshot of a scope, from which a restarted learner resumes.

    Learning is exactly-once over an at-least-once topic: the caller passes the *position* of
    every message (its offset on the one-partition learning topic) to :meth:`at`, and with each
    of its vectors to :meth:`learn`. A snapshot records the position of the last message its
    model learned from; the vectors of a message at or before it are a replay (a restart or a
    rebalance re-reads from the committed offset) and are skipped. A gap in the positions means another learner
    had the topic meanwhile: every model whose stored snapshot is further along is re-read
    from it, so a learner that gets the topic back never overwrites newer models with its
    stale copy. (Positions are offsets of that topic: recreate it only together with the
    model table.)

    >>> shared = {}
    >>> learner = SegmentLearner(model_factory(2, 0.01, 4), shared.get, snapshot_every=100)
    >>> for v in (1.0, 2.0, 50.0):
    ...     assert learner.learn("all", {"events": v}) is None
    >>> shared.update(learner.seed_small_scopes(["all"]))   # the sweep: seeded early
    >>> shared["all"]["provisional"]
    True
    >>> learner.learn("all", {"events": 51.0})["provisional"]   # 4 buffered: seeded for good
    False
    """

    def __init__(
        self,
        new_model: Callable[[str], SegmentModel],
        stored: Callable[[str], Mapping[str, Any] | None],
        snapshot_every: int,
    ) -> None:
        self.new_model = new_model
        self.stored = stored
        self.snapshot_every = snapshot_every
        self.models: dict[str, SegmentModel] = {}
        self.snapshot_at: dict[str, int] = {}
        self.positions: dict[str, int] = {}  # per scope: the last message its model learned from
        self.last_position: int | None = None  # of the last message this learner saw
        self.learning: set[str] = set()  # scopes the message at last_position has taught so far
        self.replays_skipped = 0

    def model(self, scope: str) -> SegmentModel:
        model = self.models.get(scope)
        if model is None:
            model = self._load(scope)
        return model

    def _load(self, scope: str) -> SegmentModel:
        snapshot = self.stored(scope)
        model = SegmentModel.from_json(snapshot) if snapshot is not None else self.new_model(scope)
        self.models[scope] = model
        self.snapshot_at[scope] = model.n_learned
        self.positions[scope] = snapshot.get("position", -1) if snapshot is not None else -1
        return model

    def at(self, position: int) -> None:
        """The next message is at ``position``; after a gap, re-read the models stored further along."""
        if self.last_position is not None and position != self.last_position + 1:
            for scope in list(self.models):
                snapshot = self.stored(scope)
                if snapshot is not None and snapshot.get("position", -1) > self.positions[scope]:
                    self._load(scope)
        self.last_position = position
        self.learning.clear()

    def learn(self, scope: str, x: Mapping[str, float], position: int | None = None) -> dict[str, Any] | None:
        """Learn one vector (from the message at ``position``, when known); the snapshot to
        share when one is due. A vector of a message the model has learned from is skipped."""
        model = self.model(scope)
        if position is not None:
            # A message holds many vectors, several of one scope: the first one decides.
            if scope not in self.learning and position <= self.positions[scope]:
                self.replays_skipped += 1
                return None
            self.learning.add(scope)
            self.positions[scope] = position
        version = model.version
        model.learn_one(x)
        if model.n_learned - self.snapshot_at[scope] >= self.snapshot_every or model.version != version:
            return self._snapshot(scope)
        return None

    def seed_small_scopes(self, scopes: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
        """Seed, provisionally, every model still warming up (``scopes`` adds the ones only
        stored so far); the snapshots to share."""
        out = {}
        for scope in sorted(set(self.models) | set(scopes)):
            if self.model(scope).seed_early():
                out[scope] = self._snapshot(scope)
        return out

    def _snapshot(self, scope: str) -> dict[str, Any]:
        model = self.models[scope]
        self.snapshot_at[scope] = model.n_learned
        return {**model.to_json(), "position": self.positions[scope]}


class ModelCache:
    """The scorers' side: shared snapshots parsed once each.

    A snapshot is known by ``n_learned`` and ``version``: an early seeding changes the
    centroids (and the version) but not the number of vectors learned.
    """

    def __init__(self, lookup: Callable[[str], Mapping[str, Any] | None]) -> None:
        self.lookup = lookup
        self._held: dict[str, tuple[tuple[int, int], SegmentModel]] = {}

    def models_for(self, scopes: Iterable[str]) -> dict[str, SegmentModel]:
        out = {}
        for scope in scopes:
            snapshot = self.lookup(scope)
            if snapshot is None:
                continue
            stamp = (snapshot["n_learned"], snapshot["version"])
            held = self._held.get(scope)
            if held is None or held[0] != stamp:
                held = (stamp, SegmentModel.from_json(snapshot))
                self._held[scope] = held
            out[scope] = held[1]
        return out

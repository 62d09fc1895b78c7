"""The online segment model: river's KMeans on online-standardised features.

One :class:`SegmentModel` per scope (``all`` and each channel). It learns one feature
vector at a time (``learn_one``) and assigns a segment (``predict_one`` /
``predict_many``, vectorised over the centroids with numpy). Its whole learned state is
a JSON document (:meth:`to_json` / :meth:`from_json`, no pickle), so one learner can
share it with every worker and a restart resumes it.

Why KMeans: river's KMeans keeps cluster indices stable while centroids move, so a
segment id means the same thing tomorrow (DBSTREAM and DenStream renumber clusters);
it learns at tens of thousands of vectors per second on one core, and it scores by
distance to a handful of centroids, which numpy does for many customers at once.
``omniprofile bench segments`` measures the choice (docs/segments.md).

Random initial centroids leave some clusters empty and split others, so the model
first buffers ``warmup`` vectors and seeds the centroids with k-means++ on them
(deterministic for a seed); from then on river's online update moves each centroid by
``halflife`` of the way to the vectors it wins.

The standardisation keeps learning, but the centroids live in one fixed standardised
space, the *anchor* (the scaler's means and deviations when the anchor was set). Every
``REANCHOR_EVERY`` vectors the centroids are re-expressed in the scaler's current space,
so they stay where they are in raw feature units while the distance follows the
population. Without the anchor, a warm-up that saw few of one behaviour left that
behaviour's centroid stranded far out once the deviations grew, and one segment won
every customer.

A small audience (a niche channel) may never fill the buffer. :meth:`seed_early` seeds
such a model *provisionally* from what it has: it assigns segments at once, keeps
buffering, and is seeded again, for good, when the buffer is full (``version`` counts
the seedings).

Examples
--------
>>> import random
>>> rng = random.Random(0)
>>> model = SegmentModel(n_segments=2, features=("a", "b"), warmup=20, seed=1)
>>> for _ in range(200):
...     c = rng.choice([0.0, 10.0])
...     model.learn_one({"a": c + rng.random(), "b": c + rng.random()})
>>> model.predict_one({"a": 0.5, "b": 0.5}) != model.predict_one({"a": 10.5, "b": 10.5})
True
>>> restored = SegmentModel.from_json(model.to_json())
>>> restored.predict_one({"a": 10.2, "b": 9.9}) == model.predict_one({"a": 10.2, "b": 9.9})
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from river import cluster

# river's KMeans is the clustering; the standardisation in front of it is the few lines of
# RunningMoments below rather than river.preprocessing.StandardScaler, whose package import
# (tree, proba, feature_extraction) took 1.1 s of every worker's and command's start.

SNAPSHOT_FORMAT = 2  # 2 adds the anchor; format 1 snapshots still load
SEEDING_TRIES = 8
LLOYD_STEPS = 10
REANCHOR_EVERY = 32  # vectors learned between re-expressions of the centroids


def _kmeans_plus_plus(z: np.ndarray, k: int, rng: random.Random) -> tuple[np.ndarray, float]:
    """k-means++ seeds on ``z`` polished by a few Lloyd steps; (centers, inertia)."""
    chosen = [z[rng.randrange(len(z))]]
    for _ in range(1, k):
        # Each next seed with probability proportional to its squared distance to the chosen ones.
        d2 = np.min(((z[:, None, :] - np.asarray(chosen)[None, :, :]) ** 2).sum(axis=2), axis=1)
        total = float(d2.sum())
        if total <= 0:
            chosen.append(z[rng.randrange(len(z))])
            continue
        pick = int(np.searchsorted(np.cumsum(d2), rng.random() * total, side="left"))
        chosen.append(z[min(pick, len(z) - 1)])
    centers = np.asarray(chosen, dtype=float)
    for _ in range(LLOYD_STEPS):
        labels = np.argmin(((z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2), axis=1)
        for j in range(k):
            members = z[labels == j]
            if len(members):
                centers[j] = members.mean(axis=0)
    d2 = ((z[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    return centers, float(d2.min(axis=1).sum())


class NearestKMeans(cluster.KMeans):
    """river's KMeans, with its nearest-centre search on plain float lists.

    river's ``predict_one`` sums ``|c - x| ** p`` in a generator over the union of the two
    dicts' keys for every centre, and was most of the learner's time (``scripts/pure_path.py``:
    the learner went from 64-79 to 39-46 µs per event with this class and the standardisation on
    lists in :meth:`SegmentModel.learn_one`). For ``p == 2`` the nearest centre is the one at the
    least Euclidean distance, which ``math.dist`` finds on lists in C; the first one wins a tie, as
    in river's ``min``. river's own ``learn_predict_one`` still moves the centre. Other ``p`` use
    river's search.

    >>> km = NearestKMeans(n_clusters=2, seed=1)
    >>> km.centers[0], km.centers[1] = {"a": 0.0, "b": 0.0}, {"a": 5.0, "b": 5.0}
    >>> km.predict_one({"a": 4.0, "b": 4.5}), km.predict_one({"a": 1.0, "b": 0.5})
    (1, 0)
    >>> km.learn_one({"a": 1.0, "b": 1.0}); km.centers[0]["a"] > 0.0
    True
    """

    def predict_one(self, x: Mapping[str, float]) -> int:
        if self.p != 2:
            return super().predict_one(x)
        keys = list(x)
        values = [x[k] for k in keys]
        best, best_distance = None, math.inf
        for c, center in self.centers.items():
            if len(center) != len(keys):  # a centre not seeded on these features: river's own search
                return super().predict_one(x)
            try:
                distance = math.dist([center[k] for k in keys], values)
            except KeyError:
                return super().predict_one(x)
            if distance < best_distance:
                best, best_distance = c, distance
        if best is None:  # every distance NaN (a NaN in x): river's search picks the first centre
            return super().predict_one(x)
        return best


class RunningMoments:
    """Per-feature count, mean and population variance, one vector at a time (Welford's update,
    the same arithmetic as river's StandardScaler without a window, so snapshots carry over).

    >>> m = RunningMoments()
    >>> for v in (2.0, 4.0, 9.0):
    ...     m.learn_one({"a": v})
    >>> m.counts["a"], m.means["a"], round(m.vars["a"], 6)
    (3, 5.0, 8.666667)
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.means: dict[str, float] = {}
        self.vars: dict[str, float] = {}

    def learn_one(self, x: Mapping[str, float]) -> None:
        counts, means, vars_ = self.counts, self.means, self.vars
        for f, value in x.items():
            n = counts.get(f, 0) + 1
            mean = means.get(f, 0.0)
            var = vars_.get(f, 0.0)
            new_mean = mean + (value - mean) / n
            counts[f] = n
            means[f] = new_mean
            vars_[f] = var + ((value - mean) * (value - new_mean) - var) / n


class SegmentModel:
    """KMeans segments over standardised features, JSON-snapshottable.

    Parameters
    ----------
    n_segments
        Number of segments (KMeans clusters).
    features
        Feature names, in a fixed order (the columns of the centroid matrix).
    halflife
        River KMeans step: how far a centroid moves towards a vector it wins.
    warmup
        Vectors buffered before the centroids are seeded (k-means++ on the buffer).
    seed
        Seed of the centroid seeding; the same seed and stream give the same model.
    """

    def __init__(
        self,
        n_segments: int = 8,
        features: Sequence[str] = (),
        halflife: float = 0.01,
        warmup: int = 500,
        seed: int = 42,
    ) -> None:
        if not features:
            raise ValueError("a segment model needs at least one feature")
        self.n_segments = n_segments
        self.features = tuple(features)
        self.halflife = halflife
        self.warmup = warmup
        self.seed = seed
        self.scaler = RunningMoments()
        self.kmeans = NearestKMeans(n_clusters=n_segments, halflife=halflife, seed=seed)
        self.buffer: list[list[float]] = []
        self.n_learned = 0
        self.version = 0  # raised whenever the centroids are (re)seeded from the buffer
        self._seeded = False
        self._provisional = False
        self._matrix: np.ndarray | None = None
        self._scoring: tuple[list[list[float]], list[float], list[float]] | None = None  # see predict_one
        self._anchor: tuple[np.ndarray, np.ndarray] | None = None  # (means, stds) of the centroids' space
        self._anchored_at = 0  # n_learned when the anchor was set
        self._anchor_cache: tuple[tuple[np.ndarray, np.ndarray], list[float], list[float]] | None = None

    # --- learning ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the centroids are seeded and the model assigns segments."""
        return self._seeded

    @property
    def provisional(self) -> bool:
        """True while the centroids come from an early seeding and the buffer still fills."""
        return self._provisional

    def learn_one(self, x: Mapping[str, float]) -> None:
        values = [float(x.get(f, 0.0)) for f in self.features]
        self.scaler.learn_one(dict(zip(self.features, values)))
        self.n_learned += 1
        if not self._seeded or self._provisional:
            self.buffer.append(values)
            if len(self.buffer) >= self.warmup:
                self._seed_centroids()
                self.buffer = []
                self._provisional = False
            return
        if self.n_learned - self._anchored_at >= REANCHOR_EVERY:
            self._reanchor()
        assert self._anchor is not None
        means, stds = self._anchor_lists()
        # The same float arithmetic as numpy's on the anchor arrays, without its per-call cost.
        z = [(v - m) / s for v, m, s in zip(values, means, stds)]
        self.kmeans.learn_one(dict(zip(self.features, z)))
        self._centroids_moved()

    def _anchor_lists(self) -> tuple[list[float], list[float]]:
        """The anchor's means and deviations as lists, cached while the anchor is the same."""
        assert self._anchor is not None
        cached = self._anchor_cache
        if cached is None or cached[0] is not self._anchor:
            cached = self._anchor_cache = (self._anchor, self._anchor[0].tolist(), self._anchor[1].tolist())
        return cached[1], cached[2]

    def seed_early(self) -> bool:
        """Seed provisionally from the vectors buffered so far; False if there is nothing to do.

        >>> model = SegmentModel(n_segments=3, features=("a",), warmup=100)
        >>> for v in (1.0, 2.0, 50.0, 51.0):
        ...     model.learn_one({"a": v})
        >>> model.ready, model.seed_early(), model.ready, model.provisional
        (False, True, True, True)
        >>> model.predict_one({"a": 1.5}) != model.predict_one({"a": 50.5})
        True
        """
        if self._seeded or not self.buffer:
            return False
        self._seed_centroids()
        self._provisional = True
        return True

    def _seed_centroids(self) -> None:
        raw = np.asarray(self.buffer, dtype=float)
        self._anchor = (self._means(), self._stds())
        self._anchored_at = self.n_learned
        z = (raw - self._anchor[0]) / self._anchor[1]
        rng = random.Random(self.seed)
        best, best_inertia = None, float("inf")
        for _ in range(SEEDING_TRIES):  # like n_init in batch KMeans: keep the tightest seeding
            centers, inertia = _kmeans_plus_plus(z, self.n_segments, rng)
            if inertia < best_inertia:
                best, best_inertia = centers, inertia
        assert best is not None
        for k in range(self.n_segments):
            self.kmeans.centers[k] = dict(zip(self.features, map(float, best[k])))
        self._seeded = True
        self.version += 1
        self._centroids_moved()

    def _reanchor(self) -> None:
        """Re-express the centroids in the scaler's current standardised space (same raw position)."""
        assert self._anchor is not None
        old_means, old_stds = self._anchor
        raw = self.centroids() * old_stds + old_means
        means, stds = self._means(), self._stds()
        centers = (raw - means) / stds
        for k in range(self.n_segments):
            self.kmeans.centers[k] = dict(zip(self.features, centers[k].tolist()))
        self._anchor = (means, stds)
        self._anchored_at = self.n_learned
        self._centroids_moved()

    def _centroids_moved(self) -> None:
        """Drop the caches derived from the centroids (``centroids()`` and ``predict_one``'s)."""
        self._matrix = None
        self._scoring = None

    # --- scoring -----------------------------------------------------------------------------

    def _means(self) -> np.ndarray:
        return np.array([self.scaler.means.get(f, 0.0) for f in self.features])

    def _stds(self) -> np.ndarray:
        std = np.sqrt(np.array([self.scaler.vars.get(f, 0.0) for f in self.features]))
        return np.where(std > 0, std, 1.0)

    def centroids(self) -> np.ndarray:
        """The centroids in standardised feature space, one row per segment."""
        if self._matrix is None:
            self._matrix = np.array(
                [[self.kmeans.centers[k].get(f, 0.0) for f in self.features] for k in range(self.n_segments)]
            )
        return self._matrix

    def predict_many(self, rows: Sequence[Mapping[str, float]]) -> list[int | None]:
        """The segment of each feature vector (None for all while the model warms up)."""
        if not self._seeded:
            return [None] * len(rows)
        x = np.array([[float(r.get(f, 0.0)) for f in self.features] for r in rows])
        assert self._anchor is not None
        means, stds = self._anchor
        z = (x - means) / stds
        d2 = ((z[:, None, :] - self.centroids()[None, :, :]) ** 2).sum(axis=2)
        return [int(k) for k in np.argmin(d2, axis=1)]

    def predict_one(self, x: Mapping[str, float]) -> int | None:
        """The segment of one feature vector: the nearest centroid, the first on a tie.

        The profile agent scores one vector at a time, where numpy's per-call overhead on a
        1 x k x features array costs more than the arithmetic: ``math.dist`` on plain floats
        here (``omniprofile bench segments`` prints both costs). Its distances are rounded
        differently from :meth:`predict_many`'s, so the two can differ only for a vector
        equidistant, to the last bits, from two centroids.
        """
        if not self._seeded:
            return None
        if self._scoring is None:
            assert self._anchor is not None
            self._scoring = (self.centroids().tolist(), *self._anchor_lists())
        rows, means_, stds_ = self._scoring
        z = [(float(x.get(f, 0.0)) - m) / s for f, m, s in zip(self.features, means_, stds_)]
        distances = [math.dist(z, row) for row in rows]
        return distances.index(min(distances))

    # --- snapshots ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole learned state as JSON-ready data."""
        return {
            "format": SNAPSHOT_FORMAT,
            "n_segments": self.n_segments,
            "features": list(self.features),
            "halflife": self.halflife,
            "warmup": self.warmup,
            "seed": self.seed,
            "n_learned": self.n_learned,
            "version": self.version,
            "seeded": self._seeded,
            "provisional": self._provisional,
            "buffer": self.buffer,
            "scaler": {
                f: [self.scaler.counts.get(f, 0), self.scaler.means.get(f, 0.0), self.scaler.vars.get(f, 0.0)]
                for f in self.features
            },
            "centers": [[self.kmeans.centers[k].get(f, 0.0) for f in self.features] for k in range(self.n_segments)]
            if self._seeded
            else [],
            "anchor": {"means": self._anchor[0].tolist(), "stds": self._anchor[1].tolist(), "at": self._anchored_at}
            if self._anchor is not None
            else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SegmentModel:
        if data.get("format") not in (1, SNAPSHOT_FORMAT):
            raise ValueError(f"unknown segment model snapshot format {data.get('format')!r}")
        model = cls(
            n_segments=data["n_segments"],
            features=data["features"],
            halflife=data["halflife"],
            warmup=data["warmup"],
            seed=data["seed"],
        )
        model.n_learned = data["n_learned"]
        model.version = data["version"]
        model.buffer = [list(row) for row in data["buffer"]]
        for f, (count, mean, var) in data["scaler"].items():
            model.scaler.counts[f] = count
            model.scaler.means[f] = mean
            model.scaler.vars[f] = var
        if data["seeded"]:
            model._seeded = True
            model._provisional = bool(data.get("provisional", False))
            for k, row in enumerate(data["centers"]):
                model.kmeans.centers[k] = dict(zip(model.features, row))
            anchor = data.get("anchor")
            if anchor is not None:
                model._anchor = (np.asarray(anchor["means"], dtype=float), np.asarray(anchor["stds"], dtype=float))
                model._anchored_at = anchor["at"]
            else:  # format 1: the centroids were in the scaler's space of the moment
                model._anchor = (model._means(), model._stds())
                model._anchored_at = model.n_learned
        return model

"""The segment model on synthetic blobs whose truth the test knows."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from models.segments import RunningMoments, SegmentModel

FEATURES = ("a", "b", "c")
CENTRES = [(0.0, 0.0, 0.0), (8.0, 0.0, 0.0), (0.0, 8.0, 0.0), (0.0, 0.0, 8.0)]


def blobs(n: int, seed: int) -> list[tuple[int, dict[str, float]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(len(CENTRES))
        out.append((label, {f: c + rng.gauss(0, 1) for f, c in zip(FEATURES, CENTRES[label])}))
    return out


def agreement(truth: list[int], pred: list[int]) -> float:
    """Share of pairs on which truth and prediction agree (same / different cluster), computed directly."""
    t, p = np.array(truth), np.array(pred)
    same_t = t[:, None] == t[None, :]
    same_p = p[:, None] == p[None, :]
    return float((same_t == same_p).mean())


def test_running_moments_equal_numpy_and_rivers_scaler():
    from river.preprocessing import StandardScaler

    rng = random.Random(9)
    rows = [{"a": rng.gauss(5, 3), "b": rng.expovariate(0.1)} for _ in range(2000)]
    ours, rivers = RunningMoments(), StandardScaler()
    for row in rows:
        ours.learn_one(row)
        rivers.learn_one(row)
    for f in ("a", "b"):
        column = np.array([row[f] for row in rows])
        assert ours.counts[f] == len(column)
        assert ours.means[f] == pytest.approx(column.mean(), rel=1e-12)
        assert ours.vars[f] == pytest.approx(column.var(), rel=1e-9)  # population variance, as river's
        # the same arithmetic as the river scaler the snapshots were written with
        assert (ours.counts[f], ours.means[f], ours.vars[f]) == (rivers.counts[f], rivers.means[f], rivers.vars[f])


def test_finds_well_separated_segments():
    model = SegmentModel(n_segments=4, features=FEATURES, warmup=200, seed=3)
    for _, x in blobs(3000, 1):
        model.learn_one(x)
    test = blobs(500, 2)
    pred = model.predict_many([x for _, x in test])
    assert agreement([t for t, _ in test], pred) > 0.98


def test_assigns_nothing_while_warming_up():
    model = SegmentModel(n_segments=4, features=FEATURES, warmup=100)
    for _, x in blobs(99, 1):
        model.learn_one(x)
    assert not model.ready and model.predict_one({"a": 1.0}) is None
    model.learn_one({"a": 1.0})
    assert model.ready and model.predict_one({"a": 1.0}) in range(4)


def test_snapshot_is_json_and_restores_the_same_model():
    model = SegmentModel(n_segments=4, features=FEATURES, warmup=200, seed=3)
    stream = blobs(1500, 4)
    for _, x in stream[:1000]:
        model.learn_one(x)
    restored = SegmentModel.from_json(json.loads(json.dumps(model.to_json())))
    probe = [x for _, x in blobs(300, 5)]
    assert restored.predict_many(probe) == model.predict_many(probe)
    # Learning goes on identically from the restored state.
    for _, x in stream[1000:]:
        model.learn_one(x)
        restored.learn_one(x)
    assert restored.predict_many(probe) == model.predict_many(probe)
    assert restored.to_json() == model.to_json()


def test_a_snapshot_taken_while_warming_up_keeps_the_buffer():
    model = SegmentModel(n_segments=4, features=FEATURES, warmup=200, seed=3)
    stream = blobs(400, 6)
    for _, x in stream[:150]:
        model.learn_one(x)
    restored = SegmentModel.from_json(model.to_json())
    for _, x in stream[150:]:
        model.learn_one(x)
        restored.learn_one(x)
    assert restored.to_json() == model.to_json()


def test_segment_ids_stay_put_while_centroids_drift():
    """Ids mean the same cluster after more learning: KMeans moves centroids, never renumbers."""
    model = SegmentModel(n_segments=4, features=FEATURES, warmup=200, seed=3)
    for _, x in blobs(2000, 7):
        model.learn_one(x)
    anchors = [dict(zip(FEATURES, c)) for c in CENTRES]
    before = model.predict_many(anchors)
    rng = random.Random(8)
    for _ in range(2000):  # every blob shifts by +1 on each axis
        label = rng.randrange(len(CENTRES))
        model.learn_one({f: c + 1 + rng.gauss(0, 1) for f, c in zip(FEATURES, CENTRES[label])})
    assert model.predict_many(anchors) == before
    assert len(set(before)) == 4


def test_rejects_unknown_snapshot_format():
    with pytest.raises(ValueError, match="snapshot format"):
        SegmentModel.from_json({"format": 99})


def test_a_small_audience_is_seeded_early_then_for_good_when_the_buffer_fills():
    model = SegmentModel(n_segments=4, features=FEATURES, warmup=400, seed=3)
    assert not model.seed_early()  # nothing buffered: nothing to seed
    data = blobs(500, 4)
    for _, x in data[:40]:
        model.learn_one(x)
    assert model.seed_early() and model.ready and model.provisional and model.version == 1
    assert not model.seed_early()  # already seeded
    early = model.predict_many([x for _, x in data[400:]])
    assert agreement([t for t, _ in data[400:]], early) > 0.9
    # The provisional model keeps buffering and survives a snapshot as it is.
    restored = SegmentModel.from_json(json.loads(json.dumps(model.to_json())))
    assert restored.provisional and len(restored.buffer) == 40
    for _, x in data[40:400]:
        restored.learn_one(x)
    assert restored.ready and not restored.provisional and restored.version == 2 and restored.buffer == []
    final = restored.predict_many([x for _, x in data[400:]])
    assert agreement([t for t, _ in data[400:]], final) > 0.98


def test_fewer_distinct_vectors_than_segments_still_seed():
    model = SegmentModel(n_segments=8, features=FEATURES, warmup=100)
    for x in ({"a": 1.0, "b": 0.0, "c": 0.0}, {"a": 1.0, "b": 0.0, "c": 0.0}, {"a": 9.0, "b": 0.0, "c": 0.0}):
        model.learn_one(x)
    assert model.seed_early()
    assert model.predict_one({"a": 1.2, "b": 0, "c": 0}) != model.predict_one({"a": 8.8, "b": 0, "c": 0})


def behaviour(kind: int, rng: random.Random) -> dict[str, float]:
    """One-hot channel shares (web, app, email) with a little noise, like the profile features."""
    return {f: (1.0 if i == kind else 0.0) + rng.gauss(0, 0.05) for i, f in enumerate(FEATURES)}


@pytest.mark.parametrize("seed", range(5))
def test_a_behaviour_rare_in_the_warmup_keeps_its_own_segment(seed):
    # The warm-up sees 57 of one behaviour and 3 of the others; then the others come in
    # numbers. The deviations of their features grow several times over after the seeding:
    # the centroids must stay with their behaviour, not be stranded by the re-scaling
    # (before the anchor, one segment won every customer; found by the drift test).
    rng = random.Random(seed)
    model = SegmentModel(n_segments=3, features=FEATURES, warmup=60, seed=seed)
    warmup = [0] * 57 + [1, 1, 2]
    rng.shuffle(warmup)
    for kind in warmup:
        model.learn_one(behaviour(kind, rng))
    assert model.ready
    for _ in range(300):
        model.learn_one(behaviour(rng.randrange(3), rng))
    truth = [rng.randrange(3) for _ in range(300)]
    pred = model.predict_many([behaviour(t, rng) for t in truth])
    assert agreement(truth, pred) == 1.0


def test_the_anchor_survives_a_snapshot_and_old_snapshots_still_load():
    rng = random.Random(7)
    model = SegmentModel(n_segments=3, features=FEATURES, warmup=30, seed=1)
    for _ in range(100):
        model.learn_one(behaviour(rng.randrange(3), rng))
    restored = SegmentModel.from_json(json.loads(json.dumps(model.to_json())))
    for _ in range(50):  # both learn on: the re-anchoring happens at the same vectors
        x = behaviour(rng.randrange(3), rng)
        model.learn_one(x)
        restored.learn_one(x)
    assert restored.to_json() == model.to_json()
    old = model.to_json()
    old["format"], old["anchor"] = 1, None  # a format-1 snapshot: centroids in the scaler's space of the moment
    legacy = SegmentModel.from_json(old)
    probes = [behaviour(k, rng) for k in (0, 1, 2)]
    assert len(set(legacy.predict_many(probes))) == 3


def test_predict_one_is_the_nearest_centroid_in_the_anchor_space_while_the_model_learns():
    # Recomputed from the snapshot alone: standardise by the anchor, nearest centre, first on a tie.
    model = SegmentModel(n_segments=4, features=FEATURES, warmup=200, seed=3)
    stream = blobs(2000, 6)
    probe = [x for _, x in blobs(200, 7)] + [{"a": 4.0}, {}, {"a": 1e6, "b": -1e6, "c": 0.0}]
    checked = 0
    for i, (_, x) in enumerate(stream):
        model.learn_one(x)
        if i < 200 or i % 97:  # every 97th vector after seeding: across re-anchorings
            continue
        snap = model.to_json()
        means, stds = np.array(snap["anchor"]["means"]), np.array(snap["anchor"]["stds"])
        centres = np.array(snap["centers"])
        for p in probe:
            z = (np.array([p.get(f, 0.0) for f in FEATURES]) - means) / stds
            d2 = [sum((zi - ci) ** 2 for zi, ci in zip(z, row)) for row in centres]
            assert model.predict_one(p) == d2.index(min(d2))
            checked += 1
    assert checked == 18 * len(probe)
    assert model.predict_many(probe) == [model.predict_one(p) for p in probe]


def test_nearest_kmeans_learns_what_rivers_kmeans_learns():
    # The faster nearest-centre search must not change a single assignment nor a centre.
    from river import cluster

    from models.segments import NearestKMeans

    ours, rivers = NearestKMeans(n_clusters=4, halflife=0.05, seed=5), cluster.KMeans(n_clusters=4, halflife=0.05, seed=5)
    rng = random.Random(9)
    for model in (ours, rivers):  # seeded centres, as SegmentModel sets them
        for k, centre in enumerate(CENTRES):
            model.centers[k] = dict(zip(FEATURES, centre))
    for _, x in blobs(3000, 8):
        x = {f: v + rng.choice((0.0, 4.0)) for f, v in x.items()}  # vectors between blobs: close calls
        assert ours.learn_predict_one(x) == rivers.learn_predict_one(x)
    for k in range(4):
        assert ours.centers[k] == pytest.approx(rivers.centers[k], rel=1e-12, abs=1e-12)
    tie = {"a": 4.0, "b": 0.0, "c": 0.0}  # equidistant from centres 0 and 1 before learning: the first wins
    fresh = NearestKMeans(n_clusters=2, seed=1)
    fresh.centers[0], fresh.centers[1] = {"a": 0.0, "b": 0.0, "c": 0.0}, {"a": 8.0, "b": 0.0, "c": 0.0}
    assert fresh.predict_one(tie) == 0
    unseeded = NearestKMeans(n_clusters=3, seed=2)  # river's random defaultdict centres: river's own search
    assert unseeded.predict_one({"a": 1.0}) == cluster.KMeans(n_clusters=3, seed=2).predict_one({"a": 1.0})


def test_nearest_kmeans_with_a_nan_in_the_vector_answers_as_river():
    from river import cluster

    from models.segments import NearestKMeans

    ours, rivers = NearestKMeans(n_clusters=2, seed=1), cluster.KMeans(n_clusters=2, seed=1)
    for model in (ours, rivers):
        model.centers[0], model.centers[1] = {"a": 0.0, "b": 0.0}, {"a": 5.0, "b": 5.0}
    x = {"a": float("nan"), "b": 4.0}
    assert ours.predict_one(x) == rivers.predict_one(x) == 0

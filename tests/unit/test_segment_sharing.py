"""How the learner shares segment model snapshots with the scorers (streams.agents), without
Faust: the global table is a plain dict, the settings a namespace."""

from __future__ import annotations

from types import SimpleNamespace

from models.segments import SegmentModel
from streams.agents import Learner, ModelCache


def wiring(table: dict, **settings) -> SimpleNamespace:
    defaults = {"segments": 2, "segment_halflife": 0.05, "segment_warmup": 10, "segment_snapshot_every": 4}
    return SimpleNamespace(segment_models=table, settings=SimpleNamespace(**{**defaults, **settings}))


def vector(value: float) -> dict[str, float]:
    return {"events": value, "orders": value / 2}


def test_the_cache_follows_an_early_seeding_with_the_same_number_of_vectors():
    """An early seeding changes the centroids but not n_learned: the scorers must still see it."""
    model = SegmentModel(n_segments=2, features=("a",), warmup=10)
    for v in (1.0, 2.0, 50.0, 51.0):
        model.learn_one({"a": v})
    table = {b"etsy": model.to_json()}  # a snapshot taken while warming up (due every 4 vectors)
    cache = ModelCache(wiring(table))
    assert not cache.models_for(["etsy"])["etsy"].ready
    assert model.seed_early()
    table[b"etsy"] = model.to_json()  # the sweep's early seeding, still 4 vectors learned
    held = cache.models_for(["etsy"])["etsy"]
    assert held.ready
    assert held.predict_one({"a": 1.5}) != held.predict_one({"a": 50.5})


def test_the_learner_publishes_the_final_seeding_of_a_provisional_model_at_once():
    """When the buffer fills after an early seeding the centroids are seeded again, for good;
    that snapshot must reach the table even when the next periodic snapshot is not due."""
    table: dict = {}
    learner = Learner(wiring(table))
    values = [1.0, 2.0, 40.0, 41.0, 1.5, 40.5, 2.5]
    for v in values:  # a periodic snapshot at 4 vectors
        learner.learn("all", vector(v))
    assert learner.seed_small_scopes() == ["all"]  # the sweep seeds it early
    assert table[b"all"]["provisional"] and table[b"all"]["n_learned"] == 7
    for v in (1.2, 40.2, 2.2):  # the buffer of 10 fills: seeded for good (3 vectors since the last snapshot)
        learner.learn("all", vector(v))
    snapshot = table[b"all"]
    assert snapshot["n_learned"] == 10 and not snapshot["provisional"] and snapshot["version"] == 2
    assert SegmentModel.from_json(snapshot).to_json() == learner.models["all"].to_json()


def test_the_learner_publishes_a_model_the_moment_it_becomes_ready():
    table: dict = {}
    learner = Learner(wiring(table, segment_snapshot_every=1000))
    for i in range(10):
        learner.learn("all", vector(float(i % 2) * 30 + i))
    assert table[b"all"]["seeded"] and table[b"all"]["n_learned"] == 10

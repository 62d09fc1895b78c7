"""How the learner shares segment model snapshots with the scorers (models.segmentation;
the worker keeps them in a global table, here a plain dict)."""

from __future__ import annotations

from models.segmentation import ModelCache, SegmentLearner, model_factory
from models.segments import SegmentModel


class Shared(dict):
    """The global table: the learner's snapshots, shared as they are returned."""

    def learner(self, snapshot_every: int = 4) -> SegmentLearner:
        return SegmentLearner(model_factory(2, 0.05, 10), self.get, snapshot_every)

    def learn(self, learner: SegmentLearner, scope: str, x: dict) -> None:
        snapshot = learner.learn(scope, x)
        if snapshot is not None:
            self[scope] = snapshot


def vector(value: float) -> dict[str, float]:
    return {"events": value, "orders": value / 2}


def test_the_cache_follows_an_early_seeding_with_the_same_number_of_vectors():
    """An early seeding changes the centroids but not n_learned: the scorers must still see it."""
    model = SegmentModel(n_segments=2, features=("a",), warmup=10)
    for v in (1.0, 2.0, 50.0, 51.0):
        model.learn_one({"a": v})
    table = {"etsy": model.to_json()}  # a snapshot taken while warming up (due every 4 vectors)
    cache = ModelCache(table.get)
    assert not cache.models_for(["etsy"])["etsy"].ready
    assert model.seed_early()
    table["etsy"] = model.to_json()  # the sweep's early seeding, still 4 vectors learned
    held = cache.models_for(["etsy"])["etsy"]
    assert held.ready
    assert held.predict_one({"a": 1.5}) != held.predict_one({"a": 50.5})


def test_the_learner_publishes_the_final_seeding_of_a_provisional_model_at_once():
    """When the buffer fills after an early seeding the centroids are seeded again, for good;
    that snapshot must reach the table even when the next periodic snapshot is not due."""
    table = Shared()
    learner = table.learner()
    values = [1.0, 2.0, 40.0, 41.0, 1.5, 40.5, 2.5]
    for v in values:  # a periodic snapshot at 4 vectors
        table.learn(learner, "all", vector(v))
    seeded = learner.seed_small_scopes(table)
    assert list(seeded) == ["all"]  # the sweep seeds it early
    table.update(seeded)
    assert table["all"]["provisional"] and table["all"]["n_learned"] == 7
    for v in (1.2, 40.2, 2.2):  # the buffer of 10 fills: seeded for good (3 vectors since the last snapshot)
        table.learn(learner, "all", vector(v))
    snapshot = table["all"]
    assert snapshot["n_learned"] == 10 and not snapshot["provisional"] and snapshot["version"] == 2
    assert SegmentModel.from_json(snapshot).to_json() == learner.models["all"].to_json()


def test_the_learner_publishes_a_model_the_moment_it_becomes_ready():
    table = Shared()
    learner = table.learner(snapshot_every=1000)
    for i in range(10):
        table.learn(learner, "all", vector(float(i % 2) * 30 + i))
    assert table["all"]["seeded"] and table["all"]["n_learned"] == 10


def test_a_restarted_learner_resumes_from_the_shared_snapshot():
    table = Shared()
    first = table.learner()
    for i in range(14):  # snapshots at 4 and 8, at the seeding (10), then at 14
        table.learn(first, "all", vector(float(i % 2) * 30 + i))
    second = table.learner()  # a new process: it reads the table
    assert second.model("all").to_json() == SegmentModel.from_json(table["all"]).to_json()
    assert second.model("all").n_learned == table["all"]["n_learned"] == 14

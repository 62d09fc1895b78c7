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


def feed(learner: SegmentLearner, table: Shared, positions: range, vectors: list[dict], per_message: int = 1) -> None:
    """Messages at ``positions`` of the learning topic, as the learner agent reads them: message
    ``p`` holds vectors ``p * per_message`` onwards, ``per_message`` of them."""
    for p in positions:
        learner.at(p)
        for x in vectors[p * per_message:(p + 1) * per_message]:
            snapshot = learner.learn("all", x, p)
            if snapshot is not None:
                table["all"] = snapshot


def trained_once(vectors: list[dict]) -> dict:
    """The reference: a fresh model that learns each vector once, in order."""
    model = model_factory(2, 0.05, 10)("all")
    for x in vectors:
        model.learn_one(x)
    return model.to_json()


def without_position(snapshot: dict) -> dict:
    return {k: v for k, v in snapshot.items() if k != "position"}


VECTORS = [vector(v) for v in (1.0, 2.0, 40.0, 41.0, 1.5, 40.5, 2.5, 39.0, 3.0, 42.0, 1.1, 40.1,
                               2.2, 41.2, 0.9, 39.9, 1.7, 40.7, 2.9, 41.9)]


def test_a_restarted_learner_skips_the_vectors_its_snapshot_already_has():
    """Killed after message 11 with offsets committed up to 7: 8..11 come again; those up to the
    last snapshot are skipped, the later ones (lost with the process) are learned."""
    table = Shared()
    feed(table.learner(), table, range(0, 12), VECTORS)
    stored = table["all"]["position"]
    assert 8 <= stored < 12
    restarted = table.learner()
    feed(restarted, table, range(8, 16), VECTORS)
    assert restarted.replays_skipped == stored - 8 + 1
    assert restarted.models["all"].to_json() == trained_once(VECTORS[:16])


def test_a_learner_that_gets_the_topic_back_rereads_the_newer_models():
    """A learns 0..10, B takes over at 11 (what A learned after its last snapshot is lost) and
    learns to 17, A gets the topic back at 18: A must go on from B's last snapshot, not from
    its own stale copy (B's vectors after that snapshot are lost with B's hold of the topic)."""
    table = Shared()
    first = table.learner()
    feed(first, table, range(0, 11), VECTORS)
    handed_over = table["all"]["position"]
    second = table.learner()
    feed(second, table, range(11, 18), VECTORS)
    handed_back = table["all"]["position"]
    assert handed_back > 10
    feed(first, table, range(18, 20), VECTORS)
    expected = trained_once(VECTORS[:handed_over + 1] + VECTORS[11:handed_back + 1] + VECTORS[18:20])
    assert first.models["all"].to_json() == expected


def test_every_vector_of_a_message_is_learned_and_a_replayed_message_skipped_whole():
    """Messages carry several vectors of one scope (a batch of profiles): all of them teach. The
    one snapshot here is the seeding, taken in the middle of message 2 (its 10th vector)."""
    table = Shared()
    learner = table.learner(snapshot_every=100)
    feed(learner, table, range(0, 4), VECTORS, per_message=4)
    assert learner.models["all"].to_json() == trained_once(VECTORS[:16])
    stored, learned = table["all"]["position"], table["all"]["n_learned"]
    assert (stored, learned) == (2, 10)
    restarted = table.learner(snapshot_every=100)
    feed(restarted, table, range(1, 5), VECTORS, per_message=4)  # replay from the committed offset 1
    assert restarted.replays_skipped == 8
    # What the snapshot had, then the messages after its own (the rest of message 2 died with the process).
    assert restarted.models["all"].to_json() == trained_once(VECTORS[:learned] + VECTORS[12:20])

"""``omniprofile bench segments`` on a tiny dataset, checked against independent recomputations.

The command runs once, as a subprocess (its whole stdout must be one JSON document). The
tests then rebuild what they can without the bench's replay: every customer's profile
folded from all their events in one batch (the profile step is order-independent), the
feature vectors at the bench's "now", the personas from the generator, a batch KMeans of
their own, and the number of vectors the documented teaching rule selects.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

from models.features import FEATURES, extract_features
from models.ingest import decode_message
from models.profile import apply_events
from models.segments import SegmentModel
from models.synthetic import PERSONAS, generate
from streams.bench import algorithms, compare_algorithms
from streams.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS, SEED, WARMUP = 300, 5, 200


@pytest.fixture(scope="module")
def report() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIPROFILE_")}
    env["OMNIPROFILE_SEGMENT_WARMUP"] = str(WARMUP)  # 300 customers teach ~1,100 vectors; the default is 1,000
    cmd = [sys.executable, "-m", "streams.cli", "bench", "segments", "--customers", str(CUSTOMERS),
           "--seed", str(SEED), "--json"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # nothing but the document on stdout


@pytest.fixture(scope="module")
def dataset():
    return generate(CUSTOMERS, seed=SEED)


@pytest.fixture(scope="module")
def records(dataset) -> list[dict]:
    """The dataset's events as records, in the dataset's (event-time) order."""
    out = []
    for ge in dataset.events:
        decoded = decode_message(ge.source, orjson.dumps(ge.event), None, b"test-key")
        assert not decoded.rejections
        out.extend(decoded.records)
    return out


@pytest.fixture(scope="module")
def final_features(records) -> dict[str, dict[str, float]]:
    """Scope ``all`` features of every customer, folding all their events in one batch."""
    now = max(r["ts"] for r in records) + 1
    by_customer = defaultdict(list)
    for r in records:
        if r["customer_id"]:
            by_customer[r["customer_id"]].append(r)
    out = {}
    for cid, recs in by_customer.items():
        x = extract_features(apply_events(None, cid, recs).state, "all", now)
        if x is not None:
            out[cid] = x
    return out


def test_the_document_has_the_figures_and_the_settings_used(report):
    cfg = report["config"]
    assert (cfg["customers"], cfg["seed"], cfg["segments"]) == (CUSTOMERS, SEED, len(PERSONAS))
    assert cfg["settings"]["segment_warmup"] == WARMUP  # the environment reaches the bench's settings
    assert report["benchmark"] == "segments" and "no broker" in report["note"]
    assert [q["scope"] for q in report["quality"]][0] == "all"
    for q in report["quality"][1:]:
        assert q["customers"] >= 200 and q["scope"] != "all"
    cost = report["cost"]
    assert cost["messages"] == cfg["events"]
    assert cost["profile_step_us_per_event"] > 0 and cost["with_segments_us_per_event"] > 0
    parts = cost["parts_us_per_event"]
    assert sum(parts.values()) == pytest.approx(cost["with_segments_us_per_event"], abs=0.05)
    assert cost["ratio"] == pytest.approx(
        cost["with_segments_us_per_event"] / cost["profile_step_us_per_event"], rel=1e-2
    )
    assert cost["predict_us_per_profile"] > 0 and cost["predict_many_one_row_us"] > 0 and cost["learner_vectors_per_s"] > 0
    assert report["algorithms"] is None  # only with --algorithms


def test_customers_personas_and_now_come_from_the_generator(report, dataset, records):
    truth = {c.customer_id: c.persona for c in dataset.customers}
    a = report["assignments"]
    assert a["scope"] == "all" and len(a["customers"]) == len(set(a["customers"])) == CUSTOMERS
    assert a["personas"] == [truth[c] for c in a["customers"]]
    assert report["config"]["now_ms"] == max(r["ts"] for r in records) + 1


def test_online_ari_recomputed_from_the_assignments(report):
    a = report["assignments"]
    online = report["quality"][0]
    labels = [s if s is not None else "-" for s in a["online"]]
    assert online["with_segment"] == sum(s is not None for s in a["online"])
    assert online["online_ari"] == pytest.approx(adjusted_rand_score(a["personas"], labels), abs=1e-4)
    assert online["batch_ari"] == pytest.approx(adjusted_rand_score(a["personas"], a["batch"]), abs=1e-4)


def test_online_segments_are_the_last_snapshot_applied_to_the_final_features(report, final_features):
    """The final sweep re-scored everyone with the last model snapshot, on features at "now"."""
    model = SegmentModel.from_json(report["models"]["all"])
    assert model.ready
    a = report["assignments"]
    expected = [f"s{k}" for k in model.predict_many([final_features[c] for c in a["customers"]])]
    assert a["online"] == expected


def test_batch_ari_recomputed_by_an_independent_kmeans(report, final_features):
    a = report["assignments"]
    x = np.array([[final_features[c][f] for f in FEATURES] for c in a["customers"]])
    batch = report["config"]["batch"]
    km = KMeans(n_clusters=report["config"]["segments"], n_init=batch["n_init"], random_state=batch["random_state"])
    labels = km.fit_predict(StandardScaler().fit_transform(x))
    assert report["quality"][0]["batch_ari"] == pytest.approx(adjusted_rand_score(a["personas"], labels), abs=1e-4)


def test_ratio_and_verdicts_follow_the_targets(report):
    q = report["quality"][0]
    targets = report["config"]["targets"]
    assert q["ratio"] == pytest.approx(q["online_ari"] / q["batch_ari"], abs=1e-4)
    assert q["ari_target_met"] == (q["online_ari"] >= targets["ari"])
    assert q["ratio_target_met"] == (q["ratio"] >= targets["ratio"])


def test_the_learner_saw_the_vectors_the_documented_teaching_rule_selects(report, records):
    """One event per message: every event raises the profile version by one and offers the
    scope ``all`` and the event's channel; a version teaches a scope when the scope has at
    least min_events (half for channels) and crc32("key/scope:version") falls in the sample."""
    s = report["config"]["settings"]
    rate, min_events = s["segment_learn_rate"], s["segment_min_events"]
    version: Counter[str] = Counter()
    events: dict[str, Counter[str]] = defaultdict(Counter)
    expected: Counter[str] = Counter()
    for r in records:
        key = r["customer_id"] or (f"anon:{r['anonymous_id']}" if r["anonymous_id"] else f"email:{r['email_hash']}")
        version[key] += 1
        scopes = ["all"]
        if r["source"] != "identify":
            events[key]["all"] += 1
            events[key][r["channel"]] += 1
            scopes.append(r["channel"])
        for scope in scopes:
            needed = min_events if scope == "all" else max(1, min_events // 2)
            sampled = zlib.crc32(f"{key}/{scope}:{version[key]}".encode()) < rate * 2**32
            if events[key][scope] >= needed and sampled:
                expected[scope] += 1
    assert report["cost"]["vectors_learned"] == dict(sorted(expected.items()))


# --- the algorithm comparison, on blobs whose truth is known ------------------------------------------

CENTRES = [(0.0, 0.0, 0.0), (9.0, 0.0, 0.0), (0.0, 9.0, 0.0), (0.0, 0.0, 9.0)]


def blobs(n: int, seed: int) -> tuple[list[str], list[dict[str, float]]]:
    rng = random.Random(seed)
    labels, vectors = [], []
    for _ in range(n):
        k = rng.randrange(len(CENTRES))
        labels.append(f"blob{k}")
        vectors.append({f: c + rng.gauss(0, 1) for f, c in zip("abc", CENTRES[k])})
    return labels, vectors


def test_algorithm_comparison_rows_recomputed_for_our_model():
    _, stream = blobs(1500, 1)
    truth, final = blobs(400, 2)
    candidates = algorithms(4, 0.05, 200, ("a", "b", "c"))
    rows = compare_algorithms(stream, truth, final, candidates)
    assert [r["algorithm"] for r in rows] == [c.name for c in candidates]
    assert {"river KMeans", "river STREAMKMeans", "river DBSTREAM", "river CluStream"} <= {r["algorithm"] for r in rows}
    for r in rows:
        assert r["vectors"] == 1500 and not r["capped"]
        assert 0.0 <= r["label_changes_90_to_100"] <= 1.0 and r["clusters_used"] >= 1
        assert r["learn_vectors_per_s"] > 0 and r["predict_us"] > 0
    ours = rows[0]
    model = SegmentModel(n_segments=4, features=("a", "b", "c"), halflife=0.05, warmup=200)
    for x in stream[:1350]:
        model.learn_one(x)
    earlier = model.predict_many(final)
    for x in stream[1350:]:
        model.learn_one(x)
    labels = model.predict_many(final)
    assert ours["ari"] == pytest.approx(adjusted_rand_score(truth, labels), abs=1e-4)
    assert ours["ari"] > 0.9  # four well-separated blobs
    assert ours["clusters_used"] == len(set(labels)) <= 4
    assert ours["label_changes_90_to_100"] == pytest.approx(np.mean(np.array(earlier) != np.array(labels)), abs=1e-4)


def test_bench_is_a_group_of_subcommands():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["bench"])
    args = parser.parse_args(["bench", "segments"])
    assert (args.customers, args.seed, args.segments, args.json, args.algorithms) == (3000, 7, None, False, False)

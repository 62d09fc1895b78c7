"""The command line as a user meets it: configuration mistakes fail fast with the fix named,
and ``generate`` writes or publishes what it says."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from streams.admin import ensure_topics, read_topic
from streams.commands import worker_env
from streams.local import free_port
from streams.settings import load_settings
from streams.topics import TopicNames


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env=worker_env(env), capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture
def good_env(broker, redis_server) -> dict[str, str]:
    return {"OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "OMNIPROFILE_REDIS_URL": redis_server.url}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"OMNIPROFILE_PARTITIONS": "four"}, "OMNIPROFILE_PARTITIONS"),
        ({"OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS"),
        ({"OMNIPROFILE_REDIS_URL": "http://localhost:6379"}, "OMNIPROFILE_REDIS_URL"),
        ({"OMNIPROFILE_TABLE_STORE": "postgres://x"}, "OMNIPROFILE_TABLE_STORE"),
        ({"OMNIPROFILE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "OMNIPROFILE_KAFKA_SASL_USERNAME"),
        ({"OMNIPROFILE_REDIS_URL": "redis://127.0.0.1:{free}/0"}, "OMNIPROFILE_REDIS_URL"),
        ({"OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:{free}"}, "OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS"),
    ],
    ids=["bad-int", "bootstrap-format", "redis-scheme", "store", "sasl-without-user", "redis-down", "kafka-down"],
)
def test_worker_fails_fast_naming_the_setting_to_fix(good_env, override, named):
    env = {**good_env, **{k: v.format(free=free_port()) for k, v in override.items()}}
    result = run(["worker"], env)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_writes_events_and_truth_deterministically(tmp_path):
    args = ["generate", "--customers", "300", "--seed", "3", "--start", "2026-10-01", "--invalid-rate", "0.01"]
    first = run([*args, "--out", str(tmp_path / "a.jsonl")], {})
    second = run([*args, "--out", str(tmp_path / "b.jsonl")], {})
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    lines = [orjson.loads(line) for line in a.splitlines()]
    invalid = [line for line in lines if "invalid_kind" in line]
    assert invalid and len(invalid) == round(0.01 * (len(lines) - len(invalid)))
    truth = (tmp_path / "a.truth.jsonl").read_bytes().splitlines()
    assert len(truth) == 300
    assert {orjson.loads(t)["persona"] for t in truth} >= {"app_loyalist", "store_regular"}


def test_generate_publishes_to_the_input_topics(broker, redis_server, tmp_path):
    env = {
        "OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "OMNIPROFILE_REDIS_URL": redis_server.url,
        "OMNIPROFILE_TOPIC_PREFIX": "gen.",
    }
    result = run(["generate", "--customers", "50", "--publish", "--batch", "10", "--out", str(tmp_path / "e.jsonl")], env)
    assert result.returncode == 0, result.stderr
    settings = load_settings(kafka_bootstrap_servers=broker.bootstrap, topic_prefix="gen.")
    names = TopicNames("gen.")
    ensure_topics(settings, names.inputs)
    published = 0
    for source_topic in names.inputs:
        for _, value in read_topic(settings, source_topic):
            decoded = orjson.loads(value)
            published += len(decoded) if isinstance(decoded, list) else 1
    written = len((tmp_path / "e.jsonl").read_bytes().splitlines())
    assert published == written > 0

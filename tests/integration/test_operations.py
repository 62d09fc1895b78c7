"""What operators see of a running worker: /health, /metrics and ``omniprofile status``, checked
against what the test itself sent (counts of valid events by source and of bad messages)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.admin import OutputFollower, producer
from streams.commands import worker_env
from streams.local import free_port
from tests.integration.conftest import make_stack


@pytest.fixture(scope="module")
def stack(broker, redis_server, tmp_path_factory):
    s = make_stack(broker, redis_server, tmp_path_factory.mktemp("ops"), OMNIPROFILE_WEB_PORT=str(free_port()))
    yield s
    s.worker.stop()


def url(stack) -> str:
    return f"http://127.0.0.1:{stack.env['OMNIPROFILE_WEB_PORT']}"


def samples(stack) -> dict[str, list[tuple[dict, float]]]:
    with urllib.request.urlopen(url(stack) + "/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.fixture(scope="module")
def traffic(stack):
    ts = (datetime.now(timezone.utc) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    sent = {"clickstream": 0, "email": 0}
    prod = producer(stack.settings)
    for i in range(40):
        source = "clickstream" if i % 4 else "email"
        event = {"event_id": f"ops-{i}", "type": "page_view" if source == "clickstream" else "open", "ts": ts,
                 "customer_id": f"ops-c{i % 7}", "properties": {}}
        if source == "clickstream":
            event["channel"] = "web"
        prod.send(stack.names.source(source), key=event["customer_id"].encode(), value=orjson.dumps(event))
        sent[source] += 1
    bad = [b"{not json", b"", orjson.dumps({"event_id": "x", "type": "teleport", "ts": ts, "customer_id": "c"})]
    for value in bad:
        prod.send(stack.names.source("clickstream"), value=value)
    prod.flush()
    prod.close()
    follower = OutputFollower(stack.settings)
    deadline = time.monotonic() + 120
    while follower.events_applied < 40 or len(follower.dead_letters) < len(bad):
        assert time.monotonic() < deadline, stack.worker.tail()
        follower.poll(500)
    follower.close()
    return sent, len(bad)


def test_health_says_ok(stack, traffic):
    with urllib.request.urlopen(url(stack) + "/health", timeout=5) as response:
        assert response.status == 200
        health = orjson.loads(response.read())
    assert health["status"] == "ok" and health["ready"] is True
    assert health["assigned_partitions"] > 0


def test_metrics_count_what_was_sent(stack, traffic):
    sent, bad = traffic
    deadline = time.monotonic() + 40
    while True:  # lag is refreshed every 10 s, after the offsets are committed
        m = samples(stack)
        lag = {(lv["topic"], lv["partition"]): v for lv, v in m.get("omniprofile_consumer_lag", [])}
        inputs = {k: v for k, v in lag.items() if ".events." in k[0]}
        if inputs and not any(inputs.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    valid = {labels["source"]: v for labels, v in m["omniprofile_events_valid_total"]}
    assert valid == sent
    dead = {labels["reason"]: v for labels, v in m["omniprofile_dead_letters_total"]}
    assert dead == {"invalid_json": 1, "empty": 1, "invalid_event": 1}
    received = {labels["topic"]: v for labels, v in m["omniprofile_messages_in_total"]}
    assert received[stack.names.source("clickstream")] == sent["clickstream"] + bad
    assert inputs and not any(inputs.values()), f"input lag did not reach 0: {inputs}"
    assert all(v == 0 for _, v in m["omniprofile_redis_errors_total"])
    assert m["omniprofile_up"][0][1] == 1


def test_status_command_prints_the_same(stack, traffic):
    sent, _ = traffic
    out = subprocess.run([sys.executable, "-m", "streams.cli", "status", "--url", url(stack)],
                         env=worker_env(stack.env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout.splitlines()[2]
    assert any(line.split()[:2] == ["clickstream", str(sent["clickstream"])] for line in out.stdout.splitlines())
    assert "dead-lettered: invalid_json" in out.stdout


def test_the_endpoint_serves_nothing_else(stack, traffic):
    for path in ("/", "/table/profiles", "/stats/"):
        try:
            urllib.request.urlopen(url(stack) + path, timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
        else:
            pytest.fail(f"{path} answered")


def test_a_taken_port_stops_the_worker_with_the_fix(stack, tmp_path):
    from streams.commands import Worker

    other = Worker(worker_env(dict(stack.env, OMNIPROFILE_DATA_DIR=str(tmp_path))), tmp_path / "w.log")
    other.proc.wait(120)
    assert other.proc.returncode != 0
    assert "OMNIPROFILE_WEB_PORT" in other.log_path.read_text()
    other.stop()

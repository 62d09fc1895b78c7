"""Redis as docker-compose.secure.yml runs it: TLS only (no plaintext port), an ACL user and no
default user, with the certificates and ACL file ``scripts/secure-dev-certs.sh`` writes, and the
redis-server options of the compose file's ``redis`` service. The worker and the commands run on it
through OMNIPROFILE_REDIS_URL (``rediss://`` with the user, password and CA), every command they send
is allowed, the password is never printed.

(Kafka TLS: tests/integration/test_kafka_tls.py. Kafka SASL is not shown: Tansu 0.6.0 refuses to
create a SCRAM user on a broker with --authentication; docs/reliability.md says so.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
import redis
import yaml

from streams.admin import OutputFollower, producer
from streams.local import RedisServer, free_port
from tests.integration.conftest import ROOT, dev_secrets, make_stack

PASSWORD = "acl-test-Pa55word-7f3c"  # a string that cannot turn up in a log by chance
PREFIX = "acl:"


def compose_redis_options(secrets: Path, port: int) -> list[str]:
    """The compose file's redis-server options, on this machine: its secrets directory and a free port;
    its persistence options stay the compose file's own business."""
    command = yaml.safe_load((ROOT / "docker-compose.secure.yml").read_text())["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    options = [arg.replace("/secrets", str(secrets)) for arg in command[1:]]
    options[options.index("--tls-port") + 1] = str(port)
    cut = options.index("--appendonly")  # RedisServer keeps its data in a temporary directory, not on disk
    return options[:cut]


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Path:
    return dev_secrets(tmp_path_factory.mktemp("secrets"), PASSWORD, PREFIX)


@pytest.fixture(scope="module")
def acl_redis(secrets):
    """A redis-server with the compose file's TLS and ACL options (its certificate names localhost)."""
    port = free_port()
    server = RedisServer(port=port, args=tuple(compose_redis_options(secrets, port))).start()
    yield server
    server.stop()


def redis_url(server: RedisServer, secrets: Path, password: str = PASSWORD) -> str:
    return f"rediss://omniprofile:{password}@localhost:{server.port}/0?ssl_ca_certs={secrets / 'ca.pem'}"


@pytest.fixture(scope="module")
def stack(broker, acl_redis, secrets, tmp_path_factory):
    s = make_stack(broker, acl_redis, tmp_path_factory.mktemp("acl"),
                   OMNIPROFILE_REDIS_URL=redis_url(acl_redis, secrets), OMNIPROFILE_REDIS_KEY_PREFIX=PREFIX)
    yield s
    s.worker.stop()


def user_client(server: RedisServer, secrets: Path) -> redis.Redis:
    return redis.Redis.from_url(redis_url(server, secrets))


def test_tls_only_and_no_default_user(acl_redis, secrets):
    with pytest.raises(redis.exceptions.ConnectionError):  # no plaintext port
        redis.Redis(host="127.0.0.1", port=acl_redis.port, socket_timeout=5).ping()
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):  # an unknown CA
        redis.Redis.from_url(f"rediss://localhost:{acl_redis.port}/0", socket_timeout=5).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(f"rediss://localhost:{acl_redis.port}/0?ssl_ca_certs={secrets / 'ca.pem'}").ping()
    client = user_client(acl_redis, secrets)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("outside-the-prefix", "1")  # the user reaches only omniprofile's keys
    for dangerous in (client.flushall, client.flushdb, lambda: client.keys("*"), lambda: client.config_get("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            dangerous()
    assert client.info("memory")["used_memory"] > 0  # what `omniprofile status` reads
    client.close()


def test_the_worker_serves_profiles_through_tls_and_the_acl_user(stack, acl_redis, secrets):
    ts = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    customers = [f"acl-c{i}" for i in range(6)]
    prod = producer(stack.settings)
    sent = 0
    for i in range(36):
        customer = customers[i % len(customers)]
        event = {"event_id": f"acl-{i}", "type": "page_view", "ts": ts, "customer_id": customer,
                 "channel": "web", "properties": {"category": "shoes" if i % 2 else "bags"}}
        prod.send(stack.names.source("clickstream"), key=customer.encode(), value=orjson.dumps(event))
        sent += 1
    prod.send(stack.names.source("clickstream"), value=b"{not json")  # a dead letter, too
    prod.flush()
    prod.close()

    follower = OutputFollower(stack.settings)
    deadline = time.monotonic() + 120
    while follower.events_applied < sent or not follower.dead_letters:
        assert stack.worker.proc.poll() is None, stack.worker.tail()
        assert time.monotonic() < deadline, f"{follower.events_applied} of {sent} events applied"
        follower.poll(1000)
    client = user_client(acl_redis, secrets)
    deadline = time.monotonic() + 30
    while True:  # the Redis flush runs every 200 ms
        held = {c: client.hget(f"{PREFIX}profile:{c}", "version") for c in customers}
        if all(held[c] is not None and int(held[c]) == follower.latest[c]["version"] for c in customers):
            break
        assert time.monotonic() < deadline, (held, {c: follower.latest[c]["version"] for c in customers})
        time.sleep(0.3)
    assert all(key.startswith(PREFIX.encode()) for key in client.scan_iter(count=1000))
    client.close()
    follower.close()

    result = subprocess.run([sys.executable, "-m", "streams.cli", "profile", customers[0]],
                            env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["customer_id"] == customers[0]

    log = stack.worker.log_path.read_text(errors="replace")
    for refusal in ("NOPERM", "NOAUTH", "WRONGPASS"):
        assert refusal not in log, stack.worker.tail()
    assert PASSWORD not in log + result.stdout + result.stderr


def test_a_wrong_password_fails_fast_without_printing_it(stack):
    env = {**os.environ, **stack.env,
           "OMNIPROFILE_REDIS_URL": stack.env["OMNIPROFILE_REDIS_URL"].replace(PASSWORD, PASSWORD + "-wrong")}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "worker"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "OMNIPROFILE_REDIS_URL" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr

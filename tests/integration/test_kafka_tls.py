"""Kafka over TLS (``OMNIPROFILE_KAFKA_SECURITY_PROTOCOL=SSL`` with ``OMNIPROFILE_KAFKA_SSL_CAFILE``):
the worker (Faust, aiokafka), the command line and the test's own clients (kafka-python) reach the
broker only through a TLS endpoint with the Kafka certificate of ``scripts/secure-dev-certs.sh``, and
verify it against that script's CA. Tansu 0.6.0 cannot serve TLS, so the endpoint is
``tests/integration/tls_proxy.py`` in front of it, and Tansu advertises the endpoint's address: every
connection a client opens, bootstrap or partition leader, is a TLS session. SASL/SCRAM and Kafka ACLs
stay for Apache Kafka (docs/reliability.md, "What is not shown here")."""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import redis

from streams.admin import OutputFollower, producer
from streams.local import Tansu, free_port
from streams.sinks import RedisLayout
from tests.integration.conftest import Stack, dev_secrets, make_stack
from tests.integration.test_identity import cli
from tests.integration.tls_proxy import TLSProxy


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Path:
    return dev_secrets(tmp_path_factory.mktemp("kafka-tls"))


@pytest.fixture(scope="module")
def endpoint(secrets) -> Iterator[TLSProxy]:
    port = free_port()
    tansu = Tansu(advertised=f"localhost:{port}").start()
    proxy = TLSProxy(port, tansu.port, secrets / "kafka.crt", secrets / "kafka.key").start()
    yield proxy
    proxy.stop()
    tansu.stop()


@pytest.fixture(scope="module")
def stack(endpoint, secrets, redis_server, tmp_path_factory) -> Iterator[Stack]:
    bootstrap = f"localhost:{endpoint.port}"
    s = make_stack(SimpleNamespace(bootstrap=bootstrap), redis_server, tmp_path_factory.mktemp("tls-stack"),  # type: ignore[arg-type]
                   OMNIPROFILE_KAFKA_SECURITY_PROTOCOL="SSL",
                   OMNIPROFILE_KAFKA_SSL_CAFILE=str(secrets / "ca.pem"))
    yield s
    s.worker.stop()


def test_the_endpoint_speaks_only_tls_with_the_dev_certificate(endpoint, secrets):
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust the dev CA
        with socket.create_connection(("localhost", endpoint.port), timeout=5) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")
    trusting = ssl.create_default_context(cafile=str(secrets / "ca.pem"))
    with socket.create_connection(("localhost", endpoint.port), timeout=5) as raw:
        with trusting.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # A plaintext Kafka request (ApiVersions v0) gets no Kafka answer: the connection is closed, or a
    # TLS alert record (content type 21) comes back.
    with socket.create_connection(("localhost", endpoint.port), timeout=5) as raw:
        raw.sendall(b"\x00\x00\x00\x0a" + b"\x00\x12\x00\x00" + b"\x00\x00\x00\x01" + b"\xff\xff")
        reply = raw.recv(64)
    assert reply[:1] in (b"", b"\x15"), reply


def test_the_worker_and_the_command_line_run_over_tls(stack, endpoint, redis_server):
    ts = (datetime.now(timezone.utc) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    sent = [{"event_id": f"tls-{i}", "type": "page_view", "ts": ts, "customer_id": f"tls-c{i % 4}",
             "channel": "web"} for i in range(30)]
    prod = producer(stack.settings)  # kafka-python, through client_options: SSL and the CA file
    for event in sent:
        prod.send(stack.names.source("clickstream"), value=orjson.dumps(event))
    prod.flush()
    prod.close()

    follower = OutputFollower(stack.settings)
    deadline = time.monotonic() + 120
    while follower.events_applied < len(sent):
        assert stack.worker.proc.poll() is None, stack.worker.tail()
        assert time.monotonic() < deadline, f"{follower.events_applied} of {len(sent)} events applied"
        follower.poll(1000)
    follower.close()
    expected = Counter(event["customer_id"] for event in sent)
    client = redis.Redis.from_url(redis_server.url)
    layout = RedisLayout(stack.settings.redis_key_prefix)
    deadline = time.monotonic() + 30
    while {c: int(client.hget(layout.profile(c), "events") or 0) for c in expected} != dict(expected):
        assert time.monotonic() < deadline, "Redis did not get every profile"
        time.sleep(0.3)

    out = cli(stack, "forget", "tls-c0", "--request-id", "tls-req", "--wait", "90")  # producer and consumer
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["request_id"] == "tls-req"
    assert endpoint.sessions >= 3  # the worker's, the test's and the command's connections

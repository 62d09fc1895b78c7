"""Secure by default, as far as code can show it: no pickle anywhere, no Faust web pages,
secrets kept out of reprs and messages."""

from __future__ import annotations

import re
from pathlib import Path

from streams.app import create_app
from streams.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_no_pickle_in_the_code():
    hits = [str(p.relative_to(ROOT)) for folder in ("streams", "models") for p in (ROOT / folder).rglob("*.py")
            if re.search(r"^\s*(import|from)\s+(c?pickle|dill|shelve)\b", p.read_text(), re.M)]
    assert hits == []


def test_every_table_and_topic_is_raw_or_json():
    app = create_app(load_settings(hash_key="unit-test-key"))
    assert (app.conf.key_serializer, app.conf.value_serializer) == ("raw", "raw")
    for name, table in app.tables.items():
        assert {table.key_serializer, table.value_serializer} <= {"raw", "json"}, name
        topic = table.changelog_topic
        assert {topic.key_serializer, topic.value_serializer} <= {"raw", "json"}, name


def test_faust_web_server_and_table_pages_are_off():
    app = create_app(load_settings(hash_key="unit-test-key"))
    assert app.conf.web_enabled is False and app.conf.web_tables_enabled is False
    settings = load_settings(hash_key="unit-test-key")
    assert settings.web_host == "127.0.0.1"  # /health and /metrics bind localhost unless told otherwise


def test_secrets_stay_out_of_reprs_and_messages():
    settings = load_settings(hash_key="hash-secret-1", kafka_security_protocol="SASL_SSL",
                             kafka_sasl_username="svc", kafka_sasl_password="kafka-secret-2",
                             redis_url="rediss://worker:redis-secret-3@cache.internal:6380/0")
    shown = repr(settings) + str(settings) + settings.redis_url_safe
    assert "hash-secret-1" not in shown and "kafka-secret-2" not in shown
    assert "redis-secret-3" not in shown
    assert settings.redis_url_safe == "rediss://worker:***@cache.internal:6380/0"

"""Data-subject commands: ``omniprofile forget`` (erasure) and ``omniprofile export`` (access).

Both name a person by any identifier: a customer id, ``anon:ID``, ``device:ID``,
``social:PLATFORM:HANDLE``, or ``--email`` / ``--phone`` in clear (hashed here with
``OMNIPROFILE_HASH_KEY``, never sent or stored in clear).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any

import orjson

from models.events import hash_identifier
from models.identity import canonical_key, parse_identifier
from models.view import decode_profile_json
from streams.settings import ConfigError, Settings, load_settings
from streams.topics import TopicNames


def subject(args: argparse.Namespace, settings: Settings) -> str:
    """The namespaced identifier the command names (emails and phones as keyed hashes)."""
    key = settings.hash_key.get_secret_value().encode()
    if args.email:
        return "email:" + hash_identifier(args.id.strip().lower(), key)
    if args.phone:
        return "phone:" + hash_identifier("".join(ch for ch in args.id if ch.isdigit() or ch == "+"), key)
    ident = parse_identifier(args.id, settings.blocked_values)
    if ident is None:
        raise ConfigError(f"{args.id!r} is not an identifier (a blocked placeholder value?); give a customer id, "
                          "anon:ID, device:ID, social:PLATFORM:HANDLE, or --email ADDRESS")
    return ident


def redis_client(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout)


def lookup(settings: Settings, ident: str) -> tuple[str, dict | None]:
    """The canonical profile id of an identifier and its identity group, from the serving view."""
    from streams.sinks import RedisLayout

    layout = RedisLayout(settings.redis_key_prefix)
    client = redis_client(settings)
    try:
        canonical = client.get(layout.identity(ident))
        canonical = canonical.decode() if canonical else canonical_key(ident)
        group = client.get(layout.identity_group(canonical))
    finally:
        client.close()
    return canonical, (orjson.loads(group) if group else None)


def cmd_export(args: argparse.Namespace) -> int:
    """Print everything the serving view holds about a person (a data access request)."""
    import redis

    from streams.sinks import RedisLayout

    settings = load_settings()
    layout = RedisLayout(settings.redis_key_prefix)
    ident = subject(args, settings)
    try:
        canonical, group = lookup(settings, ident)
        client = redis_client(settings)
        digest = hash_identifier(ident, settings.hash_key.get_secret_value().encode())
        erased = bool(client.sismember(layout.suppressed(), digest))
        raw = client.hget(layout.profile(canonical), "json")
        client.close()
    except redis.RedisError as exc:
        raise ConfigError(f"cannot read from Redis at {settings.redis_url_safe} ({exc}); check OMNIPROFILE_REDIS_URL")
    profile = decode_profile_json(raw) if raw else None
    names = TopicNames(settings.topic_prefix)
    document = {
        "identifier": ident,
        "erased": erased,
        "profile_id": canonical if (profile or group) else None,
        "identity": group,
        "segments": (profile or {}).get("segments", {}),
        "profile": profile,
        "also_held": {
            "faust_tables": "the profile and identity-graph tables hold the same data as above (source of truth)",
            "topics": [f"{names.updates} (compacted: latest profile per id)",
                       f"{names.segments}, {names.hops} (change history, kept for the topic retention)",
                       f"{names.identity} (compacted lineage)"],
        },
    }
    if profile is None and group is None and not erased:
        print(f"nothing stored about {ident}", file=sys.stderr)
    print(json.dumps(document, indent=None if args.compact else 2))
    return 0 if (profile or group or erased) else 1


def cmd_forget(args: argparse.Namespace) -> int:
    """Ask the workers to erase a person; wait for the audit record that says it is done."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.admin import check_kafka, client_options, ensure_topics, producer

    settings = load_settings()
    check_kafka(settings)
    names = TopicNames(settings.topic_prefix)
    ident = subject(args, settings)
    ensure_topics(settings, [names.erasure_requests, names.audit])
    request_id = args.request_id or f"erase-{uuid.uuid4()}"
    consumer = KafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(names.audit, p) for p in sorted(consumer.partitions_for_topic(names.audit) or ())]
        consumer.assign(parts)
        consumer.seek_to_end()
        for tp in parts:
            consumer.position(tp)  # fix the starting point before the request goes out
        send = producer(settings, linger_ms=0)
        body = {"identifier": ident, "request_id": request_id, "requested_by": args.requested_by}
        send.send(names.erasure_requests, key=request_id.encode(), value=orjson.dumps(body)).get(timeout=30)
        send.close()
        print(f"erasure request {request_id} sent for {ident}", file=sys.stderr)
        if args.wait <= 0:
            return 0
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key == request_id.encode() and record.value:
                        audit = orjson.loads(record.value)
                        print(json.dumps(audit, indent=2))
                        return 0
    finally:
        consumer.close()
    print(f"no audit record for {request_id} within {args.wait:.0f} s: is a worker running? The request stays "
          f"on {names.erasure_requests} and is carried out when one starts.", file=sys.stderr)
    return 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    for name, func, text in (
        ("forget", cmd_forget, "erase a person everywhere (tables, Redis, outputs) and suppress later events"),
        ("export", cmd_export, "print everything stored about a person (data access request)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("id", help="a customer id, anon:ID, device:ID, social:PLATFORM:HANDLE (or an email/phone)")
        kind = p.add_mutually_exclusive_group()
        kind.add_argument("--email", action="store_true", help="ID is an email address (hashed before use)")
        kind.add_argument("--phone", action="store_true", help="ID is a phone number (hashed before use)")
        if name == "forget":
            p.add_argument("--request-id", help="an id for the audit trail (default: a new UUID)")
            p.add_argument("--requested-by", default="cli", help="who asked, for the audit record")
            p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the audit record (0: don't)")
        else:
            p.add_argument("--compact", action="store_true", help="one line of JSON")
        p.set_defaults(func=func)

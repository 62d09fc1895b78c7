"""The ``omniprofile`` command line: worker, generate, demo, profile, schemas.

``main()`` only parses arguments and dispatches; each command is a small function.
Configuration mistakes end the command with exit code 2 and a message naming the fix.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any
from pathlib import Path

from streams.settings import ConfigError, Settings, load_settings

log = logging.getLogger("omniprofile")


def check_redis(settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
        if settings.redis_json_codec == "zlib":
            listpack_hint(client)
    except redis.RedisError as exc:
        raise ConfigError(
            f"cannot reach Redis at {settings.redis_url_safe} ({exc}); start it, or set OMNIPROFILE_REDIS_URL "
            "to a running server (redis://host:port/db)"
        ) from None
    finally:
        client.close()


def listpack_hint(client: Any) -> None:
    """Warn when the Redis server keeps compressed profiles in its larger hashtable encoding.

    An ACL user without CONFIG (a managed Redis) cannot tell; then nothing is said."""
    import redis

    from models.view import LISTPACK_VALUE_HINT

    try:
        value = int(client.config_get("hash-max-listpack-value").get("hash-max-listpack-value", 0))
    except (redis.ResponseError, ValueError):
        return
    if value < LISTPACK_VALUE_HINT:
        log.warning(
            "OMNIPROFILE_REDIS_JSON_CODEC=zlib, but the Redis server's hash-max-listpack-value is %d: profiles "
            "take about 2.5 KB instead of 1.5 KB. Set 'hash-max-listpack-value %d' in redis.conf (or CONFIG SET).",
            value, LISTPACK_VALUE_HINT)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a production worker until SIGINT/SIGTERM."""
    import faust

    from streams.admin import check_kafka
    from streams.app import create_app

    settings = load_settings()
    check_redis(settings)
    check_kafka(settings)
    if settings.uses_development_hash_key:
        log.warning(
            "OMNIPROFILE_HASH_KEY is not set: emails are hashed with the public development key. "
            "Set a secret key in production (python -c 'import secrets; print(secrets.token_hex(32))')."
        )
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=args.quiet)
    worker.execute_from_commandline()
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Print one profile from Redis as JSON."""
    import redis

    from streams.sinks import RedisLayout

    from models.identity import parse_identifier
    from streams.privacy import lookup

    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_socket_timeout)
    layout = RedisLayout(settings.redis_key_prefix)
    try:
        raw = client.hget(layout.profile(args.customer_id), "json")
        ident = parse_identifier(args.customer_id, settings.blocked_values)
        if raw is None and ident is not None:
            # Any identifier of a stitched customer leads to their profile.
            canonical, _ = lookup(settings, ident)
            if canonical != args.customer_id:
                raw = client.hget(layout.profile(canonical), "json")
                if raw is not None:
                    print(f"{args.customer_id} belongs to profile {canonical}", file=sys.stderr)
    except redis.RedisError as exc:
        raise ConfigError(f"cannot read from Redis at {settings.redis_url_safe} ({exc}); check OMNIPROFILE_REDIS_URL")
    if raw is None:
        print(f"no profile for {args.customer_id!r} in Redis at {settings.redis_url_safe}", file=sys.stderr)
        return 1
    from models.view import profile_json_text

    try:
        text = profile_json_text(raw)  # plain or zlib, whichever OMNIPROFILE_REDIS_JSON_CODEC the worker used
    except ValueError as exc:
        print(f"profile {args.customer_id!r} in Redis is unreadable: {exc}", file=sys.stderr)
        return 1
    if args.compact:
        sys.stdout.write(text.decode() + "\n")
    else:
        import json

        print(json.dumps(json.loads(text), indent=2))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    """Write the JSON Schemas of every input and output model."""
    from models.outputs import SCHEMA_DIR, write_schemas

    for path in write_schemas(Path(args.out) if args.out else SCHEMA_DIR):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniprofile",
        description="Streaming customer profiles from Kafka events. Settings: OMNIPROFILE_* environment variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("worker", help="run a worker (start more to scale out)")
    p.add_argument("--quiet", action="store_true", help="no banner")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("profile", help="print one profile from Redis as JSON")
    p.add_argument("customer_id")
    p.add_argument("--compact", action="store_true", help="one line of JSON")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("schemas", help="write the JSON Schemas of the input and output models")
    p.add_argument("--out", help="directory (default: the package's models/schemas)")
    p.set_defaults(func=cmd_schemas)

    from streams import bench, commands, privacy, status

    commands.add_commands(sub)
    status.add_status_command(sub)
    privacy.add_commands(sub)
    bench.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The worker logs through Faust; the other commands only say what matters.
    logging.basicConfig(
        level=logging.INFO if args.command == "worker" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"omniprofile {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

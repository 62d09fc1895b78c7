"""Configuration: every setting is an ``OMNIPROFILE_*`` environment variable.

Settings are read by calling :func:`load_settings`, never at import time, and are
validated up front: a mistake stops the process with a message naming the variable
and how to fix it (:class:`ConfigError`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.identity import BLOCKED_VALUES

ENV_PREFIX = "OMNIPROFILE_"

_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")

# Used only when OMNIPROFILE_HASH_KEY is unset; the worker logs a warning then.
DEVELOPMENT_HASH_KEY = "omniprofile-development-key-change-me"


class ConfigError(Exception):
    """A configuration mistake, with the fix in the message."""


class Settings(BaseSettings):
    """All settings of a worker or a command; see the README's configuration table."""

    model_config = SettingsConfigDict(
        # An empty variable (``OMNIPROFILE_KAFKA_SSL_CAFILE=`` in a .env file) means "unset".
        env_prefix=ENV_PREFIX, env_file=None, extra="ignore", frozen=True, env_ignore_empty=True
    )

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_session_timeout: float = Field(default=20.0, ge=3, le=300)
    kafka_fetch_max_wait_ms: int = Field(default=500, ge=1, le=10_000)
    topic_prefix: str = ""
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)

    # Faust
    app_id: str = "omniprofile"
    table_store: str = "memory://"
    data_dir: Path = Path(".omniprofile")
    rocksdb_block_cache_mb: int = Field(default=16, ge=1, le=65_536)
    rocksdb_write_buffer_mb: int = Field(default=16, ge=1, le=4096)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    stall_seconds: float = Field(default=120.0, gt=0, le=86_400)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", "redis_json_codec", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    # Redis (the serving view)
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)  # may hold a password; see redis_url_safe
    redis_key_prefix: str = "omniprofile:"
    redis_flush_interval_ms: int = Field(default=200, ge=10, le=60_000)
    redis_flush_max: int = Field(default=1000, ge=1, le=100_000)
    redis_socket_timeout: float = Field(default=5.0, gt=0, le=120)
    redis_resync_check_seconds: float = Field(default=5.0, gt=0, le=3600)
    # The profile hash's json field: plain JSON (the contract's default) or zlib (models.view.encode_profile_json).
    redis_json_codec: Literal["plain", "zlib"] = "plain"

    # Input validation
    max_event_bytes: int = Field(default=1_048_576, ge=1024)
    max_future_seconds: int = Field(default=86_400, ge=0)
    min_event_year: int = Field(default=2000, ge=1970, le=2100)
    hash_key: SecretStr = SecretStr(DEVELOPMENT_HASH_KEY)

    # Profiles and segments
    segments: int = Field(default=8, ge=2, le=64)
    segment_learn_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    segment_min_events: int = Field(default=5, ge=1)
    segment_warmup: int = Field(default=1000, ge=10)
    segment_halflife: float = Field(default=0.01, gt=0.0, le=1.0)
    segment_snapshot_every: int = Field(default=200, ge=1)
    segment_teach_batch: int = Field(default=500, ge=1, le=100_000)
    segment_teach_flush_seconds: float = Field(default=0.5, gt=0.0, le=3600.0)
    segment_sweep_seconds: float = Field(default=3600.0, ge=1.0)
    segment_summary_seconds: float = Field(default=60.0, ge=1.0)
    dedup_window: int = Field(default=256, ge=0, le=100_000)
    recovery_consistency_check: bool = True
    journey_window_days: float = Field(default=7.0, gt=0.0, le=90.0)
    journey_halflife_hours: float = Field(default=24.0, gt=0.0)
    journey_retention_days: int = Field(default=35, ge=8, le=3650)
    journey_flush_seconds: float = Field(default=1.0, gt=0.0, le=60.0)

    # Batching between the stages
    batch_max_messages: int = Field(default=500, ge=1, le=100_000)
    batch_wait_ms: int = Field(default=20, ge=1, le=10_000)
    batch_backlog_wait_ms: int | None = Field(default=None, ge=1, le=10_000)
    internal_message_bytes: int = Field(default=262_144, ge=1024, le=8 * 1024 * 1024)

    # Identity
    identity_max_identifiers: int = Field(default=50, ge=2, le=10_000)
    identity_blocked_values: str = ",".join(sorted(BLOCKED_VALUES - {""}))
    # A hold is given up only as a safety valve (the identity stage writes its graph after the merge_into
    # is delivered, so a crash cannot lose one), and only once the profile's partition is less than this
    # behind (models.stitching.receive).
    identity_merge_wait_seconds: float = Field(default=300.0, ge=1.0, le=3600.0)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap_is_host_port_list(cls, value: str) -> str:
        servers = [s.strip().removeprefix("kafka://") for s in value.split(",") if s.strip()]
        bad = [s for s in servers if not _HOST_PORT.match(s)]
        if not servers or bad:
            raise ValueError(
                f"expected a comma-separated list of host:port, got {value!r}; "
                "for example OMNIPROFILE_KAFKA_BOOTSTRAP_SERVERS=localhost:9092"
            )
        return ",".join(servers)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"expected a redis://, rediss:// or unix:// URL, got {value!r}; "
                "for example OMNIPROFILE_REDIS_URL=redis://localhost:6379/0"
            )
        return value

    @field_validator("table_store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith(("memory://", "rocksdict://", "rocksdb://")):
            raise ValueError(
                f"unknown table store {value!r}; use memory:// (development) or rocksdict:// (production)"
            )
        return value

    @field_validator("topic_prefix", "redis_key_prefix")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        if any(ch.isspace() for ch in value):
            raise ValueError(f"must not contain white space, got {value!r}")
        return value

    @property
    def blocked_values(self) -> frozenset[str]:
        """Identifier values that never link (always including the empty string)."""
        return frozenset({"", *(v.strip().lower() for v in self.identity_blocked_values.split(","))})

    @property
    def backlog_wait_ms(self) -> int:
        """The batch window while the input lags: ``OMNIPROFILE_BATCH_BACKLOG_WAIT_MS``, or when unset
        500 ms, or ``OMNIPROFILE_BATCH_WAIT_MS`` if that is longer.

        >>> Settings().backlog_wait_ms, Settings(batch_wait_ms=1000).backlog_wait_ms, Settings(batch_backlog_wait_ms=40).backlog_wait_ms
        (500, 1000, 40)
        """
        if self.batch_backlog_wait_ms is not None:
            return self.batch_backlog_wait_ms
        return max(500, self.batch_wait_ms)

    @property
    def bootstrap_list(self) -> list[str]:
        return self.kafka_bootstrap_servers.split(",")

    @property
    def journey_window_ms(self) -> int:
        return int(self.journey_window_days * 86_400_000)

    @property
    def journey_halflife_ms(self) -> int:
        return int(self.journey_halflife_hours * 3_600_000)

    @property
    def journey_retention_ms(self) -> int:
        return self.journey_retention_days * 86_400_000

    @property
    def redis_url_safe(self) -> str:
        """The Redis URL for messages and logs: a password in it is replaced by ``***``.

        >>> Settings(redis_url="rediss://app:s3cret@cache:6380/0").redis_url_safe
        'rediss://app:***@cache:6380/0'
        """
        parts = urlsplit(self.redis_url)
        if parts.password is None:
            return self.redis_url
        user = parts.username or ""
        host = parts.hostname or ""
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def uses_development_hash_key(self) -> bool:
        return self.hash_key.get_secret_value() == DEVELOPMENT_HASH_KEY

    def check_cross_fields(self) -> None:
        """Cross-field checks that a single field validator cannot make."""
        if self.batch_backlog_wait_ms is not None and self.batch_backlog_wait_ms < self.batch_wait_ms:
            raise ConfigError(
                f"OMNIPROFILE_BATCH_BACKLOG_WAIT_MS={self.batch_backlog_wait_ms} is shorter than "
                f"OMNIPROFILE_BATCH_WAIT_MS={self.batch_wait_ms}: set it at least as long (equal turns the "
                "longer window for backlogs off)"
            )
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ConfigError(
                f"OMNIPROFILE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "OMNIPROFILE_KAFKA_SASL_USERNAME and OMNIPROFILE_KAFKA_SASL_PASSWORD; set both, "
                "or use OMNIPROFILE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT for a local broker"
            )
        if self.kafka_ssl_cafile is not None and not self.kafka_ssl_cafile.is_file():
            raise ConfigError(
                f"OMNIPROFILE_KAFKA_SSL_CAFILE={self.kafka_ssl_cafile} is not a readable file; "
                "point it at the CA certificate (PEM) of the Kafka cluster"
            )


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The settings that ``OMNIPROFILE_*`` variables in ``env`` (a worker's environment) give.

    >>> settings_from_env({"OMNIPROFILE_PARTITIONS": "8"}).partitions
    8
    """
    return load_settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()})


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings from the environment (``overrides`` win).

    Raises :class:`ConfigError` with one line per problem, each naming the
    environment variable and what a valid value looks like.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {ENV_PREFIX}{field.upper()}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    settings.check_cross_fields()
    return settings

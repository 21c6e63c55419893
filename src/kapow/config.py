"""The TOML configuration, decoded into typed, validated structs.

A bad config must fail at start with one line that names the key and the reason, never a traceback: msgspec
reports the path of the offending key (``$.destinations[0].port``), which we keep, and the cross-field checks
below (duplicate vanity, empty lists) speak the same way.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from kapow.errors import ConfigError


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base: unknown keys are errors (a typo must not silently become a default)."""


class KafkaConfig(_Strict):
    bootstrap_servers: str
    topics: list[str]
    group_id: str = "kapow"
    user_errors_topic: str = "kapow.errors.user"
    system_errors_topic: str = "kapow.errors.system"
    # Any librdkafka property (security.protocol, sasl.*, ...), passed to consumer and producer alike.
    settings: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)


class DestinationConfig(_Strict):
    vanity: str
    databases: list[str]
    type: Literal["postgres"] = "postgres"
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    # Name of the environment variable holding the password; the password itself never sits in a file.
    password_env: str | None = None
    max_connections: int = 4
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 30_000
    # Allow tables without a primary key or unique constraint (replays then duplicate rows).
    allow_no_unique_key: bool = False
    # Optional allowlists; None means any schema / any table the database user may write.
    schemas: list[str] | None = None
    tables: list[str] | None = None

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None

    def conninfo(self, database: str) -> str:
        """A libpq connection string; the password is passed separately so that it never reaches a log."""
        return psycopg_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=database,
            connect_timeout=max(1, round(self.connect_timeout_s)),
            application_name="kapow",
        )


def psycopg_conninfo(**params: object) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", **{k: str(v) for k, v in params.items()})


class PipelineConfig(_Strict):
    batch_max_messages: int = 5_000
    batch_max_wait_ms: int = 20  # at low rates, the longest a packet waits for company
    max_in_flight_batches: int = 4
    max_packet_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    # System errors: retried with exponential back-off and jitter for at most this long, then parked.
    retry_budget_s: float = 30.0
    retry_initial_backoff_s: float = 0.2
    retry_max_backoff_s: float = 5.0
    # A destination that keeps failing opens its circuit: one probe per interval instead of one timeout a batch.
    circuit_failures_to_open: int = 3
    circuit_open_s: float = 5.0
    catalog_ttl_s: float = 60.0
    shutdown_deadline_s: float = 10.0


class HttpConfig(_Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:8080"


class LogConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Config(_Strict):
    kafka: KafkaConfig
    destinations: list[DestinationConfig]
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    def destination(self, vanity: str) -> DestinationConfig | None:
        for dest in self.destinations:
            if dest.vanity == vanity:
                return dest
        return None


_PATH = re.compile(r"\$\.?")


def _key_path(msg: str) -> tuple[str, str]:
    """Split msgspec's "reason - at `$.a.b`" into ("a.b", "reason")."""
    reason, sep, where = msg.rpartition(" - at `")
    if not sep:
        return "", msg
    return _PATH.sub("", where.rstrip("`"), count=1), reason


def _humanise(reason: str) -> str:
    return (reason.replace("`", "").replace("Expected", "expected").replace("Object contains", "contains")
            .replace("Object missing", "missing"))


def parse_config(text: str, source: str = "<config>") -> Config:
    """Decode and check a TOML config; raise :class:`ConfigError` with one line on any problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        key, reason = _key_path(str(exc))
        where = f"{key}: " if key else ""
        raise ConfigError(f"{source}: {where}{_humanise(reason)}") from None
    _check(config, source)
    return config


def load_config(path: str | Path) -> Config:
    """Read and parse a config file; a missing or unreadable file is a :class:`ConfigError` too."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from None
    return parse_config(text, str(p))


def _check(config: Config, source: str) -> None:
    def fail(key: str, reason: str) -> None:
        raise ConfigError(f"{source}: {key}: {reason}")

    if not config.kafka.bootstrap_servers.strip():
        fail("kafka.bootstrap_servers", "must not be empty")
    if not config.kafka.topics:
        fail("kafka.topics", "name at least one topic to consume")
    if config.kafka.user_errors_topic == config.kafka.system_errors_topic:
        fail("kafka.system_errors_topic", "must differ from kafka.user_errors_topic")
    for topic in (config.kafka.user_errors_topic, config.kafka.system_errors_topic):
        if topic in config.kafka.topics:
            fail("kafka.topics", f"must not include the error topic {topic!r}")
    if not config.destinations:
        fail("destinations", "configure at least one [[destinations]] table")
    seen: set[str] = set()
    for i, dest in enumerate(config.destinations):
        key = f"destinations[{i}]"
        if not dest.vanity:
            fail(f"{key}.vanity", "must not be empty")
        if dest.vanity in seen:
            fail(f"{key}.vanity", f"duplicate vanity {dest.vanity!r}")
        seen.add(dest.vanity)
        if not dest.databases:
            fail(f"{key}.databases", "name at least one database")
        if dest.max_connections < 1:
            fail(f"{key}.max_connections", "must be at least 1")
        if not 0 < dest.port < 65536:
            fail(f"{key}.port", "must be between 1 and 65535")
        if dest.password_env is not None and dest.password_env not in os.environ:
            fail(f"{key}.password_env", f"environment variable {dest.password_env} is not set")
    p = config.pipeline
    for name in ("batch_max_messages", "batch_max_wait_ms", "max_in_flight_batches", "max_packet_bytes"):
        if getattr(p, name) < 1:
            fail(f"pipeline.{name}", "must be at least 1")
    if p.retry_budget_s < 0 or p.shutdown_deadline_s <= 0:
        fail("pipeline", "retry_budget_s must be >= 0 and shutdown_deadline_s > 0")
    host, _, port = config.http.listen.rpartition(":")
    if not host or not port.isdigit():
        fail("http.listen", f"expected HOST:PORT, got {config.http.listen!r}")

"""The TOML configuration, decoded into typed, validated structs.

A bad config must fail at start with one line that names the key and the reason, never a traceback and never a
crash inside a C library (an empty ``group_id`` used to abort librdkafka with an assertion): msgspec reports the
path of the offending key (``$.destinations[0].port``), which we keep, and the checks below give every number a
sane range, every name a legal shape, and every librdkafka property a trial run before the writer starts.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NoReturn

import msgspec

from kapow.credentials import Secret, check_destination_security, check_kafka_security, secret_from, typed_key_of
from kapow.errors import ConfigError

Mode = Literal["insert", "upsert", "delete"]
Format = Literal["json", "debezium"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base: unknown keys are errors (a typo must not silently become a default)."""


class KafkaConfig(_Strict):
    bootstrap_servers: str
    topics: list[str] = msgspec.field(default_factory=list)
    group_id: str = "kapow"
    user_errors_topic: str = "kapow.errors.user"
    system_errors_topic: str = "kapow.errors.system"
    # Any librdkafka property, passed to every client; once parsed, with the typed keys below merged in (credentials)
    settings: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)
    security_protocol: SecurityProtocol | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    sasl_password_file: str | None = None  # a Kubernetes secret
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None  # and ssl_key_location: a client certificate, for mutual TLS
    ssl_key_location: str | None = None


class DestinationConfig(_Strict):
    vanity: str
    databases: list[str]
    type: Literal["postgres"] = "postgres"
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    # Name of the environment variable holding the password; the password itself never sits in the config.
    password_env: str | None = None
    password_file: str | None = None  # or a file (a Kubernetes secret), read again for every new connection
    # TLS, with libpq's names and meanings; "verify-full" is the production setting (docs/SECURITY.md)
    sslmode: SslMode = "prefer"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    max_connections: int = 4
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 30_000
    # A table locked by someone else fails its statement after this long, so it holds only itself: the other
    # tables of the same transaction commit and the locked one is retried alone (see kapow.pipeline.lanes).
    lock_timeout_ms: int = 2_000
    # Allow tables without a primary key or unique constraint (replays then duplicate rows).
    allow_no_unique_key: bool = False
    # The write modes packets may ask for (PRODUCT.md §1); "delete" must be allowed explicitly.
    modes: list[Mode] = msgspec.field(default_factory=lambda: ["insert", "upsert"])
    # Optional allowlists; None means any schema / any table the database user may write.
    schemas: list[str] | None = None
    tables: list[str] | None = None

    def password(self) -> Secret | None:
        """The password now: from ``password_env``, or read afresh from ``password_file`` (so a pool that asks
        on every new connection follows a rotation). Raises :class:`SecretUnreadable` when it cannot be read."""
        return secret_from(self.password_env, self.password_file, f"destinations[{self.vanity}]", missing_ok=True)

    def conninfo(self, database: str) -> str:
        """A libpq connection string; the password is passed separately so that it never reaches a log."""
        tls = {name: getattr(self, name) for name in ("sslrootcert", "sslcert", "sslkey") if getattr(self, name)}
        return psycopg_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=database,
            connect_timeout=max(1, round(self.connect_timeout_s)),
            application_name="kapow",
            sslmode=self.sslmode,
            **tls,
        )


def psycopg_conninfo(**params: object) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", **{k: str(v) for k, v in params.items()})


class PipelineConfig(_Strict):
    batch_max_messages: int = 10_000  # more rows per table per batch when traffic spreads over many tables
    # While a backlog spreads over many tables (few rows per table), batches may grow up to this many records
    # (kapow.pipeline.batch.BatchSizer); set it to batch_max_messages to keep batches at that size.
    batch_spread_max_messages: int = 40_000
    batch_max_wait_ms: int = 20  # at low rates, the longest a packet waits for company
    max_packet_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_destinations: int = 16  # per packet; more is the user error too_many_destinations
    # A destination that fails (down, locked, slow) holds its packets this long, in memory, while everything
    # else keeps landing; past that they are parked on the system-errors topic and redriven once it recovers.
    hold_s: float = 60.0
    # Memory of packets consumed but not yet landed or parked (values + PACKET_OVERHEAD each); past it the
    # consumer pauses and the oldest held packets are parked early, so a dead destination can never exhaust the
    # writer's memory; past a quarter to a half of it the loop stops reading ahead (kapow.pipeline.readahead).
    max_buffer_bytes: int = 256 * 1024 * 1024
    # Rows written in one database transaction (many tables of one database share it; see kapow.postgres.writer)
    unit_max_rows: int = 10_000
    retry_initial_backoff_s: float = 0.2
    retry_max_backoff_s: float = 5.0
    # A destination that keeps failing opens its circuit; it is probed every circuit_open_s, with or without
    # traffic, and closes again on the first success.
    circuit_failures_to_open: int = 3
    circuit_open_s: float = 5.0
    catalog_ttl_s: float = 60.0
    catalog_max_bytes: int = 64 * 1024 * 1024
    shutdown_deadline_s: float = 10.0
    # /healthz fails when no commit was possible for this long (0: hold_s + 2 x shutdown_deadline_s + 60 s, longer
    # than the pipeline ever waits on purpose): an error topic or the broker is stuck and a human must look
    commit_stall_s: float = 0.0
    # Packets parked because their destination was down are republished once it is healthy again.
    redrive: bool = True
    redrive_max_attempts: int = 5  # a packet tried this many times stays parked for an operator
    redrive_delay_s: float = 10.0  # the least time between parking and redrive
    redrive_rate: float = 2000.0  # records per second, at most


class RouteConfig(_Strict):
    """A plain topic bound to one table (PRODUCT.md §1b): its records need no envelope and no header."""

    topic: str
    vanity: str
    database: str
    table: str
    schema: str = "public"
    format: Format = "json"
    mode: Mode = "insert"  # json only: a Debezium event says its own operation
    key: list[str] | None = None  # the unique constraint to match on (default: the primary key)
    version: str | None = None  # a column that must not move backwards (upserts and deletes guarded by it)
    # Kafka record fields (offset, partition, topic, timestamp, key) or, for debezium, the source's lsn and
    # ts_ms -> the column that takes them
    metadata: dict[str, str] | None = None

    @property
    def label(self) -> str:
        return f"{self.vanity}/{self.database}/{self.schema}.{self.table}"


ROUTE_METADATA = frozenset({"offset", "partition", "topic", "timestamp", "key", "lsn", "ts_ms"})


class HttpConfig(_Strict):
    enabled: bool = True
    listen: str = "127.0.0.1:8080"


class LogConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Config(_Strict):
    kafka: KafkaConfig
    destinations: list[DestinationConfig]
    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    pipeline: PipelineConfig = msgspec.field(default_factory=PipelineConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    def destination(self, vanity: str) -> DestinationConfig | None:
        for dest in self.destinations:
            if dest.vanity == vanity:
                return dest
        return None

    @property
    def consumed_topics(self) -> list[str]:
        """Every topic the writer consumes: the envelope topics, then the routes' topics."""
        return [*self.kafka.topics, *(r.topic for r in self.routes)]


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


# (key, lowest, highest): numbers outside these ranges are typos or misunderstandings, refused at start.
_PIPELINE_RANGES: tuple[tuple[str, float, float], ...] = (
    ("batch_max_messages", 1, 100_000),
    ("batch_spread_max_messages", 1, 1_000_000),
    ("batch_max_wait_ms", 1, 60_000),
    ("max_packet_bytes", 1, 100 * 1024 * 1024),
    ("max_json_depth", 1, 256),
    ("max_destinations", 1, 1000),
    ("hold_s", 0, 86_400),
    ("max_buffer_bytes", 1024 * 1024, 64 * 1024**3),
    ("unit_max_rows", 1, 1_000_000),
    ("retry_initial_backoff_s", 0.001, 3600),
    ("retry_max_backoff_s", 0.001, 3600),
    ("circuit_failures_to_open", 1, 1_000_000),
    ("circuit_open_s", 0.01, 3600),
    ("catalog_ttl_s", 0, 86_400),
    ("catalog_max_bytes", 64 * 1024, 64 * 1024**3),
    ("shutdown_deadline_s", 0.1, 3600),
    ("commit_stall_s", 0, 86_400),
    ("redrive_max_attempts", 1, 1000),
    ("redrive_delay_s", 0, 86_400),
    ("redrive_rate", 0.01, 1_000_000),
)

_DESTINATION_RANGES: tuple[tuple[str, float, float], ...] = (
    ("max_connections", 1, 1000),
    ("port", 1, 65535),
    ("connect_timeout_s", 0.1, 600),
    ("statement_timeout_ms", 1, 86_400_000),
    ("lock_timeout_ms", 1, 86_400_000),
)


def _check(config: Config, source: str) -> None:
    def fail(key: str, reason: str) -> NoReturn:
        raise ConfigError(f"{source}: {key}: {reason}")

    k = config.kafka
    if not k.bootstrap_servers.strip():
        fail("kafka.bootstrap_servers", "must not be empty")
    if not k.group_id.strip():
        fail("kafka.group_id", "must not be empty")
    if not k.topics and not config.routes:
        fail("kafka.topics", "name at least one topic to consume (or add a [[routes]] table)")
    named = [("kafka.topics", t) for t in k.topics] + [(f"routes[{i}].topic", r.topic)
                                                       for i, r in enumerate(config.routes)]
    for key, topic in [*named, ("kafka.user_errors_topic", k.user_errors_topic),
                       ("kafka.system_errors_topic", k.system_errors_topic)]:
        if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
            fail(key, f"{topic[:80]!r} is not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)")
    seen_topics: set[str] = set()
    for key, topic in named:
        if topic in seen_topics:
            fail(key, f"topic {topic!r} is consumed twice (a topic is either an envelope topic or one route's)")
        seen_topics.add(topic)
    if k.user_errors_topic == k.system_errors_topic:
        fail("kafka.system_errors_topic", "must differ from kafka.user_errors_topic")
    for topic in (k.user_errors_topic, k.system_errors_topic, f"{k.system_errors_topic}.done"):
        for key, named_topic in named:
            if topic == named_topic:
                fail(key, f"must not be the error topic {topic!r}")
    check_kafka_security(config, fail)
    _check_kafka_settings(config, fail)
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
        for db in dest.databases:
            if not db or len(db.encode()) > 63 or "\x00" in db:
                fail(f"{key}.databases", f"{db[:80]!r} is not a PostgreSQL database name (1 to 63 bytes)")
        if len(set(dest.databases)) != len(dest.databases):
            fail(f"{key}.databases", "names a database twice")
        for name, lo, hi in _DESTINATION_RANGES:
            value = getattr(dest, name)
            if not lo <= value <= hi:
                fail(f"{key}.{name}", f"must be between {lo:g} and {hi:g}, got {value!r}")
        if not dest.modes:
            fail(f"{key}.modes", "allow at least one of insert, upsert, delete")
        for name in dest.schemas or []:
            if not _IDENTIFIER.fullmatch(name):
                fail(f"{key}.schemas", f"{name[:80]!r} is not a plain identifier")
        if dest.password_env is not None and dest.password_env not in os.environ:
            fail(f"{key}.password_env", f"environment variable {dest.password_env} is not set")
        check_destination_security(dest, key, fail)
    for i, route in enumerate(config.routes):
        _check_route(config, route, f"routes[{i}]", fail)
    p = config.pipeline
    for name, lo, hi in _PIPELINE_RANGES:
        value = getattr(p, name)
        if not lo <= value <= hi:
            fail(f"pipeline.{name}", f"must be between {lo:g} and {hi:g}, got {value!r}")
    if p.retry_max_backoff_s < p.retry_initial_backoff_s:
        fail("pipeline.retry_max_backoff_s", "must be at least retry_initial_backoff_s")
    host, _, port = config.http.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        fail("http.listen", f"expected HOST:PORT, got {config.http.listen!r}")


def _check_route(config: Config, route: RouteConfig, key: str, fail: Callable[[str, str], NoReturn]) -> None:
    dest = config.destination(route.vanity)
    if dest is None:
        fail(f"{key}.vanity", f"{route.vanity!r} is not a configured destination")
    if route.database not in dest.databases:
        fail(f"{key}.database", f"{route.database!r} is not one of {route.vanity!r}'s databases")
    for name, value in (("schema", route.schema), ("table", route.table), *(("key", c) for c in route.key or ()),
                        *([("version", route.version)] if route.version else [])):
        if not _IDENTIFIER.fullmatch(value) or len(value.encode()) > 63:
            fail(f"{key}.{name}", f"{value[:80]!r} is not a plain identifier")
    if route.key is not None and not route.key:
        fail(f"{key}.key", "name at least one column")
    if route.format == "json" and route.mode not in dest.modes:
        fail(f"{key}.mode", f"{route.mode!r} is not allowed for {route.vanity!r} (its modes: {', '.join(dest.modes)})")
    if route.format == "debezium" and "upsert" not in dest.modes:
        fail(f"{key}.format", f"a debezium route upserts: allow \"upsert\" in {route.vanity!r}'s modes")
    for field, column in (route.metadata or {}).items():
        if field not in ROUTE_METADATA or (field in ("lsn", "ts_ms") and route.format != "debezium"):
            fail(f"{key}.metadata", f"{field!r} is not a record field (offset, partition, topic, timestamp, key;"
                                    " lsn, ts_ms for debezium)")
        if not _IDENTIFIER.fullmatch(column):
            fail(f"{key}.metadata", f"{column[:80]!r} is not a plain identifier")


def _broken_promise(name: str, value: str | int | float | bool) -> str | None:
    """Why a librdkafka property would break the commit guarantee, or None. Offsets are committed by the writer
    alone, after each packet landed or was parked; and a revoke finishes or drops everything in flight, which is
    right only when every partition is revoked at once (eager rebalancing): with incremental (cooperative)
    rebalancing the partitions kept would go on past the batches dropped, and those packets would be lost."""
    text = str(value).strip().lower()
    if name in ("enable.auto.commit", "enable.auto.offset.store") and text not in ("false", "0"):
        return "must stay false: the writer commits offsets itself, only after each packet landed or was parked"
    if name == "partition.assignment.strategy" and "cooperative" in text:
        return "incremental (cooperative) rebalancing is not supported: use range or roundrobin (the default)"
    if name == "group.protocol" and text != "classic":
        return "only the classic group protocol is supported (the new one rebalances incrementally)"
    return None


def _check_kafka_settings(config: Config, fail: Callable[[str, str], NoReturn]) -> None:
    """Try the librdkafka properties once, offline, so that a typo is one line now, not a traceback later; refuse
    the ones that would break what the writer promises (:func:`_broken_promise`)."""
    settings = config.kafka.settings
    if not settings:
        return
    for name, value in settings.items():
        why = _broken_promise(name, value)
        if why is not None:
            fail(f'kafka.settings."{name}"', why)
    from confluent_kafka import Consumer, KafkaException, Producer

    from kapow.credentials import with_secrets


    quiet = logging.getLogger("kapow.config.trial")  # librdkafka's warnings about the trial client are not news
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    base = {"bootstrap.servers": config.kafka.bootstrap_servers, "logger": quiet}
    for kind, make in (("consumer", Consumer), ("producer", Producer)):
        conf = with_secrets({**base, **settings})
        if kind == "consumer":
            conf["group.id"] = config.kafka.group_id
        try:
            client = make(conf)
        except (KafkaException, TypeError, ValueError) as exc:
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            fail(typed_key_of(config.kafka, text) or "kafka.settings", text)
        else:
            if kind == "consumer":
                client.close()

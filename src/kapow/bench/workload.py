"""What a benchmark run lands, and the scratch world it lands it in.

Every run gets a fresh topic, fresh error topics and a fresh database holding one table, and removes them
afterwards, so runs never see each other's rows, offsets or catalog. The rows of the ``250b`` preset are the
peer's own (``bench/peer/peer.py``'s ``make_rows``), so KaPoW and Kafka Connect land identical data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.util
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from kapow.contract import CONTEXT_HEADER, CONTEXT_VALUE
from kapow.errors import KapowError

BOOTSTRAP = os.environ.get("KAPOW_BOOTSTRAP", "127.0.0.1:9092")
ADMIN_DSN = os.environ.get("KAPOW_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
HEADERS: list[tuple[str, str | bytes | None]] = [(CONTEXT_HEADER, CONTEXT_VALUE)]
PRESETS = ("250b", "12b")

# Both tables end in ``landed_at``: clock_timestamp() is taken per row as it is inserted (a moment before its
# transaction commits), so the last row's time and every row's latency come from the database itself, not from
# how often someone polls ``count(*)``. Both writers (KaPoW and the peer) land into this same shape.
EVENTS_DDL = """
CREATE TABLE bench_events (
  event_id   bigint PRIMARY KEY,
  account    text NOT NULL,
  kind       text NOT NULL,
  amount     numeric(12,2) NOT NULL,
  currency   text NOT NULL,
  created_at timestamptz NOT NULL,
  note       text,
  landed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
IDS_DDL = """
CREATE TABLE bench_ids (
  id        bigint PRIMARY KEY,
  landed_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
EVENT_COLUMNS = ("event_id", "account", "kind", "amount", "currency", "created_at", "note")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def load_peer() -> ModuleType:
    """Import ``bench/peer/peer.py`` by path: it is a script beside the package, not part of it."""
    path = _repo_root() / "bench" / "peer" / "peer.py"
    if not path.is_file():
        raise KapowError(f"{path} not found: run kapow bench from a source checkout (pip install -e .)")
    module = sys.modules.get("kapow_bench_peer")
    if module is None:
        spec = importlib.util.spec_from_file_location("kapow_bench_peer", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["kapow_bench_peer"] = module
        spec.loader.exec_module(module)
    return module


@dataclass
class Workload:
    """N packets, encoded before the clock starts, and the rows they carry (for the peer and the baselines)."""

    preset: str
    table: str
    ddl: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]
    values: list[bytes]
    keys: list[bytes] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean_value_bytes(self) -> float:
        return sum(map(len, self.values)) / max(1, len(self.values))

    @property
    def mean_data_bytes(self) -> float:
        return sum(len(msgspec.json.encode(r)) for r in self.rows[:1000]) / max(1, min(1000, len(self.rows)))

    def checksum(self) -> int:
        """Sum of the keys: with the row count, it proves every packet landed exactly once."""
        key = self.columns[0]
        return sum(int(r[key]) for r in self.rows)


def envelope(database: str, table: str) -> bytes:
    """The packet's address, in its shortest valid form (``type`` and ``schema`` take their defaults)."""
    dest = {"vanity": "bench", "database": database, "table": table}
    return b'{"pipeline_context":{"destinations":[' + msgspec.json.encode(dest) + b']},"data":'


def make_workload(preset: str, n: int, database: str) -> Workload:
    """Build the packets of a preset.

    ``250b``: the peer's rows (account, kind, amount, currency, created_at) without the padding ``note``, which
    with the address makes a Kafka value of ~250 bytes. ``12b``: ``{"id": …}``, the 10-15 bytes of data of the
    seed's small-packet test.
    """
    columns: tuple[str, ...]
    if preset == "250b":
        rows: list[dict[str, Any]] = load_peer().make_rows(n)
        for r in rows:
            r["note"] = None
        table, ddl, columns = "bench_events", EVENTS_DDL, EVENT_COLUMNS
    elif preset == "12b":
        rows = [{"id": 100_000 + i} for i in range(n)]
        table, ddl, columns = "bench_ids", IDS_DDL, ("id",)
    else:
        raise KapowError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    prefix = envelope(database, table)
    encode = msgspec.json.Encoder().encode
    values = [prefix + encode({k: v for k, v in r.items() if v is not None}) + b"}" for r in rows]
    keys = [b"%d" % i for i in range(n)]  # spread over every partition
    return Workload(preset, table, ddl, columns, rows, values, keys)


def stamp_now(row: dict[str, Any]) -> None:
    """Latency mode: ``created_at`` becomes the moment of publishing, to compare with ``landed_at``."""
    row["created_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dsn(database: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(ADMIN_DSN, dbname=database)


class Scratch:
    """A fresh topic (P partitions), error topics and database with the workload's table; removed on exit."""

    def __init__(self, *, partitions: int, tag: str = "kb") -> None:
        self.base = f"{tag}_{uuid.uuid4().hex[:8]}"
        self.database = self.base
        self.topic = f"{self.base}.in"
        self.user_errors = f"{self.base}.user"
        self.system_errors = f"{self.base}.system"
        self.group = f"{self.base}.group"
        self.partitions = partitions
        self._made_db = False
        self._made_topics = False

    def create(self, ddl: str) -> Scratch:
        from kapow.kafka.clients import ensure_topics

        with admin_connection() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self._made_db = True
        with psycopg.connect(dsn(self.database), autocommit=True) as conn:
            conn.execute(ddl.encode())
        ensure_topics(BOOTSTRAP, {self.topic: self.partitions, self.user_errors: 1, self.system_errors: 1})
        self._made_topics = True
        return self

    def drop(self) -> None:
        """Best effort: a failed clean-up is reported, never raised over the run's own outcome."""
        from kapow.kafka.clients import delete_topics

        if self._made_db:
            try:
                with admin_connection() as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.database)))
            except psycopg.Error as exc:
                print(f"kapow bench: could not drop database {self.database}: {exc}", file=sys.stderr)
        if self._made_topics:
            try:
                delete_topics(BOOTSTRAP, [self.topic, self.user_errors, self.system_errors])
            except Exception as exc:
                print(f"kapow bench: could not delete topics of {self.base}: {exc}", file=sys.stderr)
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": BOOTSTRAP})  # kept alive until its futures resolve
            with contextlib.suppress(Exception):  # no group when no writer ran
                for f in admin.delete_consumer_groups([self.group], request_timeout=10).values():
                    f.result(timeout=15)

    def config(self, *, batch: int, connections: int) -> str:
        """The writer's TOML: defaults except what the run varies; HTTP off so parallel writers never clash."""
        return (
            f'[kafka]\nbootstrap_servers = "{BOOTSTRAP}"\ngroup_id = "{self.group}"\ntopics = ["{self.topic}"]\n'
            f'user_errors_topic = "{self.user_errors}"\nsystem_errors_topic = "{self.system_errors}"\n\n'
            f'[[destinations]]\nvanity = "bench"\n{_pg_location()}databases = ["{self.database}"]\n'
            f"max_connections = {connections}\n\n"
            f"[pipeline]\nbatch_max_messages = {batch}\n\n"
            '[http]\nenabled = false\n\n[log]\nlevel = "INFO"\nformat = "json"\n'
        )

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()


def _pg_location() -> str:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(ADMIN_DSN)
    host = str(info.get("host") or "127.0.0.1")
    return f'host = "{host}"\nport = {int(str(info.get("port") or 5432))}\nuser = "{info.get("user") or "postgres"}"\n'


def admin_connection() -> psycopg.Connection[Any]:
    """The admin database, or one line saying PostgreSQL is not there."""
    try:
        return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        raise KapowError(f"PostgreSQL is not reachable ({reason}); run: make services") from None


def check_services() -> None:
    """Fail fast, in one line, when the broker or the database is down."""
    admin_connection().close()
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=10)
    except KafkaException:
        raise KapowError(f"Kafka is not reachable at {BOOTSTRAP}; run: make services") from None


def publish(topic: str, values: list[bytes], keys: list[bytes], progress: Any = None) -> None:
    """Publish pre-encoded packets as fast as the client goes (the Publisher's settings: linger 20 ms, lz4)."""
    from kapow.client import DeliveryError, Publisher

    with Publisher(BOOTSTRAP, topic) as pub:
        produce = pub.send_raw
        for i, (value, key) in enumerate(zip(values, keys, strict=True)):
            produce(value, key)
            if progress is not None and i % 20_000 == 0:
                progress(i)
        try:
            pub.flush()
        except DeliveryError as exc:
            raise KapowError(f"publishing: {exc}") from None


def landed(database: str, table: str) -> tuple[int, float | None, float | None]:
    """(rows, first and last ``landed_at`` as epoch seconds)."""
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        row = conn.execute(sql.SQL(
            "SELECT count(*), extract(epoch FROM min(landed_at))::float8, extract(epoch FROM max(landed_at))::float8"
            " FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0]), row[1], row[2]


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def verify(database: str, workload: Workload) -> dict[str, Any]:
    """Exactly once: the row count and the sum of the keys both match what was published."""
    key = workload.columns[0]
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {}").format(
            sql.Identifier(key), sql.Identifier(workload.table))).fetchone()
    assert row is not None
    rows, total = int(row[0]), int(row[1])
    return {"rows": rows, "exact": rows == workload.n and total == workload.checksum()}

"""Peer benchmark: Kafka Connect + Debezium JDBC sink landing rows into PostgreSQL.

KaPoW is only interesting if it is compared against what people would use
instead.  The usual off-the-shelf answer for "Kafka topic -> PostgreSQL table"
is Kafka Connect with a JDBC sink; the Debezium JDBC sink is the maintained
open-source one.  This module runs that peer on exactly the same rows and the
same target table as KaPoW, and measures it the same way (wall clock until the
last row is visible via ``count(*)``), so the two numbers can be put side by
side.

Only confluent-kafka, psycopg 3 and the stdlib are used on the Python side; the
Java side is resolved by Maven from ``pom.xml`` next to this file.

CLI::

    python bench/peer/peer.py --bootstrap 127.0.0.1:9092 \
        --dsn postgresql://postgres@127.0.0.1:5432/postgres -n 50000 -p 6
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HERE = pathlib.Path(__file__).resolve().parent
POM = HERE / "pom.xml"

# Versions pinned in pom.xml; reported in the result so a number is never
# separated from what produced it.
KAFKA_CONNECT_VERSION = "4.3.1"
DEBEZIUM_JDBC_VERSION = "3.5.0.Final"
POSTGRESQL_JDBC_VERSION = "42.7.14"

CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"

TABLE_DDL = """
CREATE TABLE {table} (
  event_id   bigint PRIMARY KEY,
  account    text NOT NULL,
  kind       text NOT NULL,
  amount     numeric(12,2) NOT NULL,
  currency   text NOT NULL,
  created_at timestamptz NOT NULL,
  note       text
)
"""

KINDS = ("payment", "refund", "chargeback", "fee")
# Target size of the JSON of one data object; with KaPoW's envelope the full
# packet is then ~250 bytes, the size the whole benchmark is specified for.
DATA_JSON_BYTES = 170
_BASE_TIME = dt.datetime(2026, 11, 24, 10, 0, 0, tzinfo=dt.UTC)
_NOTE_ALPHABET = string.ascii_letters + string.digits + " "

# Connect record schemas (JsonConverter with schemas.enable=true).
# created_at uses Debezium's io.debezium.time.ZonedTimestamp (an ISO-8601
# string): the sink binds it as a timestamptz and keeps the microseconds.
# Connect's own Timestamp logical type is int64 milliseconds and would drop
# the microseconds, so the landed value would differ from the input.
# amount uses Connect's Decimal logical type (base64 of the unscaled two's
# complement integer, scale 2): it is bound as a BigDecimal into numeric(12,2)
# exactly; a plain string would be bound as varchar and rejected by PostgreSQL.
_VALUE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "name": "kapow.bench.Event",
    "optional": False,
    "fields": [
        {"field": "event_id", "type": "int64", "optional": False},
        {"field": "account", "type": "string", "optional": False},
        {"field": "kind", "type": "string", "optional": False},
        {
            "field": "amount",
            "type": "bytes",
            "optional": False,
            "name": "org.apache.kafka.connect.data.Decimal",
            "version": 1,
            "parameters": {"scale": "2", "connect.decimal.precision": "12"},
        },
        {"field": "currency", "type": "string", "optional": False},
        {
            "field": "created_at",
            "type": "string",
            "optional": False,
            "name": "io.debezium.time.ZonedTimestamp",
            "version": 1,
        },
        {"field": "note", "type": "string", "optional": True},
    ],
}
_KEY_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "name": "kapow.bench.EventKey",
    "optional": False,
    "fields": [{"field": "event_id", "type": "int64", "optional": False}],
}
# The schemas are constant: serialise them once and splice the payload in, so
# the producer side of the benchmark is not dominated by json.dumps of schemas.
_VALUE_PREFIX = b'{"schema":' + json.dumps(_VALUE_SCHEMA, separators=(",", ":")).encode() + b',"payload":'
_KEY_PREFIX = b'{"schema":' + json.dumps(_KEY_SCHEMA, separators=(",", ":")).encode() + b',"payload":'


def make_rows(n: int, seed: int = 7) -> list[dict[str, object]]:
    """Generate the benchmark rows, deterministic for a given ``n`` and ``seed``.

    Both writers must land byte-identical data, so the generator is the shared
    contract: event_id 1..n, increasing created_at, and a ``note`` padded so
    the compact JSON of each object is about ``DATA_JSON_BYTES`` bytes.
    """
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(1, n + 1):
        cents = rng.randint(100, 9_999_999)
        micros = i * 1000 + rng.randint(0, 999)  # strictly increasing
        created = _BASE_TIME + dt.timedelta(microseconds=micros)
        row: dict[str, object] = {
            "event_id": i,
            "account": f"acct-{i % 5000:05d}",
            "kind": KINDS[(i - 1) % len(KINDS)],
            "amount": f"{cents // 100}.{cents % 100:02d}",
            "currency": "USD",
            "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "note": "",
        }
        pad = DATA_JSON_BYTES - len(json.dumps(row, separators=(",", ":")))
        row["note"] = "".join(rng.choices(_NOTE_ALPHABET, k=max(pad, 0)))
        rows.append(row)
    return rows


def _decimal_base64(amount: object, scale: int = 2) -> str:
    """Encode a decimal string the way Connect's Decimal logical type expects.

    JsonConverter reads a Decimal as base64 of the big-endian two's complement
    unscaled value; sending that (rather than a JSON number) keeps the value
    exact whatever the JSON parser does with floats.
    """
    unscaled = int(Decimal(str(amount)).scaleb(scale).to_integral_exact())
    length = max(1, (unscaled.bit_length() + 8) // 8)
    return base64.b64encode(unscaled.to_bytes(length, "big", signed=True)).decode()


def encode_record(row: dict[str, object]) -> tuple[bytes, bytes]:
    """Return (key, value) bytes for one row in JsonConverter schema+payload form.

    The key carries the primary key so the sink can run with
    primary.key.mode=record_key (needed for upsert).
    """
    payload = dict(row)
    payload["amount"] = _decimal_base64(row["amount"])
    value = _VALUE_PREFIX + json.dumps(payload, separators=(",", ":")).encode() + b"}"
    key = _KEY_PREFIX + json.dumps({"event_id": row["event_id"]}, separators=(",", ":")).encode() + b"}"
    return key, value


# --------------------------------------------------------------------------- jars


def resolve_jars(libs: pathlib.Path, *, timeout_s: float = 600.0) -> list[pathlib.Path]:
    """Resolve the Connect + Debezium classpath into ``libs`` (cached).

    Maven is only run when the directory has no connector jar yet, so repeated
    benchmark runs do not pay (or depend on) a registry round trip.
    """
    marker = libs / f"debezium-connector-jdbc-{DEBEZIUM_JDBC_VERSION}.jar"
    if not marker.exists():
        tmp = libs.with_name(libs.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        cmd = [
            "mvn",
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"mvn could not resolve the peer classpath:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
    jars = sorted(libs.glob("*.jar"))
    if not marker.exists() or not jars:
        raise RuntimeError(f"{libs} does not hold the Debezium JDBC sink jar after resolution")
    return jars


# ------------------------------------------------------------------- kafka side


def _free_port() -> int:
    """Pick a free TCP port on 127.0.0.1 for the Connect REST listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _create_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    """Create the benchmark topic and wait until it is really there."""
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    futures[topic].result(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=topic, timeout=10)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        time.sleep(0.2)
    raise RuntimeError(f"topic {topic} did not appear with {partitions} partitions within 60 s")


def _publish(bootstrap: str, topic: str, rows: list[dict[str, object]], timeout_s: float) -> None:
    """Publish every row once; fail if any delivery fails or the flush times out."""
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 10:
            errors.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "compression.type": "lz4",
            "enable.idempotence": True,
        }
    )
    deadline = time.monotonic() + timeout_s
    for row in rows:
        key, value = encode_record(row)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
                if time.monotonic() > deadline:
                    raise RuntimeError("timed out publishing rows (producer queue stayed full)") from None
        producer.poll(0)
    remaining = producer.flush(max(1.0, deadline - time.monotonic()))
    if remaining:
        raise RuntimeError(f"{remaining} messages still undelivered after {timeout_s:.0f} s")
    if errors:
        raise RuntimeError(f"delivery failed: {errors}")


def _cleanup_kafka(admin: AdminClient, topic: str, group: str) -> None:
    """Delete the topic and the sink's consumer group; never raise (cleanup path)."""
    try:
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=60)
    except Exception as exc:  # best effort: report and go on
        print(f"peer: could not delete topic {topic}: {exc}", file=sys.stderr)
    try:
        admin.delete_consumer_groups([group], request_timeout=30)[group].result(timeout=60)
    except Exception as exc:  # the group does not exist if Connect never started
        print(f"peer: consumer group {group} not deleted: {exc}", file=sys.stderr)


# ------------------------------------------------------------------ connect side


def _write_props(path: pathlib.Path, props: dict[str, object]) -> None:
    """Write a Java .properties file (values are simple; escape backslashes)."""
    lines = [f"{k}={str(v).replace(chr(92), chr(92) * 2)}" for k, v in props.items()]
    path.write_text("\n".join(lines) + "\n")


def _jdbc_url(pg_dsn: str, database: str) -> tuple[str, str, str]:
    """Turn a libpq DSN into (jdbc url, user, password) for the same server."""
    info = conninfo_to_dict(pg_dsn)
    host = str(info.get("host") or "127.0.0.1")
    if host.startswith("/"):
        host = "127.0.0.1"
    port = str(info.get("port") or "5432")
    # reWriteBatchedInserts lets pgjdbc fold a JDBC batch into multi-row
    # INSERTs; it is the standard PostgreSQL tuning for any JDBC sink.
    url = f"jdbc:postgresql://{host}:{port}/{database}?reWriteBatchedInserts=true"
    return url, str(info.get("user") or "postgres"), str(info.get("password") or "")


def _proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (utime+stime) and peak RSS bytes (VmHWM) of a live process."""
    cpu = 0.0
    hwm = 0
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return cpu, hwm


def _connector_failure(port: int, name: str) -> str | None:
    """Ask the REST API whether the connector or a task FAILED; return its trace."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connectors/{name}/status", timeout=5) as r:
            status = json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    states = [status.get("connector", {}), *status.get("tasks", [])]
    for st in states:
        if st.get("state") == "FAILED":
            # The top frame is always Connect's generic "unrecoverable
            # exception"; the "Caused by" chain carries the real reason.
            trace = str(st.get("trace", "FAILED without trace"))
            lines = trace.splitlines()
            causes = [ln for ln in lines if ln.startswith("Caused by")]
            return "\n".join(lines[:1] + causes)[:4000]
    return None


def _log_tail(path: pathlib.Path, n: int = 60) -> str:
    """Last lines of the Connect log, to put the cause into exception messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop_jvm(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s: the JVM must never outlive the run."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _verify_sample(conn: psycopg.Connection[Any], table: str, rows: list[dict[str, object]]) -> int:
    """Check a few landed rows equal the inputs (types, microseconds, decimals).

    Counting rows proves completeness, not correctness; a wrong type mapping
    (e.g. lost microseconds) would otherwise go unnoticed.
    """
    idx = sorted({0, len(rows) // 3, len(rows) // 2, (2 * len(rows)) // 3, len(rows) - 1})
    q = sql.SQL(
        "SELECT event_id, account, kind, amount::text, currency, created_at, note FROM {} WHERE event_id = %s"
    ).format(sql.Identifier(table))
    for i in idx:
        want = rows[i]
        got = conn.execute(q, (want["event_id"],)).fetchone()
        if got is None:
            raise RuntimeError(f"row event_id={want['event_id']} missing")
        exp_ts = dt.datetime.fromisoformat(str(want["created_at"]).replace("Z", "+00:00"))
        expected = (
            want["event_id"],
            want["account"],
            want["kind"],
            want["amount"],
            want["currency"],
            exp_ts,
            want["note"],
        )
        if tuple(got) != expected:
            raise RuntimeError(f"landed row differs from input:\n got  {tuple(got)}\n want {expected}")
    return len(idx)


def run_peer(
    *,
    bootstrap: str,
    pg_dsn: str,
    database: str,
    table: str,
    rows: list[dict[str, object]],
    partitions: int = 6,
    batch_size: int = 5000,
    work_dir: pathlib.Path,
    progress: Callable[[int, int], None] | None = None,
    insert_mode: str = "upsert",
    unnest: bool = True,
    timeout_s: float | None = None,
) -> dict[str, float | int | str]:
    """Land ``rows`` into ``database``.``table`` through Kafka Connect + Debezium JDBC sink.

    The table must already exist (created by the caller with the shared DDL)
    and be empty: the connector runs with schema.evolution=none so it never
    creates or alters it, and both writers land into identical tables.

    Timing: ``seconds`` runs from the first publish to the last row visible
    (the same span KaPoW is measured over); ``landing_seconds`` from the JVM
    start to the last row (includes JVM/Connect start-up, ~5-10 s);
    ``steady_seconds`` from the first poll that saw rows to the last row
    (``steady_packets_per_s`` is the sink's sustained rate, without start-up).

    ``insert_mode``: "upsert" (INSERT .. ON CONFLICT DO UPDATE) is the default
    because it is idempotent under redelivery, like KaPoW; "insert" is
    measured for reference only - a redelivered batch would fail on the
    primary key. ``unnest`` enables Debezium's documented PostgreSQL fast path
    (one INSERT .. SELECT FROM unnest(arrays) per batch instead of a JDBC batch).
    """
    n = len(rows)
    if n == 0:
        raise ValueError("rows is empty")
    if insert_mode not in ("insert", "upsert"):
        raise ValueError("insert_mode must be 'insert' or 'upsert'")
    if timeout_s is None:
        timeout_s = max(120.0, n / 500.0)
    work_dir = pathlib.Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    jars = resolve_jars(work_dir / "libs")

    tag = uuid.uuid4().hex[:8]
    topic = f"kapow_peer_{tag}"
    connector = f"kapow-peer-{tag}"
    group = f"connect-{connector}"
    port = _free_port()
    run_dir = work_dir / f"run-{tag}"
    run_dir.mkdir()
    log_file = run_dir / "connect.log"
    jdbc_url, jdbc_user, jdbc_password = _jdbc_url(pg_dsn, database)
    db_dsn = make_conninfo(pg_dsn, dbname=database)

    log4j = run_dir / "log4j2.properties"
    log4j.write_text(
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        # Hibernate/c3p0 are chatty at INFO and add nothing to a benchmark log.
        "logger.hibernate.name = org.hibernate\nlogger.hibernate.level = WARN\n"
        "logger.c3p0.name = com.mchange\nlogger.c3p0.level = WARN\n"
    )
    worker_props = run_dir / "worker.properties"
    _write_props(
        worker_props,
        {
            "bootstrap.servers": bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "offset.storage.file.filename": run_dir / "connect.offsets",
            "offset.flush.interval.ms": 10000,
            "listeners": f"http://127.0.0.1:{port}",
            "rest.advertised.host.name": "127.0.0.1",
            # No plugin.path at all (Connect 4.x rejects an empty one): the
            # connector sits on the JVM classpath. Every plugin there ships a
            # ServiceLoader manifest, so skip the slow reflective classpath scan.
            "plugin.discovery": "service_load",
            # Sink consumers: fetch and hand over big batches so the sink can
            # write batch.size rows per statement (default max.poll.records=500
            # would cap every flush at 500 rows).
            "consumer.max.poll.records": batch_size,
            "consumer.fetch.min.bytes": 1,
            "consumer.max.partition.fetch.bytes": 10 * 1024 * 1024,
            "consumer.fetch.max.bytes": 64 * 1024 * 1024,
            "consumer.auto.offset.reset": "earliest",
        },
    )
    connector_props = run_dir / "connector.properties"
    _write_props(
        connector_props,
        {
            "name": connector,
            "connector.class": CONNECTOR_CLASS,
            "tasks.max": partitions,  # one task per partition, as KaPoW gets
            "topics": topic,
            "connection.url": jdbc_url,
            "connection.username": jdbc_user,
            "connection.password": jdbc_password,
            # Each task writes through one connection at a time; keep the c3p0
            # pool small so we do not eat the shared server's max_connections.
            "connection.pool.min_size": 1,
            "connection.pool.max_size": 2,
            "insert.mode": insert_mode,
            "primary.key.mode": "record_key",
            "primary.key.fields": "event_id",
            "schema.evolution": "none",  # caller creates the table; never DDL
            "collection.name.format": table,
            "quote.identifiers": "false",
            "delete.enabled": "false",
            "batch.size": batch_size,
            "dialect.postgres.unnest.insert.enabled": "true" if unnest else "false",
            "errors.tolerance": "none",  # a bad record must fail loudly, not vanish
        },
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    proc: subprocess.Popen[bytes] | None = None
    result: dict[str, float | int | str] = {}
    try:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            count_q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            row = conn.execute(count_q).fetchone()
            if row is None or row[0] != 0:
                raise RuntimeError(f"{database}.{table} must exist and be empty before the run")

            _create_topic(admin, topic, partitions)
            t_publish = time.monotonic()
            _publish(bootstrap, topic, rows, timeout_s)
            t_published = time.monotonic()

            cmd = [
                "java",
                "-Xmx2g",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                os.pathsep.join(str(j) for j in jars),
                "org.apache.kafka.connect.cli.ConnectStandalone",
                str(worker_props),
                str(connector_props),
            ]
            with open(run_dir / "jvm.out", "wb") as out:
                t_start = time.monotonic()
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir)
            deadline = t_start + timeout_s
            landed = 0
            t_first: float | None = None
            first_count = 0
            next_status = t_start + 5
            while True:
                now = time.monotonic()
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"Connect JVM exited with {proc.returncode} after {landed}/{n} rows; log tail:\n"
                        f"{_log_tail(log_file)}\n{_log_tail(run_dir / 'jvm.out', 20)}"
                    )
                row = conn.execute(count_q).fetchone()
                landed = int(row[0]) if row else 0
                if landed and t_first is None:
                    t_first, first_count = time.monotonic(), landed
                if progress is not None:
                    progress(landed, n)
                if landed >= n:
                    t_end = time.monotonic()
                    break
                if now >= next_status:
                    failure = _connector_failure(port, connector)
                    if failure:
                        raise RuntimeError(f"connector failed after {landed}/{n} rows:\n{failure}")
                    next_status = now + 5
                if now > deadline:
                    raise TimeoutError(
                        f"only {landed}/{n} rows landed within {timeout_s:.0f} s; log tail:\n{_log_tail(log_file)}"
                    )
                time.sleep(0.25)
            cpu_s, rss = _proc_stats(proc.pid)
            verified = _verify_sample(conn, table, rows)

        seconds = t_end - t_publish
        landing = t_end - t_start
        # Rate between the first poll that saw rows and the last one; 0 when
        # everything landed between two polls (run too small to tell).
        steady = t_end - (t_first if t_first is not None else t_start)
        steady_rate = (n - first_count) / steady if steady > 0 else 0.0
        result = {
            "writer": "kafka-connect+debezium-jdbc",
            "packets": n,
            "partitions": partitions,
            "batch_size": batch_size,
            "seconds": round(seconds, 3),
            "publish_seconds": round(t_published - t_publish, 3),
            "landing_seconds": round(landing, 3),
            "steady_seconds": round(steady, 3),
            "packets_per_s": round(n / seconds, 1),
            "packets_per_min": round(60 * n / seconds, 1),
            "landing_packets_per_s": round(n / landing, 1),
            "steady_packets_per_s": round(steady_rate, 1),
            "insert_mode": insert_mode,
            "unnest_insert": "true" if unnest else "false",
            "connector": CONNECTOR_CLASS,
            "connector_version": DEBEZIUM_JDBC_VERSION,
            "kafka_connect_version": KAFKA_CONNECT_VERSION,
            "postgresql_jdbc_version": POSTGRESQL_JDBC_VERSION,
            "jvm_cpu_seconds": round(cpu_s, 2),
            "jvm_peak_rss_bytes": rss,
            "jvm_peak_rss_mib": round(rss / 2**20, 1),
            "verified_sample_rows": verified,
            "log": str(log_file),
        }
        return result
    finally:
        if proc is not None:
            _stop_jvm(proc)
        _cleanup_kafka(admin, topic, group)


# ------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Create a scratch database + table, run the peer, print JSON, drop the database."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="DSN of an admin database on the server (the scratch database is created next to it)",
    )
    ap.add_argument("-n", "--rows", type=int, default=50_000)
    ap.add_argument("-p", "--partitions", type=int, default=6)
    ap.add_argument("-b", "--batch-size", type=int, default=5000)
    ap.add_argument("--insert-mode", choices=("upsert", "insert"), default="upsert")
    ap.add_argument("--no-unnest", action="store_true", help="disable dialect.postgres.unnest.insert.enabled")
    ap.add_argument(
        "--work-dir",
        type=pathlib.Path,
        default=None,
        help="where jars are cached and Connect runs (default: a temp dir, jars cached in /tmp)",
    )
    args = ap.parse_args(argv)

    database = f"kapow_peer_{uuid.uuid4().hex[:8]}"
    table = "bench_events"
    work_dir = args.work_dir or pathlib.Path(tempfile.gettempdir()) / "kapow-peer"
    rows = make_rows(args.rows)
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        with psycopg.connect(make_conninfo(args.dsn, dbname=database), autocommit=True) as conn:
            conn.execute(sql.SQL(TABLE_DDL).format(table=sql.Identifier(table)))
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 5 or done >= total:
                last[0] = now
                print(f"peer: {done}/{total} rows landed", file=sys.stderr, flush=True)

        result = run_peer(
            bootstrap=args.bootstrap,
            pg_dsn=args.dsn,
            database=database,
            table=table,
            rows=rows,
            partitions=args.partitions,
            batch_size=args.batch_size,
            work_dir=work_dir,
            progress=progress,
            insert_mode=args.insert_mode,
            unnest=not args.no_unnest,
        )
        print(json.dumps(result, indent=2))
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

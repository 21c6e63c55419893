"""One run of the peer: a fresh topic, the records published, ``ConnectStandalone`` started, the table polled until
it holds what it must, the JVM stopped, the topic and group removed (always, in a ``finally``).

The worker and the connector are tuned as ``bench/peer/README.md`` says (``tasks.max`` = partitions, batch 5000
with ``consumer.max.poll.records`` to match, upsert with the unnest fast path, a small connection pool per task).
For change events and upserts with repeated keys inside one batch the sink's reduction buffer is on: without it one
``INSERT … ON CONFLICT`` would touch a row twice and fail, and it is the sink's documented answer to that.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg.conninfo import conninfo_to_dict

from kapow_bench.cpu import proc_cpu, proc_peak_rss
from kapow_bench.peer import (
    CONNECTOR_CLASS,
    DEBEZIUM_JDBC_VERSION,
    KAFKA_CONNECT_VERSION,
    POSTGRESQL_JDBC_VERSION,
)
from kapow_bench.peer.jars import resolve_jars


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


def _publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], timeout_s: float) -> None:
    """Publish every (key, value) once; fail if any delivery fails or the flush times out."""
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None and len(errors) < 10:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
                         "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
                         "compression.type": "lz4", "enable.idempotence": True})
    deadline = time.monotonic() + timeout_s
    for key, value in records:
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


def _worker_props(*, bootstrap: str, run_dir: pathlib.Path, port: int, batch_size: int) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
        "offset.storage.file.filename": run_dir / "connect.offsets",
        "offset.flush.interval.ms": 10000,
        "listeners": f"http://127.0.0.1:{port}",
        "rest.advertised.host.name": "127.0.0.1",
        # No plugin.path at all (Connect 4.x rejects an empty one): the connector sits on the JVM classpath, and
        # every plugin there ships a ServiceLoader manifest, so the slow reflective classpath scan is skipped.
        "plugin.discovery": "service_load",
        # Hand the sink whole batches: the default max.poll.records=500 would cap every flush at 500 rows.
        "consumer.max.poll.records": batch_size,
        "consumer.fetch.min.bytes": 1,
        "consumer.max.partition.fetch.bytes": 10 * 1024 * 1024,
        "consumer.fetch.max.bytes": 64 * 1024 * 1024,
        "consumer.auto.offset.reset": "earliest",
    }


def _log4j(run_dir: pathlib.Path, log_file: pathlib.Path) -> pathlib.Path:
    path = run_dir / "log4j2.properties"
    path.write_text(
        "status = warn\nappender.file.type = File\nappender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\nappender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\nrootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        # Hibernate and c3p0 are chatty at INFO and add nothing to a benchmark log.
        "logger.hibernate.name = org.hibernate\nlogger.hibernate.level = WARN\n"
        "logger.c3p0.name = com.mchange\nlogger.c3p0.level = WARN\n")
    return path


def run_peer(*, bootstrap: str, pg_dsn: str, database: str, table: str, records: list[tuple[bytes, bytes]],
             landed: Callable[[], tuple[int, bool]], partitions: int = 6, batch_size: int = 5000,
             work_dir: pathlib.Path, insert_mode: str = "upsert", delete_enabled: bool = False,
             reduction_buffer: bool = False, unnest: bool = True, timeout_s: float | None = None,
             on_start: Callable[[int], None] | None = None, on_landed: Callable[[], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Land ``records`` (Connect JSON keys and values) into ``database.table`` through Connect + the JDBC sink.

    The table must exist (``schema.evolution=none``: the sink never creates or alters it, so both writers land
    into identical tables). ``landed()`` says how far the table is (rows, done?); it is polled every 0.5 s.
    ``on_start(pid)`` is called as the JVM starts and ``on_landed()`` once the table is done, before the JVM is
    stopped, so a caller can meter exactly the landing. ``jvm_started_at`` (epoch seconds) starts the same clock
    as KaPoW's pre-filled runs; the caller ends it with the database's own stamp.
    """
    n = len(records)
    if n == 0:
        raise ValueError("no records")
    if insert_mode not in ("insert", "upsert"):
        raise ValueError("insert_mode must be 'insert' or 'upsert'")
    timeout_s = timeout_s or max(120.0, n / 500.0)
    work_dir = pathlib.Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    jars = resolve_jars(work_dir / "libs")
    tag = uuid.uuid4().hex[:8]
    topic, connector = f"kapow_peer_{tag}", f"kapow-peer-{tag}"
    group = f"connect-{connector}"
    port = _free_port()
    run_dir = work_dir / f"run-{tag}"
    run_dir.mkdir()
    log_file = run_dir / "connect.log"
    jdbc_url, jdbc_user, jdbc_password = _jdbc_url(pg_dsn, database)
    worker_props, connector_props = run_dir / "worker.properties", run_dir / "connector.properties"
    _write_props(worker_props, _worker_props(bootstrap=bootstrap, run_dir=run_dir, port=port, batch_size=batch_size))
    _write_props(connector_props, {
        "name": connector, "connector.class": CONNECTOR_CLASS,
        "tasks.max": partitions,  # one task per partition, as KaPoW gets
        "topics": topic, "connection.url": jdbc_url, "connection.username": jdbc_user,
        "connection.password": jdbc_password,
        # A task writes through one connection at a time: a small pool spares the shared server's connections.
        "connection.pool.min_size": 1, "connection.pool.max_size": 2,
        "insert.mode": insert_mode, "primary.key.mode": "record_key", "primary.key.fields": "event_id",
        "schema.evolution": "none", "collection.name.format": table, "quote.identifiers": "false",
        "delete.enabled": str(delete_enabled).lower(), "use.reduction.buffer": str(reduction_buffer).lower(),
        "batch.size": batch_size, "dialect.postgres.unnest.insert.enabled": str(unnest).lower(),
        "errors.tolerance": "none",  # a bad record must fail loudly, not vanish
    })
    admin = AdminClient({"bootstrap.servers": bootstrap})
    proc: subprocess.Popen[bytes] | None = None
    try:
        _create_topic(admin, topic, partitions)
        t_publish = time.monotonic()
        _publish(bootstrap, topic, records, timeout_s)
        publish_s = time.monotonic() - t_publish
        cmd = ["java", "-Xmx2g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={_log4j(run_dir, log_file)}",
               "-cp", os.pathsep.join(str(j) for j in jars),
               "org.apache.kafka.connect.cli.ConnectStandalone", str(worker_props), str(connector_props)]
        with open(run_dir / "jvm.out", "wb") as out:
            started_at = time.time()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=run_dir)
        if on_start is not None:
            on_start(proc.pid)
        deadline = time.monotonic() + timeout_s
        next_status = time.monotonic() + 5
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Connect JVM exited with {proc.returncode}; log tail:\n{_log_tail(log_file)}\n"
                                   f"{_log_tail(run_dir / 'jvm.out', 20)}")
            rows, done = landed()
            if progress is not None:
                progress(rows, n)
            if done:
                break
            now = time.monotonic()
            if now >= next_status:
                failure = _connector_failure(port, connector)
                if failure:
                    raise RuntimeError(f"connector failed after {rows}/{n} rows:\n{failure}")
                next_status = now + 5
            if now > deadline:
                raise TimeoutError(f"the table was not done within {timeout_s:.0f} s; log tail:\n{_log_tail(log_file)}")
            time.sleep(0.5)
        if on_landed is not None:
            on_landed()
        cpu, rss = proc_cpu(proc.pid), proc_peak_rss(proc.pid)
        return {"writer": "kafka-connect+debezium-jdbc", "jvm_started_at": started_at,
                "publish_seconds": round(publish_s, 3), "insert_mode": insert_mode, "unnest_insert": unnest,
                "delete_enabled": delete_enabled, "reduction_buffer": reduction_buffer,
                "connector": CONNECTOR_CLASS, "connector_version": DEBEZIUM_JDBC_VERSION,
                "kafka_connect_version": KAFKA_CONNECT_VERSION, "postgresql_jdbc_version": POSTGRESQL_JDBC_VERSION,
                "jvm_cpu_seconds": round(cpu, 2), "jvm_peak_rss_mib": round(rss / 2**20, 1), "log": str(log_file)}
    finally:
        if proc is not None:
            _stop_jvm(proc)
        _cleanup_kafka(admin, topic, group)

"""Tools for integration tests: real Kafka and PostgreSQL, fresh uuid-named topics and databases, and the writer
run as a real process (so that signals, ``kill -9`` and exit codes are the real thing)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from kapow.client import Publisher
from kapow.contract import CONTEXT_VALUE, make_packet
from kapow.kafka.clients import delete_topics, ensure_topics

BOOTSTRAP = os.environ.get("KAPOW_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('KAPOW_KAFKA_PORT') or 9092}"
PG_HOST = os.environ.get("KAPOW_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("KAPOW_PG_PORT", "5432"))
ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"


CONTEXT = CONTEXT_VALUE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def dsn(database: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user=postgres dbname={database}"


def create_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(prefix: str, *, encoding: str | None = None) -> Iterator[str]:
    """A database of its own for a module or a test (``encoding``: e.g. LATIN1, with the C locale), dropped after."""
    name = uid(prefix)
    if encoding is None:
        create_database(name)
    else:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'"
                         " TEMPLATE template0")
    try:
        yield name
    finally:
        drop_database(name)


_tables = iter(range(1_000_000_000))


def new_table(database: str, ddl: str, prefix: str = "t") -> str:
    """A table made from ``ddl`` (``{name}`` filled with a fresh name), which it returns."""
    name = f"{prefix}{next(_tables)}_{uid('x')[2:]}"
    sql(database, ddl.format(name=name))
    return name


def sql(database: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        cur = conn.execute(statement.encode(), params)  # test-owned SQL, never packet content
        return cur.fetchall() if cur.description else []


def scalar(database: str, statement: str, params: tuple[Any, ...] = ()) -> Any:
    rows = sql(database, statement, params)
    return rows[0][0]


def create_topic(name: str, partitions: int = 6) -> None:
    ensure_topics(BOOTSTRAP, {name: partitions})


def topics() -> set[str]:
    return set(AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=10).topics)


def remove_topics(names: Iterable[str]) -> None:
    delete_topics(BOOTSTRAP, list(names))


@dataclass
class Queue:
    """A source topic and its system-errors topic (the redrive's ``.done`` markers go beside the latter)."""

    source: str
    system: str

    @property
    def done(self) -> str:
        return f"{self.system}.done"


@contextmanager
def queue_topics(prefix: str, partitions: int) -> Iterator[Queue]:
    """A fresh source and system-errors topic pair, removed afterwards with the markers topic."""
    base = uid(prefix)
    q = Queue(f"{base}.in", f"{base}.system")
    create_topic(q.source, partitions)
    create_topic(q.system, partitions)
    try:
        yield q
    finally:
        remove_topics([q.source, q.system, q.done])


def publish(topic: str, values: Iterable[bytes], *, pipeline: bool = True,
            headers: list[tuple[str, bytes]] | None = None) -> int:
    n = 0
    with Publisher(BOOTSTRAP, topic) as pub:
        for value in values:  # keyed by sequence number, so that every partition gets its share
            pub.send_raw(value, str(n).encode(), pipeline=pipeline, headers=headers)
            n += 1
    return n


def dest(database: str, table: str, vanity: str = "wh", schema: str = "public") -> dict[str, str]:
    return {"type": "postgres", "vanity": vanity, "database": database, "schema": schema, "table": table}


def packets(destinations: list[dict[str, str]], rows: Iterable[dict[str, Any]]) -> list[bytes]:
    return [make_packet(destinations, row) for row in rows]


def end_offsets(topic: str) -> dict[int, int]:
    """Each partition's end. A topic the writer has just created (its error topics are made beside its group
    join) can answer NOT_LEADER_FOR_PARTITION for a moment: asked again, for up to 10 s."""
    deadline = time.monotonic() + 10
    while True:
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": uid("probe")})
        try:
            meta = c.list_topics(topic, timeout=10)
            out = {}
            for p in meta.topics[topic].partitions:
                _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                out[p] = high
            return out
        except KafkaException as exc:
            transient = exc.args[0].code() in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                                               KafkaError.UNKNOWN_TOPIC_OR_PART)
            if not transient or time.monotonic() > deadline:
                raise
        finally:
            c.close()
        time.sleep(0.2)


def committed_offsets(group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
    try:
        meta = c.list_topics(topic, timeout=10)
        tps = [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        return {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


def read_all(topic: str, *, expect: int | None = None, timeout: float = 30.0,
             allow_missing: bool = False) -> list[Record]:
    """Every record on ``topic`` (from the start); with ``expect``, wait until that many arrived.

    A topic that does not exist is an error (an empty list would make ``read_all(t) == []`` pass for a typo),
    unless ``allow_missing``.
    """
    # EOF, not the end offset, marks the end: the last offset of a topic written in transactions (the redrive's)
    # is a commit marker no consumer ever sees
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": uid("reader"), "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    out: list[Record] = []
    try:
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
        if expect is not None:  # records are expected: the topic may still be on its way (a writer creating it)
            wait_for(lambda: topic in admin.list_topics(timeout=10).topics, timeout, f"topic {topic}")
        if topic not in admin.list_topics(timeout=10).topics:
            assert allow_missing, f"topic {topic} does not exist"
            return out
        ends = end_offsets(topic)
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        at_end: set[int] = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if expect is None and at_end >= set(ends):
                break
            if expect is not None and len(out) >= expect:
                break
            for msg in c.consume(1000, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and msg.offset() >= ends.get(msg.partition(), 0) - 1:
                        at_end.add(msg.partition())
                    continue
                out.append(Record(msg.key(), msg.value(), dict(msg.headers() or []), msg.partition(), msg.offset()))
        return out
    finally:
        c.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Env:
    """One test's world: its topic, error topics, group and databases, with a config to match."""

    topic: str
    group: str
    user_errors: str
    system_errors: str
    databases: list[str]
    tmp: Path
    extra_destinations: list[dict[str, Any]] = field(default_factory=list)
    pipeline: dict[str, Any] = field(default_factory=dict)
    destination: dict[str, Any] = field(default_factory=dict)  # more keys for the main "wh" destination
    http_listen: str | None = None  # HTTP on this address (off when None)
    routes: list[dict[str, Any]] = field(default_factory=list)  # [[routes]] tables

    def config_text(self) -> str:
        lines = [
            "[kafka]",
            f'bootstrap_servers = "{BOOTSTRAP}"',
            f'group_id = "{self.group}"',
            f'topics = ["{self.topic}"]',
            f'user_errors_topic = "{self.user_errors}"',
            f'system_errors_topic = "{self.system_errors}"',
            "",
            "[[destinations]]",
            'vanity = "wh"',
            f'host = "{PG_HOST}"',
            f"port = {PG_PORT}",
            'user = "postgres"',
            "databases = [" + ", ".join(f'"{d}"' for d in self.databases) + "]",
            "max_connections = 4",
        ] + [f"{k} = {_toml(v)}" for k, v in self.destination.items()]
        for extra in self.extra_destinations:
            lines += ["", "[[destinations]]"] + [f"{k} = {_toml(v)}" for k, v in extra.items()]
        for route in self.routes:
            lines += ["", "[[routes]]"]
            for k, v in route.items():
                if isinstance(v, dict):
                    lines.append(f"{k} = {{ " + ", ".join(f"{a} = {_toml(b)}" for a, b in v.items()) + " }")
                else:
                    lines.append(f"{k} = {_toml(v)}")
        lines += ["", "[pipeline]"] + [f"{k} = {_toml(v)}" for k, v in self.pipeline.items()]
        http = ["enabled = false"] if self.http_listen is None else [f'listen = "{self.http_listen}"']
        lines += ["", "[http]", *http, "", "[log]", 'format = "json"']
        return "\n".join(lines) + "\n"

    def write_config(self) -> Path:
        path = self.tmp / f"{self.group}.toml"
        path.write_text(self.config_text())
        return path


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


class WriterProcess:
    """``kapow run -c CONFIG`` as a child process; its log lines are kept in a file for assertions."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kapow", "run", "-c", str(config)],
                                     stdout=self._log, stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def close(self) -> None:
        if self.alive():
            self.stop()
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.alive():  # the wait above failed the test; reap the writer so that it fails only this one
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()

    def wait_assigned(self, timeout: float = 30.0) -> None:
        wait_for(lambda: "partitions assigned" in self.log() or not self.alive(), timeout, "partition assignment")
        assert self.alive(), f"writer exited early:\n{self.log()[-3000:]}"

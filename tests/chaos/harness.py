"""The chaos harness: a scenario's world (topics, group, tables), its load, its writers, its faults' timeline,
and the exact accounting every scenario ends with.

Accounting (PRODUCT.md §4-§5), checked by :meth:`Scenario.finish`:

* every published id is in its table, or (poison) on the user-errors topic, never both, never neither;
* a packet parked on the system-errors topic is never poison, and every parked packet is redriven by the writers
  themselves (its DLQ marker says ``redriven``: no command is typed) and lands;
* no duplicate rows, and replays measured by the database: a BEFORE INSERT trigger counts every row a committed
  statement tried (a replay, ``ON CONFLICT DO NOTHING``, included), so attempted - rows is the exact number of
  replayed rows, bounded where a scenario says so (a clean SIGTERM replays nothing);
* committed offsets never pass what is durable: at audit moments (:meth:`Scenario.audit`) we read the group's
  committed offsets *first*, then the table's ids and the error topics' ends; every record below a committed
  offset must be in that table snapshot or on an error topic below that snapshot's end;
* every writer still alive at the end exits 0 on SIGTERM.

Each finished scenario appends one JSON line of numbers to ``$KAPOW_CHAOS_RESULTS`` (for docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from kapow.kafka.clients import delete_topics, ensure_topics
from tests.chaos.feed import is_poison
from tests.integration.kit import WriterProcess

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("KAPOW_BOOTSTRAP") or f"127.0.0.1:{os.environ.get('KAPOW_KAFKA_PORT') or 9092}"
PG_HOST = os.environ.get("KAPOW_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("KAPOW_PG_PORT", "5432"))
LONG = os.environ.get("KAPOW_CHAOS", "short") == "long"

EVENTS_DDL = """
CREATE TABLE public.events (
    id      bigint PRIMARY KEY,
    account text NOT NULL,
    amount  numeric(12,2) NOT NULL,
    at      timestamptz NOT NULL
);
CREATE TABLE inserted (n bigint NOT NULL);
INSERT INTO inserted VALUES (0);
CREATE TABLE attempted (n bigint NOT NULL);
INSERT INTO attempted VALUES (0);
CREATE FUNCTION count_insert() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN UPDATE inserted SET n = n + 1; RETURN NEW; END$$;
CREATE FUNCTION count_attempt() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN UPDATE attempted SET n = n + 1; RETURN NEW; END$$;
CREATE TRIGGER t_count AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION count_insert();
-- BEFORE triggers fire for every row a committed statement tried, conflicts (replays) included: attempted - rows
-- is the exact number of replayed rows, measured by the database, not parsed from a log line
CREATE TRIGGER t_attempt BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION count_attempt();
"""

QUIET = {"log_level": 0}


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> float:
    """Wait until ``predicate()``; return the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return time.monotonic() - started
        except (psycopg.Error, OSError):  # a database mid-restart: ask again
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------------- Kafka helpers
def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uid("probe"), **QUIET})
    try:
        meta = c.list_topics(topic, timeout=20)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            return {}
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1] for p in info.partitions}
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **QUIET})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: max(tp.offset, 0) for tp in c.committed(tps, timeout=20)}
    finally:
        c.close()


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: str
    headers: dict[str, bytes]
    value: bytes | None = None


def read_topic(bootstrap: str, topic: str, timeout: float = 120.0, *, with_values: bool = False) -> list[Rec]:
    """Every record of ``topic`` up to its current end."""
    ends = end_offsets(bootstrap, topic)
    out: list[Rec] = []
    todo = {p: e for p, e in ends.items() if e > 0}
    if not todo:
        return out
    # EOF, not the end offset, ends the read: a transactional topic's last offset is a commit marker that no
    # consumer ever sees (the redrive writes its copies and DLQ markers in transactions)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uid("reader"), "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True, **QUIET})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in todo])
        deadline = time.monotonic() + timeout
        open_ = set(todo)
        while open_:
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic}: timed out with partitions {sorted(open_)} unfinished")
            for msg in c.consume(5000, 0.5):
                err = msg.error()
                p, o = msg.partition(), msg.offset()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and o >= todo.get(p, 0) - 1:
                        open_.discard(p)
                    continue
                if o < todo[p]:
                    headers = {k: v for k, v in (msg.headers() or []) if v is not None}
                    out.append(Rec(p, o, (msg.key() or b"").decode(), headers,
                                   msg.value() if with_values else None))
        return out
    finally:
        c.close()


def any_record_from(bootstrap: str, topic: str, offsets: dict[int, int], timeout: float = 30.0) -> bool:
    """Is there a record (not only transaction markers) at or after these offsets?"""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": uid("peek"), "enable.auto.commit": False,
                  "enable.partition.eof": True, **QUIET})
    try:
        c.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
        open_ = set(offsets)
        deadline = time.monotonic() + timeout
        while open_ and time.monotonic() < deadline:
            for msg in c.consume(100, 0.5):
                err = msg.error()
                if err is None:
                    return True
                if err.code() == KafkaError._PARTITION_EOF:
                    open_.discard(msg.partition())
        return bool(open_)
    finally:
        c.close()


def create_topic(bootstrap: str, name: str, partitions: int, replication: int = 1,
                 config: dict[str, str] | None = None) -> None:
    from confluent_kafka.admin import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    for future in admin.create_topics([NewTopic(name, partitions, replication, config=config or {})],
                                      operation_timeout=30).values():
        future.result(60)
    wait_for(lambda: name in admin.list_topics(timeout=10).topics, 30, f"topic {name}")


# ---------------------------------------------------------------------------------------------- the scenario
@dataclass
class Dest:
    """One destination table as the writer reaches it (host/port, maybe a proxy) and as the test reads it."""

    vanity: str
    database: str
    host: str = PG_HOST
    port: int = PG_PORT  # what the writer connects to
    read_port: int = PG_PORT  # what the test reads through (never a faulty proxy)
    statement_timeout_ms: int = 30_000
    max_connections: int = 4
    connect_timeout_s: float = 5.0

    def packet_dest(self) -> dict[str, str]:
        return {"type": "postgres", "vanity": self.vanity, "database": self.database, "schema": "public",
                "table": "events"}

    def dsn(self, database: str | None = None) -> str:
        return f"host={self.host} port={self.read_port} user=postgres dbname={database or self.database}"

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(statement.encode())
            return cur.fetchall() if cur.description else []


@dataclass
class Audit:
    """One moment's view: committed offsets (read first), then what was durable."""

    label: str
    committed: dict[int, int]
    table_ids: set[int]
    error_ends: dict[str, dict[int, int]]
    clean: bool = False  # taken after a clean stop: nothing may have landed beyond the committed offsets


@dataclass
class Scenario:
    name: str
    tmp: Path
    bootstrap: str = BOOTSTRAP
    partitions: int = 6
    dests: list[Dest] = field(default_factory=list)
    pipeline: dict[str, Any] = field(default_factory=lambda: {"batch_max_messages": 500})
    kafka_settings: dict[str, Any] = field(default_factory=dict)
    replicas: int = 1
    replays_expected: bool = True  # a crash or takeover may legitimately replay an uncommitted tail

    def __post_init__(self) -> None:
        base = uid(f"chaos_{self.name}")
        self.topic = f"{base}.in"
        self.group = f"{base}.group"
        self.user_errors = f"{base}.user"
        self.system_errors = f"{base}.system"
        self.writers: list[WriterProcess] = []
        self.feeds: list[subprocess.Popen[bytes]] = []
        self.published = 0
        self.audits: list[Audit] = []
        self.events: list[tuple[str, float, float | None]] = []  # (fault, started, ended)
        self.samples: list[tuple[float, int]] = []  # (monotonic, trigger counter) of the first destination
        self._monitor_stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.created_dbs: list[Dest] = []
        self.started = time.monotonic()
        self.exit_codes: list[int | None] = []
        self._torn_down = False

    # ------------------------------------------------------------------ setup / teardown
    def setup(self, *, create_topic_now: bool = True) -> Scenario:
        for d in self.dests:
            admin = f"host={d.host} port={d.read_port} user=postgres dbname=postgres"
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'CREATE DATABASE "{d.database}"'.encode())
            self.created_dbs.append(d)
            d.sql(EVENTS_DDL)
        if create_topic_now:
            create_topic(self.bootstrap, self.topic, self.partitions, self.replicas)
        self._monitor = threading.Thread(target=self._watch, daemon=True)
        self._monitor.start()
        return self

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        self._monitor_stop.set()
        for f in self.feeds:
            if f.poll() is None:
                f.kill()
                f.wait(10)
        for w in self.writers:
            if w.alive():
                w.proc.kill()
                w.proc.wait(10)
            w._log.close()
        for d in self.created_dbs:
            try:
                admin = f"host={d.host} port={d.read_port} user=postgres dbname=postgres"
                with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{d.database}" WITH (FORCE)'.encode())
            except psycopg.Error:
                pass  # a private cluster may already be gone; it is removed with its directory
        try:
            names = [self.topic, self.user_errors, self.system_errors, f"{self.system_errors}.done"]
            existing = set(AdminClient({"bootstrap.servers": self.bootstrap, **QUIET}).list_topics(timeout=10).topics)
            gone = [t for t in names if t in existing]
            if gone:
                delete_topics(self.bootstrap, gone)
        except Exception:  # a destroyed cluster takes its topics with it
            pass

    def _watch(self) -> None:
        d = self.dests[0]
        conn: psycopg.Connection[Any] | None = None
        while not self._monitor_stop.wait(0.25):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(d.dsn(), autocommit=True, connect_timeout=2)
                row = conn.execute("SELECT n FROM inserted").fetchone()
                assert row is not None
                self.samples.append((time.monotonic(), int(row[0])))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ config and processes
    def config_text(self) -> str:
        lines = ["[kafka]", f'bootstrap_servers = "{self.bootstrap}"', f'group_id = "{self.group}"',
                 f'topics = ["{self.topic}"]', f'user_errors_topic = "{self.user_errors}"',
                 f'system_errors_topic = "{self.system_errors}"', "", "[kafka.settings]"]
        lines += [f"{json.dumps(k)} = {_toml(v)}" for k, v in {"log_level": 3, **self.kafka_settings}.items()]
        for d in self.dests:
            lines += ["", "[[destinations]]", f'vanity = "{d.vanity}"', f'host = "{d.host}"', f"port = {d.port}",
                      'user = "postgres"', f'databases = ["{d.database}"]', f"max_connections = {d.max_connections}",
                      f"statement_timeout_ms = {d.statement_timeout_ms}", f"connect_timeout_s = {d.connect_timeout_s}"]
        lines += ["", "[pipeline]"] + [f"{k} = {_toml(v)}" for k, v in self.pipeline.items()]
        lines += ["", "[http]", "enabled = false", "", "[log]", 'format = "json"']
        return "\n".join(lines) + "\n"

    def start_writer(self) -> WriterProcess:
        path = self.tmp / f"{self.name}.toml"
        path.write_text(self.config_text())
        w = WriterProcess(path, self.tmp / f"{self.name}-writer-{len(self.writers)}.log")
        self.writers.append(w)
        return w

    def alive_writers(self) -> list[WriterProcess]:
        return [w for w in self.writers if w.alive()]

    def feed(self, count: int, rate: float, start: int | None = None) -> subprocess.Popen[bytes]:
        """Publish ``count`` packets at ``rate``/s from a separate process (continuing the id sequence)."""
        first = self.published if start is None else start
        self.published = max(self.published, first + count)
        cmd = [sys.executable, "-m", "tests.chaos.feed", "--bootstrap", self.bootstrap, "--topic", self.topic,
               "--start", str(first), "--count", str(count), "--rate", str(rate)]
        for d in self.dests:
            cmd += ["--dest", json.dumps(d.packet_dest())]
        out = (self.tmp / f"{self.name}-feed-{len(self.feeds)}.log").open("ab")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)
        out.close()
        self.feeds.append(proc)
        return proc

    def feeding(self) -> bool:
        return any(f.poll() is None for f in self.feeds)

    def landed(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def wait_landed(self, at_least: int, timeout: float = 120.0) -> float:
        return wait_for(lambda: self.landed() >= at_least, timeout, f"{at_least} rows landed in {self.name}")

    # ------------------------------------------------------------------ faults and audits
    def fault(self, what: str) -> int:
        self.events.append((what, time.monotonic(), None))
        return len(self.events) - 1

    def healed(self, index: int) -> None:
        what, started, _ = self.events[index]
        self.events[index] = (what, started, time.monotonic())

    def audit(self, label: str) -> Audit:
        """Committed offsets first, then the durable state: see the module docstring."""
        committed = committed_offsets(self.bootstrap, self.group, self.topic, self.partitions)
        ids: set[int] = set()
        for d in self.dests:
            ids |= {int(r[0]) for r in d.sql("SELECT id FROM events")}
        ends = {t: end_offsets(self.bootstrap, t) for t in (self.user_errors, self.system_errors)}
        a = Audit(label, committed, ids, ends)
        self.audits.append(a)
        return a

    def committed_total(self) -> int:
        return sum(committed_offsets(self.bootstrap, self.group, self.topic, self.partitions).values())

    def all_committed(self) -> bool:
        """Every record of the topic is below the group's committed offset. Only records count: the redrive
        republishes in Kafka transactions, whose commit markers take offsets no consumer ever sees or commits."""
        ends = end_offsets(self.bootstrap, self.topic)
        committed = committed_offsets(self.bootstrap, self.group, self.topic, self.partitions)
        behind = {p: committed.get(p, 0) for p, e in ends.items() if committed.get(p, 0) < e}
        return not behind or not any_record_from(self.bootstrap, self.topic, behind)

    # ------------------------------------------------------------------ the end: drain, reschedule, account
    def parked(self) -> tuple[set[tuple[int, int]], dict[tuple[int, int], str]]:
        """(records on the system-errors topic, their DLQ markers: (partition, offset) -> action)."""
        system = {(r.partition, r.offset) for r in read_topic(self.bootstrap, self.system_errors)}
        marks: dict[tuple[int, int], str] = {}
        for r in read_topic(self.bootstrap, f"{self.system_errors}.done", with_values=True):
            p, _, o = r.key.partition(":")
            marks[(int(p), int(o))] = json.loads(r.value or b"{}").get("action", "?")
        return system, marks

    def unhandled(self) -> int:
        system, marks = self.parked()
        return len(system - set(marks))

    def finish(self, *, drain_timeout: float = 240.0, max_redelivered: int | None = None) -> dict[str, Any]:
        """Wait for the load to land and for every parked packet to be redriven BY THE WRITERS (no command is
        typed: PRODUCT.md §5), stop the writers, and check the accounting."""
        for f in self.feeds:
            assert f.wait(600) == 0, f"the feed failed: see {self.tmp}"
        assert self.alive_writers(), "no writer left running at the end"
        caught_up = wait_for(self.all_committed, drain_timeout, f"{self.name}: every offset committed")
        wait_for(lambda: self.unhandled() == 0, drain_timeout, f"{self.name}: parked packets redriven by themselves")
        wait_for(self.all_committed, drain_timeout, f"{self.name}: redriven packets committed")
        for w in self.alive_writers():
            code = w.stop(60)
            self.exit_codes.append(code)
            assert code == 0, f"writer exit {code} on SIGTERM:\n{w.log()[-3000:]}"
        self._monitor_stop.set()
        result = self.account(caught_up, max_redelivered)
        # and an operator's view of the same run: kapow audit finds every record's fate, none missing
        from kapow.audit import audit
        from kapow.config import parse_config

        report = audit(parse_config(self.config_text()))
        assert report.missing == 0, f"kapow audit: {report.missing} missing, e.g. {report.missing_examples[:5]}"
        assert report.total == self.published + result["redriven"], (report.total, self.published, result["redriven"])
        result["audit"] = report.counts
        return result

    def account(self, caught_up: float, max_redelivered: int | None) -> dict[str, Any]:
        source = read_topic(self.bootstrap, self.topic)
        user = read_topic(self.bootstrap, self.user_errors)
        system = read_topic(self.bootstrap, self.system_errors)
        ids = [int(r.key) for r in source]
        everything = set(range(self.published))
        assert set(ids) == everything, f"source topic holds {len(set(ids))} distinct ids, published {self.published}"

        poison = {i for i in everything if is_poison(i)}
        good = everything - poison
        table: Counter[int] = Counter()
        attempted = 0
        for d in self.dests:
            rows = d.sql("SELECT id FROM events")
            table.update(int(r[0]) for r in rows)
            attempted += int(d.sql("SELECT n FROM attempted")[0][0])
        assert all(n == 1 for n in table.values()), "an id landed in two tables"
        user_ids = Counter(int(r.key) for r in user)
        missing = good - set(table)
        assert not missing, f"{len(missing)} good packets lost, e.g. {sorted(missing)[:10]}"
        wrong = set(table) - good
        assert not wrong, f"{len(wrong)} poison packets landed, e.g. {sorted(wrong)[:10]}"
        assert set(user_ids) == poison, (f"user errors: missing {sorted(poison - set(user_ids))[:10]}, "
                                         f"unexpected {sorted(set(user_ids) - poison)[:10]}")
        for r in user:
            assert r.headers.get("kapow-error-code") == b"bad_value", r.headers
        # every parked packet was redriven by a writer: a good one then landed (above), a poison one (parked with
        # its table while the table was down, never tried) then failed as the user error it is (above)
        _, marks = self.parked()
        for r in system:
            assert marks.get((r.partition, r.offset)) == "redriven", (
                f"parked record {r.partition}:{r.offset} (id {r.key}) was not redriven by a writer: "
                f"{marks.get((r.partition, r.offset))}")
        redriven = sum(1 for a in marks.values() if a == "redriven")
        replayed = attempted - len(table)
        assert replayed >= 0, f"{attempted} attempted inserts for {len(table)} rows"

        # Routing checks: each id went to its own destination.
        for k, d in enumerate(self.dests):
            here = {int(r[0]) for r in d.sql("SELECT id FROM events")}
            assert all(i % len(self.dests) == k for i in here), f"{d.database} holds another destination's ids"

        # Committed offsets never passed what was durable.
        where = {(r.partition, r.offset): int(r.key) for r in source}
        err_recs = [("user", r) for r in user] + [("system", r) for r in system]
        for a in self.audits:
            on_errors = set()
            for kind, r in err_recs:
                topic = self.user_errors if kind == "user" else self.system_errors
                if r.offset < a.error_ends[topic].get(r.partition, 0) and r.headers.get("kapow-source-topic") == \
                        self.topic.encode():
                    on_errors.add((int(r.headers["kapow-source-partition"]), int(r.headers["kapow-source-offset"])))
            for (p, o), i in where.items():
                if o < a.committed.get(p, 0):
                    assert i in a.table_ids or (p, o) in on_errors, (
                        f"audit {a.label!r}: offset {o} of partition {p} (id {i}) was committed "
                        f"({a.committed[p]}) but was neither landed nor on an error topic")
                elif a.clean:
                    assert i not in a.table_ids, (
                        f"audit {a.label!r}: id {i} at offset {o} of partition {p} had landed but was not committed "
                        f"({a.committed.get(p, 0)}) by a clean stop")

        redelivered = replayed
        result = {
            "scenario": self.name, "mode": "long" if LONG else "short", "sent": self.published,
            "landed": len(table), "user_errors": len(user), "user_error_ids": len(user_ids),
            "parked": len(system), "redriven": redriven, "redelivered": redelivered,
            "attempted_inserts": attempted,
            "writers": len(self.writers), "faults": len(self.events), "audits": len(self.audits),
            "recovery_s": self.recovery(), "caught_up_s": round(caught_up, 1),
            "seconds": round(time.monotonic() - self.started, 1),
        }
        if not self.replays_expected:
            dup_user = sum(n - 1 for n in user_ids.values())
            assert dup_user == 0, f"{dup_user} user error records published twice without a crash"
        if max_redelivered is not None:
            assert redelivered <= max_redelivered, f"{redelivered} rows replayed (at most {max_redelivered} expected)"
        out = os.environ.get("KAPOW_CHAOS_RESULTS")
        if out:
            with open(out, "a") as fh:
                fh.write(json.dumps(result) + "\n")
        print(f"\nCHAOS {json.dumps(result)}", flush=True)
        return result

    def recovery(self) -> float | None:
        """Longest time from a fault's end to the next row landing (None when no fault had an end)."""
        worst: float | None = None
        for _what, _started, ended in self.events:
            if ended is None:
                continue
            before = [n for t, n in self.samples if t <= ended]
            base = before[-1] if before else 0
            after = [t for t, n in self.samples if t > ended and n > base]
            if not after:
                continue
            took = after[0] - ended
            worst = took if worst is None else max(worst, took)
        return None if worst is None else round(worst, 1)


def log_count(text: str, pattern: str) -> int:
    return len(re.findall(pattern, text))


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def sig(w: WriterProcess, s: signal.Signals) -> None:
    w.proc.send_signal(s)


def ensure_error_topics(bootstrap: str, names: list[str]) -> None:
    ensure_topics(bootstrap, {n: 3 for n in names})


__all__ = ["LONG", "Dest", "KafkaError", "Scenario", "wait_for"]

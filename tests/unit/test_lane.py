"""Database lanes without a database: table order, one writer per table, holds, expiry, circuit, cancel, shed.

The lane's decisions are what isolation rests on, so they are tested here with a fake pool and a fake writer
whose outcome each test scripts; the real writer is covered by the integration tests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from confluent_kafka import Message

from kapow.config import parse_config
from kapow.contract import Destination, TableKey
from kapow.errors import ErrorCode, Failure, Scope
from kapow.pipeline.lane import DatabaseLane
from kapow.pipeline.unit import JobOutcome, TableJob
from kapow.pipeline.work import Row, TableWork, WorkResult
from kapow.postgres.catalog import Catalog

CONFIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                      '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\nmax_connections = 3\n'
                      '[pipeline]\nhold_s = 60\nretry_initial_backoff_s = 0.01\nretry_max_backoff_s = 0.05\n'
                      'circuit_failures_to_open = 2\ncircuit_open_s = 0.1\n')
LOCKED = Failure(ErrorCode.TIMEOUT, "canceling statement due to lock timeout", Scope.TABLE)
DOWN = Failure(ErrorCode.DATABASE_UNAVAILABLE, "connection refused", Scope.DATABASE)


class FakePool:
    def __init__(self) -> None:
        self.down = False
        self.in_use = 0
        self.cancelled = 0
        self.lent_to: list[str] = []  # the thread asking, per connection asked for

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        self.lent_to.append(threading.current_thread().name)
        if self.down:
            raise psycopg.OperationalError("connection refused")
        yield self

    def execute(self, _sql: str) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")

    def discard_idle(self) -> None:
        pass

    def cancel_running(self) -> int:
        self.cancelled += 1
        return 0

    def close(self) -> None:
        pass


class Script:
    """The fake writer: records every call; ``rule(key)`` says what a table's write does (None: it lands)."""

    def __init__(self, rule: Callable[[TableKey], Failure | None] = lambda _k: None, delay: float = 0.0,
                 seconds: Callable[[TableKey], float] = lambda _k: 0.0) -> None:
        self.rule = rule
        self.delay = delay
        self.seconds = seconds  # what a table's statements took in the database, as the writer reports it
        self.calls: list[list[tuple[TableKey, list[int]]]] = []
        self.active: dict[TableKey, int] = {}
        self.overlap = False
        self._lock = threading.Lock()

    def __call__(self, _conn: Any, _catalog: Catalog, jobs: list[TableJob]) -> list[JobOutcome]:
        with self._lock:
            self.calls.append([(j.key, [w.batch for w in j.works]) for j in jobs])
            for j in jobs:
                self.active[j.key] = self.active.get(j.key, 0) + 1
                self.overlap = self.overlap or self.active[j.key] > 1
        time.sleep(self.delay)
        out = []
        for job in jobs:
            failure = self.rule(job.key)
            if failure is None:
                results = [WorkResult(w, landed=len(w.rows)) for w in job.works]
                out.append(JobOutcome(job, results=results, seconds=self.seconds(job.key)))
            else:
                out.append(JobOutcome(job, failure=failure, seconds=self.seconds(job.key)))
        with self._lock:
            for j in jobs:
                self.active[j.key] -= 1
        return out


def key(table: str) -> TableKey:
    return TableKey("wh", "db", "public", table)


def work(table: str, batch: int, n: int = 2) -> TableWork:
    dest = Destination("wh", "db", table)
    rows = [Row(Message(topic="in", partition=0, offset=batch * 100 + i, value=b"{}"), b'{"id":1}', ("id",), dest)
            for i in range(n)]
    return TableWork(key(table), CONFIG.destinations[0], rows, batch, 10 * n)


class Harness:
    def __init__(self, script: Script, *, hold_s: float = 60.0, max_connections: int = 3) -> None:
        self.results: list[WorkResult] = []
        self.cond = threading.Condition()
        pipeline = CONFIG.pipeline.__class__(**{**_fields(CONFIG.pipeline), "hold_s": hold_s})
        config = CONFIG.destinations[0].__class__(**{**_fields(CONFIG.destinations[0]),
                                                     "max_connections": max_connections})
        self.pool = FakePool()
        self.lane = DatabaseLane(vanity="wh", database="db", config=config, pipeline=pipeline,
                                 catalog=Catalog(), deliver=self.deliver, pool=self.pool, write=script)

    def deliver(self, result: WorkResult) -> None:
        with self.cond:
            self.results.append(result)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[list[WorkResult]], bool], timeout: float = 10.0) -> list[WorkResult]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.results):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; results: {[(r.work.key.table, r.work.batch) for r in self.results]}"
                self.cond.wait(left)
            return list(self.results)


def _fields(struct: Any) -> dict[str, Any]:
    return {f: getattr(struct, f) for f in struct.__struct_fields__}


def landed(results: list[WorkResult], table: str) -> list[int]:
    return [r.work.batch for r in results if r.work.key.table == table and not r.failed]


def test_one_writer_per_table_in_consumption_order() -> None:
    script = Script(delay=0.01)
    h = Harness(script)
    for batch in range(1, 31):
        for table in ("a", "b", "c"):
            h.lane.submit(work(table, batch))
    h.wait(lambda rs: len(rs) == 90)
    assert not script.overlap, "two workers wrote one table at once"
    for table in ("a", "b", "c"):
        order = [b for call in script.calls for k, batches in call if k.table == table for b in batches]
        assert order == list(range(1, 31)), f"{table} applied out of order: {order}"
    h.lane.close()


def test_tables_of_one_database_share_a_unit_and_queued_works_merge() -> None:
    """One worker, so that it is busy while the works queue up (with three workers for three tables, each could
    take one table at a time on a loaded machine: CI once saw no shared unit in 90 works)."""
    script = Script(delay=0.2)
    h = Harness(script, max_connections=1)
    for batch in range(1, 31):
        for table in ("a", "b", "c"):
            h.lane.submit(work(table, batch))
    h.wait(lambda rs: len(rs) == 90)
    for table in ("a", "b", "c"):
        order = [b for call in script.calls for k, batches in call if k.table == table for b in batches]
        assert order == list(range(1, 31)), f"{table} applied out of order: {order}"
    assert any(len(call) > 1 for call in script.calls), "tables of one database never shared a unit"
    assert max(len(batches) for call in script.calls for _k, batches in call) > 1, "queued works never merged"
    h.lane.close()


def test_a_slow_table_is_written_alone_and_the_others_no_longer_wait_for_it() -> None:
    # a hostile run: a trigger sleeping 10 s (under statement_timeout) on one table made every table of its
    # database land every 10 s, in lockstep with it, since they shared its units
    from kapow.pipeline.lane import SLOW_TABLE_S

    script = Script(delay=0.01, seconds=lambda k: SLOW_TABLE_S + 0.1 if k.table == "slow" else 0.01)
    h = Harness(script, max_connections=1)
    for batch in range(1, 21):  # a batch at a time, each written before the next comes
        for table in ("slow", "a", "b"):
            h.lane.submit(work(table, batch))
        h.wait(lambda rs, n=3 * batch: len(rs) == n)
    shared = [i for i, call in enumerate(script.calls) if len(call) > 1 and any(k.table == "slow" for k, _ in call)]
    assert len(shared) <= 1, f"the slow table shared units {shared} of {len(script.calls)}"
    assert any(len(call) > 1 for call in script.calls), "the other tables still share their units"
    for table in ("slow", "a", "b"):
        order = [b for call in script.calls for k, batches in call if k.table == table for b in batches]
        assert order == list(range(1, 21)), f"{table} applied out of order: {order}"
    h.lane.close()


def test_a_held_table_waits_alone_while_the_others_land() -> None:
    locked = threading.Event()
    locked.set()
    script = Script(lambda k: LOCKED if k.table == "a" and locked.is_set() else None)
    h = Harness(script)
    for batch in range(1, 6):
        h.lane.submit(work("a", batch))
        h.lane.submit(work("b", batch))
    h.wait(lambda rs: len(landed(rs, "b")) == 5)
    assert landed(h.results, "a") == []
    assert not h.lane.healthy(key("a")) and h.lane.healthy(key("b"))
    assert h.lane.circuit.closed, "a locked table must never open its database's circuit"
    locked.clear()
    h.wait(lambda rs: len(landed(rs, "a")) == 5)
    assert landed(h.results, "a") == [1, 2, 3, 4, 5]
    assert all(not r.failed for r in h.results), "a hold shorter than hold_s parks nothing"
    assert h.lane.healthy(key("a"))
    h.lane.close()


def test_past_hold_s_a_held_table_is_parked_with_its_failure() -> None:
    script = Script(lambda k: LOCKED if k.table == "a" else None)
    h = Harness(script, hold_s=0.3)
    started = time.monotonic()
    h.lane.submit(work("a", 1, n=3))
    h.lane.submit(work("b", 1))
    results = h.wait(lambda rs: any(r.failed for r in rs))
    waited = time.monotonic() - started
    parked = [r for r in results if r.failed]
    assert [(r.work.key.table, len(r.failed)) for r in parked] == [("a", 3)]
    assert all(rec.failure.code is ErrorCode.TIMEOUT and "held" in rec.failure.message for rec in parked[0].failed)
    assert 0.3 <= waited < 5
    assert landed(results, "b") == [1]
    h.lane.close()


def test_a_database_down_opens_the_circuit_and_a_timer_probe_reopens_the_lane_without_traffic() -> None:
    script = Script()
    h = Harness(script)
    h.pool.down = True
    h.lane.submit(work("a", 1))
    deadline = time.monotonic() + 5
    while h.lane.circuit.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not h.lane.circuit.closed, "two database failures must open the circuit"
    assert h.results == []  # held, not parked: hold_s is 60 s
    h.pool.down = False  # the database comes back; nothing new is sent
    h.wait(lambda rs: landed(rs, "a") == [1])
    assert h.lane.circuit.closed
    h.lane.close()


def test_while_the_circuit_is_open_only_the_prober_tries_the_database() -> None:
    h = Harness(Script())
    h.pool.down = True
    h.lane.submit(work("a", 1))
    kit_wait(lambda: not h.lane.circuit.closed, "the circuit to open")
    opened_at = len(h.pool.lent_to)
    kit_wait(lambda: sum(n.startswith("kapow-probe-") for n in h.pool.lent_to[opened_at:]) >= 3, "three probes")
    workers = [n for n in h.pool.lent_to[opened_at:] if n.startswith("kapow-lane-")]
    assert workers == [], f"workers tried the database while its circuit was open: {workers}"
    h.pool.down = False
    h.wait(lambda rs: landed(rs, "a") == [1])
    h.lane.close()


def test_a_circuit_opened_by_probes_alone_is_closed_by_the_prober_once_the_database_is_back() -> None:
    """The redrive asks a lane that never wrote (a writer started while its database was down): its probes open the
    circuit, and the prober, started by them, closes it again with no packet submitted (a hostile run: a writer's
    parked packets waited for good, until a new packet for the database came)."""
    h = Harness(Script())
    h.pool.down = True
    kit_wait(lambda: (h.lane.probe(), not h.lane.circuit.closed)[1], "the probes to open the circuit")
    h.pool.down = False
    kit_wait(lambda: h.lane.circuit.closed, "the prober to close the circuit without traffic")
    assert any(n.startswith("kapow-probe-") for n in h.pool.lent_to), "closed by the caller, not by the prober"
    h.lane.close()


def kit_wait(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_cancel_drops_queued_works_and_answers_from_before_it() -> None:
    writing = threading.Event()
    gate = threading.Event()

    def slow(k: TableKey) -> Failure | None:
        writing.set()
        assert gate.wait(10), "the test never opened the gate"
        return None

    script = Script(slow)
    h = Harness(script)
    h.lane.submit(work("a", 1))
    assert writing.wait(10), "batch 1 was never written"
    h.lane.submit(work("a", 2))  # table a is being written: these two wait in its queue
    h.lane.submit(work("a", 3, n=3))
    dropped = h.lane.cancel(running=True)
    assert dropped == 2
    assert h.pool.cancelled == 1
    assert h.lane.queued_bytes == 0
    gate.set()
    h.lane.submit(work("a", 9))
    h.wait(lambda rs: landed(rs, "a") == [9])
    assert [r.work.batch for r in h.results] == [9], "an answer from before the cancel was delivered"
    assert [batches for call in script.calls for _k, batches in call] == [[1], [9]], "a dropped work was written"
    h.lane.close()


def test_shed_parks_what_is_held_at_once() -> None:
    h = Harness(Script(lambda k: LOCKED if k.table == "a" else None))
    for batch in range(1, 4):
        h.lane.submit(work("a", batch))
    deadline = time.monotonic() + 5
    while h.lane.healthy(key("a")) and time.monotonic() < deadline:
        time.sleep(0.01)
    # held now; a shed while the worker tries the table again leaves its works to that attempt (they are being
    # written), so the test sheds until it meets the table between two attempts, as the loop's next shed would
    freed = h.lane.shed()
    while freed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
        freed = h.lane.shed()
    assert freed > 0
    results = h.wait(lambda rs: sum(len(r.failed) for r in rs) >= 2)
    assert all(r.work.key.table == "a" for r in results)
    h.lane.close()


def test_a_bug_in_the_writer_fails_its_tables_never_the_worker() -> None:
    calls = {"n": 0}

    def boom(_conn: Any, _catalog: Catalog, jobs: list[TableJob]) -> list[JobOutcome]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return [JobOutcome(j, results=[WorkResult(w, landed=len(w.rows)) for w in j.works]) for j in jobs]

    h = Harness(Script())
    h.lane._write_unit = boom
    h.lane.submit(work("a", 1))
    h.wait(lambda rs: landed(rs, "a") == [1])
    assert calls["n"] >= 2
    h.lane.close()


def test_a_parked_packet_counts_one_delivery_however_often_its_hold_retried() -> None:
    h = Harness(Script(lambda k: LOCKED), hold_s=0.5)
    h.lane.submit(work("a", 1))
    results = h.wait(lambda rs: any(r.failed for r in rs))
    assert results[0].work.attempts > 2, "the hold never retried: the test proves nothing"
    assert {rec.attempts for rec in results[0].failed} == {1}
    h.lane.close()

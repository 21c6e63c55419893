"""A database lane's decisions one step at a time: which works make a unit, what a failure holds, when a wait ends.

The lane is run without its threads and on a clock the test moves, so that every boundary (a budget met exactly, a
hold that ends exactly now, the back-off doubling to its cap) is checked at its value, not around it. The threaded
behaviour (workers, the prober, order under contention) is in ``test_lane.py``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message
from psycopg import errors as pgerr

from kapow.config import parse_config
from kapow.contract import Destination, TableKey
from kapow.errors import ErrorCode, Failure, Scope
from kapow.pipeline.lane import ALONE_S, SWEEP_S, DatabaseLane
from kapow.pipeline.parklines import ParkLines
from kapow.pipeline.persist import FRESH_S, Persister
from kapow.pipeline.schedule import MAX_TABLES_PER_UNIT, TableQueue
from kapow.pipeline.unit import JobOutcome, TableJob
from kapow.pipeline.work import Row, TableWork, WorkResult
from kapow.postgres.catalog import Catalog
from kapow.postgres.pool import ConnectionPool

CONFIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                      '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\nmax_connections = 3\n'
                      'connect_timeout_s = 20\nstatement_timeout_ms = 7000\nlock_timeout_ms = 900\n'
                      '[pipeline]\nhold_s = 10\nretry_initial_backoff_s = 0.5\nretry_max_backoff_s = 3\n'
                      'circuit_failures_to_open = 2\ncircuit_open_s = 4\nunit_max_rows = 4\n')
LOCKED = Failure(ErrorCode.TIMEOUT, "lock timeout", Scope.TABLE)
DOWN = Failure(ErrorCode.DATABASE_UNAVAILABLE, "refused", Scope.DATABASE)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pool:
    """Lends itself as the connection; ``fail`` is raised by the next statement (or by lending, when ``down``)."""

    def __init__(self) -> None:
        self.down = False
        self.fail: BaseException | None = None
        self.executed: list[str] = []
        self.cancelled = 0
        self.discarded = 0
        self.closed = False
        self.in_use = 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        yield self

    @contextlib.contextmanager
    def transaction(self, force_rollback: bool = False) -> Iterator[None]:
        assert force_rollback, "a probe must never commit"
        yield

    def execute(self, statement: Any) -> None:
        self.executed.append(statement if isinstance(statement, str) else statement.as_string(None))
        if self.fail is not None:
            raise self.fail

    def cancel_running(self) -> int:
        self.cancelled += 1
        return 0

    def discard_idle(self) -> None:
        self.discarded += 1

    def close(self) -> None:
        self.closed = True


class Stepped:
    """A lane without threads: the test takes units (``pick``) and writes them (``write``) itself."""

    def __init__(self, outcome: dict[str, Failure | BaseException] | None = None, *,
                 park_lines: ParkLines | None = None) -> None:
        self.clock = Clock()
        self.pool = Pool()
        self.delivered: list[WorkResult] = []
        self.outcome = outcome if outcome is not None else {}
        self.calls: list[list[str]] = []
        self.lane = DatabaseLane(vanity="wh", database="db", config=CONFIG.destinations[0], pipeline=CONFIG.pipeline,
                                 catalog=Catalog(), deliver=self.delivered.append, clock=self.clock, pool=self.pool,
                                 write=self.write_unit, park_lines=park_lines)
        self.lane._start_threads = lambda: None  # type: ignore[method-assign]

    def write_unit(self, _conn: Any, _catalog: Catalog, jobs: list[TableJob]) -> list[JobOutcome]:
        self.calls.append([j.key.table for j in jobs])
        out = []
        for job in jobs:
            what = self.outcome.get(job.key.table)
            if isinstance(what, BaseException):
                raise what
            if what is None:
                out.append(JobOutcome(job, results=[WorkResult(w, landed=len(w.rows)) for w in job.works]))
            else:
                out.append(JobOutcome(job, failure=what))
        return out

    def pick(self) -> list[TableJob]:
        with self.lane._cond:
            self.lane._expire_locked(self.clock.now)
            return self.lane._pick_locked(self.clock.now)

    def expire(self) -> None:
        with self.lane._cond:
            self.lane._expire_locked(self.clock.now)

    def step(self) -> list[str]:
        """Take one unit and write it; the tables it held."""
        jobs = self.pick()
        if jobs:
            self.lane._write(jobs)
        return [j.key.table for j in jobs]

    def queue(self, table: str) -> TableQueue:
        return self.lane._tables[key(table)]


def key(table: str) -> TableKey:
    return TableKey("wh", "db", "public", table)


_offsets = iter(range(1_000_000))


def work(table: str, batch: int = 1, rows: int = 1, nbytes: int = 10) -> TableWork:
    dest = Destination("wh", "db", table)
    made = [Row(Message(topic="in", partition=0, offset=next(_offsets), value=b"{}"), b'{"id":1}', ("id",), dest)
            for _ in range(rows)]
    return TableWork(key(table), CONFIG.destinations[0], made, batch, nbytes)


# ---------------------------------------------------------------------------------------------------- set-up


class Conn:
    def __init__(self, version: int) -> None:
        self.autocommit = False
        self.calls: list[tuple[str, Any]] = []
        self.info = type("Info", (), {"server_version": version})()

    def execute(self, statement: str, params: Any = None) -> None:
        self.calls.append((statement, params))


def test_the_pool_is_sized_and_bounded_from_the_destination() -> None:
    la = DatabaseLane(vanity="wh", database="db", config=CONFIG.destinations[0], pipeline=CONFIG.pipeline,
                      catalog=Catalog(), deliver=lambda _r: None)
    pool = la.pool
    assert isinstance(pool, ConnectionPool)
    assert (la.name, pool.name, pool.max_size) == ("wh/db", "wh/db", 4)  # one more for the prober
    assert pool._wait_timeout == 40.0 and pool._io_timeout == 7.0 + 20.0
    assert "dbname=db" in pool._conninfo and "application_name=kapow" in pool._conninfo
    conn = Conn(150000)
    assert pool._configure is not None
    pool._configure(conn)  # type: ignore[arg-type]
    assert conn.autocommit
    assert ("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false),"
            " set_config('plan_cache_mode', 'force_generic_plan', false), set_config('jit', 'off', false)",
            ("7000", "900")) in conn.calls
    assert len(conn.calls) == 3  # the apply and refuse functions, the timeouts, the client check
    assert "kapow_apply" in conn.calls[0][0] and "kapow_refuse" in conn.calls[0][0]
    old = Conn(130000)
    pool._configure(old)  # type: ignore[arg-type]
    assert len(old.calls) == 2, "client_connection_check_interval exists from PostgreSQL 14 only"
    first = Conn(140000)
    pool._configure(first)  # type: ignore[arg-type]
    assert len(first.calls) == 3, "PostgreSQL 14.0 has it"
    short = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n[[destinations]]\nvanity = "v"\n'
                         'databases = ["d"]\nconnect_timeout_s = 1\n').destinations[0]
    small = DatabaseLane(vanity="v", database="d", config=short, pipeline=CONFIG.pipeline, catalog=Catalog(),
                         deliver=lambda _r: None).pool
    assert small._wait_timeout == 30.0 and small._io_timeout == 30.0 + 2.0
    assert (la.queued_bytes, la.last_success, la.recently_ok()) == (0, 0.0, False)
    assert la.circuit.name == "wh/db"


# ---------------------------------------------------------------------------------------------------- submit, cancel


def test_submit_queues_with_the_lane_clock_and_counts_bytes() -> None:
    s = Stepped()
    s.lane.submit(work("a", nbytes=7))
    s.clock.now += 1
    s.lane.submit(work("a", nbytes=5))
    assert s.lane.queued_bytes == 12
    assert [w.enqueued_at for w in s.queue("a").works] == [1000.0, 1001.0]
    assert s.lane.busy()
    s.lane.close()
    with pytest.raises(RuntimeError, match="lane wh/db is closed"):
        s.lane.submit(work("a"))
    assert s.pool.closed


def test_a_cancel_drops_the_queue_and_every_answer_from_before_it_even_after_two_cancels() -> None:
    s = Stepped()
    s.lane.submit(work("a", batch=1, nbytes=4))
    s.lane.submit(work("b", batch=1, nbytes=4))
    assert s.lane.cancel() == 2
    assert s.pool.cancelled == 0, "statements are cancelled only when asked (running=True)"
    assert s.lane.queued_bytes == 0 and not s.lane.busy() and s.pick() == []
    s.lane.submit(work("a", batch=2))
    jobs = s.pick()  # batch 2 is being written when a second cancel comes
    assert s.lane.cancel(running=True) == 0 and s.pool.cancelled == 1
    s.lane._write(jobs)
    assert s.delivered == [], "an answer from before the last cancel was delivered"
    s.lane.submit(work("a", batch=3))
    s.step()
    assert [r.work.batch for r in s.delivered] == [3]


def test_shed_parks_held_works_at_once_and_says_how_long_they_waited() -> None:
    s = Stepped({"a": LOCKED})
    s.lane.submit(work("a", rows=2, nbytes=30))
    s.lane.submit(work("b", nbytes=5))
    s.step()  # a and b in one unit: a is held, b lands
    assert s.queue("a").failure == LOCKED and s.lane.queued_bytes == 30
    assert s.lane.shed(now=s.clock.now + 42) == 30
    (parked,) = [r for r in s.delivered if r.failed]
    held = Failure(ErrorCode.TIMEOUT, "lock timeout (held 42 s)", Scope.TABLE)
    assert [f.failure for f in parked.failed] == [held, held]
    assert parked.seconds == 42 and parked.attempts == 2 and {f.attempts for f in parked.failed} == {1}
    assert {f.destination for f in parked.failed} == {Destination("wh", "db", "a")}
    assert s.lane.queued_bytes == 0 and s.lane.shed() == 0
    s.clock.now += 7
    s.lane.submit(work("a", nbytes=1))
    s.clock.now += 3
    assert s.lane.shed() == 1
    assert s.delivered[-1].failed[0].failure.message == "lock timeout (held 3 s)"


# ---------------------------------------------------------------------------------------------------- units


def test_a_unit_takes_the_oldest_tables_first_up_to_the_row_budget_exactly() -> None:
    s = Stepped()
    for table, rows in (("d", 1), ("a", 2), ("b", 1), ("c", 1)):
        s.lane.submit(work(table, rows=rows))
        s.clock.now += 1
    assert s.step() == ["d", "a", "b"]  # 1 + 2 + 1 rows: the budget of 4 is met exactly, c waits
    assert s.step() == ["c"]
    assert s.lane.queued_bytes == 0 and not s.lane._pending


def test_queued_works_of_one_table_merge_while_they_fit_the_budget() -> None:
    s = Stepped()
    for rows in (2, 2, 1, 3):
        s.lane.submit(work("a", rows=rows, nbytes=rows))
    (job,) = s.pick()
    assert [len(w.rows) for w in job.works] == [2, 2]  # 2 + 2 = 4 fits exactly; 1 more would not
    assert s.lane.queued_bytes == 4 and s.queue("a").busy and key("a") in s.lane._pending
    s.lane._write([job])
    (job,) = s.pick()
    assert [len(w.rows) for w in job.works] == [1, 3]
    assert key("a") not in s.lane._pending and s.lane.queued_bytes == 0
    big = work("b", rows=9)
    s.lane._write([job])
    s.lane.submit(big)
    (job,) = s.pick()
    assert job.works == [big], "a work larger than the budget still goes, alone"


def test_a_unit_holds_at_most_max_tables() -> None:
    s = Stepped()
    s.lane._pipeline = CONFIG.pipeline.__class__(**{**_fields(CONFIG.pipeline), "unit_max_rows": 10_000})
    for t in range(MAX_TABLES_PER_UNIT + 1):
        s.lane.submit(work(f"t{t}"))
    assert len(s.pick()) == MAX_TABLES_PER_UNIT
    assert len(s.pick()) == 1


def _fields(struct: Any) -> dict[str, Any]:
    return {f: getattr(struct, f) for f in struct.__struct_fields__}


def test_a_held_table_is_written_alone_and_skipped_by_other_units() -> None:
    s = Stepped({"h": LOCKED})
    s.lane.submit(work("a"))
    s.lane.submit(work("h"))
    s.lane.submit(work("c"))
    assert s.step() == ["a", "h", "c"]
    assert s.queue("h").held_until == s.clock.now + 0.5
    s.lane.submit(work("a"))
    s.lane.submit(work("c"))
    assert s.step() == ["a", "c"], "a held table rode along in a unit (or stopped the others)"
    s.clock.now = s.queue("h").held_until  # the hold ends exactly now
    s.lane.submit(work("a"))
    assert s.step() == ["h"], "a held table is retried alone, as soon as its hold ends"
    assert s.step() == ["a"]
    assert s.step() == []


def test_a_table_of_a_unit_that_timed_out_is_written_alone_for_a_while() -> None:
    timeout = pgerr.lookup("57014")("canceling statement due to statement timeout")
    s = Stepped({"a": timeout})
    s.lane.submit(work("a"))
    s.lane.submit(work("b"))
    assert s.step() == ["a", "b"]
    assert s.delivered == [] and s.queue("a").failure is None and s.queue("b").failure is None
    assert s.queue("a").alone_until == s.queue("b").alone_until == s.clock.now + ALONE_S
    assert s.lane.circuit.closed
    del s.outcome["a"]
    assert s.step() == ["a"]
    assert s.step() == ["b"]
    alone_until = s.queue("a").alone_until
    s.clock.now = alone_until - 0.001
    s.lane.submit(work("a"))
    s.lane.submit(work("b"))
    assert s.step() == ["a"], "a table is written alone for ALONE_S"
    assert s.step() == ["b"]
    s.clock.now = alone_until
    s.lane.submit(work("a"))
    s.lane.submit(work("b"))
    assert s.step() == ["a", "b"], "ALONE_S later, tables share units again"


def test_a_timeout_of_a_single_table_holds_it() -> None:
    s = Stepped({"a": pgerr.lookup("57014")("canceling statement due to statement timeout")})
    s.lane.submit(work("a"))
    s.step()
    assert s.queue("a").failure == Failure(ErrorCode.TIMEOUT, "canceling statement due to statement timeout",
                                           Scope.TABLE)
    assert s.queue("a").alone_until == 0.0


def test_a_row_error_for_a_whole_call_is_our_bug_and_holds_the_table() -> None:
    s = Stepped({"a": pgerr.lookup("22P02")("invalid input")})
    s.lane.submit(work("a"))
    s.step()
    assert s.queue("a").failure == Failure(ErrorCode.INTERNAL, "invalid input", Scope.TABLE)


def test_an_unexpected_error_in_the_worker_holds_its_tables(caplog: pytest.LogCaptureFixture) -> None:
    s = Stepped()
    jobs: list[TableJob] = []

    def boom(_jobs: list[TableJob]) -> None:
        raise KeyError("bug")

    s.lane.submit(work("a"))
    s.lane.submit(work("b"))
    taken = iter([s.pick(), None])
    s.lane._take = lambda: next(taken)  # type: ignore[method-assign]
    s.lane._write = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        s.lane._work()
    expected = Failure(ErrorCode.INTERNAL, "KeyError: 'bug'", Scope.TABLE)
    assert s.queue("a").failure == expected and s.queue("b").failure == expected
    assert [len(s.queue(t).works) for t in "ab"] == [1, 1] and not jobs
    assert "unexpected error writing 2 tables" in caplog.text


# ---------------------------------------------------------------------------------------------------- holds


def test_a_held_table_backs_off_doubling_to_the_cap_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    s = Stepped({"a": LOCKED})
    s.lane.submit(work("a", rows=2))
    waits = []
    with caplog.at_level(logging.WARNING, logger="kapow.pipeline.lane"):
        for _ in range(5):
            s.clock.now = s.queue("a").held_until
            assert s.step() == ["a"]
            waits.append(s.queue("a").held_until - s.clock.now)
    held = [r.getMessage() for r in caplog.records if " held: " in r.getMessage()]
    assert held == ["table wh/db/public.a held: lock timeout (timeout); other tables keep landing"], "once per hold"
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
    (w,) = s.queue("a").works
    assert w.attempts == 5 and s.lane.queued_bytes == 10
    del s.outcome["a"]
    s.clock.now = s.queue("a").held_until
    s.step()
    assert key("a") not in s.lane._tables and s.lane.healthy(key("a"))  # recovered, and nothing left to keep
    assert s.delivered[-1].landed == 2 and s.lane.last_success == s.clock.now and s.lane.recently_ok()
    s.clock.now += 30
    assert not s.lane.recently_ok() and s.lane.recently_ok(within_s=31)


def test_a_held_table_is_parked_exactly_hold_s_after_it_was_queued() -> None:
    s = Stepped({"a": LOCKED})
    s.lane.submit(work("a", rows=3))
    s.step()
    s.clock.now = 1000.0 + 10 - 0.001
    s.expire()
    assert s.delivered == []
    s.clock.now = 1000.0 + 10
    s.expire()
    (parked,) = s.delivered
    assert [r.failure for r in parked.failed] == [Failure(ErrorCode.TIMEOUT, "lock timeout (held 10 s)",
                                                          Scope.TABLE)] * 3
    assert s.lane.queued_bytes == 0 and key("a") not in s.lane._pending


def test_an_unretryable_failure_that_waited_is_parked_as_internal() -> None:
    s = Stepped()
    s.lane.submit(work("a"))
    q = s.queue("a")
    q.failure = Failure(ErrorCode.UNKNOWN_TABLE, "gone", Scope.TABLE)  # never parked as the client's fault
    s.clock.now += 10
    s.pick()
    assert s.delivered[0].failed[0].failure == Failure(ErrorCode.INTERNAL, "gone (held 10 s)", Scope.TABLE)


def test_a_busy_queue_is_never_expired_under_its_writer() -> None:
    s = Stepped({"a": LOCKED})
    s.lane.submit(work("a"))
    s.step()
    s.lane.submit(work("a"))
    s.queue("a").busy = True
    s.clock.now += 100
    assert s.lane.shed() == 0 and s.delivered == []


# ---------------------------------------------------------------------------------------------------- the database


def test_a_database_failure_backs_the_whole_lane_off_and_opens_the_circuit() -> None:
    s = Stepped({"a": DOWN})
    s.lane.submit(work("a"))
    s.lane.submit(work("b"))
    s.step()
    assert s.lane._backoff_until == s.clock.now + 0.5 and s.pool.discarded == 1
    assert s.queue("a").failure is None, "a database failure holds the lane, not the table"
    assert s.lane.circuit.closed and s.lane.healthy(key("a"))
    s.clock.now = s.lane._backoff_until
    s.step()
    assert not s.lane.circuit.closed and not s.lane.healthy() and not s.lane.healthy(key("b"))
    assert s.lane._backoff_until == s.clock.now + 1.0
    assert s.lane.last_success == 0.0
    # the lane is down: what waited hold_s is parked with the database's own failure
    s.clock.now = 1000.0 + 10
    s.pick()
    assert {r.failure for p in s.delivered for r in p.failed} == {Failure(ErrorCode.DATABASE_UNAVAILABLE,
                                                                          "refused (held 10 s)", Scope.DATABASE)}
    assert len(s.delivered) == 2


def test_stuck_bytes_are_those_of_held_tables_or_of_the_whole_lane_while_its_circuit_is_open() -> None:
    s = Stepped({"a": LOCKED})
    s.lane.submit(work("a", nbytes=30))
    s.lane.submit(work("b", nbytes=5))
    assert s.lane.stuck_bytes() == 0, "queued, not held: the lanes are merely busy"
    s.step()  # a is held; b lands
    s.lane.submit(work("a", nbytes=7))
    s.lane.submit(work("b", nbytes=9))
    assert s.lane.queued_bytes == 46 and s.lane.stuck_bytes() == 37, "only the held table's works are stuck"
    s.lane.circuit._state = s.lane.circuit._state.OPEN
    assert s.lane.stuck_bytes() == 46, "a lane whose circuit is open: everything it holds waits"


def test_a_lane_down_without_a_known_failure_parks_as_unavailable() -> None:
    s = Stepped()
    s.lane.submit(work("a"))
    s.lane.circuit._state = s.lane.circuit._state.OPEN
    s.clock.now += 10
    s.pick()
    assert s.delivered[0].failed[0].failure == Failure(ErrorCode.DATABASE_UNAVAILABLE,
                                                       "database wh/db is unavailable (held 10 s)", Scope.DATABASE)


def test_recently_ok_means_a_success_within_the_window() -> None:
    s = Stepped()
    s.clock.now = 5.0
    assert not s.lane.recently_ok(), "a lane that never wrote has no recent success, even early on the clock"
    s.clock.now = 0.5
    assert s.lane.probe() is True and s.lane.last_success == 0.5
    assert s.lane.recently_ok() and s.lane.healthy() and s.lane.healthy(key("anything"))


def test_a_probe_tells_the_circuit_and_ends_the_back_off() -> None:
    s = Stepped({"a": DOWN})
    s.lane.submit(work("a"))
    s.step()
    s.pool.down = True
    assert s.lane.probe() is False
    assert s.lane.circuit.last_failure is not None
    assert s.lane.circuit.last_failure.code is ErrorCode.DATABASE_UNAVAILABLE
    assert not s.lane.circuit.closed, "two failures in a row open the circuit"
    s.pool.down = False
    s.clock.now += 0.25
    assert s.lane.probe() is True
    assert s.pool.executed[-1] == "SELECT 1"
    assert s.lane.circuit.closed and s.lane._backoff_until == 0.0 and s.lane.last_success == s.clock.now


def test_the_wake_up_is_the_earliest_of_the_hold_the_expiry_and_the_back_off() -> None:
    s = Stepped({"a": LOCKED})
    with s.lane._cond:
        assert s.lane._next_wake_locked(s.clock.now) == 0.5
    s.lane.submit(work("a"))
    s.step()
    with s.lane._cond:
        assert s.lane._next_wake_locked(s.clock.now) == 0.5  # the hold ends in 0.5 s
        s.clock.now += 0.3
        assert s.lane._next_wake_locked(s.clock.now) == pytest.approx(0.2)
        s.clock.now = 1000.0 + 9.9  # the expiry (hold_s after queuing) comes first
        s.queue("a").held_until = s.clock.now + 5
        assert s.lane._next_wake_locked(s.clock.now) == pytest.approx(0.1)
        s.clock.now = 1000.0 + 20
        assert s.lane._next_wake_locked(s.clock.now) == 0.01, "never a wait of zero or less"
        s.lane._backoff_until = s.clock.now + 0.05
        s.queue("a").failure = None
        s.queue("a").held_until = 0.0
        assert s.lane._next_wake_locked(s.clock.now) == pytest.approx(0.05)


def test_a_healthy_table_with_works_sets_no_expiry() -> None:
    s = Stepped()
    s.lane.submit(work("a"))
    s.clock.now += 9.95
    with s.lane._cond:
        assert s.lane._next_wake_locked(s.clock.now) == 0.5


# ---------------------------------------------------------------------------------------------------- probing a table


def test_probe_table_locks_without_waiting_and_clears_the_hold() -> None:
    s = Stepped({"a": LOCKED})
    assert s.lane.probe_table(key("a")) is True  # never seen: the lane's health
    s.lane.submit(work("a"))
    s.step()
    assert s.lane.probe_table(key("a")) is False, "works still wait: their own retry decides"
    s.clock.now += 10
    s.expire()  # parked: the table keeps its hold, with nothing left to retry it
    assert s.delivered and s.queue("a").failure == LOCKED
    s.queue("a").held_until = s.clock.now + 1
    assert s.lane.probe_table(key("a")) is False, "still in its back-off"
    s.clock.now += 1
    s.pool.fail = pgerr.lookup("55P03")("could not obtain lock")
    assert s.lane.probe_table(key("a")) is False
    assert s.pool.executed[-1] == 'LOCK TABLE "public"."a" IN ROW EXCLUSIVE MODE NOWAIT'
    assert s.queue("a").held_until > s.clock.now and s.queue("a").failure is not None
    s.clock.now = s.queue("a").held_until
    s.pool.fail = psycopg.OperationalError("connection refused")
    held_until = s.queue("a").held_until
    assert s.lane.probe_table(key("a")) is False
    assert s.queue("a").held_until == held_until, "a database failure does not extend a table's hold"
    s.pool.fail = None
    assert s.lane.probe_table(key("a")) is True
    assert s.queue("a").failure is None and s.queue("a").backoff == 0.0 and s.lane.healthy(key("a"))
    s.lane.circuit._state = s.lane.circuit._state.OPEN
    assert s.lane.probe_table(key("a")) is False and s.lane.probe_table(key("zz")) is False


def test_a_busy_table_is_not_probed() -> None:
    s = Stepped({"a": LOCKED})
    s.lane.submit(work("a"))
    s.step()
    s.queue("a").works.clear()
    s.queue("a").busy = True
    s.clock.now += 100
    before = len(s.pool.executed)
    assert s.lane.probe_table(key("a")) is False and len(s.pool.executed) == before


# ---------------------------------------------------------------------------------------------------- closing


def test_close_waits_for_its_threads_but_at_most_the_timeout() -> None:
    s = Stepped()
    s.lane._clock = time.monotonic  # type: ignore[method-assign]
    quick = threading.Thread(target=time.sleep, args=(0.2,), daemon=True)
    gate = threading.Event()
    stuck = threading.Thread(target=gate.wait, daemon=True)
    for t in (quick, stuck):
        t.start()
        s.lane._threads.append(t)
    started = time.monotonic()
    s.lane.close(timeout=1.0)
    took = time.monotonic() - started
    assert not quick.is_alive(), "close did not wait for a thread that ends within its timeout"
    assert stuck.is_alive() and 0.9 <= took < 3, f"close took {took:.2f} s with a 1 s timeout"
    assert s.lane._closed and s.pool.closed
    gate.set()
    stuck.join(5)


def test_the_redrive_asks_a_database_that_may_have_gone_down_and_believes_a_failed_probe() -> None:
    """A success up to 30 s old passed for health without a probe, and a failed probe was not the answer (the
    circuit opens after a few failures only): the redrive republished parked packets into a database still down,
    spending their redrive attempts (a hostile run)."""
    s = Stepped()
    persister = Persister(CONFIG, lane_factory=lambda **_kw: s.lane)
    assert s.lane.probe() and persister.healthy(key("a"))
    s.clock.now += FRESH_S + 1
    s.pool.down = True
    assert not persister.healthy(key("a")), "a failed probe must answer no"
    assert s.lane.circuit.closed and not s.lane.recently_ok(within_s=60), "one failure: the circuit still closed"
    s.pool.down = False
    s.clock.now += 1
    assert persister.healthy(key("a")) and s.lane.recently_ok(), "a probe that answers makes it healthy again"
    s.outcome["a"] = DOWN
    s.lane.submit(work("a"))
    s.clock.now += 0.5
    s.step()  # a write that met the database down, within FRESH_S of the success: no longer taken as up
    assert not s.lane.recently_ok(within_s=FRESH_S)


def test_tables_written_alone_take_every_worker_but_one() -> None:
    """Four slow tables on four workers made every other table of the database wait for them (a hostile run:
    p99 37 s): tables written alone may take every worker but the last."""
    s = Stepped()
    for table in ("s1", "s2", "s3", "s4"):
        s.lane.submit(work(table))
        s.queue(table).alone_until = s.clock.now + 60
    s.lane.submit(work("ok"))
    workers = CONFIG.destinations[0].max_connections
    taken = [s.pick() for _ in range(workers)]  # as many workers take a unit, none of them done yet
    alone = [jobs[0].key.table for jobs in taken if len(jobs) == 1 and jobs[0].key.table.startswith("s")]
    assert len(alone) == workers - 1, taken
    assert any(j.key.table == "ok" for jobs in taken for j in jobs), "the last worker must be kept for the others"
    assert s.pick() == [], "nothing else is ready: the slow tables wait for a worker written alone"


def test_a_table_whose_rows_need_isolating_goes_back_alone_and_its_neighbours_are_answered() -> None:
    s = Stepped()
    s.lane.submit_all([work("bad", rows=3), work("ok", rows=2)])
    jobs = s.pick()
    assert sorted(j.key.table for j in jobs) == ["bad", "ok"]
    bad_value = Failure(ErrorCode.BAD_VALUE, "invalid input syntax for type bigint", Scope.ROW)
    s.lane._settle([JobOutcome(j, failure=bad_value, alone=True) if j.key.table == "bad" else
                    JobOutcome(j, results=[WorkResult(w, landed=len(w.rows)) for w in j.works]) for j in jobs])
    assert [r.work.key.table for r in s.delivered] == ["ok"]
    assert s.queue("bad").failure is None and s.queue("bad").alone(s.clock.now), "requeued alone, held by nothing"
    assert [[j.key.table for j in s.pick()]] == [["bad"]]


def test_a_table_with_nothing_left_is_forgotten() -> None:
    """A stream of ever-new table names grew the lane by a queue per name, for good (~70 MB a 50,000 names)."""
    s = Stepped()
    for i in range(50):
        s.lane.submit(work(f"t{i}"))
    while s.step():
        pass
    assert len(s.delivered) == 50 and s.lane._tables == {} and s.lane._pending == {}


def test_the_parking_lines_are_bounded_by_the_writer_not_by_each_lane(caplog: pytest.LogCaptureFixture) -> None:
    """A hostile run: a whole server stopped wrote ten "parking" lines a second for each of its databases (2,516
    error lines from two outages of ~40 s); a thousand databases would have written ten thousand. The lanes of a
    writer share one budget (``Persister`` gives each lane the same), and the rest is counted in one line."""
    budget = ParkLines()
    lanes = [Stepped(park_lines=budget) for _ in range(5)]
    for s in lanes:
        s.pool.down = True
        s.lane.submit_all([work(f"t{i}") for i in range(100)])
        for _ in range(CONFIG.pipeline.circuit_failures_to_open + 1):
            s.clock.now += 10
            s.step()
        s.clock.now += CONFIG.pipeline.hold_s + 1
    with caplog.at_level(logging.ERROR, logger="kapow.pipeline.lane"):
        for s in lanes:
            s.expire()
        assert sum(len(s.delivered) for s in lanes) == 500 and all(r.failed for s in lanes for r in s.delivered)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("parking")]
        assert len(lines) == 10, f"{len(lines)} lines for 5 lanes: a budget per lane"
        budget.roll(max(s.clock.now for s in lanes) + 1)
    assert any(r.getMessage().startswith("490 more works parked without a line each") for r in caplog.records)
    two = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["t"]\n'
                       '[[destinations]]\nvanity = "wh"\ndatabases = ["db", "db2"]\n')
    persister = Persister(two, lane_factory=lambda **kw: kw)  # type: ignore[arg-type,return-value]
    first, second = persister.lane("wh", "db"), persister.lane("wh", "db2")
    assert first["park_lines"] is second["park_lines"], "each lane its own budget"  # type: ignore[index]


def test_tables_whose_works_were_parked_or_cancelled_are_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    """A review: 2,000 names sent during an outage stayed in the lane for good, with a log line each parked."""
    s = Stepped()
    s.pool.down = True
    s.lane.submit_all([work(f"t{i}") for i in range(2_000)] + [work("held")])
    for _ in range(CONFIG.pipeline.circuit_failures_to_open + 1):
        s.clock.now += 10
        s.step()
    s.clock.now += CONFIG.pipeline.hold_s + 1
    with caplog.at_level(logging.ERROR, logger="kapow.pipeline.lane"):
        s.expire()
        assert len(s.delivered) == 2_001 and all(r.failed for r in s.delivered)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("parking")]
        assert len(lines) == 10, "one line a parked work, unbounded"
        s.clock.now += 6
        s.expire()  # the next sweep: the rest counted in one line; the tables are forgotten
    assert any("1991 more works parked without a line each" in r.getMessage() for r in caplog.records)
    assert s.lane._tables == {} and s.lane._pending == {}
    s.pool.down = False
    assert s.lane.probe() and s.lane.healthy(key("t1"))

    # a table held by its own failure is remembered (the redrive asks it), idle others are not
    s2 = Stepped({"locked": Failure(ErrorCode.TIMEOUT, "lock timeout", Scope.TABLE)})
    s2.lane.submit_all([work("locked"), work("ok")])
    s2.step()
    s2.step()
    s2.clock.now += SWEEP_S + CONFIG.pipeline.hold_s + 1
    s2.expire()
    assert set(s2.lane._tables) == {key("locked")} and not s2.lane.healthy(key("locked"))

    # a revoke's cancel forgets what only waited
    s3 = Stepped()
    s3.lane.submit_all([work(f"r{i}") for i in range(100)])
    assert s3.lane.cancel() == 100 and s3.lane._tables == {}


def test_a_pool_with_no_free_connection_requeues_its_works_without_counting_against_the_database() -> None:
    """PoolBusy is the writer's own back-pressure (the prober and the redrive's probes held the spare connection):
    it must neither count toward the database's circuit nor hold a table (a review)."""
    from kapow.postgres.pool import PoolBusy

    s = Stepped()
    s.lane.submit_all([work("a"), work("b")])
    jobs = s.pick()
    original = s.lane.pool.connection

    @contextlib.contextmanager
    def busy() -> Iterator[Any]:
        raise PoolBusy("no free connection to wh/db within 30 s")
        yield

    s.lane.pool.connection = busy  # type: ignore[method-assign]
    for _ in range(CONFIG.pipeline.circuit_failures_to_open + 1):
        s.lane._write(jobs)
        jobs = s.pick()
        assert sorted(j.key.table for j in jobs) == ["a", "b"], "the works were not requeued"
    assert s.lane.circuit.closed and s.lane.last_failure == 0.0
    assert s.lane.healthy(key("a")) and s.lane.healthy(key("b")) and not s.delivered
    s.lane.pool.connection = original  # type: ignore[method-assign]
    s.lane._write(jobs)
    assert sorted(r.work.key.table for r in s.delivered) == ["a", "b"]

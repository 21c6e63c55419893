"""A database lane: the queues, workers, holds and circuit of one (vanity, database).

Isolation is built here (PRODUCT.md §5). Each configured database has its own lane, with its own worker threads
(``max_connections`` of them, one connection each) and its own circuit, so work for different databases never
waits on each other. Inside a lane each table has its own FIFO queue, written by one worker at a time, in the
order the packets were consumed (that order is what makes upserts and deletes come out right). A worker takes
the oldest ready work of as many tables as fit in a unit (``unit_max_rows``) and writes them in one transaction
(:mod:`kapow.pipeline.unit`); so a thousand tables cost a few round trips, not a thousand.

What a failure holds is decided by its scope (:class:`kapow.errors.Scope`):

* a bad row fails alone (it was isolated by bisection) and its table keeps landing;
* a locked or slow table (lock or statement timeout, deadlock) is *held*: its works wait in its queue and are
  retried alone, with back-off, while every other table of the lane keeps landing;
* a database that is unwell (refused or lost connections, shutting down) counts toward the lane's circuit; its
  works wait, and once the circuit is open a prober tries the database every ``circuit_open_s``, with or without
  traffic, and reopens the lane on the first success.

Waiting is bounded by ``pipeline.hold_s``: a work that has waited that long on a held table or an unwell database
is answered with its failure, i.e. its packets are parked on the system-errors topic (and redriven once the lane
is healthy again: :mod:`kapow.deadletter.redrive`). An outage shorter than ``hold_s`` parks nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from psycopg import sql

from kapow.config import DestinationConfig, PipelineConfig
from kapow.contract import TableKey
from kapow.errors import ErrorCode, Failure, Scope, classify_exception, one_line
from kapow.pipeline.circuit import Circuit
from kapow.pipeline.parklines import ParkLines
from kapow.pipeline.schedule import TableQueue, next_wake, pick
from kapow.pipeline.unit import JobOutcome, TableJob, write_unit
from kapow.pipeline.work import ErrorRecord, TableWork, WorkResult
from kapow.postgres.catalog import Catalog
from kapow.postgres.pool import ConnectionPool, PoolBusy
from kapow.postgres.writer import configure_connection

log = logging.getLogger(__name__)

Deliver = Callable[[WorkResult], None]
WriteUnit = Callable[[Any, Catalog, list[TableJob]], list[JobOutcome]]
ALONE_S = 30.0  # after a whole unit timed out, its tables are written alone this long to find the slow one
# a table whose statements took this long in a unit is written alone for ALONE_S, renewed while it stays this slow
# on its own: a slow trigger (or index, or lock wait under lock_timeout) must not make the other tables of its
# database wait for it every unit
SLOW_TABLE_S = 0.5
# tables with nothing queued, nothing running and nothing to remember (no hold, not written alone) are forgotten
# this often: a lane remembered every table whose works were parked or cancelled (a review: 20,000 names sent
# during an outage left 20,000 queues for good)
SWEEP_S = 5.0


class DatabaseLane:
    """Everything one (vanity, database) needs: pool, circuit, table queues, workers and prober."""

    def __init__(self, *, vanity: str, database: str, config: DestinationConfig, pipeline: PipelineConfig,
                 catalog: Catalog, deliver: Deliver, clock: Callable[[], float] = time.monotonic,
                 pool: Any = None, write: WriteUnit = write_unit, park_lines: ParkLines | None = None) -> None:
        self.vanity = vanity
        self.database = database
        self.name = f"{vanity}/{database}"
        self.config = config
        self._pipeline = pipeline
        self._catalog = catalog
        self._deliver = deliver
        self._clock = clock
        self._write_unit = write
        timeout_ms, lock_ms = config.statement_timeout_ms, config.lock_timeout_ms
        self.pool = pool or ConnectionPool(
            name=self.name, conninfo=config.conninfo(database), password=config.password(),
            max_size=config.max_connections + 1,  # one more for the prober, so it never waits behind a worker
            wait_timeout=max(30.0, config.connect_timeout_s * 2),
            configure=lambda conn: configure_connection(conn, statement_timeout_ms=timeout_ms,
                                                        lock_timeout_ms=lock_ms),
            # the server answers within statement_timeout; silence beyond that means a hung server or path,
            # which must fail (and be retried), not block the lane
            io_timeout=timeout_ms / 1000 + max(2.0, config.connect_timeout_s),
        )
        self.circuit = Circuit(self.name, failures_to_open=pipeline.circuit_failures_to_open,
                               open_s=pipeline.circuit_open_s, clock=clock)
        self._tables: dict[TableKey, TableQueue] = {}
        self._alone: set[TableKey] = set()  # tables being written in units of their own now
        self._pending: dict[TableKey, TableQueue] = {}  # tables with queued works, in order of arrival
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._epoch = 0
        self._backoff_until = 0.0  # after a database failure, workers pause this long
        self._backoff = 0.0
        self.queued_bytes = 0
        self.last_success = 0.0  # monotonic time of the last successful write or probe
        self.last_failure = 0.0  # ... and of the last failure of the database itself (a write's or a probe's)
        self._swept = 0.0  # when idle tables were last forgotten
        self._park_lines = park_lines or ParkLines()  # the writer's, shared by its lanes (kapow.pipeline.persist)

    # ------------------------------------------------------------------ the loop's side
    def submit(self, work: TableWork) -> None:
        self.submit_all([work])

    def submit_all(self, works: list[TableWork]) -> None:
        """Queue works (one batch's, for this database): one lock and one wake-up for all of them."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"lane {self.name} is closed")
            self._start_locked()
            now = self._clock()
            tables, pending = self._tables, self._pending
            for work in works:
                work.enqueued_at = now
                work.epoch = self._epoch
                queue = tables.get(work.key)
                if queue is None:
                    queue = tables[work.key] = TableQueue(work.key)
                queue.works.append(work)
                pending[work.key] = queue
                self.queued_bytes += work.nbytes
            self._cond.notify(min(len(works), len(self._threads)))

    def cancel(self, *, running: bool = False) -> int:
        """Drop every queued work (a revoke or a stop: they are replayed from the uncommitted offsets).

        Works being written finish (or, with ``running``, their statements are cancelled on the server), and their
        retries are dropped: a work from before the cancel never lands after the partitions went to another writer.
        """
        if running:
            self.pool.cancel_running()
        with self._cond:
            dropped = sum(len(q.works) for q in self._tables.values())
            for queue in self._tables.values():
                queue.works.clear()
            self._pending.clear()
            self._sweep_locked(self._clock())  # what only waited here is forgotten now
            self.queued_bytes = 0
            self._epoch += 1
            self._cond.notify_all()
            return dropped

    def shed(self, now: float | None = None) -> int:
        """Park every queued work of held tables (or of the whole lane while its circuit is open) at once.

        Called when the writer's memory bound is reached: what cannot land now leaves memory for the DLQ, from
        where it is redriven, instead of pausing everyone's stream.
        """
        now = self._clock() if now is None else now
        with self._cond:
            return self._expire_locked(now, force=True)

    def healthy(self, key: TableKey | None = None) -> bool:
        """True when the lane would write to ``key`` now: the circuit is closed and the table is not held."""
        if not self.circuit.closed:
            return False
        if key is None:
            return True
        with self._cond:
            queue = self._tables.get(key)
            return queue is None or queue.failure is None

    def probe_table(self, key: TableKey) -> bool:
        """Is a held table writable again, without writing to it? True clears its hold.

        A table held by a failure and no longer holding works (they were parked) is never written again by itself;
        the redrive asks this before it republishes into it. The probe takes the lock an insert needs, without
        waiting (``NOWAIT``), in a transaction it rolls back: a table still locked answers at once.
        """
        with self._cond:
            queue = self._tables.get(key)
            if queue is None or queue.failure is None:
                return self.circuit.closed
            if queue.works or queue.busy or self._clock() < queue.held_until:
                return False
        try:
            with self.pool.connection() as conn, conn.transaction(force_rollback=True):
                conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE NOWAIT").format(
                    sql.Identifier(key.schema, key.table)))
        except Exception as exc:
            failure = classify_exception(exc)
            with self._cond:
                if failure.scope is Scope.TABLE:
                    self._hold_locked(queue, failure, self._clock())
            return False
        with self._cond:
            queue.failure = None
            queue.backoff = 0.0
        log.info("table %s takes writes again", key.label)
        return True

    def recently_ok(self, within_s: float = 30.0) -> bool:
        """The database answered within ``within_s`` and has not failed since (a failure since, while the circuit
        still counts toward opening, must not pass for health: the redrive asks this)."""
        return self.last_success > 0 and self.last_success > self.last_failure and \
            self._clock() - self.last_success < within_s

    def probe(self) -> bool:
        """Try the database now (one connection, ``SELECT 1``); the circuit learns the outcome.

        Starts the lane's threads when it has none yet: a lane the redrive asked about before anything was written
        to it (a writer started while the database was down, or given its parked records by a rebalance) opened
        its circuit with these probes and had no prober to close it, so the database's parked packets waited for
        good, until some new packet for it came (a hostile run: 200 packets, 60 s after the database was back).
        """
        with self._cond:
            if not self._closed:
                self._start_locked()
        try:
            with self.pool.connection() as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            failure = classify_exception(exc)
            if failure.scope is Scope.DATABASE:
                with self._cond:
                    self.last_failure = self._clock()
            self.circuit.failure(failure)
            return False
        self.circuit.success()
        with self._cond:
            self.last_success = self._clock()
            self._backoff_until = 0.0
            self._cond.notify_all()
        return True

    def stuck_bytes(self) -> int:
        """Bytes queued behind a failure: every queued work while the circuit is open, else those of held tables.

        The loop's read-ahead leaves these out (:class:`kapow.pipeline.readahead.ReadAhead`): what waits
        on one table or database must not slow the reading of everyone else's packets. O(tables with queued
        works); the loop asks only when its read-ahead is full.
        """
        with self._cond:
            if not self.circuit.closed:
                return self.queued_bytes
            return sum(w.nbytes for q in self._pending.values() if q.failure is not None for w in q.works)

    def held_tables(self) -> int:
        """How many tables are held by a failure now (a gauge)."""
        with self._cond:
            return sum(1 for q in self._tables.values() if q.failure is not None)

    def busy(self) -> bool:
        with self._cond:
            return bool(self._pending) or any(q.busy for q in self._tables.values())

    def close(self, timeout: float = 0.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = self._clock() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._clock()))
        self.pool.close()

    # ------------------------------------------------------------------ workers
    def _start_locked(self) -> None:
        if not self._threads:
            self._start_threads()

    def _start_threads(self) -> None:
        for i in range(self.config.max_connections):
            thread = threading.Thread(target=self._work, name=f"kapow-lane-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        prober = threading.Thread(target=self._probe_loop, name=f"kapow-probe-{self.name}", daemon=True)
        prober.start()
        self._threads.append(prober)

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._write(jobs)
            except BaseException as exc:  # a bug here must not kill the worker and strand its tables' works
                log.exception("lane %s: unexpected error writing %d tables", self.name, len(jobs))
                failure = Failure(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", Scope.TABLE)
                self._settle([JobOutcome(job, failure=failure) for job in jobs])

    def _take(self) -> list[TableJob] | None:
        with self._cond:
            while not self._closed:
                now = self._clock()
                self._expire_locked(now)
                if self.circuit.closed and now >= self._backoff_until:
                    jobs = self._pick_locked(now)
                    if jobs:
                        return jobs
                self._cond.wait(self._next_wake_locked(now))
            return None

    def _pick_locked(self, now: float) -> list[TableJob]:
        # Tables written alone (slow, held, or with bad rows to isolate) may take every worker but one: four slow
        # triggers on four workers made every other table of the database wait (a hostile run, p99 37 s)
        workers = self.config.max_connections
        jobs = pick(self._pending, now, self._pipeline.unit_max_rows,
                    alone_ok=workers <= 1 or len(self._alone) < workers - 1)
        if len(jobs) == 1 and self._tables[jobs[0].key].alone(now):
            self._alone.add(jobs[0].key)
        for job in jobs:
            self.queued_bytes -= sum(w.nbytes for w in job.works)
        return jobs

    def _next_wake_locked(self, now: float) -> float:
        wake = next_wake(self._pending, now, self._pipeline.hold_s, lane_down=not self.circuit.closed)
        if self._backoff_until > now:
            wake = min(wake, self._backoff_until - now)
        return max(0.01, wake)

    def _write(self, jobs: list[TableJob]) -> None:
        try:
            with self.pool.connection() as conn:
                outcomes = self._write_unit(conn, self._catalog, jobs)
        except PoolBusy as exc:  # every connection lent (the prober's, the redrive's probes): our own back-pressure,
            # not the database failing: the works go back to their queues, no circuit counts it, no table is held
            failure = Failure(ErrorCode.TIMEOUT, one_line(exc), Scope.ROW)
            outcomes = [JobOutcome(job, failure=failure) for job in jobs]
            self._settle(outcomes)
            return
        except Exception as exc:
            failure = classify_exception(exc)
            if failure.scope is Scope.ROW:  # the whole call refused on a row's grounds: a bug of ours
                failure = Failure(ErrorCode.INTERNAL, failure.message, Scope.TABLE)
            if failure.scope is Scope.TABLE and len(jobs) > 1:
                # a statement timeout for the whole unit: write its tables alone for a while to find the slow one
                now = self._clock()
                with self._cond:
                    for job in jobs:
                        self._tables[job.key].alone_until = now + ALONE_S
                failure = Failure(failure.code, failure.message, Scope.ROW)  # requeue, hold nobody yet
            outcomes = [JobOutcome(job, failure=failure) for job in jobs]
        self._settle(outcomes)

    def _settle(self, outcomes: list[JobOutcome]) -> None:
        now = self._clock()
        database_failure: Failure | None = None
        with self._cond:
            for outcome in outcomes:
                queue = self._tables[outcome.job.key]
                queue.busy = False
                self._alone.discard(queue.key)
                if outcome.alone:
                    queue.alone_until = max(queue.alone_until, now + ALONE_S)
                if outcome.seconds >= SLOW_TABLE_S:  # (kept alone while it stays slow)
                    if queue.alone_until <= now:
                        log.info("lane %s: %s took %.1f s of a unit; written alone for %.0f s", self.name,
                                 outcome.job.key.label, outcome.seconds, ALONE_S)
                    queue.alone_until = now + ALONE_S
                if outcome.results is not None:
                    queue.failure = None
                    queue.backoff = 0.0
                    for result in outcome.results:
                        if result.work.epoch == self._epoch:
                            self._deliver(result)
                    if not queue.works and queue.alone_until <= now:  # nothing left to know of it: a stream of
                        self._tables.pop(queue.key, None)  # ever-new table names must not grow the lane
                    continue
                failure = outcome.failure
                assert failure is not None
                live = [w for w in outcome.job.works if w.epoch == self._epoch]
                for work in live:
                    work.attempts += 1
                queue.works.extendleft(reversed(live))
                if queue.works:
                    self._pending[queue.key] = queue
                self.queued_bytes += sum(w.nbytes for w in live)
                if failure.scope is Scope.DATABASE:
                    database_failure = failure
                elif failure.scope is Scope.TABLE:
                    self._hold_locked(queue, failure, now)
            if database_failure is None and any(o.results is not None for o in outcomes):
                self.last_success = now
                self._backoff = 0.0
            if database_failure is not None:
                self.last_failure = now
                self._backoff = min(max(self._backoff * 2, self._pipeline.retry_initial_backoff_s),
                                    self._pipeline.retry_max_backoff_s)
                self._backoff_until = now + self._backoff
            self._cond.notify_all()
        if database_failure is not None:
            log.warning("lane %s: %s (%s); its works wait", self.name, database_failure.message, database_failure.code)
            self.circuit.failure(database_failure)
            self.pool.discard_idle()
        elif any(o.results is not None for o in outcomes):
            self.circuit.success()

    def _hold_locked(self, queue: TableQueue, failure: Failure, now: float) -> None:
        p = self._pipeline
        queue.backoff = min(max(queue.backoff * 2, p.retry_initial_backoff_s), p.retry_max_backoff_s)
        queue.held_until = now + queue.backoff
        if queue.failure is None:
            log.warning("table %s held: %s (%s); other tables keep landing", queue.key.label, failure.message,
                        failure.code)
        queue.failure = failure

    def _expire_locked(self, now: float, *, force: bool = False) -> int:
        """Answer the works that waited ``hold_s`` (or all waiting ones when ``force``) with their failure."""
        if now - self._swept >= SWEEP_S:
            self._sweep_locked(now)
        hold = self._pipeline.hold_s
        lane_down = not self.circuit.closed
        freed = 0
        for queue in list(self._pending.values()):
            if queue.busy or not queue.works or (queue.failure is None and not lane_down):
                continue
            failure = queue.failure or self.circuit.last_failure or Failure(
                ErrorCode.DATABASE_UNAVAILABLE, f"database {self.name} is unavailable", Scope.DATABASE)
            while queue.works and (force or queue.works[0].enqueued_at + hold <= now):
                work = queue.works.popleft()
                self.queued_bytes -= work.nbytes
                freed += work.nbytes
                self._park_locked(work, failure, now)
            if not queue.works:
                self._pending.pop(queue.key, None)
        return freed

    def _sweep_locked(self, now: float) -> None:
        """Forget the tables there is nothing to know of (their works parked, cancelled or written), and say how
        many parkings had no line of their own."""
        self._swept = now
        pending = self._pending
        idle = [key for key, q in self._tables.items()
                if not q.works and not q.busy and q.failure is None and q.alone_until <= now and key not in pending]
        for key in idle:
            del self._tables[key]
        self._park_lines.roll(now)

    def _park_locked(self, work: TableWork, failure: Failure, now: float) -> None:
        waited = now - work.enqueued_at
        message = f"{failure.message} (held {waited:.0f} s)"
        parked = Failure(failure.code if failure.code.retryable else ErrorCode.INTERNAL, message, failure.scope)
        if self._park_lines.take(now):
            log.error("parking %d rows for %s after %.0f s: %s", len(work.rows), work.key.label, waited,
                      failure.message)
        # kapow-attempt counts deliveries through the pipeline (the first, then each redrive or reschedule), not
        # the retries of a hold: those are this delivery's business, and the redrive's bound is on deliveries
        records = [ErrorRecord(row.msg, parked, row.dest, 1) for row in work.rows]
        self._deliver(WorkResult(work, failed=records, seconds=waited, attempts=work.attempts + 1))

    # ------------------------------------------------------------------ prober
    def _probe_loop(self) -> None:
        """While the circuit is open, try the database every ``circuit_open_s``, traffic or not."""
        while True:
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(min(0.5, max(0.01, self.circuit.seconds_to_probe())))
                if self._closed:
                    return
            if not self.circuit.probe_due():
                continue
            self.pool.discard_idle()
            self.probe()

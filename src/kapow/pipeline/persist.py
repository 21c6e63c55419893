"""Step 3, persist: land each group of rows in its table, through that database's bounded pool.

Groups run on worker threads (psycopg releases the GIL while it waits on the network), so the main thread
keeps consuming and sorting the next batch while this one is written; a group never holds more than one
connection and each (vanity, database) pool never opens more than ``max_connections``.

Failures are resolved here, once:

* bad rows (SQLSTATE classes 22, 23, 42, …) are isolated by the writer and become user error records;
* a system error (connection refused, timeout, shutting down) is retried with exponential back-off and jitter
  while the destination's circuit is closed, for at most ``retry_budget_s``; once a destination has failed
  ``circuit_failures_to_open`` times in a row its circuit opens and its groups are parked on the
  system-errors topic at once, so a dead database costs one probe per ``circuit_open_s``, not one timeout per
  batch, and other destinations keep landing at full speed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from kapow.errors import ErrorClass, ErrorCode, Failure, classify_exception
from kapow.pipeline.batch import ErrorRecord, Group, GroupResult, Row
from kapow.pipeline.sort import unknown_table, validate
from kapow.postgres.catalog import Catalog, Table, load_table
from kapow.postgres.pool import ConnectionPool, PoolBusy
from kapow.postgres.writer import Slice, configure_connection, write_table

if TYPE_CHECKING:
    from kapow.config import Config, DestinationConfig

log = logging.getLogger(__name__)


class Circuit:
    """Per-destination circuit breaker: closed (normal), open (parking at once), half-open (one probe)."""

    def __init__(self, *, failures_to_open: int, open_s: float) -> None:
        self._failures_to_open = failures_to_open
        self._open_s = open_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()
        self.last_failure: Failure | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._probing or time.monotonic() - self._opened_at >= self._open_s else "open"

    def admit(self) -> str:
        """``go`` (try now), ``wait`` (a probe is under way: its outcome decides) or ``park`` (open: don't try)."""
        with self._lock:
            if self._opened_at is None:
                return "go"
            if self._probing:
                return "wait"
            if time.monotonic() - self._opened_at >= self._open_s:
                self._probing = True  # this caller is the probe
                return "go"
            return "park"

    def success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.info("destination recovered; circuit closed")
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def failure(self, failure: Failure) -> None:
        with self._lock:
            self.last_failure = failure
            self._failures += 1
            if self._probing or self._failures >= self._failures_to_open:
                if self._opened_at is None:
                    log.warning("circuit opened after %d failures: %s", self._failures, failure.message)
                self._opened_at = time.monotonic()
                self._probing = False


class Destinations:
    """The pools and circuits of every configured (vanity, database), created lazily."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._pools: dict[tuple[str, str], ConnectionPool] = {}
        self._circuits: dict[tuple[str, str], Circuit] = {}
        self._lock = threading.Lock()

    def pool(self, dest: DestinationConfig, database: str) -> ConnectionPool:
        key = (dest.vanity, database)
        pool = self._pools.get(key)
        if pool is None:
            with self._lock:
                pool = self._pools.get(key)
                if pool is None:
                    timeout_ms = dest.statement_timeout_ms
                    pool = ConnectionPool(
                        name=f"{dest.vanity}/{database}",
                        conninfo=dest.conninfo(database),
                        password=dest.password(),
                        max_size=dest.max_connections,
                        wait_timeout=max(30.0, dest.connect_timeout_s * 2),
                        configure=lambda conn: configure_connection(conn, statement_timeout_ms=timeout_ms),
                        # the server answers within statement_timeout; silence beyond that means a hung
                        # server or path, which must fail (and be retried), not block the pipeline
                        io_timeout=(timeout_ms / 1000 + max(2.0, dest.connect_timeout_s)) if timeout_ms > 0 else None,
                    )
                    self._pools[key] = pool
        return pool

    def circuit(self, vanity: str, database: str) -> Circuit:
        key = (vanity, database)
        circuit = self._circuits.get(key)
        if circuit is None:
            with self._lock:
                circuit = self._circuits.setdefault(
                    key,
                    Circuit(
                        failures_to_open=self._config.pipeline.circuit_failures_to_open,
                        open_s=self._config.pipeline.circuit_open_s,
                    ),
                )
        return circuit

    def circuits(self) -> dict[tuple[str, str], Circuit]:
        return dict(self._circuits)

    def pools(self) -> dict[tuple[str, str], ConnectionPool]:
        return dict(self._pools)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


class Persister:
    """Runs :meth:`persist_group` on worker threads; :meth:`submit` returns its future."""

    def __init__(self, config: Config, catalog: Catalog, destinations: Destinations) -> None:
        self._config = config
        self._catalog = catalog
        self._destinations = destinations
        workers = max(2, sum(d.max_connections * len(d.databases) for d in config.destinations))
        self._executor = ThreadPoolExecutor(max_workers=min(workers, 64), thread_name_prefix="kapow-persist")
        self._stopping = threading.Event()

    def submit(self, group: Group) -> Future[GroupResult]:
        return self._executor.submit(self.persist_group, group)

    def stop_retrying(self) -> None:
        """On a forced stop: groups still retrying give up and park now (their packets are safe on the DLQ)."""
        self._stopping.set()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def persist_group(self, group: Group) -> GroupResult:
        started = time.monotonic()
        vanity, database = group.key[0], group.key[1]
        circuit = self._destinations.circuit(vanity, database)
        pipeline = self._config.pipeline
        deadline = started + pipeline.retry_budget_s
        backoff = pipeline.retry_initial_backoff_s
        attempt = 0
        while True:
            verdict = circuit.admit()
            if verdict == "wait" and time.monotonic() < deadline and not self._stopping.is_set():
                self._stopping.wait(0.05)
                continue
            attempt += 1
            if verdict != "go":
                failure = circuit.last_failure or Failure(ErrorCode.DATABASE_UNAVAILABLE, "destination unavailable")
                return self._park(group, failure, attempt, started, circuit_open=True)
            try:
                result = self._attempt(group)
            except Exception as exc:
                failure = classify_exception(exc)
                if failure.error_class is ErrorClass.USER:
                    # The writer raises a bad-row error only when the connection died while it isolated bad
                    # rows: that is a lost connection, to retry, not an internal error that parks the good
                    # rows of the group at once (chaos: connections cut).
                    failure = Failure(ErrorCode.DATABASE_UNAVAILABLE, f"connection lost: {failure.message}")
                if not isinstance(exc, PoolBusy):  # a busy pool is our own pacing, not a sick database
                    circuit.failure(failure)
                    self._destinations.pool(group.config, database).discard_idle()
                now = time.monotonic()
                if not failure.code.retryable or now >= deadline or self._stopping.is_set():
                    return self._park(group, failure, attempt, started)
                log.warning(
                    "write to %s/%s failed (attempt %d, %s): %s; retrying",
                    vanity, database, attempt, failure.code, failure.message,
                )
                pause = min(backoff * (0.5 + random.random()), pipeline.retry_max_backoff_s, deadline - now)
                self._stopping.wait(max(pause, 0.0))
                backoff = min(backoff * 2, pipeline.retry_max_backoff_s)
                continue
            circuit.success()
            result.seconds = time.monotonic() - started
            result.attempts = attempt
            return result

    def _park(
        self, group: Group, failure: Failure, attempt: int, started: float, circuit_open: bool = False
    ) -> GroupResult:
        if not circuit_open:
            log.error(
                "parking %d rows for %s/%s/%s.%s on system errors after %d attempts: %s",
                len(group.rows) + len(group.unchecked), *group.key, attempt, failure.message,
            )
        # every row of the group, validated or not: a row left out here would be committed past and lost
        rows = [*group.rows, *group.unchecked]
        failed = [ErrorRecord(row.msg, failure, group.destination, attempt) for row in rows]
        return GroupResult(group, failed=failed, seconds=time.monotonic() - started, attempts=attempt)

    def _attempt(self, group: Group) -> GroupResult:
        _vanity, database, schema, name = group.key
        pool = self._destinations.pool(group.config, database)
        with pool.connection() as conn:
            result = GroupResult(group)
            rows = list(group.rows)
            table = group.table
            if group.unchecked:  # validate now, against a table read afresh where sort asked for it
                cached, table = self._catalog.get(group.key)
                if group.reload or not cached:
                    table = load_table(conn, schema, name)
                    self._catalog.put(group.key, table)
                for row in group.unchecked:
                    problem = (validate(table, group.config, row.keys, row.data) if table is not None
                               else unknown_table(group.key))
                    if problem is None:
                        rows.append(row)
                    else:
                        result.failed.append(ErrorRecord(row.msg, problem, group.destination))
            if table is None:  # dropped since sort saw it
                missing = unknown_table(group.key)
                result.failed.extend(ErrorRecord(row.msg, missing, group.destination) for row in rows)
                return result
            if not rows:
                return result
            ordered, slices = _slices(rows)
            written = write_table(conn, table, [row.doc for row in ordered], slices)
        result.inserted = written.inserted
        result.duplicates = written.duplicates
        stale = False
        for index, failure in written.failures:
            result.failed.append(ErrorRecord(ordered[index].msg, failure, group.destination))
            stale = stale or failure.code in (ErrorCode.UNKNOWN_COLUMN, ErrorCode.UNKNOWN_TABLE)
        if stale:  # the table changed under us: the next batch reads it afresh
            self._catalog.invalidate(group.key)
        return result


def _slices(rows: list[Row]) -> tuple[list[Row], list[Slice]]:
    """Order rows so that those giving the same columns are contiguous; one INSERT per keyset."""
    first = rows[0].keys
    if all(row.keys == first for row in rows):
        return rows, [Slice(first, 0, len(rows))]
    by_keys: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        by_keys.setdefault(row.keys, []).append(row)
    ordered: list[Row] = []
    slices: list[Slice] = []
    for keys, members in by_keys.items():
        slices.append(Slice(keys, len(ordered), len(ordered) + len(members)))
        ordered.extend(members)
    return ordered, slices


__all__ = ["Circuit", "Destinations", "Persister", "Table"]

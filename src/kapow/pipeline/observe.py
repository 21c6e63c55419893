"""What the writer tells the world: running totals, the RED metrics, one log line per batch, and the gauges.

Counts are added once per committed batch and gauges are refreshed once a second from the loop, never per
packet, so the hot path stays free of them. Every label a client could influence is bounded: the database label
is a configured database or ``-``, the topic label a consumed topic, the code one of :class:`ErrorCode`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kapow import metrics
from kapow.config import Config
from kapow.deadletter.publisher import describe
from kapow.errors import ErrorClass, ErrorCode
from kapow.pipeline.batch import Batch
from kapow.pipeline.work import ErrorRecord, WorkResult

log = logging.getLogger("kapow.writer")

# "packet failed" lines a second, at most; the others of that second are counted in one line. A flood of bad
# packets wrote 500,000 lines (224 MB) and spent the loop's time on them (a hostile run); every failed packet is on
# its error topic and in kapow_errors_total anyway.
FAILED_LINES_PER_S = 50


class Observer:
    """Accounts committed batches and refreshes the gauges (main thread only, except :attr:`totals` reads)."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._lines_since = 0.0  # the second "packet failed" lines are counted in
        self._lines = 0
        self._unlogged = 0
        self._databases = {db for d in config.destinations for db in d.databases}
        # each failed packet's two counters by their labels: looking them up in prometheus_client cost a refused
        # packet ~10 us of the loop's time (a flood of them, 2026-11-27)
        self._counters: dict[tuple[str, bool, ErrorCode, str], tuple[Any, Any]] = {}
        self.totals: dict[str, int] = {"received": 0, "filtered": 0, "landed": 0, "duplicate": 0,
                                       "user_error": 0, "system_error": 0}
        self._gauges_due = 0.0
        self._acked_counted = dict.fromkeys(ErrorClass, 0)
        self._zero_series()

    def _zero_series(self) -> None:
        """Every series an alert divides by exists from the start, at zero, so the first error shows as a rate."""
        for database in sorted(self._databases):
            for code in ErrorCode:
                metrics.ERRORS.labels(database, code.error_class.value, code.value)
            for outcome in ("landed", "duplicate"):
                metrics.ROWS.labels(database, outcome)
        for code in ErrorCode:
            metrics.ERRORS.labels("-", code.error_class.value, code.value)
        for topic in self._config.consumed_topics:
            for step, outcome in (("filter", "filtered"), ("filter", "passed"), ("sort", "user_error"),
                                  ("sort", "system_error"), ("persist", "landed"), ("persist", "duplicate"),
                                  ("persist", "user_error"), ("persist", "system_error")):
                metrics.PACKETS.labels(topic, step, outcome)
        k = self._config.kafka
        for topic in (k.user_errors_topic, k.system_errors_topic):
            metrics.ERROR_RECORDS.labels(topic)

    def database_label(self, database: str) -> str:
        return database if database in self._databases else "-"

    def answered(self, batch: Batch, result: WorkResult) -> None:
        """A table work came back from its lane: its counts join its batch's, per database (the metrics are
        updated once per batch and database when it is committed: a batch may hold a thousand tables)."""
        counts = batch.databases.get(result.work.key.database)
        if counts is None:
            counts = batch.databases[result.work.key.database] = [0.0, 0, 0]
        counts[0] = max(counts[0], result.seconds)
        counts[1] += result.landed
        counts[2] += result.duplicates

    def failed(self, batch: Batch, record: ErrorRecord, *, at_sort: bool) -> None:
        """A packet failed (counted once, when its error record is handed to the publisher)."""
        user = record.failure.error_class is ErrorClass.USER
        if user:
            batch.user_errors += 1
        else:
            batch.system_errors += 1
        dest = record.destination
        labels = (record.msg.topic() or "-", at_sort, record.failure.code,
                  "-" if dest is None or dest.database not in self._databases else dest.database)
        counters = self._counters.get(labels)
        if counters is None:  # a few per topic, step, code and configured database: bounded, never a client's name
            topic, _, code, database = labels
            counters = self._counters[labels] = (
                metrics.PACKETS.labels(topic, "sort" if at_sort else "persist", "user_error" if user else
                                       "system_error"),
                metrics.ERRORS.labels(database, code.error_class.value, code.value))
        counters[0].inc()
        counters[1].inc()
        now = self._clock()
        if now - self._lines_since >= 1.0:
            self.flush_failed(now)
        if self._lines < FAILED_LINES_PER_S:
            self._lines += 1
            log.info("packet failed", extra={"fields": describe(record)})
        else:
            self._unlogged += 1

    def flush_failed(self, now: float | None = None) -> None:
        """Say how many failed packets had no line of their own, and start counting lines anew."""
        if self._unlogged:
            log.info("%d more packets failed without a line each (at most %d lines a second; every one is on its"
                     " error topic)", self._unlogged, FAILED_LINES_PER_S,
                     extra={"fields": {"unlogged": self._unlogged}})
        self._lines_since = self._clock() if now is None else now
        self._lines = self._unlogged = 0

    def account(self, batch: Batch, now_ms: float) -> None:
        for name, (seconds, landed, duplicates) in batch.databases.items():
            database = self.database_label(name)
            metrics.STEP_DURATION.labels("persist", database).observe(seconds)
            if landed:
                metrics.ROWS.labels(database, "landed").inc(landed)
            if duplicates:
                metrics.ROWS.labels(database, "duplicate").inc(duplicates)
        t = self.totals
        t["received"] += batch.received
        t["filtered"] += batch.filtered
        t["landed"] += batch.landed
        t["duplicate"] += batch.duplicates
        t["user_error"] += batch.user_errors
        t["system_error"] += batch.system_errors
        for topic, counts in batch.topics.items():
            metrics.PACKETS.labels(topic, "filter", "filtered").inc(counts.filtered)
            metrics.PACKETS.labels(topic, "filter", "passed").inc(counts.passed)
        if len(batch.topics) == 1:
            (topic,) = batch.topics
            metrics.PACKETS.labels(topic, "persist", "landed").inc(batch.landed)
            metrics.PACKETS.labels(topic, "persist", "duplicate").inc(batch.duplicates)
        else:  # several topics in one batch: split the outcomes by each row's own topic
            for result in batch.results:
                for outcome, count in _split(result).items():
                    metrics.PACKETS.labels(outcome[0], "persist", outcome[1]).inc(count)
        if batch.first_ts_ms > 0:
            metrics.END_TO_END.observe(max(0.0, (now_ms - batch.first_ts_ms) / 1000))
            metrics.END_TO_END.observe(max(0.0, (now_ms - batch.last_ts_ms) / 1000))
        fields: dict[str, Any] = {
            "batch": batch.seq, "received": batch.received, "filtered": batch.filtered, "landed": batch.landed,
            "duplicate": batch.duplicates, "user_errors": batch.user_errors, "system_errors": batch.system_errors,
            "ms": round((time.monotonic() - batch.started) * 1000, 1),
            "probes": batch.probes,  # statements spent isolating bad rows
            "partitions": sorted(f"{t}[{p}]" for t, p in batch.offsets),
        }
        log.info("batch committed", extra={"fields": fields})
        if log.isEnabledFor(logging.DEBUG):  # one line per packet, only when asked for
            for result in batch.results:
                for row in result.work.rows:
                    m = row.msg
                    log.debug("packet committed", extra={"fields": {
                        "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
                        "destination": result.work.key.label}})

    def tick(self, refresh: Callable[[], None], published: dict[ErrorClass, int]) -> None:
        """Once a second: the heartbeat, the acknowledged error records, and the caller's gauges."""
        now = time.monotonic()
        if now < self._gauges_due:
            return
        self._gauges_due = now + 1.0
        if self._unlogged and self._clock() - self._lines_since >= 1.0:
            self.flush_failed()
        metrics.LOOP_HEARTBEAT.set(time.time())
        k = self._config.kafka
        for error_class, topic in ((ErrorClass.USER, k.user_errors_topic), (ErrorClass.SYSTEM, k.system_errors_topic)):
            acked = published.get(error_class, 0)  # none before the error topics are ready
            if acked > self._acked_counted[error_class]:
                metrics.ERROR_RECORDS.labels(topic).inc(acked - self._acked_counted[error_class])
                self._acked_counted[error_class] = acked
        try:
            refresh()
        except Exception as exc:  # a gauge must never stop the pipeline
            log.debug("refreshing gauges: %s", exc)


def _split(result: WorkResult) -> dict[tuple[str, str], int]:
    """Landed and duplicate rows of one answer, by each row's topic (failures are counted on their own)."""
    failed = {id(r.msg) for r in result.failed}
    by_topic: dict[str, int] = {}
    for row in result.work.rows:
        if id(row.msg) not in failed:
            topic = row.msg.topic() or "-"
            by_topic[topic] = by_topic.get(topic, 0) + 1
    out: dict[tuple[str, str], int] = {}
    duplicates = result.duplicates
    for topic, n in by_topic.items():
        dup = min(n, duplicates)
        duplicates -= dup
        out[(topic, "duplicate")] = dup
        out[(topic, "landed")] = n - dup
    return out

"""A batch: the records of one consume call, followed from sort to commit.

A :class:`Batch` remembers the highest offset it holds per partition (filtered records included, so that a
stretch of someone else's traffic still moves the committed offset), how many of its table works are still
unanswered and how many of its error records Kafka has not yet acknowledged. It is *done* when both are zero;
only then may its offsets be committed, and only in order (:mod:`kapow.pipeline.commit`). Answered works are
dropped as they arrive, so a batch waiting on one held table keeps only that table's rows in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from kapow.pipeline.work import ErrorRecord, WorkResult


@dataclass(slots=True)
class TopicCounts:
    """Per consumed topic, what the filter step saw (metrics are labelled by the record's own topic)."""

    filtered: int = 0
    passed: int = 0


@dataclass(slots=True, eq=False)
class Batch:
    seq: int
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> highest offset
    topics: dict[str, TopicCounts] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)  # from sort, published as soon as it is sorted
    pending: int = 0  # table works submitted and not yet answered
    unacked: int = 0  # error records produced and not yet acknowledged by Kafka
    nbytes: int = 0  # bytes of packets still held for this batch (the writer's memory bound)
    received: int = 0
    filtered: int = 0
    packets: int = 0  # pipeline packets (passed the filter)
    landed: int = 0
    duplicates: int = 0
    user_errors: int = 0
    system_errors: int = 0
    probes: int = 0
    results: list[WorkResult] = field(default_factory=list)  # answers kept for the DEBUG per-packet log only
    databases: dict[str, list[Any]] = field(default_factory=dict)  # database -> [slowest s, landed, duplicates]
    started: float = field(default_factory=time.monotonic)
    # Record timestamps (ms) of the first and last record: end-to-end latency is sampled per batch, not per row.
    first_ts_ms: int = 0
    last_ts_ms: int = 0

    @property
    def done(self) -> bool:
        return self.pending == 0 and self.unacked == 0

    def ack(self) -> None:
        """One of this batch's error records is acknowledged by Kafka (called by the error publisher)."""
        self.unacked -= 1


class BatchSizer:
    """How many records the next consume asks for: ``batch_max_messages``, or more while traffic spreads thin.

    What a batch amortizes is paid per table: a statement, its planning, a work to queue and answer. One table's
    rows in a batch of 5,000 share one statement; the same batch spread over 10,000 tables is 4,000 statements of
    about one row, and the rate falls to a fifth. So while a backlog is there (a batch came back at least
    ``base`` records long) and its rows are spread thin (fewer than :attr:`SPREAD_ROWS` per table, over at least
    :attr:`MIN_WORKS` tables), the next batch asks for twice as many, up to ``cap`` and to a quarter of
    ``max_buffer_bytes`` at the last batch's record size. Dense traffic halves it back, and a batch that comes
    back short (a live stream, no backlog) returns it to ``base`` at once. Latency at low rates is untouched:
    the batch still goes after ``batch_max_wait_ms``, with whatever arrived.
    """

    SPREAD_ROWS = 8
    MIN_WORKS = 64  # a few tables' statements cost little next to the batch's other work: no growth for those

    def __init__(self, base: int, cap: int, max_bytes: int) -> None:
        self.base = base
        self.cap = max(base, cap)
        self.max_bytes = max_bytes
        self.target = base

    def observe(self, received: int, rows: int, works: int, nbytes: int) -> int:
        """Learn from the batch just sorted (records, rows filed, table works, bytes); the next target."""
        if received < self.base:
            self.target = self.base
            return self.target
        target = self.target
        if works >= self.MIN_WORKS and rows < self.SPREAD_ROWS * works:
            target = min(target * 2, self.cap)
        elif rows >= 2 * self.SPREAD_ROWS * works:
            target //= 2
        by_bytes = self.max_bytes // 4 // max(1, nbytes // max(1, received))  # bigger records, fewer of them
        self.target = max(self.base, min(target, by_bytes))
        return self.target

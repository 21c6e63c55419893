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

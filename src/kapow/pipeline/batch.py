"""The unit of work that flows through sort → persist → commit: one consumed batch of Kafka records.

A :class:`Batch` remembers the highest offset it holds per partition (filtered records included, so that a
stretch of someone else's traffic still moves the committed offset), the rows it must land, grouped per
destination table, and the error records it must get acknowledged. It is *done* when every group is written
(or its failures are on an error topic) and every error record is acknowledged; only then may its offsets be
committed, and only in order (see :mod:`kapow.pipeline.commit`).
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from kapow.contract import Destination
from kapow.errors import Failure

if TYPE_CHECKING:
    from confluent_kafka import Message

    from kapow.config import DestinationConfig
    from kapow.postgres.catalog import Table

TableKey = tuple[str, str, str, str]  # (vanity, database, schema, table)


class Row(msgspec.Struct, gc=False):
    """One row bound for one table (a msgspec Struct: one is built per packet, so it must be cheap to make)."""

    msg: Message
    doc: bytes  # the packet's ``data`` exactly as the client sent it
    keys: tuple[str, ...]  # its column names, in the client's order
    data: dict[str, Any]  # decoded, for validation only


@dataclass(slots=True)
class Group:
    """Rows for one destination table within one batch."""

    key: TableKey
    destination: Destination
    config: DestinationConfig
    table: Table | None  # as the catalog had it at sort time (None: not loaded yet)
    rows: list[Row] = field(default_factory=list)  # validated against ``table``
    # Rows persist must validate against a table it loads itself: none was cached, or the cached one refused
    # them in a way a schema change could explain (unknown column, unknown table) and is worth a fresh look.
    unchecked: list[Row] = field(default_factory=list)
    reload: bool = False


@dataclass(slots=True)
class ErrorRecord:
    """A failed packet (for one destination, or for all when ``destination`` is None) bound for an error topic."""

    msg: Message
    failure: Failure
    destination: Destination | None
    attempts: int = 1


@dataclass(slots=True)
class GroupResult:
    group: Group
    inserted: int = 0
    duplicates: int = 0
    failed: list[ErrorRecord] = field(default_factory=list)
    seconds: float = 0.0
    attempts: int = 1


@dataclass(slots=True)
class Batch:
    seq: int
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> highest offset
    groups: dict[TableKey, Group] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)  # from sort; persist failures join on completion
    futures: list[Future[GroupResult]] = field(default_factory=list)
    results: list[GroupResult] = field(default_factory=list)
    unacked: int = 0  # error records produced, not yet acknowledged by Kafka
    collected: bool = False  # results gathered and their error records produced
    received: int = 0
    filtered: int = 0
    packets: int = 0  # pipeline packets (passed the filter)
    started: float = field(default_factory=time.monotonic)
    # Record timestamps (ms) of the first and last record: end-to-end latency is sampled per batch, not per row.
    first_ts_ms: int = 0
    last_ts_ms: int = 0

    @property
    def persisted(self) -> bool:
        return all(f.done() for f in self.futures)

    @property
    def done(self) -> bool:
        return self.collected and self.unacked == 0

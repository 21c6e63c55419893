"""The units of work that flow from sort to the database lanes and back: rows, table works, results.

(:class:`~kapow.deadletter.publisher.ErrorRecord`, a failed packet bound for an error topic, lives with the
publisher that writes it; it is re-exported here for the pipeline's modules.)

A :class:`TableWork` is one batch's rows for one table. It is what a database lane queues, orders, holds while
its table or database is unwell, writes (together with other tables' works) and finally answers with a
:class:`WorkResult`: how many rows changed, how many were no-ops, and an :class:`ErrorRecord` for each packet that
failed. These are plain data: the lane never sees a batch and the loop never sees a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from kapow.contract import Destination, TableKey
from kapow.deadletter.publisher import ErrorRecord

if TYPE_CHECKING:
    from confluent_kafka import Message

    from kapow.config import DestinationConfig
    from kapow.pipeline.route import RouteSpec


class Row(msgspec.Struct, gc=False):
    """One packet's row bound for one table (a msgspec Struct: one is built per packet, so it must be cheap)."""

    msg: Message
    doc: bytes  # the packet's ``data`` exactly as the client sent it: a view into its value (contract.as_bytes)
    keys: tuple[str, ...]  # its column names, in the client's order
    dest: Destination  # the destination entry that sent it here (its mode and options)
    route: RouteSpec | None = None  # a Debezium change event still to decode (the lane knows the column types)
    values: Any = None  # its values decoded in the order of ``keys`` (contract.PacketDecoder.values), or None


# What a consumed packet holds in memory beyond its value: the client's Message object and its headers, the
# decoded document, its Row, a share of its statement's payload. The writer's memory bound counts it, so that
# ``max_buffer_bytes`` bounds the process, not only the values: an RSS of ~2.2 kB per 250 B packet in flight
# was measured (docs/BENCHMARKS.md, "Memory"), and small packets are where the values alone undercount most.
PACKET_OVERHEAD = 1536
# A packet this large (value + PACKET_OVERHEAD) leaves free memory that glibc keeps once it is let go; the loop
# counts such bytes and trims after enough of them (kapow.pipeline.process.Trimmer). Small packets never count.
LARGE_PACKET = 64 * 1024


def header_bytes(headers: Any) -> int:
    """What a record's headers hold (names and values; ``Message.headers()``, a list of pairs): a client's too, kept
    as long as its packet."""
    return sum(len(name) + len(value or b"") for name, value in headers) if headers else 0


def record_bytes(msg: Message) -> int:
    """What a consumed record holds for the writer's memory bound: its value, key and headers, and the overhead.

    Headers and keys were not counted: 2,000 packets of 150 B each carrying a 1 MB header, held behind a locked
    table, took a writer bounded at 64 MB to 2.2 GB while it counted 3.7 MB (a hostile run).
    """
    return len(msg.value() or b"") + len(msg.key() or b"") + header_bytes(msg.headers()) + PACKET_OVERHEAD


class TableWork(msgspec.Struct, gc=False, eq=False):
    """One batch's rows for one table, as queued in its database's lane (a msgspec Struct: one is made per table
    per batch, and a batch may touch a thousand tables)."""

    key: TableKey
    config: DestinationConfig
    rows: list[Row]
    batch: int  # the sequence number of the batch it belongs to
    nbytes: int  # memory its packets hold (values + PACKET_OVERHEAD each), for the writer's memory bound
    large: int = 0  # the part of nbytes in packets over LARGE_PACKET: their memory is trimmed once let go
    enqueued_at: float = 0.0  # monotonic; set by the lane
    epoch: int = 0  # the lane's cancel epoch when queued: work from before a revoke is never retried
    attempts: int = 0


class WorkResult(msgspec.Struct, gc=False, eq=False):
    """What became of one :class:`TableWork`: every row landed, was a no-op, or failed with a record."""

    work: TableWork
    landed: int = 0  # rows that took effect
    duplicates: int = 0  # rows that changed nothing: a replay, a delete of an absent row, a stale version
    failed: list[ErrorRecord] = msgspec.field(default_factory=list)
    seconds: float = 0.0  # from queued to answered
    attempts: int = 1
    probes: int = 0  # statements spent isolating bad rows


__all__ = ["LARGE_PACKET", "PACKET_OVERHEAD", "ErrorRecord", "Row", "TableWork", "WorkResult", "header_bytes",
           "record_bytes"]

"""One consume of the loop, bounded in bytes as well as in records: a few records first, then sized by them.

librdkafka bounds what it prefetches (``queued.max.messages.kbytes``, in compressed bytes), not what one
``consume(n, timeout)`` returns: the call keeps taking records as fetches arrive until it has ``n`` or the timeout
passes. Asked for 10,000 records, a burst of 0.9 MB packets came back as one batch of 242 (208 MB) into a writer
bounded at 64 MB, and its RSS peaked 444 MB above where it started. So the first call asks only for as many
records as the byte budget holds at :data:`RECORD_BYTES` each (Kafka's default largest record); the next calls
ask for what the rest of the budget holds at the average size of the records taken so far, within the same
wait. A stream of small packets still gets batches of ``batch_max_wait_ms`` or of the target; only a switch from
small records to large ones within one wait can bring more than the budget, by what arrives in that wait.

A rebalance runs inside a consume call. librdkafka drops the outdated records of the call it happens in, not
those an earlier call returned: the records taken before it, of partitions revoked or lost meanwhile, are dropped
here (the next owner, or this writer after a new assignment, reads them again from the committed offsets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Set
from typing import Any

from kapow.pipeline.work import record_bytes

RECORD_BYTES = 1024 * 1024  # the largest record a broker takes by default (message.max.bytes, 1 MB)


class Revoked:
    """The partitions revoked or lost since the loop's current consume began: filled by the rebalance callbacks
    (which run inside the consume calls), read between the calls, cleared before the next consume."""

    def __init__(self) -> None:
        self.count = 0
        self.partitions: set[tuple[str, int]] = set()

    def add(self, partitions: Set[tuple[str, int]]) -> None:
        self.count += 1
        self.partitions |= partitions

    def clear(self) -> None:
        self.count = 0
        self.partitions.clear()


def consume_bounded(consumer: Any, target: int, wait: float, budget: int, revoked: Revoked,
                    clock: Callable[[], float] = time.monotonic) -> list[Any]:
    """Up to ``target`` records and about ``budget`` bytes (:func:`~kapow.pipeline.work.record_bytes`: values, keys,
    headers and the overhead; at least one record), waiting ``wait`` s in all; records of partitions ``revoked``
    after they were taken are left out."""
    deadline = clock() + wait
    asked = max(1, min(target, budget // RECORD_BYTES))
    msgs: list[Any] = consumer.consume(asked, wait)
    if len(msgs) < asked or len(msgs) >= target:  # the wait ran out, or the batch is whole: no bytes to count
        return msgs
    got = _bytes(msgs)
    while True:
        average = max(1, got // len(msgs)) if msgs else RECORD_BYTES  # none left after a revoke: as at first
        more = min(target - len(msgs), (budget - got) // average)
        if more <= 0:
            return msgs
        rebalances = revoked.count
        taken: list[Any] = consumer.consume(more, max(0.0, deadline - clock()))
        if revoked.count != rebalances:  # a rebalance in that call: what earlier calls took may be another's now
            msgs = [m for m in msgs if (m.topic(), m.partition()) not in revoked.partitions]
            got = _bytes(msgs)
        msgs.extend(taken)
        if len(taken) < more or len(msgs) >= target:  # the wait ran out (nothing more is queued), or whole
            return msgs
        got += _bytes(taken)


def _bytes(msgs: list[Any]) -> int:
    return sum(map(record_bytes, msgs))

"""One consume of the loop, bounded in bytes as well as in records: a wait for the first few, then what is queued.

librdkafka bounds what it prefetches (``queued.max.messages.kbytes``), not what one ``consume(n, timeout)``
returns: the call keeps taking records as fetches arrive until it has ``n`` or the timeout passes. Asked for
10,000 records, a burst of 0.9 MB packets came back as one batch of 242 (208 MB) into a writer bounded at 64 MB,
and its RSS peaked 444 MB above where it started. So the call that waits asks only for as many records as the
byte budget holds at :data:`RECORD_BYTES` each (Kafka's default largest record), and the rest of the target is
taken without waiting, from what librdkafka has already queued (bounded by its own prefetch setting), sized by
the records just seen. A stream of small packets gets its batches as before: the first call returns at once
when a backlog is there, and the second fills the batch from the queue.
"""

from __future__ import annotations

from typing import Any

RECORD_BYTES = 1024 * 1024  # the largest record a broker takes by default (message.max.bytes, 1 MB)


def consume_bounded(consumer: Any, target: int, wait: float, budget: int) -> list[Any]:
    """Up to ``target`` records and about ``budget`` bytes of values (at least one record), waiting ``wait`` s."""
    first = max(1, min(target, budget // RECORD_BYTES))
    msgs: list[Any] = consumer.consume(first, wait)
    if len(msgs) < first or first >= target:  # the wait ran out (nothing more is queued), or the target is met
        return msgs
    sizes = [len(m.value() or b"") for m in msgs]
    more = min(target - first, (budget - sum(sizes)) // max(1, *sizes))
    if more > 0:
        msgs.extend(consumer.consume(more, 0))
    return msgs

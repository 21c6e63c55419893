"""Read the most recent records of the user-errors topic, newest first, for the console (read-only).

User errors are a callback topic for clients; operators only look at them. The read is bounded twice: at most
``per_partition`` records from the end of each partition, each value kept up to ``keep_bytes`` (a packet may be
up to ``max_packet_bytes``, a megabyte by default), so neither the time nor the memory grows with the topic.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition

from kapow.deadletter.queue import DlqRecord, decode_record
from kapow.errors import KapowError
from kapow.kafka.clients import Settings, admin_config


@dataclasses.dataclass(frozen=True, slots=True)
class Trimmed:
    """An error record whose value may be cut short (``size`` is the original length)."""

    record: DlqRecord
    size: int

    @property
    def truncated(self) -> bool:
        return self.size > len(self.record.value or b"")


def trim(record: DlqRecord, keep_bytes: int, *, headers: bool = True) -> Trimmed:
    value = record.value or b""
    if len(value) <= keep_bytes and headers:
        return Trimmed(record, len(value))
    short = value[:keep_bytes] if record.value is not None else None
    return Trimmed(dataclasses.replace(record, value=short, headers=record.headers if headers else ()), len(value))


def recent_records(bootstrap: str, topic: str, *, settings: Settings | None = None, per_partition: int = 200,
                   keep_bytes: int = 16 * 1024, timeout: float = 10.0) -> list[Trimmed]:
    """The last ``per_partition`` records of every partition of ``topic``, newest (by failure time) first."""
    conf = admin_config(bootstrap, settings)
    conf.update({"group.id": f"kapow-recent-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                 "auto.offset.reset": "earliest", "enable.partition.eof": True})
    consumer = Consumer(conf)
    out: list[Trimmed] = []
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            return out
        ends: dict[int, int] = {}
        assignment = []
        for p in info.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, max(low, high - per_partition)))
        if not assignment:
            return out
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout * 2
        while ends:
            if time.monotonic() > deadline:
                raise KapowError(f"timed out reading {topic} from {bootstrap}")
            for msg in consumer.consume(1000, 0.05):  # a batch call waits its whole timeout: keep it short
                p = msg.partition() or 0
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop(p, None)
                        continue
                    raise KapowError(f"reading {topic}: {err}")
                out.append(trim(decode_record(msg), keep_bytes))
                if (msg.offset() or 0) + 1 >= ends.get(p, 0):
                    ends.pop(p, None)
    finally:
        consumer.close()
    out.sort(key=lambda t: (t.record.failed_at_ms, t.record.partition, t.record.offset), reverse=True)
    return out

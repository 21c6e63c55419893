"""Where a newly assigned partition starts: its committed offset, else its first record, told to librdkafka.

Left to itself, librdkafka resets a partition without a committed offset through a timer, about 0.1 s after
every assignment of a new group (measured: 110 ms against 7-21 ms when the offset is assigned).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

log = logging.getLogger("kapow.writer")


def start_offsets(consumer: Any, partitions: list[TopicPartition], timeout: float = 5.0) -> list[TopicPartition]:
    """Each partition at its committed offset, else its low watermark; empty when the broker did not say."""
    starts: list[TopicPartition] = []
    try:
        for tp in consumer.committed(partitions, timeout=timeout):
            offset = tp.offset
            if offset < 0:
                low, _high = consumer.get_watermark_offsets(tp, timeout=timeout)
                offset = max(low, 0)
            starts.append(TopicPartition(tp.topic, tp.partition, offset))
    except KafkaException as exc:
        log.debug("committed offsets unknown at assignment: %s", exc)
        return []
    return starts


def assign_from(consumer: Any, starts: list[TopicPartition]) -> None:
    """Start consuming at ``starts``; when the client refuses, librdkafka finds the offsets itself (slower)."""
    try:
        consumer.assign(starts)
    except (KafkaException, RuntimeError) as exc:  # e.g. a cooperative strategy set in [kafka] settings
        log.debug("assigning the known start offsets failed (%s): librdkafka finds them", exc)

"""Publish failed packets to the user-errors or system-errors topic, and know when Kafka has them.

An error record keeps the original key, value (byte for byte) and headers, and adds ``kapow-*`` headers
(PRODUCT.md §4). Its batch's offsets may be committed only once the record is acknowledged, so every record
counts against its batch until the delivery report arrives; a failed delivery is produced again after a pause,
never dropped: if the error topic cannot be written, the pipeline stops committing past it and waits.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from kapow.errors import ErrorClass

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message, Producer

    from kapow.pipeline.batch import Batch, ErrorRecord

log = logging.getLogger(__name__)

HEADER_PREFIX = "kapow-"
H_CLASS = "kapow-error-class"
H_CODE = "kapow-error-code"
H_MESSAGE = "kapow-error-message"
H_DESTINATION = "kapow-destination"
H_TOPIC = "kapow-source-topic"
H_PARTITION = "kapow-source-partition"
H_OFFSET = "kapow-source-offset"
H_TIMESTAMP = "kapow-source-timestamp"
H_ATTEMPT = "kapow-attempt"
H_FAILED_AT = "kapow-failed-at"


def error_headers(record: ErrorRecord, failed_at_ms: int) -> list[tuple[str, bytes]]:
    """The original headers (minus any earlier ``kapow-*`` ones), then this failure's metadata."""
    msg = record.msg
    headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
    original = [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX) and v is not None]
    dest = record.destination
    prior_attempts = 0
    for k, v in headers:
        if k == H_ATTEMPT and v is not None:
            try:
                prior_attempts = int(v)
            except ValueError:
                prior_attempts = 0
    meta = [
        (H_CLASS, record.failure.error_class.value.encode()),
        (H_CODE, record.failure.code.value.encode()),
        (H_MESSAGE, record.failure.message.encode("utf-8", "replace")),
        (H_TOPIC, str(msg.topic()).encode()),
        (H_PARTITION, str(msg.partition()).encode()),
        (H_OFFSET, str(msg.offset()).encode()),
        (H_TIMESTAMP, str(msg.timestamp()[1]).encode()),
        (H_ATTEMPT, str(max(record.attempts, prior_attempts)).encode()),
        (H_FAILED_AT, str(failed_at_ms).encode()),
    ]
    if dest is not None:
        from kapow.contract import destination_json

        meta.append((H_DESTINATION, destination_json(dest)))
    return original + meta


class ErrorPublisher:
    """Produces error records for batches and tracks their acknowledgements (main thread only)."""

    def __init__(self, producer: Producer, *, user_topic: str, system_topic: str) -> None:
        self._producer = producer
        self._topics = {ErrorClass.USER: user_topic, ErrorClass.SYSTEM: system_topic}
        self._retry: deque[tuple[float, Batch, ErrorRecord]] = deque()
        self.published = {ErrorClass.USER: 0, ErrorClass.SYSTEM: 0}
        self.delivery_failures = 0

    def topic_for(self, record: ErrorRecord) -> str:
        return self._topics[record.failure.error_class]

    def publish(self, batch: Batch, record: ErrorRecord) -> None:
        batch.unacked += 1
        self._produce(batch, record)

    def _produce(self, batch: Batch, record: ErrorRecord) -> None:
        msg = record.msg
        topic = self.topic_for(record)

        def on_delivery(err: KafkaError | None, _delivered: Message) -> None:
            if err is None:
                batch.unacked -= 1
                self.published[record.failure.error_class] += 1
            else:
                self.delivery_failures += 1
                log.warning("error record for %s[%d]@%d not delivered to %s: %s; retrying",
                            msg.topic(), msg.partition(), msg.offset(), topic, err)
                self._retry.append((time.monotonic() + 1.0, batch, record))

        while True:
            try:
                self._producer.produce(
                    topic,
                    value=msg.value(),
                    key=msg.key(),
                    headers=error_headers(record, int(time.time() * 1000)),  # type: ignore[arg-type]
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # local queue full: serve delivery reports, then try again
                self._producer.poll(0.1)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports and re-produce records whose delivery failed, once their pause is over."""
        self._producer.poll(timeout)
        now = time.monotonic()
        while self._retry and self._retry[0][0] <= now:
            _, batch, record = self._retry.popleft()
            self._produce(batch, record)

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.05)
            left = self._producer.flush(max(0.0, min(0.2, deadline - time.monotonic())))
            if (left == 0 and not self._retry) or time.monotonic() >= deadline:
                return int(left) + len(self._retry)


def describe(record: ErrorRecord) -> dict[str, Any]:
    """Fields of one failed packet for a structured log line."""
    msg = record.msg
    out: dict[str, Any] = {
        "topic": msg.topic(),
        "partition": msg.partition(),
        "offset": msg.offset(),
        "class": record.failure.error_class.value,
        "code": record.failure.code.value,
        "reason": record.failure.message,
    }
    if record.destination is not None:
        d = record.destination
        out["destination"] = f"{d.vanity}/{d.database}/{d.schema}.{d.table}"
    return out

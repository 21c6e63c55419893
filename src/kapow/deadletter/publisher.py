"""Publish failed packets to the user-errors or system-errors topic, and know when Kafka has them.

An error record keeps the original key, value (byte for byte) and headers (null-valued ones and the client's own
``kapow-*`` ones included) and adds KaPoW's ``kapow-*`` headers (PRODUCT.md §4), each bounded: an error record
can never be much larger than the packet it reports. Its batch's offsets may be committed only once the record
is acknowledged, so the caller's ``on_ack`` runs when the delivery report arrives; a failed delivery is produced
again after a pause, never dropped.

A record too large for the error topic must not stop the writer either (it used to end in MSG_SIZE_TOO_LARGE and
exit 1, on every restart): it is produced again with its value cut to fit and ``kapow-value-truncated`` saying
the original size, and if even that is refused, with no value and no client headers. Its source coordinates are
always kept, so the packet can be found in its topic.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from confluent_kafka import KafkaError, KafkaException

from kapow.contract import DESTINATION_HEADER, Destination, destination_json
from kapow.errors import ErrorClass, Failure

if TYPE_CHECKING:
    from confluent_kafka import Message, Producer

log = logging.getLogger(__name__)

HEADER_PREFIX = "kapow-"
H_CLASS = "kapow-error-class"
H_CODE = "kapow-error-code"
H_MESSAGE = "kapow-error-message"
H_DESTINATION = DESTINATION_HEADER
H_TOPIC = "kapow-source-topic"
H_PARTITION = "kapow-source-partition"
H_OFFSET = "kapow-source-offset"
H_TIMESTAMP = "kapow-source-timestamp"
H_ATTEMPT = "kapow-attempt"
H_FAILED_AT = "kapow-failed-at"
H_TRUNCATED = "kapow-value-truncated"
H_ORIGIN = "kapow-origin"  # topic/partition/offset of the original record, set on every republished copy

# KaPoW's own metadata of an earlier failure: replaced on a new one. Any other header is the client's and is kept,
# kapow-* or not (kapow-origin and kapow-attempt travel with the packet across reschedules).
OWN_HEADERS = frozenset({H_CLASS, H_CODE, H_MESSAGE, H_DESTINATION, H_TOPIC, H_PARTITION, H_OFFSET, H_TIMESTAMP,
                         H_ATTEMPT, H_FAILED_AT, H_TRUNCATED})
MESSAGE_LIMIT = 500  # characters of kapow-error-message
RETRY_AFTER_S = 1.0

OnAck = Callable[[], None]


class ErrorRecord(msgspec.Struct, gc=False, eq=False):
    """A failed packet (for one destination, or for all when ``destination`` is None) bound for an error topic."""

    msg: Message
    failure: Failure
    destination: Destination | None
    attempts: int = 1


def safe_headers(msg: Message) -> list[tuple[str, bytes | None]]:
    """A record's headers, or none when the client library cannot decode them (never an exception)."""
    try:
        return list(msg.headers() or [])  # type: ignore[arg-type]
    except Exception:
        return []


def error_headers(record: ErrorRecord, failed_at_ms: int, *, client_headers: bool = True,
                  truncated_from: int | None = None) -> list[tuple[str, bytes | None]]:
    """The original headers (minus KaPoW's metadata of an earlier failure), then this failure's metadata."""
    msg = record.msg
    headers = safe_headers(msg)
    prior_attempts = 0
    for k, v in headers:
        if k == H_ATTEMPT and v is not None:
            try:
                prior_attempts = int(v[:20])
            except ValueError:
                prior_attempts = 0
    original = [(k, v) for k, v in headers if k not in OWN_HEADERS] if client_headers else []
    message = record.failure.message
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 1] + "…"
    meta: list[tuple[str, bytes | None]] = [
        (H_CLASS, record.failure.error_class.value.encode()),
        (H_CODE, record.failure.code.value.encode()),
        (H_MESSAGE, message.encode("utf-8", "replace")),
        (H_TOPIC, str(msg.topic()).encode()),
        (H_PARTITION, str(msg.partition()).encode()),
        (H_OFFSET, str(msg.offset()).encode()),
        (H_TIMESTAMP, str(msg.timestamp()[1]).encode()),
        (H_ATTEMPT, str(max(record.attempts, prior_attempts)).encode()),
        (H_FAILED_AT, str(failed_at_ms).encode()),
    ]
    if record.destination is not None:
        meta.append((H_DESTINATION, destination_json(record.destination)))
    if truncated_from is not None:
        meta.append((H_TRUNCATED, str(truncated_from).encode()))
    return original + meta


@dataclass(slots=True)
class _Pending:
    record: ErrorRecord
    on_ack: OnAck
    stage: int = 0  # 0: whole; 1: value cut to fit; 2: no value, no client headers
    due: float = 0.0


class ErrorPublisher:
    """Produces error records and tracks their acknowledgements (main thread only).

    ``max_bytes`` is what the error topics accept (their ``max.message.bytes``): a value cut to fit keeps that
    many bytes less a margin for the headers.
    """

    def __init__(self, producer: Producer, *, user_topic: str, system_topic: str, max_bytes: int = 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._producer = producer
        self._topics = {ErrorClass.USER: user_topic, ErrorClass.SYSTEM: system_topic}
        self._max_bytes = max_bytes
        self._clock = clock
        self._retry: deque[_Pending] = deque()
        self.published = {ErrorClass.USER: 0, ErrorClass.SYSTEM: 0}
        self.delivery_failures = 0
        self.truncated = 0
        self.in_flight = 0

    def topic_for(self, record: ErrorRecord) -> str:
        return self._topics[record.failure.error_class]

    def publish(self, record: ErrorRecord, on_ack: OnAck) -> None:
        """Produce ``record``; ``on_ack`` runs once Kafka has acknowledged it (however many tries it takes)."""
        self.in_flight += 1
        self._produce(_Pending(record, on_ack))

    def _produce(self, pending: _Pending) -> None:
        record = pending.record
        msg = record.msg
        topic = self.topic_for(record)
        value = msg.value()
        truncated_from: int | None = None
        if pending.stage == 1 and value is not None:
            # the key and the client's headers go whole at this stage: the value gets what they leave (a 1 MB value
            # beside a 300 kB key and a 300 kB header was cut to the topic's size, refused again, and went with no
            # value at all: a hostile run)
            extra = len(msg.key() or b"") + sum(len(k) + len(v or b"") for k, v in safe_headers(msg))
            keep = max(0, self._max_bytes - 64 * 1024 - extra)
            truncated_from, value = len(value), value[:keep]
        elif pending.stage >= 2:
            truncated_from, value = len(value or b""), None
        headers = error_headers(record, int(time.time() * 1000), client_headers=pending.stage < 2,
                                truncated_from=truncated_from)

        def on_delivery(err: KafkaError | None, _delivered: Message) -> None:
            self._delivered(pending, topic, err)

        try:
            self._producer.produce(topic, value=value, key=msg.key() if pending.stage < 2 else _short_key(msg),
                                   headers=headers, on_delivery=on_delivery)  # type: ignore[arg-type]
        except BufferError:  # local queue full: try again on the next poll, never block the loop here
            pending.due = self._clock()
            self._retry.append(pending)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            self._delivered(pending, topic, err if isinstance(err, KafkaError) else None, failed=True)

    def _delivered(self, pending: _Pending, topic: str, err: Any, *, failed: bool = False) -> None:
        if err is None and not failed:
            self.in_flight -= 1
            self.published[pending.record.failure.error_class] += 1
            if pending.stage:
                self.truncated += 1
            pending.on_ack()
            return
        self.delivery_failures += 1
        msg = pending.record.msg
        too_large = isinstance(err, KafkaError) and err.code() in (KafkaError.MSG_SIZE_TOO_LARGE,
                                                                  KafkaError.INVALID_MSG_SIZE)
        if too_large and pending.stage == 2:  # not even the bare metadata fits: the topic is misconfigured now;
            pending.stage = 0  # start over whole after a pause, so a fixed topic gets the record in full
            log.warning("error record for %s[%s]@%s refused by %s even without its value; retrying", msg.topic(),
                        msg.partition(), msg.offset(), topic)
            pending.due = self._clock() + RETRY_AFTER_S
        elif too_large:
            pending.stage += 1
            log.warning("error record for %s[%s]@%s too large for %s; retrying with %s", msg.topic(),
                        msg.partition(), msg.offset(), topic,
                        "its value cut to fit" if pending.stage == 1 else "no value")
            pending.due = self._clock()
        else:
            log.warning("error record for %s[%s]@%s not delivered to %s: %s; retrying", msg.topic(),
                        msg.partition(), msg.offset(), topic, err)
            pending.due = self._clock() + RETRY_AFTER_S
        self._retry.append(pending)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports and re-produce records whose delivery failed, once their pause is over."""
        self._producer.poll(timeout)
        now = self._clock()
        for _ in range(len(self._retry)):
            pending = self._retry.popleft()
            if pending.due <= now:
                self._produce(pending)
            else:
                self._retry.append(pending)

    def flush(self, timeout: float) -> int:
        """Wait (at most ``timeout``) until every record is acknowledged; the number still unacknowledged."""
        deadline = self._clock() + timeout
        while True:
            self.poll(0.05)
            left = self._producer.flush(max(0.0, min(0.2, deadline - self._clock())))
            if (left == 0 and not self._retry) or self._clock() >= deadline:
                return self.in_flight


def _short_key(msg: Message) -> bytes | None:
    key = msg.key()
    return key[:1024] if key else key


def describe(record: ErrorRecord) -> dict[str, Any]:
    """Fields of one failed packet for a structured log line (client-given names shortened)."""
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
        label = record.destination.label
        out["destination"] = label if len(label) <= 300 else label[:299] + "…"
    return out

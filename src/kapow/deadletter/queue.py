"""The dead-letter queue: view, reschedule and purge records on the system-errors topic.

Kafka cannot delete one record from the middle of a topic, so the queue keeps a compacted companion topic,
``<system-errors>.done``, with one marker per handled record (key ``partition:offset``). A record with a marker
never shows again, also after a restart or from another process. Rescheduling republishes the original key,
value and headers to the source topic with the attempt count carried forward, waits for Kafka's
acknowledgement, and only then writes the marker: a crash in between can at worst reschedule a record twice,
which the destination's unique key turns into a no-op; it can never lose one.

Both ``kapow dlq`` and the HTTP API use this one class.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from kapow.deadletter.publisher import (
    H_ATTEMPT,
    H_CLASS,
    H_CODE,
    H_DESTINATION,
    H_FAILED_AT,
    H_MESSAGE,
    H_OFFSET,
    H_PARTITION,
    H_TIMESTAMP,
    H_TOPIC,
    HEADER_PREFIX,
)
from kapow.errors import KapowError
from kapow.kafka.clients import Settings, admin_config, make_producer

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One parked packet, with its metadata decoded from the ``kapow-*`` headers."""

    id: str  # "partition:offset" on the system-errors topic
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    code: str
    error_class: str
    message: str
    destination: dict[str, str] | None
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int
    attempt: int
    failed_at_ms: int

    def to_json(self, *, with_value: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "partition": self.partition, "offset": self.offset, "code": self.code,
            "class": self.error_class, "message": self.message, "destination": self.destination,
            "source": {"topic": self.source_topic, "partition": self.source_partition,
                       "offset": self.source_offset, "timestamp_ms": self.source_timestamp_ms},
            "attempt": self.attempt, "failed_at": _iso(self.failed_at_ms), "failed_at_ms": self.failed_at_ms,
        }
        if with_value:
            out["key"] = _text(self.key)
            out["value"] = _text(self.value)
            out["headers"] = {k: _text(v) for k, v in self.headers}
        return out


@dataclass(frozen=True, slots=True)
class DlqFilter:
    ids: frozenset[str] | None = None
    code: str | None = None
    destination: str | None = None  # substring of "vanity/database/schema.table"
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, r: DlqRecord) -> bool:
        if self.ids is not None and r.id not in self.ids:
            return False
        if self.code and r.code != self.code:
            return False
        if self.destination:
            d = r.destination or {}
            where = f"{d.get('vanity', '')}/{d.get('database', '')}/{d.get('schema', '')}.{d.get('table', '')}"
            if self.destination not in where:
                return False
        if self.since_ms is not None and r.failed_at_ms < self.since_ms:
            return False
        return not (self.until_ms is not None and r.failed_at_ms > self.until_ms)


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    return b.decode("utf-8", "replace")


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """ISO 8601 (``2026-11-24T10:00:00Z``) or relative (``15m``, ``2h``, ``1d`` ago) -> epoch milliseconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return int((time.time() - int(text[:-1]) * units[text[-1]]) * 1000)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KapowError(f"cannot read time {text!r}: use ISO 8601 (2026-11-24T10:00:00Z) or 15m/2h/1d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def decode_record(msg: Message) -> DlqRecord:
    """A DLQ record from a Kafka message on an error topic (its ``kapow-*`` headers decoded)."""
    headers: list[tuple[str, bytes | None]] = msg.headers() or []  # type: ignore[assignment]
    clean = tuple((k, v) for k, v in headers if v is not None)
    meta = {k: v.decode("utf-8", "replace") for k, v in clean if k.startswith(HEADER_PREFIX)}

    def num(name: str) -> int:
        try:
            return int(meta.get(name, "-1"))
        except ValueError:
            return -1

    destination = None
    if H_DESTINATION in meta:
        try:
            destination = msgspec.json.decode(meta[H_DESTINATION], type=dict[str, str])
        except msgspec.DecodeError:
            destination = None
    partition, offset = msg.partition() or 0, msg.offset() or 0
    return DlqRecord(
        id=f"{partition}:{offset}", partition=partition, offset=offset, key=msg.key(), value=msg.value(),
        headers=clean, code=meta.get(H_CODE, "?"), error_class=meta.get(H_CLASS, "?"),
        message=meta.get(H_MESSAGE, ""), destination=destination, source_topic=meta.get(H_TOPIC, ""),
        source_partition=num(H_PARTITION), source_offset=num(H_OFFSET), source_timestamp_ms=num(H_TIMESTAMP),
        attempt=max(num(H_ATTEMPT), 1), failed_at_ms=num(H_FAILED_AT),
    )


class DeadLetterQueue:
    """Operations on one system-errors topic; every call reads the topic afresh (nothing is cached)."""

    def __init__(self, bootstrap: str, topic: str, *, settings: Settings | None = None,
                 timeout: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.done_topic = f"{topic}.done"
        self._settings = dict(settings or {})
        self._timeout = timeout
        self._producer: Producer | None = None

    def _consumer(self) -> Consumer:
        conf = admin_config(self.bootstrap, self._settings)
        conf.update({"group.id": f"kapow-dlq-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "enable.partition.eof": True})
        return Consumer(conf)

    def _read(self, topic: str, handle: Callable[[Message], None]) -> None:
        """Call ``handle`` on every record of ``topic`` up to its current end."""
        consumer = self._consumer()
        try:
            meta = consumer.list_topics(topic, timeout=self._timeout)
            info = meta.topics.get(topic)
            if info is None or info.error is not None:
                return
            pending: set[int] = set()
            assignment = []
            for p in info.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self._timeout)
                if high > low:
                    pending.add(p)
                    assignment.append(TopicPartition(topic, p, low))
            if not pending:
                return
            consumer.assign(assignment)
            deadline = time.monotonic() + self._timeout * 4
            while pending:
                if time.monotonic() > deadline:
                    raise KapowError(f"timed out reading {topic} from {self.bootstrap}")
                for msg in consumer.consume(1000, 0.1):  # short: EOF events end the read, not the timeout
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.discard(msg.partition() or 0)
                            continue
                        raise KapowError(f"reading {topic}: {err}")
                    handle(msg)
        finally:
            consumer.close()

    def handled(self) -> set[str]:
        """Ids of records already rescheduled or purged."""
        done: set[str] = set()

        def keep(msg: Message) -> None:
            key = msg.key()
            if key is not None:
                if msg.value() is None:  # a tombstone would un-handle; we never write one, but honour it
                    done.discard(key.decode())
                else:
                    done.add(key.decode())

        self._read(self.done_topic, keep)
        return done

    def records(self, flt: DlqFilter | None = None) -> list[DlqRecord]:
        """Records still parked (not rescheduled or purged), oldest first, that match ``flt``."""
        done = self.handled()
        out: list[DlqRecord] = []
        flt = flt or DlqFilter()

        def keep(msg: Message) -> None:
            rid = f"{msg.partition()}:{msg.offset()}"
            if rid in done:
                return
            record = decode_record(msg)
            if flt.matches(record):
                out.append(record)

        self._read(self.topic, keep)
        out.sort(key=lambda r: (r.failed_at_ms, r.partition, r.offset))
        return out

    def get(self, rid: str) -> DlqRecord | None:
        found = self.records(DlqFilter(ids=frozenset({rid})))
        return found[0] if found else None

    def _producer_(self) -> Producer:
        if self._producer is None:
            self._producer = make_producer(self.bootstrap, self._settings, **{"linger.ms": 5})
        return self._producer

    def _ensure_done_topic(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        admin = AdminClient(admin_config(self.bootstrap, self._settings))
        if self.done_topic in admin.list_topics(timeout=self._timeout).topics:
            return
        new = NewTopic(self.done_topic, num_partitions=1, replication_factor=-1,
                       config={"cleanup.policy": "compact"})
        for future in admin.create_topics([new], operation_timeout=self._timeout).values():
            try:
                future.result(self._timeout)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise KapowError(f"cannot create {self.done_topic}: {exc}") from None

    def _send_all(self, items: Iterable[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]],
                  progress: Progress | None, total: int) -> int:
        """Produce (topic, key, value, headers) items and wait until each is acknowledged; raise on failure."""
        producer = self._producer_()
        failures: list[str] = []
        acked = 0

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            nonlocal acked
            if err is not None:
                failures.append(str(err))
            else:
                acked += 1
                if progress is not None:
                    progress(acked, total)

        for topic, key, value, headers in items:
            while True:
                try:
                    producer.produce(topic, key=key, value=value, headers=headers,  # type: ignore[arg-type]
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(self._timeout * 2)
        if left or failures:
            raise KapowError(f"{left} records unacknowledged, {len(failures)} failed: {failures[:2]}")
        return acked

    def _mark(self, records: list[DlqRecord], action: str, progress: Progress | None) -> None:
        self._ensure_done_topic()
        now = int(time.time() * 1000)
        value = msgspec.json.encode({"action": action, "at_ms": now})
        marks: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
            (self.done_topic, r.id.encode(), value, []) for r in records
        ]
        self._send_all(marks, progress, len(records))

    def reschedule(self, records: list[DlqRecord], progress: Progress | None = None) -> int:
        """Republish each record to its source topic (acknowledged), then mark it handled."""
        items = []
        for r in records:
            if not r.source_topic:
                raise KapowError(f"record {r.id} has no {H_TOPIC} header; cannot reschedule it")
            headers = [(k, v) for k, v in r.headers if not k.startswith(HEADER_PREFIX)]
            headers.append((H_ATTEMPT, str(r.attempt + 1).encode()))
            items.append((r.source_topic, r.key, r.value, headers))
        self._send_all(items, progress, len(items))
        self._mark(records, "rescheduled", None)
        return len(records)

    def purge(self, records: list[DlqRecord], progress: Progress | None = None) -> int:
        self._mark(records, "purged", progress)
        return len(records)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout)
            self._producer = None

"""Publish KaPoW packets from an application: the ``context`` header is set for you.

    from kapow.client import Publisher
    with Publisher("127.0.0.1:9092", "events") as pub:
        pub.send([{"vanity": "warehouse", "database": "analytics", "schema": "public", "table": "payments"}],
                 {"payment_id": 912, "amount": "12.50"})
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message

from kapow.contract import CONTEXT_HEADER, CONTEXT_VALUE, make_packet
from kapow.kafka.clients import make_producer


class DeliveryError(Exception):
    """Kafka did not acknowledge some packets."""


class Publisher:
    """A thin, idempotent producer for packets; :meth:`flush` (or leaving the ``with``) waits for every ack."""

    def __init__(self, bootstrap: str, topic: str, *, settings: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self._producer = make_producer(bootstrap, settings, **{"linger.ms": 20, "batch.size": 1_000_000})
        self.sent = 0
        self.acked = 0
        self.failed: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed.append(str(err))

    def send_raw(self, value: bytes, key: bytes | None = None, *, pipeline: bool = True,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        """Publish an encoded packet (or, with ``pipeline=False``, a record without the context header)."""
        all_headers = list(headers or [])
        if pipeline:
            all_headers.append((CONTEXT_HEADER, CONTEXT_VALUE))
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, headers=all_headers,  # type: ignore[arg-type]
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.sent += 1
        if self.sent % 1000 == 0:
            self._producer.poll(0)

    def send(self, destinations: list[dict[str, str]], data: dict[str, Any], key: bytes | None = None) -> None:
        self.send_raw(make_packet(destinations, data), key)

    def flush(self, timeout: float = 60.0) -> None:
        left = self._producer.flush(timeout)
        if left or self.failed:
            raise DeliveryError(f"{left} packets unacknowledged, {len(self.failed)} failed: {self.failed[:3]}")

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.flush()

"""Publish KaPoW packets from an application: the ``context`` header is set for you.

    from kapow.client import Publisher
    with Publisher("127.0.0.1:9092", "kapow.demo.events") as pub:
        pub.send([{"type": "postgres", "vanity": "warehouse", "database": "kapow_demo", "schema": "public",
                   "table": "payments"}], {"payment_id": 912, "account": "acct-001", "amount": "12.50",
                                           "paid_at": "2026-11-24T10:00:00Z"})

A producer queues records and sends them from a background thread: a script that sends and exits without a
flush loses them silently (``Publisher(bootstrap, topic).send(...)`` exited 0 and sent nothing, issue 18). So a
Publisher flushes when it is closed, when its ``with`` block ends (also on an exception, which it does not
mask), and at interpreter exit if it is still open. The exit hook is a :func:`weakref.finalize` on the Publisher:
the registry holds the producer, not the Publisher, so a Publisher that is closed drops its entry and none is
kept alive by the hook.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from kapow.contract import CONTEXT_HEADER, CONTEXT_VALUE, make_packet
from kapow.kafka.clients import make_producer

FLUSH_TIMEOUT_S = 60.0


class DeliveryError(Exception):
    """Kafka did not acknowledge some packets."""


class Tally:
    """What a Publisher sent and what Kafka said about it; shared with its exit hook, which has no Publisher."""

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.failed: list[str] = []  # the first reasons only (bounded); the count is sent - acked - in flight

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.acked += 1
        elif len(self.failed) < 100:
            self.failed.append(err.str())


def _flush_at_exit(producer: Producer, tally: Tally, topic: str, timeout: float) -> None:
    """The finalizer: flush what is still queued; report, never raise (there is no caller left to tell)."""
    left = producer.flush(timeout)
    lost = tally.sent - tally.acked
    if lost:
        why = f" ({tally.failed[0]})" if tally.failed else ""
        print(f"kapow.client: {lost} packet(s) to {topic} not delivered{why}; {left} still unacknowledged after "
              f"{timeout:.0f} s", file=sys.stderr)


class Publisher:
    """A thin, idempotent producer for packets; :meth:`close` (or leaving the ``with``) waits for every ack."""

    def __init__(self, bootstrap: str, topic: str, *, settings: dict[str, Any] | None = None,
                 flush_timeout: float = FLUSH_TIMEOUT_S) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.flush_timeout = flush_timeout
        self._producer = make_producer(bootstrap, settings, **{"linger.ms": 20, "batch.size": 1_000_000})
        self.tally = Tally()
        self._finalizer = weakref.finalize(self, _flush_at_exit, self._producer, self.tally, topic, flush_timeout)

    @property
    def sent(self) -> int:
        return self.tally.sent

    @property
    def acked(self) -> int:
        return self.tally.acked

    @property
    def failed(self) -> list[str]:
        return self.tally.failed

    def _on_delivery_report(self, on_error: Callable[[KafkaError], None], err: KafkaError | None,
                            msg: Message) -> None:
        self.tally.on_delivery(err, msg)
        if err is not None:
            on_error(err)

    def send_raw(self, value: bytes, key: bytes | None = None, *, pipeline: bool = True,
                 headers: list[tuple[str, bytes]] | None = None,
                 on_error: Callable[[KafkaError], None] | None = None) -> None:
        """Publish an encoded packet (or, with ``pipeline=False``, a record without the context header).

        ``on_error`` is called (from :meth:`flush` or a later send) if Kafka refuses this one record. A record
        the client itself refuses (larger than ``message.max.bytes``, ...) raises ``KafkaException`` here.
        """
        all_headers = list(headers or [])
        if pipeline:
            all_headers.append((CONTEXT_HEADER, CONTEXT_VALUE))
        callback: Callable[[KafkaError | None, Message], None] = self.tally.on_delivery
        if on_error is not None:
            callback = partial(self._on_delivery_report, on_error)
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, headers=all_headers,  # type: ignore[arg-type]
                                       on_delivery=callback)
                break
            except BufferError:
                self._producer.poll(0.05)
        self.tally.sent += 1
        if self.tally.sent % 1000 == 0:
            self._producer.poll(0)

    def send(self, destinations: list[dict[str, str]], data: dict[str, Any], key: bytes | None = None) -> None:
        self.send_raw(make_packet(destinations, data), key)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every acknowledgement; raise :class:`DeliveryError` if some packets were not delivered."""
        left = self._producer.flush(self.flush_timeout if timeout is None else timeout)
        if left or self.failed:
            raise DeliveryError(f"{left} packet(s) to {self.topic} unacknowledged, {self.sent - self.acked - left} "
                                f"failed: {'; '.join(self.failed[:3])}")

    def close(self, timeout: float | None = None) -> None:
        """Flush, and drop the exit hook; closing twice is harmless."""
        self._finalizer.detach()
        self.flush(timeout)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # what was sent before the exception is still delivered; the exception is the one to report
            self.close()
        except DeliveryError:
            pass

"""Read change events back from Kafka, in offset order, until a condition holds (bounded in time)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from tests.integration import kit


@dataclass(frozen=True)
class Event:
    key: bytes | None
    value: bytes | None  # None: a tombstone
    partition: int
    offset: int


def read_until(topic: str, done: Callable[[list[Event]], bool], *, timeout: float) -> list[Event]:
    """Every record of ``topic`` from the start until ``done(events)`` is true; fail after ``timeout`` seconds.

    The topic may not exist yet (the connector's producer creates it on its first record)."""
    consumer = Consumer({"bootstrap.servers": kit.BOOTSTRAP, "group.id": kit.uid("cdc-reader"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            meta = consumer.list_topics(topic, timeout=5)
            if topic in meta.topics and meta.topics[topic].partitions and not meta.topics[topic].error:
                consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
                break
            time.sleep(0.2)
        while time.monotonic() < deadline:
            if done(events):
                return sorted(events, key=lambda e: (e.partition, e.offset))
            for msg in consumer.consume(1000, 0.5):
                if msg.error():
                    continue
                events.append(Event(msg.key(), msg.value(), msg.partition() or 0, msg.offset() or 0))
        raise AssertionError(f"after {timeout:.0f} s, {len(events)} events on {topic} and the condition still false")
    finally:
        consumer.close()


def count_at_least(n: int) -> Callable[[list[Event]], bool]:
    return lambda events: len(events) >= n


def has_key(fragment: bytes) -> Callable[[list[Event]], bool]:
    """True once an event whose key contains ``fragment`` (e.g. b'"id":999') has arrived."""
    return lambda events: any(e.key is not None and fragment in e.key for e in events)

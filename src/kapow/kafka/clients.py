"""Kafka clients, configured in one place: the writer's consumer and producer, and an admin client.

The consumer never auto-commits and never auto-stores offsets: the commit step alone decides what is done.
The producer is idempotent with ``acks=all``, since an error record is the only copy of a failed packet.
Every client routes librdkafka's own log lines and errors through KaPoW's logging, rate-limited, with one line of
its own naming the bootstrap address when the broker cannot be reached (:mod:`kapow.kafka.clientlog`); a
``logger`` or ``error_cb`` the caller passes wins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from kapow.kafka.clientlog import client_logging

log = logging.getLogger(__name__)

Settings = Mapping[str, str | int | float | bool]


def consumer_config(bootstrap: str, group_id: str, settings: Settings | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "partition.assignment.strategy": "range,roundrobin",
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 20,
        "queued.max.messages.kbytes": 65536,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300000,
        "client.id": "kapow",
    }
    conf.update(settings or {})
    return _with_logging(conf, bootstrap)


def producer_config(bootstrap: str, settings: Settings | None = None, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 30000,
        "client.id": "kapow",
    }
    conf.update(settings or {})
    conf.update(extra)
    return _with_logging(conf, bootstrap)


def _with_logging(conf: dict[str, Any], bootstrap: str) -> dict[str, Any]:
    for key, value in client_logging(bootstrap).items():
        conf.setdefault(key, value)  # a caller's own logger or error_cb (in settings or extra) wins
    return conf


def make_consumer(bootstrap: str, group_id: str, settings: Settings | None = None) -> Consumer:
    return Consumer(consumer_config(bootstrap, group_id, settings))


def make_producer(bootstrap: str, settings: Settings | None = None, **extra: Any) -> Producer:
    return Producer(producer_config(bootstrap, settings, **extra))


def admin_config(bootstrap: str, settings: Settings | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
    # Admin takes only the client-level properties (security, sasl, ...), not consumer/producer tuning.
    for key, value in (settings or {}).items():
        if key.startswith(("security.", "sasl.", "ssl.", "client.")):
            conf[key] = value
    return _with_logging(conf, bootstrap)


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    settings: Settings | None = None,
    # -1: the broker's default.replication.factor. A fixed 1 put the error topics (the only copy of a failed
    # packet) on one broker: losing it stalled every commit and could lose parked packets (chaos: broker kill).
    replication_factor: int = -1,
    timeout: float = 30.0,
) -> None:
    """Create the topics that do not exist yet (name -> partitions); existing ones are left as they are."""
    admin = AdminClient(admin_config(bootstrap, settings))
    existing = set(admin.list_topics(timeout=timeout).topics)
    new = [NewTopic(t, num_partitions=p, replication_factor=replication_factor)
           for t, p in topics.items() if t not in existing]
    if not new:
        return
    for topic, future in admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def delete_topics(bootstrap: str, topics: list[str], timeout: float = 30.0, *,
                  settings: Settings | None = None) -> None:
    admin = AdminClient(admin_config(bootstrap, settings))
    for future in admin.delete_topics(topics, operation_timeout=timeout).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise

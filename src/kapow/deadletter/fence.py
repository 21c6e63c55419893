"""The fence between an operator's reschedule or purge and the writers' automatic redrive: never both for a record.

The two republish with different Kafka transactions, so atomicity alone let them cross: the redrive judged a chunk,
paced it, and committed copies of records a ``kapow dlq reschedule`` had republished meanwhile (8,000 parked
records gave 10,500 rows). The ``<system-errors>.done`` topic has one partition, so its order is one order for
everyone, and the fence uses it:

* a mover (:mod:`.mover`) first commits a ``fence`` record there (key :data:`FENCE_KEY`), waits until every
  transaction written before it is decided (it can read its fence with ``read_committed``), and only then reads the
  markers: every redrive transaction before the fence is in what it reads. It renews the fence at least every
  :data:`RENEW_S` and releases it when it is done (or when it stops);
* the redrive produces a chunk's copies and markers in its transaction, flushes them (their offsets are known),
  reads the markers up to its own first one (everything before it decided), and commits only if no fence is
  active then and none of the chunk's records was marked meanwhile; else it aborts, and the records are judged
  again. A redrive transaction after the fence therefore sees it, and one before it is seen by the mover.

A fence is active from when the redrive reads it until :data:`LEASE_S` later (its own clock: no two hosts' clocks
are compared), or until its release is read; a mover that died holds the redrive back for at most that long. The
mover never commits a chunk that might end after ``LEASE_S`` from its last fence (it stops: "run it again").
Old readers skip the key: it is not a ``partition:offset``.
"""

from __future__ import annotations

import time
import uuid

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from kapow.deadletter.reader import quiet_config
from kapow.errors import KapowError
from kapow.kafka.clients import Settings

FENCE_KEY = b"kapow-fence"
LEASE_S = 120.0  # how long a fence holds the redrive back after it was read (a dead mover's cost)
RENEW_S = 20.0  # a mover renews its fence at least this often


class _Fence(msgspec.Struct):
    action: str = ""


def fence_value(active: bool) -> bytes:
    return msgspec.json.encode({"action": "fence" if active else "release", "at_ms": int(time.time() * 1000)})


def is_fence(value: bytes | None) -> bool:
    """Whether a :data:`FENCE_KEY` record holds the redrive back (a release, a tombstone or garbage does not)."""
    if value is None:
        return False
    try:
        return msgspec.json.decode(value, type=_Fence).action == "fence"
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False


def wait_readable(bootstrap: str, settings: Settings | None, topic: str, offset: int, timeout: float) -> None:
    """Return once a ``read_committed`` reader of partition 0 of ``topic`` gets past ``offset``: every transaction
    that wrote there before it is committed or aborted."""
    consumer = Consumer(quiet_config(bootstrap, settings, **{
        "group.id": f"kapow-fence-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True}))
    try:
        consumer.assign([TopicPartition(topic, 0, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.2):
                err = msg.error()
                at = msg.offset() or 0
                if (err is None and at >= offset) or (
                        err is not None and err.code() == KafkaError._PARTITION_EOF and at > offset):
                    return
    except KafkaException as exc:
        raise KapowError(f"cannot read {topic} at Kafka {bootstrap}: {exc}") from None
    finally:
        consumer.close()
    raise KapowError(f"{topic}: a transaction written before this command's fence is still open after "
                     f"{timeout:.0f} s; run it again")

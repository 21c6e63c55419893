"""Which parked records are handled: the ``<system-errors>.done`` companion topic, read into one byte per offset.

Kafka cannot delete one record from the middle of a topic, so a handled record gets a marker on a compacted
companion topic: key ``partition:offset`` (of the record on the system-errors topic), value JSON
``{"action": "rescheduled" | "purged" | "redriven" | ..., "at_ms": ...}``. Any action means "handled" (the
lead's automatic redrive writes ``redriven`` markers the same way); a tombstone (null value) un-handles.

Reading a million markers into a Python set costs about 100 MB; :class:`Handled` keeps one byte per offset of
the system-errors topic instead (a million parked records: 1 MB), which also records *what* happened, for the
audit: purged, or republished (and so accounted for by its copy).
"""

from __future__ import annotations

import enum
import time

import msgspec

from kapow.deadletter.reader import BrokerUnreachable, TopicReader, quiet_config
from kapow.errors import KapowError
from kapow.kafka.clients import Settings


class Action(enum.IntEnum):
    """What happened to a parked record (one byte per offset in :class:`Handled`)."""

    NONE = 0
    PURGED = 1
    REPUBLISHED = 2  # rescheduled by an operator, redriven by the writer, or any other action: a copy exists


class _Marker(msgspec.Struct):
    action: str = ""


def marker_key(partition: int, offset: int) -> bytes:
    return f"{partition}:{offset}".encode()


def marker_value(action: str, at_ms: int | None = None) -> bytes:
    return msgspec.json.encode({"action": action, "at_ms": int(time.time() * 1000) if at_ms is None else at_ms})


def _action(value: bytes) -> Action:
    try:
        name = msgspec.json.decode(value, type=_Marker).action
    except (msgspec.DecodeError, UnicodeDecodeError):
        name = ""
    return Action.PURGED if name == "purged" else Action.REPUBLISHED


class Handled:
    """Markers for the offsets of the system-errors topic that existed when it was read (``watermarks``)."""

    def __init__(self, watermarks: dict[int, tuple[int, int]]) -> None:
        self._base = {p: low for p, (low, _high) in watermarks.items()}
        self._slots = {p: bytearray(max(0, high - low)) for p, (low, high) in watermarks.items()}
        self.count = 0

    def _slot(self, partition: int, offset: int) -> tuple[bytearray, int] | None:
        slots = self._slots.get(partition)
        if slots is None:
            return None
        i = offset - self._base[partition]
        return (slots, i) if 0 <= i < len(slots) else None

    def set(self, partition: int, offset: int, action: Action) -> None:
        found = self._slot(partition, offset)
        if found is None:  # a marker for a record newer than the read (or gone with retention): not ours
            return
        slots, i = found
        self.count += (action != Action.NONE) - (slots[i] != Action.NONE)
        slots[i] = action

    def action(self, partition: int, offset: int) -> Action:
        found = self._slot(partition, offset)
        return Action.NONE if found is None else Action(found[0][found[1]])

    def __contains__(self, where: tuple[int, int]) -> bool:
        return self.action(*where) != Action.NONE


def read_handled(reader: TopicReader, topic: str, watermarks: dict[int, tuple[int, int]]) -> Handled:
    """Read ``<topic>.done`` (read_committed: an aborted reschedule's markers never count) into :class:`Handled`."""
    handled = Handled(watermarks)
    done_topic = f"{topic}.done"
    spans = reader.watermarks(done_topic)
    for msg in reader.read(done_topic, spans):
        key = msg.key()
        if key is None:
            continue
        part, sep, off = key.decode("ascii", "replace").partition(":")
        if not sep or not part.isdigit() or not off.isdigit():
            continue
        value = msg.value()
        handled.set(int(part), int(off), Action.NONE if value is None else _action(value))
    return handled


def ensure_done_topic(bootstrap: str, topic: str, settings: Settings | None = None, *, timeout: float = 15.0) -> str:
    """Create the compacted ``<topic>.done`` if it does not exist; return its name."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    done_topic = f"{topic}.done"
    admin = AdminClient(quiet_config(bootstrap, settings))
    try:
        if done_topic in admin.list_topics(timeout=timeout).topics:
            return done_topic
    except KafkaException as exc:
        raise BrokerUnreachable(f"cannot list topics at Kafka {bootstrap}: {exc.args[0].str()}") from None
    new = NewTopic(done_topic, num_partitions=1, replication_factor=-1, config={"cleanup.policy": "compact"})
    for future in admin.create_topics([new], operation_timeout=timeout).values():
        try:
            future.result(timeout)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise KapowError(f"cannot create {done_topic} at Kafka {bootstrap}: {exc}") from None
    return done_topic

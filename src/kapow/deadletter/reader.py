"""Read a Kafka topic from given offsets to the end it had when the read began: the one "read to end" loop.

The dead-letter queue, the recent user errors and the audit all read topics this way, from a short-lived consumer
that joins no group (``assign``, never ``subscribe``) and commits nothing. Three rules hold for every reader:

* The end is fixed first (the high watermarks), so a read of a busy topic terminates; a partition also ends at its
  EOF event, which for ``read_committed`` comes at the last stable offset (transaction markers take offsets and are
  never delivered, so waiting for ``high - 1`` could wait forever).
* ``isolation.level`` is ``read_committed``: a reschedule writes its copies and ``.done`` markers in one Kafka
  transaction, and an aborted one (a killed process) must never be seen.
* Broker trouble is one line naming the address (:class:`BrokerUnreachable`), never librdkafka's own log lines
  on stderr (they go to a silent logger) nor a traceback, and it comes within seconds: :func:`open_reader` asks
  for metadata with ``connect_timeout`` first, and a read that gets nothing for ``idle_timeout`` gives up.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from kapow.errors import KapowError, one_line
from kapow.kafka.clients import Settings, admin_config

if TYPE_CHECKING:
    from kapow.kafka.unreadable import Unreadable

CONNECT_TIMEOUT_S = 6.0  # an unreachable broker is reported within this (the CLI promises ~10 s in all)
_QUIET = logging.getLogger("kapow.deadletter.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # librdkafka's "%3|FAIL|..." lines: our own one line says what is wrong

# What the client fetches ahead is what a read holds in memory, whatever the topic's size; its queue limits count
# compressed bytes, so the bound is the fetch size times the data's compression ratio. With librdkafka's defaults
# (50 MB fetches) a read of a million 250-byte lz4 records queued ~300 MB decompressed (~180 MB RSS); 4 MB fetches
# held it near 125 MB, at ~100,000 records/s instead of ~180,000 (measured: docs/BENCHMARKS.md).
PREFETCH = {"fetch.max.bytes": 4 * 1024 * 1024, "max.partition.fetch.bytes": 1024 * 1024, "fetch.wait.max.ms": 10,
            "queued.max.messages.kbytes": 4096, "queued.min.messages": 20_000}
_MERGE_BUFFER = 2000  # records held per partition while merging partitions
Spans = Mapping[int, tuple[int, int]]  # partition -> [start, end) offsets


class BrokerUnreachable(KapowError):
    """Kafka did not answer; the message names the bootstrap address."""


def quiet_config(bootstrap: str, settings: Settings | None = None, **extra: Any) -> dict[str, Any]:
    """Client-level settings (security, sasl, ...) plus a silent librdkafka logger."""
    conf = admin_config(bootstrap, settings)
    conf.update({"logger": _QUIET, "log.connection.close": False})
    conf.update(extra)
    return conf


class TopicReader:
    """A group-less consumer for reading topics to their end; use :func:`open_reader` (it checks the broker)."""

    def __init__(self, bootstrap: str, settings: Settings | None = None, *, idle_timeout: float = 15.0) -> None:
        self.bootstrap = bootstrap
        self.idle_timeout = idle_timeout
        self._settings = dict(settings or {})
        self._consumer = Consumer(quiet_config(
            bootstrap, settings, **{"group.id": f"kapow-read-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                                    "auto.offset.reset": "earliest", "enable.partition.eof": True,
                                    "isolation.level": "read_committed", **PREFETCH}))

    def _fail(self, what: str, exc: BaseException | KafkaError | str) -> BrokerUnreachable:
        reason = exc.str() if isinstance(exc, KafkaError) else one_line(str(exc))
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
            reason = exc.args[0].str()
        return BrokerUnreachable(f"cannot {what} at Kafka {self.bootstrap}: {reason}")

    def check(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        try:
            self._consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise self._fail("read metadata", exc) from None

    def partitions(self, topic: str) -> list[int] | None:
        """The topic's partitions, sorted; ``None`` when the topic does not exist."""
        try:
            meta = self._consumer.list_topics(topic, timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            raise self._fail(f"describe topic {topic}", exc) from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            return None
        return sorted(info.partitions)

    def watermarks(self, topic: str, partitions: list[int] | None = None) -> dict[int, tuple[int, int]]:
        """partition -> (low, high) for every partition (empty when the topic does not exist)."""
        parts = self.partitions(topic) if partitions is None else partitions
        out: dict[int, tuple[int, int]] = {}
        for p in parts or []:
            try:
                out[p] = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=CONNECT_TIMEOUT_S)
            except KafkaException as exc:
                raise self._fail(f"read the offsets of {topic}[{p}]", exc) from None
        return out

    def offsets_for_time(self, topic: str, partitions: list[int], at_ms: int) -> dict[int, int]:
        """partition -> the first offset whose timestamp is at or after ``at_ms`` (-1: none yet)."""
        try:
            found = self._consumer.offsets_for_times([TopicPartition(topic, p, at_ms) for p in partitions],
                                                     timeout=CONNECT_TIMEOUT_S)
        except KafkaException as exc:
            raise self._fail(f"look up offsets by time on {topic}", exc) from None
        return {tp.partition: tp.offset for tp in found}

    def committed(self, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """partition -> the group's committed offset (the next to read), or -1 when it has committed none."""
        probe = Consumer(quiet_config(self.bootstrap, self._settings, **{"group.id": group,
                                                                          "enable.auto.commit": False}))
        try:
            tps = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=CONNECT_TIMEOUT_S * 2)
        except KafkaException as exc:
            raise self._fail(f"read the committed offsets of group {group}", exc) from None
        finally:
            probe.close()
        return {tp.partition: (tp.offset if tp.offset >= 0 else -1) for tp in tps}

    def batches(self, topic: str, spans: Spans, *,
                undecodable: bool = False) -> Iterator[tuple[list[Message], set[int]]]:
        """The records of ``topic`` in ``spans`` (partition -> [start, end)), a fetch at a time, each partition in
        offset order; with each batch, the partitions not yet read to their end.

        A record batch librdkafka cannot decompress fails the read, unless ``undecodable``: then it is stepped
        over as the writer steps over it (:mod:`kapow.kafka.unreadable`), and each of its offsets comes as a
        record with no value whose ``error()`` is ``_BAD_COMPRESSION`` (the writer made each a user error).
        """
        pending = {p: end for p, (start, end) in spans.items() if end > start}
        if not pending:
            return
        self._consumer.assign([TopicPartition(topic, p, spans[p][0]) for p in pending])
        last_data = time.monotonic()
        stepper = None
        if undecodable:
            from kapow.kafka.unreadable import Unreadable  # imported for the audit's reads only

            # reported from the span's start: the offsets before it are not the audit's
            stepper = Unreadable(lambda: self._consumer, start=lambda tp: spans[tp[1]][0])
        try:
            while pending:
                msgs = self._consumer.consume(2000, 0.1)
                if stepper is not None:
                    msgs = stepped(stepper, msgs)
                if not msgs:
                    if stepper is not None and stepper.searching:
                        last_data = time.monotonic()  # a probe's answer is due (or is retried): not idle
                    elif time.monotonic() - last_data > self.idle_timeout:
                        raise self._fail(f"read {topic} (nothing for {self.idle_timeout:.0f} s)", "timed out")
                    continue
                last_data = time.monotonic()
                out: list[Message] = []
                for msg in msgs:
                    p = msg.partition() or 0
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.pop(p, None)
                            continue
                        if stepper is None or msg.value() is not None or err.code() != KafkaError._BAD_COMPRESSION:
                            raise self._fail(f"read {topic}", err)
                    end = pending.get(p)
                    offset = msg.offset() or 0
                    if offset < spans[p][0]:
                        continue
                    if end is None or offset >= end:
                        pending.pop(p, None)
                        continue
                    out.append(msg)
                    if offset + 1 >= end:
                        pending.pop(p, None)
                yield out, set(pending)
        finally:
            self._consumer.unassign()

    def read(self, topic: str, spans: Spans) -> Iterator[Message]:
        """Every record of ``topic`` in ``spans``, each partition in offset order (partitions interleaved)."""
        for batch, _ in self.batches(topic, spans):
            yield from batch

    def read_merged(self, topic: str, spans: Spans, key: Callable[[Message], int]) -> Iterator[Message]:
        """Every record of ``topic`` in ``spans``, partitions merged by ``(key(msg), partition, offset)``.

        Each partition keeps its offset order and the heads are compared, so the order is a function of the
        topic's content alone: a cursor (the id of the last record shown) finds its place again on the next
        read. Memory stays bounded: a partition whose buffer holds ``_MERGE_BUFFER`` records is paused.
        """
        bufs: dict[int, deque[tuple[int, int, Message]]] = {p: deque() for p, (s, e) in spans.items() if e > s}
        live = set(bufs)
        paused: set[int] = set()
        stream = self.batches(topic, spans)
        while True:
            while any(not bufs[p] and p in live for p in bufs):
                got = next(stream, None)
                if got is None:
                    live = set()
                    break
                batch, live = got
                for msg in batch:
                    p = msg.partition() or 0
                    bufs[p].append((key(msg), msg.offset() or 0, msg))
                for p, buf in bufs.items():
                    if len(buf) >= _MERGE_BUFFER and p not in paused and p in live:
                        self.pause(topic, p)
                        paused.add(p)
            heads = [(buf[0][0], p, buf[0][1]) for p, buf in bufs.items() if buf]
            if not heads:
                return
            _, p, _ = min(heads)
            yield bufs[p].popleft()[2]
            if p in paused and len(bufs[p]) < _MERGE_BUFFER // 2:
                self.resume(topic, p)
                paused.discard(p)

    def pause(self, topic: str, partition: int) -> None:
        self._consumer.pause([TopicPartition(topic, partition)])

    def resume(self, topic: str, partition: int) -> None:
        self._consumer.resume([TopicPartition(topic, partition)])

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def stepped(stepper: Unreadable, msgs: list[Message]) -> list[Message]:
    """``msgs`` with undecodable batches stepped over: readable records, then each undecodable offset as a record
    with no value and a ``_BAD_COMPRESSION`` error, then the other errors (partition ends last, so that they
    follow their partition's records). The end of a partition being searched answers its probe (a probe that
    met only a transaction marker gets no other answer); it comes again once the batch is stepped over."""
    others: list[Message] = []
    rest: list[Message] = []
    for msg in msgs:
        err = msg.error()
        code = None if err is None else err.code()
        if code is None or code == KafkaError._BAD_COMPRESSION or (
                code == KafkaError._PARTITION_EOF and stepper.holds((msg.topic() or "", msg.partition() or 0))):
            rest.append(msg)
        else:
            others.append(msg)
    out = stepper.split(rest)
    if stepper.searching:
        stepper.tick()
        out += [Message(topic=r.msg.topic(), partition=r.msg.partition(), offset=r.msg.offset(), value=None,
                        timestamp=(0, -1), error=KafkaError(KafkaError._BAD_COMPRESSION, r.failure.message))
                for r in stepper.take(2000)]
    return out + others


def open_reader(bootstrap: str, settings: Settings | None = None, *, idle_timeout: float = 15.0) -> TopicReader:
    """A :class:`TopicReader` whose broker has answered (else :class:`BrokerUnreachable`, within seconds)."""
    reader = TopicReader(bootstrap, settings, idle_timeout=idle_timeout)
    try:
        reader.check()
    except BaseException:
        reader.close()
        raise
    return reader


def whole(watermarks: Mapping[int, tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Spans covering every partition from its low to its high watermark."""
    return {p: (low, high) for p, (low, high) in watermarks.items()}

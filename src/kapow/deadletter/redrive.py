"""Redrive parked packets once their destination is healthy again: exactly once, by one writer of the group.

A packet parked on the system-errors topic because its destination was down (or its table locked or slow past
``pipeline.hold_s``) needs no human: once the destination takes writes again it is republished to its source
topic and lands like any packet. This thread does that in every writer:

* **one writer of the group** — the redrive consumer joins the group ``<group_id>.redrive`` on the
  system-errors topic, so each of its partitions is redriven by exactly one live writer, and moves on a rebalance;
* **exactly once** — the republished copy, the DLQ marker that hides the parked record (the compacted
  ``<topic>.done`` topic the DLQ tools read) and the redrive group's offset are written in ONE Kafka transaction:
  a crash anywhere either did all three or none; a zombie writer is fenced by the group generation;
* **only when healthy** — a record waits until its destination's lane says the table takes writes, and at least
  ``redrive_delay_s`` after it failed; its partition's offset stays at it, while up to :data:`LOOKAHEAD` records
  behind it are read on (one tenant's outage never holds another's records);
* **paced and bounded** — at most ``redrive_rate`` records per second; a packet already tried
  ``redrive_max_attempts`` times, parked for another reason (``internal``), cut to fit (``kapow-value-truncated``),
  from a topic this writer does not consume, or already rescheduled or purged by an operator, is left for
  ``kapow dlq`` and never touched;
* **never beside an operator** — while a ``kapow dlq reschedule`` or ``purge`` holds its fence (:mod:`.fence`)
  nothing is redriven, and a chunk is committed only after the markers before its own are read and none of its
  records was marked meanwhile (else it is aborted and judged again): the two never both republish a record.

Republished copies carry ``kapow-attempt`` (one more) and ``kapow-origin`` (the original coordinates), so an audit
follows a packet across hops.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from kapow import metrics
from kapow.config import Config
from kapow.contract import TableKey
from kapow.deadletter.fence import FENCE_KEY, LEASE_S, is_fence
from kapow.deadletter.publisher import (
    H_ATTEMPT,
    H_CODE,
    H_DESTINATION,
    H_FAILED_AT,
    H_OFFSET,
    H_ORIGIN,
    H_PARTITION,
    H_TOPIC,
    H_TRUNCATED,
    OWN_HEADERS,
    safe_headers,
)
from kapow.errors import ErrorCode
from kapow.kafka.clients import consumer_config, producer_config

log = logging.getLogger(__name__)

REDRIVABLE = frozenset({ErrorCode.DATABASE_UNAVAILABLE.value, ErrorCode.TIMEOUT.value,
                        ErrorCode.TOO_MANY_CONNECTIONS.value, ErrorCode.DATABASE_SHUTTING_DOWN.value})
CHUNK = 500  # records per transaction at most
CATCH_UP_S = 10.0  # how long a chunk waits for the markers written before it to be read
RECHECK_S = 1.0  # how often a waiting partition asks again whether its destination is healthy
# A record that waits for its destination holds its partition's offset, not the records behind it: up to this many
# are read past it (those whose destinations are healthy redriven, each with its marker), then the partition
# pauses until it is read again from the waiting record. One tenant's database down for hours stopped the redrive
# of every other tenant's packets parked behind its records in the same partition (a review, 2026-11-27).
LOOKAHEAD = 10_000

Health = Callable[[TableKey], bool]


class Crossed(Exception):
    """A chunk met an operator's fence or markers before it committed: it was aborted, to be judged again."""


@dataclass(slots=True)
class _Head:
    """The first record of a partition that waits for its destination: the offset the group's stays at."""

    offset: int
    recheck_at: float  # monotonic: read the partition again from ``offset`` then
    read: int = 0  # records read past it since


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # "redrive" | "skip" | "wait"
    reason: str = ""
    key: TableKey | None = None


class _DestinationHeader(msgspec.Struct):
    vanity: str
    database: str
    table: str
    schema: str = "public"


def judge(msg: Message, *, topics: frozenset[str], max_attempts: int, delay_s: float, now_ms: int,
          handled: set[tuple[int, int]], health: Health) -> Verdict:
    """What to do with one parked record now (pure but for ``health``; unit-tested)."""
    if (msg.partition() or 0, msg.offset() or 0) in handled:
        return Verdict("skip", "already handled")
    meta = {k: v for k, v in safe_headers(msg) if k in OWN_HEADERS and v is not None}
    code = meta.get(H_CODE, b"").decode("utf-8", "replace")
    if code not in REDRIVABLE:
        return Verdict("skip", f"parked for {code or 'an unknown reason'}")
    if H_TRUNCATED in meta:
        return Verdict("skip", "value cut to fit the error topic")
    source = meta.get(H_TOPIC, b"").decode("utf-8", "replace")
    if source not in topics:
        return Verdict("skip", "not from a topic this writer consumes")
    try:
        attempts = int(meta.get(H_ATTEMPT, b"1")[:20])
        failed_at = int(meta.get(H_FAILED_AT, b"0")[:20])
        dest = msgspec.json.decode(meta[H_DESTINATION], type=_DestinationHeader)
    except (KeyError, ValueError, msgspec.DecodeError):
        return Verdict("skip", "no readable destination")
    if attempts >= max_attempts:
        return Verdict("skip", f"tried {attempts} times")
    key = TableKey(dest.vanity, dest.database, dest.schema, dest.table)
    if now_ms < failed_at + delay_s * 1000 or not health(key):
        return Verdict("wait", key=key)
    return Verdict("redrive", key=key)


def republished_headers(msg: Message) -> list[tuple[str, bytes | None]]:
    """The client's headers, the attempt count plus one, the original record's coordinates, and the destination
    that failed: the copy is for it alone (the packet's other destinations took it the first time, and an old
    upsert landed there again would move their rows back)."""
    headers = safe_headers(msg)
    meta = {k: v for k, v in headers if k in OWN_HEADERS and v is not None}
    attempts = int(meta.get(H_ATTEMPT, b"1")[:20] or 1)
    origin = next((v for k, v in headers if k == H_ORIGIN and v), None)
    if origin is None:
        origin = b"/".join([meta.get(H_TOPIC, b""), meta.get(H_PARTITION, b""), meta.get(H_OFFSET, b"")])
    out: list[tuple[str, bytes | None]] = [(k, v) for k, v in headers if k not in OWN_HEADERS and k != H_ORIGIN]
    out.append((H_ATTEMPT, str(attempts + 1).encode()))
    out.append((H_ORIGIN, origin))
    if H_DESTINATION in meta:
        out.append((H_DESTINATION, meta[H_DESTINATION]))
    return out


def _firsts(msgs: list[Message]) -> list[TopicPartition]:
    """The first offset read of each partition in ``msgs`` (to read them again)."""
    first: dict[tuple[str, int], int] = {}
    for m in msgs:
        where = (m.topic() or "", m.partition() or 0)
        first[where] = min(first.get(where, m.offset() or 0), m.offset() or 0)
    return [TopicPartition(t, p, o) for (t, p), o in first.items()]


def consumer_settings(config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings of redrive's two consumers: the system-errors topic's, and its ``.done`` markers'.

    Both read committed records only (a redriven chunk and its marker are one transaction) and, as every consumer
    of the writer, ask an idle broker every :data:`~kapow.kafka.clients.FETCH_WAIT_MS` (an operator's own
    ``fetch.wait.max.ms`` in ``[kafka.settings]`` wins).
    """
    k = config.kafka
    group = f"{k.group_id}.redrive"
    settings = k.settings
    records = consumer_config(k.bootstrap_servers, group, settings) | {
        "isolation.level": "read_committed", "client.id": "kapow-redrive"}
    markers = consumer_config(k.bootstrap_servers, f"{group}.markers", settings) | {
        "isolation.level": "read_committed", "enable.partition.eof": True, "client.id": "kapow-redrive-markers"}
    return records, markers


class Redriver:
    """The redrive thread of one writer (``start``/``stop``); ``health`` is the writer's view of its lanes."""

    def __init__(self, config: Config, health: Health) -> None:
        self._config = config
        self._health = health
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handled: set[tuple[int, int]] = set()
        self._heads: dict[int, _Head] = {}  # partition -> its first waiting record
        self._paused: set[int] = set()  # partitions read LOOKAHEAD records past their head
        self._ahead: set[tuple[int, int]] = set()  # records redriven past a head (at most LOOKAHEAD a partition)
        self._tokens = 0.0
        self._refill = time.monotonic()
        self._fence_until = 0.0  # monotonic: an operator's fence holds the redrive back until then
        self._markers: Consumer | None = None
        self.counts = {"redriven": 0, "skipped": 0, "waiting": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kapow-redrive", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Crossed as exc:  # an operator is moving records: read the markers again, then go on
                log.info("redrive: %s", exc)
                self._stop.wait(RECHECK_S)
            except Exception as exc:  # a broker hiccup must not end redrive for the life of the writer
                log.warning("redrive: %s; starting again in 5 s", exc)
                self._stop.wait(5.0)

    def _session(self) -> None:
        k = self._config.kafka
        group = f"{k.group_id}.redrive"
        records_settings, markers_settings = consumer_settings(self._config)
        consumer = Consumer(records_settings)
        producer = Producer(producer_config(k.bootstrap_servers, k.settings, **{
            "transactional.id": f"{group}.{uuid.uuid4().hex}", "client.id": "kapow-redrive", "linger.ms": 5}))
        markers = Consumer(markers_settings)
        self._markers = markers
        self._markers_at = -1
        self._fence_until = 0.0
        self._heads.clear()  # a new session reads from the group's offsets: at every head
        self._paused.clear()
        self._ahead.clear()
        try:
            producer.init_transactions(30)
            markers.assign([TopicPartition(f"{k.system_errors_topic}.done", 0, -2)])  # -2: from the beginning
            consumer.subscribe([k.system_errors_topic], on_revoke=self._on_revoke)
            pruned = time.monotonic()
            while not self._stop.is_set():
                self._read_markers(markers)
                if time.monotonic() - pruned > 60:
                    self._prune(consumer)
                    pruned = time.monotonic()
                self._resume_due(consumer)
                msgs = consumer.consume(CHUNK, 0.5)
                good = [m for m in msgs if m.error() is None]
                for m in msgs:
                    err = m.error()
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        log.warning("redrive consumer: %s", err)
                if good and self._caught_up(markers):
                    self._handle(consumer, producer, good)
                elif good:  # not judged without every marker: read again from the first of them
                    for tp in _firsts(good):
                        consumer.seek(tp)
        finally:
            for client in (consumer, markers):
                try:
                    client.close()
                except KafkaException:
                    pass
            producer.flush(5)

    def _on_revoke(self, _consumer: Any, _partitions: list[TopicPartition]) -> None:
        self._heads.clear()
        self._paused.clear()
        self._ahead.clear()

    def _read_markers(self, markers: Consumer, timeout: float = 0) -> None:
        """Records rescheduled, purged or redriven (by anyone) are never redriven again."""
        for msg in markers.consume(10_000, timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._markers_at = max(self._markers_at, msg.offset() or 0)
                continue
            self._markers_at = max(self._markers_at, (msg.offset() or 0) + 1)
            if msg.key() == FENCE_KEY:
                self._fence_until = time.monotonic() + LEASE_S if is_fence(msg.value()) else 0.0
                continue
            try:
                p, _, o = (msg.key() or b"").decode().partition(":")
                where = (int(p), int(o))
            except ValueError:
                continue
            if msg.value() is None:  # a tombstone un-handles
                self._handled.discard(where)
            else:
                self._handled.add(where)

    def _caught_up(self, markers: Consumer) -> bool:
        """Read every marker written so far before judging: a restarted session must know what was purged.

        The redrive group's offset stays before a record that waits for its destination, so after a restart the
        record is read again; judged before its ``purged`` marker is loaded, it would be republished. The end is
        the marker topic's high watermark now (read_committed: an open transaction is waited for, at most
        :data:`CATCH_UP_S`, after which this chunk is read again later)."""
        tp = TopicPartition(f"{self._config.kafka.system_errors_topic}.done", 0)
        try:
            _low, high = markers.get_watermark_offsets(tp, timeout=5, cached=False)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return True  # no marker was ever written
            log.debug("redrive: marker watermarks: %s", exc)
            return False
        deadline = time.monotonic() + CATCH_UP_S
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._markers_at >= high:
                return True
            self._read_markers(markers, 0.2)
        return False

    def _prune(self, consumer: Consumer) -> None:
        """Forget handled records below the group's committed offsets: they are never read again."""
        try:
            committed = consumer.committed(consumer.assignment(), timeout=5)
        except KafkaException:
            return
        floor = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        self._handled = {(p, o) for p, o in self._handled if o >= floor.get(p, 0)}

    def _resume_due(self, consumer: Consumer) -> None:
        """Read each partition whose head is due again from that head (the records past it that were redriven
        are handled by then, and skipped)."""
        now = time.monotonic()
        topic = self._config.kafka.system_errors_topic
        for part, head in list(self._heads.items()):
            if head.recheck_at > now:
                continue
            del self._heads[part]
            tp = TopicPartition(topic, part, head.offset)
            consumer.seek(tp)
            if part in self._paused:
                self._paused.discard(part)
                consumer.resume([tp])

    def _fenced(self) -> bool:
        return time.monotonic() < self._fence_until

    def _handle(self, consumer: Consumer, producer: Producer, msgs: list[Message]) -> None:
        if self._fenced():  # an operator is moving records: nothing is judged until the fence is released
            self._stop.wait(RECHECK_S)
            for tp in _firsts(msgs):
                consumer.seek(tp)
            return
        p = self._config.pipeline
        k = self._config.kafka
        topics = frozenset(self._config.consumed_topics)
        send: list[Message] = []
        advance: dict[int, int] = {}
        heads = self._heads
        now_ms = int(time.time() * 1000)
        asked: dict[TableKey, bool] = {}  # each destination asked once a chunk (a probe may take seconds)

        def health(key: TableKey) -> bool:
            found = asked.get(key)
            if found is None:
                found = asked[key] = self._health(key)
            return found

        ahead: list[tuple[int, int]] = []
        skipped = 0
        for msg in msgs:
            part, offset = msg.partition() or 0, msg.offset() or 0
            if part in self._paused:
                continue
            head = heads.get(part)
            if (part, offset) in self._ahead:  # redriven past a head before (and counted then)
                if head is None:
                    self._ahead.discard((part, offset))
            else:
                verdict = judge(msg, topics=topics, max_attempts=p.redrive_max_attempts, delay_s=p.redrive_delay_s,
                                now_ms=now_ms, handled=self._handled, health=health)
                if verdict.action == "wait" and head is None:  # the offset stays here; the records behind go on
                    heads[part] = _Head(offset, time.monotonic() + RECHECK_S)
                    continue
                if verdict.action == "redrive":
                    self._pace()
                    send.append(msg)
                    if head is not None:
                        ahead.append((part, offset))
                elif verdict.action == "skip" and head is None:  # (past a head: counted when the offset passes)
                    skipped += 1
            if head is None:
                advance[part] = offset + 1
                continue
            head.read += 1
            if head.read >= LOOKAHEAD:  # far enough past it: the partition rests until the head is read again
                self._paused.add(part)
                consumer.pause([TopicPartition(k.system_errors_topic, part)])
                head.recheck_at = max(head.recheck_at, time.monotonic() + 5 * RECHECK_S)
        self.counts["waiting"] = len(heads)
        if advance or send:
            self._commit(consumer, producer, send, advance)
            self._ahead.update(ahead)  # (committed: a failed transaction leaves them to be judged again)
        # counted once committed: a chunk aborted by a crossing (or a failed transaction) is judged again, and was
        # counted twice (a review: a fence met at commit left "redriven" above what reached the source topics)
        self.counts["redriven"] += len(send)
        self.counts["skipped"] += skipped
        if send:
            metrics.REDRIVE.labels("redriven").inc(len(send))
        if skipped:
            metrics.REDRIVE.labels("skipped").inc(skipped)

    def _check_crossing(self, producer: Producer, send: list[Message], marked: list[int]) -> None:
        """Raise :class:`Crossed` unless the chunk may commit: its markers are written (their offsets known), every
        marker before them is read (all transactions before decided), no fence is up and none of its records was
        marked by anyone. A fence or marker after ours is the other side's to see (see :mod:`.fence`)."""
        if producer.flush(30) != 0 or len(marked) < len(send):
            raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT, "redrive markers not acknowledged"))
        first = min(marked)
        deadline = time.monotonic() + CATCH_UP_S
        while self._markers_at < first:
            if time.monotonic() > deadline or self._stop.is_set() or self._markers is None:
                raise Crossed("the markers before a chunk were not all decided in time; it is judged again")
            self._read_markers(self._markers, 0.1)
        if self._fenced():
            raise Crossed(f"an operator's reschedule or purge holds the redrive; {len(send)} records judged again")
        if any((m.partition() or 0, m.offset() or 0) in self._handled for m in send):
            raise Crossed("an operator marked records of a chunk before it committed; it is judged again")

    def _pace(self) -> None:
        rate = self._config.pipeline.redrive_rate
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._refill) * rate)
        self._refill = now
        if self._tokens < 1:
            time.sleep((1 - self._tokens) / rate)
            self._tokens = 1
            self._refill = time.monotonic()
        self._tokens -= 1

    def _commit(self, consumer: Consumer, producer: Producer, send: list[Message], advance: dict[int, int]) -> None:
        """Republish, mark and move the group's offsets in one transaction (or none of it)."""
        k = self._config.kafka
        done_topic = f"{k.system_errors_topic}.done"
        marker = msgspec.json.encode({"action": "redriven", "at_ms": int(time.time() * 1000)})
        marked: list[int] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                marked.append(msg.offset() or 0)

        producer.begin_transaction()
        try:
            for msg in send:
                source = next((v for h, v in safe_headers(msg) if h == H_TOPIC and v), b"").decode()
                producer.produce(source, value=msg.value(), key=msg.key(),
                                 headers=republished_headers(msg))  # type: ignore[arg-type]
                producer.produce(done_topic, key=f"{msg.partition()}:{msg.offset()}".encode(), value=marker,
                                 on_delivery=delivered)
            if send:
                self._check_crossing(producer, send, marked)
            offsets = [TopicPartition(k.system_errors_topic, part, off) for part, off in advance.items()]
            if offsets:  # (records redriven past a waiting one move no offset)
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        except (KafkaException, Crossed):
            # nothing of this transaction is visible (read_committed); the session starts again from the
            # group's committed offsets, so these records are judged again
            try:
                producer.abort_transaction(30)
            except KafkaException as exc:
                log.debug("redrive: abort after a failed transaction: %s", exc)
            raise
        for msg in send:
            self._handled.add((msg.partition() or 0, msg.offset() or 0))
        if send:
            log.info("redrove %d parked packets to their source topics", len(send))

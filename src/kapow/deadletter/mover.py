"""Reschedule or purge parked records in chunks, each chunk one Kafka transaction: resumable, never twice.

A reschedule republishes a parked record (original key, value and headers, ``kapow-attempt`` plus one and
``kapow-origin``) to its source topic and writes its ``.done`` marker. Done as two separate acknowledged writes, a
crash in between rescheduled the record again on the next run. Here both go in one transaction per chunk: a killed
process leaves an open transaction that the next producer with the same ``transactional.id`` aborts (fencing),
readers (the writer's consumer, the DLQ's own reads) are ``read_committed``, so a chunk is either wholly
republished *and* marked or not at all, and a run started after a crash skips exactly what was done.

The ``transactional.id`` is one per system-errors topic, so two reschedules of one queue cannot run at once: the
second one fences the first, whose next commit fails (it stops with one line), and reads the markers only after
that, so it never repeats the first one's work. Memory is one chunk (``chunk_records``, ``chunk_bytes``).

Against the writers' automatic redrive, a mover holds a fence (:mod:`.fence`) from before it reads the markers until
it is done: the redrive commits nothing while it is up, and what the redrive committed before it is in the markers
this mover reads, so the two never republish (or purge and republish) one record both.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from kapow.deadletter.done import ensure_done_topic, marker_key, marker_value
from kapow.deadletter.fence import FENCE_KEY, LEASE_S, RENEW_S, fence_value, wait_readable
from kapow.deadletter.publisher import H_ATTEMPT, H_DESTINATION, HEADER_PREFIX
from kapow.deadletter.reader import quiet_config
from kapow.deadletter.records import H_ORIGIN, DlqRecord
from kapow.errors import KapowError
from kapow.kafka.clients import Settings, producer_config

log = logging.getLogger(__name__)

MAX_IDS_REPORTED = 1000


class Verb(enum.StrEnum):
    RESCHEDULE = "reschedule"
    PURGE = "purge"

    @property
    def done(self) -> str:
        return "rescheduled" if self is Verb.RESCHEDULE else "purged"


@dataclasses.dataclass(slots=True)
class Outcome:
    """What a reschedule or purge did: ``count`` records, the first ``MAX_IDS_REPORTED`` ids, and the ones skipped
    (a record without ``kapow-source-topic``, or with a cut value, cannot be rescheduled: purge it instead)."""

    verb: Verb
    count: int = 0
    ids: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.verb.done, "count": self.count, "ids": self.ids}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def reschedulable(item: DlqRecord) -> bool:
    """A record can go back to its topic when it names the topic and holds its whole value (a value cut to fit the
    error topic, ``kapow-value-truncated``, would come back as a broken packet)."""
    return bool(item.source_topic) and item.value_truncated is None


def copy_headers(item: DlqRecord) -> list[tuple[str, bytes]]:
    """The original headers without any ``kapow-*`` ones, then the next attempt, the origin, and the destination
    that failed: the copy is for it alone (the packet's others took it the first time)."""
    headers = [(k, v) for k, v in item.headers if not k.startswith(HEADER_PREFIX)]
    headers.append((H_ATTEMPT, str(item.attempt + 1).encode()))
    if item.origin:  # the record's own kapow-origin if it had one, else its kapow-source-* coordinates
        headers.append((H_ORIGIN, item.origin.encode()))
    failed = next((v for k, v in item.headers if k == H_DESTINATION), None)
    if failed is not None:
        headers.append((H_DESTINATION, failed))
    return headers


class Mover:
    """One transactional producer for one system-errors topic; :meth:`add` records, then :meth:`finish`."""

    def __init__(self, bootstrap: str, topic: str, verb: Verb, *, settings: Settings | None = None,
                 chunk_records: int = 500, chunk_bytes: int = 8 * 1024 * 1024, timeout: float = 30.0,
                 on_chunk: Callable[[Outcome], None] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.verb = verb
        self.outcome = Outcome(verb)
        self._chunk: list[DlqRecord] = []
        self._chunk_size = 0
        self._chunk_records = chunk_records
        self._chunk_bytes = chunk_bytes
        self._timeout = timeout
        self._on_chunk = on_chunk
        self.done_topic = f"{topic}.done"
        self._settings = settings
        self._fenced_at = 0.0  # monotonic, taken before the last fence written (the redrive's lease runs from later)
        self._released = False
        conf = producer_config(bootstrap, settings, **{
            "transactional.id": f"kapow-dlq-{topic}", "transaction.timeout.ms": 60_000, "linger.ms": 5})
        conf.update({k: v for k, v in quiet_config(bootstrap).items() if k in ("logger", "log.connection.close")})
        self._producer = Producer(conf)
        try:  # fences any earlier mover of this queue and aborts its open transaction
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise KapowError(f"cannot start a transaction at Kafka {bootstrap}: {_reason(exc)}") from None
        ensure_done_topic(bootstrap, topic, settings)  # (the fence lives there: made before anything is read)
        self._raise_fence()

    def _raise_fence(self) -> None:
        """Hold the redrive back, and wait until every redrive transaction before the fence is decided: the
        markers read after this include all it did."""
        offsets: list[int] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                offsets.append(msg.offset() or 0)

        started = time.monotonic()
        try:
            self._producer.begin_transaction()
            self._producer.produce(self.done_topic, key=FENCE_KEY, value=fence_value(True), on_delivery=delivered)
            self._producer.commit_transaction(self._timeout)
        except KafkaException as exc:
            raise KapowError(f"cannot fence the redrive at Kafka {self.bootstrap}: {_reason(exc)}") from None
        if not offsets:
            raise KapowError(f"cannot fence the redrive at Kafka {self.bootstrap}: the fence was not acknowledged")
        wait_readable(self.bootstrap, self._settings, self.done_topic, offsets[0], self._timeout)
        self._fenced_at = started

    def add(self, item: DlqRecord) -> None:
        if time.monotonic() - self._fenced_at > RENEW_S:
            self._renew()
        if self.verb is Verb.RESCHEDULE and not reschedulable(item):
            if len(self.outcome.skipped) < MAX_IDS_REPORTED:
                self.outcome.skipped.append(item.id)
            return
        self._chunk.append(item)
        self._chunk_size += len(item.value or b"") + len(item.key or b"")
        if len(self._chunk) >= self._chunk_records or self._chunk_size >= self._chunk_bytes:
            self.flush()

    def flush(self) -> None:
        """Republish (for a reschedule) and mark the chunk, in one transaction; raise if it did not commit."""
        if not self._chunk:
            return
        p = self._producer
        started = time.monotonic()
        self._check_lease(started)
        try:
            p.begin_transaction()
            self._produce(self.done_topic, FENCE_KEY, fence_value(True), [])  # (renewed with the chunk)
            for item in self._chunk:
                if self.verb is Verb.RESCHEDULE:
                    self._produce(item.source_topic, item.key, item.value, copy_headers(item))
                self._produce(self.done_topic, marker_key(item.partition, item.offset), marker_value(self.verb.done),
                              [])
            p.commit_transaction(self._timeout)
            self._fenced_at = started
        except KafkaException as exc:
            try:
                p.abort_transaction(self._timeout)
            except KafkaException:
                pass  # fenced or gone: the broker aborts it on its own (transaction.timeout.ms)
            done = self.outcome.count
            raise KapowError(f"{self.verb.value} stopped after {done} record(s): Kafka {self.bootstrap}: "
                             f"{_reason(exc)} (run it again: what was done is not done twice)") from None
        self.outcome.count += len(self._chunk)
        room = MAX_IDS_REPORTED - len(self.outcome.ids)
        if room > 0:
            self.outcome.ids.extend(item.id for item in self._chunk[:room])
        self._chunk = []
        self._chunk_size = 0
        if self._on_chunk is not None:
            self._on_chunk(self.outcome)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers)  # type: ignore[arg-type]
                return
            except BufferError:
                self._producer.poll(0.1)

    def _check_lease(self, now: float) -> None:
        """A transaction that might end after the redrive's lease could cross a redrive: stop instead."""
        if now + self._timeout > self._fenced_at + LEASE_S:
            raise KapowError(f"{self.verb.value} stopped after {self.outcome.count} record(s): its fence on the "
                             f"redrive lapsed (run it again: what was done is not done twice)")

    def _renew(self) -> None:
        """Renew the fence (a long scan between chunks must not outlive it)."""
        if self._chunk:
            self.flush()
            return
        started = time.monotonic()
        self._check_lease(started)
        try:
            self._producer.begin_transaction()
            self._produce(self.done_topic, FENCE_KEY, fence_value(True), [])
            self._producer.commit_transaction(self._timeout)
        except KafkaException as exc:
            raise KapowError(f"{self.verb.value} stopped after {self.outcome.count} record(s): Kafka "
                             f"{self.bootstrap}: {_reason(exc)} (run it again: what was done is not done twice)"
                             ) from None
        self._fenced_at = started

    def finish(self) -> Outcome:
        self.flush()
        return self.outcome

    def close(self) -> None:
        """Release the fence (best effort: a mover that cannot is waited out, :data:`~.fence.LEASE_S`)."""
        if not self._released:
            self._released = True
            try:
                self._producer.begin_transaction()
                self._produce(self.done_topic, FENCE_KEY, fence_value(False), [])
                self._producer.commit_transaction(min(self._timeout, 10.0))
            except KafkaException:
                try:
                    self._producer.abort_transaction(5.0)
                except KafkaException:
                    pass
        self._producer.flush(1.0)


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)

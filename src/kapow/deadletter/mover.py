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
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from kapow.deadletter.done import ensure_done_topic, marker_key, marker_value
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
        self._done_topic_ready = False
        conf = producer_config(bootstrap, settings, **{
            "transactional.id": f"kapow-dlq-{topic}", "transaction.timeout.ms": 60_000, "linger.ms": 5})
        conf.update({k: v for k, v in quiet_config(bootstrap).items() if k in ("logger", "log.connection.close")})
        self._producer = Producer(conf)
        try:  # fences any earlier mover of this queue and aborts its open transaction
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise KapowError(f"cannot start a transaction at Kafka {bootstrap}: {_reason(exc)}") from None

    def add(self, item: DlqRecord) -> None:
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
        if not self._done_topic_ready:  # created on first use: a run that moves nothing leaves no topic behind
            ensure_done_topic(self.bootstrap, self.topic, self._settings)
            self._done_topic_ready = True
        p = self._producer
        try:
            p.begin_transaction()
            for item in self._chunk:
                if self.verb is Verb.RESCHEDULE:
                    self._produce(item.source_topic, item.key, item.value, copy_headers(item))
                self._produce(self.done_topic, marker_key(item.partition, item.offset), marker_value(self.verb.done),
                              [])
            p.commit_transaction(self._timeout)
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

    def finish(self) -> Outcome:
        self.flush()
        return self.outcome

    def close(self) -> None:
        self._producer.flush(1.0)


def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)

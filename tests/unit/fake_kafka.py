"""An in-memory Kafka and persister for the writer's loop, as arroyo's local backend is for its processor.

:class:`FakeConsumer` keeps partitions of messages, positions, committed offsets, pauses and a scripted rebalance;
:class:`FakeProducer` acknowledges (or fails) error records when polled; :class:`FakePersister` answers table
works at once or holds those of chosen tables until released. With them, revoke, lost partitions, commit
ordering, backpressure and the shutdown deadline are tested without a broker, a database or a process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from kapow.contract import TableKey
from kapow.pipeline.work import TableWork, WorkResult

Callback = Callable[[Any, list[TopicPartition]], None]


class FakeConsumer:
    def __init__(self, records: dict[tuple[str, int], list[Message]]) -> None:
        self.records = records
        self.position: dict[tuple[str, int], int] = {}
        self.committed_offsets: dict[tuple[str, int], int] = {}
        self.commits: list[dict[tuple[str, int], int]] = []
        self.paused: set[tuple[str, int]] = set()
        self.assigned: set[tuple[str, int]] = set()
        self.callbacks: dict[str, Callback] = {}
        self.pending_event: str | None = "assign"  # the first consume assigns every partition
        self.pending_later = 0  # consume calls before the pending event runs
        self.closed = False
        self.consumed: list[tuple[int, float]] = []  # (num, timeout) of every consume call
        self.commit_error: BaseException | None = None  # raised by commit while set
        self.pause_error: BaseException | None = None  # raised by pause and resume while set
        self.extra: list[Message] = []  # handed out (once) by the next consume, after the partitions' records
        self.assigns: list[dict[tuple[str, int], int]] = []  # the start offsets of every explicit assign()

    def subscribe(self, _topics: list[str], *, on_assign: Callback, on_revoke: Callback, on_lost: Callback) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def schedule(self, event: str, *, later: int = 0) -> None:
        """The next consume (or the one ``later`` calls after it) runs a rebalance: ``revoke`` or ``lost``
        (everything), then ``assign`` again."""
        self.pending_event = event
        self.pending_later = later

    def _tps(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.records)]

    def consume(self, num: int, timeout: float) -> list[Message]:
        self.consumed.append((num, timeout))
        if self.pending_later:
            self.pending_later -= 1
            event = None
        else:
            event, self.pending_event = self.pending_event, None
        if event in ("revoke", "lost"):
            self.callbacks[event](self, [TopicPartition(t, p) for t, p in sorted(self.assigned)])
            self.assigned.clear()
            event = "assign"
        if event == "assign":
            self.assigned = set(self.records)
            for tp in self.assigned:  # a new assignment starts at the committed offset
                self.position[tp] = self.committed_offsets.get(tp, 0)
            self.callbacks["assign"](self, self._tps())
        out: list[Message] = []
        for tp in sorted(self.assigned - self.paused):
            msgs = self.records[tp]
            while self.position[tp] < len(msgs) and len(out) < num:
                out.append(msgs[self.position[tp]])
                self.position[tp] += 1
        out += self.extra
        self.extra = []
        return out

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.asynchronous = asynchronous
        if self.commit_error is not None:
            raise self.commit_error
        done = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        self.commits.append(done)
        self.committed_offsets.update(done)

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        del timeout
        return [TopicPartition(tp.topic, tp.partition, self.committed_offsets.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, **_kw: Any) -> tuple[int, int]:
        return 0, len(self.records.get((tp.topic, tp.partition), []))

    def assign(self, partitions: list[TopicPartition]) -> None:
        start = {(tp.topic, tp.partition): tp.offset for tp in partitions}
        self.assigns.append(start)
        self.position.update(start)

    def pause(self, tps: list[TopicPartition]) -> None:
        if self.pause_error is not None:
            raise self.pause_error
        self.paused |= {(tp.topic, tp.partition) for tp in tps}

    def resume(self, tps: list[TopicPartition]) -> None:
        if self.pause_error is not None:
            raise self.pause_error
        self.paused -= {(tp.topic, tp.partition) for tp in tps}

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """Acknowledges on poll; ``failing`` topics answer with a delivery error until it is cleared."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, bytes | None, Any, Callable[..., None]]] = []
        self.delivered: list[tuple[str, bytes | None, list[tuple[str, bytes | None]]]] = []
        self.failing: set[str] = set()

    def produce(self, topic: str, *, value: bytes | None, key: bytes | None, headers: Any,
                on_delivery: Callable[..., None]) -> None:
        del key
        self.queue.append((topic, value, headers, on_delivery))

    def poll(self, _timeout: float = 0.0) -> int:
        queue, self.queue = self.queue, []
        for topic, value, headers, callback in queue:
            if topic in self.failing:
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), None)
            else:
                self.delivered.append((topic, value, headers))
                callback(None, None)
        return len(queue)

    def flush(self, _timeout: float = 0.0) -> int:
        self.poll()
        return len(self.queue)


class FakeClients:
    def __init__(self, consumer: FakeConsumer, producer: FakeProducer) -> None:
        self._consumer = consumer
        self._producer = producer

    def prepare_topics(self) -> int:
        return 1024 * 1024

    def consumer(self) -> FakeConsumer:
        return self._consumer

    def producer(self, _max_bytes: int) -> FakeProducer:
        return self._producer


class FakePersister:
    """Answers each work as landed when collected, except the works of ``held`` tables, kept until released."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.stuck: set[str] = set()  # held tables whose works wait behind a failure (not merely slow)
        self.waiting: list[TableWork] = []
        self.ready: list[WorkResult] = []
        self.cancels: list[bool] = []
        self.sheds = 0
        self.closed = False
        self.close_timeouts: list[float] = []

    def submit(self, work: TableWork) -> None:
        if work.key.table in self.held:
            self.waiting.append(work)
        else:
            self.ready.append(WorkResult(work, landed=len(work.rows)))

    def submit_all(self, works: list[TableWork]) -> None:
        for work in works:
            self.submit(work)

    def release(self, table: str) -> None:
        self.held.discard(table)
        keep = []
        for work in self.waiting:
            if work.key.table == table:
                self.ready.append(WorkResult(work, landed=len(work.rows)))
            else:
                keep.append(work)
        self.waiting = keep

    def collect(self, timeout: float = 0.0) -> list[WorkResult]:
        del timeout
        out, self.ready = self.ready, []
        return out

    @property
    def queued_bytes(self) -> int:
        return sum(w.nbytes for w in self.waiting)

    def stuck_bytes(self) -> int:
        return sum(w.nbytes for w in self.waiting if w.key.table in self.stuck)

    def shed(self) -> int:
        self.sheds += 1
        return 0

    def cancel(self, *, running: bool = False) -> int:
        self.cancels.append(running)
        dropped = len(self.waiting)
        self.waiting = []
        self.ready = []
        return dropped

    def healthy(self, _key: TableKey) -> bool:
        return True

    def lanes(self) -> dict[tuple[str, str], Any]:
        return {}

    def close(self, timeout: float = 0.0) -> None:
        self.close_timeouts.append(timeout)
        self.closed = True

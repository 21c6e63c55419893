"""Stepping over undecodable record batches (kapow.kafka.unreadable), against a model of librdkafka's fetch.

The model: a partition's log is a run of batches, each readable or not. A fetch from position ``q`` starts at the
batch holding ``q`` and brings up to ``per_fetch`` batches: an undecodable one is reported once, as an error at
its first offset, and the readable ones behind it in the same fetch are delivered (records below ``q`` skipped);
the position then moves past the last delivered record, or stays when none was. A seek drops what was fetched
and not yet handed over (librdkafka's version barrier); what one consume handed over is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from kapow.errors import ErrorCode
from kapow.kafka.unreadable import PROBE_TIMEOUT_S, PROBE_TRIES, Unreadable

TOPIC = "in"


@dataclass
class Log:
    batches: list[tuple[int, int, bool | None]]  # (first, last, readable); None: a transaction marker

    @property
    def end(self) -> int:
        return self.batches[-1][1] + 1 if self.batches else 0

    def holding(self, q: int) -> int | None:
        for i, (_first, last, _ok) in enumerate(self.batches):
            if last >= q:
                return i
        return None


@dataclass
class FakeConsumer:
    """One partition fetched by the rules of the module docstring; counts seeks."""

    log: Log
    per_fetch: int
    position: int = 0
    queue: list[Message] = field(default_factory=list)
    seeks: int = 0
    eof: bool = False  # enable.partition.eof: the end of the partition is reported when reached

    def seek(self, tp: TopicPartition) -> None:
        self.seeks += 1
        self.position = tp.offset
        self.queue = []

    def get_watermark_offsets(self, _tp: TopicPartition, cached: bool = False, timeout: float = 0) -> tuple[int, int]:
        return 0, self.log.end

    def consume(self, n: int) -> list[Message]:
        if not self.queue:
            self._fetch()
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def _fetch(self) -> None:
        i = self.log.holding(self.position)
        if i is None:
            return
        delivered = None
        for first, last, ok in self.log.batches[i:i + self.per_fetch]:
            if ok is None:  # a marker: nothing to deliver, the position moves past it
                if delivered is None and first <= self.position:
                    self.position = last + 1
                continue
            if not ok:
                error = KafkaError(KafkaError._BAD_COMPRESSION, f"Decompression of message at {first} failed")
                self.queue.append(Message(topic=TOPIC, partition=0, offset=first, error=error))
                continue
            for offset in range(max(first, self.position), last + 1):
                self.queue.append(Message(topic=TOPIC, partition=0, offset=offset, value=b"x", timestamp=(0, 0)))
                delivered = offset
        if delivered is not None:
            self.position = delivered + 1
        if self.eof and self.position >= self.log.end and not any(m.error() for m in self.queue):
            self.queue.append(Message(topic=TOPIC, partition=0, offset=self.position,
                                      error=KafkaError(KafkaError._PARTITION_EOF, "end")))


def run(log: Log, per_fetch: int, consume_n: int) -> tuple[list[int], list[int], FakeConsumer]:
    """The writer's loop over the model until the log is accounted for: offsets handed over, offsets reported."""
    consumer = FakeConsumer(log, per_fetch)
    unreadable = Unreadable(lambda: consumer)
    handled: list[int] = []
    reported: list[int] = []
    for _ in range(10_000):
        if len(handled) + len(reported) >= log.end and not unreadable.searching:
            break
        handled += [m.offset() for m in unreadable.split(consumer.consume(consume_n))]
        if unreadable.searching:
            unreadable.tick()
            for record in unreadable.take(7):
                assert record.failure.code is ErrorCode.UNDECODABLE and record.msg.value() is None
                reported.append(record.msg.offset())
    return handled, reported, consumer


@st.composite
def logs(draw: Any) -> Log:
    batches = []
    at = 0
    for ok in draw(st.lists(st.booleans(), min_size=1, max_size=12)):
        size = draw(st.integers(1, 40))
        batches.append((at, at + size - 1, ok))
        at += size
    return Log(batches)


@settings(max_examples=300, deadline=None)
@given(logs(), st.integers(1, 4), st.integers(1, 50))
def test_every_readable_record_is_handed_over_once_and_every_undecodable_one_reported_once(
        log: Log, per_fetch: int, consume_n: int) -> None:
    handled, reported, consumer = run(log, per_fetch, consume_n)
    readable = [o for first, last, ok in log.batches if ok for o in range(first, last + 1)]
    undecodable = [o for first, last, ok in log.batches if not ok for o in range(first, last + 1)]
    assert handled == readable  # none skipped, none twice, in order
    assert sorted(reported) == undecodable and len(set(reported)) == len(reported)
    bad = sum(1 for *_b, ok in log.batches if not ok)
    assert consumer.seeks <= bad * (2 + log.end.bit_length()), "a binary search per batch, not a walk"


def test_a_batch_of_a_million_records_is_found_in_a_few_dozen_fetches_and_reported_a_step_at_a_time() -> None:
    log = Log([(0, 9, True), (10, 1_000_009, False), (1_000_010, 1_000_019, True)])
    consumer = FakeConsumer(log, per_fetch=2)
    unreadable = Unreadable(lambda: consumer)
    handled = [m.offset() for m in unreadable.split(consumer.consume(500))]
    for _ in range(60):
        handled += [m.offset() for m in unreadable.split(consumer.consume(500))]
    assert handled == list(range(10)) and consumer.seeks < 30
    first = unreadable.take(5000)
    assert [r.msg.offset() for r in first] == list(range(10, 5010))
    assert b"offsets 10-1000009 of in[0]" in first[0].failure.message.encode()
    # until the last of them is taken, the partition is not sought past the batch: nothing behind it is handled
    assert unreadable.split(consumer.consume(500)) == [] and unreadable.searching
    taken = 5000
    while unreadable.searching:
        taken += len(unreadable.take(5000))
    assert taken == 1_000_000
    assert [m.offset() for m in unreadable.split(consumer.consume(500))] == list(range(1_000_010, 1_000_020))


def test_an_unanswered_probe_is_sought_again_and_only_then_splits_the_report_skipping_nothing() -> None:
    log = Log([(0, 99, False), (100, 104, True)])
    consumer = FakeConsumer(log, per_fetch=1)
    paused = [False]
    unreadable = Unreadable(lambda: consumer, paused=lambda: paused[0])
    assert unreadable.split(consumer.consume(10)) == []  # the error at 0: a probe at 50 is sought
    probe = consumer.position
    seeks = consumer.seeks
    paused[0] = True
    unreadable.tick(now=10**9)  # paused: nothing is fetched, so no answer is late
    assert consumer.seeks == seeks
    paused[0] = False
    for tries in range(1, PROBE_TRIES):  # a slow broker: the probe is sought again, with a longer wait each time
        consumer.queue, consumer.position = [], 0  # ... and its answer never comes
        unreadable.tick(now=2 * 10**9)
        assert consumer.seeks == seeks + tries and consumer.position == probe
    consumer.queue, consumer.position = [], 0
    unreadable.tick(now=2 * 10**9)  # the last try: counted as past the end
    assert PROBE_TIMEOUT_S * 2 ** PROBE_TRIES < 10**9
    reported = [r.msg.offset() for r in unreadable.take(1000)]
    handled: list[int] = []
    for _ in range(200):
        handled += [m.offset() for m in unreadable.split(consumer.consume(10))]
        unreadable.tick()
        reported += [r.msg.offset() for r in unreadable.take(1000)]
    assert sorted(reported) == list(range(100)) and handled == list(range(100, 105))


def test_a_rewind_reports_nothing_twice_and_a_new_owner_reports_from_the_committed_offset() -> None:
    log = Log([(0, 1, True), (2, 11, False), (12, 14, True)])
    consumer = FakeConsumer(log, per_fetch=1)
    unreadable = Unreadable(lambda: consumer)
    handled: list[int] = []
    reported: list[int] = []

    def loop() -> None:
        for _ in range(100):
            handled.extend(m.offset() for m in unreadable.split(consumer.consume(10)))
            unreadable.tick()
            reported.extend(r.msg.offset() for r in unreadable.take(1000))

    loop()
    assert handled == [0, 1, 12, 13, 14] and reported == list(range(2, 12))
    consumer.seek(TopicPartition(TOPIC, 0, 1))  # an offset reset, not a rebalance: forget() is not called
    handled.clear()
    reported.clear()
    loop()
    assert handled == [1, 12, 13, 14] and reported == []  # (a stale record of the last run once made 12 "undecodable")
    fresh = FakeConsumer(log, per_fetch=1, position=7)  # the next owner of the partition, committed at 7
    unreadable = Unreadable(lambda: fresh, start=lambda _tp: 7)
    consumer = fresh
    handled.clear()
    loop()
    assert handled == [12, 13, 14] and reported == list(range(7, 12))


def test_a_refused_seek_is_tried_again_and_a_revoked_partition_forgotten() -> None:
    log = Log([(0, 9, False), (10, 12, True)])
    consumer = FakeConsumer(log, per_fetch=1)
    refuse = [True]
    real_seek = consumer.seek

    def seek(tp: TopicPartition) -> None:
        if refuse[0]:
            from confluent_kafka import KafkaException
            raise KafkaException(KafkaError(KafkaError._STATE, "Erroneous state"))
        real_seek(tp)

    consumer.seek = seek  # type: ignore[method-assign]
    unreadable = Unreadable(lambda: consumer)
    unreadable.split(consumer.consume(10))
    assert unreadable.searching and consumer.seeks == 0
    refuse[0] = False
    unreadable.tick()
    assert consumer.seeks == 0  # not at once: at most one try (and one warning) per RESEEK_S
    unreadable.tick(now=10**9)
    assert consumer.seeks == 1
    unreadable.forget({(TOPIC, 0)})
    assert not unreadable.searching and unreadable.take(10) == []


def test_the_audit_reader_gets_each_undecodable_offset_as_a_record_and_partition_ends_after_records() -> None:
    from kapow.deadletter.reader import stepped

    log = Log([(0, 1, True), (2, 4, False), (5, 5, True)])
    consumer = FakeConsumer(log, per_fetch=1)
    unreadable = Unreadable(lambda: consumer)
    got: list[tuple[int, bool]] = []
    for _ in range(100):
        msgs = consumer.consume(10)
        if consumer.position >= log.end and not consumer.queue and not unreadable.holds((TOPIC, 0)):
            msgs.append(Message(topic=TOPIC, partition=0, offset=log.end,
                                error=KafkaError(KafkaError._PARTITION_EOF, "end")))
        for msg in stepped(unreadable, msgs):
            err = msg.error()
            got.append((msg.offset(), err is not None and err.code() == KafkaError._PARTITION_EOF))
            if err is not None and err.code() == KafkaError._BAD_COMPRESSION:
                assert msg.value() is None and b"offsets 2-4" in err.str().encode()
        if got and got[-1][1]:
            break
    assert got == [(0, False), (1, False), (2, False), (3, False), (4, False), (5, False), (6, True)]


def test_a_probe_that_meets_only_a_transaction_marker_is_answered_by_the_partition_end() -> None:
    """A transactional batch ends in a commit marker: a probe on the marker brings no record and no error, only
    the partition's end; counted as unanswered, it cost 30 s in the writer and timed the audit's read out."""
    from kapow.deadletter.reader import stepped

    log = Log([(0, 4, True), (5, 114, False), (115, 115, None)])
    consumer = FakeConsumer(log, per_fetch=1, eof=True)
    unreadable = Unreadable(lambda: consumer)
    got: list[int] = []
    for _ in range(60):  # no tick(): an answer that needed a timeout would never come here
        for msg in stepped(unreadable, consumer.consume(10)):
            if msg.error() is None or msg.error().code() == KafkaError._BAD_COMPRESSION:
                got.append(msg.offset())
    assert got == list(range(115))


def test_a_committed_offset_past_the_log_end_is_not_taken_for_reported() -> None:
    log = Log([(0, 9, False), (10, 12, True)])
    consumer = FakeConsumer(log, per_fetch=1)
    unreadable = Unreadable(lambda: consumer, start=lambda _tp: 1_000)  # a truncated log: committed past its end
    handled, reported = [], []
    for _ in range(60):
        handled += [m.offset() for m in unreadable.split(consumer.consume(10))]
        reported += [r.msg.offset() for r in unreadable.take(100)]
    assert reported == list(range(10)) and handled == [10, 11, 12]

"""The Kafka half of the core, in this process, against the real broker: error records, the DLQ, the redrive.

These drive :class:`~kapow.deadletter.publisher.ErrorPublisher`, :class:`~kapow.deadletter.queue.DeadLetterQueue`
(and its mover, reader and markers), the error topics' sizing, the recent user errors and the
:class:`~kapow.deadletter.redrive.Redriver` thread directly, without a writer process: quick, and visible to
mutation testing (``make mutation``), which cannot see into a child process. The queues here hold records that
must not move beside the ones that must, so a filter that matched too much would show.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from kapow.config import parse_config
from kapow.contract import Destination, TableKey
from kapow.deadletter import redrive
from kapow.deadletter.done import Action, ensure_done_topic, marker_key, marker_value, read_handled
from kapow.deadletter.fence import FENCE_KEY
from kapow.deadletter.mover import Mover, Verb
from kapow.deadletter.publisher import ErrorPublisher
from kapow.deadletter.queue import CannotReschedule, DeadLetterQueue, UnknownRecord
from kapow.deadletter.reader import BrokerUnreachable, open_reader
from kapow.deadletter.recent import recent_records
from kapow.deadletter.records import DlqFilter, decode_record, failed_at_ms
from kapow.deadletter.redrive import Redriver
from kapow.errors import ErrorClass, ErrorCode, Failure, KapowError, Scope
from kapow.kafka.clients import make_producer
from kapow.kafka.topics import HEADER_MARGIN, prepare_error_topics, topic_limits
from kapow.pipeline.work import ErrorRecord
from tests.integration import kit
from tests.integration.kit import Queue

pytestmark = pytest.mark.integration

T0 = (int(time.time()) - 3600) * 1000  # failure times an hour ago: due for a redrive, in a fixed order


@pytest.fixture
def q() -> Iterator[Queue]:
    with kit.queue_topics("kc", 2) as queue:
        yield queue


def headers_for(q: Queue, i: int, *, code: str, vanity: str, failed_at: int, attempt: int = 1,
                extra: dict[str, bytes | None] | None = None) -> list[tuple[str, bytes | None]]:
    """The headers the writer puts on a parked record; ``extra`` adds or replaces some (None: a null value)."""
    dest = {"type": "postgres", "vanity": vanity, "database": "db", "schema": "public", "table": "events"}
    headers: dict[str, bytes | None] = {
        "context": b'{"consumer": {"type": "data_pipeline"}}', "kapow-error-class": b"system",
        "kapow-error-code": code.encode(), "kapow-error-message": b"refused",
        "kapow-destination": msgspec.json.encode(dest), "kapow-source-topic": q.source.encode(),
        "kapow-source-partition": str(i % 2).encode(), "kapow-source-offset": str(100 + i).encode(),
        "kapow-source-timestamp": str(T0).encode(), "kapow-attempt": str(attempt).encode(),
        "kapow-failed-at": str(failed_at).encode()}
    headers.update(extra or {})
    return list(headers.items())


def park(q: Queue, specs: list[dict[str, Any]]) -> None:
    """One parked record per spec (code, vanity, failed_at, partition, attempt, extra headers), in that order."""
    producer = make_producer(kit.BOOTSTRAP)
    for i, spec in enumerate(specs):
        headers = headers_for(q, i, code=spec.get("code", "database_unavailable"), vanity=spec.get("vanity", "vault"),
                              failed_at=spec.get("failed_at", T0 + i), attempt=spec.get("attempt", 1),
                              extra=spec.get("extra"))
        producer.produce(q.system, key=f"k{i}".encode(), value=f'{{"n": {i}}}'.encode(), headers=headers,  # type: ignore[arg-type]
                         partition=spec.get("partition", i % 2))
    assert producer.flush(30) == 0


def values(records: list[kit.Record]) -> list[bytes]:
    return sorted(r.value or b"" for r in records)


# ---------------------------------------------------------------------------------------------------- publisher


def test_error_records_reach_their_topic_acknowledged_with_the_original_bytes(q: Queue) -> None:
    user = f"{q.system}.user"
    kit.create_topic(user, 1)
    try:
        publisher = ErrorPublisher(make_producer(kit.BOOTSTRAP), user_topic=user, system_topic=q.system)
        acks: list[str] = []
        src = Message(topic=q.source, partition=1, offset=41, key=b"key", value=b'{"v": "\xc3\xa9"}',
                      headers=[("context", b"c"), ("nothing", None)], timestamp=(1, T0))
        publisher.publish(ErrorRecord(src, Failure(ErrorCode.BAD_VALUE, "bad\nvalue"), None), lambda: acks.append("u"))
        dest = Destination("wh", "db", "t", mode="upsert")
        down = Failure(ErrorCode.DATABASE_UNAVAILABLE, "refused", Scope.DATABASE)
        publisher.publish(ErrorRecord(src, down, dest, attempts=3), lambda: acks.append("s"))
        assert publisher.in_flight == 2
        assert publisher.flush(30) == 0
        assert sorted(acks) == ["s", "u"] and publisher.in_flight == 0
        assert publisher.published == {ErrorClass.USER: 1, ErrorClass.SYSTEM: 1}
        (u,) = kit.read_all(user)
        (s,) = kit.read_all(q.system)
        assert (u.key, u.value) == (b"key", b'{"v": "\xc3\xa9"}') and (s.key, s.value) == (b"key", u.value)
        assert u.headers["kapow-error-code"] == b"bad_value" and u.headers["kapow-error-class"] == b"user"
        assert s.headers["kapow-attempt"] == b"3" and s.headers["kapow-source-offset"] == b"41"
        assert msgspec.json.decode(s.headers["kapow-destination"])["mode"] == "upsert"
        assert "kapow-destination" not in u.headers and u.headers["nothing"] is None
    finally:
        kit.remove_topics([user])


def test_a_record_too_large_for_its_error_topic_is_cut_to_fit_never_lost(q: Queue) -> None:
    small = f"{q.system}.small"
    create_topics(_topic(small, 100_000))
    try:
        publisher = ErrorPublisher(make_producer(kit.BOOTSTRAP, None, **{"message.max.bytes": 10_000_000}),
                                   user_topic=small, system_topic=small, max_bytes=100_000)
        acked: list[int] = []
        noise = random.Random(7).randbytes(300_000)  # incompressible: the broker sees its whole size
        big = Message(topic=q.source, partition=0, offset=7, key=b"k", value=noise,
                      headers=[("context", b"c")], timestamp=(1, T0))
        publisher.publish(ErrorRecord(big, Failure(ErrorCode.TOO_LARGE, "large"), None), lambda: acked.append(1))
        deadline = time.monotonic() + 30
        while not acked and time.monotonic() < deadline:
            publisher.poll(0.1)
        assert acked == [1] and publisher.truncated == 1 and publisher.delivery_failures >= 1
        (rec,) = kit.read_all(small)
        assert rec.headers["kapow-value-truncated"] == str(len(noise)).encode()
        beside = len(b"k") + len("context") + len(b"c")  # the key and the client's headers go whole beside it
        assert rec.value == noise[: 100_000 - 64 * 1024 - beside]
        assert rec.headers["context"] == b"c" and rec.key == b"k"
    finally:
        kit.remove_topics([small])


def create_topics(*new: Any) -> None:
    admin = AdminClient({"bootstrap.servers": kit.BOOTSTRAP})
    for future in admin.create_topics(list(new)).values():
        future.result(30)
    kit.wait_for(lambda: {t.topic for t in new} <= kit.topics(), 30, "the new topics")


def _topic(name: str, max_bytes: int, partitions: int = 1) -> Any:
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    return NewTopic(name, num_partitions=partitions, replication_factor=-1,
                    config={"max.message.bytes": str(max_bytes)})


# ---------------------------------------------------------------------------------------------------- error topics


def test_error_topics_are_made_to_hold_the_largest_input_record() -> None:
    base = kit.uid("kt")
    big_in, user, system = f"{base}.in", f"{base}.user", f"{base}.system"
    admin = AdminClient({"bootstrap.servers": kit.BOOTSTRAP})
    create_topics(_topic(big_in, 3_000_000), _topic(user, 1_000_000))
    try:
        wanted = prepare_error_topics(admin, inputs=[big_in, f"{base}.missing"], user=user, system=system,
                                      partitions={system: 4})
        assert wanted == 3_000_000 + HEADER_MARGIN
        names = [user, system, f"{system}.done", f"{base}.missing"]
        expected = {user: wanted, system: wanted, f"{system}.done": wanted}
        # KRaft applies a config change from its metadata log: the raised limit shows a moment later
        kit.wait_for(lambda: topic_limits(admin, names, 30) == expected, 30, "the limits of the error topics")
        meta = listed(admin, [system, f"{system}.done", user])
        assert (len(meta[system].partitions), len(meta[f"{system}.done"].partitions), len(meta[user].partitions)) \
            == (4, 1, 1)
        (done_config,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, f"{system}.done")]).values()
        assert done_config.result(30)["cleanup.policy"].value == "compact"
        assert prepare_error_topics(admin, inputs=[big_in], user=user, system=system) == wanted  # idempotent
    finally:
        kit.remove_topics([big_in, user, system, f"{system}.done"])


def test_error_topics_of_a_small_input_keep_the_broker_default() -> None:
    base = kit.uid("kt")
    admin = AdminClient({"bootstrap.servers": kit.BOOTSTRAP})
    try:
        wanted = prepare_error_topics(admin, inputs=[], user=f"{base}.user", system=f"{base}.system")
        assert wanted == 1024 * 1024 + 12 + HEADER_MARGIN
        meta = listed(admin, [f"{base}.user", f"{base}.system"])
        assert (len(meta[f"{base}.user"].partitions), len(meta[f"{base}.system"].partitions)) == (3, 6)
    finally:
        kit.remove_topics([f"{base}.user", f"{base}.system", f"{base}.system.done"])


def listed(admin: AdminClient, names: list[str], timeout: float = 15.0) -> dict[str, Any]:
    """The broker's metadata once it lists every topic of ``names``: a topic just created can be missing from the
    metadata a broker answers with for a moment (a fresh-clone CI on a loaded machine met it)."""
    deadline = time.monotonic() + timeout
    while True:
        meta: dict[str, Any] = admin.list_topics(timeout=10).topics
        if all(name in meta for name in names) or time.monotonic() > deadline:
            return meta
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------- the DLQ


def mixed_queue(q: Queue) -> DeadLetterQueue:
    """Eight parked records: vault ones (database_unavailable, timeout) and others that a vault filter must leave."""
    park(q, [{"vanity": "vault", "failed_at": T0 + 10}, {"vanity": "vault", "code": "timeout", "failed_at": T0 + 20},
             {"vanity": "other", "failed_at": T0 + 30}, {"vanity": "vault", "failed_at": T0 + 40},
             {"vanity": "other", "code": "timeout", "failed_at": T0 + 50}, {"vanity": "vaulted", "failed_at": T0 + 60},
             {"vanity": "vault", "failed_at": T0 + 70, "extra": {"kapow-value-truncated": b"2000000"}},
             {"vanity": "vault", "failed_at": T0 + 80, "extra": {"kapow-source-topic": None}}])
    return DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20)


def ns(records: list[Any]) -> list[int]:
    return [msgspec.json.decode(r.value)["n"] for r in records]


def test_the_queue_lists_in_failure_order_with_pages_filters_and_counts(q: Queue) -> None:
    dlq = mixed_queue(q)
    assert ns(dlq.records()) == list(range(8))  # oldest first across both partitions
    assert ns(dlq.records(DlqFilter(destination="vault/"))) == [0, 1, 3, 6, 7]
    assert ns(dlq.records(DlqFilter(code="timeout"))) == [1, 4]
    assert ns(dlq.records(DlqFilter(since_ms=T0 + 30, until_ms=T0 + 60))) == [2, 3, 4, 5]
    page = dlq.page(DlqFilter(destination="vault"), limit=2)  # the vanity vault, not vaulted (whole names)
    assert [t.record.id for t in page.records] == [r.id for r in dlq.records()][0:2]
    assert page.total == 5 and page.next_after == page.records[-1].record.id
    assert page.summary.parked == 8 and page.summary.codes == {"database_unavailable": 6, "timeout": 2}
    assert page.summary.destinations["other/db/public.events"] == 2
    assert page.summary.pairs[("timeout", "vault/db/public.events")][0] == 1
    second = dlq.page(DlqFilter(destination="vault"), limit=2, after=page.next_after)
    assert ns([t.record for t in second.records]) == [3, 6] and second.next_after is not None
    last = dlq.page(DlqFilter(destination="vault"), limit=10, after=second.next_after)
    assert ns([t.record for t in last.records]) == [7] and last.next_after is None
    assert ns(dlq.records(DlqFilter(destination="vaulted/db/public.events"))) == [5]
    skipped = dlq.page(limit=3, skip=6)
    assert ns([t.record for t in skipped.records]) == [6, 7] and skipped.total == 8
    assert skipped.records[0].record.headers == ()  # pages carry previews, not headers
    with pytest.raises(UnknownRecord, match=f"^no record with id 9:999 on {q.system} \\(the cursor of a listing\\)$"):
        dlq.page(after="9:999")
    with pytest.raises(UnknownRecord):
        list(dlq.scan(after="9:999"))
    assert ns(list(dlq.scan(after=dlq.records()[5].id))) == [6, 7]
    summary = dlq.summary()
    assert summary.parked == 8 and summary.codes == page.summary.codes
    first = dlq.records()[0]
    got = dlq.get(first.id)
    assert got is not None and got.value == b'{"n": 0}' and dict(got.headers)["context"]
    assert dlq.get("1:999") is None


def test_a_reschedule_by_filter_moves_only_what_matches_copies_and_marks_each_once(q: Queue) -> None:
    dlq = mixed_queue(q)
    progress: list[tuple[int, int]] = []
    outcome = dlq.move(Verb.RESCHEDULE, DlqFilter(destination="vault/", code="database_unavailable"),
                       lambda n, total: progress.append((n, total)), chunk_records=1)
    assert outcome.count == 2 and len(outcome.ids) == 2
    assert sorted(outcome.skipped) == sorted(r.id for r in dlq.records() if ns([r])[0] in (6, 7))
    assert progress and progress[-1][0] == progress[-1][1]
    copies = kit.read_all(q.source)
    assert values(copies) == [b'{"n": 0}', b'{"n": 3}']
    for copy in copies:
        n = msgspec.json.decode(copy.value or b"")["n"]
        assert copy.headers["kapow-attempt"] == b"2"
        assert copy.headers["kapow-origin"] == f"{q.source}/{n % 2}/{100 + n}".encode()
        assert copy.headers["context"] and "kapow-error-code" not in copy.headers
    assert ns(dlq.records()) == [1, 2, 4, 5, 6, 7], "a record that did not match moved"
    markers = [m for m in kit.read_all(q.done) if m.key != FENCE_KEY]  # (the mover's fence and its release)
    assert sorted(m.key or b"" for m in markers) == sorted(i.encode() for i in outcome.ids)
    assert {msgspec.json.decode(m.value or b"")["action"] for m in markers} == {"rescheduled"}
    assert dlq.reschedule(DlqFilter(destination="vault/", code="database_unavailable")) == 0  # never twice


def test_purge_by_ids_and_all_and_the_checks_before_acting(q: Queue) -> None:
    dlq = mixed_queue(q)
    records = dlq.records()
    with pytest.raises(UnknownRecord):
        dlq.check_ids([records[0].id, "1:999"], verb=Verb.PURGE)
    with pytest.raises(CannotReschedule, match="kapow-value-truncated"):
        dlq.check_ids([records[6].id], verb=Verb.RESCHEDULE)
    with pytest.raises(CannotReschedule, match="kapow-source-topic"):
        dlq.check_ids([records[7].id], verb=Verb.RESCHEDULE)
    dlq.check_ids([records[6].id, records[7].id], verb=Verb.PURGE)  # purging them is fine
    assert dlq.purge([records[2], records[4]]) == 2
    assert ns(dlq.records()) == [0, 1, 3, 5, 6, 7]
    assert dlq.reschedule([records[1]]) == 1
    assert values(kit.read_all(q.source)) == [b'{"n": 1}']
    assert dlq.purge() == 5 and dlq.records() == []
    assert dlq.summary().parked == 0
    with open_reader(kit.BOOTSTRAP) as reader:
        handled = read_handled(reader, q.system, reader.watermarks(q.system))
    assert handled.count == 8
    assert handled.action(records[1].partition, records[1].offset) is Action.REPUBLISHED
    assert handled.action(records[2].partition, records[2].offset) is Action.PURGED


def test_markers_written_by_anyone_hide_records_and_a_tombstone_brings_one_back(q: Queue) -> None:
    dlq = mixed_queue(q)
    first, second = dlq.records()[:2]
    assert ensure_done_topic(kit.BOOTSTRAP, q.system) == q.done
    assert ensure_done_topic(kit.BOOTSTRAP, q.system) == q.done
    producer = make_producer(kit.BOOTSTRAP)  # (a compacted topic refuses a record without a key: none here)
    producer.produce(q.done, key=marker_key(first.partition, first.offset), value=marker_value("redriven", 1))
    producer.produce(q.done, key=marker_key(second.partition, second.offset), value=marker_value("purged"))
    producer.produce(q.done, key=b"garbage", value=b"x")
    producer.produce(q.done, key=b"0:99999", value=marker_value("purged"))  # beyond the topic: ignored
    assert producer.flush(30) == 0
    assert ns(dlq.records()) == [2, 3, 4, 5, 6, 7]
    producer.produce(q.done, key=marker_key(second.partition, second.offset), value=None)
    assert producer.flush(30) == 0
    assert ns(dlq.records()) == [1, 2, 3, 4, 5, 6, 7]


def test_a_page_holds_a_hundred_previews_and_its_cursor_survives_a_purge(q: Queue) -> None:
    producer = make_producer(kit.BOOTSTRAP)
    for i in range(101):
        headers = headers_for(q, i, code="timeout", vanity="vault", failed_at=T0 + i)
        producer.produce(q.system, key=b"k", value=b"%03d" % i + b"x" * 297, headers=headers,  # type: ignore[arg-type]
                         partition=0)
    assert producer.flush(30) == 0
    dlq = DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20)
    first = dlq.page()
    assert len(first.records) == 100 and first.total == 101 and first.next_after == "0:99"
    assert {len(t.record.value or b"") for t in first.records} == {240} and all(t.size == 300 for t in first.records)
    middle = dlq.page(limit=10)
    assert dlq.purge(DlqFilter(ids=frozenset({"0:5", "0:9"}))) == 2
    after = dlq.page(limit=10, after=middle.next_after)  # the cursor's own record was purged meanwhile
    assert [t.record.id for t in after.records] == [f"0:{i}" for i in range(10, 20)]
    again = dlq.page(limit=10)
    assert [t.record.id for t in again.records] == [f"0:{i}" for i in (0, 1, 2, 3, 4, 6, 7, 8, 10, 11)]
    assert again.total == 99 and again.summary.parked == 99


def test_two_movers_of_one_queue_fence_each_other(q: Queue) -> None:
    dlq = mixed_queue(q)
    records = dlq.records()
    first = Mover(kit.BOOTSTRAP, q.system, Verb.PURGE, chunk_records=10)
    first.add(records[0])
    second = Mover(kit.BOOTSTRAP, q.system, Verb.PURGE, chunk_records=10)  # fences the first
    try:
        with pytest.raises(KapowError) as stopped:
            first.finish()
        text = str(stopped.value)
        assert text.startswith(f"purge stopped after 0 record(s): Kafka {kit.BOOTSTRAP}: ")
        assert text.endswith("(run it again: what was done is not done twice)") and "KafkaError{" not in text
        second.add(records[1])
        assert second.finish().count == 1
    finally:
        first.close()
        second.close()
    assert ns(dlq.records()) == [0, 2, 3, 4, 5, 6, 7]


# ---------------------------------------------------------------------------------------------------- reader


def test_a_reader_ends_where_the_topic_ended_and_merges_partitions_by_key(q: Queue) -> None:
    park(q, [{"failed_at": T0 + t, "partition": p} for t, p in ((5, 0), (1, 1), (3, 0), (2, 1), (9, 1))])
    with open_reader(kit.BOOTSTRAP) as reader:
        marks = reader.watermarks(q.system)
        assert marks == {0: (0, 2), 1: (0, 3)}
        assert reader.watermarks(f"{q.system}.nope") == {} and reader.partitions(f"{q.system}.nope") is None
        park(q, [{"failed_at": T0, "partition": 0}])  # after the read began: not part of it
        plain = list(reader.read(q.system, marks))
        assert len(plain) == 5
        by_failure = reader.read_merged(q.system, marks, lambda m: decode_record(m).failed_at_ms)
        merged = [decode_record(m).failed_at_ms - T0 for m in by_failure]
        assert merged == [1, 2, 5, 3, 9]  # each partition in offset order, the heads compared
        one = list(reader.read(q.system, {1: (1, 2)}))
        assert [(m.partition(), m.offset()) for m in one] == [(1, 1)]
        assert list(reader.read(q.system, {0: (2, 2)})) == []
        assert reader.offsets_for_time(q.system, [0, 1], 0) == {0: 0, 1: 0}
        assert reader.committed(kit.uid("nobody"), q.system, [0, 1]) == {0: -1, 1: -1}
        group = kit.uid("somebody")
        committer = Consumer({"bootstrap.servers": kit.BOOTSTRAP, "group.id": group})
        try:
            committer.commit(offsets=[TopicPartition(q.system, 0, 0), TopicPartition(q.system, 1, 2)],
                             asynchronous=False)
        finally:
            committer.close()
        assert reader.committed(group, q.system, [0, 1]) == {0: 0, 1: 2}


def test_a_merged_read_of_large_partitions_is_bounded_and_in_order(q: Queue) -> None:
    """More than the merge buffer per partition: partitions are paused and resumed, and the order still holds."""
    n = 3000
    park(q, [{"failed_at": T0 + 2 * i + p, "partition": p} for i in range(n) for p in (0, 1)])
    with open_reader(kit.BOOTSTRAP) as reader:
        marks = reader.watermarks(q.system)
        paused: list[int] = []
        resumed: list[int] = []
        real_pause, real_resume = reader.pause, reader.resume

        def pause(topic: str, partition: int) -> None:
            paused.append(partition)
            real_pause(topic, partition)

        def resume(topic: str, partition: int) -> None:
            resumed.append(partition)
            real_resume(topic, partition)

        reader.pause = pause  # type: ignore[method-assign]
        reader.resume = resume  # type: ignore[method-assign]
        times = [decode_record(m).failed_at_ms - T0 for m in reader.read_merged(q.system, marks, failed_at_ms)]
    assert times == list(range(2 * n))
    assert paused and resumed, "the read never filled its merge buffer: the test proves nothing"


def test_a_read_that_gets_nothing_gives_up_after_its_idle_timeout_in_one_line(q: Queue) -> None:
    with open_reader(kit.BOOTSTRAP, idle_timeout=1) as reader:
        started = time.monotonic()
        with pytest.raises(BrokerUnreachable) as stopped:
            list(reader.read(q.system, {7: (0, 5)}))  # a partition the topic does not have: nothing ever comes
    assert str(stopped.value) == f"cannot read {q.system} (nothing for 1 s) at Kafka {kit.BOOTSTRAP}: timed out"
    assert 1 <= time.monotonic() - started < 10


def test_an_unreachable_broker_is_one_line_naming_it_within_seconds() -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match=r"127\.0\.0\.1:1\b"):
        open_reader("127.0.0.1:1")
    assert time.monotonic() - started < 15


def test_recent_user_errors_are_newest_first_bounded_and_trimmed(q: Queue) -> None:
    park(q, [{"failed_at": T0 + i} for i in range(6)])
    got = recent_records(kit.BOOTSTRAP, q.system, per_partition=2, keep_bytes=4)
    assert [t.record.failed_at_ms - T0 for t in got] == [5, 4, 3, 2]
    assert all(t.record.value == b'{"n"' and t.truncated and t.size == 8 for t in got)


def test_recent_user_errors_keep_the_last_two_hundred_of_a_partition_by_default(q: Queue) -> None:
    park(q, [{"failed_at": T0 + i, "partition": 0} for i in range(201)])
    got = recent_records(kit.BOOTSTRAP, q.system)
    assert len(got) == 200 and got[-1].record.failed_at_ms == T0 + 1 and not any(t.truncated for t in got)


def test_recent_user_errors_cut_large_keys_and_headers_to_a_fixed_size(q: Queue) -> None:
    """A client's 1 MB header came back whole: 1,300 of them made /api/user-errors 200 MB (a review, 2026-11-27)."""
    many = {f"h{n}": b"x" * 500 for n in range(100)}  # 50 KB of small headers
    park(q, [{"extra": {"trace": b"t" * 600_000}}, {"extra": many}, {}])
    producer = make_producer(kit.BOOTSTRAP)
    producer.produce(q.system, key=b"k" * 300_000, value=b"{}", partition=0,
                     headers=headers_for(q, 3, code="bad_value", vanity="vault", failed_at=T0 + 3))  # type: ignore[arg-type]
    assert producer.flush(30) == 0
    got = {t.record.failed_at_ms - T0: t for t in recent_records(kit.BOOTSTRAP, q.system)}
    assert sorted(got) == [0, 1, 2, 3]
    for t in got.values():
        assert sum(len(k) + len(v) for k, v in t.record.headers) <= 16 * 1024
        assert all(len(v) <= 1024 for _k, v in t.record.headers) and len(t.record.key or b"") <= 1024
        assert t.record.code in ("database_unavailable", "bad_value"), "KaPoW's own headers are decoded first"
    big, flood, plain, key = got[0], got[1], got[2], got[3]
    assert big.headers_size is not None and big.headers_size > 600_000 and big.cut_json()["headers_truncated"]
    assert dict(big.record.headers)["trace"] == b"t" * 1024 and "kapow-failed-at" in dict(big.record.headers)
    assert flood.headers_size is not None and len(flood.record.headers) < 100 + 11
    assert "kapow-error-code" in dict(flood.record.headers), "small own headers still fit past the dropped ones"
    assert plain.headers_size is None and plain.key_size is None and not plain.cut_json()["headers_truncated"]
    assert key.key_size == 300_000 and key.record.key == b"k" * 1024 and key.cut_json()["key_truncated"]


# ---------------------------------------------------------------------------------------------------- redrive


def redrive_config(q: Queue, *, max_attempts: int = 3) -> Any:
    return parse_config(f'[kafka]\nbootstrap_servers = "{kit.BOOTSTRAP}"\ntopics = ["{q.source}"]\n'
                        f'group_id = "{kit.uid("kg")}"\nsystem_errors_topic = "{q.system}"\n'
                        f'user_errors_topic = "{q.system}.user"\n'
                        '[[destinations]]\nvanity = "vault"\ndatabases = ["db"]\n'
                        '[[destinations]]\nvanity = "other"\ndatabases = ["db"]\n'
                        f'[pipeline]\nredrive_delay_s = 0\nredrive_max_attempts = {max_attempts}\n'
                        'redrive_rate = 1000\n')


def test_the_redrive_waits_for_health_then_republishes_each_record_once(q: Queue) -> None:
    park(q, [{"vanity": "vault"}, {"vanity": "other"}, {"vanity": "vault", "code": "internal"},
             {"vanity": "vault", "attempt": 3}, {"vanity": "vault", "extra": {"kapow-value-truncated": b"9"}},
             {"vanity": "vault", "code": "timeout"}])
    ensure_done_topic(kit.BOOTSTRAP, q.system)
    healthy: set[str] = {"other"}
    asked: list[TableKey] = []
    lock = threading.Lock()

    def health(key: TableKey) -> bool:
        with lock:
            asked.append(key)
            return key.vanity in healthy

    redriver = Redriver(redrive_config(q), health)
    redriver.start()
    try:
        kit.wait_for(lambda: len(kit.read_all(q.source)) == 1, 60, "the healthy destination's record")
        kit.wait_for(lambda: any(k.vanity == "vault" for k in asked), 30, "the vault to be asked about")
        assert values(kit.read_all(q.source)) == [b'{"n": 1}'], "a record was redriven into an unhealthy database"
        with lock:
            healthy.add("vault")
        kit.wait_for(lambda: len(kit.read_all(q.source)) == 3, 60, "the vault's records once it is healthy")
        kit.wait_for(lambda: redriver.counts["skipped"] == 3, 30, "the three that need an operator")
    finally:
        redriver.stop(10)
    copies = kit.read_all(q.source)
    assert values(copies) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 5}']
    assert all(c.headers["kapow-attempt"] == b"2" and c.headers["kapow-origin"].startswith(q.source.encode())
               for c in copies)
    assert redriver.counts["redriven"] == 3
    dlq = DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20)
    assert ns(dlq.records()) == [2, 3, 4], "redriven records must leave the queue, the others stay"
    group = redriver._config.kafka.group_id
    assert sum(max(0, o) for o in kit.committed_offsets(f"{group}.redrive", q.system).values()) == 6


def test_a_destination_down_holds_its_own_records_not_the_others_parked_behind_them(
        q: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review: one tenant's database down stopped the redrive of every record parked behind its first one in
    the same partition, for as long as it stayed down. Records behind a waiting one are now read (up to
    LOOKAHEAD), the healthy ones redriven with their markers, while the group's offset stays at the waiting one."""
    monkeypatch.setattr(redrive, "LOOKAHEAD", 4)
    layout = ["vault", "other", "other", "other", "vault", "other", "other", "other"]  # all in partition 0
    park(q, [{"vanity": v, "partition": 0} for v in layout])
    ensure_done_topic(kit.BOOTSTRAP, q.system)
    healthy = {"other"}
    redriver = Redriver(redrive_config(q), lambda key: key.vanity in healthy)
    group = f"{redriver._config.kafka.group_id}.redrive"
    redriver.start()
    try:
        kit.wait_for(lambda: len(kit.read_all(q.source)) == 3, 60, "the others' records behind the vault's")
        time.sleep(3)  # no more: the partition rests LOOKAHEAD records past the waiting one
        assert values(kit.read_all(q.source)) == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
        assert max(0, kit.committed_offsets(group, q.system).get(0, 0)) == 0, "the offset passed a waiting record"
        healthy.add("vault")
        kit.wait_for(lambda: len(kit.read_all(q.source)) == 8, 60, "every record once the vault is back")
        kit.wait_for(lambda: kit.committed_offsets(group, q.system).get(0, 0) == 8, 30, "the offset to pass all")
        time.sleep(2)
    finally:
        redriver.stop(10)
    assert values(kit.read_all(q.source)) == [b'{"n": %d}' % i for i in range(8)], "a record twice, or none"
    assert redriver.counts == {"redriven": 8, "skipped": 0, "waiting": 0}
    assert ns(DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20).records()) == []


def test_a_reschedule_and_the_redrive_never_both_republish_a_record(q: Queue) -> None:
    """A review: ``kapow dlq reschedule`` run while the redrive republished the same parked records sent them twice
    (8,000 parked, 10,500 rows). A mover's fence holds the redrive from before the mover reads the markers until it
    releases it; afterwards the redrive finds every record marked."""
    park(q, [{"vanity": "vault"} for _ in range(20)])
    ensure_done_topic(kit.BOOTSTRAP, q.system)
    dlq = DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20)
    mover = Mover(kit.BOOTSTRAP, q.system, Verb.RESCHEDULE, chunk_records=5)  # its fence is up from here
    parked = dlq.records()  # what the operator's command read (no marker yet)
    redriver = Redriver(redrive_config(q), lambda key: True)
    redriver.start()
    try:
        time.sleep(6)  # the redrive reads the same records, healthy and due, while the command works
        for record in parked:
            mover.add(record)
        assert mover.finish().count == 20
        mover.close()  # releases the fence
        kit.wait_for(lambda: redriver.counts["skipped"] + redriver.counts["redriven"] >= 20, 60,
                     "the redrive to judge every record")
        time.sleep(2)
    finally:
        redriver.stop(10)
        mover.close()
    copies = kit.read_all(q.source)
    assert values(copies) == sorted(b'{"n": %d}' % i for i in range(20)), "a record republished twice, or none"
    assert redriver.counts["redriven"] == 0


def test_a_chunk_a_fence_aborts_counts_nothing_and_its_records_move_once(q: Queue) -> None:
    """A review: a fence put up while the redrive judged a chunk aborted the chunk at its commit (right), but its
    records were already counted as ``redriven``, so the count ran above what reached the source topics. Here the
    operator's command starts (its fence goes up) from inside the redrive's health check, i.e. after the chunk was
    read and before it commits; then the command reschedules every record."""
    park(q, [{"vanity": "vault"} for _ in range(20)])
    ensure_done_topic(kit.BOOTSTRAP, q.system)
    movers: list[Mover] = []

    def health(_key: TableKey) -> bool:
        if not movers:  # the fence goes up between the chunk's read and its commit
            movers.append(Mover(kit.BOOTSTRAP, q.system, Verb.RESCHEDULE, chunk_records=5))
        return True

    redriver = Redriver(redrive_config(q), health)
    redriver.start()
    try:
        kit.wait_for(lambda: bool(movers), 60, "the redrive to judge a chunk")
        time.sleep(3)  # the chunk meets the fence at its commit and is aborted
        assert redriver.counts["redriven"] == 0, "an aborted chunk was counted"
        mover = movers[0]
        for record in DeadLetterQueue(kit.BOOTSTRAP, q.system, timeout=20).records():
            mover.add(record)
        assert mover.finish().count == 20
        mover.close()  # releases the fence: the redrive finds every record marked
        kit.wait_for(lambda: redriver.counts["skipped"] >= 20, 60, "the redrive to skip every marked record")
        time.sleep(2)
    finally:
        redriver.stop(10)
        for m in movers:
            m.close()
    assert values(kit.read_all(q.source)) == sorted(b'{"n": %d}' % i for i in range(20)), "a record twice, or none"
    assert redriver.counts == {"redriven": 0, "skipped": 20, "waiting": 0}


def test_flush_returns_once_every_record_is_acknowledged(q: Queue) -> None:
    """The publisher's acks are what a batch's commit waits for: ``flush`` returns with every one called."""
    publisher = ErrorPublisher(make_producer(kit.BOOTSTRAP), user_topic=q.system, system_topic=q.system)
    acks: list[int] = []

    def ack(i: int) -> Callable[[], None]:
        return lambda: acks.append(i)

    for i in range(50):
        src = Message(topic=q.source, partition=0, offset=i, key=None, value=b"x", headers=None, timestamp=(1, T0))
        publisher.publish(ErrorRecord(src, Failure(ErrorCode.NOT_JSON, "no"), None), ack(i))
    assert publisher.flush(30) == 0
    assert sorted(acks) == list(range(50))
    c = Consumer({"bootstrap.servers": kit.BOOTSTRAP, "group.id": kit.uid("x")})
    try:
        total = sum(c.get_watermark_offsets(TopicPartition(q.system, p), timeout=10)[1] for p in (0, 1))
    finally:
        c.close()
    assert total == 50

"""The dead-letter parts that need no broker, at their exact values: error headers and the publisher's retries and
cuts (on the in-memory producer), records as operators see them, the redrive's verdicts, markers and copies."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import msgspec
import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from kapow.contract import Destination, TableKey
from kapow.deadletter.done import Action, Handled, _action, marker_value
from kapow.deadletter.mover import MAX_IDS_REPORTED, Outcome, Verb, copy_headers, reschedulable
from kapow.deadletter.publisher import (
    MESSAGE_LIMIT,
    OWN_HEADERS,
    ErrorPublisher,
    describe,
    error_headers,
    safe_headers,
)
from kapow.deadletter.records import (
    DlqFilter,
    DlqRecord,
    decode_record,
    failed_at_ms,
    iso,
    label_of,
    parse_origin,
    parse_time,
    text,
    trim,
)
from kapow.deadletter.redrive import REDRIVABLE, Verdict, judge, republished_headers
from kapow.errors import ErrorClass, ErrorCode, Failure, KapowError, Scope
from kapow.pipeline.work import ErrorRecord

DEST = Destination("wh", "db", "t", schema="s", mode="upsert")


def source(value: bytes | None = b'{"v": 1}', headers: list[tuple[str, bytes | None]] | None = None,
           key: bytes | None = b"k") -> Message:
    return Message(topic="in", partition=3, offset=41, key=key, value=value, timestamp=(1, 1_700_000_000_000),
                   headers=headers if headers is not None else [("context", b"c"), ("trace", None)])


# ---------------------------------------------------------------------------------------------------- headers


def test_error_headers_keep_the_client_s_and_add_this_failure_s_metadata() -> None:
    msg = source(headers=[("context", b"c"), ("trace", None), ("kapow-mine", b"x"), ("kapow-error-code", b"old"),
                          ("kapow-attempt", b"4"), ("kapow-origin", b"t/0/1")])
    record = ErrorRecord(msg, Failure(ErrorCode.TIMEOUT, "slow", Scope.TABLE), DEST, attempts=2)
    headers = error_headers(record, 123)
    assert headers == [
        ("context", b"c"), ("trace", None), ("kapow-mine", b"x"), ("kapow-origin", b"t/0/1"),
        ("kapow-error-class", b"system"), ("kapow-error-code", b"timeout"), ("kapow-error-message", b"slow"),
        ("kapow-source-topic", b"in"), ("kapow-source-partition", b"3"), ("kapow-source-offset", b"41"),
        ("kapow-source-timestamp", b"1700000000000"), ("kapow-attempt", b"4"), ("kapow-failed-at", b"123"),
        ("kapow-destination", b'{"type":"postgres","vanity":"wh","database":"db","schema":"s","table":"t",'
                              b'"mode":"upsert"}')]
    assert ("kapow-attempt", b"5") in error_headers(ErrorRecord(msg, record.failure, None, attempts=5), 1)
    bare = error_headers(ErrorRecord(msg, record.failure, None), 1, client_headers=False, truncated_from=99)
    assert [k for k, _ in bare][:1] == ["kapow-error-class"] and bare[-1] == ("kapow-value-truncated", b"99")
    assert all(k != "kapow-destination" for k, _ in bare)


def test_a_message_is_cut_to_its_limit_and_a_garbled_attempt_counts_as_none() -> None:
    msg = source(headers=[("kapow-attempt", b"many"), ("kapow-attempt", None)])
    long = ErrorRecord(msg, Failure(ErrorCode.BAD_VALUE, "é" * 600), None, attempts=1)
    headers = dict(error_headers(long, 1))
    assert headers["kapow-error-message"] == ("é" * (MESSAGE_LIMIT - 1) + "…").encode()
    assert headers["kapow-attempt"] == b"1"
    exact = dict(error_headers(ErrorRecord(msg, Failure(ErrorCode.BAD_VALUE, "x" * MESSAGE_LIMIT), None), 1))
    assert exact["kapow-error-message"] == b"x" * MESSAGE_LIMIT
    huge = source(headers=[("kapow-attempt", b"9" * 25)])
    assert dict(error_headers(ErrorRecord(huge, long.failure, None), 1))["kapow-attempt"] == b"9" * 20


def test_headers_a_client_library_cannot_decode_are_none_never_an_exception() -> None:
    class Broken(Message):  # type: ignore[misc]
        def headers(self) -> Any:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "bad")

    assert safe_headers(Broken()) == []
    assert safe_headers(Message(headers=None)) == []


def test_describe_names_the_packet_and_a_long_destination_is_cut() -> None:
    record = ErrorRecord(source(), Failure(ErrorCode.BAD_VALUE, "bad"), Destination("v" * 400, "db", "t"))
    out = describe(record)
    assert {k: v for k, v in out.items() if k != "destination"} == {
        "topic": "in", "partition": 3, "offset": 41, "class": "user", "code": "bad_value", "reason": "bad"}
    assert len(out["destination"]) == 300 and out["destination"].endswith("…")
    assert describe(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), None)).get("destination") is None
    short = describe(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), DEST))
    assert short["destination"] == "wh/db/s.t"
    for length, shown in ((300, 300), (301, 300)):
        vanity = "v" * (length - len("/db/public.t"))
        out = describe(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), Destination(vanity, "db", "t")))
        assert len(out["destination"]) == shown and out["destination"].endswith("…") is (length > 300)


# ---------------------------------------------------------------------------------------------------- the publisher


class Producer:
    """Delivery reports come when polled; ``refuse`` maps a stage's value size to the error to report."""

    def __init__(self) -> None:
        self.produced: list[dict[str, Any]] = []
        self.queue: list[tuple[Any, Any]] = []
        self.errors: list[KafkaError | None] = []  # one per delivery, in order (None: delivered)
        self.raise_on_produce: list[BaseException] = []
        self.flushes: list[float] = []
        self.polls: list[float] = []

    def produce(self, topic: str, **kw: Any) -> None:
        if self.raise_on_produce:
            raise self.raise_on_produce.pop(0)
        self.produced.append({"topic": topic, **kw})
        self.queue.append((kw["on_delivery"], self.errors.pop(0) if self.errors else None))

    def poll(self, timeout: float = 0.0) -> int:
        self.polls.append(timeout)
        queue, self.queue = self.queue, []
        for callback, err in queue:
            callback(err, None)
        return len(queue)

    def flush(self, timeout: float = 0.0) -> int:
        self.flushes.append(timeout)
        return len(self.queue)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def publisher(max_bytes: int = 200_000) -> tuple[ErrorPublisher, Producer, Clock]:
    producer, clock = Producer(), Clock()
    return ErrorPublisher(producer, user_topic="u", system_topic="s", max_bytes=max_bytes,  # type: ignore[arg-type]
                          clock=clock), producer, clock


def test_records_go_to_their_class_topic_and_are_counted_when_acknowledged() -> None:
    p, producer, _clock = publisher()
    acks: list[str] = []
    p.publish(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), None), lambda: acks.append("user"))
    p.publish(ErrorRecord(source(), Failure(ErrorCode.TIMEOUT, "t", Scope.TABLE), DEST), lambda: acks.append("sys"))
    assert [d["topic"] for d in producer.produced] == ["u", "s"] and p.in_flight == 2 and acks == []
    assert producer.produced[0]["key"] == b"k" and producer.produced[0]["value"] == b'{"v": 1}'
    p.poll(0.5)
    assert producer.polls == [0.5]
    assert acks == ["user", "sys"] and p.in_flight == 0
    assert p.published == {ErrorClass.USER: 1, ErrorClass.SYSTEM: 1} and p.delivery_failures == 0 and p.truncated == 0


def test_publishing_and_acknowledging_a_record_imports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # an import statement in _produce and _delivered cost a refused packet a few us of the loop's time each, in
    # importlib (a flood of refused packets, 2026-11-27)
    import builtins

    p, _producer, _clock = publisher()
    imported: list[str] = []
    real = builtins.__import__

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        imported.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy)
    for _ in range(3):
        p.publish(ErrorRecord(source(), Failure(ErrorCode.UNKNOWN_TABLE, "x"), DEST), lambda: None)
    p.poll(0)
    monkeypatch.undo()
    assert imported == [] and p.in_flight == 0


def test_a_failed_delivery_is_produced_again_after_a_pause_never_dropped() -> None:
    p, producer, clock = publisher()
    acks: list[int] = []
    producer.errors = [KafkaError(KafkaError._MSG_TIMED_OUT)]
    p.publish(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), None), lambda: acks.append(1))
    p.poll()
    assert p.delivery_failures == 1 and acks == [] and len(producer.produced) == 1
    clock.now += 0.99
    p.poll()
    assert len(producer.produced) == 1, "produced again before its pause was over"
    clock.now += 0.01
    p.poll()
    assert len(producer.produced) == 2 and producer.produced[1]["value"] == b'{"v": 1}'
    p.poll()
    assert acks == [1] and p.in_flight == 0 and p.truncated == 0


def test_a_local_queue_full_is_tried_again_on_the_next_poll_and_a_produce_error_after_a_pause() -> None:
    p, producer, clock = publisher()
    acks: list[int] = []
    producer.raise_on_produce = [BufferError("queue full"), KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))]
    p.publish(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), None), lambda: acks.append(1))
    assert producer.produced == [] and p.delivery_failures == 0
    p.poll()  # tried again at once: now the produce itself fails, which is a failed delivery
    assert p.delivery_failures == 1 and producer.produced == []
    clock.now += 1
    p.poll()
    p.poll()
    assert acks == [1]


def test_a_record_too_large_is_cut_then_stripped_then_started_over() -> None:
    p, producer, clock = publisher(max_bytes=100_000)
    too_large = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    producer.errors = [too_large, KafkaError(KafkaError.INVALID_MSG_SIZE), too_large]
    value = bytes(range(256)) * 1000
    msg = source(value=value, key=b"K" * 2000)
    acks: list[int] = []
    p.publish(ErrorRecord(msg, Failure(ErrorCode.NOT_JSON, "x"), None), lambda: acks.append(1))
    p.poll()  # whole: refused; stage 1 goes at once
    p.poll()
    cut = producer.produced[1]
    beside = 2000 + sum(len(k) + len(v or b"") for k, v in msg.headers() or [])  # the key and the client's headers
    assert cut["value"] == value[: 100_000 - 64 * 1024 - beside] and cut["key"] == msg.key()
    assert ("kapow-value-truncated", str(len(value)).encode()) in cut["headers"]
    assert ("context", b"c") in cut["headers"]
    p.poll()  # cut: refused too; stage 2 goes at once
    bare = producer.produced[2]
    assert bare["value"] is None and bare["key"] == b"K" * 1024
    assert not any(k == "context" for k, _ in bare["headers"]), "client headers are dropped at the last stage"
    p.poll()  # even bare it is refused: the topic is misconfigured; start over whole, after a pause
    assert len(producer.produced) == 3
    clock.now += 1
    p.poll()
    assert producer.produced[3]["value"] == value
    p.poll()
    assert acks == [1] and p.delivery_failures == 3 and p.truncated == 0


def test_a_cut_value_leaves_room_for_a_large_key_and_large_headers() -> None:
    """A hostile run: a 1 MB value beside a 300 kB key and a 300 kB header was cut to the topic's size less a
    margin, which with the key and headers was still too large, so it went with no value and no client header."""
    p, producer, _clock = publisher(max_bytes=1_048_576)
    producer.errors = [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)]
    msg = Message(topic="events", partition=0, offset=7, key=b"k" * 300_000, value=b"v" * 1_000_000,
                  headers=[("context", b"c"), ("big", b"h" * 300_000)], timestamp=(1, 5))
    p.publish(ErrorRecord(msg, Failure(ErrorCode.NOT_JSON, "x"), None), lambda: None)
    p.poll()
    p.poll()
    cut = producer.produced[1]
    client = sum(len(k) + len(v or b"") for k, v in cut["headers"] if not k.startswith("kapow-"))
    assert cut["value"] and ("big", b"h" * 300_000) in cut["headers"] and cut["key"] == msg.key()
    assert len(cut["value"]) + len(cut["key"]) + client <= 1_048_576 - 64 * 1024


def test_a_cut_record_acknowledged_is_counted_as_truncated() -> None:
    p, producer, _clock = publisher(max_bytes=1_000)
    producer.errors = [KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)]
    p.publish(ErrorRecord(source(value=None), Failure(ErrorCode.NOT_JSON, "x"), None), lambda: None)
    p.poll()
    p.poll()
    first, cut = producer.produced
    assert cut["value"] is None and first["value"] is None
    assert ("kapow-value-truncated", b"0") not in cut["headers"], "a value that was None is not 'cut'"
    p.poll()
    assert p.truncated == 1 and p.in_flight == 0


def test_flush_returns_what_is_unacknowledged_once_everything_is_or_its_deadline_passes() -> None:
    p, producer, clock = publisher()
    p.publish(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), None), lambda: None)
    assert p.flush(5) == 0 and producer.flushes == [0.2]
    producer.errors = [KafkaError(KafkaError._MSG_TIMED_OUT)] * 100
    p.publish(ErrorRecord(source(), Failure(ErrorCode.NOT_JSON, "x"), None), lambda: None)
    real_poll = p.poll

    def ticking(timeout: float = 0.0) -> None:
        clock.now += 0.3
        real_poll(timeout)

    p.poll = ticking  # type: ignore[method-assign]
    producer.flushes.clear()
    assert p.flush(1.0) == 1
    assert len(producer.flushes) == 4 and producer.flushes[-1] == 0.0, producer.flushes
    clock.now = 50.0  # a deadline met exactly is met: 0.25 s per turn, four turns for one second
    p.poll = lambda timeout=0.0: setattr(clock, "now", clock.now + 0.25) or real_poll(timeout)  # type: ignore
    producer.flushes.clear()
    producer.polls.clear()
    assert p.flush(1.0) == 1 and len(producer.flushes) == 4
    assert set(producer.polls) == {0.05}, "the publisher waits at most 50 ms for delivery reports per turn"


# ---------------------------------------------------------------------------------------------------- records


def written(**extra: bytes | None) -> list[tuple[str, bytes | None]]:
    headers: dict[str, bytes | None] = {
        "context": b"c", "kapow-error-class": b"system", "kapow-error-code": b"timeout",
        "kapow-error-message": "slow é".encode(), "kapow-destination": b'{"vanity":"wh","database":"db","table":"t"}',
        "kapow-source-topic": b"events", "kapow-source-partition": b"0", "kapow-source-offset": b"0",
        "kapow-source-timestamp": b"1700000000000", "kapow-attempt": b"2", "kapow-failed-at": b"1700000001234"}
    headers.update(extra)
    return list(headers.items())


def parked(headers: list[tuple[str, bytes | None]], *, partition: int = 2, offset: int = 7,
           value: bytes | None = b'{"x": 1}') -> Message:
    return Message(topic="sys", partition=partition, offset=offset, key=b"k", value=value, headers=headers)


def test_a_record_decodes_every_field() -> None:
    r = decode_record(parked(written(), partition=0, offset=0))
    assert r == DlqRecord(id="0:0", partition=0, offset=0, key=b"k", value=b'{"x": 1}',
                          headers=tuple((k, v) for k, v in written() if v is not None), code="timeout",
                          error_class="system", message="slow é",
                          destination={"vanity": "wh", "database": "db", "table": "t"}, source_topic="events",
                          source_partition=0, source_offset=0, source_timestamp_ms=1_700_000_000_000, attempt=2,
                          failed_at_ms=1_700_000_001_234, origin="events/0/0", value_truncated=None)
    assert r.label == "wh/db/public.t"


def test_a_record_without_metadata_decodes_to_placeholders() -> None:
    r = decode_record(parked([("kapow-error-message", b"\xff"), ("kapow-value-truncated", b"-5")]))
    assert (r.code, r.error_class, r.message, r.destination, r.source_topic) == ("?", "?", "\ufffd", None, "")
    assert (r.source_partition, r.source_offset, r.source_timestamp_ms, r.failed_at_ms) == (-1, -1, -1, -1)
    assert (r.attempt, r.origin, r.value_truncated) == (1, "", None)
    assert decode_record(parked([("kapow-value-truncated", b"0")])).value_truncated == 0
    assert decode_record(parked([("kapow-value-truncated", b"x")])).value_truncated is None
    no_origin = decode_record(parked(written(**{"kapow-source-partition": b"-1"})))
    assert no_origin.origin == ""
    assert decode_record(parked(written(**{"kapow-source-offset": b"x"}))).origin == ""
    assert decode_record(parked(written(**{"kapow-destination": b"{bad"}))).destination is None


def test_to_json_is_the_api_s_shape() -> None:
    r = decode_record(parked(written(**{"kapow-value-truncated": b"99", "trace": None})))
    out = r.to_json()
    assert out == {
        "id": "2:7", "partition": 2, "offset": 7, "code": "timeout", "class": "system", "message": "slow é",
        "destination": {"vanity": "wh", "database": "db", "table": "t"}, "destination_label": "wh/db/public.t",
        "source": {"topic": "events", "partition": 0, "offset": 0, "timestamp_ms": 1_700_000_000_000},
        "origin": "events/0/0", "attempt": 2, "failed_at": "2023-11-14T22:13:21.234Z",
        "failed_at_ms": 1_700_000_001_234, "value_truncated": 99, "key": "k", "value": '{"x": 1}',
        "headers": {k: v.decode() for k, v in written(**{"kapow-value-truncated": b"99"}) if v is not None}}
    short = decode_record(parked(written(), value=None)).to_json(with_value=False)
    assert "key" not in short and "value" not in short and "headers" not in short and "value_truncated" not in short


def test_trim_cuts_values_and_may_drop_headers() -> None:
    r = decode_record(parked(written()))
    whole = trim(r, 8)
    assert whole.record is r and whole.size == 8 and not whole.truncated
    cut = trim(r, 7)
    assert cut.record.value == b'{"x": 1' and cut.size == 8 and cut.truncated and cut.record.headers == r.headers
    bare = trim(r, 100, headers=False)
    assert bare.record.value == r.value and bare.record.headers == () and bare.size == 8 and not bare.truncated
    none = trim(decode_record(parked(written(), value=None)), 3)
    assert none.record.value is None and none.size == 0 and not none.truncated
    assert trim(decode_record(parked(written(), value=None)), 3, headers=False).record.value is None


def test_times_are_iso_utc_milliseconds_or_nothing() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z" and iso(1_700_000_001_234) == "2023-11-14T22:13:21.234Z"
    assert iso(10**20) == "" and iso(-(10**20)) == ""
    assert parse_time("2026-11-24T10:00:00Z") == int(dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC).timestamp() * 1000)
    assert parse_time("2026-11-24T10:00:00") == parse_time("2026-11-24T10:00:00+00:00")  # naive: UTC
    assert parse_time("2026-11-24T11:00:00+01:00") == parse_time("2026-11-24T10:00:00Z")
    for bad in ("yesterday", "5x", "m", "", "1xm"):
        with pytest.raises(KapowError, match="cannot read time"):
            parse_time(bad)
    assert text(None) is None and text(b"\xff") == "\ufffd"


def test_relative_times_count_back_from_now(monkeypatch: pytest.MonkeyPatch) -> None:
    import kapow.deadletter.records as records

    monkeypatch.setattr(records.time, "time", lambda: 1_000_000.0)
    for spec, seconds in (("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("0s", 0)):
        assert parse_time(spec) == (1_000_000 - seconds) * 1000, spec


def test_a_time_without_a_zone_is_utc_whatever_the_machine_s_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert parse_time("2026-11-24T10:00:00") == parse_time("2026-11-24T10:00:00Z") == 1_795_514_400_000
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_failure_time_alone_is_read_cheaply() -> None:
    assert failed_at_ms(parked([("kapow-failed-at", b"12")])) == 12
    assert failed_at_ms(parked([("kapow-failed-at", None), ("kapow-failed-at", b"7")])) == 7
    assert failed_at_ms(parked([("kapow-failed-at", b"soon")])) == -1
    assert failed_at_ms(parked([])) == -1
    assert failed_at_ms(Message(headers=None)) == -1


def test_labels_and_filters() -> None:
    assert label_of({"vanity": "v"}) == "v/-/public.-" and label_of({}) == ""
    r = decode_record(parked(written()))
    assert DlqFilter(ids=frozenset({"2:7"})).matches(r) and not DlqFilter(ids=frozenset({"2:8"})).matches(r)
    assert not DlqFilter(ids=frozenset()).matches(r), "an empty id list names no record"
    assert DlqFilter(code="timeout").matches(r) and not DlqFilter(until_ms=1_700_000_001_233).matches(r)
    assert DlqFilter(until_ms=1_700_000_001_234).matches(r) and DlqFilter(since_ms=1_700_000_001_234).matches(r)
    assert not DlqFilter(destination="wh/db/x").matches(r)
    assert not DlqFilter(ids=frozenset({"1:1"})).empty and not DlqFilter(destination="x").empty
    assert not DlqFilter(since_ms=0).empty and not DlqFilter(until_ms=0).empty and DlqFilter(ids=frozenset()).empty
    assert parse_origin("t/0/0") == ("t", 0, 0)


# ---------------------------------------------------------------------------------------------------- markers, copies


def test_markers_say_what_happened_one_byte_per_offset() -> None:
    assert msgspec.json.decode(marker_value("purged", 5)) == {"action": "purged", "at_ms": 5}
    stamped = msgspec.json.decode(marker_value("rescheduled"))
    assert abs(stamped["at_ms"] - time.time() * 1000) < 5_000 and stamped["action"] == "rescheduled"
    assert _action(b'{"action": "purged"}') is Action.PURGED
    assert _action(b'{"at_ms": 1}') is Action.REPUBLISHED and _action(b"\xff") is Action.REPUBLISHED
    handled = Handled({0: (10, 12), 1: (5, 3)})
    assert handled._slots[1] == bytearray(), "a partition whose high is below its low holds nothing"
    handled.set(0, 10, Action.PURGED)
    handled.set(0, 9, Action.PURGED)
    handled.set(0, 12, Action.PURGED)
    assert (0, 10) in handled and (0, 11) not in handled and handled.count == 1
    assert handled.action(0, 9) is Action.NONE and handled.action(7, 0) is Action.NONE
    handled.set(0, 10, Action.REPUBLISHED)
    assert handled.count == 1 and handled.action(0, 10) is Action.REPUBLISHED


def test_copies_carry_the_client_headers_the_next_attempt_the_origin_and_the_failed_destination() -> None:
    r = decode_record(parked(written(**{"kapow-mine": b"x"})))
    assert copy_headers(r) == [("context", b"c"), ("kapow-attempt", b"3"), ("kapow-origin", b"events/0/0"),
                               ("kapow-destination", b'{"vanity":"wh","database":"db","table":"t"}')]
    lost = decode_record(parked([("context", b"c")]))
    assert copy_headers(lost) == [("context", b"c"), ("kapow-attempt", b"2")]
    assert reschedulable(r) and not reschedulable(lost)
    assert Verb.RESCHEDULE.done == "rescheduled" and Verb.PURGE.done == "purged"
    assert Outcome(Verb.PURGE, 1, ["0:1"]).to_json() == {"action": "purged", "count": 1, "ids": ["0:1"]}
    assert MAX_IDS_REPORTED == 1000


# ---------------------------------------------------------------------------------------------------- redrive verdicts


def redrive_msg(*, partition: int = 1, offset: int = 7, **overrides: bytes | None) -> Message:
    headers: dict[str, bytes | None] = {
        "context": b"x", "kapow-error-code": b"database_unavailable", "kapow-attempt": b"1",
        "kapow-failed-at": b"1000", "kapow-source-topic": b"in", "kapow-source-partition": b"2",
        "kapow-source-offset": b"41",
        "kapow-destination": b'{"type":"postgres","vanity":"wh","database":"db","schema":"s","table":"t"}'}
    headers.update(overrides)
    return Message(topic="sys", partition=partition, offset=offset, key=b"k", value=b"v", headers=list(headers.items()))


def verdict(msg: Message, *, healthy: bool = True, now_ms: int = 11_000, handled: set[tuple[int, int]] | None = None,
            max_attempts: int = 5) -> Verdict:
    return judge(msg, topics=frozenset({"in"}), max_attempts=max_attempts, delay_s=10, now_ms=now_ms,
                 handled=handled or set(), health=lambda _k: healthy)


KEY = TableKey("wh", "db", "s", "t")


@pytest.mark.parametrize(("msg", "expected"), [
    (redrive_msg(), Verdict("redrive", key=KEY)),
    (redrive_msg(**{"kapow-error-code": b"internal"}), Verdict("skip", "parked for internal")),
    (redrive_msg(**{"kapow-error-code": None}), Verdict("skip", "parked for an unknown reason")),
    (redrive_msg(**{"kapow-value-truncated": b"9"}), Verdict("skip", "value cut to fit the error topic")),
    (redrive_msg(**{"kapow-source-topic": b"other"}), Verdict("skip", "not from a topic this writer consumes")),
    (redrive_msg(**{"kapow-source-topic": None}), Verdict("skip", "not from a topic this writer consumes")),
    (redrive_msg(**{"kapow-attempt": b"5"}), Verdict("skip", "tried 5 times")),
    (redrive_msg(**{"kapow-attempt": b"4"}), Verdict("redrive", key=KEY)),
    (redrive_msg(**{"kapow-attempt": b"1" * 25}), Verdict("skip", f"tried {'1' * 20} times")),
    (redrive_msg(**{"kapow-attempt": b"x"}), Verdict("skip", "no readable destination")),
    (redrive_msg(**{"kapow-failed-at": b"x"}), Verdict("skip", "no readable destination")),
    (redrive_msg(**{"kapow-destination": None}), Verdict("skip", "no readable destination")),
    (redrive_msg(**{"kapow-destination": b'{"vanity": "wh"}'}), Verdict("skip", "no readable destination")),
    (redrive_msg(**{"kapow-failed-at": b"1001"}), Verdict("wait", key=KEY)),  # 10 s after it failed, not before
])
def test_the_redrive_s_verdict_and_why(msg: Message, expected: Verdict) -> None:
    assert verdict(msg) == expected


def test_missing_attempt_and_time_headers_read_as_a_first_failure_long_ago() -> None:
    msg = redrive_msg(**{"kapow-attempt": None, "kapow-failed-at": None})
    assert verdict(msg, max_attempts=2) == Verdict("redrive", key=KEY)
    assert verdict(msg, max_attempts=1) == Verdict("skip", "tried 1 times")
    assert verdict(msg, now_ms=10_000) == Verdict("redrive", key=KEY)  # failed "at 0": due 10 s later, exactly
    assert verdict(msg, now_ms=9_999) == Verdict("wait", key=KEY)


def test_handled_records_and_unhealthy_destinations() -> None:
    assert verdict(redrive_msg(partition=0, offset=0), handled={(0, 0)}) == Verdict("skip", "already handled")
    assert verdict(redrive_msg(), healthy=False) == Verdict("wait", key=KEY)
    assert verdict(redrive_msg(), now_ms=10_999) == Verdict("wait", key=KEY)
    assert {"database_unavailable", "timeout", "too_many_connections", "database_shutting_down"} == REDRIVABLE


def test_a_redriven_copy_s_headers() -> None:
    # the destination that failed goes with the copy: it is for that destination alone
    assert republished_headers(redrive_msg(**{"kapow-attempt": b"3"})) == [
        ("context", b"x"), ("kapow-attempt", b"4"), ("kapow-origin", b"in/2/41"),
        ("kapow-destination", b'{"type":"postgres","vanity":"wh","database":"db","schema":"s","table":"t"}')]
    plain = republished_headers(redrive_msg(**{"kapow-attempt": None, "kapow-source-offset": None,
                                               "trace": None, "kapow-origin": None}))
    assert plain[:4] == [("context", b"x"), ("trace", None), ("kapow-attempt", b"2"), ("kapow-origin", b"in/2/")]
    empty = republished_headers(redrive_msg(**{"kapow-attempt": b"", "kapow-source-topic": None,
                                               "kapow-source-partition": None}))
    assert ("kapow-attempt", b"2") in empty and ("kapow-origin", b"//41") in empty
    assert all(k not in OWN_HEADERS for k, _ in plain[:2])


class Committed:
    """The redrive consumer's view of its group's committed offsets (or a broker that does not answer)."""

    def __init__(self, offsets: dict[int, int] | None) -> None:
        self.offsets = offsets

    def assignment(self) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition("sys", p) for p in (self.offsets or {})]

    def committed(self, partitions: list[Any], timeout: float) -> list[Any]:
        from confluent_kafka import TopicPartition

        assert timeout == 5
        if self.offsets is None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return [TopicPartition("sys", tp.partition, self.offsets[tp.partition]) for tp in partitions]


def test_the_redrive_forgets_handled_records_below_its_committed_offsets() -> None:
    from kapow.config import parse_config
    from kapow.deadletter.redrive import Redriver

    config = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["in"]\n'
                          '[[destinations]]\nvanity = "wh"\ndatabases = ["db"]\n')
    r = Redriver(config, lambda _k: True)
    r._handled = {(0, 4), (0, 5), (0, 9), (1, 0), (1, 7), (2, 3)}
    r._prune(Committed({0: 5, 1: -1001}))  # partition 1 has no committed offset; 2 is not assigned
    assert r._handled == {(0, 5), (0, 9), (1, 0), (1, 7), (2, 3)}
    r._prune(Committed(None))
    assert r._handled == {(0, 5), (0, 9), (1, 0), (1, 7), (2, 3)}, "a broker that does not answer prunes nothing"
    r._prune(Committed({0: 10, 1: 8}))
    assert r._handled == {(2, 3)}


def test_the_summary_counts_by_code_destination_and_pair_within_its_bounds() -> None:
    from kapow.deadletter.queue import MAX_FACETS, Summary

    def rec(code: str, vanity: str | None, at: int) -> DlqRecord:
        import dataclasses

        base = decode_record(parked(written(**{"kapow-error-code": code.encode(),
                                               "kapow-failed-at": str(at).encode()})))
        destination = None if vanity is None else {"vanity": vanity, "database": "db", "table": "t"}
        return dataclasses.replace(base, destination=destination)

    s = Summary()
    s.add(rec("timeout", "a", 5))
    s.add(rec("timeout", "a", 3))
    s.add(rec("timeout", "a", 9))
    s.add(rec("timeout", None, 1))
    assert s.parked == 4 and s.codes == {"timeout": 4}
    assert s.destinations == {"a/db/public.t": 3, "-": 1}
    assert s.pairs == {("timeout", "a/db/public.t"): [3, 3, 9], ("timeout", "-"): [1, 1, 1]}
    many = Summary()
    for i in range(MAX_FACETS + 5):
        many.add(rec(f"c{i}", f"v{i}", i))
    many.add(rec("c0", "v0", 0))  # a known key still counts, past the bound
    assert len(many.codes) == MAX_FACETS + 1 and many.codes["…"] == 5 and many.codes["c0"] == 2
    assert many.destinations["…"] == 5 and many.destinations["v0/db/public.t"] == 2
    assert len(many.pairs) == MAX_FACETS and many.pairs[("c0", "v0/db/public.t")][0] == 2
    assert ("c204", "v204/db/public.t") not in many.pairs

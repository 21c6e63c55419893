"""What the writer tells the world: the RED metrics per committed batch, the batch log line, the gauges' tick.

Metrics are process-wide, so each check reads a series before and after (a delta), never an absolute count.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from confluent_kafka import Message

from kapow import metrics
from kapow.config import parse_config
from kapow.contract import Destination, TableKey
from kapow.errors import ErrorClass, ErrorCode, Failure, Scope
from kapow.pipeline.batch import Batch, TopicCounts
from kapow.pipeline.observe import FAILED_LINES_PER_S, Observer, _split
from kapow.pipeline.work import ErrorRecord, Row, TableWork, WorkResult

CONFIG = parse_config('[kafka]\nbootstrap_servers = "x:1"\ntopics = ["obs.in", "obs.in2"]\n'
                      'user_errors_topic = "obs.user"\nsystem_errors_topic = "obs.system"\n'
                      '[[destinations]]\nvanity = "wh"\ndatabases = ["obs_a", "obs_b"]\n')


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def value(name: str, **labels: str) -> float:
    return sample(name, **labels) or 0.0


def msg(topic: str = "obs.in", offset: int = 0) -> Message:
    return Message(topic=topic, partition=1, offset=offset, value=b"v", timestamp=(1, 5))


def work(database: str = "obs_a", topics: tuple[str, ...] = ("obs.in",)) -> TableWork:
    dest = Destination("wh", database, "t")
    rows = [Row(msg(t, i), b"{}", (), dest) for i, t in enumerate(topics)]
    return TableWork(TableKey("wh", database, "public", "t"), CONFIG.destinations[0], rows, 1, 0)


def test_every_series_an_alert_divides_by_exists_from_the_start() -> None:
    Observer(CONFIG)
    for database in ("obs_a", "obs_b", "-"):
        for code in ErrorCode:
            assert sample("kapow_errors_total", database=database, code=code.value,
                          **{"class": code.error_class.value}) is not None, (database, code)
    for database in ("obs_a", "obs_b"):
        for outcome in ("landed", "duplicate"):
            assert sample("kapow_rows_total", database=database, outcome=outcome) is not None
    for topic in ("obs.in", "obs.in2"):
        for step, outcome in (("filter", "filtered"), ("filter", "passed"), ("sort", "user_error"),
                              ("sort", "system_error"), ("persist", "landed"), ("persist", "duplicate"),
                              ("persist", "user_error"), ("persist", "system_error")):
            assert sample("kapow_packets_total", topic=topic, step=step, outcome=outcome) is not None
    for topic in ("obs.user", "obs.system"):
        assert sample("kapow_error_records_total", topic=topic) is not None
    assert sample("kapow_rows_total", database="-", outcome="landed") is None


def test_database_labels_are_bounded_by_the_config() -> None:
    o = Observer(CONFIG)
    assert (o.database_label("obs_a"), o.database_label("client-made-up"), o.database_label("")) == ("obs_a", "-", "-")


def test_answers_count_rows_per_database_and_one_duration_per_batch_when_it_commits() -> None:
    o = Observer(CONFIG)
    landed, dup = value("kapow_rows_total", database="obs_b", outcome="landed"), \
        value("kapow_rows_total", database="obs_b", outcome="duplicate")
    count = value("kapow_step_duration_seconds_count", step="persist", database="obs_b")
    total = value("kapow_step_duration_seconds_sum", step="persist", database="obs_b")
    first, second = Batch(seq=1), Batch(seq=2)
    o.answered(first, WorkResult(work("obs_b"), landed=3, duplicates=2, seconds=0.25))
    o.answered(first, WorkResult(work("obs_b"), seconds=0.5))  # same batch and database: one observation, the slowest
    o.answered(second, WorkResult(work("obs_b"), landed=1, seconds=0.125))
    assert value("kapow_rows_total", database="obs_b", outcome="landed") == landed, "counted before the commit"
    o.account(first, now_ms=0)
    o.account(second, now_ms=0)
    assert value("kapow_rows_total", database="obs_b", outcome="landed") - landed == 4
    assert value("kapow_rows_total", database="obs_b", outcome="duplicate") - dup == 2
    assert value("kapow_step_duration_seconds_count", step="persist", database="obs_b") - count == 2
    assert value("kapow_step_duration_seconds_sum", step="persist", database="obs_b") - total == pytest.approx(0.625)


def test_a_failure_is_counted_once_by_class_step_database_and_code(caplog: pytest.LogCaptureFixture) -> None:
    o = Observer(CONFIG)
    batch = Batch(seq=1)
    dest = Destination("wh", "obs_a", "t")
    user = ErrorRecord(msg("obs.in2", 9), Failure(ErrorCode.BAD_VALUE, "column x: bad"), dest)
    system = ErrorRecord(msg(), Failure(ErrorCode.TIMEOUT, "slow", Scope.TABLE), None)
    before = {
        "sort_user": value("kapow_packets_total", topic="obs.in2", step="sort", outcome="user_error"),
        "persist_system": value("kapow_packets_total", topic="obs.in", step="persist", outcome="system_error"),
        "bad_value": value("kapow_errors_total", database="obs_a", code="bad_value", **{"class": "user"}),
        "timeout": value("kapow_errors_total", database="-", code="timeout", **{"class": "system"}),
    }
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        o.failed(batch, user, at_sort=True)
        o.failed(batch, system, at_sort=False)
    assert (batch.user_errors, batch.system_errors) == (1, 1)
    o.failed(batch, user, at_sort=True)
    o.failed(batch, system, at_sort=False)
    assert (batch.user_errors, batch.system_errors) == (2, 2)
    before["sort_user"] += 1
    before["persist_system"] += 1
    before["bad_value"] += 1
    before["timeout"] += 1
    assert value("kapow_packets_total", topic="obs.in2", step="sort", outcome="user_error") - before["sort_user"] == 1
    assert value("kapow_packets_total", topic="obs.in", step="persist", outcome="system_error") \
        - before["persist_system"] == 1
    assert value("kapow_errors_total", database="obs_a", code="bad_value", **{"class": "user"}) \
        - before["bad_value"] == 1
    assert value("kapow_errors_total", database="-", code="timeout", **{"class": "system"}) - before["timeout"] == 1
    lines = [r for r in caplog.records if r.getMessage() == "packet failed"]
    assert [r.fields["code"] for r in lines] == ["bad_value", "timeout"]  # type: ignore[attr-defined]
    assert lines[0].fields["destination"] == "wh/obs_a/public.t"  # type: ignore[attr-defined]
    assert lines[0].fields["partition"] == 1 and lines[0].fields["offset"] == 9  # type: ignore[attr-defined]


def test_failures_look_their_counters_up_once_per_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    # prometheus_client's labels() cost a refused packet ~10 us of the loop's time, twice (a flood of them); the
    # counters are kept by their labels, and a database the config does not name still counts under "-"
    o = Observer(CONFIG)
    looked: list[tuple[str, ...]] = []
    for counter in (metrics.PACKETS, metrics.ERRORS):
        real = counter.labels
        monkeypatch.setattr(counter, "labels", lambda *a, real=real: looked.append(a) or real(*a))
    batch = Batch(seq=1)
    before = value("kapow_errors_total", database="-", code="unknown_destination", **{"class": "user"})
    for i in range(100):
        dest = Destination("wh", f"nodb_{i}", "t")
        o.failed(batch, ErrorRecord(msg(), Failure(ErrorCode.UNKNOWN_DESTINATION, "no"), dest), at_sort=True)
    assert looked == [("obs.in", "sort", "user_error"), ("-", "user", "unknown_destination")]
    assert value("kapow_errors_total", database="-", code="unknown_destination", **{"class": "user"}) \
        - before == 100
    assert batch.user_errors == 100


def batch_of(**fields: Any) -> Batch:
    b = Batch(seq=fields.pop("seq", 7))
    for k, v in fields.items():
        setattr(b, k, v)
    return b


def test_a_committed_batch_is_counted_and_logged_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    o = Observer(CONFIG)
    b = batch_of(received=10, filtered=2, landed=5, duplicates=1, user_errors=1, system_errors=1,
                 offsets={("obs.in", 1): 41, ("obs.in", 0): 7},
                 topics={"obs.in": TopicCounts(filtered=2, passed=8)}, first_ts_ms=1_000, last_ts_ms=1_500,
                 started=time.monotonic() - 0.25)
    series = {k: value("kapow_packets_total", topic="obs.in", step=s, outcome=v) for k, (s, v) in {
        "filtered": ("filter", "filtered"), "passed": ("filter", "passed"), "landed": ("persist", "landed"),
        "duplicate": ("persist", "duplicate")}.items()}
    latency = value("kapow_end_to_end_latency_seconds_count")
    latency_sum = value("kapow_end_to_end_latency_seconds_sum")
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        o.account(b, now_ms=3_000)
        o.account(batch_of(received=4), now_ms=3_000)
    assert o.totals == {"received": 14, "filtered": 2, "landed": 5, "duplicate": 1, "user_error": 1,
                        "system_error": 1}
    after = {k: value("kapow_packets_total", topic="obs.in", step=s, outcome=v) - series[k] for k, (s, v) in {
        "filtered": ("filter", "filtered"), "passed": ("filter", "passed"), "landed": ("persist", "landed"),
        "duplicate": ("persist", "duplicate")}.items()}
    assert after == {"filtered": 2, "passed": 8, "landed": 5, "duplicate": 1}
    # latency sampled at the first and the last record of a batch (none for a batch without timestamps)
    assert value("kapow_end_to_end_latency_seconds_count") - latency == 2
    assert value("kapow_end_to_end_latency_seconds_sum") - latency_sum == pytest.approx(2.0 + 1.5)
    first = next(r for r in caplog.records if r.getMessage() == "batch committed")
    fields = first.fields  # type: ignore[attr-defined]
    # ("probes", asked of the lead for issue 17, is checked end to end in tests/integration/test_errors.py)
    assert {k: v for k, v in fields.items() if k not in ("ms", "probes")} == {
        "batch": 7, "received": 10, "filtered": 2, "landed": 5, "duplicate": 1, "user_errors": 1,
        "system_errors": 1, "partitions": ["obs.in[0]", "obs.in[1]"]}
    assert 250 <= fields["ms"] < 5000


def test_latency_is_never_negative() -> None:
    o = Observer(CONFIG)
    before = value("kapow_end_to_end_latency_seconds_sum")
    count = value("kapow_end_to_end_latency_seconds_count")
    o.account(batch_of(first_ts_ms=5_000, last_ts_ms=5_000), now_ms=1_000)  # a clock behind the broker's
    assert value("kapow_end_to_end_latency_seconds_sum") == before
    assert value("kapow_end_to_end_latency_seconds_count") - count == 2


def test_a_batch_of_several_topics_counts_each_row_by_its_own_topic() -> None:
    o = Observer(CONFIG)
    w = work(topics=("obs.in", "obs.in2", "obs.in2", "obs.in"))
    failed = ErrorRecord(w.rows[1].msg, Failure(ErrorCode.BAD_VALUE, "x"), None)
    result = WorkResult(w, landed=2, duplicates=1, failed=[failed])
    b = batch_of(topics={"obs.in": TopicCounts(passed=2), "obs.in2": TopicCounts(passed=2)}, results=[result])
    before = {(t, oc): value("kapow_packets_total", topic=t, step="persist", outcome=oc)
              for t in ("obs.in", "obs.in2") for oc in ("landed", "duplicate")}
    o.account(b, now_ms=0)
    delta = {k: value("kapow_packets_total", topic=k[0], step="persist", outcome=k[1]) - v for k, v in before.items()}
    assert delta == {("obs.in", "landed"): 1, ("obs.in", "duplicate"): 1, ("obs.in2", "landed"): 1,
                     ("obs.in2", "duplicate"): 0}


def test_split_charges_duplicates_to_the_first_topics_and_skips_failed_rows() -> None:
    w = work(topics=("a", "a", "b", "b", "b"))
    failed = ErrorRecord(w.rows[2].msg, Failure(ErrorCode.BAD_VALUE, "x"), None)
    assert _split(WorkResult(w, landed=1, duplicates=3, failed=[failed])) == {
        ("a", "duplicate"): 2, ("a", "landed"): 0, ("b", "duplicate"): 1, ("b", "landed"): 1}
    nameless = TableWork(w.key, w.config, [Row(Message(topic=None, partition=0, offset=0), b"{}", (),
                                               w.rows[0].dest)], 1, 0)
    assert _split(WorkResult(nameless, landed=1)) == {("-", "duplicate"): 0, ("-", "landed"): 1}


def test_debug_logs_one_line_per_committed_packet(caplog: pytest.LogCaptureFixture) -> None:
    o = Observer(CONFIG)
    b = batch_of(results=[WorkResult(work(topics=("obs.in", "obs.in")), landed=2)])
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        o.account(b, now_ms=0)
    assert not [r for r in caplog.records if r.getMessage() == "packet committed"]
    with caplog.at_level(logging.DEBUG, logger="kapow.writer"):
        o.account(b, now_ms=0)
    lines = [r.fields for r in caplog.records if r.getMessage() == "packet committed"]  # type: ignore[attr-defined]
    assert lines == [{"topic": "obs.in", "partition": 1, "offset": i, "destination": "wh/obs_a/public.t"}
                     for i in range(2)]


def test_the_tick_runs_once_a_second_and_counts_acknowledged_error_records() -> None:
    o = Observer(CONFIG)
    refreshed: list[int] = []
    user = value("kapow_error_records_total", topic="obs.user")
    system = value("kapow_error_records_total", topic="obs.system")
    o.tick(lambda: refreshed.append(1), {ErrorClass.USER: 3, ErrorClass.SYSTEM: 0})
    o.tick(lambda: refreshed.append(1), {ErrorClass.USER: 9, ErrorClass.SYSTEM: 9})  # within the second: nothing
    assert refreshed == [1]
    assert value("kapow_error_records_total", topic="obs.user") - user == 3
    assert time.time() - value("kapow_loop_heartbeat_timestamp_seconds") < 5
    o._gauges_due = 0.0
    o.tick(lambda: refreshed.append(1), {ErrorClass.USER: 5, ErrorClass.SYSTEM: 2})
    assert value("kapow_error_records_total", topic="obs.user") - user == 5
    assert value("kapow_error_records_total", topic="obs.system") - system == 2
    o._gauges_due = 0.0

    def broken() -> None:
        raise RuntimeError("gauge")

    o.tick(broken, {ErrorClass.USER: 5, ErrorClass.SYSTEM: 2})  # a gauge never stops the loop
    assert value("kapow_error_records_total", topic="obs.user") - user == 5
    assert o._gauges_due - time.monotonic() == pytest.approx(1.0, abs=0.5)


def test_a_record_without_a_topic_is_counted_under_a_dash() -> None:
    o = Observer(CONFIG)
    before = value("kapow_packets_total", topic="-", step="sort", outcome="user_error")
    o.failed(Batch(seq=1), ErrorRecord(Message(), Failure(ErrorCode.NOT_JSON, "x"), None), at_sort=True)
    assert value("kapow_packets_total", topic="-", step="sort", outcome="user_error") - before == 1


def test_latency_is_sampled_for_any_batch_with_timestamps() -> None:
    o = Observer(CONFIG)
    count = value("kapow_end_to_end_latency_seconds_count")
    o.account(batch_of(first_ts_ms=1, last_ts_ms=1), now_ms=1_001)
    o.account(batch_of(first_ts_ms=0, last_ts_ms=0), now_ms=1_001)  # no timestamps: nothing to measure
    assert value("kapow_end_to_end_latency_seconds_count") - count == 2


def test_the_batch_line_gives_milliseconds_to_a_tenth(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    import kapow.pipeline.observe as observe

    o = Observer(CONFIG)
    monkeypatch.setattr(observe.time, "monotonic", lambda: 1000.25004)
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        o.account(batch_of(started=1000.0), now_ms=0)
    ms = next(r for r in caplog.records if r.getMessage() == "batch committed").fields["ms"]  # type: ignore[attr-defined]
    assert type(ms) is float and ms == 250.0


def test_failed_packets_are_logged_one_line_each_up_to_a_bound_a_second_then_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """A flood of bad packets wrote a line each: 500,000 lines, 224 MB (a hostile run)."""
    now = [100.0]
    o = Observer(CONFIG, clock=lambda: now[0])
    batch = batch_of()
    record = ErrorRecord(Message(topic="obs.in", partition=1, offset=9, value=b"x"),
                         Failure(ErrorCode.BAD_VALUE, "bad", Scope.ROW), Destination("wh", "obs_a", "t"))
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        for _ in range(FAILED_LINES_PER_S + 30):
            o.failed(batch, record, at_sort=True)
        assert sum(r.getMessage() == "packet failed" for r in caplog.records) == FAILED_LINES_PER_S
        now[0] += 1.0
        o.failed(batch, record, at_sort=True)  # a new second: the count of the last, then a line again
    messages = [r.getMessage() for r in caplog.records]
    assert messages[FAILED_LINES_PER_S].startswith("30 more packets failed without a line each")
    assert messages[-1] == "packet failed" and len(messages) == FAILED_LINES_PER_S + 2
    assert batch.user_errors == FAILED_LINES_PER_S + 31, "every one still counted"

"""The writer's loop turn by turn on the in-memory Kafka: what each step hands on, counts, commits and says.

``test_runner.py`` tells the stories (a held table, a revoke, the memory bound); these check each step's contract
at its values: the wait a consume is given, the bytes a batch holds until its rows land and its error records are
acknowledged, what a revoke or a lost partition drops, the gauges, the signals, and the way out.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from kapow import metrics
from kapow.config import parse_config
from kapow.contract import CONTEXT_VALUE
from kapow.errors import ErrorCode, Failure, Scope
from kapow.pipeline import runner as runner_module
from kapow.pipeline.gauges import DestinationsView
from kapow.pipeline.process import bounded as _bounded
from kapow.pipeline.process import tune_gc
from kapow.pipeline.readahead import PAUSE_S
from kapow.pipeline.runner import CLOSE_TIMEOUT_S, MAX_WINDOW, Writer
from kapow.pipeline.work import PACKET_OVERHEAD, ErrorRecord, TableWork, WorkResult, header_bytes
from tests.unit.fake_kafka import FakeClients, FakeConsumer, FakePersister, FakeProducer
from tests.unit.test_runner import CONFIG, packet, records, steps, writer

# what a record holds besides its value: the overhead and its context header (kapow.pipeline.work.record_bytes)
HELD = PACKET_OVERHEAD + header_bytes([("context", CONTEXT_VALUE)])

def writer_with(spec: dict[int, list[bytes]], **settings: str) -> tuple[Writer, FakeConsumer, FakeProducer,
                                                                     FakePersister]:
    """``writer`` with some of the test config's own pipeline keys set otherwise."""
    text = CONFIG.format(extra="batch_max_messages = 10")
    for k, v in settings.items():
        line = f"{k} = "
        if line in text:
            start = text.index(line)
            text = text[:start] + f"{k} = {v}" + text[text.index("\n", start):]
        else:
            text = text.replace("[pipeline]\n", f"[pipeline]\n{k} = {v}\n")
    consumer, producer, persister = FakeConsumer(records(spec)), FakeProducer(), FakePersister()
    w = Writer(parse_config(text), clients=FakeClients(consumer, producer), persister=persister)  # type: ignore[arg-type]
    w.open()
    return w, consumer, producer, persister


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    """The writer tunes the collector for the whole process: put it back after each test."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_opening_tunes_the_collector_and_subscribes_to_every_consumed_topic() -> None:
    gc.set_threshold(700, 10, 10)
    w, consumer, _producer, _persister = writer({0: [packet("a", 0)]})
    assert gc.get_threshold() == (50_000, 20, 100)
    assert set(consumer.callbacks) == {"assign", "revoke", "lost"}
    w.step()  # the first records wait for the error topics (kapow.pipeline.errorside), then the publisher exists
    assert w.errors is not None and w.errors.topic_for(ErrorRecord(Message(), Failure(ErrorCode.TIMEOUT, "t"), None)) \
        == "kapow.errors.system"
    assert w.redriver is None, "redrive = false in this config"


def test_tune_gc_freezes_what_startup_made() -> None:
    gc.unfreeze()
    tune_gc()
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == (50_000, 20, 100)


class FakeRedriver:
    made: ClassVar[list[FakeRedriver]] = []

    def __init__(self, config: Any, health: Any) -> None:
        self.config, self.health = config, health
        self.started = False
        self.stopped: list[float] = []
        FakeRedriver.made.append(self)

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.append(timeout)


def test_the_redrive_starts_with_the_writer_and_stops_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import kapow.deadletter.redrive as redrive

    monkeypatch.setattr(redrive, "Redriver", FakeRedriver)
    FakeRedriver.made.clear()
    persister = FakePersister()
    w = Writer(parse_config(CONFIG.format(extra="").replace("redrive = false", "redrive = true")),
               clients=FakeClients(FakeConsumer(records({0: [packet("a", 0)]})), FakeProducer()),
               persister=persister)  # type: ignore[arg-type]
    w.open()
    w.step()  # the redrive reads the error topics: it starts once they are ready
    (r,) = FakeRedriver.made
    assert r.started and r.config is w.config and r.health == persister.healthy
    w.open()  # a second open (after a failed start) does not start a second redrive
    w.step()
    assert len(FakeRedriver.made) == 1
    assert w.close() is True
    assert r.stopped == [1.0]


def test_a_consume_waits_for_company_only_while_nothing_is_in_flight() -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", 0)]}, extra="batch_max_wait_ms = 250")
    persister.held.add("held")
    w.step()  # empty window: wait up to batch_max_wait_ms for a batch
    w.step()  # a batch is in flight: just look, so that its answer is collected without delay
    assert consumer.consumed[:2] == [(10, 0.25), (10, 0.005)]


@pytest.fixture
def retry_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed delivery is produced again on the next poll (instead of a second later)."""
    import kapow.deadletter.publisher as publisher

    monkeypatch.setattr(publisher, "RETRY_AFTER_S", 0.0)


def test_a_batch_holds_its_bytes_until_its_rows_land_and_its_error_records_are_acked(retry_at_once: None) -> None:
    bad = b'{"not": "a packet"}'
    w, consumer, producer, persister = writer({0: [packet("held", 0), bad]})
    persister.held.add("held")
    producer.failing.add("kapow.errors.user")
    w.step()
    (batch,) = list(w.window)
    value_size = len(packet("held", 0)) + HELD  # the value and what its record holds besides
    assert (batch.pending, batch.unacked) == (1, 1)
    assert w.held_bytes == batch.nbytes == value_size + len(bad) + HELD
    assert sample("kapow_batches_in_flight") == 1
    producer.failing.clear()
    w.step()  # the error record is produced again and acknowledged
    assert (batch.unacked, w.held_bytes) == (0, value_size)
    persister.release("held")
    w.step()
    assert w.held_bytes == 0 and batch.nbytes == 0 and len(w.window) == 0
    assert consumer.committed_offsets == {("in", 0): 2}
    assert consumer.asynchronous is True, "the loop commits without waiting for the broker"
    assert sample("kapow_batches_in_flight") == 0
    assert w.totals == {"received": 2, "filtered": 0, "landed": 1, "duplicate": 0, "user_error": 1, "system_error": 0}


def test_an_ack_for_a_batch_dropped_by_a_revoke_does_not_free_bytes_twice(retry_at_once: None) -> None:
    w, consumer, producer, persister = writer({0: [b"{", packet("held", 1)]}, extra="batch_max_wait_ms = 1")
    persister.held.add("held")
    producer.failing.add("kapow.errors.user")
    steps(w, 2)
    (dropped,) = list(w.window)
    consumer.schedule("revoke")
    w.step()  # not drained within the deadline: dropped; the partition is consumed again at once
    assert dropped not in list(w.window) and len(w.window) == 1
    assert w.held_bytes == sum(b.nbytes for b in w.window)
    producer.failing.clear()
    w.step()  # both error records are acknowledged: the dropped batch's frees nothing of the new one's
    assert dropped.unacked == 0
    assert w.held_bytes == sum(b.nbytes for b in w.window) == len(packet("held", 1)) + HELD


def test_an_answer_for_a_batch_dropped_by_a_revoke_is_ignored() -> None:
    w, _consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    w.step()
    work = persister.waiting[0]
    before = (w.held_bytes, dict(w.totals))
    w._batches.clear()  # what a revoke does to the batch
    w._answer(WorkResult(work, landed=1))
    assert (w.held_bytes, w.totals) == before
    assert next(iter(w.window)).pending == 1


def test_several_topics_in_one_batch_keep_their_answers_for_the_per_topic_counts() -> None:
    w, _consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    other = Message(topic="in2", partition=0, offset=0, key=None, value=packet("held", 1),
                    headers=[("context", CONTEXT_VALUE)], timestamp=(1, 1))
    w._consumer.extra = [other]
    w.step()
    (batch,) = list(w.window)
    assert set(batch.topics) == {"in", "in2"}
    persister.release("held")
    w._collect(0)
    assert len(batch.results) == 1 and len(batch.results[0].work.rows) == 2


def test_one_topic_batches_let_their_rows_go() -> None:
    w, _consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    w.step()
    (batch,) = list(w.window)
    work = persister.waiting[0]
    persister.release("held")
    w._collect(0)
    assert batch.results == [] and work.rows == []


def test_consumer_errors_are_logged_skipped_or_fatal(caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, _persister = writer({0: []})
    eof = Message(error=KafkaError(KafkaError._PARTITION_EOF), topic="in", partition=0, offset=0)
    transient = Message(error=KafkaError(KafkaError._TRANSPORT), topic="in", partition=0, offset=0)
    consumer.extra = [eof, transient]
    with caplog.at_level(logging.WARNING, logger="kapow.writer"):
        w.step()
    assert len(w.window) == 0, "a batch of nothing but errors"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("consumer:")] == [
        f"consumer: {KafkaError(KafkaError._TRANSPORT)}"]
    consumer.extra = [Message(error=KafkaError(KafkaError._FATAL, fatal=True), topic="in", partition=0, offset=0)]
    with pytest.raises(KafkaException):
        w.step()


def test_sort_errors_are_counted_as_sort_and_published_at_once() -> None:
    before = sample("kapow_packets_total", topic="in", step="sort", outcome="user_error")
    size_before = sample("kapow_batch_size_count")
    w, _consumer, producer, _persister = writer({0: [b"{", b"[]", packet("a", 2)]})
    w.step()
    assert sample("kapow_packets_total", topic="in", step="sort", outcome="user_error") - before == 2
    assert sample("kapow_batch_size_count") - size_before == 1
    assert [t for t, _v, _h in producer.delivered] == ["kapow.errors.user", "kapow.errors.user"]


# ---------------------------------------------------------------------------------------------------- commits


def test_commits_name_only_partitions_still_assigned_and_a_failed_commit_is_retried_later(
        caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, _persister = writer({0: [packet("a", 0)], 1: [packet("a", 1)]})
    w.step()  # assigns; the batch lands and is committed
    assert consumer.committed_offsets == {("in", 0): 1, ("in", 1): 1}
    assert w._committed == {("in", 0): 1, ("in", 1): 1}
    w.assigned.discard(("in", 1))
    w._commit({("in", 0): 5, ("in", 1): 7}, asynchronous=False)
    assert consumer.commits[-1] == {("in", 0): 5} and consumer.asynchronous is False
    last = w.last_commit
    w._commit({("in", 1): 9}, asynchronous=False)
    assert consumer.commits[-1] == {("in", 0): 5}, "a commit of partitions no longer ours was sent"
    consumer.commit_error = KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    with caplog.at_level(logging.WARNING, logger="kapow.writer"):
        w._commit({("in", 0): 6}, asynchronous=True)
    assert w._committed[("in", 0)] == 5 and w.last_commit == last
    assert any(r.getMessage().startswith("offset commit failed") for r in caplog.records)
    consumer.commit_error = None
    w._commit({}, asynchronous=True)
    assert len(consumer.commits) == 2
    w._commit({("in", 0): 6}, asynchronous=True)
    assert w._committed[("in", 0)] == 6 and w.last_commit > last


def test_drain_finishes_in_flight_batches_or_gives_up_at_its_deadline() -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    w.step()
    started = time.monotonic()
    assert w._drain(time.monotonic() + 0.3) is False
    assert 0.3 <= time.monotonic() - started < 2
    assert w._drain(time.monotonic() - 1) is False
    persister.release("held")
    assert w._drain(time.monotonic() + 5) is True
    assert consumer.asynchronous is False, "a drain commits and waits for the broker"
    assert consumer.committed_offsets == {("in", 0): 1}


# ---------------------------------------------------------------------------------------------------- memory


def test_pressure_pauses_sheds_after_a_second_and_resumes_below_four_fifths(caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", 0)], 1: [packet("held", 1)]},
                                               extra="max_buffer_bytes = 5242880")
    persister.held.add("held")
    w.step()
    w.held_bytes = 5_242_880
    w._pressure()
    assert not w._paused, "paused at the bound exactly: only past it"
    w.held_bytes = 5_242_881
    w._pressure()
    assert w._paused and consumer.paused == {("in", 0), ("in", 1)}
    w._pressure_since = time.monotonic() - 0.9
    w._pressure()
    assert persister.sheds == 0, "shed before the pressure lasted a second"
    w._pressure_since = time.monotonic() - 1.1
    w._pressure()
    assert persister.sheds == 1 and time.monotonic() - w._pressure_since < 0.5
    w.held_bytes = 4_194_304  # four fifths of the bound, exactly
    w._pressure()
    assert w._paused, "resumed at four fifths exactly: it must be below"
    w.held_bytes = 4_194_303
    w._pressure()
    assert not w._paused and consumer.paused == set()


def test_too_many_batches_in_flight_pause_too(monkeypatch: pytest.MonkeyPatch) -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", i) for i in range(6)]},
                                               extra="batch_max_messages = 1")
    persister.held.add("held")
    monkeypatch.setattr(runner_module, "MAX_WINDOW", 5)
    for _ in range(6):
        w.step()
    assert len(w.window) == 6 and not w._paused, "paused at the bound exactly"
    w.step()
    assert w._paused and consumer.paused == {("in", 0)}
    persister.release("held")
    steps(w, 2)
    assert not w._paused and len(w.window) == 0
    assert MAX_WINDOW == 20_000


def test_a_pause_the_consumer_refuses_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, _persister = writer({0: [packet("a", 0)]})
    w.step()
    consumer.pause_error = KafkaException(KafkaError(KafkaError._STATE))
    with caplog.at_level(logging.WARNING, logger="kapow.writer"):
        w._set_paused(True)
    assert w._paused and any(r.getMessage().startswith("consumer pause:") for r in caplog.records)
    w.assigned.clear()
    w._set_paused(False)
    assert not w._paused
    consumer.pause_error = None
    w.assigned.add(("in", 0))
    w._consumer = None  # closed: the flag changes, nothing is asked of a consumer that is gone
    w._set_paused(True)
    assert w._paused


# ---------------------------------------------------------------------------------------------------- health, gauges


class FrozenTime:
    """The runner module's clock, stopped where a test puts it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


def test_health_fails_once_commits_are_stuck_past_every_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    w, _consumer, _producer, persister = writer_with({0: [packet("held", 0)]}, hold_s="5", shutdown_deadline_s="10")
    assert w.commit_stalled_s == 0.0 and w.health() == (True, "ok")
    persister.held.add("held")
    w.step()
    head: Any = w.window.head()
    limit = 5 + 2 * 10 + 60  # hold_s + twice the deadline + a minute
    frozen = FrozenTime(head.started + limit)
    monkeypatch.setattr(runner_module, "time", frozen)
    assert w.commit_stalled_s == limit and w.health()[0], "unhealthy at the limit exactly: only past it"
    frozen.now += 1
    ok, why = w.health()
    assert not ok and why == "no commit for 86 s (limit 85 s): an error topic or the broker is stuck"


class Lane:
    def __init__(self, state: str, in_use: int, max_connections: int, held: int = 0) -> None:
        from kapow.pipeline.circuit import CircuitState

        self.circuit = type("C", (), {"state": CircuitState[state]})()
        self.pool = type("P", (), {"in_use": in_use})()
        self.config = type("D", (), {"max_connections": max_connections})()
        self.held = held

    def held_tables(self) -> int:
        return self.held


def test_gauges_show_pools_circuits_buffer_and_lag() -> None:
    w, consumer, _producer, persister = writer({0: [packet("a", 0), packet("a", 1)], 1: [packet("a", 2)]})
    persister.lanes = lambda: {("wh", "db"): Lane("OPEN", 3, 4, held=2)}  # type: ignore[method-assign]
    w.step()
    consumer.records[("in", 0)].append(Message(topic="in", partition=0, offset=2))  # one more record: lag 1
    w.held_bytes = 1234
    w._refresh_gauges()
    assert sample("kapow_pool_connections_in_use", vanity="wh", database="db") == 3
    assert sample("kapow_pool_connections_max", vanity="wh", database="db") == 4
    assert sample("kapow_circuit_state", vanity="wh", database="db") == 2
    assert sample("kapow_tables_held", vanity="wh", database="db") == 2
    assert sample("kapow_buffer_bytes") == 1234
    assert sample("kapow_consumer_lag", topic="in", partition="0") == 1
    assert sample("kapow_consumer_lag", topic="in", partition="1") == 0


def test_lag_is_not_guessed_without_a_committed_offset_or_a_watermark() -> None:
    w, _consumer, _producer, _persister = writer({0: [packet("a", 0)], 5: []})
    w.step()
    metrics.LAG.labels("in", "5").set(99)
    w._committed.pop(("in", 5), None)
    w._refresh_gauges()
    assert sample("kapow_consumer_lag", topic="in", partition="5") == 99
    w._consumer = None
    w._refresh_gauges()  # no consumer (closed): nothing to do, no error


def test_an_assignment_reads_the_committed_offsets_or_the_low_watermarks(caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, _persister = writer({0: [packet("a", 0)], 1: [packet("a", 1)]})
    consumer.committed_offsets[("in", 0)] = 1
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        w.step()
    assert w._committed == {("in", 0): 1, ("in", 1): 1}
    assert w.ready and sample("kapow_partitions_assigned") == 2
    assigned = [r for r in caplog.records if r.getMessage() == "partitions assigned"]
    assert assigned and assigned[0].fields == {"partitions": ["in[0]", "in[1]"]}  # type: ignore[attr-defined]


def test_a_revoke_finishes_what_is_in_flight_commits_and_keeps_running_statements(
        caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    w.step()
    finish_during_the_drain(persister, "held")
    consumer.schedule("revoke")
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        w.step()
    assert persister.cancels == [False], "a drained revoke has nothing running to cancel"
    assert consumer.committed_offsets == {("in", 0): 1}
    assert "unfinished" not in caplog.text
    (line,) = [r for r in caplog.records if r.getMessage().startswith("partitions ")
               and r.getMessage() != "partitions assigned"]
    assert (line.getMessage(), line.levelno) == ("partitions revoked", logging.INFO)


def test_a_revoke_past_its_deadline_says_so_and_cancels(caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    w.step()
    consumer.schedule("revoke")
    with caplog.at_level(logging.WARNING, logger="kapow.writer"):
        w.step()
    assert persister.cancels == [True]
    assert "revoke: 1 batches unfinished; the next owner consumes them again" in caplog.text


def test_lost_partitions_are_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, _persister = writer({0: [packet("a", 0)]})
    w.step()
    consumer.schedule("lost")
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        w.step()
    (line,) = [r for r in caplog.records if r.getMessage() == "partitions lost"]
    assert line.levelno == logging.WARNING


def test_forgetting_partitions_drops_everything_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    w, _consumer, _producer, persister = writer({0: [packet("held", 0)], 1: [packet("held", 1)]})
    persister.held.add("held")
    w.step()
    metrics.LAG.labels("in", "0").set(5)
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        w._forget({("in", 0)}, "lost", running=True)
    assert persister.cancels == [True] and len(w.window) == 0 and w._batches == {} and w.held_bytes == 0
    assert w.assigned == {("in", 1)} and ("in", 0) not in w._committed and w.ready
    assert metrics.REGISTRY.get_sample_value("kapow_consumer_lag", {"topic": "in", "partition": "0"}) is None
    assert sample("kapow_partitions_assigned") == 1 and sample("kapow_batches_in_flight") == 0
    (line,) = [r for r in caplog.records if r.getMessage() == "partitions lost"]
    assert line.levelno == logging.WARNING
    assert line.fields == {"partitions": ["in[0]"], "dropped_works": 1}  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        w._forget({("in", 1), ("in", 7)}, "revoked", running=False)  # a partition with no lag series: no error
    assert not w.ready and w.assigned == set()
    revoked = [r for r in caplog.records if r.getMessage() == "partitions revoked"]
    assert revoked and revoked[0].levelno == logging.INFO


def test_destinations_view_shows_circuits_and_pools() -> None:
    persister = FakePersister()
    lane = Lane("HALF_OPEN", 1, 4)
    persister.lanes = lambda: {("wh", "db"): lane}  # type: ignore[method-assign]
    view = DestinationsView(persister)  # type: ignore[arg-type]
    assert view.circuits()[("wh", "db")].state == "half_open"
    assert view.pools() == {("wh", "db"): lane.pool}


# ---------------------------------------------------------------------------------------------------- the way out


def test_a_clean_shutdown_commits_closes_everything_in_order_and_logs_the_totals(
        caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, producer, persister = writer({0: [packet("a", 0), b"{"]})
    w.step()
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        assert w.close() is True
    assert w.draining and not w.ready
    assert consumer.closed and persister.closed and persister.cancels == [False]
    assert persister.close_timeouts == [1.0]
    assert [t for t, _v, _h in producer.delivered] == ["kapow.errors.user"]
    (stopped,) = [r for r in caplog.records if r.getMessage() == "writer stopped"]
    assert stopped.fields == w.totals and w.totals["received"] == 2  # type: ignore[attr-defined]


def finish_during_the_drain(persister: FakePersister, table: str) -> None:
    """The held table's rows land while the writer drains (on its first look for answers)."""
    real = persister.collect

    def collect(timeout: float = 0.0) -> list[WorkResult]:
        persister.release(table)
        return real(timeout)

    persister.collect = collect  # type: ignore[method-assign]


def test_a_shutdown_waits_within_its_deadline_for_what_is_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    w, consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    w.step()
    finish_during_the_drain(persister, "held")
    flushes: list[float] = []
    assert w.errors is not None
    real_flush = w.errors.flush
    w.errors.flush = lambda timeout: flushes.append(timeout) or real_flush(timeout)  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="kapow.writer"):
        assert w.close() is True
    assert consumer.committed_offsets == {("in", 0): 1} and persister.cancels == [False]
    assert "shutdown deadline reached" not in caplog.text
    (flush,) = flushes  # what is left of the 0.5 s deadline, but at least half a second
    assert flush == 0.5


def test_a_shutdown_past_its_deadline_cancels_and_does_not_wait_for_the_lanes(
        caplog: pytest.LogCaptureFixture) -> None:
    w, _consumer, _producer, persister = writer_with({0: [packet("held", 0)]}, shutdown_deadline_s="20")
    persister.held.add("held")
    w.step()
    flushes: list[float] = []
    assert w.errors is not None
    w.errors.flush = lambda timeout: flushes.append(timeout) or 0  # type: ignore[method-assign]
    w._drain = lambda deadline: False  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="kapow.writer"):
        assert w.close() is False
    assert persister.cancels == [True] and persister.close_timeouts == [0.0]
    assert "shutdown deadline reached with 1 batches unfinished; they will be replayed" in caplog.text
    assert flushes == [CLOSE_TIMEOUT_S], "the last acks wait at most CLOSE_TIMEOUT_S, however long the deadline"


def test_run_loops_until_stopped_then_closes() -> None:
    w, consumer, _producer, _persister = writer({0: [packet("a", i) for i in range(25)]})
    turns = []
    real_step = w.step

    def step() -> None:
        turns.append(1)
        real_step()
        if len(turns) == 4:
            w.stop()

    w.step = step  # type: ignore[method-assign]
    assert w.run() is True
    assert len(turns) == 4 and consumer.closed
    assert consumer.committed_offsets == {("in", 0): 25}


def test_the_first_signal_stops_the_loop_the_second_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    w, _consumer, _producer, _persister = writer({0: []})
    exits: list[int] = []
    written: list[bytes] = []
    monkeypatch.setattr(runner_module.os, "_exit", exits.append)
    monkeypatch.setattr(runner_module.os, "write", lambda fd, data: written.append((fd, data)) or len(data))
    w._on_signal(signal.SIGINT, None)
    assert w._stop.is_set() and exits == []
    w._on_signal(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]
    assert written == [(2, b"kapow: second signal, exiting at once\n")]  # on stderr


def test_signals_are_installed_and_a_hangup_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    w, _consumer, _producer, _persister = writer({0: []})
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        w.install_signals()
        assert signal.getsignal(signal.SIGTERM) == w._on_signal
        assert signal.getsignal(signal.SIGINT) == w._on_signal
        assert signal.getsignal(signal.SIGHUP) == w._on_hangup
        with caplog.at_level(logging.WARNING, logger="kapow.writer"):
            w._on_hangup(signal.SIGHUP, None)
        assert not w._stop.is_set()
        assert "SIGHUP ignored" in caplog.text
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_stuck_call_is_left_behind_after_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kapow.writer"):
        _bounded(lambda: gate.wait(10), 0.2, "consumer close")
    took = time.monotonic() - started
    gate.set()
    assert 0.2 <= took < 2
    assert "consumer close did not finish within 0 s; leaving it" in caplog.text
    stuck = [t for t in threading.enumerate() if t.name == "kapow-consumer-close"]
    assert stuck and all(t.daemon for t in stuck)
    caplog.clear()
    done: list[int] = []
    with caplog.at_level(logging.WARNING, logger="kapow.writer"):
        _bounded(lambda: done.append(1), 5, "flush")
        _bounded(lambda: (_ for _ in ()).throw(OSError("gone")), 5, "consumer close")
    assert done == [1]
    assert [r.getMessage() for r in caplog.records] == ["consumer close: gone"]
    assert CLOSE_TIMEOUT_S == 3.0


def test_answers_from_the_lanes_are_counted_into_their_batch() -> None:
    w, _consumer, _producer, persister = writer({0: [packet("held", 0), packet("held", 1)]})
    persister.held.add("held")
    w.step()
    (batch,) = list(w.window)
    work = persister.waiting.pop()
    failed = ErrorRecord(work.rows[0].msg, Failure(ErrorCode.DATABASE_UNAVAILABLE, "down", Scope.DATABASE),
                         work.rows[0].dest)
    persister.ready.append(WorkResult(work, landed=0, duplicates=1, failed=[failed], probes=7))
    w._collect(0)
    assert (batch.pending, batch.landed, batch.duplicates, batch.probes, batch.system_errors) == (0, 0, 1, 7, 1)
    assert batch.unacked == 1


def test_each_error_record_of_a_batch_is_waited_for_and_its_bytes_held(retry_at_once: None) -> None:
    bad1, bad2 = b"{", b"[1, 2"
    w, _consumer, producer, _persister = writer({0: [bad1, bad2]})
    producer.failing.add("kapow.errors.user")
    w.step()
    (batch,) = list(w.window)
    assert (batch.unacked, batch.nbytes, w.held_bytes) == (2, len(bad1) + len(bad2) + 2 * HELD,
                                                         len(bad1) + len(bad2) + 2 * HELD)


def test_drain_looks_for_answers_briefly_and_never_waits_on_the_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    w, _consumer, _producer, persister = writer({0: [packet("held", 0)]})
    persister.held.add("held")
    w.step()
    waits: list[float] = []
    polls: list[float] = []
    real_collect = persister.collect
    persister.collect = lambda timeout=0.0: waits.append(timeout) or real_collect(timeout)  # type: ignore[method-assign]
    assert w.errors is not None
    real_poll = w.errors.poll
    w.errors.poll = lambda timeout=0.0: polls.append(timeout) or real_poll(timeout)  # type: ignore[method-assign]
    w._drain(time.monotonic() + 0.2)
    assert waits and max(waits) <= 0.05 and set(polls) == {0}
    frozen = FrozenTime(100.0)
    monkeypatch.setattr(runner_module, "time", frozen)
    assert w._drain(100.0) is False, "a deadline reached exactly is reached"


def test_nothing_is_committed_once_the_consumer_is_gone() -> None:
    w, consumer, _producer, _persister = writer({0: [packet("a", 0)]})
    w.step()
    w._consumer = None
    w._commit({("in", 0): 9}, asynchronous=False)
    assert consumer.committed_offsets == {("in", 0): 1}


def big_packet(table: str, i: int) -> bytes:
    """A packet of about 300 kB: two of them fill half of a 1 MiB buffer."""
    return packet(table, i)[:-2] + b', "pad": "' + b"x" * 300_000 + b'"}}'


def test_a_full_read_ahead_waits_for_the_lanes_instead_of_reading_more() -> None:
    w, consumer, _producer, persister = writer_with({0: [big_packet("slow", i) for i in range(4)]},
                                                    max_buffer_bytes="1200000", batch_max_messages="1")
    persister.held.add("slow")  # slow but healthy: its works are being written, nothing failed
    steps(w, 2)
    assert w.read_ahead.line == w.read_ahead.cap == 600_000, "rows of 0.3 MB: two units and a batch pass the cap"
    assert w.held_bytes >= w.read_ahead.line and len(consumer.consumed) == 2
    w.step()
    w.step()
    assert len(consumer.consumed) == 2, "read on past the read-ahead line while the lanes were busy"
    assert not w._paused and len(w.window) == 2
    w.read_ahead.since -= PAUSE_S  # the lanes took longer than that: read on
    w.step()
    assert len(consumer.consumed) == 3 and len(w.window) == 3
    persister.release("slow")
    w.step()  # answers arrive: under the line, reading goes on at once
    assert w.held_bytes < w.read_ahead.line and len(consumer.consumed) == 4


def test_packets_stuck_behind_a_failure_never_stop_the_reading_of_others() -> None:
    w, consumer, _producer, persister = writer_with({0: [big_packet("locked", i) for i in range(2)]
                                                     + [packet("ok", i) for i in range(3)]},
                                                    max_buffer_bytes="1200000", batch_max_messages="1")
    persister.held.add("locked")
    persister.stuck.add("locked")  # held by a failure (a lock, a dead database): its bytes are not read-ahead
    steps(w, 2)
    assert w.held_bytes >= w.read_ahead.line
    steps(w, 3)
    landed = sum(b.landed for b in w.window)
    assert len(consumer.consumed) == 5 and landed == 3, "a stuck table slowed everyone's reading"


def test_an_assignment_starts_each_partition_at_its_committed_offset_or_its_first_record() -> None:
    """Left to itself, librdkafka resets a partition without a committed offset through a timer, about 0.1 s
    after each assignment of a new group: the loop assigns the offsets it has just read instead."""
    w, consumer, _producer, _persister = writer({0: [packet("t", i) for i in range(3)],
                                                 1: [packet("t", i) for i in range(2)]})
    steps(w, 3)
    assert consumer.assigns == [{("in", 0): 0, ("in", 1): 0}], "a new group: each partition's first record"
    assert consumer.committed_offsets == {("in", 0): 3, ("in", 1): 2}
    consumer.schedule("revoke")
    w.step()
    assert consumer.assigns[-1] == {("in", 0): 3, ("in", 1): 2}, "a known group: where it committed"
    steps(w, 2)
    assert consumer.committed_offsets == {("in", 0): 3, ("in", 1): 2} and len(consumer.commits) == 1, "none read twice"


def test_an_offset_reset_other_than_earliest_is_left_to_librdkafka() -> None:
    consumer, producer, persister = FakeConsumer(records({0: [packet("t", 0)]})), FakeProducer(), FakePersister()
    text = CONFIG.format(extra="").replace("[[destinations]]", '[kafka.settings]\n"auto.offset.reset" = "latest"\n'
                                                                "[[destinations]]")
    w = Writer(parse_config(text), clients=FakeClients(consumer, producer), persister=persister)  # type: ignore[arg-type]
    w.open()
    steps(w, 2)
    assert consumer.assigns == []


def test_large_packets_are_trimmed_every_8_mib_while_busy_and_at_once_when_nothing_is_in_flight() -> None:
    """What a unit of four 0.9 MB packets freed never reached the old per-unit line; the loop counts across
    batches and units, and gives the end of a burst back as soon as nothing is left in flight."""
    pad = "p" * 900_000
    big = [packet("t", i).replace(b'"data"', b'"pad":"' + pad.encode() + b'","data"') for i in range(40)]
    w, _consumer, _producer, persister = writer_with({0: [packet("held", 0), *big]})
    persister.held.add("held")  # the first batch waits: the window is never empty, nothing is released
    calls: list[int] = []
    w.trimmer._trim = lambda: calls.append(len(w.window)) or True  # type: ignore[method-assign]
    steps(w, 40)
    assert w.observer.totals["landed"] == 0 and len(w.window) > 1, "answered, not released"
    # batches of ten: the held packet and 9 large ones (8.1 MB), then 10, 10, 10 (9 MB each), then the last one
    assert len(calls) == 3 and all(calls), "large packets answered while busy: a trim each time 8 MiB are free"
    persister.release("held")
    steps(w, 2)
    assert w.observer.totals["landed"] == 41 and calls[3:] == [], "under 1 MiB left: nothing more to give back"
    w.trimmer.freed(2 * 900_000)
    steps(w, 1)
    assert calls[3:] == [0], "idle: the last of a burst goes back at once"
    w.trimmer.acked(2_000)  # small packets never add up to one
    assert w.trimmer.pending == 0


def test_bytes_stuck_behind_a_failure_never_shrink_the_others_batches() -> None:
    """A consume brings up to the read-ahead line's worth of bytes; what waits behind a failure is not counted."""
    w, consumer, _producer, persister = writer_with({0: [big_packet("locked", i) for i in range(8)]
                                                     + [packet("ok", i) for i in range(30_000)]},
                                                    max_buffer_bytes="4000000", batch_max_messages="1000")
    persister.held.add("locked")
    persister.stuck.add("locked")
    while consumer.position.get(("in", 0), 0) < 8:
        w.step()
    line = w.read_ahead.line
    assert w.held_bytes > 2_400_000 > line == 2_000_000, "2.4 MB stuck, past a line of 2 MB"
    w.read_ahead.full(w.held_bytes, paused=False)  # the loop's own check counts the stuck bytes
    assert w.read_ahead.budget(w.held_bytes) > line / 2
    before = len(consumer.consumed)
    w.step()
    asked = sum(num for num, _timeout in consumer.consumed[before:])
    assert asked == 1_000, "a full batch (1.6 MB): counted with the stuck bytes, the budget was a quarter of the line"


def test_a_revoke_in_a_later_call_of_one_consume_never_hands_on_what_an_earlier_call_took() -> None:
    """One step's consume is several calls; a rebalance runs inside whichever call it meets. Records an earlier
    call took, of partitions revoked meanwhile, are dropped: the new owner (here, this writer again) reads them
    from the committed offsets, and nothing is written twice or by two writers at once."""
    w, consumer, _producer, persister = writer_with({0: [packet("t", i) for i in range(100)],
                                                     1: [packet("t", 100 + i) for i in range(100)]},
                                                    batch_max_messages="100", max_buffer_bytes="67108864")
    handed: list[tuple[int, int]] = []
    submit = persister.submit

    def recording(work: TableWork) -> None:
        handed.extend((row.msg.partition() or 0, row.msg.offset() or 0) for row in work.rows)
        submit(work)

    persister.submit = recording  # type: ignore[method-assign]
    w.step()  # assigns; the first call asks for 16 records (16 MB of budget at 1 MB each), the second for the rest
    consumer.schedule("revoke", later=1)  # ... and the next step's second call meets a revoke
    steps(w, 6)
    assert len(handed) == len(set(handed)) == 200, "every record handed on once"
    assert w.observer.totals["landed"] == 200

"""The error topics are prepared beside the consumer's start: no record is handled before they are ready, a
failure to prepare them stops the writer before any record is handled, and the redrive starts without records."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest

from kapow.config import parse_config
from kapow.errors import KapowError
from kapow.pipeline.runner import Writer
from tests.unit.fake_kafka import FakeClients, FakeConsumer, FakePersister, FakeProducer
from tests.unit.test_runner_steps import CONFIG, packet, records


class SlowClients(FakeClients):
    """Error topics that take ``delay`` s to prepare, or fail with ``error``; records the moment they were ready."""

    def __init__(self, consumer: FakeConsumer, *, delay: float = 0.0, error: Exception | None = None) -> None:
        super().__init__(consumer, FakeProducer())
        self.delay, self.error = delay, error
        self.ready_at: float | None = None
        self.started = threading.Event()

    def prepare_topics(self) -> int:
        self.started.set()
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.ready_at = time.monotonic()
        return 1024 * 1024


class TimedPersister(FakePersister):
    def __init__(self) -> None:
        super().__init__()
        self.first_submit: float | None = None

    def submit_all(self, works: list[Any]) -> None:
        if self.first_submit is None:
            self.first_submit = time.monotonic()
        super().submit_all(works)


def test_the_consumer_starts_while_the_topics_are_prepared_and_no_record_is_handled_before_they_are() -> None:
    consumer = FakeConsumer(records({0: [packet("a", 0), packet("a", 1)]}))
    clients, persister = SlowClients(consumer, delay=0.3), TimedPersister()
    w = Writer(parse_config(CONFIG.format(extra="")), clients=clients, persister=persister)  # type: ignore[arg-type]
    opened = time.monotonic()
    w.open()
    assert time.monotonic() - opened < 0.2, "open does not wait for the error topics"
    assert set(consumer.callbacks) == {"assign", "revoke", "lost"} and clients.started.wait(1)
    w.step()
    assert clients.ready_at is not None and persister.first_submit is not None
    assert persister.first_submit >= clients.ready_at
    assert w.errors is not None
    assert w.close() is True
    assert consumer.committed_offsets == {("in", 0): 2}


def test_error_topics_that_cannot_be_made_stop_the_writer_in_one_line_before_any_record_is_handled() -> None:
    consumer = FakeConsumer(records({0: [packet("a", 0)]}))
    clients = SlowClients(consumer, delay=0.05, error=KapowError("cannot create error topic e.user: denied"))
    persister = TimedPersister()
    w = Writer(parse_config(CONFIG.format(extra="")), clients=clients, persister=persister)  # type: ignore[arg-type]
    with pytest.raises(KapowError, match=r"^cannot create error topic e\.user: denied$"):
        w.run()
    assert persister.first_submit is None and consumer.committed_offsets == {}
    assert consumer.closed, "the group is left on the way out"


class FakeRedriver:
    made: ClassVar[list[FakeRedriver]] = []

    def __init__(self, config: Any, health: Any) -> None:
        self.started = False
        FakeRedriver.made.append(self)

    def start(self) -> None:
        self.started = True

    def stop(self, timeout: float = 5.0) -> None:
        pass


def test_the_redrive_starts_once_the_topics_are_ready_even_when_no_record_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import kapow.deadletter.redrive as redrive

    monkeypatch.setattr(redrive, "Redriver", FakeRedriver)
    FakeRedriver.made.clear()
    clients = SlowClients(FakeConsumer(records({})), delay=0.1)
    config = parse_config(CONFIG.format(extra="").replace("redrive = false", "redrive = true"))
    w = Writer(config, clients=clients, persister=FakePersister())  # type: ignore[arg-type]
    w.open()
    w.step()
    assert FakeRedriver.made == [], "not before the topics are ready"
    deadline = time.monotonic() + 5
    while not FakeRedriver.made and time.monotonic() < deadline:
        w.step()
    (r,) = FakeRedriver.made
    assert r.started
    w.close()


def test_a_stop_while_the_topics_are_still_being_made_is_heard_at_once_and_nothing_is_handled() -> None:
    consumer = FakeConsumer(records({0: [packet("a", 0)]}))
    clients, persister = SlowClients(consumer, delay=2.0), TimedPersister()
    w = Writer(parse_config(CONFIG.format(extra="")), clients=clients, persister=persister)  # type: ignore[arg-type]
    w.open()
    threading.Timer(0.2, w.stop).start()
    started = time.monotonic()
    w.step()  # records came: it waits for the topics, but hears the stop
    assert time.monotonic() - started < 1.0
    assert persister.first_submit is None and w.errors is None
    assert w.close() is True and consumer.committed_offsets == {}


def test_the_writer_is_ready_only_once_it_holds_partitions_and_its_error_topics_exist() -> None:
    # /readyz: a writer whose error topics are still being made cannot park or refuse a packet yet
    consumer = FakeConsumer(records({0: []}))
    clients = SlowClients(consumer, delay=0.3)
    w = Writer(parse_config(CONFIG.format(extra="")), clients=clients, persister=FakePersister())  # type: ignore[arg-type]
    w.open()
    w.step()
    assert w.assigned and not w.ready
    deadline = time.monotonic() + 5
    while w.errors is None and time.monotonic() < deadline:
        w.step()
    assert w.ready
    w.close()
    assert not w.ready


def test_a_writer_stopped_while_the_topics_are_made_waits_for_them_or_says_it_left_something_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the interpreter must not finalize around a running admin call (one writer ended in SIGSEGV): close waits
    # a little for it, and when it still runs says "not drained", so that `kapow run` leaves with os._exit
    import kapow.pipeline.runner as runner

    quick = SlowClients(FakeConsumer(records({0: []})), delay=0.3)
    w = Writer(parse_config(CONFIG.format(extra="")), clients=quick, persister=FakePersister())  # type: ignore[arg-type]
    w.open()
    assert quick.started.wait(1)
    assert w.close() is True and quick.ready_at is not None, "waited for the topics, then left cleanly"

    monkeypatch.setattr(runner, "CLOSE_TIMEOUT_S", 0.1)
    slow = SlowClients(FakeConsumer(records({0: []})), delay=1.0)
    w = Writer(parse_config(CONFIG.format(extra="")), clients=slow, persister=FakePersister())  # type: ignore[arg-type]
    w.open()
    assert slow.started.wait(1)
    assert w.close() is False and slow.ready_at is None

"""The circuit breaker: opens after consecutive database failures, probed on a timer, closes on success."""

from __future__ import annotations

import logging

import pytest

from kapow.errors import ErrorCode, Failure, Scope
from kapow.pipeline.circuit import Circuit, CircuitState

DOWN = Failure(ErrorCode.DATABASE_UNAVAILABLE, "refused", Scope.DATABASE)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def circuit(clock: Clock) -> Circuit:
    return Circuit("wh/db", failures_to_open=3, open_s=5.0, clock=clock)


def test_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    c = circuit(clock)
    c.failure(DOWN)
    c.failure(DOWN)
    assert c.state is CircuitState.CLOSED
    c.success()
    c.failure(DOWN)
    c.failure(DOWN)
    assert c.closed
    c.failure(DOWN)
    assert c.state is CircuitState.OPEN and c.last_failure is DOWN


def test_probe_due_only_after_the_interval_and_once() -> None:
    clock = Clock()
    c = circuit(clock)
    for _ in range(3):
        c.failure(DOWN)
    clock.now += 4.9
    assert not c.probe_due()
    assert abs(c.seconds_to_probe() - 0.1) < 1e-6
    clock.now += 0.2
    assert c.probe_due()
    assert c.state is CircuitState.HALF_OPEN
    assert not c.probe_due()  # one probe at a time


def test_a_failed_probe_reopens_at_once_and_a_good_one_closes() -> None:
    clock = Clock()
    c = circuit(clock)
    for _ in range(3):
        c.failure(DOWN)
    clock.now += 5
    assert c.probe_due()
    c.failure(DOWN)  # one failure of the probe is enough: not three again
    assert c.state is CircuitState.OPEN
    assert not c.probe_due()
    clock.now += 5
    assert c.probe_due()
    c.success()
    assert c.state is CircuitState.CLOSED
    c.failure(DOWN)
    assert c.closed  # the count started again


def test_an_open_circuit_says_when_its_next_probe_is_due() -> None:
    clock = Clock()
    c = circuit(clock)
    assert c.seconds_to_probe() == 5.0 and not c.probe_due()  # closed: nothing to probe
    for _ in range(3):
        c.failure(DOWN)
    assert c.seconds_to_probe() == 5.0
    clock.now += 7
    assert c.seconds_to_probe() == 0.0  # overdue: never negative
    assert c.probe_due() and c.seconds_to_probe() == 5.0  # half-open: the probe is under way
    assert CircuitState.OPEN.label == "open" and CircuitState.HALF_OPEN.label == "half_open"


def test_opening_and_closing_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    """OPERATIONS.md promises one log line per circuit change, not one per failure."""
    clock = Clock()
    c = circuit(clock)
    with caplog.at_level(logging.INFO, logger="kapow.pipeline.circuit"):
        c.success()  # already closed: nothing to say
        for _ in range(5):
            c.failure(DOWN)
        clock.now += 5
        assert c.probe_due()
        c.failure(DOWN)  # a failed probe: still open, no new "opened" line
        clock.now += 5
        assert c.probe_due()
        c.success()
        c.success()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["database wh/db unwell after 3 failures, circuit opened: refused",
                     "database wh/db recovered; circuit closed"]

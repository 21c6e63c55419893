"""The circuit breaker: opens after consecutive database failures, probed on a timer, closes on success."""

from __future__ import annotations

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
